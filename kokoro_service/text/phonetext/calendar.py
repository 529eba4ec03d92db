"""Times, ratios, dates, and day and month abbreviations.

Month and day abbreviations are also names and words ("Jan.", "Sun."), so most of this
module decides from the words around one whether it is part of a date.
"""

from __future__ import annotations

import re

from kokoro_service.text.phonetext.abbreviations import _keep_final_dot, _keep_sentence_dot
from kokoro_service.text.phonetext.numbers import _ONES, _cardinal, _ordinal, _paired

_MONTHS = (
    "January February March April May June July August September October November December"
).split()
_MONTH_ABBR = {m[:3]: m for m in _MONTHS} | {"Sept": "September"}
_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_DAY_ABBR = {d[:3]: d for d in _DAYS} | {"Tues": "Tuesday", "Thur": "Thursday", "Thurs": "Thursday"}
_MONTH_NAME = "|".join(sorted(_MONTHS + list(_MONTH_ABBR), key=len, reverse=True))

_TIME = re.compile(
    r"(?<![\w:.,/$])([01]?\d|2[0-3]):([0-5]\d)(?::[0-5]\d)?(?![\d:])"
    r"(?:\s?([AaPp])\.?\s?[Mm](?![A-Za-z])(\.(?=\s+[a-z]))?)?"
)
_HOUR_AMPM = re.compile(
    r"(?<![\w:.,/$])(1[0-2]|0?[1-9])\s?([AaPp])\.?\s?[Mm](?![A-Za-z])(\.(?=\s+[a-z]))?"
)


def _ampm(letter: str, m: re.Match[str]) -> str:
    # "a.m."/"p.m." are read as letter names by misaki ("A M" would give the article);
    # a period right after the match is the sentence's and closes the abbreviation.
    end = m.end()
    follows_dot = end < len(m.string) and m.string[end] == "."
    return f" {letter.lower()}.m" + ("" if follows_dot else ".")


def _time(m: re.Match[str]) -> str:
    hour, minute = int(m.group(1)), int(m.group(2))
    if m.group(3) and not 1 <= hour <= 12:
        return m.group(0)  # "13:30 PM": no clock reads so; left to misaki
    words = _cardinal(hour)
    if minute:
        words += f" oh {_ONES[minute]}" if minute < 10 else f" {_cardinal(minute)}"
    elif not m.group(3):
        words += " o'clock" if 1 <= hour <= 12 else " hundred"
    return words + (_ampm(m.group(3), m) if m.group(3) else "")


# "a ratio of 1:10", "3:1 odds", "a 1:25 scale": two numbers, said "one to ten", never a
# time; only with one of these words next to it, since "at 1:10" is ten past one.
_RATIO = re.compile(
    r"(?i:(\b(?:ratios?|odds|scale|aspect|proportions?|dilution|diluted|mix(?:ed)?|score[ds]?)"
    r"(?:\s+(?:of|is|was))?\s+)"
    r"(\d{1,3}):(\d{1,3})(?![\d:]|[.,]\d)"
    r"|(?<![\w:.,/$])(\d{1,3}):(\d{1,3})(?![\d:]|[.,]\d)"
    r"(?=\s+(?:ratios?|odds|scale|split|mix|dilution|aspect|win|victory|loss|lead|defeat)\b))"
)


def _ratio(m: re.Match[str]) -> str:
    if m.group(1) is not None:
        return f"{m.group(1)}{_cardinal(int(m.group(2)))} to {_cardinal(int(m.group(3)))}"
    return f"{_cardinal(int(m.group(4)))} to {_cardinal(int(m.group(5)))}"


def _hour_ampm(m: re.Match[str]) -> str:
    return _cardinal(int(m.group(1))) + _ampm(m.group(2), m)


def _year(digits: str) -> str:
    n = int(digits)
    return _paired(2000 + n if len(digits) == 2 else n)


_DATE_NUMERIC = re.compile(
    r"(?<![\w/.,-])(0?[1-9]|1[0-2])/(0?[1-9]|[12]\d|3[01])/(\d{4}|\d{2})(?![\w/]|[.,]\d)"
)
_DATE_ISO = re.compile(
    r"(?<![\w/.-])(\d{4})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])(?![\w/-]|[.,]\d)"
)
_DATE_WORDS = re.compile(
    rf"\b({_MONTH_NAME})(\.)?\s+(0?[1-9]|[12]\d|3[01])(?:st|nd|rd|th)?(?![\w:]|[.,/]\d)"
    rf"(?:(,?\s+)([12]\d{{3}})(?!\w|[.,]\d))?"
)


def _month_day_year(month: int, day: int, year: str | None) -> str:
    out = f"{_MONTHS[month - 1]} {_ordinal(day)}"
    return out + (f", {_year(year)}" if year else "")


def _date_numeric(m: re.Match[str]) -> str:
    return _month_day_year(int(m.group(1)), int(m.group(2)), m.group(3))


def _date_iso(m: re.Match[str]) -> str:
    return _month_day_year(int(m.group(2)), int(m.group(3)), m.group(1))


def _date_words(m: re.Match[str]) -> str:
    name = m.group(1)
    month = _MONTH_ABBR.get(name, name)
    out = f"{month} {_ordinal(int(m.group(3)))}"
    return out + (f", {_year(m.group(5))}" if m.group(5) else "")


