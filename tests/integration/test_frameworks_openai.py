"""pipecat and LiveKit, from PyPI, use the daemon through their own OpenAI TTS services,
unpatched: each test runs the snippet of docs/integrations/ as written (pipecat-ai 1.14.0,
livekit-plugins-openai 1.8.9).

What each framework sends is its own: pipecat checks ``voice`` against OpenAI's names
and asks for pcm; LiveKit, for a model other than tts-1, asks for sse with mp3.  The
tiny random-weight model speaks noise, so each test checks frames, rate and length
against the daemon's deterministic durations; the words are checked with real weights
in test_intelligibility.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import numpy as np
from livekit.agents import tts as lk_tts
from livekit.plugins import openai as lk_openai
from pipecat.frames.frames import ErrorFrame, TTSAudioRawFrame, TTSSpeakFrame
from pipecat.services.openai.tts import OpenAITTSService
from pipecat.tests.utils import run_test

from kokoro_service.synthesis.engine import Engine
from tests.conftest import REPO, Ops, expected_lengths

TEXT = "Your appointment is on Tuesday at noon."
# The tiny model's voices: OpenAI's "alloy" stands for its first af_ voice.
ALLOY = "af_bella"
DOC_URL = "http://127.0.0.1:8091/v1"


DOCS = REPO / "docs" / "integrations"


def snippet_tts(page: str, base_url: str) -> Any:
    """The ``tts`` that the page's Python snippet builds, run as written there, with only
    the daemon's address replaced by this test's."""
    text = (DOCS / page).read_text(encoding="utf-8")
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert DOC_URL in code, page
    scope: dict[str, Any] = {}
    exec(compile(code.replace(DOC_URL, base_url), str(DOCS / page), "exec"), scope)
    return scope["tts"]


def pipecat_tts(base_url: str) -> OpenAITTSService:
    tts = snippet_tts("pipecat.md", base_url)
    assert isinstance(tts, OpenAITTSService)
    return tts


def livekit_tts(base_url: str) -> lk_openai.TTS:
    tts = snippet_tts("livekit.md", base_url)
    assert isinstance(tts, lk_openai.TTS)
    return tts


def test_pipecat_openai_tts_speaks_through_a_pipeline(
    ops: Callable[..., Ops], engine: Engine
) -> None:
    o = ops()

    async def speak() -> list[object]:
        down, _ = await run_test(
            pipecat_tts(o.base + "/v1"), frames_to_send=[TTSSpeakFrame(TEXT)], start_timeout=60
        )
        return list(down)

    frames = asyncio.run(speak())
    assert not [f for f in frames if isinstance(f, ErrorFrame)], frames
    audio = [f for f in frames if isinstance(f, TTSAudioRawFrame)]
    assert audio, frames
    assert {(f.sample_rate, f.num_channels) for f in audio} == {(24000, 1)}
    samples = sum(len(f.audio) for f in audio) // 2
    assert samples == sum(expected_lengths(engine, [TEXT], voice=ALLOY))
    assert o.server.calls.opened == 1


def test_livekit_openai_tts_synthesizes_and_streams(
    ops: Callable[..., Ops], engine: Engine
) -> None:
    o = ops()
    expected = sum(expected_lengths(engine, [TEXT], voice=ALLOY))
    second = "Please call us back if that does not suit you."
    both = expected + sum(expected_lengths(engine, [second], voice=ALLOY))

    async def speak() -> tuple[list[lk_tts.SynthesizedAudio], list[lk_tts.SynthesizedAudio]]:
        engine_tts = livekit_tts(o.base + "/v1")
        async with engine_tts.synthesize(TEXT) as chunked:
            whole = [event async for event in chunked]
        # StreamAdapter: text pushed as an LLM produces it, spoken sentence by sentence.
        adapter = lk_tts.StreamAdapter(tts=engine_tts)
        async with adapter.stream() as stream:
            for piece in (TEXT[:9], TEXT[9:], " ", second):
                stream.push_text(piece)
            stream.end_input()
            streamed = [event async for event in stream]
        await engine_tts.aclose()
        return whole, streamed

    whole, streamed = asyncio.run(speak())
    for events, samples in ((whole, expected), (streamed, both)):
        frames = [e.frame for e in events]
        assert frames and {(f.sample_rate, f.num_channels) for f in frames} == {(24000, 1)}
        got = sum(f.samples_per_channel for f in frames)
        # mp3 (LiveKit's default) adds the encoder's padding, a frame or two per reply.
        assert samples <= got < samples + 2 * 2400, (got, samples)
        assert np.abs(np.frombuffer(b"".join(bytes(f.data) for f in frames), "<i2")).max() > 0
    assert o.server.calls.opened == 3  # one request per synthesize() and per sentence
