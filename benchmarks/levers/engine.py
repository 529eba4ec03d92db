"""The levers of one synthesis on the daemon's engine, on this process's main thread:

* ``grad``: the model forward under ``torch.inference_mode`` (kept) against ``no_grad``
  and against plain autograd;
* ``threads``: intra-op threads per forward, 1 against 2 (the daemon's default on 2 cores);
* ``voices``: a voice pack from :class:`VoiceTable` (loaded once, kept) against
  ``torch.load`` of the voice file for every segment;
* ``copies``: handing a segment's samples to the writer as a zero-copy view (kept)
  against building a frame as ``bytes`` (two copies).
"""

from __future__ import annotations

import contextlib
import functools
import statistics
from collections.abc import Callable
from typing import Any

from benchmarks.levers.common import SEGMENT, Bench, alternating, summary, timed, versus
from kokoro_service.wire.codec import audio_payload, encode_audio, encode_audio_header


def lever_grad(b: Bench, runs: int) -> dict[str, Any]:
    import torch

    modes: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] = {
        "inference_mode": torch.inference_mode,
        "no_grad": torch.no_grad,
        "autograd": contextlib.nullcontext,
    }
    times = alternating(
        {k: functools.partial(b.forward, SEGMENT, m) for k, m in modes.items()}, runs
    )
    return {
        "segment": SEGMENT,
        "seconds": {k: summary(v) for k, v in times.items()},
        "no_grad_over_inference_mode": round(
            statistics.median(times["no_grad"]) / statistics.median(times["inference_mode"]), 3
        ),
        "autograd_over_inference_mode": round(
            statistics.median(times["autograd"]) / statistics.median(times["inference_mode"]), 3
        ),
    }


def _synth(b: Bench, text: str) -> None:
    b.engine.synthesize(text, voice=b.voice, lang="a")


def lever_threads(b: Bench, runs: int) -> dict[str, Any]:
    import torch

    def with_threads(n: int) -> None:
        torch.set_num_threads(n)
        _synth(b, SEGMENT)

    try:
        times = alternating(
            {str(n): functools.partial(with_threads, n) for n in sorted({1, b.threads})}, runs
        )
    finally:
        torch.set_num_threads(b.threads)
    return {"segment": SEGMENT, "seconds": {k: summary(v) for k, v in times.items()}}


def lever_voices(b: Bench, runs: int) -> dict[str, Any]:
    import torch

    path = b.source.voice_files()[b.voice]
    cached = timed(lambda: b.engine.voices.get(b.voice), runs * 20)
    loaded = timed(
        lambda: torch.load(path, map_location="cpu", weights_only=True).float().contiguous(),
        runs * 20,
    )
    synth = statistics.median(timed(lambda: _synth(b, SEGMENT), 3))
    return {
        "what": "one voice pack per segment: VoiceTable.get (kept) vs torch.load of the file",
        "ms": versus(cached, loaded, 1e3),
        "load_share_of_segment_synth": round(statistics.median(loaded) / synth, 4),
    }


def lever_copies(b: Bench, runs: int) -> dict[str, Any]:
    res = b.engine.synthesize(SEGMENT, voice=b.voice, lang="a")
    if res.audio is None:
        raise SystemExit("the engine produced no audio for the copies lever")
    samples = res.audio

    def view() -> None:
        payload = audio_payload(samples)
        encode_audio_header(payload.nbytes, 1)

    def copy() -> None:
        encode_audio(1, samples)

    n = runs * 50
    return {
        "what": "one segment's frame for the writer thread: memoryview of the worker's array "
        "(kept) vs a bytes frame (tobytes + concatenation)",
        "samples": int(samples.size),
        "us": versus(timed(view, n), timed(copy, n), 1e6),
    }
