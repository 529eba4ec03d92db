"""What a latency run's result says: the targets it is held to, where its TTFA goes, the
``--compare`` table of several result files, the plot, and the result files themselves."""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import shlex
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.lib.callers import TEXT_ONE, TEXT_THREE
from benchmarks.lib.harness import ROOT, Daemon, cpu_flags, cpu_model, rounded
from benchmarks.lib.phases import Plan

# ------------------------------------------------------------------------------ targets


def target(measured: float, op: str, limit: float, what: str) -> dict[str, Any]:
    """A pass/fail record: ``measured op limit``."""
    ok: bool | None
    if not (math.isfinite(measured) and math.isfinite(limit)):
        ok = None
    elif op == "<=":
        ok = measured <= limit
    elif op == "<":
        ok = measured < limit
    elif op == ">=":
        ok = measured >= limit
    else:
        raise ValueError(f"unknown comparison {op!r}")
    return {
        "target": what,
        "measured": rounded(measured),
        "limit": rounded(limit),
        "op": op,
        "pass": ok,
    }


def evaluate(res: dict[str, Any]) -> list[dict[str, Any]]:
    nan = math.nan
    out: list[dict[str, Any]] = []

    def get(*path: str | int) -> Any:
        cur: Any = res
        for p in path:
            try:
                cur = cur[p]
            except (KeyError, IndexError, TypeError):
                return nan
        return cur

    ttfa1 = get("ttfa", "one_sentence", "ttfa_s", "p50")
    floor1 = get("floor", "one_sentence", "synth_s", "p50")
    out.append(target(ttfa1 / floor1, "<=", 1.10, "TTFA/floor one-sentence (p50)"))
    ttfa3 = get("ttfa", "three_sentence_one_frame", "ttfa_s", "p50")
    seed = get("seed_baseline", "synth_s", "p50")
    out.append(
        target(ttfa3 / seed, "<=", 0.35, "TTFA three-sentence one frame / seed baseline (p50)")
    )
    rtf = get("rtf", "in_process", "stream_rtf_three_sentence")
    largest = get("capacity", "largest_n_zero_stalls")
    need = max(2.0, math.floor(0.8 / rtf)) if isinstance(rtf, float) and rtf > 0 else nan
    rec = target(float(largest), ">=", need, "largest N with zero stalls >= max(2, 0.8/RTF)")
    max_n = get("meta", "plan", "max_n")
    if isinstance(max_n, int) and math.isfinite(need) and need > max_n:
        rec["note"] = f"needs --max-n >= {int(need)} to be decidable"
        rec["pass"] = None if largest == max_n else rec["pass"]
    out.append(rec)
    p95 = nan
    p50_1 = nan
    for row in get("capacity", "per_n") if isinstance(get("capacity", "per_n"), list) else []:
        if row["n"] == largest:
            p95 = row["ttfa_s"].get("p95", nan)
        if row["n"] == 1:
            p50_1 = row["ttfa_s"].get("p50", nan)
    out.append(target(p95, "<=", 2 * p50_1, "TTFA p95 at that N <= 2 x TTFA p50 at N=1"))
    out.append(target(get("memory", "rss_growth_pct"), "<", 5.0, "RSS growth over soak (%)"))
    seg = get("rtf", "in_process", "typical_segment_synth_s")
    out.append(
        target(
            get("cancel", "cancel_to_last_frame_s", "p50"),
            "<=",
            seg + 0.020,
            "cancel to silence <= one segment's synth + 20 ms (p50)",
        )
    )
    return out


# ------------------------------------------------------------------------------ plot