# Month and day abbreviations are expanded in a date ("Tue., Mar. 3rd", "Jan. 2026").
# Outside one, those that are also names or words ("I spoke with Jan.", "in the Sun.")
# are left alone, dot and all, so that the dot still ends the sentence; the others
# ("Tue.", "Feb.", and "Sat.", "Wed.", whose verbs are never capitalised mid-sentence)
# are nothing but abbreviations with their dot, and misaki has no (or the verb's) reading
# for them, so they are expanded anywhere, keeping the dot where it ends a sentence.
_AMBIGUOUS_CALENDAR = frozenset("Jan Jun Mar Mon Thu Sun".split())
_DAY_NAME = "|".join(sorted(_DAYS + list(_DAY_ABBR), key=len, reverse=True))
_MONTH_ABBR_DOT = re.compile(r"\b(Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec)\.")
_RANGE_JOIN = r"(?:\s*[-–—/&]\s*|\s+(?:to|through|thru|and|or)\s+)"
# After a month: a day number, a year or another month ("Mar. 3rd", "Jan. 2026",
# "Jan., 2026", "Jan. or Feb.").
_DATE_AFTER_MONTH = re.compile(
    r",?\s+(?:\d{1,2}(?:st|nd|rd|th)?|[12]\d{3})(?![\w:]|[.,/]\d)"
    rf"|{_RANGE_JOIN}(?:{_MONTH_NAME})\b"
)
# Before a month: a day number, another month, or a word that names a month ("the 5th
# of Mar.", "5 Mar.", "Jan. or Mar.", "back in Jan.", "until Mar.").
_DATE_BEFORE_MONTH = re.compile(
    r"(?:(?<![\w.,])\d{1,2}(?:st|nd|rd|th)?(?:\s+of)?\s+"
    rf"|\b(?:{_MONTH_NAME})\.?,?{_RANGE_JOIN}"
    r"|\b(?:[Ii]n|[Ss]ince|[Uu]ntil|[Tt]ill|[Tt]hrough|[Dd]uring|[Ee]arly|[Ll]ate|[Mm]id|"
    r"[Ll]ast|[Nn]ext|[Tt]his|[Ee]very)\s+)$"
)
_DAY_ABBR_RE = re.compile(r"\b(Mon|Tues|Tue|Wed|Thurs|Thur|Thu|Fri|Sat|Sun)(?![\w'’])(\.)?")
# After a day: a month, a date, a time, a part of the day, or another day ("Tue., Mar. 3rd",
# "Tue. 3/5", "Mon 9 AM", "Sat. night", "Mon.-Fri.").
# The dates here include every form a later rule turns into a month name ("2026-03-05",
# "3/5/2026"), so that a second pass decides as the first did.
_DATE_AFTER_DAY = re.compile(
    rf",?\s+(?:(?:\d{{1,2}}(?:st|nd|rd|th)?\s+)?(?:(?:{_MONTH_NAME})\b"
    r"|\d{4}-\d\d-\d\d\b|\d{1,2}/\d{1,2}\b)"
    r"|\d{1,2}(?:st|nd|rd|th)\b|\d{1,2}:[0-5]\d\b|\d{1,2}\s?[AaPp]\.?\s?[Mm]\b"
    r"|(?:morning|afternoon|evening|night)\b)"
    rf"|{_RANGE_JOIN}(?:{_DAY_NAME})\b"
)
# After a dotted day: hours ("Sat. 10 to 2", "Wed. at 3").
_HOURS_AFTER_DAY = re.compile(
    r"\s+(?:(?:at|from|between|until|till|before|after)\s+\d{1,2}"
    r"|\d{1,2}(?::[0-5]\d)?\s*(?:-|–|to)\s*\d{1,2})\b"
)
# Before a day: another day ("Mon-Fri", "Sat. and Sun."), or, for a dotted one, a word
# that names a day ("on Sun.", "next Mon.", "closed Sun.").
_DAY_BEFORE_DAY = re.compile(rf"\b(?:{_DAY_NAME})\.?,?{_RANGE_JOIN}$")
_WORD_BEFORE_DAY = re.compile(
    r"\b(?:[Oo]n|[Nn]ext|[Ll]ast|[Tt]his|[Ee]very|[Uu]ntil|[Tt]ill|[Tt]hrough|[Oo]pen|[Cc]losed)"
    r"\s+$"
)


def _month_abbr(m: re.Match[str]) -> str:
    abbr, word = m.group(1), _MONTH_ABBR[m.group(1)]
    before = m.string[max(0, m.start() - 16) : m.start()]
    if _DATE_AFTER_MONTH.match(m.string, m.end()):
        return _keep_final_dot(m, word)
    if _DATE_BEFORE_MONTH.search(before):
        return _keep_sentence_dot(m, word)
    if abbr in _AMBIGUOUS_CALENDAR:
        return m.group(0)  # "I spoke with Jan. She said": a name and a sentence end
    return _keep_sentence_dot(m, word)


def _day_abbr(m: re.Match[str]) -> str:
    abbr, dot, word = m.group(1), m.group(2), _DAY_ABBR[m.group(1)]
    if _DATE_AFTER_DAY.match(m.string, m.end()):
        return _keep_final_dot(m, word)
    before = m.string[max(0, m.start() - 24) : m.start()]
    if _DAY_BEFORE_DAY.search(before):
        return _keep_sentence_dot(m, word)
    if dot and (_WORD_BEFORE_DAY.search(before) or _HOURS_AFTER_DAY.match(m.string, m.end())):
        return _keep_sentence_dot(m, word)
    if not dot:
        return m.group(0)  # "Sun", "Wed" without a date: words
    if abbr in _AMBIGUOUS_CALENDAR:
        return m.group(0)  # "We sat in the Sun. It was warm."
    return _keep_sentence_dot(m, word)
