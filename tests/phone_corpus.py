"""Phone content as an LLM writes it, paired with what a person says for it.

Each pair is (written, spoken): ``written`` is one short sentence of the kind a telephone
agent's LLM produces; ``spoken`` is the plain words a listener would write down, lower
case and without punctuation.  The ASR test synthesises ``written`` (before and after
:func:`kokoro_service.text.phonetext.normalize`) and scores the transcript against ``spoken``
after whisper-normalizer's EnglishTextNormalizer; ``tests/unit/text/test_phonetext.py`` checks
offline that ``normalize(written)`` and ``spoken`` normalise to the same words.

Every category normalize handles appears at least once: phone numbers, ZIP codes and
states, confirmation codes, e-mail addresses, URLs, street and title abbreviations, days
and months, ordinals, money, times and dates.  Every other word is one misaki's own
lexicon knows, so that the score measures the normalisation, not G2P's guesses.
"""

from __future__ import annotations

PHONE_CORPUS: tuple[tuple[str, str], ...] = (
    ("Please call 555-0199.", "please call five five five zero one nine nine"),
    (
        "Our number is (415) 555-0123.",
        "our number is four one five five five five zero one two three",
    ),
    ("The office is at 1234 W. Main St.", "the office is at twelve thirty four west main street"),
    ("We are in Springfield, IL 62704.", "we are in springfield illinois six two seven zero four"),
    ("Your confirmation code is AB12X9.", "your confirmation code is a b one two x nine"),
    ("Visit acmedental.com for details.", "visit acme dental dot com for details"),
    ("Email j.doe@acme.com with questions.", "email j dot doe at acme dot com with questions"),
    ("See you Tue., Mar. 3rd.", "see you tuesday march third"),
    ("Your appointment is at 3:30 PM.", "your appointment is at three thirty p m"),
    ("Your total is $12.50.", "your total is twelve dollars and fifty cents"),
    (
        "Dr. Smith will see you on March 5, 2026.",
        "doctor smith will see you on march fifth twenty twenty six",
    ),
    ("Park at 200 St. Mary Ave.", "park at two hundred saint mary avenue"),
    ("Your visit is on 03/05/2026.", "your visit is on march fifth twenty twenty six"),
    ("We open at 9 AM on the 21st.", "we open at nine a m on the twenty first"),
)
