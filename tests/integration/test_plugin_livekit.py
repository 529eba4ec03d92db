"""The LiveKit plugin (livekit-agents 1.8.9) against a real daemon over loopback:
``stream()`` fed as an LLM streams, ``synthesize()`` for a whole text, aligned words, and
a stream closed early (an interruption) cancelling the call in the daemon."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from livekit.agents import APIConnectionError, APIConnectOptions, APIError
from livekit.agents.tts import SynthesizedAudio
from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT, TimedString

from kokoro_service.integrations.livekit import KokoroTTS
from kokoro_service.server.server import Server
from kokoro_service.synthesis.engine import Engine
from tests.conftest import TEST_TIMEOUT, LogCapture, expected_lengths, free_port_base
from tests.integration.test_plugin_pipecat import (
    LONG,
    TEXT,
    assert_cut_short,
    assert_snippets_run_here,
    pieces,
    served,
    words_of,
)

__all__ = ["served"]  # the module's daemon fixture, shared with the pipecat tests


@dataclass
class Heard:
    """What a stream or a synthesis gave: its events, and the words they carried."""

    events: list[SynthesizedAudio] = field(default_factory=list)
    words: list[TimedString] = field(default_factory=list)

    def add(self, ev: SynthesizedAudio) -> None:
        self.events.append(ev)
        self.words += ev.frame.userdata.get(USERDATA_TIMED_TRANSCRIPT, [])

    @property
    def seconds(self) -> float:
        return sum(ev.frame.duration for ev in self.events)


async def stream_text(tts: KokoroTTS, text: str) -> Heard:
    """``stream()`` fed 3-6 characters every 10 ms, as an LLM streams, then ended."""
    heard = Heard()
    async with tts.stream() as stream:

        async def feed() -> None:
            for piece in pieces(text):
                stream.push_text(piece)
                await asyncio.sleep(0.01)
            stream.end_input()

        feeding = asyncio.create_task(feed())
        async for ev in stream:
            heard.add(ev)
        await feeding
    return heard


async def synthesize_text(tts: KokoroTTS, text: str) -> Heard:
    heard = Heard()
    async with tts.synthesize(text) as chunked:
        async for ev in chunked:
            heard.add(ev)
    return heard


def seconds(time: object) -> float:
    """A TimedString's time, which must be given."""
    assert isinstance(time, float | int), time
    return float(time)


def check_words(heard: Heard, text: str) -> None:
    """Every word of the text, in order, each timed within the audio, times rising."""
    assert words_of(" ".join(heard.words)) == words_of(text)
    starts = [seconds(w.start_time) for w in heard.words]
    ends = [seconds(w.end_time) for w in heard.words]
    assert starts == sorted(starts)
    assert all(s < e for s, e in zip(starts, ends, strict=True))
    assert starts[0] >= 0 and ends[-1] <= heard.seconds
    assert ends[-1] - starts[0] > 0.5 * heard.seconds


def test_capabilities() -> None:
    caps = KokoroTTS().capabilities
    assert caps.streaming and caps.aligned_transcript


def test_stream_speaks_the_text_as_it_comes_with_aligned_words(
    served: Server, engine: Engine
) -> None:
    port = served.tcp_address[1]
    tts = KokoroTTS(port=port, voice="af_sky", sample_rate=16_000)
    heard = asyncio.run(asyncio.wait_for(stream_text(tts, TEXT), TEST_TIMEOUT))
    frames = [ev.frame for ev in heard.events]
    assert frames and all(f.sample_rate == 16_000 and f.num_channels == 1 for f in frames)
    assert len({ev.segment_id for ev in heard.events}) == 1  # one segment, one call
    assert heard.events[-1].is_final
    expected = sum(expected_lengths(engine, [TEXT])) / 24_000
    assert heard.seconds == pytest.approx(expected, rel=0.15)
    check_words(heard, TEXT)


def test_synthesize_speaks_a_whole_text_with_aligned_words(served: Server, engine: Engine) -> None:
    text = "Thanks for calling. Goodbye."
    tts = KokoroTTS(port=served.tcp_address[1], voice="af_sky")
    heard = asyncio.run(asyncio.wait_for(synthesize_text(tts, text), TEST_TIMEOUT))
    assert all(ev.frame.sample_rate == 24_000 for ev in heard.events)
    samples = sum(ev.frame.samples_per_channel for ev in heard.events)
    assert samples == sum(expected_lengths(engine, [text]))  # 24 kHz: exactly the model's
    check_words(heard, text)


@pytest.mark.parametrize(
    ("flush", "daemon_says"),
    [
        # The LLM still streaming: CONTROL cancel reaches the daemon ...
        (False, "cancel call=livekit-"),
        # ... its text complete (BYE sent, after which the daemon reads nothing more):
        # the connection is reset, and the daemon's next write fails.
        (True, "text connection lost call=livekit-"),
    ],
)
def test_closing_a_stream_early_stops_the_call(
    served: Server, logs: LogCapture, flush: bool, daemon_says: str
) -> None:
    async def interrupted() -> Heard:
        heard = Heard()
        stream = KokoroTTS(port=served.tcp_address[1]).stream()
        stream.push_text(LONG)
        if flush:
            stream.flush()
        async for ev in stream:
            heard.add(ev)
            break  # the first audio is out: the user barges in
        await stream.aclose()
        await asyncio.sleep(0.5)  # the plugin reads the cancelled call on to its END
        return heard

    heard = asyncio.run(asyncio.wait_for(interrupted(), TEST_TIMEOUT))
    assert heard.events
    assert logs.wait(daemon_says)
    assert logs.wait("call ended call=livekit-", "reason=BYE")
    assert_cut_short(logs, "livekit-")  # of nine frames or more for the whole reply


def test_a_daemon_that_cannot_be_reached_raises_a_connection_error() -> None:
    port = free_port_base(2) + 1  # free a moment ago: nothing listens there
    tts = KokoroTTS(port=port)

    async def attempt() -> None:
        async with tts.synthesize("Hello.", conn_options=APIConnectOptions(max_retry=0)) as s:
            async for _ in s:
                pass

    with pytest.raises(APIConnectionError, match=f"127.0.0.1:{port} not reached"):
        asyncio.run(asyncio.wait_for(attempt(), TEST_TIMEOUT))


def test_text_the_protocol_cannot_carry_is_a_clear_error(served: Server) -> None:
    tts = KokoroTTS(port=served.tcp_address[1])
    with pytest.raises(APIError, match="text not sent") as caught:
        asyncio.run(asyncio.wait_for(synthesize_text(tts, "Hello \ud800 there."), TEST_TIMEOUT))
    assert not caught.value.retryable


def test_bad_options_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="rate"):
        KokoroTTS(sample_rate=44_100)
    with pytest.raises(ValueError, match="speed"):
        KokoroTTS(speed=0.1)


def test_the_docs_show_what_this_module_runs() -> None:
    assert_snippets_run_here("tests/integration/test_plugin_livekit.py")
