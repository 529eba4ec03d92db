"""A simulated GPU, so that scheduling is tuned on a CPU host.

:class:`SimulatedEngine` is the real :class:`~kokoro_service.synthesis.engine.Engine` with
its forward pass replaced: the daemon, its sockets, segmenter, scheduler, workers, G2P
(misaki, really run) and writers are all the product's own.  Each pass holds one simulated
device (one batch at a time, as one CUDA stream runs them) for the time a committed
calibration gives for a batch of that shape, sleeping with the GIL released, and returns
audio of the length the phonemes would speak at the real speaking rate.

The cost model, in the calibration file (``benchmarks/results/sim-*.json``)::

    seconds(batch, frames) = fixed_s + per_item_frame_s * batch * frames

where ``frames`` is the batch's longest item in 600-sample frames (padding costs what the
longest item costs).  The sleep stands for everything a real pass costs, kernel launches
included: on a GPU those hold a Python thread, which this model leaves free.  So the
simulator is optimistic about the control plane by exactly the launch cost that CUDA
graphs would remove; the calibration's ``derivation`` says where its numbers come from.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kokoro_service.calls.batchtime import fit_cost
from kokoro_service.errors import SynthesisError
from kokoro_service.synthesis.engine import Engine, G2PChunk, Request, Synthesis, WarmUp
from kokoro_service.synthesis.g2p_batch import tagger_nodes
from kokoro_service.synthesis.models.sources import ModelSource
from kokoro_service.types import SAMPLE_RATE

SAMPLES_PER_FRAME = 600
_NOISE_SECONDS = 60
DEFAULT_CALIBRATION = (
    Path(__file__).resolve().parents[1] / "results" / "sim-h200-2026-11-27-calibration.json"
)


@dataclass(frozen=True, slots=True)
class Calibration:
    """The simulated device's cost model and speaking rate."""

    name: str
    fixed_s: float
    per_item_frame_s: float
    phonemes_per_audio_s: float

    @classmethod
    def load(cls, path: Path) -> Calibration:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        model = data["model"]
        return cls(
            name=str(data.get("name", path.stem)),
            fixed_s=float(model["fixed_s"]),
            per_item_frame_s=float(model["per_item_frame_s"]),
            phonemes_per_audio_s=float(model["phonemes_per_audio_s"]),
        )

    def seconds(self, batch: int, frames: int) -> float:
        return self.fixed_s + self.per_item_frame_s * batch * frames

    def frames(self, phonemes: int, speed: float) -> int:
        audio_s = phonemes / self.phonemes_per_audio_s / max(speed, 1e-3)
        return max(1, round(audio_s * SAMPLE_RATE / SAMPLES_PER_FRAME))


class SimulatedDevice:
    """One device: passes run one at a time, each for its calibrated time."""

    def __init__(self, calibration: Calibration) -> None:
        self.calibration = calibration
        self._lock = threading.Lock()
        self.busy_s = 0.0
        self.passes = 0

    def run(self, batch: int, frames: int) -> float:
        """Hold the device for a pass of ``batch`` items of up to ``frames``; its seconds."""
        seconds = self.calibration.seconds(batch, frames)
        with self._lock:
            time.sleep(seconds)  # releases the GIL, as a GPU kernel would
            self.busy_s += seconds
            self.passes += 1
        return seconds


