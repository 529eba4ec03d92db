"""The daemon's log as a measurement source.

There is no metrics endpoint yet, so the seconds the daemon itself spent synthesizing
each segment (``segment call=... chunk=N synth_s=... audio_s=...``, debug level) and each
utterance (``utterance call=... rtf=...``, info level) are read from its log lines after
the fact, to split TTFA into synthesis and the rest.  Readiness never comes from here:
the harness waits for the daemon's ready file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from benchmarks.lib.harness import rounded, summary

_KV = re.compile(r"(\w+)=(\S+)")


def log_summary(lines: Sequence[str]) -> dict[str, Any]:
    """:func:`parse_daemon_log` without the raw list (what the result file keeps)."""
    out = parse_daemon_log(lines)
    out.pop("first_segment_synth_list", None)
    return out


def parse_daemon_log(lines: Sequence[str]) -> dict[str, Any]:
    """Counts, RTF summaries and the first segments' synthesis seconds of ``lines``."""
    utt: list[dict[str, float]] = []
    seg: list[dict[str, float]] = []
    first_seg: list[float] = []
    for line in lines:
        for kind, bucket in (("utterance call=", utt), ("segment call=", seg)):
            pos = line.find(kind)
            if pos < 0:
                continue
            kv = dict(_KV.findall(line[pos:]))
            try:
                rec = {k: float(v) for k, v in kv.items() if k != "call"}
            except ValueError:
                continue
            bucket.append(rec)
            if kind == "segment call=" and rec.get("chunk") == 1:
                first_seg.append(rec.get("synth_s", math.nan))
    out: dict[str, Any] = {"utterances": len(utt), "segments": len(seg)}
    if utt:
        synth = sum(u.get("synth_s", 0.0) for u in utt)
        audio = sum(u.get("audio_s", 0.0) for u in utt)
        out["utterance_rtf"] = summary([u["rtf"] for u in utt if "rtf" in u])
        out["overall_rtf"] = rounded(synth / audio) if audio else math.nan
    if seg:
        rtfs = [s["synth_s"] / s["audio_s"] for s in seg if s.get("audio_s") and "synth_s" in s]
        out["per_segment_rtf"] = summary(rtfs)
        firsts = [x for x in first_seg if math.isfinite(x)]
        out["first_segment_synth_s"] = summary(firsts)
        out["first_segment_synth_list"] = firsts
    return out


# How the daemon's log says it ran out of descriptors (asyncio, our own lines, OSError).
EMFILE_MARKS = ("Too many open files", "EMFILE", "Errno 24")
_LOUD = (" WARNING ", " ERROR ", " CRITICAL ", "Traceback", *EMFILE_MARKS)
_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")


def log_load(lines: Sequence[str], sample: int = 5) -> dict[str, Any]:
    """How much ``lines`` weigh (bytes, lines), how many say the daemon ran out of
    descriptors, and the first ``sample`` distinct warnings and errors, undated."""
    loud: list[str] = []
    for line in lines:
        text = _STAMP.sub("", line)[:300]
        if text not in loud and any(m in line for m in _LOUD):
            loud.append(text)
            if len(loud) >= sample:
                break
    return {
        "log_bytes": sum(len(ln.encode()) + 1 for ln in lines),
        "log_lines": len(lines),
        "log_emfile_lines": sum(any(m in ln for m in EMFILE_MARKS) for ln in lines),
        "log_sample": loud[:sample],
    }
