"""First audio from the first token: the native plugins beside the OpenAI-compatible path.

One daemon (``kokoro-service serve`` with its HTTP port on; the real embedded weights
unless ``--serve-arg`` says otherwise), one reply at a time, the paths in turn, round by
round (their order rotating).  Each reply is fed as an LLM streams it: 3-6 characters
every ``--token-delay-ms`` (10), the pieces of ``benchmarks.lib.callers.token_pieces``.

* ``pipecat-native``: :class:`~kokoro_service.integrations.pipecat.KokoroTTSService` in
  a pipecat pipeline (token aggregation: every piece goes out as TEXT at once);
* ``livekit-native``: :class:`~kokoro_service.integrations.livekit.KokoroTTS`'s
  ``stream()``;
* ``livekit-openai``: LiveKit's own ``openai.TTS`` pointed at the daemon's
  ``/v1/audio/speech`` (``model="tts-1"``, ``response_format="pcm"``, the voice by its
  Kokoro name), streamed through ``tts.StreamAdapter`` as an ``AgentSession`` wraps a
  TTS that cannot stream: a sentence tokenizer, one request a sentence;
* ``pipecat-openai``: pipecat's own ``OpenAITTSService`` pointed at the same endpoint
  (sentence aggregation, one request a sentence).  It accepts only OpenAI's voice names,
  so it asks for ``--openai-voice`` (``ash``), which the daemon serves as an alias of a
  voice of its own (on the embedded weights, the same male voice as the others).

First audio: the first audio frame out of the framework (pipecat: at the end of the
pipeline; LiveKit: out of the stream) minus the moment the first piece went in.  Last
audio: the same for the last frame.  Ratios are each path's over ``livekit-native`` and
``pipecat-native``: p50 over p50, and the median of the per-round ratios.

    .venv/bin/python -m benchmarks.integrations_ttfa --out benchmarks/results/NAME.json
    .venv/bin/python -m benchmarks.integrations_ttfa --table benchmarks/results/NAME.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.density import density_host_facts
from benchmarks.lib.callers import TEXT_ONE, TEXT_THREE, token_pieces
from benchmarks.lib.harness import (
    CpuMeter,
    Daemon,
    log,
    print_table,
    rounded,
    strict_json,
    summary,
)
from benchmarks.lib.tables import host_line, markdown

TEXTS = {"one_sentence": TEXT_ONE, "three_sentence": TEXT_THREE}
PATHS = ("pipecat-native", "livekit-native", "livekit-openai", "pipecat-openai")
NATIVE = {"livekit": "livekit-native", "pipecat": "pipecat-native"}
RATE = 24_000
TIMEOUT = 300.0


@dataclass(frozen=True)
class Timing:
    """One reply on one path, seconds from its first piece sent."""

    first: float
    last: float
    audio_s: float
    foreign_cpu_pct: float = 0.0
    """Other processes' share of the machine while the reply ran (2 shared cores)."""


Turn = Callable[[str], Awaitable[Timing]]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="rounds run first and not kept")
    p.add_argument("--voice", default="jm_kumo", help="the Kokoro voice of every path")
    p.add_argument("--openai-voice", default="ash", help="pipecat-openai's (an alias)")
    p.add_argument("--token-delay-ms", type=float, default=10.0)
    p.add_argument("--paths", default=",".join(PATHS))
    p.add_argument("--idle-pct", type=float, default=15.0, help="others' CPU share to wait for")
    p.add_argument("--idle-wait", type=float, default=120.0, help="longest wait for it, s")
    p.add_argument("--serve-arg", action="append", default=[], help="passed to the daemon")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--table", type=Path, default=None, help="print the table of a result")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------ pipecat