class SimulatedEngine(Engine):
    """The product's engine with the model's forward pass on a :class:`SimulatedDevice`.

    The real weights still load (the voice table, the vocabulary and the G2P pipelines are
    the product's), but no forward pass runs: a CPU host keeps up with hundreds of
    simulated calls only because the model's time is slept, not computed.
    """

    calibration: Calibration

    def __init__(
        self,
        source: ModelSource,
        *,
        device: str = "cpu",
        default_lang: str = "a",
        torch_threads: int | None = None,
        calibration: Calibration | None = None,
        tagger_blis: bool = False,
    ) -> None:
        self.tagger_blis = tagger_blis
        super().__init__(
            source, device="cpu", default_lang=default_lang, torch_threads=torch_threads
        )
        self.calibration = calibration or Calibration.load(DEFAULT_CALIBRATION)
        self.sim = SimulatedDevice(self.calibration)
        self.device = "simulated"
        # Quiet noise, made once: a player has something to play and nothing to hear, and
        # drawing fresh noise per segment cost the control plane 9 % of its CPU (py-spy).
        noise = np.random.default_rng(0).standard_normal(_NOISE_SECONDS * SAMPLE_RATE) * 0.01
        self._noise = noise.astype(np.float32)
        self._noise.flags.writeable = False

    def pipeline(self, lang: str) -> object:
        pipe = super().pipeline(lang)
        if self.tagger_blis and not getattr(pipe, "_on_blis", False):
            use_blis(pipe)
            pipe._on_blis = True  # type: ignore[attr-defined]
        return pipe

    def synthesize(
        self,
        text: str,
        *,
        voice: str,
        lang: str,
        speed: float = 1.0,
        phonemes: Future[list[G2PChunk]] | None = None,
    ) -> Synthesis:
        t0 = time.perf_counter()
        (chunks,) = self.batch_phonemes([Request(text, voice, lang, speed, phonemes)])
        if isinstance(chunks, Exception):
            raise chunks
        frames = [self.calibration.frames(len(c.phonemes), speed) for c in chunks]
        for f in frames:  # one pass per chunk, as the real batch-1 path runs them
            self.sim.run(1, f)
        return self._result(chunks, frames, time.perf_counter() - t0)

    def synthesize_batch(self, requests: Sequence[Request]) -> list[Synthesis | Exception]:
        if len(requests) <= 1:
            return [self._one(r) for r in requests]
        t0 = time.perf_counter()
        results: list[Synthesis | Exception | None] = [None] * len(requests)
        planned: dict[int, tuple[list[G2PChunk], list[int]]] = {}
        for i, (req, chunks) in enumerate(
            zip(requests, self.batch_phonemes(requests), strict=True)
        ):
            if isinstance(chunks, Exception):  # a bad voice, or G2P failed
                results[i] = chunks
                continue
            planned[i] = (
                chunks,
                [self.calibration.frames(len(c.phonemes), req.speed) for c in chunks],
            )
        items = [f for _, frames in planned.values() for f in frames]
        if items:
            self.sim.run(len(items), max(items))
        seconds = time.perf_counter() - t0
        total = sum(items) or 1
        for i, (chunks, frames) in planned.items():
            results[i] = self._result(chunks, frames, seconds * sum(frames) / total)
        return [r if r is not None else SynthesisError("no result") for r in results]

    def warm_up(self, voice: str, lang: str, max_batch: int = 1) -> WarmUp:
        self.sim = SimulatedDevice(self.calibration)  # its counters start after the warm-up
        warm = super().warm_up(voice, lang, max_batch)
        self.sim = SimulatedDevice(self.calibration)
        return warm

    def _result(self, chunks: list[G2PChunk], frames: list[int], seconds: float) -> Synthesis:
        samples = sum(frames) * SAMPLES_PER_FRAME
        if not samples:
            return Synthesis(None, seconds, "")
        reps = -(-samples // len(self._noise))
        audio = self._noise[:samples] if reps == 1 else np.tile(self._noise, reps)[:samples]
        return Synthesis(audio, seconds, " / ".join(c.phonemes for c in chunks))


def use_blis(pipe: object) -> None:
    """Put ``pipe``'s spaCy tagger back on thinc's cython-blis, as spaCy comes: the
    baseline of :func:`~kokoro_service.synthesis.g2p_batch.tag_through_numpy`."""
    from thinc.api import NumpyOps

    ops = NumpyOps(use_blis=True)
    for node in tagger_nodes(pipe):
        node.ops = ops


def fit_calibration(records: Sequence[dict[str, Any]], name: str) -> dict[str, Any]:
    """A calibration fitted to a daemon's ``--trace-file`` from a real device: least
    squares of each batch's forward time on its size times its longest item in frames.

    The frames come from each segment's audio seconds; the speaking rate from its
    characters (phonemes are about one per character in English: 806 for 793 in
    density.py's replies), so the simulator speaks as long as the traced device did.
    """
    batches: dict[float, list[dict[str, Any]]] = {}
    for r in records:
        batches.setdefault(r["start"], []).append(r)
    xs, ys = [], []
    for items in batches.values():
        longest = max(r["audio_s"] for r in items) * SAMPLE_RATE / SAMPLES_PER_FRAME
        xs.append(len(items) * longest)
        ys.append(items[0]["end"] - items[0]["start"])
    cost = fit_cost(list(zip(xs, ys, strict=True)))
    if cost is None:
        raise ValueError("the trace needs four batches or more, of two different shapes")
    audio = sum(r["audio_s"] for r in records)
    return {
        "name": name,
        "kind": "trace",
        "model": {
            "fixed_s": round(cost.fixed, 6),
            "per_item_frame_s": round(cost.per_char, 9),
            "phonemes_per_audio_s": round(sum(r["chars"] for r in records) / audio, 2),
        },
        "derivation": [f"least squares over {len(xs)} batches of a --trace-file"],
    }


if __name__ == "__main__":  # python -m benchmarks.lib.simdevice TRACE NAME > calibration.json
    import sys

    lines = Path(sys.argv[1]).read_text(encoding="utf-8").splitlines()
    print(json.dumps(fit_calibration([json.loads(ln) for ln in lines], sys.argv[2]), indent=2))
