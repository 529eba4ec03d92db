"""OpenAI's voice names as aliases of the voices the model has.

Agent frameworks check ``voice`` against OpenAI's list before they send a request
(pipecat's ``OpenAITTSService`` does), so a server that knows only Kokoro's names cannot
be used by them unpatched.  Each OpenAI name maps to the Kokoro voice nearest in kind
where the model has it; otherwise to a voice the model has of the same gender (Kokoro's
second letter, ``f`` or ``m``); otherwise to the daemon's default voice.  So every alias
speaks, with any weights.  ``--voice-alias`` adds names or replaces these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final

# OpenAI's name -> the hub voice of the same character and gender.
OPENAI_VOICES: Final[dict[str, str]] = {
    "alloy": "af_alloy",
    "ash": "am_adam",
    "ballad": "bm_george",
    "cedar": "am_michael",
    "coral": "af_heart",
    "echo": "am_echo",
    "fable": "bm_fable",
    "marin": "af_river",
    "nova": "af_nova",
    "onyx": "am_onyx",
    "sage": "af_sarah",
    "shimmer": "af_bella",
    "verse": "am_eric",
}


def _gender(voice: str) -> str | None:
    """``f`` or ``m`` from a Kokoro voice name (``af_sky`` -> ``f``); None for others."""
    return voice[1] if len(voice) > 2 and voice[2] == "_" and voice[1] in "fm" else None


def voice_aliases(
    voices: Sequence[str], default: str, configured: Iterable[tuple[str, str]]
) -> dict[str, str]:
    """Alias -> voice spec: OpenAI's names resolved against ``voices`` (the model's),
    then ``configured`` (``--voice-alias``, already checked), which wins."""
    have = set(voices)
    by_gender: dict[str, str] = {}
    for name in sorted(voices):
        g = _gender(name)
        if g is not None:
            by_gender.setdefault(g, name)
    aliases: dict[str, str] = {}
    for alias, wanted in OPENAI_VOICES.items():
        g = _gender(wanted)
        aliases[alias] = wanted if wanted in have else by_gender.get(g, default) if g else default
    aliases.update(configured)
    return aliases


def resolve(voice: str, voices: Sequence[str], aliases: Mapping[str, str]) -> str:
    """The voice spec a request's ``voice`` names: a model voice or blend as given; an
    alias as what it stands for.  A model voice of the same name wins over an alias."""
    if voice in aliases and voice not in voices:
        return aliases[voice]
    return voice