def pipecat_path(make_tts: Callable[[], Any], delay: float) -> Turn:
    """A turn through ``make_tts()`` in a pipecat pipeline, one pipeline a turn (built and
    started before the clock starts)."""
    from pipecat.frames.frames import (
        EndFrame,
        Frame,
        LLMFullResponseEndFrame,
        LLMFullResponseStartFrame,
        LLMTextFrame,
        StartFrame,
        TTSAudioRawFrame,
        TTSStoppedFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.workers.runner import WorkerRunner

    class Timer(FrameProcessor):
        def __init__(self) -> None:
            super().__init__()
            self.started = asyncio.Event()
            self.stopped = asyncio.Event()
            self.audio: list[tuple[float, int]] = []

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, TTSAudioRawFrame):
                self.audio.append((time.monotonic(), len(frame.audio)))
            elif isinstance(frame, StartFrame):
                self.started.set()
            elif isinstance(frame, TTSStoppedFrame):
                self.stopped.set()
            await self.push_frame(frame, direction)

    async def run(text: str) -> Timing:
        timer = Timer()
        worker = PipelineWorker(
            Pipeline([make_tts(), timer]),
            params=PipelineParams(audio_out_sample_rate=RATE),
            enable_rtvi=False,
            idle_timeout_secs=None,
        )
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        running = asyncio.create_task(runner.run())
        await asyncio.wait_for(timer.started.wait(), TIMEOUT)
        await worker.queue_frame(LLMFullResponseStartFrame())
        t0 = time.monotonic()
        for piece in token_pieces(text):
            await worker.queue_frame(LLMTextFrame(piece))
            await asyncio.sleep(delay)
        await worker.queue_frame(LLMFullResponseEndFrame())
        await asyncio.wait_for(timer.stopped.wait(), TIMEOUT)
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(running, TIMEOUT)
        if not timer.audio:
            raise RuntimeError("pipecat: no audio")
        samples = sum(n for _, n in timer.audio) // 2
        return Timing(timer.audio[0][0] - t0, timer.audio[-1][0] - t0, samples / RATE)

    return run


# ------------------------------------------------------------------------------ livekit


def livekit_path(tts: Any, delay: float) -> Turn:
    """A reply through ``tts.stream()``: pieces pushed as they come, then end_input."""

    async def run(text: str) -> Timing:
        arrivals: list[tuple[float, float]] = []
        async with tts.stream() as stream:
            t0 = time.monotonic()

            async def feed() -> None:
                for piece in token_pieces(text):
                    stream.push_text(piece)
                    await asyncio.sleep(delay)
                stream.end_input()

            feeding = asyncio.create_task(feed())
            async for ev in stream:
                arrivals.append((time.monotonic(), ev.frame.duration))
            await feeding
        if not arrivals:
            raise RuntimeError("livekit: no audio")
        return Timing(arrivals[0][0] - t0, arrivals[-1][0] - t0, sum(d for _, d in arrivals))

    return run


# ------------------------------------------------------------------------------ the run


def make_paths(ns: argparse.Namespace, daemon: Daemon) -> dict[str, Turn]:
    from livekit.agents import tts as lk_tts
    from livekit.plugins import openai as lk_openai
    from pipecat.services.openai.tts import OpenAITTSService

    from kokoro_service.integrations.livekit import KokoroTTS
    from kokoro_service.integrations.pipecat import KokoroTTSService

    delay = ns.token_delay_ms / 1e3
    http = daemon.info["http"]
    base_url = f"http://{http['host']}:{http['port']}/v1"
    port = daemon.port

    def pipecat_native() -> KokoroTTSService:
        return KokoroTTSService(port=port, settings=KokoroTTSService.Settings(voice=ns.voice))

    def pipecat_openai() -> OpenAITTSService:
        settings = OpenAITTSService.Settings(voice=ns.openai_voice, model="tts-1")
        return OpenAITTSService(api_key="-", base_url=base_url, settings=settings)

    livekit_openai = lk_tts.StreamAdapter(
        tts=lk_openai.TTS(
            base_url=base_url, api_key="-", model="tts-1", voice=ns.voice, response_format="pcm"
        )
    )
    every: dict[str, Turn] = {
        "pipecat-native": pipecat_path(pipecat_native, delay),
        "livekit-native": livekit_path(KokoroTTS(port=port, voice=ns.voice), delay),
        "livekit-openai": livekit_path(livekit_openai, delay),
        "pipecat-openai": pipecat_path(pipecat_openai, delay),
    }
    wanted = [p for p in ns.paths.split(",") if p]
    unknown = sorted(set(wanted) - set(every))
    if unknown:
        raise SystemExit(f"unknown paths {unknown}; known: {', '.join(PATHS)}")
    return {p: every[p] for p in wanted}


