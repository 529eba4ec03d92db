"""Text segmentation: where segments are cut, and that nothing is lost."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kokoro_service.text.segmenter import Segmenter, SegmenterConfig


def segments(text: str, config: SegmenterConfig | None = None) -> list[str]:
    seg = Segmenter(config)
    return seg.push(text) + seg.flush()


def test_first_segment_is_first_clause() -> None:
    out = segments("Sure, I can help you with that. Anything else?")
    assert out == ["Sure,", "I can help you with that. Anything else?"]


def test_sentence_mode_without_growth() -> None:
    cfg = SegmenterConfig(growth=0)
    text = "Hi there, Sam. Your appointment is on Tuesday. Bye!"
    assert segments(text, cfg) == ["Hi there,", "Sam.", "Your appointment is on Tuesday.", "Bye!"]


def test_growth_caps_early_segments() -> None:
    text = (
        "Thanks for calling Acme Dental, this is Sarah. I can see your appointment on Tuesday "
        "at 3:30 PM with Doctor Patel. Would you like to keep that time, or should I find you "
        "a new slot?"
    )
    out = segments(text)
    released = len(out[0])
    for seg in out[1:]:
        budget = max(32, 2 * released)
        if released * 2 < 200:
            assert len(seg) <= budget + budget // 4, (seg, budget)
        released += len(seg)
    assert out[0] == "Thanks for calling Acme Dental,"


def test_a_call_far_behind_still_gets_a_phrase_not_a_word() -> None:
    # Every segment carries Kokoro's lead-in and trailing silence, so cutting a late call
    # into words would add pauses (and synthesis) without catching up: the budget has a
    # floor of min_chars, and punctuation within a quarter past it is preferred.
    seg = Segmenter()
    seg.append("Okay. On Tuesday at 3:30 PM with Doctor Patel. Bye.")
    assert seg.take() == "Okay."
    assert seg.take(budget=0) == "On Tuesday at 3:30 PM with Doctor Patel."


def test_no_segment_ends_on_a_clinging_word() -> None:
    out = segments("Okay, I will reschedule your appointment for the next available day please")
    for seg in out[:-1]:
        assert seg.split()[-1].lower() not in {"your", "the", "for", "will"}, out


def test_abbreviations_and_decimals_do_not_split() -> None:
    text = "Okay. Dr. Smith will see you at 3.30 p.m. today. Thanks!"
    out = segments(text, SegmenterConfig(growth=0))
    assert out == ["Okay.", "Dr. Smith will see you at 3.30 p.m. today.", "Thanks!"]


def test_streamed_tokens_are_cut_only_where_a_speaker_pauses() -> None:
    text = "Hello there! How are you doing today? I hope, truly, that all is well."
    seg = Segmenter()
    streamed: list[str] = []
    for i in range(0, len(text), 3):
        streamed += seg.push(text[i : i + 3])
    streamed += seg.flush()
    assert " ".join(streamed) == text
    assert all(s[-1] in "!?,." for s in streamed), streamed
    assert streamed[0] == "Hello there!"


def test_turn_ending_in_punctuation_is_released_without_more_text() -> None:
    # Between turns the LLM sends nothing (BYE comes only at hang-up), so a TEXT frame
    # that ends a sentence must be spoken at once.
    seg = Segmenter()
    assert seg.push("Sure, see you then.") == ["Sure,", "see you then."]
    assert seg.pending_chars == 0


def test_decimal_point_waits_for_next_token() -> None:
    seg = Segmenter(SegmenterConfig(growth=0))
    assert seg.push("It costs 3") == []
    assert seg.push(".") == []  # could be 3.50
    assert seg.push("50 dollars. ") == ["It costs 3.50 dollars."]


def test_long_unpunctuated_text_is_bounded() -> None:
    out = segments("word " * 20_000)
    assert all(len(s) <= 200 for s in out)
    assert sum(len(s.split()) for s in out) == 20_000


def test_giant_word_is_cut_hard() -> None:
    out = segments("x" * 1000)
    assert "".join(out) == "x" * 1000
    assert max(len(s) for s in out) <= 80


def test_newline_is_a_boundary() -> None:
    assert segments("first line\nsecond line", SegmenterConfig(growth=0)) == [
        "first line",
        "second line",
    ]


def test_reset_drops_text_and_restarts_utterance() -> None:
    seg = Segmenter()
    seg.push("Sure, this will be dropped")
    seg.reset()
    assert seg.pending_chars == 0
    assert seg.at_utterance_start
    assert seg.push("Okay, new reply.") == ["Okay,", "new reply."]


@pytest.mark.parametrize("kw", [{"max_chars": 4}, {"growth": 0.5}, {"max_word_chars": 500}])
def test_bad_config(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SegmenterConfig(**kw)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=600), st.integers(1, 40))
def test_nothing_is_lost(text: str, step: int) -> None:
    seg = Segmenter()
    out: list[str] = []
    for i in range(0, len(text), step):
        out += seg.push(text[i : i + step])
    out += seg.flush()
    assert "".join("".join(out).split()) == "".join(text.split())
    assert all(s.strip() for s in out)
    assert all(len(s) <= 200 for s in out)


def test_quiet_flush_keeps_a_partial_word() -> None:
    seg = Segmenter()
    assert seg.push("Let me check the appoint") == []
    assert seg.flush(keep_partial_word=True) == ["Let me check the"]
    assert seg.pending_chars == len("appoint")
    assert seg.flush() == ["appoint"]


def test_frames_ending_a_sentence_keep_the_boundary_when_joined_later() -> None:
    seg = Segmenter(SegmenterConfig(growth=0))
    for text in ("Hello there, thanks for calling.", "Your appointment is on Tuesday."):
        seg.append(text)
    out = list(iter(seg.take, None))
    assert out == ["Hello there,", "thanks for calling.", "Your appointment is on Tuesday."]


def test_numbers_split_across_tokens_stay_whole() -> None:
    seg = Segmenter(SegmenterConfig(growth=0))
    for token in ("It is 1", ",", "000 dollars at 3", ":", "30 today. "):
        seg.append(token)
    assert list(iter(seg.take, None)) == ["It is 1,000 dollars at 3:30 today."]


def test_take_cuts_at_the_load_it_is_given() -> None:
    text = (
        "Thanks for calling Acme Dental, this is Sarah. I can see your appointment on "
        "Tuesday at 3:30 PM with Doctor Patel. Would you like to keep that time?"
    )
    sizes = {}
    for load in (1, 2):
        seg = Segmenter()
        seg.append(text)
        out = []
        while (piece := seg.take(final=True, load=load)) is not None:
            out.append(len(piece))
        sizes[load] = out
    assert sizes[2][0] <= sizes[1][0]  # a shorter opener when other calls wait too
    assert max(sizes[2][1:3]) < max(sizes[1][1:3])  # slower growth when calls share the cores


# Phone content that kokoro_service.text.phonetext rewrites after the cut: a cut inside one
# strands a title from its name ("Dr." | "Smith" -> "Doctor." "Smith") or an address's
# dot from its domain.
PHONE_PHRASES = [
    "1234 W. Main St. Springfield",
    "Jan. 2026",
    "no. 5",
    "Dr. Smith",
    "St. Louis",
    "Tue., Mar. 3rd",
    "acmedental.com",
    "$12.50",
    "3:30 p.m.",
    "j.doe@acme.com",
    "www.acme.com/book",
]
FILLER = "okay so we have booked your visit right here with us".split()


def llm_tokens(text: str) -> list[str]:
    """Pieces as an LLM streams them: " word", and a dot glued to what follows (".com")."""
    return re.findall(r" ?[^\s.@]+|[.@][^\s.@]*| ", text)


@pytest.mark.parametrize("phrase", PHONE_PHRASES)
@pytest.mark.parametrize("growth", [2.0, 0])
def test_phone_content_is_not_cut_inside(phrase: str, growth: float) -> None:
    # At every place in and past the first segment's word window.
    for k in range(len(FILLER) + 1):
        text = " ".join([*FILLER[:k], phrase, "today."])
        for pieces in ([text], llm_tokens(text)):
            seg = Segmenter(SegmenterConfig(growth=growth))
            out = [s for p in pieces for s in seg.push(p)] + seg.flush()
            assert any(phrase in s for s in out), out


def test_unfinished_address_waits_for_the_rest_of_its_domain() -> None:
    seg = Segmenter(SegmenterConfig(growth=0))
    assert seg.push("Write to j.doe@acme.") == []  # ".com" may follow
    assert seg.push("com today.") == ["Write to j.doe@acme.com today."]
    for piece in ("Go to www.", "acme."):
        assert seg.push(piece) == []
    assert seg.push("com/book now.") == ["Go to www.acme.com/book now."]


def test_turn_ending_in_a_complete_address_is_released_at_once() -> None:
    seg = Segmenter(SegmenterConfig(growth=0))
    assert seg.push("Write to j.doe@acme.com.") == ["Write to j.doe@acme.com."]
    assert seg.push("Or see acme.com.") == ["Or see acme.com."]


def test_comma_after_a_weekday_is_inside_the_date() -> None:
    assert segments("See you Tue., Mar. 3rd at noon. Bye!") == [
        "See you Tue., Mar. 3rd at noon.",
        "Bye!",
    ]
    assert segments("I sat, then left.", SegmenterConfig(growth=0)) == ["I sat,", "then left."]


# A month, day or "no." abbreviation before a capitalised word that does not continue a
# date ends the sentence; phonetext.normalize leaves that dot in place for misaki.
SENTENCE_AFTER_ABBREVIATION = [
    ("I spoke with Jan. She said hello.", ["I spoke with Jan.", "She said hello."]),
    ("We sat in the Sun. It was warm.", ["We sat in the Sun.", "It was warm."]),
    ("She was born in Feb. Her sister too.", ["She was born in Feb.", "Her sister too."]),
    ("No. That won't work.", ["No.", "That won't work."]),
    ("I sat. Then I left.", ["I sat.", "Then I left."]),
    # Inside a date, a number or a code: one sentence.
    ("See you Mar. 3rd at noon. Bye!", ["See you Mar. 3rd at noon.", "Bye!"]),
    ("See you Tue. Mar. 3rd at noon. Bye!", ["See you Tue. Mar. 3rd at noon.", "Bye!"]),
    ("It was Jan. 2026 then. Okay.", ["It was Jan. 2026 then.", "Okay."]),
    ("The answer is no. 5 people came.", ["The answer is no. 5 people came."]),
    ("Go to room no. 5 now. Thanks.", ["Go to room no. 5 now.", "Thanks."]),
    ("Your policy No. AB12 is active. Thanks.", ["Your policy No. AB12 is active.", "Thanks."]),
]


@pytest.mark.parametrize(("text", "expected"), SENTENCE_AFTER_ABBREVIATION)
def test_month_day_and_no_abbreviations_end_a_sentence_before_a_new_one(
    text: str, expected: list[str]
) -> None:
    assert segments(text, SegmenterConfig(growth=0)) == expected
    for step in (1, 2, 3, 5):  # streamed: a word still arriving ("M" -> "Mar.") waits
        seg = Segmenter(SegmenterConfig(growth=0))
        out = [s for i in range(0, len(text), step) for s in seg.push(text[i : i + step])]
        assert out + seg.flush() == expected, step


def test_frames_joined_after_a_month_abbreviation_keep_the_sentence_end() -> None:
    seg = Segmenter(SegmenterConfig(growth=0))
    for text in ("I spoke with Jan.", "She said hello."):
        seg.append(text)
    assert list(iter(seg.take, None)) == ["I spoke with Jan.", "She said hello."]


def test_comma_after_a_weekday_outside_a_date_is_a_clause_mark() -> None:
    assert segments("We sat in the Sun, it was warm.", SegmenterConfig(growth=0)) == [
        "We sat in the Sun,",
        "it was warm.",
    ]


def test_word_breaks_after_month_and_day_abbreviations() -> None:
    from kokoro_service.text.segmenter import _breakable

    assert _breakable("Jan.", "She")  # a sentence end
    assert not _breakable("Mar.", "3rd")  # a date
    assert not _breakable("Tue.", "Mar.")
    assert not _breakable("Tue.,", "Mar.")
    assert not _breakable("Tue.", "M")  # may still grow into "Mar."
    assert not _breakable("no.", "5")
