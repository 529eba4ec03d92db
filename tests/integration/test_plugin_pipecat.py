"""The pipecat plugin in a real pipecat pipeline (pipecat-ai 1.14.0), against a real daemon
over loopback: an LLM's tokens in, audio frames and word timestamps out, and barge-in."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from kokoro_service.config import Settings
from kokoro_service.integrations.pipecat import KokoroTTSService
from kokoro_service.server.server import Server
from kokoro_service.synthesis.engine import Engine
from tests.conftest import REPO, TEST_TIMEOUT, LogCapture, expected_lengths, free_port_base

TEXT = "Your appointment is on Tuesday at noon. Please bring your insurance card."
# Long enough that the daemon is still synthesizing it when the first audio is heard.
LONG = " ".join(
    [
        "Thanks for calling the clinic, this is the automated assistant.",
        "I can see three appointments on your account this month.",
        "The first is a cleaning on Monday at nine in the morning.",
        "The second is a check up with the doctor on Wednesday afternoon.",
        "The third is a follow up visit on Friday at a quarter past four.",
        "Would you like to keep all of them, or should I move one of them?",
        "You can also press one to hear these times again.",
        "Or press two to speak with someone at the front desk.",
    ]
)


@pytest.fixture(scope="module")
def served(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One daemon for the module, on the tiny checkpoint: sentence mode, so each reply's
    segments (and their lengths) do not depend on how the text was buffered."""
    settings = Settings(
        tcp_port=0,
        udp_port=0,
        sink_port_base=free_port_base(),
        cache_dir=tmp_path_factory.mktemp("plugins"),
        warmup=False,
        segment_growth=0,
    )
    server = Server(settings, engine, voice="af_sky")
    server.start()
    yield server
    server.stop(drain_timeout=5.0)


def pieces(text: str) -> list[str]:
    """``text`` as an LLM streams it: 3 to 6 characters at a time."""
    sizes = [3, 5, 4, 6]
    out, i, k = [], 0, 0
    while i < len(text):
        out.append(text[i : i + sizes[k % 4]])
        i += sizes[k % 4]
        k += 1
    return out


