"""Admission benchmark: one overload, with ``--max-calls`` and without it, side by side.

Two daemons, one after the other, with the same weights and settings (the real embedded
weights unless ``--serve-arg`` says otherwise), differing only in ``--max-calls``:

* ``limited``: the default limit, which the daemon derives from its own warm-up (3/4 of
  workers / RTF) and reports in its ready file;
* ``unlimited``: ``--max-calls 0``, the daemon as it was before the limit existed.

Each round, ``--callers`` calls (default: twice the limit plus two, so at least 1.5 times
the capacity the warm-up estimates) connect together, each sends HELLO, a three-sentence
agent reply in one TEXT frame and BYE, and reads to END.  A real-time player per call
(``callers.playback``) turns the AUDIO frames' arrival times into time to first audio and
stalls.  A call that gets END with no AUDIO was refused (busy); its answer time is HELLO
to END.  The daemon's own stall count (``kokoro_stall_seconds_count`` on ``/metrics``) is
recorded beside the players'.

    .venv/bin/python -m benchmarks.admission --out benchmarks/results/NAME.json
    .venv/bin/python -m benchmarks.admission --table benchmarks/results/NAME.json

Prints the result JSON on stdout and writes it to ``--out``; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.lib.callers import TEXT_THREE, playback
from benchmarks.lib.harness import (
    Daemon,
    host_facts,
    log,
    print_table,
    rounded,
    strict_json,
    summary,
)
from benchmarks.lib.tables import host_line, markdown
from kokoro_service.wire.client import Connection

MODES = {"limited": [], "unlimited": ["--max-calls", "0"]}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--callers", type=int, default=None, help="default: 2 x limit + 2")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--text", default=TEXT_THREE)
    p.add_argument("--serve-arg", action="append", default=[], help="passed to both daemons")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--table", type=Path, default=None, help="print the table of a result")
    return p.parse_args(argv)


def one_call(daemon: Daemon, call_id: str, text: str, barrier: threading.Barrier) -> dict[str, Any]:
    with Connection(daemon.host, daemon.port, timeout=180) as conn:
        barrier.wait()
        sent = time.monotonic()
        conn.hello(call_id)
        conn.text(text)
        conn.bye()
        reply = conn.read_until_end(timeout=180)
        done = time.monotonic()
    seconds = [len(c.samples) / reply.format.width / reply.format.rate for c in reply.chunks]
    play = playback(sent, reply.arrivals, seconds)
    return {
        "ended": reply.ended,
        "admitted": bool(reply.chunks),
        "answer_s": done - sent,
        "ttfa_s": play.ttfa if reply.chunks else None,
        "stalls": play.stalls,
        "stall_s": play.stall_s,
        "audio_s": sum(seconds),
    }


def overload_round(daemon: Daemon, n: int, text: str, prefix: int) -> list[dict[str, Any]]:
    """``n`` calls connect, then all say HELLO together; what each got."""
    barrier = threading.Barrier(n)
    results: list[dict[str, Any]] = [{} for _ in range(n)]

    def call(i: int) -> None:
        results[i] = one_call(daemon, str(prefix + i), text, barrier)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def daemon_stalls(daemon: Daemon) -> float | None:
    http = daemon.info.get("http")
    if not http:
        return None
    url = f"http://{http['host']}:{http['port']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("kokoro_stall_seconds_count"):
                return float(line.split()[-1])
    return None


def run_mode(
    name: str, extra: list[str], ns: argparse.Namespace, callers: int | None
) -> dict[str, Any]:
    daemon = Daemon(
        [*ns.serve_arg, *extra, "--http-port", "0"], ns.cache_dir, "info", admission=True
    )
    log(f"{name}: starting {shlex.join(daemon.argv)}")
    started = daemon.start(timeout=600)
    try:
        limit = daemon.info.get("max_calls")
        n = callers or 2 * int(limit or 1) + 2
        rounds = []
        for r in range(ns.rounds):
            results = overload_round(daemon, n, ns.text, prefix=r * 1000)
            rounds.append(results)
            log(f"{name}: round {r + 1}: {sum(x['admitted'] for x in results)} of {n} admitted")
        heard = daemon_stalls(daemon)
    finally:
        code = daemon.stop()
    calls = [c for rnd in rounds for c in rnd]
    admitted = [c for c in calls if c["admitted"]]
    refused = [c for c in calls if not c["admitted"]]
    return {
        "daemon_args": [*ns.serve_arg, *extra],
        "daemon_start_s": rounded(started, 2),
        "ready": daemon.info,
        "max_calls": limit,
        "capacity_estimate": daemon.info.get("calls_in_real_time"),
        "callers_per_round": n,
        "rounds": ns.rounds,
        "admitted_per_round": [sum(c["admitted"] for c in rnd) for rnd in rounds],
        "calls_without_end": sum(not c["ended"] for c in calls),
        "admitted_ttfa_s": summary([c["ttfa_s"] for c in admitted]),
        "admitted_stalls": sum(c["stalls"] for c in admitted),
        "admitted_stall_s": rounded(sum(c["stall_s"] for c in admitted)),
        "admitted_calls_with_stalls": sum(c["stalls"] > 0 for c in admitted),
        "refused_answer_s": summary([c["answer_s"] for c in refused]),
        "audio_s_per_admitted_call": rounded(
            sum(c["audio_s"] for c in admitted) / max(1, len(admitted)), 2
        ),
        "daemon_counted_stalls": heard,
        "daemon_exit_code": code,
    }


def table(res: dict[str, Any]) -> str:
    host = res["host"]
    lines = [
        f"{host_line(host, res.get('commit'))}; "
        f"{res['modes']['limited']['callers_per_round']} callers at once, "
        f"{res['settings']['rounds']} rounds",
        "",
    ]
    rows = []
    for name, m in res["modes"].items():
        ttfa, ref = m["admitted_ttfa_s"], m["refused_answer_s"]
        rows.append(
            [
                name,
                m["max_calls"] or "none",
                m["admitted_per_round"],
                f"{ttfa['p50']} / {ttfa['p95']}",
                f"{m['admitted_stalls']} ({m['admitted_calls_with_stalls']})",
                m["admitted_stall_s"],
                f"{ref['p50']}" if ref.get("n") else "-",
            ]
        )
    head = [
        "mode",
        "max calls",
        "admitted per round",
        "TTFA p50 / p95 s",
        "stalls (calls with one)",
        "stall s",
        "refused: END after p50 s",
    ]
    lines += markdown(head, rows)
    limited = res["modes"]["limited"]
    lines += [
        "",
        f"Capacity estimate from the warm-up: {limited['capacity_estimate']} calls; "
        f"default --max-calls: {limited['max_calls']}.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ns = parse_args(argv)
    if ns.table is not None:
        return print_table(ns.table, table)
    t0 = time.monotonic()
    host = host_facts()
    res: dict[str, Any] = {
        "benchmark": "admission",
        "command": shlex.join(
            [sys.executable, "-m", "benchmarks.admission", *(argv or sys.argv[1:])]
        ),
        "host": host,
        "commit": host.get("git_commit"),
        "settings": {"rounds": ns.rounds, "text": ns.text, "serve_args": ns.serve_arg},
        "modes": {},
    }
    callers = ns.callers
    for name, extra in MODES.items():
        res["modes"][name] = run_mode(name, extra, ns, callers)
        callers = callers or res["modes"][name]["callers_per_round"]  # the same load for both
    res["wall_s"] = rounded(time.monotonic() - t0, 1)
    out = json.dumps(strict_json(res), indent=2)
    if ns.out is not None:
        ns.out.write_text(out + "\n", encoding="utf-8")
    print(out)
    return res


if __name__ == "__main__":
    main()