async def measure(
    ns: argparse.Namespace, daemon: Daemon, meter: CpuMeter
) -> dict[str, dict[str, list[Timing]]]:
    """Every path for every text, round by round.  Before each reply the machine is let
    settle (others under ``--idle-pct`` of it, ``--idle-wait`` s at most): this host's
    2 cores are shared, and a reply's first audio is all synthesis."""
    paths = make_paths(ns, daemon)
    names = list(paths)
    samples: dict[str, dict[str, list[Timing]]] = {t: {p: [] for p in names} for t in TEXTS}
    for r in range(ns.warmup + ns.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for text_name, text in TEXTS.items():
            for path in order:
                await asyncio.to_thread(meter.wait_idle, ns.idle_wait, ns.idle_pct)
                before = meter.sample()
                got = await asyncio.wait_for(paths[path](text), TIMEOUT)
                load = CpuMeter.usage(before, meter.sample())["foreign_cpu_pct"]
                if r >= ns.warmup:
                    samples[text_name][path].append(replace(got, foreign_cpu_pct=load))
        log(f"round {r + 1} of {ns.warmup + ns.rounds} done")
    return samples


def ratios(
    paths: dict[str, list[Timing]], results: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Each path's first audio over each native plugin's: p50 over p50, paired median."""
    out: dict[str, dict[str, Any]] = {}
    for framework, native in NATIVE.items():
        if native not in paths:
            continue
        base = paths[native]
        for path, xs in paths.items():
            if path == native or not xs:
                continue
            p50 = results[path]["first_s"]["p50"] / results[native]["first_s"]["p50"]
            paired = statistics.median(a.first / b.first for a, b in zip(xs, base, strict=True))
            out.setdefault(path, {})[f"over_{framework}_native"] = {
                "p50_ratio": rounded(p50, 3),
                "paired_median": rounded(paired, 3),
            }
    return out


def table(res: dict[str, Any]) -> str:
    lines = [
        f"{host_line(res['host'])}; {res['settings']['rounds']} rounds; "
        f"pieces of 3-6 characters every {res['settings']['token_delay_ms']:g} ms",
        "",
    ]
    rows = []
    for text, paths in res["results"].items():
        for path, r in paths.items():
            rat = res["ratios"].get(text, {}).get(path, {})
            shown = [
                f"{rat[k]['p50_ratio']} ({rat[k]['paired_median']})" if k in rat else "-"
                for k in ("over_pipecat_native", "over_livekit_native")
            ]
            first = f"{r['first_s']['p50']} / {r['first_s']['p95']}"
            rows.append([text, path, first, r["last_s"]["p50"], *shown])
    head = [
        "text",
        "path",
        "first audio p50 / p95 s",
        "last audio p50 s",
        "first audio / pipecat-native (paired)",
        "first audio / livekit-native (paired)",
    ]
    return "\n".join(lines + markdown(head, rows))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ns = parse_args(argv)
    if ns.table is not None:
        return print_table(ns.table, table)
    t_start = time.monotonic()
    daemon = Daemon([*ns.serve_arg, "--http-port", "0"], ns.cache_dir, "info")
    log(f"starting {shlex.join(daemon.argv)}")
    daemon.start(timeout=600)
    meter = CpuMeter()
    meter.pids.append(daemon.pid)
    before = meter.sample()
    try:
        samples = asyncio.run(measure(ns, daemon, meter))
    finally:
        load = CpuMeter.usage(before, meter.sample())
        code = daemon.stop()
    results: dict[str, dict[str, Any]] = {}
    all_ratios: dict[str, dict[str, Any]] = {}
    for name, paths in samples.items():
        results[name] = {
            p: {
                "first_s": summary([x.first for x in xs]),
                "last_s": summary([x.last for x in xs]),
                "audio_s": summary([x.audio_s for x in xs]),
                "foreign_cpu_pct": summary([x.foreign_cpu_pct for x in xs]),
            }
            for p, xs in paths.items()
        }
        all_ratios[name] = ratios(paths, results[name])
    res = {
        "benchmark": "integrations-ttfa",
        "command": shlex.join(
            [sys.executable, "-m", "benchmarks.integrations_ttfa", *(argv or sys.argv[1:])]
        ),
        "host": density_host_facts("cpu"),
        "frameworks": frameworks(),
        "settings": {
            "rounds": ns.rounds,
            "warmup_rounds": ns.warmup,
            "voice": ns.voice,
            "openai_voice": ns.openai_voice,
            "token_delay_ms": ns.token_delay_ms,
            "token_piece_chars": "3-6 (benchmarks.lib.callers.token_pieces, seed 7)",
            "sample_rate": RATE,
            "idle_pct": ns.idle_pct,
            "idle_wait_s": ns.idle_wait,
        },
        "ready": daemon.info,
        "results": results,
        "ratios": all_ratios,
        "machine_load": load,
        "daemon_exit_code": code,
        "wall_s": rounded(time.monotonic() - t_start, 1),
    }
    out = json.dumps(strict_json(res), indent=2)
    if ns.out is not None:
        ns.out.write_text(out + "\n", encoding="utf-8")
    print(out)
    return res


def frameworks() -> dict[str, str | None]:
    """The installed versions of the frameworks measured."""
    import importlib.metadata as md

    found: dict[str, str | None] = {}
    for dist in ("pipecat-ai", "livekit-agents", "livekit-plugins-openai", "openai"):
        try:
            found[dist] = md.version(dist)
        except md.PackageNotFoundError:
            found[dist] = None
    return found


if __name__ == "__main__":
    main()
