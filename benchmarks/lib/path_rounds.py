"""Requests over several paths, round by round, and what they add up to: the order of the
paths rotating each round so drift hits every path alike, each measured request repeated
while other processes loaded the machine, a summary per text and path, the ratios between
two paths (p50 over p50, and the median of per-round ratios), and their Markdown table.

A path is any way of sending one text (a protocol, a server, a connection's state); the
caller says how with ``once(path, text, pieces)``, which returns a :class:`Sample`.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.lib.harness import CpuMeter, log, rounded, summary
from benchmarks.lib.tables import markdown
from benchmarks.lib.timed_requests import Sample

Once = Callable[[str, str, list[str]], Sample]
"""One request: (path, text, the pieces of the text for a streamed path) -> its sample."""


@dataclass
class Rounds:
    """``warmup`` unmeasured rounds, then ``repeats`` measured ones, each text through each
    path once a round; before a measured round, up to ``wait_idle`` seconds for the machine
    to go quiet, and a measured request repeated (up to ``retries`` times) while others
    used more than ``contended_pct`` of it.  ``meter`` counts the processes in its ``pids``
    (this one, and the servers the caller adds) as ours, not as others' load."""

    once: Once
    texts: dict[str, str]
    pieces: dict[str, list[str]]
    warmup: int
    repeats: int
    retries: int
    contended_pct: float
    wait_idle: float
    meter: CpuMeter = field(default_factory=CpuMeter)

    def guarded(self, path: str, name: str, retries: int) -> tuple[Sample, float, int]:
        """One request, repeated (up to ``retries`` times) while others used the machine."""
        tries = 0
        while True:
            a = self.meter.sample()
            try:
                sample = self.once(path, self.texts[name], self.pieces[name])
            except (OSError, asyncio.TimeoutError, RuntimeError) as exc:
                sample = Sample(error=f"{type(exc).__name__}: {exc}")
            foreign = self.meter.usage(a, self.meter.sample())["foreign_cpu_pct"]
            if foreign <= self.contended_pct or tries >= retries or not sample.ok:
                return sample, foreign, tries
            tries += 1
            time.sleep(1.0)

    def run(self, paths: list[str]) -> dict[str, Any]:
        """Per text: the text, its pieces, and per path the summary of its measured rows;
        and the idle waits."""
        rounds = self.warmup + self.repeats
        rows: dict[str, dict[str, list[dict[str, Any]]]] = {
            name: {p: [] for p in paths} for name in self.texts
        }
        waits: list[dict[str, float]] = []
        for r in range(rounds):
            measured = r >= self.warmup
            if measured and self.wait_idle > 0:
                waits.append(self.meter.wait_idle(self.wait_idle))
            order = paths[r % len(paths) :] + paths[: r % len(paths)]
            for name in self.texts:
                for path in order:
                    retries = self.retries if measured else 0
                    sample, foreign, retried = self.guarded(path, name, retries)
                    tag = "measured" if measured else "warm-up"
                    log(
                        f"round {r + 1}/{rounds} ({tag}) {name} {path}: first "
                        f"{sample.first_audio_s:.3f}s total {sample.total_s:.3f}s audio "
                        f"{sample.audio_s:.2f}s, others {foreign}% CPU"
                        + (f", ERROR {sample.error}" if sample.error else "")
                    )
                    if measured:
                        rows[name][path].append(
                            {"round": r - self.warmup, **row(sample, foreign, retried)}
                        )
        return {
            "texts": {
                name: {
                    "text": self.texts[name],
                    "pieces": self.pieces[name],
                    "paths": {p: path_summary(rows[name][p]) for p in paths},
                }
                for name in self.texts
            },
            "idle_waits": waits,
        }


def row(s: Sample, foreign: float, retried: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "first_audio_s": rounded(s.first_audio_s),
        "total_s": rounded(s.total_s),
        "audio_start_s": rounded(s.audio_start_s),
        "audio_stop_s": rounded(s.audio_stop_s),
        "audio_s": rounded(s.audio_s),
        "chunks": s.chunks,
        "audio_starts": s.audio_starts,
        "audio_stops": s.audio_stops,
        "format": s.fmt,
        "connect_s": rounded(s.connect_s, 5),
        "foreign_cpu_pct": foreign,
        "retried": retried,
        **s.extra,
    }
    if s.error:
        out["error"] = s.error
    return out


