"""Confirmation and reference codes, spelled character by character.

Most keywords that announce a code are also ordinary words ("case", "claim"), so a code
must look like an identifier; a capitals-only one must not be a word of misaki's lexicon.
"""

from __future__ import annotations

import re

from kokoro_service.text.phonetext.addresses import _lexicon_words
from kokoro_service.text.phonetext.numbers import _spell

# Confirmation and reference codes.  After a keyword the code must look like an identifier,
# since most keywords are also ordinary words ("in case 100 people come", "policy 2 weeks",
# "claim 500 points", "booking 100 rooms") and misaki reads plain numbers well:
#
# - letters and digits ("AB12X9", "XK-42-B"), but not an ordinal or a measure ("2nd",
#   "5pm", "100MB") unless a marker (below) says it is a code;
# - digits only: 3 or more after a marker ("number", "no.", "num", "id", "code", "#", ":")
#   or a keyword that names nothing but codes ("code", "confirmation", "id"), 4 or more
#   after "pin", else 5 or more, and never what a number counts ("claim 25000 dollars");
# - capitals only ("QXRTZP"): after a marker or "is"/"was", or right after a keyword that
#   names nothing but codes (confirmation, reference, booking...), and never a word
#   ("APPROVED").
#
# Elsewhere only a capital letter-and-digit token of 4+ characters ("AB12X9") is taken to
# be one, and never a measure ("100MB").
_CODE_AFTER_KEYWORD = re.compile(
    r"(?i:\b(?:(?P<kw>confirmation|reference|ref|booking|reservation|tracking|ticket|claim|"
    r"policy|member(?:ship)?|invoice|case|pnr|pin|code|id)|(?P<kw2>order|account|record|"
    r"patient|customer|transaction))"
    r"(?(kw2)(?:\s+(?P<m1>number|no\.|num\.?|id|code)|(?=\s*#))"
    r"|(?:\s+(?P<m2>number|no\.|num\.?|id|code))?)"
    r"(?:\s+(?P<verb>is|was|will\s+be))?(?:\s*(?P<sep>[:#])\s*|\s+))"
    r"(?P<code>(?=[A-Za-z-]*\d)[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*|[A-Z]{2,}\d*(?:-[A-Z0-9]+)*)"
    r"(?![\w-]|[.,]\d|%)"
)
# Keywords never followed by a quantity in prose: 3+ digits after one are a code.
_NUMBER_CODE_KEYWORDS = frozenset("confirmation ref pnr code id".split())
# Keywords that name nothing but codes: capitals right after one are a code.
_CODE_ONLY_KEYWORDS = _NUMBER_CODE_KEYWORDS | {"reference", "booking", "reservation", "tracking"}
_MEASURE = re.compile(r"\d+[A-Za-z]{1,3}")
# A number followed by what it counts is a quantity ("claim 25000 dollars").
_COUNTED = re.compile(
    r"\s+(?:dollars|cents|euros|pounds|percent|people|persons|points|miles|items|units|"
    r"times|years|months|weeks|days|hours|minutes|seconds|calls|members|patients|customers|"
    r"orders|claims|cases|tickets|policies|bookings|visitors|users|copies|pages|words|steps)\b"
)
_MIN_MARKED_DIGITS = 3
_MIN_BARE_DIGITS = 5
_MIN_PIN_DIGITS = 4


def _is_code(m: re.Match[str]) -> bool:
    code = m["code"]
    keyword = (m["kw"] or m["kw2"]).lower()
    marked = bool(m["m1"] or m["m2"] or m["sep"])
    if keyword == "case" and re.search(
        r"(?i:\bin\s+)$", m.string[max(0, m.start() - 4) : m.start()]
    ):
        return False  # "in case 12345 people come": the idiom
    if code.isdigit():
        if _COUNTED.match(m.string, m.end()):
            return False
        if marked or keyword in _NUMBER_CODE_KEYWORDS:
            return len(code) >= _MIN_MARKED_DIGITS  # "code 7": nothing to spell
        return len(code) >= (_MIN_PIN_DIGITS if keyword == "pin" else _MIN_BARE_DIGITS)
    if any(c.isdigit() for c in code):
        return marked or not _MEASURE.fullmatch(code)  # "policy 2nd", "ticket 5pm"
    # Capitals only.
    if not (marked or m["verb"] or keyword in _CODE_ONLY_KEYWORDS):
        return False
    gold, silver = _lexicon_words()
    letters = code.replace("-", "").lower()
    return letters not in gold and letters not in silver  # "Your claim is APPROVED"


_CODE_ALONE = re.compile(
    r"(?<![\w@./$-])(?=[A-Z]*\d)(?=\d*[A-Z])(?![0-9]+[A-Z]{1,3}\b)[A-Z0-9]{4,}(?![\w@-])"
)


def _code_after_keyword(m: re.Match[str]) -> str:
    if not _is_code(m):
        return m.group(0)
    return m.group(0)[: m.start("code") - m.start()] + _spell(m["code"])


def _code_alone(m: re.Match[str]) -> str:
    return _spell(m.group(0))
