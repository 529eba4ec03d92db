"""OpenAI's voice names resolved against the voices a model really has."""

from __future__ import annotations

import pytest

from kokoro_service.adapters.http.voices import OPENAI_VOICES, resolve, voice_aliases
from kokoro_service.config import parse_voice_aliases
from kokoro_service.errors import ConfigError

EMBEDDED = ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]


def test_every_openai_name_speaks_with_the_embedded_voices() -> None:
    aliases = voice_aliases(EMBEDDED, "jm_kumo", ())
    assert set(aliases) == set(OPENAI_VOICES)
    assert set(aliases.values()) <= set(EMBEDDED)
    assert aliases["nova"] == "jf_alpha" and aliases["onyx"] == "jm_kumo"  # gender kept


def test_the_hub_voices_are_used_where_the_model_has_them() -> None:
    hub = ["af_alloy", "af_nova", "am_echo", "am_onyx", "bm_fable", "af_sky"]
    aliases = voice_aliases(hub, "af_sky", ())
    assert aliases["alloy"] == "af_alloy" and aliases["fable"] == "bm_fable"
    assert aliases["ballad"] == "am_echo"  # no bm_george: the first male voice


def test_a_model_without_gendered_names_falls_back_to_the_default() -> None:
    assert set(voice_aliases(["narrator"], "narrator", ()).values()) == {"narrator"}


def test_configured_aliases_add_and_replace() -> None:
    configured = parse_voice_aliases("alloy=jf_nezumi, desk=jf_alpha:0.5,jm_kumo:0.5")
    aliases = voice_aliases(EMBEDDED, "jm_kumo", configured)
    assert aliases["alloy"] == "jf_nezumi"
    assert aliases["desk"] == "jf_alpha:0.5,jm_kumo:0.5"
    assert resolve("desk", EMBEDDED, aliases) == "jf_alpha:0.5,jm_kumo:0.5"
    assert resolve("jf_alpha", EMBEDDED, aliases) == "jf_alpha"  # a voice is itself
    assert resolve("nobody", EMBEDDED, aliases) == "nobody"  # refused later, by name


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("jf_alpha", "must follow NAME="),
        ("=jf_alpha", "letters"),
        ("a b=jf_alpha", "letters"),
        ("x=", "names no voice"),
        ("x=jf_alpha,x=jm_kumo", "twice"),
    ],
)
def test_bad_aliases_are_refused_with_a_reason(value: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        parse_voice_aliases(value)
    assert info.value.setting == "voice_alias"