def words_of(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


class Collector(FrameProcessor):
    """The end of the pipeline: keeps every downstream frame with its arrival time."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[tuple[float, Frame]] = []
        self.first_audio = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self.frames.append((time.monotonic(), frame))
            if isinstance(frame, TTSAudioRawFrame):
                self.first_audio.set()
        await self.push_frame(frame, direction)

    def of(self, kind: type[Frame]) -> list[Frame]:
        return [f for _, f in self.frames if isinstance(f, kind)]


@dataclasses.dataclass
class Turn:
    collector: Collector
    tts: KokoroTTSService


async def run_turn(port: int, text: str, rate: int, *, interrupt: str = "", **service: Any) -> Turn:
    """One LLM turn through ``KokoroTTSService`` in a pipeline, the text fed 3-6
    characters every 10 ms.  ``interrupt``: an InterruptionFrame once the first audio
    frame has come out, as a user barging in, either while the LLM is still streaming
    (``"streaming"``: the turn never ends) or after its response ended (``"played"``)."""
    tts = KokoroTTSService(port=port, settings=KokoroTTSService.Settings(voice="af_sky"))
    if service:
        tts = KokoroTTSService(port=port, **service)
    collector = Collector()
    worker = PipelineWorker(
        Pipeline([tts, collector]),
        params=PipelineParams(audio_out_sample_rate=rate),
        enable_rtvi=False,
        idle_timeout_secs=None,
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    await worker.queue_frame(LLMFullResponseStartFrame())
    for piece in pieces(text):
        await worker.queue_frame(LLMTextFrame(piece))
        await asyncio.sleep(0.01)
    if interrupt != "streaming":
        await worker.queue_frame(LLMFullResponseEndFrame())
    if interrupt:
        await asyncio.wait_for(collector.first_audio.wait(), TEST_TIMEOUT)
        await worker.queue_frame(InterruptionFrame())
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(running, TEST_TIMEOUT)
    return Turn(collector, tts)


def audio_seconds(frames: Sequence[Frame], rate: int) -> float:
    return sum(len(f.audio) for f in frames if isinstance(f, TTSAudioRawFrame)) / 2 / rate


def test_a_turn_streams_audio_at_the_pipeline_rate_with_word_timestamps(
    served: Server, engine: Engine
) -> None:
    turn = asyncio.run(run_turn(served.tcp_address[1], TEXT, 16_000))
    c = turn.collector
    audio = c.of(TTSAudioRawFrame)
    assert audio and all(
        isinstance(f, TTSAudioRawFrame) and f.sample_rate == 16_000 and f.num_channels == 1
        for f in audio
    )
    assert len(c.of(TTSStartedFrame)) == 1 and len(c.of(TTSStoppedFrame)) == 1
    # One call, one context: every frame of the turn carries its context id.
    assert len({f.context_id for f in audio if isinstance(f, TTSAudioRawFrame)}) == 1
    # The daemon resampled to 16 kHz: the model's 24 kHz length, two thirds of it.
    expected = sum(expected_lengths(engine, [TEXT])) / 24_000
    assert audio_seconds(audio, 16_000) == pytest.approx(expected, rel=0.15)
    # Words come from the daemon's WORDS frames, with rising presentation times.
    spoken = [f for f in c.of(TTSTextFrame) if isinstance(f, TTSTextFrame)]
    assert words_of(" ".join(f.text for f in spoken)) == words_of(TEXT)
    pts = [f.pts or 0 for f in spoken]
    assert all(f.pts is not None for f in spoken)
    assert pts == sorted(pts)
    assert pts[-1] - pts[0] > 0.5 * expected * 1e9  # nanoseconds: spread over the audio


def test_a_daemon_slower_than_pipecats_frame_timeout_loses_no_audio(
    served: Server, engine: Engine
) -> None:
    # Pipecat gives a context up after stop_frame_timeout_s without a frame: 0.2 s is
    # less than the tiny model takes to the first audio and between segments here.
    turn = asyncio.run(run_turn(served.tcp_address[1], TEXT, 24_000, stop_frame_timeout_s=0.2))
    audio = turn.collector.of(TTSAudioRawFrame)
    expected = sum(expected_lengths(engine, [TEXT])) / 24_000
    assert audio_seconds(audio, 24_000) == pytest.approx(expected, rel=0.15)
    assert len(turn.collector.of(TTSStoppedFrame)) == 1


def test_a_rate_the_daemon_does_not_make_is_resampled_here(served: Server, engine: Engine) -> None:
    turn = asyncio.run(run_turn(served.tcp_address[1], "Thanks, goodbye.", 44_100))
    audio = turn.collector.of(TTSAudioRawFrame)
    assert audio and all(isinstance(f, TTSAudioRawFrame) and f.sample_rate == 44_100 for f in audio)
    expected = sum(expected_lengths(engine, ["Thanks, goodbye."])) / 24_000
    assert audio_seconds(audio, 44_100) == pytest.approx(expected, rel=0.15)


@pytest.mark.parametrize(
    ("interrupt", "daemon_says"),
    [
        # While text still comes, CONTROL cancel reaches the daemon ...
        ("streaming", "cancel call=pipecat-"),
        # ... after BYE it reads nothing more, so the connection is reset.
        ("played", "text connection lost call=pipecat-"),
    ],
)
def test_an_interruption_stops_the_call_in_the_daemon(
    served: Server, logs: LogCapture, interrupt: str, daemon_says: str
) -> None:
    registry = served.metrics.registry
    ended_before = registry.get_sample_value("kokoro_calls_ended_total", {"reason": "bye"}) or 0
    turn = asyncio.run(run_turn(served.tcp_address[1], LONG, 24_000, interrupt=interrupt))
    c = turn.collector
    # Nothing of the interrupted call comes out after the interruption does.
    cut = next(i for i, (_, f) in enumerate(c.frames) if isinstance(f, InterruptionFrame))
    assert c.of(TTSAudioRawFrame)
    assert not [f for _, f in c.frames[cut:] if isinstance(f, TTSAudioRawFrame)]
    # The daemon learnt of it and ended the call ...
    assert logs.wait(daemon_says)
    assert logs.wait("call ended call=pipecat-", "reason=BYE")
    ended = registry.get_sample_value("kokoro_calls_ended_total", {"reason": "bye"}) or 0
    assert ended == ended_before + 1
    # ... well short of the whole reply: sentence mode gives each of its eight sentences
    # a frame of its own at least, and the call ended after a few.
    assert_cut_short(logs, "pipecat-")


def assert_cut_short(logs: LogCapture, prefix: str) -> None:
    """The call's end, as the daemon logged it, came after at most four AUDIO frames."""
    line = next(ln for ln in logs.lines if f"call ended call={prefix}" in ln)
    found = re.search(r" chunks=(\d+)", line)
    assert found is not None, line
    assert 1 <= int(found.group(1)) <= 4, line


def test_a_daemon_that_cannot_be_reached_is_an_error_not_a_hang() -> None:
    port = free_port_base(2) + 1  # free a moment ago: nothing listens there
    turn = asyncio.run(asyncio.wait_for(run_turn(port, "Hello there.", 24_000), TEST_TIMEOUT))
    assert not turn.collector.of(TTSAudioRawFrame)
    assert not turn.tts._calls


def test_bad_settings_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="speed"):
        KokoroTTSService(settings=KokoroTTSService.Settings(speed=9.0))
    with pytest.raises(ValueError, match="voice"):
        KokoroTTSService(settings=KokoroTTSService.Settings(voice=" "))


def snippets(test_file: str) -> list[list[str]]:
    """The code blocks docs/integrations/plugins.md marks as run by ``test_file``."""
    doc = (REPO / "docs" / "integrations" / "plugins.md").read_text(encoding="utf-8")
    marker = f"<!-- snippet: {test_file} -->"
    blocks = re.findall(re.escape(marker) + r"\s*```python\n(.*?)```", doc, re.S)
    return [[ln.strip() for ln in b.splitlines() if ln.strip()] for b in blocks]


def assert_snippets_run_here(test_file: str) -> None:
    """Every line of the marked snippets stands in ``test_file``: the docs show what the
    tests run, not a sketch that could drift from it."""
    blocks = snippets(test_file)
    assert blocks, f"no snippet of {test_file} in the docs"
    here = {ln.strip() for ln in (REPO / test_file).read_text(encoding="utf-8").splitlines()}
    missing = [ln for block in blocks for ln in block if ln not in here]
    assert not missing, missing


def test_the_docs_show_what_this_module_runs() -> None:
    assert_snippets_run_here("tests/integration/test_plugin_pipecat.py")
