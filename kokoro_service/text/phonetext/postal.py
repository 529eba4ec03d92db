"""Postal addresses: states and ZIP codes, street types, directions, units, house numbers.

"St" and "Dr" may be a street or a title, so the street rules read the house number and
name around an abbreviation before expanding it.
"""

from __future__ import annotations

import re

from kokoro_service.text.phonetext.abbreviations import _keep_final_dot
from kokoro_service.text.phonetext.numbers import _digits, _letter, _number, _paired

_STATES = {
    "AL": "Alabama", "AK": "Alaska", "AZ": "Arizona", "AR": "Arkansas", "CA": "California",
    "CO": "Colorado", "CT": "Connecticut", "DE": "Delaware", "FL": "Florida", "GA": "Georgia",
    "HI": "Hawaii", "ID": "Idaho", "IL": "Illinois", "IN": "Indiana", "IA": "Iowa",
    "KS": "Kansas", "KY": "Kentucky", "LA": "Louisiana", "ME": "Maine", "MD": "Maryland",
    "MA": "Massachusetts", "MI": "Michigan", "MN": "Minnesota", "MS": "Mississippi",
    "MO": "Missouri", "MT": "Montana", "NE": "Nebraska", "NV": "Nevada",
    "NH": "New Hampshire", "NJ": "New Jersey", "NM": "New Mexico", "NY": "New York",
    "NC": "North Carolina", "ND": "North Dakota", "OH": "Ohio", "OK": "Oklahoma",
    "OR": "Oregon", "PA": "Pennsylvania", "RI": "Rhode Island", "SC": "South Carolina",
    "SD": "South Dakota", "TN": "Tennessee", "TX": "Texas", "UT": "Utah", "VT": "Vermont",
    "VA": "Virginia", "WA": "Washington", "WV": "West Virginia", "WI": "Wisconsin",
    "WY": "Wyoming", "DC": "D C", "PR": "Puerto Rico",
}  # fmt: skip
# Codes that are also words or common abbreviations: expanded only before a ZIP code.
_AMBIGUOUS_STATES = frozenset("AL CO DE HI ID IN LA MA ME MD MO MS MT NE OH OK OR PA".split())
_STATE_CODE = "|".join(_STATES)
_STATE_NAME = "|".join(sorted(set(_STATES.values()) - {"D C"}, key=len, reverse=True))
_ZIP = r"(\d{5})(?:-(\d{4}))?(?![\w-]|[.,]\d)"
# "Springfield, IL 62704": a state code after a city and comma, or opening a segment (the
# segmenter may cut at the comma) when a ZIP code follows.
_STATE_ZIP = re.compile(rf"(?:(?<=[A-Za-z.],\s)|(?<=[A-Za-z.],)|^)({_STATE_CODE})\s+{_ZIP}")
_STATE_ALONE = re.compile(
    rf"(?<=[a-z.],\s)({'|'.join(sorted(_STATES.keys() - _AMBIGUOUS_STATES))})(?=\s*(?:$|[.;!?)]))"
)
_STATE_NAME_ZIP = re.compile(rf"\b({_STATE_NAME})\s+{_ZIP}")
_ZIP_WORD = re.compile(rf"(?i:\b(zip(?:\s?code)?|postal\s+code)(\s*(?:is\s+|:\s*)?))(?-i:{_ZIP})")


def _zip(five: str, four: str | None) -> str:
    return _digits(five) + (f", {_digits(four)}" if four else "")


def _state_zip(m: re.Match[str]) -> str:
    return f"{_STATES[m.group(1)]}, {_zip(m.group(2), m.group(3))}"


def _state_alone(m: re.Match[str]) -> str:
    return _STATES[m.group(1)]


def _state_name_zip(m: re.Match[str]) -> str:
    return f"{m.group(1)}, {_zip(m.group(2), m.group(3))}"


def _zip_word(m: re.Match[str]) -> str:
    return f"{m.group(1)}{m.group(2)}{_zip(m.group(3), m.group(4))}"


