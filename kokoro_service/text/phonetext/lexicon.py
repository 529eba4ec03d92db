"""The --lexicon file: per-deployment word -> phoneme overrides in misaki's link syntax.

Apart from the rules: it names no kind of phone content, only words G2P gets wrong.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path

from kokoro_service.errors import ConfigError

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
