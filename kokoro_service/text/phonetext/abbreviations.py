"""Where an abbreviation's period stays; titles ("Mr.", "Prof."); the number sign ("No. 5").

The period of "St." or "Mar." may also be the sentence's full stop, where misaki pauses;
the two helpers here decide when it stays, for every rule that expands an abbreviation
(the titles here, :mod:`.calendar`, and :mod:`.postal`, which also reads "Dr.").
"""

from __future__ import annotations

import re

from kokoro_service.text.phonetext.numbers import _number


def _keep_final_dot(m: re.Match[str], word: str) -> str:
    """``word`` for an abbreviation; its period is kept only where it ends the segment
    (then it is also the sentence's full stop)."""
    dotted = m.group(0).endswith(".")
    last = not m.string[m.end() :].strip()
    return word + ("." if dotted and last else "")


def _keep_sentence_dot(m: re.Match[str], word: str) -> str:
    """``word`` for an abbreviation outside a date: its period is kept where a sentence
    could end there (the segment ends, or a capital follows), so that misaki pauses."""
    if not m.group(0).endswith("."):
        return word
    rest = m.string[m.end() : m.end() + 2]
    ends = not m.string[m.end() :].strip() or (rest[:1].isspace() and rest[1:].isupper())
    return word + ("." if ends else "")


_TITLES = {
    "Mr": "Mister", "Mrs": "Missus", "Prof": "Professor", "Jr": "Junior", "Sr": "Senior",
    "Rev": "Reverend", "Capt": "Captain", "Sgt": "Sergeant", "Lt": "Lieutenant", "Mt": "Mount",
}  # fmt: skip
_TITLE = re.compile(r"\b(Mrs|Mr|Prof|Jr|Sr|Rev|Capt|Sgt|Lt|Mt)\.")


def _title(m: re.Match[str]) -> str:
    return _keep_final_dot(m, _TITLES[m.group(1)])


# "#5", "room no. 5", "Order No. 5".  "no." is the word "no" unless it is clearly a number
# sign: capitalised mid-sentence, or after a noun that numbers things; "The answer is no.
# 5 people came" and a sentence opening "No. 5 is..." are answers, not numbers.  misaki
# itself reads "no. 5" as "number five", so after a word that makes "no" an answer ("is
# no.", "said no.") the number is written as the word opening the next sentence.
_NUMBER_SIGN = re.compile(
    r"(?<=\w )no\. (\d{1,15})(?!\w|[.,:/]\d)|(?:(?<=\w )(No|no)\.|#)\s?(?=\d)"
)
_ANSWER_BEFORE = re.compile(
    r"(?i:\b(?:is|was|are|were|be|say|says|said|answered|replied|just|simply|definitely|"
    r"certainly|probably|still)\s+$)"
)
_NUMBERED_BEFORE = re.compile(
    r"(?i:\b(?:room|rm|order|item|apartment|apt|unit|suite|ste|flat|house|building|bldg|floor|"
    r"gate|platform|seat|table|box|lot|bay|dock|stall|booth|line|page|section|chapter|"
    r"invoice|ticket|account|case|claim|policy|patient|member|reference|ref|file|form|model|"
    r"part|serial|check|cheque|flight|train|bus|route|track|store|branch|lane|door)\s+$)"
)


def _number_sign(m: re.Match[str]) -> str:
    before = m.string[max(0, m.start() - 16) : m.start()]
    if m.group(1) is not None:  # "no. 5"
        if _NUMBERED_BEFORE.search(before):
            return f"number {m.group(1)}"
        if _ANSWER_BEFORE.search(before):
            return f"no. {_number(m.group(1)).capitalize()}"  # "is no. Five people came"
        return m.group(0)
    if m.group(2) == "no" and not _NUMBERED_BEFORE.search(before):
        return m.group(0)
    return "number "