def _vals(rows: list[dict[str, Any]], key: str) -> list[float]:
    out = []
    for r in rows:
        v = r.get(key)
        if "error" not in r and isinstance(v, float | int) and math.isfinite(v):
            out.append(float(v))
    return out


def path_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    formats = {json.dumps(r["format"], sort_keys=True) for r in rows if r.get("format")}
    out: dict[str, Any] = {
        "n": len(rows),
        "errors": [r["error"] for r in rows if "error" in r],
        "first_audio_s": summary(_vals(rows, "first_audio_s")),
        "total_s": summary(_vals(rows, "total_s")),
        "audio_s": summary(_vals(rows, "audio_s")),
        "first_audio_samples": [r["first_audio_s"] for r in rows],
        "total_samples": [r["total_s"] for r in rows],
        "audio_s_samples": [r["audio_s"] for r in rows],
        "formats": [json.loads(f) for f in sorted(formats)],
        "audio_starts_per_reply": sorted({r["audio_starts"] for r in rows}),
        "contended_samples": sum(1 for r in rows if r["foreign_cpu_pct"] > 25),
        "samples": rows,
    }
    starts = _vals(rows, "audio_start_s")
    if starts:
        out["audio_start_s"] = summary(starts)
    return out


def p50(block: dict[str, Any], key: str) -> float:
    value = (block.get(key) or {}).get("p50")
    return float(value) if isinstance(value, float | int) else math.nan


def paired_ratio(num: dict[str, Any], den: dict[str, Any], key: str) -> float:
    """Median over rounds of num/den, each round's two samples taken minutes apart at most."""
    a = {r["round"]: r.get(key) for r in num.get("samples", []) if "error" not in r}
    b = {r["round"]: r.get(key) for r in den.get("samples", []) if "error" not in r}
    ratios = [
        a[k] / b[k]
        for k in a.keys() & b.keys()
        if isinstance(a[k], float) and isinstance(b[k], float) and b[k] > 0
    ]
    return statistics.median(ratios) if ratios else math.nan


def ratios(num: dict[str, Any], den: dict[str, Any]) -> dict[str, float]:
    """First audio and total of path ``num`` over path ``den`` (their summaries): p50 over
    p50, and the median of the per-round ratios."""
    entry = {}
    for key, short in (("first_audio_s", "first_audio"), ("total_s", "total")):
        entry[f"{short}_p50_ratio"] = rounded(p50(num, key) / p50(den, key), 3)
        entry[f"{short}_paired_median_ratio"] = rounded(paired_ratio(num, den, key), 3)
    return entry


def busiest(results: dict[str, Any] | None) -> float | None:
    """The most that other processes used of the machine during one measured request."""
    rows = [
        r
        for block in ((results or {}).get("texts") or {}).values()
        for s in block["paths"].values()
        for r in s.get("samples", [])
    ]
    return max((r.get("foreign_cpu_pct") or 0.0 for r in rows), default=None)


def paths_markdown(results: dict[str, Any] | None) -> list[str]:
    """The Markdown table of :meth:`Rounds.run`'s result: per text and path, first audio
    and total p50 / p95, the audio's length and the number of measured requests."""
    cells = []
    for name, block in (results or {}).get("texts", {}).items():
        for path, s in block["paths"].items():
            f, t, a = s["first_audio_s"], s["total_s"], s["audio_s"]
            first = f"{f.get('p50', '-')} / {f.get('p95', '-')}"
            total = f"{t.get('p50', '-')} / {t.get('p95', '-')}"
            cells.append([name, path, first, total, a.get("p50", "-"), s["n"]])
    head = ["text", "path", "first audio p50 / p95 s", "total p50 / p95 s", "audio s", "n"]
    return markdown(head, cells)
