"""Phone-content normalisation and the pronunciation lexicon (kokoro_service.phonetext)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from whisper_normalizer.english import EnglishTextNormalizer

from kokoro_service.errors import ConfigError
from kokoro_service.phonetext import Lexicon, _normalize, normalize, warm_up
from tests.phone_corpus import PHONE_CORPUS

warm_up()  # misaki's word lists, once for the module (a fraction of a second)


def check(cases: list[tuple[str, str]]) -> None:
    got = [(written, normalize(written)) for written, _ in cases]
    assert got == cases


def test_phone_numbers_are_read_digit_by_digit_in_groups() -> None:
    check(
        [
            ("Call 555-0199.", "Call five five five, zero one nine nine."),
            ("(415) 555-0199", "four one five, five five five, zero one nine nine"),
            ("415-555-0199", "four one five, five five five, zero one nine nine"),
            ("415.555.0199", "four one five, five five five, zero one nine nine"),
            ("+1 415 555 0199", "plus one, four one five, five five five, zero one nine nine"),
            ("1-800-555-0199", "one, eight hundred, five five five, zero one nine nine"),
            ("555-0199 ext. 42", "five five five, zero one nine nine, extension four two"),
            (
                "+44 20 7946 0958",
                "plus four four, two zero, seven nine four six, zero nine five eight",
            ),
        ]
    )


def test_zip_codes_and_states() -> None:
    check(
        [
            (
                "Springfield, IL 62704",
                "Springfield, Illinois, six two seven zero four",
            ),
            ("IL 62704.", "Illinois, six two seven zero four."),  # the segmenter cut at the comma
            (
                "Austin, Texas 78701-1234",
                "Austin, Texas, seven eight seven zero one, one two three four",
            ),
            ("zip code 90210", "zip code nine zero two one zero"),
            ("ZIP: 90210", "ZIP: nine zero two one zero"),
            ("in Springfield, IL.", "in Springfield, Illinois."),
            # A state code that is also a word is expanded only before a ZIP code.
            ("Sure, OK.", "Sure, OK."),
            ("Portland, OR 97201", "Portland, Oregon, nine seven two zero one"),
        ]
    )


def test_confirmation_and_reference_codes_are_spelled() -> None:
    check(
        [
            ("Your code is AB12X9.", "Your code is A. B one two X nine."),
            ("It is AB12X9.", "It is A. B one two X nine."),
            ("Confirmation number: 48213.", "Confirmation number: four eight two one three."),
            ("order #48213", "order #four eight two one three"),
            ("Your order number is 48213.", "Your order number is four eight two one three."),
            ("Reference XK-42-B", "Reference X K, four two, B"),
            ("booking reference is QXRTZP", "booking reference is Q X R T Z P"),
            # Not codes: quantities, measures, words.
            ("I'd like to order 150 pizzas.", "I'd like to order 150 pizzas."),
            ("A 100MB file, MP3s, code 7.", "A 100MB file, MP3s, code 7."),
            ("The code is ready.", "The code is ready."),
        ]
    )


def test_email_addresses_and_urls() -> None:
    check(
        [
            ("Email j.doe@acme.com.", "Email J dot doe at acme dot com."),
            ("support@AcmeDental.com", "support at acme dental dot com"),
            ("Visit acmedental.com today.", "Visit acme dental dot com today."),
            ("www.acme.org", "W W W dot acme dot org"),
            (
                "https://www.acmedental.com/book-now/.",
                "W W W dot acme dental dot com slash book dash now.",
            ),
            ("acme.co.uk", "acme dot co dot U K"),
            ("jsmith@acme.net", "J smith at acme dot net"),
            # Abbreviations and decimals are not addresses.
            ("e.g. 3.50 or U.S. or p.m.", "e.g. 3.50 or U.S. or p.m."),
        ]
    )


def test_compound_domain_labels_split_into_fewest_dictionary_words() -> None:
    check(
        [
            ("acmedental.com", "acme dental dot com"),
            ("bestsmiledentistry.com", "best smile dentistry dot com"),
            ("myacme.com", "my acme dot com"),
            ("google.com", "google dot com"),  # already a word: left whole
            ("xkcd.com", "X K C D dot com"),  # no vowel: letters
        ]
    )


def test_street_abbreviations() -> None:
    check(
        [
            (
                "1234 W. Main St. Springfield",
                "twelve thirty four West Main Street Springfield",
            ),
            ("Visit St. Mary's in St. Louis.", "Visit Saint Mary's in Saint Louis."),
            ("on Main St.", "on Main Street."),
            ("42 Oak Dr. Springfield", "forty two Oak Drive Springfield"),
            ("We are on Oak Dr. now.", "We are on Oak Drive now."),
            ("Please see Dr. Smith.", "Please see Doctor Smith."),
            ("Thanks, Dr. Smith.", "Thanks, Doctor Smith."),
            ("55 5th Ave., Apt. 4B", "fifty five fifth Avenue, Apartment four B"),
            ("Ste. 200, 9 Elm Blvd.", "Suite two hundred, nine Elm Boulevard."),
            ("100 Main St. NW", "one hundred Main Street Northwest"),
            ("Unit #12", "Unit number 12"),
        ]
    )


def test_days_months_and_titles() -> None:
    check(
        [
            ("Tue., Mar. 3rd", "Tuesday, March third"),
            ("See you Tue.", "See you Tuesday."),
            ("Tue, Mar 3 works", "Tuesday, March third works"),
            ("Mon 9 AM", "Monday nine a.m."),
            ("Sept. 21st", "September twenty first"),
            ("Mr. and Mrs. Jones", "Mister and Missus Jones"),
            ("Prof. Lee and John Smith Jr.", "Professor Lee and John Smith Junior."),
            ("Ms. Lee", "Ms. Lee"),  # misaki reads it right as it is
        ]
    )


def test_ordinals_money_times_and_dates() -> None:
    check(
        [
            ("the 3rd and 21st", "the third and twenty first"),
            ("$12.50", "twelve dollars and fifty cents"),
            ("$5, $1,200, $0.99, $1.01", (
                "five dollars, one thousand two hundred dollars, ninety nine cents, "
                "one dollar and one cent"
            )),
            ("$1.5 million", "one point five million dollars"),
            ("15% off", "fifteen percent off"),
            ("3:30 PM", "three thirty p.m."),
            ("at 3:30 p.m. today", "at three thirty p.m. today"),
            ("at 3:30 p.m.", "at three thirty p.m."),
            ("10:05", "ten oh five"),
            ("9 AM, 5pm or noon", "nine a.m., five p.m. or noon"),
            ("at 2:00", "at two o'clock"),
            ("03/05/2026", "March fifth, twenty twenty six"),
            ("2026-03-05", "March fifth, twenty twenty six"),
            ("March 5, 2026", "March fifth, twenty twenty six"),
            ("May 1 2009", "May first, two thousand nine"),
        ]
    )  # fmt: skip


PLAIN = [
    "Hello there, how are you today?",
    "Thanks for calling Acme Dental. This is Sarah; how can I help?",
    "Sure — I can do that.  Anything else?",
    "We're open every day, aren't we?\n",
    "Café, naïve, 東京, emoji 🙂 and tabs\t.",
    "",
    "I have 3 kids and 12 dogs.",
    "No. That won't work.",
]


@pytest.mark.parametrize("text", PLAIN)
def test_text_without_phone_content_passes_through_unchanged(text: str) -> None:
    out = normalize(text)
    assert out == text
    assert out.encode() == text.encode()


def test_normalize_is_fast() -> None:
    sentence = "Your appointment is on Tue., Mar. 3rd at 3:30 PM at 1234 W. Main St.; copay $12.50."
    normalize(sentence)
    n = 300
    t0 = time.perf_counter()
    for _ in range(n):
        normalize(sentence)
    per_call = (time.perf_counter() - t0) / n
    assert per_call < 1e-3, f"{per_call * 1e6:.0f} us per sentence"


# Fragments of phone content, for properties that arbitrary text rarely reaches.
FRAGMENTS = [
    "Call",
    "555-0199",
    "(415) 555-0199",
    "+1 415 555 0199",
    "1234 W. Main St.",
    "Springfield, IL 62704",
    "code AB12X9",
    "j.doe@acme.com",
    "www.acmedental.com/book",
    "Tue., Mar. 3rd",
    "3:30 p.m.",
    "9 AM",
    "$12.50",
    "$1,200",
    "03/05/2026",
    "Dr. Smith",
    "St. Louis",
    "Apt. 4B",
    "21st",
    "and",
    ",",
    ".",
    "A",
    "12",
    "x",
]
PHONEISH = st.text(alphabet="0123456789 .,:;-/()+$%#@AaBbMmPpStWwx\n", max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_normalize_never_raises_on_any_text(text: str) -> None:
    out = _normalize(text)  # the rules themselves, without normalize's safety net
    assert isinstance(out, str)
    assert normalize(text) == out


@settings(max_examples=150, deadline=None)
@given(PHONEISH)
def test_normalize_never_raises_and_is_idempotent_on_phone_like_text(text: str) -> None:
    once = _normalize(text)
    assert _normalize(once) == once


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=8))
def test_normalize_is_idempotent_on_phone_content(parts: list[str]) -> None:
    once = _normalize(" ".join(parts))
    assert _normalize(once) == once


def test_normalize_falls_back_to_the_text_on_an_internal_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kokoro_service import phonetext

    def broken(m: Any) -> str:
        raise RuntimeError("bug")

    monkeypatch.setattr(phonetext, "_RULES", ((phonetext._PHONE_LOCAL, broken),))
    assert normalize("Call 555-0199.") == "Call 555-0199."


def test_corpus_spoken_forms_agree_with_normalize() -> None:
    english = EnglishTextNormalizer()
    mismatches = [
        (written, english(normalize(written)), english(spoken))
        for written, spoken in PHONE_CORPUS
        if english(normalize(written)) != english(spoken)
    ]
    assert not mismatches
    assert len(PHONE_CORPUS) >= 12
    assert all(len(written.split()) <= 12 for written, _ in PHONE_CORPUS)


# --------------------------------------------------------------------------- lexicon

GOOD = """\
# Names our callers say that G2P gets wrong.
Nguyen  wˈɪn
Siobhan\tʃəvˈɔn   # trailing comment

