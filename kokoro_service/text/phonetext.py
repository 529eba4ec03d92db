"""Phone-content normalisation for English: the words a person would say, for misaki's G2P.

misaki's English G2P reads ordinary prose well but stumbles on what a telephone agent says
most: phone numbers come out as cardinals, "St." and "Tue." are unknown, "acmedental.com"
is guessed letter by letter, and a ZIP code becomes "sixty-two thousand...".  This module
rewrites one text segment (a sentence or clause, cut by :mod:`.segmenter`) into plain
words just before G2P.

Responsibilities:

1. :func:`normalize`: phone numbers (digit by digit, grouped), ZIP codes and confirmation
   codes (character by character), e-mail addresses and URLs ("at", "dot", "slash", with
   compound domain labels split into dictionary words), street, state, day, month and
   title abbreviations, ordinals, money, times and dates.
2. :class:`Lexicon`: per-deployment word -> phoneme overrides (the daemon's ``--lexicon``
   file) written in misaki's link syntax ``[word](/phonemes/)``.

Everything here is pure and synchronous.  :func:`normalize` never raises, leaves text with
nothing to rewrite byte for byte unchanged, and costs tens of microseconds per sentence;
the first e-mail or URL loads misaki's word lists (about 0.2 s, once; :func:`warm_up`
does it ahead of time).

Over 400 lines: one pattern and its speller per kind of phone content, applied in an
order that matters, and the lexicon.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Collection
from functools import lru_cache
from importlib import resources
from pathlib import Path

from kokoro_service.errors import ConfigError
from kokoro_service.logs import RateLimitedLog

__all__ = ["Lexicon", "normalize", "warm_up"]

log = logging.getLogger(__name__)
_failures = RateLimitedLog(log)

# --------------------------------------------------------------------------- number words

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


# --------------------------------------------------------------------------- word lists


@lru_cache(maxsize=1)
def _lexicon_words() -> tuple[frozenset[str], frozenset[str]]:
    """misaki's own US gold and silver words, lower-cased: what G2P can read as a word.

    All-capital keys are acronyms misaki spells out; they are left out so that a domain
    label is never split into letters that sound like a word.
    """
    sets: list[frozenset[str]] = []
    for name in ("us_gold.json", "us_silver.json"):
        try:
            data = json.loads(resources.files("misaki.data").joinpath(name).read_text("utf-8"))
        except Exception:  # misaki missing or damaged: no splitting, never an error
            log.warning("misaki word list %s unavailable; domains are not split", name)
            data = {}
        sets.append(
            frozenset(
                k.lower()
                for k in data
                if k.isascii() and k.isalpha() and (len(k) == 1 or not k.isupper())
            )
        )
    gold, silver = sets
    return gold, silver - gold


def warm_up() -> None:
    """Load the word lists now, so that the first e-mail or URL in a call costs nothing."""
    _lexicon_words()


# Two-letter words allowed as pieces of a compound label ("myacme", "gotoacme"); any
# other piece must have at least _MIN_PIECE letters, so labels never shatter into
# syllables that happen to be listed words.
_SHORT_PIECES = frozenset("my go to in on at me we us up do of by is it an or no so be".split())
_MIN_PIECE = 3
_MAX_PIECE = 20
_MAX_SPLIT_LABEL = 40


def _word_break(word: str) -> list[str] | None:
    """Split ``word`` into the fewest dictionary words (gold before silver), or None."""
    gold, silver = _lexicon_words()
    n = len(word)
    if n > _MAX_SPLIT_LABEL:
        return None
    inf = (n + 1, n + 1)
    # best[i]: (pieces, silver pieces) for word[:i]; back[i]: where its last piece starts.
    best: list[tuple[int, int]] = [(0, 0)] + [inf] * n
    back = [0] * (n + 1)
    for i in range(1, n + 1):
        for j in range(max(0, i - _MAX_PIECE), i):
            if best[j] == inf:
                continue
            piece = word[j:i]
            if len(piece) < _MIN_PIECE and piece not in _SHORT_PIECES:
                continue
            if piece in gold:
                cost = (best[j][0] + 1, best[j][1])
            elif piece in silver:
                cost = (best[j][0] + 1, best[j][1] + 1)
            else:
                continue
            if cost < best[i]:
                best[i], back[i] = cost, j
    if best[n] == inf:
        return None
    pieces = []
    i = n
    while i > 0:
        pieces.append(word[back[i] : i])
        i = back[i]
    return pieces[::-1]


_SPELLED_LABELS = frozenset(["www", "http", "https", "ftp"])


@lru_cache(maxsize=4096)
def _say_letters(run: str) -> str:
    """One alphabetic run of an address label, as words G2P will read right."""
    low = run.lower()
    gold, silver = _lexicon_words()
    if low in _SPELLED_LABELS or len(low) == 1:
        return _spell(low)
    if low in gold or (len(low) > 3 and low in silver):
        return low
    if len(low) <= 3 or not re.search(r"[aeiouy]", low):
        return _spell(low)  # "abc", "xkcd": no word to say, so the letters
    pieces = _word_break(low)
    if pieces:
        return " ".join(pieces)
    if low[1:] in gold and len(low) > 4:  # "jsmith": an initial and a surname
        return f"{_letter(low[0])} {low[1:]}"
    return low  # a name misaki will guess; better than a string of letters


def _say_label(label: str) -> str:
    """An address label: letters as words or letters, digits digit by digit."""
    parts = []
    # Capitals inside a label mark its words: "AcmeDental" -> "Acme", "Dental".
    for run in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", label):
        parts.append(_digits(run) if run[0].isdigit() else _say_letters(run))
    return " ".join(parts)


_SEPARATOR_WORDS = {".": "dot", "-": "dash", "_": "underscore", "+": "plus", "/": "slash"}
# Top-level domains said as a word rather than spelled.
_TLD_WORDS = frozenset(
    "com org net gov info biz app dev co me shop store online site tech health care clinic "
    "dental law travel news blog cloud email".split()
)


def _say_address_part(part: str) -> str:
    """Labels joined by separators: "j.doe" -> "j dot doe", "acme-dental" -> "acme dash dental"."""
    out = []
    for token in re.split(r"([.\-_+/])", part):
        if not token:
            continue
        if token in _SEPARATOR_WORDS:
            out.append(_SEPARATOR_WORDS[token])
        else:
            out.append(_say_label(token))
    return " ".join(w for w in out if w)


def _say_domain(domain: str) -> str:
    labels = [label for label in domain.split(".") if label]
    if not labels:
        return ""
    *head, tld = labels
    said = [_say_address_part(label) for label in head]
    low = tld.lower()
    said.append(low if low in _TLD_WORDS else _spell(low))
    return " dot ".join(said)


# --------------------------------------------------------------------------- rules

_Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]

_DOMAIN_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_TLDS = (
    r"(?:com|org|net|edu|gov|mil|info|biz|io|ai|co|us|uk|ca|au|de|fr|eu|me|tv|ly|app|dev|"
    r"shop|store|online|site|tech|health|care|clinic|dental|law|travel|news|blog|cloud|email)"
)
_EMAIL = re.compile(
    rf"(?<![\w.@+-])([A-Za-z0-9](?:[A-Za-z0-9._+-]{{0,63}}[A-Za-z0-9])?)"
    rf"@((?:{_DOMAIN_LABEL}\.)+[A-Za-z]{{2,24}})(?![\w@-]|\.\w)"
)


def _email(m: re.Match[str]) -> str:
    return f"{_say_address_part(m.group(1))} at {_say_domain(m.group(2))}"


# A URL: with a scheme or "www." any TLD will do; a bare domain needs a known TLD, so that
# "e.g." or two sentences run together ("done.Next") are never read as addresses.  A path
# never ends in punctuation, which belongs to the sentence.
_URL = re.compile(
    rf"(?<![\w.@/-])(?:(https?://)((?:{_DOMAIN_LABEL}\.)+[A-Za-z]{{2,24}})"
    rf"|((?:[Ww][Ww][Ww]\.)(?:{_DOMAIN_LABEL}\.)+[A-Za-z]{{2,24}})"
    rf"|((?:{_DOMAIN_LABEL}\.)+(?i:{_TLDS})))"
    rf"(?![\w-]|\.[A-Za-z0-9])(/(?:[\w\-./~%+=&?#]*[\w/])?)?"
)


def _url(m: re.Match[str]) -> str:
    domain = m.group(2) or m.group(3) or m.group(4)
    out = _say_domain(domain)
    path = (m.group(5) or "").rstrip("/")
    if path:
        pieces = [p for p in path.split("/") if p]
        out += "".join(f" slash {_say_address_part(p)}" for p in pieces)
    return out


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


# Order matters: each rule writes plain words, so later rules never see its digits.
# Addresses and codes go first (their digits are not quantities); abbreviations before
# house numbers (which look for "Street"); ordinals last ("Mar. 3rd" is a date first).
_RULES: tuple[_Rule, ...] = (
    (_EMAIL, _email),
    (_URL, _url),
    (_PHONE_US, _phone_us),
    (_PHONE_INTL, _phone_intl),
    (_PHONE_LOCAL, _phone_local),
    (_STATE_ZIP, _state_zip),
    (_STATE_NAME_ZIP, _state_name_zip),
    (_ZIP_WORD, _zip_word),
    (_STATE_ALONE, _state_alone),
    (_CODE_AFTER_KEYWORD, _code_after_keyword),
    (_DAY_ABBR_RE, _day_abbr),  # before times: "Mon 9 AM" is a day by the digit after it
    (_RATIO, _ratio),  # before times: "ratio 1:10" is not ten past one
    (_TIME, _time),
    (_HOUR_AMPM, _hour_ampm),
    (_DATE_NUMERIC, _date_numeric),
    (_DATE_ISO, _date_iso),
    (_DATE_WORDS, _date_words),
    (_MONTH_ABBR_DOT, _month_abbr),
    (_MONEY, _money),
    (_PERCENT, _percent),
    (_CODE_ALONE, _code_alone),
    (_UNIT, _unit),
    (_STREET_ABBR, _street_abbr),
    (_DIRECTION_AFTER_NUMBER, _direction_after_number),
    (_DIRECTION_AFTER_STREET, _direction_after_street),
    (_HOUSE_NUMBER, _house_number),
    (_TITLE, _title),
    (_NUMBER_SIGN, _number_sign),
    (_ORDINAL, _ordinal_match),
)

# Every rule needs one of these (a digit, a symbol, a dot, two capitals, or an
# abbreviation written without its dot), so a segment with none of them, the common case
# of plain prose, returns after one scan.
_TRIGGER = re.compile(
    r"[\d@.$£€%#]|[A-Z]{2}|\b(?:" + "|".join(sorted({*_STREET_TYPES, *_UNITS, *_DAY_ABBR})) + r")\b"
)


def _normalize(text: str) -> str:
    """The rules, applied in order; may raise on a bug (the property test calls this)."""
    if not _TRIGGER.search(text):
        return text
    for pattern, rewrite in _RULES:
        text = pattern.sub(rewrite, text)
    return text


def normalize(text: str) -> str:
    """Rewrite phone content into the words a person would say, for misaki's English G2P.

    ``text`` is one segment (a sentence or clause); text with nothing to rewrite comes
    back unchanged.  Never raises: on an internal error the text is returned as given,
    since speaking it unnormalised beats losing the segment.
    """
    try:
        return _normalize(text)
    except Exception as exc:  # a bug in a rule must not cost the caller its audio
        # Rate-limited: a rule that fails on every segment must not flood the log.
        _failures.warning(
            "normalize",
            "phone-text normalisation failed (%s: %s) on %r; speaking the text as given",
            type(exc).__name__,
            exc,
            text[:80],
        )
        return text


# --------------------------------------------------------------------------- lexicon

# Characters that would break misaki's link syntax ``[word](/phonemes/)``.
_LINK_BREAKERS = frozenset("[]()/")


class Lexicon:
    """Word -> phonemes overrides for names G2P gets wrong (the daemon's --lexicon FILE).

    File format: UTF-8 text, one ``word<whitespace>phonemes`` entry a line; ``#`` starts a
    comment and blank lines are ignored.  Words match case-insensitively on word
    boundaries; :meth:`apply` writes each in misaki's link syntax, which en.G2P reads as
    "these phonemes for this word".
    """

    def __init__(self, entries: dict[str, str] | None = None) -> None:
        self._entries = {word.lower(): ps for word, ps in (entries or {}).items()}
        self._pattern: re.Pattern[str] | None = None
        if self._entries:
            # Longest first, so "St. John" wins over "John"; a word inside another word,
            # or already inside a link ("[Nguyen](...)"), is left alone.  So is a word
            # joined to more of the same token by ".", "@", "/", ":" or "-" (an address, a
            # URL, a compound: "acme.xyz", "nguyen@example.com", "Smith-Nguyen"): misaki
            # gives a link's phonemes to the whole spaCy token it falls in, so the rest of
            # the token would go unspoken.
            words = sorted(self._entries, key=len, reverse=True)
            alternatives = "|".join(re.escape(w) for w in words)
            self._pattern = re.compile(
                rf"(?<![\w\[])(?<!\w[.@/:-])(?:{alternatives})(?![\w\]])(?![.@/:-]\w)",
                re.IGNORECASE,
            )

    @classmethod
    def load(cls, path: Path, vocab: Collection[str] | None = None) -> Lexicon:
        """Read a lexicon file; a bad entry raises ConfigError naming the file and line.

        ``vocab``, when given, is the model's phoneme vocabulary: a symbol outside it
        would be dropped silently at synthesis, so it is refused here instead.
        """
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"lexicon {path}: cannot read: {exc}", setting="lexicon") from exc
        entries: dict[str, str] = {}
        for lineno, raw in enumerate(lines, start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue

            def bad(reason: str, lineno: int = lineno) -> ConfigError:
                return ConfigError(f"lexicon {path}, line {lineno}: {reason}", setting="lexicon")

            parts = line.split(None, 1)
            if len(parts) != 2:
                raise bad(f"expected 'word phonemes', got {line!r}")
            word, phonemes = parts[0], parts[1].strip()
            if not any(c.isalnum() for c in word) or _LINK_BREAKERS & set(word):
                raise bad(f"{word!r} is not a word")
            if _LINK_BREAKERS & set(phonemes):
                raise bad(
                    f"phonemes {phonemes!r} may not contain any of "
                    f"{''.join(sorted(_LINK_BREAKERS))}"
                )
            if vocab is not None:
                unknown = sorted({c for c in phonemes if c not in vocab})
                if unknown:
                    raise bad(
                        f"phoneme symbol(s) {' '.join(map(repr, unknown))} "
                        "not in the model's vocabulary"
                    )
            if word.lower() in entries:
                raise bad(f"{word!r} is listed twice")
            entries[word.lower()] = phonemes
        return cls(entries)

    def apply(self, text: str) -> str:
        """Write every listed word of ``text`` as ``[word](/phonemes/)`` for misaki."""
        if self._pattern is None:
            return text
        return self._pattern.sub(
            lambda m: f"[{m.group(0)}](/{self._entries[m.group(0).lower()]}/)", text
        )

    def __len__(self) -> int:
        return len(self._entries)
