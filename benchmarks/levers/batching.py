"""``batching``: segments of different calls through one batched forward pass
(``--max-batch`` above 1) against the same segments one after another (batch 1, the CPU
default): aggregate RTF at batch 2, 4 and 8, in fp32 and in bf16 where offered, with
equal-length and with mixed-length segments (padding costs)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from benchmarks.levers.common import SEGMENT, Bench
from benchmarks.lib.harness import log
from kokoro_service.wire.codec import SAMPLE_RATE


def lever_batching(b: Bench, runs: int) -> dict[str, Any]:
    from kokoro_service.synthesis.devices import bf16_unavailable
    from kokoro_service.synthesis.engine import Request
    from tests.asr import TELEPHONY_SENTENCES

    e = b.engine
    out: dict[str, Any] = {
        "what": "synthesize_batch of B segments (batched) vs the same B one by one (batch 1)",
        "passes": runs,
    }
    mixed = list(TELEPHONY_SENTENCES[:8])
    equal = [SEGMENT] * 8
    precisions = ["fp32"] + ([] if bf16_unavailable("cpu") else ["bf16"])
    try:
        for precision in precisions:
            e.use_precision(precision)
            rows: dict[str, Any] = {}
            for label, texts in (("equal_lengths", equal), ("mixed_lengths", mixed)):
                for size in (2, 4, 8):
                    requests = [Request(t, b.voice, "a") for t in texts[:size]]

                    def batched(requests: list[Request] = requests) -> tuple[float, int]:
                        t0 = time.perf_counter()
                        results = e.synthesize_batch(requests)
                        return time.perf_counter() - t0, _samples(results)

                    def serial(requests: list[Request] = requests) -> tuple[float, int]:
                        t0 = time.perf_counter()
                        results = [e.synthesize_batch([r])[0] for r in requests]
                        return time.perf_counter() - t0, _samples(results)

                    totals = {"batched": [0.0, 0], "batch1": [0.0, 0]}
                    fns = {"batched": batched, "batch1": serial}
                    for fn in fns.values():
                        fn()  # first use of this shape, untimed
                    for _ in range(runs):
                        for name, fn in fns.items():
                            sec, samples = fn()
                            totals[name][0] += sec
                            totals[name][1] += samples
                    rtf = {k: v[0] / (v[1] / SAMPLE_RATE) for k, v in totals.items()}
                    rows[f"{label}_b{size}"] = {
                        "rtf": {k: round(v, 4) for k, v in rtf.items()},
                        "batched_over_batch1": round(rtf["batched"] / rtf["batch1"], 3),
                    }
                    log(f"batching {precision} {label} B={size}: {rows[f'{label}_b{size}']}")
            out[precision] = rows
    finally:
        e.use_precision("fp32")
    return out


def _samples(results: Sequence[Any]) -> int:
    total = 0
    for r in results:
        if isinstance(r, Exception) or r.audio is None:
            raise RuntimeError(f"a benchmark segment failed: {r}")
        total += len(r.audio)
    return total
