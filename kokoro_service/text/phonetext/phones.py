"""Phone numbers (US, local, international) and extensions, said in digit groups.

A listener writes a number down as it is said: digit by digit, in the groups it is
written in, "800" as "eight hundred".  A 7-digit local number has the shape of a range
("pages 100-2000"), so that rule also reads the words before it.
"""

from __future__ import annotations

import re

from kokoro_service.text.phonetext.numbers import _digits

_PHONE_SEP = r"[ .\-\u2010\u2011\u2012\u2013]"
_PHONE_EXT = r"(?:,? ?(?:[Ee]xt\.?|[Ee]xtension|x) ?(\d{1,6}))?"
_PHONE_US = re.compile(
    rf"(?<![\w$.,+/-])(?:(\+)?(1){_PHONE_SEP}?)?"
    rf"(?:\((\d{{3}})\) ?|(\d{{3}}){_PHONE_SEP})(\d{{3}}){_PHONE_SEP}(\d{{4}})"
    rf"{_PHONE_EXT}(?![\w/-]|[.,]\d)"
)
# A 7-digit local number ("555-0199") has the shape of a range ("pages 100-2000"), so it
# needs a real exchange (first digit 2-9, as in the North American plan), and is left
# alone when both halves are round ("500-1000") or a range word comes just before.
_PHONE_LOCAL = re.compile(
    rf"(?<![\w$.,+/-])([2-9]\d{{2}})[-\u2010\u2011](\d{{4}}){_PHONE_EXT}(?![\w/-]|[.,]\d)"
)
_RANGE_BEFORE = re.compile(
    r"(?i:\b(?:pages?|pp?\.|lines?|rows?|years?|ages?|between|chapters?|sections?|verses?|"
    r"steps?|items?|sizes?|ranges?|scores?)\s*$)"
)
_PHONE_INTL = re.compile(r"(?<![\w$.,+/-])\+(\d{1,3})((?:[ .-]\d{1,5}){2,5})(?![\w/-]|[.,]\d)")
# Fewer digits than this after the country code is no telephone number ("+5 10 20").
_MIN_INTL_DIGITS = 6


def _phone_group(digits: str) -> str:
    # Toll-free "800" is said as a number; everything else digit by digit.
    return "eight hundred" if digits == "800" else _digits(digits)


def _phone_us(m: re.Match[str]) -> str:
    plus, country, area_paren, area, exchange, line, ext = m.groups()
    groups = []
    if country:
        groups.append(("plus " if plus else "") + "one")
    groups += [_phone_group(area_paren or area), _digits(exchange), _digits(line)]
    return ", ".join(groups) + _extension(ext)


def _extension(ext: str | None) -> str:
    return f", extension {_digits(ext)}" if ext else ""


def _phone_local(m: re.Match[str]) -> str:
    exchange, line = m.group(1), m.group(2)
    before = m.string[max(0, m.start() - 12) : m.start()]
    round_range = exchange.endswith("0") and line.endswith("00") and not line.startswith("0")
    if round_range or _RANGE_BEFORE.search(before):
        return m.group(0)  # "500-1000", "pages 200-3000": a range
    return f"{_digits(m.group(1))}, {_digits(m.group(2))}" + _extension(m.group(3))


def _phone_intl(m: re.Match[str]) -> str:
    if sum(c.isdigit() for c in m.group(2)) < _MIN_INTL_DIGITS:
        return m.group(0)
    groups = [_digits(g) for g in re.split(r"[ .-]", m.group(2)) if g]
    return ", ".join([f"plus {_digits(m.group(1))}", *groups])
