"""Latency, capacity, memory and barge-in benchmark of the kokoro-service daemon.

Starts ``kokoro-service serve`` as a subprocess (embedded default weights unless
``--serve-arg`` says otherwise), drives it only over the TCP protocol the way a telephony
LLM does, and measures, in one run:

* TTFA (time to first audio) for a one-sentence reply, a three-sentence reply sent as one
  TEXT frame, and the same reply streamed as LLM tokens (3-6 character pieces);
* the floor: the engine alone (in this process, loaded by the daemon's own loader from the
  daemon's own settings, while the daemon is idle) synthesizing exactly the first segment
  the daemon sends, alternating run by run with the TTFA runs so that both see the machine
  in the same state;
* the seed baseline: the whole reply synthesized in one ``Engine.synthesize`` call;
* per-segment and overall real-time factor (in-process and from the daemon's log);
* capacity: N concurrent calls with a simulated real-time player each (stalls);
* memory: daemon RSS before and after 500 short utterances;
* cancel: CONTROL ``cancel`` after the first audio, time to the last cancelled frame;
* wer: Whisper's word error rate on the telephony corpus, heard through the daemon.

``--precisions fp32,auto`` runs all of that once per vocoder precision, one daemon after
the other in the same run, writes each run's file and a ``-paths`` file with the
headline figures side by side (RTF per stream, lone-call TTFA p50/p95, largest N with
zero stalls, WER) and their ratios to fp32; ``--compare-paths`` turns that file into the
README's table.

Prints the result JSON on stdout and writes ``benchmarks/results/<host>-<date>[-label].json``
and a PNG of TTFA and stall seconds against concurrency.  Progress goes to stderr.

This file is the command line and the order of the phases.  The daemon (started on
ephemeral ports, ready when its ``--ready-file`` appears) and the in-process engine are in
``harness.py``, the simulated callers in ``callers.py``, the measurements in ``phases.py``
(with the daemon's log read as a measurement in ``daemon_log.py``), and the targets,
``--compare`` table, plot and result file in ``report.py``.

    .venv/bin/python -m benchmarks.latency                      # full run, ~15 min on 2 cores
    .venv/bin/python -m benchmarks.latency --quick              # smoke test
    .venv/bin/python -m benchmarks.latency --label workers2 --serve-arg=--workers=2
    .venv/bin/python -m benchmarks.latency --precisions fp32,auto --max-n 6   # ~40 min
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.lib.callers import MARKER_TEXT, TEXT_ONE
from benchmarks.lib.daemon_log import log_summary
from benchmarks.lib.harness import GUARD, RESULTS_DIR, Daemon, InProcess, log, rounded
from benchmarks.lib.phases import (
    PHASES,
    Plan,
    phase_cancel,
    phase_capacity,
    phase_floor,
    phase_memory,
    phase_seed,
    phase_ttfa,
    phase_wer,
    ttfa_once,
)
from benchmarks.lib.report import (
    compare,
    compare_paths,
    evaluate,
    metadata,
    paths_summary,
    split_ttfa,
    write_result,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--only", default=",".join(PHASES), help=f"comma list of {', '.join(PHASES)}")
    p.add_argument("--quick", action="store_true", help="few runs of everything (smoke test)")
    p.add_argument("--runs", type=int, default=None, help="measured TTFA/floor runs [20]")
    p.add_argument("--warmup", type=int, default=None, help="unmeasured runs first [3]")
    p.add_argument("--seed-runs", type=int, default=None, help="whole-reply syntheses [10]")
    p.add_argument("--rtf-runs", type=int, default=None, help="in-process passes for RTF [3]")
    p.add_argument("--max-n", type=int, default=None, help="largest concurrency [4]")
    p.add_argument("--repeats", type=int, default=None, help="capacity repeats per N [3]")
    p.add_argument(
        "--memory-utterances", type=int, default=None, help="utterances in memory soak [500]"
    )
    p.add_argument("--cancel-runs", type=int, default=None, help="measured cancel runs [5]")
    p.add_argument("--wer-repeats", type=int, default=None, help="passes over the WER corpus [3]")
    p.add_argument(
        "--token-delay-ms",
        type=float,
        default=10.0,
        help="pause between streamed token pieces (0 = back-to-back)",
    )
    p.add_argument("--label", default="", help="appended to the result file name")
    p.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        help="extra argument for `kokoro-service serve` (repeatable), e.g. --serve-arg=--workers=2",
    )
    p.add_argument(
        "--daemon-log-level",
        default="debug",
        choices=("debug", "info"),
        help="daemon log level; debug adds per-segment synth_s lines used to split TTFA",
    )
    p.add_argument("--cache-dir", type=Path, default=None, help="daemon --cache-dir [default]")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--no-plot", action="store_true")
    p.add_argument(
        "--retries",
        type=int,
        default=3,
        help="repeat a single measurement up to this many times when other processes used "
        "more than 25%% of the machine during it (0 = keep everything)",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        type=Path,
        default=None,
        metavar="JSON",
        help="print a markdown table of these result files side by side and exit",
    )
    p.add_argument(
        "--precisions",
        default="",
        help="comma list of --precision values (fp32, bf16, auto) to run one after the "
        "other, side by side in one run; the first is the baseline",
    )
    p.add_argument(
        "--compare-paths",
        type=Path,
        default=None,
        metavar="JSON",
        help="print the markdown table of a -paths result file and exit",
    )
    p.add_argument(
        "--targets-only",
        action="store_true",
        help="with --compare: only the CPU/commit row and the targets (the README headline)",
    )
    p.add_argument(
        "--wait-idle",
        type=float,
        default=30.0,
        help="before each phase, wait up to this many seconds for other processes' CPU "
        "use to drop below 10%% (0 = do not wait); what others used is reported per phase",
    )
    return p.parse_args(argv)


def make_plan(ns: argparse.Namespace) -> Plan:
    quick = ns.quick
    defaults = Plan(3, 1, 2, 1, 2, 1, 20, 2, 1) if quick else Plan(20, 3, 10, 3, 4, 3, 500, 5, 3)

    def pick(value: int | None, default: int, minimum: int) -> int:
        chosen = default if value is None else value
        if chosen < minimum:
            raise SystemExit(f"a run count must be at least {minimum}, got {chosen}")
        return chosen

    return Plan(
        runs=pick(ns.runs, defaults.runs, 1),
        warmup=pick(ns.warmup, defaults.warmup, 0),
        seed_runs=pick(ns.seed_runs, defaults.seed_runs, 1),
        rtf_runs=pick(ns.rtf_runs, defaults.rtf_runs, 1),
        max_n=pick(ns.max_n, defaults.max_n, 1),
        repeats=pick(ns.repeats, defaults.repeats, 1),
        memory_utterances=pick(ns.memory_utterances, defaults.memory_utterances, 1),
        cancel_runs=pick(ns.cancel_runs, defaults.cancel_runs, 1),
        wer_repeats=pick(ns.wer_repeats, defaults.wer_repeats, 1),
    )


# ------------------------------------------------------------------------------ main


def run(ns: argparse.Namespace) -> dict[str, Any]:
    plan = make_plan(ns)
    GUARD.retries = max(0, ns.retries)
    phases = [p.strip() for p in ns.only.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise SystemExit(f"unknown phase(s) {', '.join(unknown)}; choose from {', '.join(PHASES)}")
    serve_args: list[str] = list(ns.serve_arg)
    # The daemon's settings, parsed from its command line by `serve` itself: the in-process
    # engine and the segmenter predictions follow them, so they cannot drift apart.
    daemon = Daemon(serve_args, ns.cache_dir, ns.daemon_log_level)
    cfg = daemon.settings.segmenter
    res: dict[str, Any] = {"serve_args": serve_args, "phases": phases}
    meter = GUARD.meter
    contention: dict[str, Any] = {}
    res["contention"] = contention

    def measured(name: str, fn: Callable[[], Any]) -> Any:
        """Run one phase after waiting for an idle machine; record foreign CPU during it."""
        wait = meter.wait_idle(ns.wait_idle) if ns.wait_idle > 0 else {}
        a = meter.sample()
        out = fn()
        contention[name] = {**meter.usage(a, meter.sample()), "waited_s": wait.get("waited_s")}
        if contention[name]["foreign_cpu_pct"] > 10:
            log(f"phase {name}: other processes used {contention[name]['foreign_cpu_pct']}%")
        return out

    t_start = time.monotonic()
    try:
        log(f"starting daemon: {shlex.join(daemon.argv)}")
        res["daemon_start_s"] = rounded(daemon.start(), 2)
        res["daemon_ready"] = daemon.info
        meter.pids.append(daemon.pid)
        log(f"daemon ready on {daemon.host}:{daemon.port} (pid {daemon.pid}): {daemon.ready_file}")
        for _ in range(2):  # the daemon warms itself up; these warm the socket path too
            ttfa_once(daemon, [TEXT_ONE], 0.0, 0)
        time.sleep(0.5)
        res["memory_start_kib"] = daemon.memory_kib()

        rtf: dict[str, Any] = {}
        marker_samples: int | None = None
        interleaved: InProcess | None = None  # the floor, measured between TTFA runs
        if {"floor", "seed", "cancel"} & set(phases):
            log("in-process engine (daemon idle)")
            # The daemon's precision as it resolved it, not a second auto check that
            # might come out the other way.
            precision = str(daemon.info.get("precision") or daemon.settings.precision)
            inproc = InProcess(dataclasses.replace(daemon.settings, precision=precision))
            res["in_process"] = {"source": inproc.description, "voice": inproc.voice}
            if "floor" in phases:
                interleaved = inproc
                res["floor"], rtf["in_process"] = measured(
                    "floor", lambda: phase_floor(inproc, plan, cfg, per_shape="ttfa" not in phases)
                )
            if "seed" in phases:
                res["seed_baseline"] = measured("seed", lambda: phase_seed(inproc, plan))
            if "cancel" in phases:
                marker_samples = inproc.synth(MARKER_TEXT)[2]
        if "ttfa" in phases:
            mark = daemon.mark()
            res["ttfa"], floor = measured(
                "ttfa", lambda: phase_ttfa(daemon, plan, cfg, ns.token_delay_ms / 1e3, interleaved)
            )
            if floor is not None:
                res["floor"] = floor
            res["ttfa_daemon_log"] = log_summary(daemon.since(mark))
        if "memory" in phases:
            res["memory"] = measured("memory", lambda: phase_memory(daemon, plan, cfg))
        if "capacity" in phases:
            mark = daemon.mark()
            res["capacity"] = measured("capacity", lambda: phase_capacity(daemon, plan))
            res["capacity_daemon_log"] = log_summary(daemon.since(mark))
        if "cancel" in phases:
            res["cancel"] = measured("cancel", lambda: phase_cancel(daemon, plan, marker_samples))
            if "in_process" in rtf:
                res["cancel"]["typical_segment_synth_s"] = rtf["in_process"][
                    "typical_segment_synth_s"
                ]
        if "wer" in phases:
            res["wer"] = measured("wer", lambda: phase_wer(daemon, plan))
        rtf["daemon_log"] = log_summary(daemon.since(0))
        res["rtf"] = rtf
        res["memory_end_kib"] = daemon.memory_kib()
    finally:
        res["daemon_exit_code"] = daemon.stop()
        res["wall_s"] = rounded(time.monotonic() - t_start, 1)
    warnings = [ln for ln in daemon.since(0) if " WARNING " in ln or " ERROR " in ln]
    res["daemon_warnings"] = warnings[:50]
    res["meta"] = metadata(ns, plan, daemon)
    res["discarded_contended_runs"] = dict(GUARD.discarded)
    res["kept_contended_runs"] = dict(GUARD.kept_contended)
    res["contended_phases"] = [name for name, c in contention.items() if c["foreign_cpu_pct"] > 10]
    res["split"] = split_ttfa(res)
    res["targets"] = evaluate(res)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ns = parse_args(argv)
    # Stop the daemon on SIGTERM/SIGINT too (a background shell may have ignored SIGINT).
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    if ns.compare:
        print(compare(ns.compare, targets_only=ns.targets_only))
        return 0
    if ns.compare_paths:
        print(compare_paths(json.loads(ns.compare_paths.read_text(encoding="utf-8"))))
        return 0
    precisions = [p.strip() for p in ns.precisions.split(",") if p.strip()]
    if not precisions:
        res = run(ns)
        print(write_result(res, ns.results_dir, ns.label, plot_it=not ns.no_plot))
        return 0
    runs: dict[str, dict[str, Any]] = {}
    for precision in precisions:
        one = argparse.Namespace(**vars(ns))
        one.serve_arg = [*ns.serve_arg, f"--precision={precision}"]
        one.label = "-".join(x for x in (ns.label, precision) if x)
        log(f"=== precision {precision}")
        runs[precision] = run(one)
        write_result(runs[precision], ns.results_dir, one.label, plot_it=not ns.no_plot)
    summary = paths_summary(runs)
    label = "-".join(x for x in (ns.label, "paths") if x)
    print(write_result(summary, ns.results_dir, label, plot_it=False))
    return 0


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