_STREET_TYPES = {
    "St": "Street", "Ave": "Avenue", "Av": "Avenue", "Blvd": "Boulevard", "Rd": "Road",
    "Dr": "Drive", "Ln": "Lane", "Ct": "Court", "Pl": "Place", "Pkwy": "Parkway",
    "Hwy": "Highway", "Cir": "Circle", "Sq": "Square", "Ter": "Terrace", "Trl": "Trail",
    "Expy": "Expressway", "Fwy": "Freeway", "Rte": "Route",
}  # fmt: skip
_UNAMBIGUOUS_TYPES = frozenset(["Ave", "Blvd", "Rd", "Pkwy", "Hwy", "Expy", "Fwy"])
_STREET_WORDS = "|".join(sorted(set(_STREET_TYPES.values()) | {"Way", "Row", "Loop"}))
_STREET_ABBR = re.compile(
    r"\b(" + "|".join(sorted(_STREET_TYPES, key=len, reverse=True)) + r")(\.)?(?![\w'’])(?!\.\w)"
)
# A house number, an optional direction and up to three name words, just before the
# abbreviation: "1234 W. Main St", "55 5th Ave".
_HOUSE_BEFORE = re.compile(r"\b\d{1,6}[A-Za-z]?\s+(?:[NSEW]\.?\s+)?(?:[A-Z0-9][\w'’.-]*\s+){1,3}$")
_NAME_AFTER = re.compile(r"\s*[A-Z][a-z]")
_STREET_NAME = re.compile(r"[A-Z][\w'’]*|\d+(?:st|nd|rd|th)")


def _street_abbr(m: re.Match[str]) -> str:
    abbr = m.group(1)
    before = m.string[max(0, m.start() - 80) : m.start()]
    name_follows = bool(_NAME_AFTER.match(m.string, m.end()))
    words = before.split()
    # The previous word names the street when it is capitalised or an ordinal ("5th St")
    # and directly precedes (no comma: "Thanks, Dr. Smith"), unless it opens the segment,
    # where a capital means nothing (except before a type that is never a title).
    after_name = bool(words) and before[-1:].isspace() and bool(_STREET_NAME.fullmatch(words[-1]))
    names_street = after_name and len(words) >= 2
    in_address = bool(_HOUSE_BEFORE.search(before))
    if abbr == "Dr":
        word = "Drive" if in_address or (names_street and not name_follows) else "Doctor"
    elif abbr == "St":
        word = "Street" if in_address or names_street or not name_follows else "Saint"
    elif in_address or names_street or (after_name and abbr in _UNAMBIGUOUS_TYPES):
        word = _STREET_TYPES[abbr]
    else:
        return m.group(0)  # "Pl", "Ct", "Ter" elsewhere may mean anything
    return _keep_final_dot(m, word)


_DIRECTIONS = {
    "N": "North", "S": "South", "E": "East", "W": "West",
    "NE": "Northeast", "NW": "Northwest", "SE": "Southeast", "SW": "Southwest",
}  # fmt: skip
# "1234 W. Main": a single-letter direction between a house number and a name.
_DIRECTION_AFTER_NUMBER = re.compile(r"(?<![\w.,$])(\d{1,6}\s+)([NSEW])\.?(?=\s+[A-Z0-9])")
# "Main Street NW": a compass quarter after the street type.
_DIRECTION_AFTER_STREET = re.compile(rf"\b({_STREET_WORDS})(,?\s+)(N\.?E|N\.?W|S\.?E|S\.?W)\b\.?")


def _direction_after_number(m: re.Match[str]) -> str:
    return m.group(1) + _DIRECTIONS[m.group(2)]


def _direction_after_street(m: re.Match[str]) -> str:
    word = _DIRECTIONS[m.group(3).replace(".", "")]
    return m.group(1) + m.group(2) + _keep_final_dot(m, word)


_UNITS = {"Apt": "Apartment", "Ste": "Suite", "Bldg": "Building", "Fl": "Floor", "Rm": "Room"}
_UNIT = re.compile(
    r"\b(Apt|APT|Ste|STE|Bldg|Fl|Rm)\.?\s*(#\s*)?"
    r"(\d{1,6}[A-Za-z]?|[A-Z])(?![\w-])"
)


def _unit(m: re.Match[str]) -> str:
    kind = m.group(1)
    word = _UNITS.get(kind.capitalize(), kind)
    ident = m.group(3)
    if ident.isalpha():
        said = _letter(ident)
    else:
        letter = ident[-1] if ident[-1].isalpha() else ""
        digits = ident[: len(ident) - len(letter)]
        said = _number(digits) if len(digits) <= 4 else _digits(digits)
        said += f" {_letter(letter)}" if letter else ""
    return f"{word} {'number ' if m.group(2) else ''}{said}"


_HOUSE_NUMBER = re.compile(
    r"(?<![\w$.,:/#-])(\d{1,5})(?=\s+(?:(?:North|South|East|West)\s+)?"
    rf"(?:[A-Z0-9][\w'’-]*\s+){{1,3}}(?:{_STREET_WORDS}|North|South|East|West)\b)"
)


def _house_number(m: re.Match[str]) -> str:
    digits = m.group(1)
    if len(digits) == 5 or digits.startswith("0"):
        return _digits(digits)
    return _paired(int(digits))
