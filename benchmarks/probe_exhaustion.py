"""Resource-exhaustion probe: a remote peer's attacks on threads and descriptors, repeated
against a real daemon that runs under a small descriptor limit.

One daemon (``kokoro-service serve`` on a random-weight checkpoint, every port on, under
``RLIMIT_NOFILE`` = ``--nofile`` soft and hard), then one attack after another:

* ``http``: ``--connections`` idle TCP connections to the HTTP port, opened 50 every
  50 ms and held ``--hold`` s once the daemon's descriptor count has stopped growing (at
  most ``--settle-timeout`` s);
* ``wyoming``: the same against the Wyoming port;
* ``churn``: a live call N (HELLO, then KEEPALIVE every second) and ``--pairs`` pairs of
  UDP datagrams ``REGISTER:N`` / ``BYE:N`` over ``--churn-seconds``, with the sink port
  (``--sink-port-base`` + N) listening but never accepting;
* ``text`` (only when asked for): idle connections to the text port, a control, since
  ``--max-connections`` bounds those.

One daemon serves every attack in turn; an attack that breaks it is recorded and the next
attack gets a new daemon (``--fresh-daemon``: a new one for each).  Before, at the peak,
after each attack and once its threads and descriptors are back near where they were
(polled up to ``--recover-timeout`` s after the release), the daemon's threads,
descriptors and RSS come from ``/proc/<pid>``.  A normal call (HELLO with a fresh id, one
sentence, BYE; at least one AUDIO frame and END within ``--call-timeout`` s) is served
while the attack is held and again after its release, and the HTTP and Wyoming ports
must answer once it is released.  The bytes the daemon logged during each attack show
log amplification.

    .venv/bin/python -m benchmarks.probe_exhaustion --out /tmp/probe.json

Prints the result JSON on stdout (and writes it to ``--out``); progress goes to stderr.
Exits 1 when the daemon died, a normal call failed or a port stopped answering.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.lib.daemon_variants import baseline_tree, limited_argv, make_checkpoint
from benchmarks.lib.exhaustion import Probe, failures_of, progress_line
from benchmarks.lib.harness import Daemon, host_facts, log, print_table, rounded, strict_json
from benchmarks.lib.peers import listening_sink
from benchmarks.lib.proc_watch import nofile_of, raised_nofile
from benchmarks.lib.tables import markdown

ATTACKS = ("http", "wyoming", "churn", "text")
DEFAULT_ATTACKS = ("http", "wyoming", "churn")
# The last commit before the daemon's peer limits: the baseline this probe compares with.
BASELINE = "9cb8209"
NORMAL_TEXT = "Thanks for calling."


def run_probe(
    *,
    connections: int = 1100,
    pairs: int = 1100,
    nofile: int = 1024,
    attacks: Sequence[str] = DEFAULT_ATTACKS,
    hold: float = 5.0,
    churn_seconds: float = 3.0,
    call_timeout: float = 60.0,
    connect_timeout: float = 10.0,
    settle_timeout: float = 30.0,
    recover_timeout: float = 60.0,
    thread_slack: int = 4,
    fd_slack: int = 8,
    sink_call_id: int = 7,
    sink_backlog: int = 1,
    text: str = NORMAL_TEXT,
    model_dir: Path | None = None,
    serve_args: Sequence[str] = (),
    log_level: str = "info",
    start_timeout: float = 300.0,
    fresh_daemon: bool = False,
    code: Path | None = None,
) -> dict[str, Any]:
    """Start the daemon under ``nofile`` descriptors, run ``attacks`` in turn; the result.

    ``code`` is a tree whose ``kokoro_service`` the daemon runs (the baseline); by
    default, this checkout's.

    One daemon serves every attack unless one fails: the next attack then gets a new
    daemon (``result["daemons"]`` lists each, with why it was started), so each attack's
    figures are its own; ``fresh_daemon`` starts a new one for every attack.
    ``result["ok"]`` is False when a daemon died, a normal call failed or a port did not
    answer after a release (``result["failures"]`` says which).
    """
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attacks {unknown}; known: {list(ATTACKS)}")
    t_start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="kokoro-probe-"))
    built: Path | None = None  # removed after the run (200+ MB); the logs stay
    if model_dir is None:
        log("building a tiny random-weight checkpoint")
        model_dir = built = make_checkpoint(work / "tiny")
    sink, sink_base = listening_sink(sink_call_id, sink_backlog)
    opts: dict[str, Any] = {
        "connections": connections,
        "pairs": pairs,
        "nofile": nofile,
        "attacks": list(attacks),
        "hold": hold,
        "churn_seconds": churn_seconds,
        "call_timeout": call_timeout,
        "connect_timeout": connect_timeout,
        "settle_timeout": settle_timeout,
        "recover_timeout": recover_timeout,
        "thread_slack": thread_slack,
        "fd_slack": fd_slack,
        "sink_call_id": sink_call_id,
        "sink_backlog": sink_backlog,
        "sink_port_base": sink_base,
        "sink_port": sink_base + sink_call_id,
        "text": text,
        "model_dir": None if built is not None else str(model_dir),
        "checkpoint_built": built is not None,  # `make-checkpoint --size tiny`, removed after
        "serve_args": list(serve_args),
        "fresh_daemon": fresh_daemon,
    }
    args = [
        "--model-dir", str(model_dir),
        "--wyoming-port", "0",
        "--http-port", "0",
        "--sink-port-base", str(sink_base),
        *serve_args,
    ]  # fmt: skip
    res: dict[str, Any] = {
        "benchmark": "probe_exhaustion",
        "settings": opts,
        "daemons": [],
        "attacks": {},
    }
    failures: list[str] = []
    warnings: list[str] = []
    daemons: list[Daemon] = []

    def start(reason: str) -> Probe:
        """A daemon of its own work dir (its ready file and log), its baseline call."""
        workdir = work / f"daemon-{len(daemons) + 1}"
        workdir.mkdir()
        daemon = Daemon(args, cache_dir=work / "cache", log_level=log_level, workdir=workdir)
        daemon.argv = limited_argv(daemon.argv, nofile, code)
        record: dict[str, Any] = {"why": reason, "argv": daemon.argv, "log": daemon.log_path}
        res["daemons"].append(record)
        daemons.append(daemon)
        log(f"starting ({reason}) {shlex.join(daemon.argv)}")
        record["start_s"] = rounded(daemon.start(timeout=start_timeout), 2)
        record["ready"] = daemon.info
        record["nofile"] = nofile_of(daemon.pid)
        probe = Probe(daemon, opts, sink_call_id)
        record["baseline"] = probe.state()
        record["baseline_call"] = probe.call()
        if not record["baseline_call"]["ok"]:
            failures.append(f"daemon {len(daemons)}: the normal call failed before any attack")
        return probe

    def stop(index: int) -> None:
        record, daemon = res["daemons"][index], daemons[index]
        record["exit_code"] = daemon.stop()
        with contextlib.suppress(OSError):
            record["log_bytes"] = daemon.log_path.stat().st_size

    try:
        with raised_nofile(connections + 256) as own:
            res["probe_nofile"] = own
            probe = start("first")
            broken: str | None = None
            for name in attacks:
                if broken is not None:  # each attack is measured on a daemon that works
                    stop(len(daemons) - 1)
                    probe = start(broken)
                log(f"attack {name}")
                out = probe.attack(name)
                out["daemon"] = len(daemons)
                res["attacks"][name] = out
                fail, warn = failures_of(name, out)
                failures += fail
                warnings += warn
                log(f"attack {name}: {progress_line(out)}")
                broken = f"after {name}, {fail[0]}" if fail else None
                if fresh_daemon:
                    broken = broken or "--fresh-daemon"
    finally:
        sink.close()
        if daemons and "exit_code" not in res["daemons"][-1]:
            stop(len(daemons) - 1)
        if built is not None:
            shutil.rmtree(built, ignore_errors=True)
    res["failures"] = failures
    res["warnings"] = warnings
    res["ok"] = not failures
    res["wall_s"] = rounded(time.monotonic() - t_start, 1)
    return res


def summary(res: dict[str, Any]) -> dict[str, Any]:
    """Per attack: process alive, calls served, threads, descriptors, RSS, bytes logged."""
    out: dict[str, Any] = {}
    for name, a in res["attacks"].items():
        peak = a.get("peak") or {}
        out[name] = {
            "alive": not peak.get("died", True) and bool(a.get("recovered", {}).get("alive")),
            "calls_ok": all(
                a.get(k, {}).get("ok", False) for k in ("normal_call_held", "normal_call_released")
            ),
            "threads": [a.get("before", {}).get("threads"), peak.get("threads")],
            "fds": [a.get("before", {}).get("fds"), peak.get("fds")],
            "rss_kb": [a.get("before", {}).get("rss_kb"), peak.get("rss_kb")],
            "log_bytes": a.get("log_bytes"),
        }
    return out


def table(res: dict[str, Any]) -> str:
    """The Markdown table of a result file's summary: this tree beside the baseline."""
    sides = res["summary"]
    ref = (res.get("baseline") or {}).get("ref", "baseline")
    rows = []
    for name in sides["this"]:
        for side, label in (("this", "this"), ("baseline", ref)):
            row = sides.get(side, {}).get(name)
            if row is None:
                continue
            threads = " → ".join(str(n) for n in row["threads"])
            fds = " → ".join(str(n) for n in row["fds"])
            logged = f"{row['log_bytes'] / 1e3:,.1f} kB" if row["log_bytes"] is not None else "?"
            alive, served = ("yes" if row[k] else "no" for k in ("alive", "calls_ok"))
            rows.append([name, label, alive, served, threads, fds, logged])
    head = ["attack", "tree", "daemon lives", "normal calls served", "threads", "descriptors"]
    return "\n".join(markdown([*head, "logged"], rows))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=1100, help="idle connections per attack")
    p.add_argument("--pairs", type=int, default=1100, help="REGISTER/BYE pairs")
    p.add_argument("--nofile", type=int, default=1024, help="the daemon's RLIMIT_NOFILE")
    p.add_argument(
        "--attacks",
        default=",".join(DEFAULT_ATTACKS),
        help=f"comma-separated, in order, of {', '.join(ATTACKS)}",
    )
    p.add_argument("--hold", type=float, default=5.0, help="seconds each attack is held")
    p.add_argument("--churn-seconds", type=float, default=3.0, help="seconds the pairs take")
    p.add_argument("--call-timeout", type=float, default=60.0, help="deadline of a normal call")
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument(
        "--settle-timeout",
        type=float,
        default=30.0,
        help="longest wait for the daemon's descriptor count to stop growing",
    )
    p.add_argument("--recover-timeout", type=float, default=60.0)
    p.add_argument("--thread-slack", type=int, default=4, help="'near the baseline': + threads")
    p.add_argument("--fd-slack", type=int, default=8, help="'near the baseline': + descriptors")
    p.add_argument("--call-id", type=int, default=7, help="the live call of the churn")
    p.add_argument("--sink-backlog", type=int, default=1)
    p.add_argument("--text", default=NORMAL_TEXT, help="what each normal call says")
    p.add_argument("--model-dir", type=Path, default=None, help="default: a new tiny checkpoint")
    p.add_argument("--serve-arg", action="append", default=[], help="passed to the daemon")
    p.add_argument("--log-level", default="info")
    p.add_argument(
        "--fresh-daemon",
        action="store_true",
        help="a new daemon for every attack (by default only after one that failed)",
    )
    p.add_argument(
        "--baseline",
        default=BASELINE,
        help="a git ref whose daemon is probed the same way in the same run ('' for none)",
    )
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--table", type=Path, default=None, help="print a result file's table")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    ns = parse_args(argv)
    if ns.table is not None:
        print_table(ns.table, table)
        return 0
    host = host_facts()
    kwargs: dict[str, Any] = {
        "connections": ns.connections,
        "pairs": ns.pairs,
        "nofile": ns.nofile,
        "attacks": [a.strip() for a in ns.attacks.split(",") if a.strip()],
        "hold": ns.hold,
        "churn_seconds": ns.churn_seconds,
        "call_timeout": ns.call_timeout,
        "connect_timeout": ns.connect_timeout,
        "settle_timeout": ns.settle_timeout,
        "recover_timeout": ns.recover_timeout,
        "thread_slack": ns.thread_slack,
        "fd_slack": ns.fd_slack,
        "sink_call_id": ns.call_id,
        "sink_backlog": ns.sink_backlog,
        "text": ns.text,
        "model_dir": ns.model_dir,
        "serve_args": ns.serve_arg,
        "log_level": ns.log_level,
        "fresh_daemon": ns.fresh_daemon,
    }
    res = run_probe(**kwargs)
    baseline: dict[str, Any] | None = None
    if ns.baseline:
        log(f"baseline: the daemon at {ns.baseline}")
        with baseline_tree(ns.baseline) as tree:
            baseline = {"ref": ns.baseline, **run_probe(code=tree, **kwargs)}
    res = {
        "command": shlex.join(
            [sys.executable, "-m", "benchmarks.probe_exhaustion", *(argv or sys.argv[1:])]
        ),
        "host": host,
        "commit": host.get("git_commit"),
        "summary": {
            "this": summary(res),
            **({"baseline": summary(baseline)} if baseline is not None else {}),
        },
        **res,
        "baseline": baseline,
    }
    out = json.dumps(strict_json(res), indent=2)
    if ns.out is not None:
        ns.out.write_text(out + "\n", encoding="utf-8")
    print(out)
    for line in res["failures"]:
        log(f"FAIL {line}")
    for line in res["warnings"]:
        log(f"warning: {line}")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
