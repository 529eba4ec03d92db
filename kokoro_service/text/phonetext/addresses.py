"""E-mail addresses and URLs: "at", "dot", "slash", and domain labels as words.

A compound label ("acmedental") is split into the fewest words of misaki's own lexicon,
which G2P then reads as words; loading those word lists costs about 0.2 s, once
(:func:`~kokoro_service.text.phonetext.warm_up` pays it ahead of the first address).
"""

from __future__ import annotations

import json
import logging
import re
from functools import lru_cache
from importlib import resources

from kokoro_service.text.phonetext.numbers import _digits, _letter, _spell

# The package's logger: the warning keeps the name it had before the package was split.
log = logging.getLogger(__package__)


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
