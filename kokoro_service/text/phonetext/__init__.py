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

Each family of rules has its module: :mod:`.numbers` (the spellers, money, percentages,
ordinals), :mod:`.addresses` (e-mail, URLs), :mod:`.phones`, :mod:`.postal` (states, ZIP
codes, streets), :mod:`.codes`, :mod:`.calendar` (times, dates, days, months),
:mod:`.abbreviations` (titles, the number sign) and :mod:`.lexicon`.  This one applies
them in order.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from kokoro_service.logs import RateLimitedLog
from kokoro_service.text.phonetext.abbreviations import _NUMBER_SIGN, _TITLE, _number_sign, _title
from kokoro_service.text.phonetext.addresses import _EMAIL, _URL, _email, _lexicon_words, _url
from kokoro_service.text.phonetext.calendar import (
    _DATE_ISO,
    _DATE_NUMERIC,
    _DATE_WORDS,
    _DAY_ABBR,
    _DAY_ABBR_RE,
    _HOUR_AMPM,
    _MONTH_ABBR_DOT,
    _RATIO,
    _TIME,
    _date_iso,
    _date_numeric,
    _date_words,
    _day_abbr,
    _hour_ampm,
    _month_abbr,
    _ratio,
    _time,
)
from kokoro_service.text.phonetext.codes import (
    _CODE_AFTER_KEYWORD,
    _CODE_ALONE,
    _code_after_keyword,
    _code_alone,
)
from kokoro_service.text.phonetext.lexicon import Lexicon
from kokoro_service.text.phonetext.numbers import (
    _MONEY,
    _ORDINAL,
    _PERCENT,
    _money,
    _ordinal_match,
    _percent,
)
from kokoro_service.text.phonetext.phones import (
    _PHONE_INTL,
    _PHONE_LOCAL,
    _PHONE_US,
    _phone_intl,
    _phone_local,
    _phone_us,
)
from kokoro_service.text.phonetext.postal import (
    _DIRECTION_AFTER_NUMBER,
    _DIRECTION_AFTER_STREET,
    _HOUSE_NUMBER,
    _STATE_ALONE,
    _STATE_NAME_ZIP,
    _STATE_ZIP,
    _STREET_ABBR,
    _STREET_TYPES,
    _UNIT,
    _UNITS,
    _ZIP_WORD,
    _direction_after_number,
    _direction_after_street,
    _house_number,
    _state_alone,
    _state_name_zip,
    _state_zip,
    _street_abbr,
    _unit,
    _zip_word,
)

__all__ = ["Lexicon", "normalize", "warm_up"]

log = logging.getLogger(__name__)
_failures = RateLimitedLog(log)


def warm_up() -> None:
    """Load the word lists now, so that the first e-mail or URL in a call costs nothing."""
    _lexicon_words()


_Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]

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
