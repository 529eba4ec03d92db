"""The levers that only a fresh process shows, each started by :mod:`benchmarks.lib.fresh`
with real weights, loading in a thread that exits and synthesizing in worker threads as
the daemon does:

* ``denormals``: flush-to-zero set in the synthesis worker (kept) against not;
* ``warmup``: the first synthesis in a fresh process, with and without ``warm_up``;
* ``layout``: one worker with every core (kept) against one worker per core, for one
  stream and for two streams at once.
"""

from __future__ import annotations

from typing import Any

from benchmarks.levers.common import FIRST_WORD, SEGMENT, summary, versus
from benchmarks.lib.fresh import Weights, layout_once, synth_times


def lever_denormals(weights: Weights, threads: int, runs: int) -> dict[str, Any]:
    texts = [SEGMENT] * (runs + 1)
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(2):  # alternate the variants so drift hits both
        for ftz in (True, False):
            times[ftz] += synth_times(weights, warm=True, threads=threads, ftz=ftz, texts=texts)[1:]
    return {
        "what": "worker thread of a fresh process, flush-to-zero set before its first "
        "forward (kept) or not; seconds per synthesis",
        "segment": SEGMENT,
        "seconds": versus(times[True], times[False]),
    }


def lever_warmup(weights: Weights, threads: int, repeats: int) -> dict[str, Any]:
    texts = [FIRST_WORD, SEGMENT, FIRST_WORD]
    out: dict[str, Any] = {
        "what": "fresh process: seconds of the first three syntheses, with and without warm_up",
        "texts": texts,
    }
    runs: dict[bool, list[list[float]]] = {True: [], False: []}
    for _ in range(repeats):
        for warm in (True, False):
            times = synth_times(weights, warm=warm, threads=threads, ftz=True, texts=texts)
            runs[warm].append([round(x, 4) for x in times])
    for warm in (True, False):
        out["with_warm_up" if warm else "without_warm_up"] = {
            "runs": runs[warm],
            "first_synthesis_s": summary([r[0] for r in runs[warm]]),
        }
    w = out["with_warm_up"]["first_synthesis_s"]["p50"]
    c = out["without_warm_up"]["first_synthesis_s"]["p50"]
    out["cold_over_warm_first_synthesis"] = round(c / w, 3) if w else None
    return out


def lever_layout(weights: Weights, threads: int, runs: int) -> dict[str, Any]:
    """Latency of one segment and aggregate real-time factor for each worker layout.

    One worker owns every core (kept: ``--workers 1``); the alternative gives each of
    ``threads`` workers one core.  With one stream the alternative leaves cores idle; with
    as many streams as workers it runs them side by side, which is its best case.
    """
    measured = {
        "one_stream_1_worker": (threads, 1),
        f"one_stream_{threads}_workers": (1, 1),
        f"{threads}_streams_{threads}_workers": (1, threads),
    }
    out: dict[str, Any] = {
        "what": "fresh processes, load in one thread, synthesize in worker threads; "
        f"{threads}_streams_1_worker serves the streams one after another, so its "
        "aggregate RTF is the one-stream figure",
        "segment": SEGMENT,
    }
    for name, (per_worker, streams) in measured.items():
        got = layout_once(weights, per_worker, streams, runs, SEGMENT)
        out[name] = {
            "threads_per_worker": per_worker,
            "workers": streams,
            "segment_synth_s": summary(got["synth_s"]),
            "aggregate_rtf": round(got["wall_s"] / got["audio_s"], 4),
        }
    out[f"{threads}_streams_1_worker"] = dict(out["one_stream_1_worker"])
    return out
