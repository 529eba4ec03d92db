"""The daemon's threading in a fresh process, for the levers that a warm process hides.

``benchmarks.levers`` (its :mod:`~benchmarks.levers.process` levers) runs ``python -m
benchmarks.lib.fresh synth|layout ...`` for each measurement.
The child loads with the product's own loader, :func:`kokoro_service.daemon.
load_off_main_thread` (in a thread that then exits, so only the synthesis threads keep
OpenMP teams), then synthesizes in worker threads that call ``Engine.bind_thread()``
first, as the daemon's workers do, and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository
_BARRIER_TIMEOUT = 600.0


@dataclass(frozen=True)
class Weights:
    """Which weights a fresh process loads: ``model_dir``, else what ``serve`` would find
    with ``cache_dir`` (the hub cache, else the embedded import)."""

    cache_dir: Path
    model_dir: Path | None = None

    def args(self) -> list[str]:
        out = ["--cache-dir", str(self.cache_dir)]
        return out + (["--model-dir", str(self.model_dir)] if self.model_dir else [])


# ------------------------------------------------------------------------------ parent side


def _child(*args: str) -> Any:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.lib.fresh", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        cwd=ROOT,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"fresh process {args[0]} exited {proc.returncode}:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def synth_times(
    weights: Weights, *, warm: bool, threads: int, ftz: bool, texts: Sequence[str]
) -> list[float]:
    """Seconds of each synthesis of ``texts`` in one worker thread of a fresh process."""
    flags = [] if warm else ["--no-warm"]
    flags += [] if ftz else ["--no-ftz"]
    got = _child("synth", *weights.args(), "--threads", str(threads), *flags, "--", *texts)
    return [float(x) for x in got]


def layout_once(
    weights: Weights, threads: int, streams: int, runs: int, text: str
) -> dict[str, Any]:
    """``streams`` workers of ``threads`` threads each synthesize ``text`` ``runs`` times
    at once: the wall time, the audio made and each synthesis's seconds."""
    got = _child(
        "layout",
        *weights.args(),
        "--threads",
        str(threads),
        "--streams",
        str(streams),
        "--runs",
        str(runs),
        "--",
        text,
    )
    audio = sum(a for _, a in got["segments"])
    return {"wall_s": got["wall_s"], "audio_s": audio, "synth_s": [s for s, _ in got["segments"]]}


# ------------------------------------------------------------------------------ child side


def _load(ns: argparse.Namespace, warm: bool) -> Any:
    from kokoro_service.config import Settings
    from kokoro_service.daemon import load_off_main_thread

    settings = Settings(
        model_dir=ns.model_dir,
        cache_dir=ns.cache_dir,
        device="cpu",
        torch_threads=ns.threads,
        warmup=warm,
    )
    return load_off_main_thread(settings)


def _synth(ns: argparse.Namespace) -> list[float]:
    import torch

    loaded = _load(ns, ns.warm)
    engine, voice = loaded.engine, loaded.voice

    def work() -> list[float]:
        engine.bind_thread()
        if not ns.ftz:
            torch.set_flush_denormal(False)  # before the first forward: the team inherits it
        times = []
        for text in ns.texts:
            t0 = time.perf_counter()
            engine.synthesize(text, voice=voice, lang="a")
            times.append(time.perf_counter() - t0)
        return times

    with ThreadPoolExecutor(1, thread_name_prefix="worker") as pool:
        return pool.submit(work).result()


def _layout(ns: argparse.Namespace) -> dict[str, Any]:
    loaded = _load(ns, True)
    engine, voice = loaded.engine, loaded.voice
    (text,) = ns.texts
    ready = threading.Barrier(ns.streams + 1, timeout=_BARRIER_TIMEOUT)

    def work(_: int) -> list[tuple[float, float]]:
        engine.bind_thread()
        engine.synthesize(text, voice=voice, lang="a")
        ready.wait()
        out = []
        for _ in range(ns.runs):
            r = engine.synthesize(text, voice=voice, lang="a")
            out.append((r.seconds, r.audio_seconds))
        return out

    with ThreadPoolExecutor(ns.streams, thread_name_prefix="worker") as pool:
        futures = [pool.submit(work, i) for i in range(ns.streams)]
        ready.wait()
        t0 = time.perf_counter()
        done = [f.result() for f in futures]
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "segments": [s for d in done for s in d]}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("mode", choices=("synth", "layout"))
    p.add_argument("--cache-dir", type=Path, required=True)
    p.add_argument("--model-dir", type=Path, default=None)
    p.add_argument("--threads", type=int, required=True, help="torch threads per worker")
    p.add_argument("--no-warm", dest="warm", action="store_false", help="skip the warm-up")
    p.add_argument("--no-ftz", dest="ftz", action="store_false", help="keep denormals")
    p.add_argument("--streams", type=int, default=1, help="layout: workers at once")
    p.add_argument("--runs", type=int, default=1, help="layout: syntheses per worker")
    p.add_argument("texts", nargs="+")
    ns = p.parse_args(argv)
    print(json.dumps(_synth(ns) if ns.mode == "synth" else _layout(ns)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
