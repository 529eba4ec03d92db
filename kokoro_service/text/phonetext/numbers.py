"""Numbers as words, and the rules for amounts: money, percentages, ordinals.

The spellers here (cardinals, ordinals, paired years, digit by digit, letter by letter)
are what every other family writes its output with, so this module imports none of them.
"""

from __future__ import annotations

import re

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_WORDS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
# int() refuses very long digit strings (and they would be read as nonsense anyway):
# beyond this many digits a number is read digit by digit.
_MAX_CARDINAL_DIGITS = 15


def _cardinal(n: int) -> str:
    """US cardinal, no "and" or hyphens: 1234 -> "one thousand two hundred thirty four"."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, one = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[one]}" if one else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {_cardinal(rest)}" if rest else "")
    for value, name in _SCALES:
        if n >= value:
            high, rest = divmod(n, value)
            return f"{_cardinal(high)} {name}" + (f" {_cardinal(rest)}" if rest else "")
    raise AssertionError("unreachable")  # pragma: no cover


def _ordinal(n: int) -> str:
    words = _cardinal(n).split(" ")
    last = words[-1]
    if last in _ORDINAL_WORDS:
        words[-1] = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def _paired(n: int) -> str:
    """How years and house numbers are said: 1999 -> "nineteen ninety nine", 2005 -> "two
    thousand five", 1200 -> "twelve hundred", 1005 -> "ten oh five", 742 -> "seven forty two"."""
    if n < 100 or n >= 10000 or n % 1000 == 0 or 2000 <= n <= 2009:
        return _cardinal(n)  # "two thousand five", not "twenty oh five"
    high, low = divmod(n, 100)
    if low == 0:
        return f"{_cardinal(high)} hundred"
    if low < 10:
        return f"{_cardinal(high)} oh {_ONES[low]}"
    return f"{_cardinal(high)} {_cardinal(low)}"


def _number(digits: str) -> str:
    """A digit string as a cardinal, or digit by digit when it is too long to be one."""
    digits = digits.replace(",", "")
    if not digits.isascii() or not digits.isdigit():
        return digits
    if len(digits) > _MAX_CARDINAL_DIGITS:
        return _digits(digits)
    return _cardinal(int(digits))


def _digits(digits: str) -> str:
    """Digit by digit, "0" as "zero" (unambiguous on a phone line, unlike "oh")."""
    return " ".join(_ONES[ord(c) - 48] for c in digits if "0" <= c <= "9")


def _letter(c: str) -> str:
    # misaki reads a lone "A" before another word as the article (a schwa); "A." is the
    # letter's name, and its period adds no pause.
    c = c.upper()
    return "A." if c == "A" else c


def _spell(token: str) -> str:
    """Character by character; hyphens become a pause: "AB-12X9" -> "A. B, one two X nine"."""
    groups = []
    for group in re.split(r"[-\s]+", token):
        words = [
            _ONES[ord(c) - 48] if "0" <= c <= "9" else _letter(c) for c in group if c.isalnum()
        ]
        if words:
            groups.append(" ".join(words))
    return ", ".join(groups)


_CURRENCIES = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "€": ("euro", "euros", "cent", "cents"),
}
# The amount takes every decimal there is ("$3.999" must not become "... cents9"); without
# a scale word only whole cents (exactly two decimals) are money, the rest is left to misaki.
_MONEY = re.compile(
    r"(?<![\w$£€.,])([$£€])\s?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{1,6}))?(?!\d|[.,]\d)"
    r"(?:\s?(thousand|million|billion|trillion|[KkMB])(?![A-Za-z]))?"
)
_SCALE_WORDS = {"k": "thousand", "K": "thousand", "M": "million", "B": "billion"}


def _money(m: re.Match[str]) -> str:
    one, many, cent, cents = _CURRENCIES[m.group(1)]
    whole, frac, scale = m.group(2).replace(",", ""), m.group(3), m.group(4)
    if len(whole) > _MAX_CARDINAL_DIGITS or (frac and not scale and len(frac) != 2):
        return m.group(0)
    if scale:  # "$1.5 million" -> "one point five million dollars"
        amount = _cardinal(int(whole)) + (f" point {_digits(frac)}" if frac else "")
        return f"{amount} {_SCALE_WORDS.get(scale, scale)} {many}"
    units = int(whole)
    sub = int(frac.ljust(2, "0")) if frac else 0
    parts = []
    if units or not sub:
        parts.append(f"{_cardinal(units)} {one if units == 1 else many}")
    if sub:
        parts.append(f"{_cardinal(sub)} {cent if sub == 1 else cents}")
    return " and ".join(parts)


_PERCENT = re.compile(r"(?<![\w.,])(\d{1,15})(?:\.(\d{1,6}))?\s?%")


def _percent(m: re.Match[str]) -> str:
    point = f" point {_digits(m.group(2))}" if m.group(2) else ""
    return f"{_number(m.group(1))}{point} percent"


_ORDINAL = re.compile(r"(?<![\w.,$])(\d{1,9})(?:st|nd|rd|th|ST|ND|RD|TH)(?![A-Za-z0-9])")


def _ordinal_match(m: re.Match[str]) -> str:
    return _ordinal(int(m.group(1)))