def plot(res: dict[str, Any], path: Path) -> str | None:
    rows = res.get("capacity", {}).get("per_n", [])
    if not rows:
        return "no capacity data"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"matplotlib unavailable: {exc}"
    ns = [r["n"] for r in rows]
    p50 = [r["ttfa_s"].get("p50", math.nan) * 1e3 for r in rows]
    p95 = [r["ttfa_s"].get("p95", math.nan) * 1e3 for r in rows]
    stall = [r["stall_s_per_call"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(ns, p50, "o-", label="TTFA p50")
    ax1.plot(ns, p95, "s--", label="TTFA p95")
    ax1.set_xlabel("concurrent calls N")
    ax1.set_ylabel("ms")
    ax1.set_xticks(ns)
    ax1.set_ylim(bottom=0)
    ax1.grid(alpha=0.3)
    ax1.legend()
    ax1.set_title("time to first audio")
    ax2.bar(ns, stall, color="tab:red")
    ax2.set_xlabel("concurrent calls N")
    ax2.set_ylabel("seconds per call")
    ax2.set_xticks(ns)
    ax2.grid(alpha=0.3, axis="y")
    ax2.set_title("playback stall seconds (mean per call)")
    meta = res.get("meta", {})
    fig.suptitle(
        f"kokoro-service {meta.get('hostname', '')} {meta.get('label', '')} "
        f"{' '.join(res.get('serve_args', []))}".strip()
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


# ------------------------------------------------------------------------------ TTFA split


def split_ttfa(res: dict[str, Any]) -> dict[str, Any]:
    """Where TTFA goes, per reply shape (p50s): the engine alone in this process (floor),
    the first segment's synthesis inside the daemon (debug log), and the rest: sockets,
    reader thread, segmenter, scheduler, writer queue (and, streamed, the token pacing)."""
    out: dict[str, Any] = {}
    for shape, ttfa_rec in res.get("ttfa", {}).items():
        try:
            ttfa = float(ttfa_rec["ttfa_s"]["p50"])
            floor = float(res["floor"][shape]["synth_s"]["p50"])
        except (KeyError, TypeError):
            continue
        row: dict[str, Any] = {
            "ttfa_p50_s": ttfa,
            "floor_p50_s": floor,
            "ttfa_over_floor": rounded(ttfa / floor),
            "ttfa_minus_floor_s": rounded(ttfa - floor),
        }
        in_daemon = ttfa_rec.get("daemon_first_segment_synth_s", {}).get("p50")
        if in_daemon is not None:
            row["daemon_synth_p50_s"] = in_daemon
            row["daemon_synth_minus_floor_s"] = rounded(in_daemon - floor)
            row["ttfa_minus_daemon_synth_s"] = rounded(ttfa - in_daemon)
        pace = ttfa_rec.get("ttfa_from_that_piece_s", {}).get("p50")
        if pace is not None:
            row["token_pacing_s"] = rounded(ttfa - pace)
        out[shape] = row
    return out


# ------------------------------------------------------------------------------ compare


def _clean(obj: Any) -> Any:
    """NaN/inf → null, recursively, so the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _dig(res: dict[str, Any], path: str) -> Any:
    cur: Any = res
    for key in path.split("."):
        if isinstance(cur, list):
            cur = next((row for row in cur if str(row.get("n")) == key), None)
        elif isinstance(cur, dict):
            cur = cur.get(key)
        else:
            return None
    return cur


COMPARE_ROWS = (
    ("CPU / commit", "meta.cpu_model", "meta.git_commit"),
    ("CPU flags", "meta.cpu_flags", None),
    (
        "TTFA one-sentence p50 / p95 (s)",
        "ttfa.one_sentence.ttfa_s.p50",
        "ttfa.one_sentence.ttfa_s.p95",
    ),
    ("floor one-sentence p50 (s)", "floor.one_sentence.synth_s.p50", None),
    (
        "TTFA 3-sent one frame p50 / p95 (s)",
        "ttfa.three_sentence_one_frame.ttfa_s.p50",
        "ttfa.three_sentence_one_frame.ttfa_s.p95",
    ),
    ("floor 3-sent p50 (s)", "floor.three_sentence_one_frame.synth_s.p50", None),
    (
        "TTFA 3-sent streamed p50 / p95 (s)",
        "ttfa.three_sentence_streamed.ttfa_s.p50",
        "ttfa.three_sentence_streamed.ttfa_s.p95",
    ),
    ("seed baseline p50 (s)", "seed_baseline.synth_s.p50", None),
    (
        "RTF in-process overall / stream",
        "rtf.in_process.overall_rtf",
        "rtf.in_process.stream_rtf_three_sentence",
    ),
    (
        "RTF per segment in-process p50 / max",
        "rtf.in_process.per_segment_rtf.p50",
        "rtf.in_process.per_segment_rtf.max",
    ),
    (
        "RTF per segment daemon p50 / max",
        "rtf.daemon_log.per_segment_rtf.p50",
        "rtf.daemon_log.per_segment_rtf.max",
    ),
    ("RTF daemon overall", "rtf.daemon_log.overall_rtf", None),
    ("largest N zero stalls", "capacity.largest_n_zero_stalls", None),
    ("RSS before / after soak (MiB)", "memory.kib_before.VmRSS", "memory.kib_after.VmRSS"),
    (
        "RSS growth % (whole / 2nd half)",
        "memory.rss_growth_pct",
        "memory.rss_growth_second_half_pct",
    ),
    (
        "cancel to last frame p50 / max (s)",
        "cancel.cancel_to_last_frame_s.p50",
        "cancel.cancel_to_last_frame_s.max",
    ),
    ("marker TTFA after cancel + 2 s gap p50 (s)", "cancel.marker_ttfa_after_gap_s.p50", None),
    (
        "typical / longest segment synth (s)",
        "rtf.in_process.typical_segment_synth_s",
        "rtf.in_process.longest_segment_synth_s",
    ),
    ("contended phases", "contended_phases", None),
)


def fmt(v: Any) -> str:
    """A figure in a markdown cell: 3 decimals, KiB counts as MiB, lists comma-joined."""
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, int) and v > 10_000:
        return f"{v / 1024:.0f}"
    if isinstance(v, list):
        return ",".join(map(str, v)) or "-"
    return "-" if v is None else str(v)


def compare(paths: Sequence[Path], *, targets_only: bool = False) -> str:
    """A markdown table of the main figures of several result files, side by side; with
    ``targets_only``, just the CPU/commit row and the targets."""
    results = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    names = [
        r.get("meta", {}).get("label") or " ".join(r.get("serve_args", [])) or "default"
        for r in results
    ]
    lines = ["| figure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]

    rows = list(COMPARE_ROWS[:2] if targets_only else COMPARE_ROWS)
    max_n = 0 if targets_only else max(len(_dig(r, "capacity.per_n") or []) for r in results)
    for n in range(1, max_n + 1):
        rows.append(
            (
                f"N={n}: TTFA p50 / p95 (s)",
                f"capacity.per_n.{n}.ttfa_s.p50",
                f"capacity.per_n.{n}.ttfa_s.p95",
            )
        )
        rows.append(
            (
                f"N={n}: stalls / stall s",
                f"capacity.per_n.{n}.stall_count",
                f"capacity.per_n.{n}.stall_s",
            )
        )
    for title, a, b in rows:
        cells = []
        for r in results:
            cell = fmt(_dig(r, a))
            if b is not None:
                cell += " / " + fmt(_dig(r, b))
            cells.append(cell)
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    for i, t in enumerate(results[0].get("targets", [])):
        cells = []
        for r in results:
            rec = (r.get("targets") or [{}] * (i + 1))[i]
            ok = {True: "PASS", False: "FAIL", None: "n/a"}[rec.get("pass")]
            cells.append(f"{fmt(rec.get('measured'))} {ok}")
        lines.append(
            f"| target: {t['target']} ({t['op']} {fmt(t['limit'])}) | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------ paths

PATH_FIGURES: tuple[tuple[str, str, str | None, float], ...] = (
    ("precision the daemon ran", "daemon_ready.precision", None, 0.0),
    (
        "RTF per stream (in-process, 3 sentences)",
        "rtf.in_process.stream_rtf_three_sentence",
        "<=",
        1 / 3,
    ),
    ("RTF per segment in the daemon (p50)", "rtf.daemon_log.per_segment_rtf.p50", None, 0.0),
    ("lone-call TTFA p50 (s)", "ttfa.one_sentence.ttfa_s.p50", None, 0.0),
    ("lone-call TTFA p95 (s)", "ttfa.one_sentence.ttfa_s.p95", None, 0.0),
    ("largest N with zero stalls", "capacity.largest_n_zero_stalls", ">=", 3.0),
    ("Whisper WER, 20 telephony sentences x passes", "wer.wer", "delta<=", 0.005),
    ("  WER per pass (the noise source's spread)", "wer.wer_per_pass", None, 0.0),
)


def paths_summary(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline figures of runs that differ only in ``--precision``, side by side.

    The first run is the baseline: each figure also gets its ratio to it (its difference,
    for WER), and the issue's targets are judged on those ratios, since seconds do not
    compare across hosts.
    """
    names = list(runs)
    base = runs[names[0]]
    rows = []
    for title, path, op, limit in PATH_FIGURES:
        row: dict[str, Any] = {"figure": title, "path": path}
        for name in names:
            row[name] = _dig(runs[name], path)
        b = row[names[0]]
        for name in names[1:]:
            v = row[name]
            if not isinstance(v, (int, float)) or not isinstance(b, (int, float)) or not b:
                continue
            if op == "delta<=":
                row[f"{name}_minus_{names[0]}"] = rounded(v - b)
                row[f"{name}_pass"] = v - b <= limit
            else:
                row[f"{name}_over_{names[0]}"] = rounded(v / b, 3)
                if op == "<=":
                    row[f"{name}_pass"] = v / b <= limit
                elif op == ">=":
                    row[f"{name}_pass"] = v / b >= limit
        if op is not None:
            row["target"] = f"ratio {op} {limit:.3g}" if op != "delta<=" else f"+{limit:.3g}"
        rows.append(row)
    meta = dict(base.get("meta", {}))
    meta["paths"] = names
    meta["result_files"] = {n: runs[n].get("meta", {}).get("result_files") for n in names}
    return {"meta": meta, "figures": rows}


def compare_paths(summary: dict[str, Any]) -> str:
    """The README table of a ``-paths`` file: a column per path, the ratio to the first."""
    meta = summary["meta"]
    names = meta["paths"]
    head = " | ".join(names)
    host = f"{meta.get('cpu_model')} @ {str(meta.get('git_commit'))[:7]}"
    lines = [
        f"| {host} | {head} | ratio | target |",
        "|---" * (len(names) + 3) + "|",
    ]

    for row in summary["figures"]:
        cells = [fmt(row.get(n)) for n in names]
        ratio = "-"
        verdict = ""
        for n in names[1:]:
            r = row.get(f"{n}_over_{names[0]}", row.get(f"{n}_minus_{names[0]}"))
            if r is not None:
                ratio = fmt(r)
            if f"{n}_pass" in row:
                verdict = "PASS" if row[f"{n}_pass"] else "FAIL"
        target = f"{row.get('target', '')} {verdict}".strip() or "-"
        lines.append(f"| {row['figure']} | " + " | ".join(cells) + f" | {ratio} | {target} |")
    flags = ", ".join(f for f in meta.get("cpu_flags") or [] if "512" in f or "amx" in f)
    lines.append(f"\nCPU flags that matter here: {flags or 'no AVX-512'}.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ result file


def metadata(ns: argparse.Namespace, plan: Plan, daemon: Daemon | None) -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
        except OSError:
            return ""

    src = hashlib.sha256()
    package = ROOT / "kokoro_service"
    for path in sorted(package.rglob("*.py")):
        src.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    import torch

    return {
        "command": shlex.join([sys.executable, *sys.argv]),
        "daemon_command": shlex.join(daemon.argv) if daemon else None,
        "daemon_log": str(daemon.log_path) if daemon else None,
        "label": ns.label,
        "plan": plan.__dict__,
        "token_delay_ms": ns.token_delay_ms,
        "token_piece_chars": "3-6 (seeded)",
        "texts": {"one_sentence": TEXT_ONE, "three_sentence": TEXT_THREE},
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty_files": [ln for ln in git("status", "--porcelain").splitlines() if ln],
        "daemon_source_sha256": src.hexdigest()[:16],
        "torch": torch.__version__,
        "torch_threads_harness": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "timestamp": _dt.datetime.now().isoformat(timespec="seconds"),
    }


def _json_default(obj: object) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_result(res: dict[str, Any], results_dir: Path, label: str, *, plot_it: bool) -> str:
    """Write ``<host>-<date>[-label].json`` (and the PNG beside it); return the JSON text."""
    host = socket.gethostname().split(".")[0]
    stem = f"{host}-{_dt.date.today().isoformat()}" + (f"-{label}" if label else "")
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"{stem}.json"
    png_path = results_dir / f"{stem}.png"
    res["meta"]["result_files"] = [str(json_path), str(png_path)]
    if plot_it:
        problem = plot(res, png_path)
        if problem:
            res["meta"]["plot"] = problem
    text = json.dumps(_clean(res), indent=2, default=_json_default, allow_nan=False)
    json_path.write_text(text + "\n", encoding="utf-8")
    return text