Saoirse sˈɜɹʃə
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "names.lex"
    path.write_text(text, encoding="utf-8")
    return path


def test_lexicon_loads_entries_skipping_comments_and_blank_lines(tmp_path: Path) -> None:
    lex = Lexicon.load(write(tmp_path, GOOD))
    assert len(lex) == 3
    assert lex.apply("Ask Siobhan.") == "Ask [Siobhan](/ʃəvˈɔn/)."


def test_lexicon_matches_case_insensitively_on_word_boundaries(tmp_path: Path) -> None:
    lex = Lexicon.load(write(tmp_path, GOOD))
    assert lex.apply("NGUYEN and nguyen") == "[NGUYEN](/wˈɪn/) and [nguyen](/wˈɪn/)"
    assert lex.apply("Nguyens xNguyen Nguyen2") == "Nguyens xNguyen Nguyen2"
    assert lex.apply("Dr. Nguyen's office") == "Dr. [Nguyen](/wˈɪn/)'s office"
    once = lex.apply("Nguyen")
    assert lex.apply(once) == once  # a word already in a link is left alone
    assert Lexicon().apply("Nguyen") == "Nguyen"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Nguyen\n", "expected 'word phonemes'"),
        ("Nguyen wˈɪn\n[x] ks\n", "is not a word"),
        ("Nguyen wˈ(ɪ)n\n", "may not contain"),
        ("Nguyen wˈɪn\nnguyen wɪn\n", "listed twice"),
    ],
)
def test_lexicon_bad_line_names_file_and_line(tmp_path: Path, text: str, reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Lexicon.load(path)
    message = str(info.value)
    line = len(text.splitlines())  # the bad entry is the last line
    assert str(path) in message and f"line {line}" in message and reason in message


def test_lexicon_refuses_phonemes_outside_the_vocabulary(tmp_path: Path) -> None:
    from kokoro_service.models.checkpoint import kokoro_vocab

    vocab = kokoro_vocab()
    assert len(Lexicon.load(write(tmp_path, GOOD), vocab)) == 3
    with pytest.raises(ConfigError, match=r"line 2: phoneme symbol\(s\) '7' not in"):
        Lexicon.load(write(tmp_path, "Nguyen wˈɪn\nSaoirse s7ɜɹʃə\n"), vocab)


def test_lexicon_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Lexicon.load(tmp_path / "missing.lex")
    bad = tmp_path / "latin1.lex"
    bad.write_bytes(b"Jos\xe9 hoze\n")  # Latin-1, not UTF-8
    with pytest.raises(ConfigError, match="cannot read"):
        Lexicon.load(bad)


@pytest.fixture(scope="module")
def g2p() -> Iterator[Any]:
    from misaki import en

    yield en.G2P(trf=False, british=False, fallback=None)


def test_misaki_reads_the_lexicon_phonemes_through_the_link_syntax(
    tmp_path: Path, g2p: Any
) -> None:
    lex = Lexicon.load(write(tmp_path, GOOD))
    _, tokens = g2p(lex.apply(normalize("Dr. Nguyen will call Siobhan at 3:30 PM.")))
    by_word = {t.text: t.phonemes for t in tokens}
    assert by_word["Nguyen"] == "wˈɪn"
    assert by_word["Siobhan"] == "ʃəvˈɔn"
    assert by_word["Doctor"] == "dˈɑktəɹ"
