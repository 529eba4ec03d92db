"""Where a segment's time goes, from the daemon's ``--trace-file`` and the callers' clocks.

The daemon writes one line per segment with the monotonic times of its stages
(:mod:`kokoro_service.ops.trace`); a client on the same host reads the same clock, so its
first-audio arrival can be put beside the daemon's cut of that call's first segment:

* ``wait``: cut to claimed by a worker (queued behind other work);
* ``prepare``: claimed to the engine's call (the batch's own bookkeeping);
* ``forward``: the engine's pass, audio on the host;
* ``deliver``: encoded and queued to the call's writer;
* ``written``: queued to read by the caller (first segments only: the writer and loopback);
* ``daemon_latency``: the caller's first audio minus the cut of the call's first segment,
  i.e. first audio minus the arrival of the last character that segment needed, which
  leaves the LLM's own pace out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from benchmarks.lib.harness import summary

STAGES = ("wait", "prepare", "forward", "deliver")


class TraceReader:
    """Reads the lines a daemon appended to its trace since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def read_new(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
        self._offset += end
        return [json.loads(line) for line in data[:end].splitlines() if line.strip()]


def stage_summary(
    records: Iterable[Mapping[str, Any]], first_audio: Mapping[str, float]
) -> dict[str, Any]:
    """p50/p95 of each stage over ``records``, and the first segments' daemon latency
    against ``first_audio`` (call id -> the caller's first AUDIO arrival, monotonic)."""
    records = list(records)
    out: dict[str, Any] = {
        "segments": len(records),
        "first_segments": sum(1 for r in records if r["first"]),
        "batch_size": summary([float(r["size"]) for r in records]),
    }
    spans = {
        "wait": ("cut", "claimed"),
        "prepare": ("claimed", "start"),
        "forward": ("start", "end"),
        "deliver": ("end", "delivered"),
    }
    for name, (a, b) in spans.items():
        out[f"{name}_s"] = summary([r[b] - r[a] for r in records])
        out[f"first_{name}_s"] = summary([r[b] - r[a] for r in records if r["first"]])
    firsts: dict[str, Mapping[str, Any]] = {}
    for r in records:
        if r["first"] and (r["call"] not in firsts or r["cut"] < firsts[r["call"]]["cut"]):
            firsts[r["call"]] = r
    latency, written = [], []
    for call, r in firsts.items():
        heard = first_audio.get(call, math.nan)
        if math.isfinite(heard):
            latency.append(heard - r["cut"])
            written.append(heard - r["delivered"])
    out["first_written_s"] = summary(written)
    out["daemon_latency_s"] = summary(latency)
    return out
