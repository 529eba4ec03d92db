"""``g2p``: a burst of segments queued for English G2P, tagged together in one spaCy pass
per batch (kept, :mod:`kokoro_service.synthesis.g2p_batch`) against each tagged alone, as
the G2P thread did before.  For B segments submitted at once, as new calls' first
segments arrive in a burst: the time until all B have phonemes, per segment, and the time
until the first has them.  The phonemes of both variants are compared, too."""

from __future__ import annotations

import time
from typing import Any

from benchmarks.levers.common import Bench, versus
from benchmarks.lib.harness import log


def lever_g2p(b: Bench, runs: int) -> dict[str, Any]:
    from kokoro_service.synthesis.g2p_pool import PriorityG2P
    from tests.asr import TELEPHONY_SENTENCES

    e = b.engine
    kept_pool = e._g2p_pool
    alone_pool = PriorityG2P(name="g2p-alone")  # no prepare: each segment tagged alone
    texts = list(TELEPHONY_SENTENCES)
    out: dict[str, Any] = {
        "what": "B first segments submitted at once to the G2P thread: tagged together "
        "per batch (kept) vs each tagged alone; seconds per segment until all are done, "
        "and until the first is done",
        "runs": runs,
        "sentences": len(texts),
    }

    def burst(pool: PriorityG2P, size: int) -> tuple[float, float, list[Any]]:
        e._g2p_pool = pool
        try:
            t0 = time.perf_counter()
            futures = [
                e.phonemes_ahead(texts[i % len(texts)], "a", first=True) for i in range(size)
            ]
            first = futures[0].result(120)
            t_first = time.perf_counter() - t0
            results = [first] + [f.result(120) for f in futures[1:]]
            return time.perf_counter() - t0, t_first, results
        finally:
            e._g2p_pool = kept_pool

    for size in (1, 4, 16, 64):
        burst(kept_pool, size)  # first use, untimed
        burst(alone_pool, size)
        per_seg: dict[str, list[float]] = {"kept": [], "alone": []}
        first: dict[str, list[float]] = {"kept": [], "alone": []}
        same = True
        for _ in range(runs):  # taking turns, so drift hits both alike
            got = {}
            for name, pool in (("kept", kept_pool), ("alone", alone_pool)):
                total, t_first, got[name] = burst(pool, size)
                per_seg[name].append(total / size)
                first[name].append(t_first)
            same = same and got["kept"] == got["alone"]
        row: dict[str, Any] = {
            "per_segment_ms": versus(per_seg["kept"], per_seg["alone"], scale=1e3),
            "first_done_ms": versus(first["kept"], first["alone"], scale=1e3),
            "same_phonemes": same,
        }
        out[f"b{size}"] = row
        log(
            f"g2p B={size}: per segment {row['per_segment_ms']['kept']['p50']} ms kept, "
            f"{row['per_segment_ms']['alternative']['p50']} ms alone; same phonemes {same}"
        )
    return out
