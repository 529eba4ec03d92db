"""What several levers share: the segment they time, the timers that take turns between a
lever's variants (so a machine whose speed drifts hits every variant alike), the figures
they report, and :class:`Bench`, the daemon's engine loaded by the product's loader on
this thread."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from benchmarks.lib.fresh import Weights
from kokoro_service.wire.codec import SAMPLE_RATE

# The first segment the daemon cuts from the benchmark's three-sentence reply.
SEGMENT = "Thanks for calling Acme Dental,"
FIRST_WORD = "Sure,"


def summary(values: Sequence[float], scale: float = 1.0, nd: int = 4) -> dict[str, Any]:
    v = sorted(x * scale for x in values)
    return {
        "n": len(v),
        "p50": round(statistics.median(v), nd),
        "min": round(v[0], nd),
        "max": round(v[-1], nd),
        "mean": round(statistics.fmean(v), nd),
    }


def timed(fn: Callable[[], object], runs: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def alternating(variants: dict[str, Callable[[], object]], runs: int) -> dict[str, list[float]]:
    """Time each variant ``runs`` times, taking turns run by run (after one unmeasured run
    each), so a machine whose speed drifts during the lever hits every variant alike."""
    for fn in variants.values():
        fn()
    out: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(runs):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t0)
    return out


Render = Callable[[str], tuple[float, Any]]
"""Synthesize one text: (seconds it took, samples)."""


def rtf_taking_turns(
    renders: Mapping[str, Render],
    texts: Sequence[str],
    runs: int,
    per_text: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, float]:
    """Seconds per second of audio of each variant over ``texts``, ``runs`` passes, the
    variants taking turns text by text (after one unmeasured first use each), so drift hits
    every variant alike.  ``per_text`` sees each text's samples, by variant."""
    for render in renders.values():
        render(texts[0])
    seconds = {k: 0.0 for k in renders}
    samples = {k: 0 for k in renders}
    for _ in range(runs):
        for text in texts:
            audio = {}
            for name, render in renders.items():
                s, audio[name] = render(text)
                seconds[name] += s
                samples[name] += len(audio[name])
            if per_text is not None:
                per_text(audio)
    return {k: seconds[k] / (samples[k] / SAMPLE_RATE) for k in renders}


def versus(kept: list[float], other: list[float], scale: float = 1.0) -> dict[str, Any]:
    k, o = statistics.median(kept), statistics.median(other)
    return {
        "kept": summary(kept, scale),
        "alternative": summary(other, scale),
        "alternative_over_kept": round(o / k, 3) if k else None,
    }


# ------------------------------------------------------------------------ in-process engine


class Bench:
    """The daemon's engine on the CPU (or ``device``, for the levers that take one), loaded
    by the product's loader as ``serve`` loads it (same source resolution, voice choice and
    warm-up), on this thread."""

    def __init__(self, weights: Weights, threads: int, device: str = "cpu") -> None:
        from kokoro_service.config import Settings
        from kokoro_service.daemon import load_engine

        self.threads = threads
        loaded = load_engine(
            Settings(
                model_dir=weights.model_dir,
                cache_dir=weights.cache_dir,
                device=device,
                torch_threads=threads,
                warmup=True,
                precision="fp32",  # the levers below compare against fp32 eager
            )
        )
        self.engine = loaded.engine
        self.voice = loaded.voice
        self.source = loaded.engine.source

    def forward(self, text: str, mode: Callable[[], contextlib.AbstractContextManager[Any]]) -> int:
        """G2P plus forward exactly as ``Engine.synthesize`` does, under ``mode``."""
        from kokoro import KPipeline

        pack = self.engine.voices.get(self.voice)
        samples = 0
        with mode():
            for chunk in self.engine.phonemize(text, "a"):
                out = KPipeline.infer(self.engine.model, chunk.phonemes, pack, 1.0)
                samples += out.audio.detach().float().cpu().numpy().size
        return samples
