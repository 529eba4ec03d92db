"""``g2p``: a burst of segments queued for English G2P, tagged together in one spaCy pass
per batch (kept, :mod:`kokoro_service.synthesis.g2p_batch`) against each tagged alone, as
the G2P thread did before.  For B segments submitted at once, as new calls' first
segments arrive in a burst: the time until all B have phonemes, per segment, and the time
until the first has them.  The phonemes of both variants are compared, too.

``tagger``: the same bursts through the G2P thread as it serves (tagged together), with
spaCy's tagger multiplying through NumPy's BLAS (kept,
:func:`~kokoro_service.synthesis.g2p_batch.tag_through_numpy`) against thinc's
cython-blis, as spaCy comes.  The run records which kernels cython-blis chose here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks.levers.common import Bench, versus
from benchmarks.lib.harness import log


def _burst(e: Any, size: int) -> tuple[float, float, list[Any]]:
    """B first segments submitted at once to ``e``'s G2P thread: seconds until all are
    done, until the first is done, and their phonemes."""
    from tests.asr import TELEPHONY_SENTENCES

    texts = TELEPHONY_SENTENCES
    t0 = time.perf_counter()
    futures = [e.phonemes_ahead(texts[i % len(texts)], "a", first=True) for i in range(size)]
    first = futures[0].result(120)
    t_first = time.perf_counter() - t0
    results = [first] + [f.result(120) for f in futures[1:]]
    return time.perf_counter() - t0, t_first, results


def _compare(
    name: str, runs: int, variants: dict[str, Callable[[int], tuple[float, float, list[Any]]]]
) -> dict[str, Any]:
    """The ``kept`` burst against the ``alternative`` one at B = 1, 4, 16 and 64, taking
    turns so that drift hits both alike."""
    out: dict[str, Any] = {}
    for size in (1, 4, 16, 64):
        for burst in variants.values():
            burst(size)  # first use, untimed
        per_seg: dict[str, list[float]] = {k: [] for k in variants}
        first: dict[str, list[float]] = {k: [] for k in variants}
        same = True
        for _ in range(runs):
            got = {}
            for key, burst in variants.items():
                total, t_first, got[key] = burst(size)
                per_seg[key].append(total / size)
                first[key].append(t_first)
            same = same and got["kept"] == got["alternative"]
        row: dict[str, Any] = {
            "per_segment_ms": versus(per_seg["kept"], per_seg["alternative"], scale=1e3),
            "first_done_ms": versus(first["kept"], first["alternative"], scale=1e3),
            "same_phonemes": same,
        }
        out[f"b{size}"] = row
        log(
            f"{name} B={size}: per segment {row['per_segment_ms']['kept']['p50']} ms kept, "
            f"{row['per_segment_ms']['alternative']['p50']} ms the other; same phonemes {same}"
        )
    return out


def lever_tagger(b: Bench, runs: int) -> dict[str, Any]:
    from benchmarks.lib.simdevice import use_blis
    from kokoro_service.synthesis.g2p_batch import tag_through_numpy

    e = b.engine
    pipe = e.pipeline("a")

    def with_blis(blis: bool) -> Callable[[int], tuple[float, float, list[Any]]]:
        def burst(size: int) -> tuple[float, float, list[Any]]:
            if blis:
                use_blis(pipe)
            try:
                return _burst(e, size)
            finally:
                tag_through_numpy(pipe)  # as the product runs

        return burst

    out: dict[str, Any] = {
        "what": "B first segments submitted at once to the G2P thread as it serves "
        "(tagged together): spaCy's tagger multiplying through NumPy's BLAS (kept) vs "
        "thinc's cython-blis (alternative); seconds per segment until all are done, and "
        "until the first is done",
        "runs": runs,
        "blis_kernels": _blis_kernels(),
    }
    variants = {"kept": with_blis(False), "alternative": with_blis(True)}
    out.update(_compare("tagger", runs, variants))
    return out


def _blis_kernels() -> str | None:
    """The sub-configuration cython-blis chose on this CPU, as ``BLIS_ARCH_DEBUG`` prints it
    (in a child process: blis chooses once, when it first multiplies)."""
    code = "import numpy as np, blis.py; a = np.ones((2, 2), 'f'); blis.py.gemm(a, a)"
    env = {**os.environ, "BLIS_ARCH_DEBUG": "1"}
    res = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"sub-configuration '([^']+)'", res.stdout + res.stderr)
    return m.group(1) if m else None


def lever_g2p(b: Bench, runs: int) -> dict[str, Any]:
    from kokoro_service.synthesis.g2p_pool import PriorityG2P
    from tests.asr import TELEPHONY_SENTENCES

    e = b.engine
    kept_pool = e._g2p_pool
    alone_pool = PriorityG2P(name="g2p-alone")  # no prepare: each segment tagged alone

    def on(pool: PriorityG2P) -> Callable[[int], tuple[float, float, list[Any]]]:
        def burst(size: int) -> tuple[float, float, list[Any]]:
            e._g2p_pool = pool
            try:
                return _burst(e, size)
            finally:
                e._g2p_pool = kept_pool

        return burst

    out: dict[str, Any] = {
        "what": "B first segments submitted at once to the G2P thread: tagged together "
        "per batch (kept) vs each tagged alone; seconds per segment until all are done, "
        "and until the first is done",
        "runs": runs,
        "sentences": len(TELEPHONY_SENTENCES),
    }
    out.update(_compare("g2p", runs, {"kept": on(kept_pool), "alternative": on(alone_pool)}))
    return out
