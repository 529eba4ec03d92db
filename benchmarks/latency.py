"""Latency, capacity, memory and barge-in benchmark of the kokoro-service daemon.

Starts ``kokoro-service serve`` as a subprocess (embedded default weights unless
``--serve-arg`` says otherwise), drives it only over the TCP protocol the way a telephony
LLM does, and measures, in one run:

* TTFA (time to first audio) for a one-sentence reply, a three-sentence reply sent as one
  TEXT frame, and the same reply streamed as LLM tokens (3-6 character pieces);
* the floor: the engine alone (in this process, same model dir and torch threads, while the
  daemon is idle) synthesizing exactly the first segment the daemon sends, alternating run
  by run with the TTFA runs so that both see the machine in the same state;
* the seed baseline: the whole reply synthesized in one ``Engine.synthesize`` call;
* per-segment and overall real-time factor (in-process and from the daemon's log);
* capacity: N concurrent calls with a simulated real-time player each (stalls);
* memory: daemon RSS before and after 500 short utterances;
* cancel: CONTROL ``cancel`` after the first audio, time to the last cancelled frame.

Prints the result JSON on stdout and writes ``benchmarks/results/<host>-<date>[-label].json``
and a PNG of TTFA and stall seconds against concurrency.  Progress goes to stderr.

    .venv/bin/python benchmarks/latency.py                      # full run, ~15 min on 2 cores
    .venv/bin/python benchmarks/latency.py --quick              # smoke test
    .venv/bin/python benchmarks/latency.py --label workers2 --serve-arg=--workers=2
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import functools
import hashlib
import json
import math
import os
import platform
import random
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from kokoro_service.client import Connection  # noqa: E402
from kokoro_service.segmenter import Segmenter, SegmenterConfig  # noqa: E402

T = TypeVar("T")
RESULTS_DIR = ROOT / "benchmarks" / "results"
SAMPLE_RATE = 24_000

TEXT_ONE = "Sure, I can help you reschedule your appointment for next Tuesday."
TEXT_THREE = (
    "Thanks for calling Acme Dental, this is Sarah. I can see your appointment on Tuesday "
    "at 3:30 PM with Doctor Patel. Would you like to keep that time, or should I find you "
    "a new slot?"
)
# Short, complete utterances for the memory soak; each must segment fully on push().
# No commas: one segment each whether or not the daemon sees it as an utterance start.
MEMORY_TEXTS = (
    "Okay.",
    "Got it thanks.",
    "One moment please.",
    "Yes that works.",
    "Thank you.",
    "Sure thing.",
    "Let me check.",
    "Goodbye.",
)
CANCEL_TEXT = " ".join([TEXT_THREE] * 3)
MARKER_TEXT = "Okay."
PHASES = ("floor", "seed", "ttfa", "memory", "capacity", "cancel")
_LISTENING = re.compile(r"listening tcp=(\S+):(\d+) udp=(\S+):(\d+)")
_KV = re.compile(r"(\w+)=(\S+)")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ stats


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, Any]:
    """n, p50, p95, min, max, mean (seconds or ratios, rounded to 0.1 ms)."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": _r(percentile(values, 50)),
        "p95": _r(percentile(values, 95)),
        "min": _r(min(values)),
        "max": _r(max(values)),
        "mean": _r(statistics.fmean(values)),
    }


def _r(x: float, nd: int = 4) -> float:
    return round(x, nd) if math.isfinite(x) else x


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
        "measured": _r(measured),
        "limit": _r(limit),
        "op": op,
        "pass": ok,
    }


# ------------------------------------------------------------------------------ contention


def _proc_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks; 0 if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return 0
    fields = raw.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


@dataclass(frozen=True)
class CpuSample:
    busy: int
    total: int
    own: int
    at: float


class CpuMeter:
    """Machine CPU use split into ours (this process + the daemon) and everyone else's,
    from /proc/stat; 2 shared cores make foreign load the main threat to these numbers."""

    def __init__(self) -> None:
        self.pids: list[int] = [os.getpid()]

    def sample(self) -> CpuSample:
        with Path("/proc/stat").open(encoding="ascii") as fh:
            vals = [int(v) for v in fh.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        total = sum(vals[:8])
        own = sum(_proc_ticks(pid) for pid in self.pids)
        return CpuSample(total - idle, total, own, time.monotonic())

    @staticmethod
    def usage(a: CpuSample, b: CpuSample) -> dict[str, float]:
        """Percent of the whole machine (all cores) used by others and by us."""
        total = max(1, b.total - a.total)
        own = b.own - a.own
        foreign = max(0, (b.busy - a.busy) - own)
        return {
            "foreign_cpu_pct": _r(100.0 * foreign / total, 1),
            "own_cpu_pct": _r(100.0 * own / total, 1),
            "seconds": _r(b.at - a.at, 1),
        }

    def wait_idle(self, max_wait: float, threshold_pct: float = 10.0) -> dict[str, float]:
        """Wait (up to ``max_wait``) until others use < ``threshold_pct`` over 2 s."""
        t0 = time.monotonic()
        last: dict[str, float] = {}
        while True:
            a = self.sample()
            time.sleep(2.0)
            last = self.usage(a, self.sample())
            if last["foreign_cpu_pct"] < threshold_pct:
                break
            if time.monotonic() - t0 >= max_wait:
                log(f"machine still busy ({last['foreign_cpu_pct']}% foreign CPU); going on")
                break
            log(f"waiting for foreign load to settle ({last['foreign_cpu_pct']}% of the CPUs)")
        return {"waited_s": _r(time.monotonic() - t0, 1), **last}


class Guard:
    """Runs one measurement and repeats it (up to ``retries`` times) when other processes
    took more than ``threshold_pct`` of the machine while it ran; counts what it threw away."""

    def __init__(self, threshold_pct: float = 25.0, retries: int = 3) -> None:
        self.meter = CpuMeter()
        self.threshold_pct = threshold_pct
        self.retries = retries
        self.discarded: dict[str, int] = {}
        self.kept_contended: dict[str, int] = {}

    def run(self, what: str, fn: Callable[[], T], retries: int | None = None) -> T:
        limit = self.retries if retries is None else retries
        attempt = 0
        while True:
            a = self.meter.sample()
            out = fn()
            foreign = self.meter.usage(a, self.meter.sample())["foreign_cpu_pct"]
            if foreign <= self.threshold_pct:
                return out
            if attempt >= limit:
                self.kept_contended[what] = self.kept_contended.get(what, 0) + 1
                return out
            attempt += 1
            self.discarded[what] = self.discarded.get(what, 0) + 1
            time.sleep(1.0)


GUARD = Guard()


# ------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class Plan:
    """How many runs of each measurement."""

    runs: int
    warmup: int
    seed_runs: int
    rtf_runs: int
    max_n: int
    repeats: int
    memory_utterances: int
    cancel_runs: int


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
        "--wait-idle",
        type=float,
        default=30.0,
        help="before each phase, wait up to this many seconds for other processes' CPU "
        "use to drop below 10%% (0 = do not wait); what others used is reported per phase",
    )
    return p.parse_args(argv)


def make_plan(ns: argparse.Namespace) -> Plan:
    quick = ns.quick
    defaults = Plan(3, 1, 2, 1, 2, 1, 20, 2) if quick else Plan(20, 3, 10, 3, 4, 3, 500, 5)

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
    )


def serve_option(args: Sequence[str], name: str) -> str | None:
    """Value of ``--name`` in serve args (``--name=v`` or ``--name v``); last one wins."""
    value: str | None = None
    for i, arg in enumerate(args):
        if arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
        elif arg == name and i + 1 < len(args):
            value = args[i + 1]
    return value


def setting(args: Sequence[str], name: str, env: str) -> str | None:
    """What the daemon will see for an option: its serve arg, else its environment variable."""
    value = serve_option(args, name)
    return value if value is not None else os.environ.get(env)


# ------------------------------------------------------------------------------ daemon


class Daemon:
    """``kokoro-service serve`` as a subprocess; its stderr is kept and parsed."""

    def __init__(self, serve_args: Sequence[str], cache_dir: Path | None, log_level: str) -> None:
        exe = ROOT / ".venv" / "bin" / "kokoro-service"
        base = (
            [str(exe)]
            if exe.exists()
            else [sys.executable, "-c", "from kokoro_service.cli import main; main()"]
        )
        self.argv = [*base, "serve", "--tcp-port", "0", "--udp-port", "0"]
        if cache_dir is not None:
            self.argv += ["--cache-dir", str(cache_dir)]
        if serve_option(serve_args, "--log-level") is None:
            self.argv += ["--log-level", log_level]
        self.argv += list(serve_args)
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self.host = "127.0.0.1"
        self.port = 0
        fd, name = tempfile.mkstemp(prefix="kokoro-bench-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        self._log_file: TextIO = self.log_path.open("w", encoding="utf-8")
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("daemon not started")
        return self.proc.pid

    def start(self, timeout: float = 180.0) -> float:
        """Start and wait for ``listening tcp=``; return seconds it took."""
        t0 = time.monotonic()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
            cwd=str(ROOT),
        )
        self._reader = threading.Thread(target=self._read, name="daemon-log", daemon=True)
        self._reader.start()
        while not self._listening.wait(0.2):
            if self.proc.poll() is not None:
                tail = "\n".join(line for _, line in self.lines[-20:])
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{tail}")
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise RuntimeError(f"daemon not listening after {timeout:.0f}s")
        return time.monotonic() - t0

    def _read(self) -> None:
        proc = self.proc
        if proc is None or proc.stderr is None:
            return
        for raw in proc.stderr:
            line = raw.rstrip("\n")
            now = time.monotonic()
            with self._lock:
                self.lines.append((now, line))
            self._log_file.write(line + "\n")
            m = _LISTENING.search(line)
            if m and not self._listening.is_set():
                self.host, self.port = m.group(1), int(m.group(2))
                self._listening.set()
        self._log_file.flush()

    def mark(self) -> int:
        with self._lock:
            return len(self.lines)

    def since(self, mark: int) -> list[str]:
        with self._lock:
            return [line for _, line in self.lines[mark:]]

    def memory_kib(self) -> dict[str, int]:
        """VmRSS and VmHWM of the daemon (KiB), from /proc/<pid>/status."""
        out: dict[str, int] = {}
        with Path(f"/proc/{self.pid}/status").open(encoding="ascii") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0])
        return out

    def stop(self) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        self._log_file.close()
        return proc.returncode


# ------------------------------------------------------------------------------ protocol


class Call:
    """One text connection used by the benchmark; arrival times are ``time.monotonic``."""

    _ids = iter(range(1, 1 << 62))
    _ids_lock = threading.Lock()

    def __init__(self, daemon: Daemon, prefix: str, timeout: float = 120.0) -> None:
        with Call._ids_lock:
            self.call_id = f"{prefix}-{os.getpid()}-{next(Call._ids)}"
        self.conn = Connection(daemon.host, daemon.port, timeout=timeout)
        self.conn.hello(self.call_id)

    @property
    def arrivals(self) -> list[float]:
        return self.conn.reply.arrivals

    @property
    def n_chunks(self) -> int:
        return len(self.conn.reply.chunks)

    def chunk_seconds(self) -> list[float]:
        return [len(c.samples) / 4 / SAMPLE_RATE for c in self.conn.reply.chunks]

    def text(self, text: str) -> float:
        """Send one TEXT frame; return the time its last byte was handed to the kernel."""
        self.conn.text(text)
        return time.monotonic()

    def wait_chunks(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.n_chunks < count:
            left = deadline - time.monotonic()
            if left <= 0 or self.conn.reply.closed:
                return False
            self.conn.read_some(min(0.05, left))
        return True

    def wait_end(self, timeout: float) -> bool:
        """Read until END (not until the daemon's close, which lingers for our close)."""
        deadline = time.monotonic() + timeout
        while not self.conn.reply.ended:
            left = deadline - time.monotonic()
            if left <= 0 or self.conn.reply.closed:
                return False
            self.conn.read_some(min(0.25, left))
        return True

    def quiet_for(self, gap: float, since: float, timeout: float) -> None:
        """Read until no frame has arrived for ``gap`` seconds (counting from ``since``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.conn.reply.closed:
            last = max([since, *self.arrivals[-1:]])
            if time.monotonic() - last >= gap:
                return
            self.conn.read_some(0.05)

    def finish(self, *, cancel: bool = False, timeout: float = 120.0) -> bool:
        """Optionally cancel, send BYE, read to END and close; True if END came."""
        try:
            if cancel:
                self.conn.control(cancel=True)
            self.conn.bye()
            return self.wait_end(timeout)
        finally:
            self.conn.close()


def token_pieces(text: str, seed: int = 7) -> list[str]:
    """``text`` cut into 3-6 character pieces, deterministically, as an LLM streams it."""
    rng = random.Random(seed)
    out: list[str] = []
    i = 0
    while i < len(text):
        n = rng.randint(3, 6)
        out.append(text[i : i + n])
        i += n
    return out


def first_segment(cfg: SegmenterConfig, pieces: Sequence[str]) -> tuple[str, int]:
    """The first segment the daemon sends for ``pieces`` and the index of the piece that
    completes it (``len(pieces)`` when only the final flush releases it)."""
    seg = Segmenter(cfg)
    for i, piece in enumerate(pieces):
        out = seg.push(piece)
        if out:
            return out[0], i
    return seg.flush()[0], len(pieces)


def all_segments(cfg: SegmenterConfig, text: str) -> list[str]:
    seg = Segmenter(cfg)
    return seg.push(text) + seg.flush()


# ------------------------------------------------------------------------------ TTFA


@dataclass
class TtfaRun:
    ttfa: float
    after_first_segment_text: float
    ok: bool


def ttfa_once(daemon: Daemon, pieces: Sequence[str], delay: float, complete_idx: int) -> TtfaRun:
    """Send ``pieces`` (one TEXT frame each), time the first AUDIO frame, then cancel + BYE
    so the next run starts with an idle daemon (END means the worker let go of the call)."""
    call = Call(daemon, "ttfa")
    sent: list[float] = []

    def sender() -> None:
        for k, piece in enumerate(pieces):
            sent.append(call.text(piece))
            if delay > 0 and k + 1 < len(pieces):
                time.sleep(delay)

    if len(pieces) == 1:
        sender()
        thread = None
    else:
        thread = threading.Thread(target=sender, name="tokens", daemon=True)
        thread.start()
    got = call.wait_chunks(1, 60.0)
    if thread is not None:
        thread.join()
    ok = call.finish(cancel=True, timeout=60.0) and got
    if not got or not sent:
        return TtfaRun(math.nan, math.nan, False)
    first = call.arrivals[0]
    done_idx = min(complete_idx, len(sent) - 1)
    return TtfaRun(first - sent[0], first - sent[done_idx], ok)


def phase_ttfa(
    daemon: Daemon,
    plan: Plan,
    cfg: SegmenterConfig,
    delay: float,
    inproc: InProcess | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """TTFA per reply shape and, with ``inproc``, the floor measured run by run between
    the TTFA runs: each floor run follows a daemon run, each TTFA run an in-process one,
    with the same pauses, so drift in the machine's speed hits both figures alike."""
    shapes: dict[str, list[str]] = {
        "one_sentence": [TEXT_ONE],
        "three_sentence_one_frame": [TEXT_THREE],
        "three_sentence_streamed": token_pieces(TEXT_THREE),
    }
    out: dict[str, Any] = {}
    floor: dict[str, Any] = {}
    for name, pieces in shapes.items():
        seg, idx = first_segment(cfg, pieces)
        mark = daemon.mark()
        runs: list[TtfaRun] = []
        floors: list[float] = []
        for k in range(plan.warmup + plan.runs):
            run = GUARD.run("ttfa", functools.partial(ttfa_once, daemon, pieces, delay, idx))
            time.sleep(0.05)
            if inproc is not None:
                wall = GUARD.run("in_process", functools.partial(inproc.synth, seg))[0]
                time.sleep(0.05)
                if k >= plan.warmup:
                    floors.append(wall)
            if k >= plan.warmup:
                runs.append(run)
        good = [r for r in runs if r.ok and math.isfinite(r.ttfa)]
        out[name] = {
            "first_segment": seg,
            "frames_sent": len(pieces),
            "ttfa_s": summary([r.ttfa for r in good]),
            "failed_runs": len(runs) - len(good),
        }
        if inproc is not None:
            floor[name] = {
                "first_segment": seg,
                "synth_s": summary(floors),
                "method": "in this process, alternating run by run with the TTFA runs",
            }
        time.sleep(0.2)  # let the last debug lines arrive
        firsts = parse_daemon_log(daemon.since(mark)).get("first_segment_synth_list", [])
        if firsts:
            out[name]["daemon_first_segment_synth_s"] = summary(firsts[plan.warmup :])
        if len(pieces) > 1:
            out[name]["piece_completing_first_segment"] = idx
            out[name]["ttfa_from_that_piece_s"] = summary(
                [r.after_first_segment_text for r in good]
            )
        got = f"ttfa {name}: p50 {out[name]['ttfa_s'].get('p50')} s"
        if name in floor:
            got += f", floor ({seg!r}) p50 {floor[name]['synth_s'].get('p50')} s"
        log(got)
    return out, (floor if inproc is not None else None)


# ------------------------------------------------------------------------------ in-process


class InProcess:
    """The engine alone, built exactly as the daemon builds it."""

    def __init__(self, serve_args: Sequence[str], cache_dir: Path) -> None:
        from kokoro_service.engine import (
            Engine,
            probe_devices,
            resolve_source,
            select_device,
        )
        from kokoro_service.server import choose_voice

        model_dir = setting(serve_args, "--model-dir", "KOKORO_MODEL_DIR")
        threads = setting(serve_args, "--torch-threads", "KOKORO_TORCH_THREADS")
        self.lang = setting(serve_args, "--lang", "KOKORO_LANG") or "a"
        self.speed = float(setting(serve_args, "--speed", "KOKORO_SPEED") or 1.0)
        cuda, mps = probe_devices()
        device = select_device(
            setting(serve_args, "--device", "KOKORO_DEVICE") or "auto",
            cuda_available=cuda,
            mps_available=mps,
        )
        source = resolve_source(Path(model_dir) if model_dir else None, cache_dir)
        self.engine = Engine(
            source,
            device=device,
            default_lang=self.lang,
            torch_threads=int(threads) if threads else None,
        )
        self.voice = choose_voice(self.engine, setting(serve_args, "--voice", "KOKORO_VOICE"))
        self.engine.warm_up(self.voice, self.lang)
        self.description = source.description
        self.device = device

    def synth(self, text: str) -> tuple[float, float, int]:
        """(wall seconds, audio seconds, samples) of one ``Engine.synthesize`` call."""
        t0 = time.perf_counter()
        res = self.engine.synthesize(text, voice=self.voice, lang=self.lang, speed=self.speed)
        wall = time.perf_counter() - t0
        n = 0 if res.audio is None else len(res.audio)
        return wall, n / SAMPLE_RATE, n

    def timed(self, text: str, warmup: int, runs: int) -> list[float]:
        times: list[float] = []
        for _ in range(warmup):
            self.synth(text)
        for _ in range(runs):
            times.append(GUARD.run("in_process", lambda: self.synth(text))[0])
        return times


def phase_floor(
    inproc: InProcess, plan: Plan, cfg: SegmenterConfig, *, per_shape: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-segment RTF of the engine alone and, with ``per_shape``, the floor per reply
    shape in a block of its own (used when the TTFA phase, which interleaves it, is off)."""
    firsts = {
        "one_sentence": first_segment(cfg, [TEXT_ONE])[0],
        "three_sentence_one_frame": first_segment(cfg, [TEXT_THREE])[0],
        "three_sentence_streamed": first_segment(cfg, token_pieces(TEXT_THREE))[0],
    }
    cache: dict[str, list[float]] = {}
    floor: dict[str, Any] = {}
    for name, seg in firsts.items() if per_shape else ():
        if seg not in cache:
            cache[seg] = inproc.timed(seg, plan.warmup, plan.runs)
        floor[name] = {"first_segment": seg, "synth_s": summary(cache[seg])}
        log(f"floor {name} ({seg!r}): p50 {floor[name]['synth_s']['p50']} s")

    per_segment: list[dict[str, Any]] = []
    for reply, text in (("one_sentence", TEXT_ONE), ("three_sentence", TEXT_THREE)):
        for seg in all_segments(cfg, text):
            walls: list[float] = []
            audio = 0.0
            for _ in range(plan.rtf_runs):
                wall, audio, _ = GUARD.run("in_process", functools.partial(inproc.synth, seg))
                walls.append(wall)
            synth = statistics.median(walls)
            per_segment.append(
                {
                    "reply": reply,
                    "segment": seg,
                    "synth_s": _r(synth),
                    "audio_s": _r(audio),
                    "rtf": _r(synth / audio) if audio else math.nan,
                }
            )
    rtfs = [s["rtf"] for s in per_segment if math.isfinite(s["rtf"])]
    three = [s for s in per_segment if s["reply"] == "three_sentence"]
    three_synth = [s["synth_s"] for s in three]
    stream_rtf = sum(three_synth) / max(1e-9, sum(s["audio_s"] for s in three))
    overall = sum(s["synth_s"] for s in per_segment) / max(
        1e-9, sum(s["audio_s"] for s in per_segment)
    )
    rtf = {
        "segments": per_segment,
        "per_segment_rtf": summary(rtfs),
        "overall_rtf": _r(overall),
        "stream_rtf_three_sentence": _r(stream_rtf),
        "typical_segment_synth_s": _r(statistics.median(three_synth)),
        "longest_segment_synth_s": _r(max(three_synth)),
    }
    log(f"in-process rtf: overall {rtf['overall_rtf']}, stream {rtf['stream_rtf_three_sentence']}")
    return floor, rtf


def phase_seed(inproc: InProcess, plan: Plan) -> dict[str, Any]:
    times = inproc.timed(TEXT_THREE, 1, plan.seed_runs)
    out: dict[str, Any] = {
        "what": "whole three-sentence reply in one Engine.synthesize call (the seed's way)",
        "synth_s": summary(times),
    }
    log(f"seed baseline p50 {out['synth_s']['p50']} s")
    return out


# ------------------------------------------------------------------------------ capacity


@dataclass
class Playback:
    ttfa: float
    stalls: int
    stall_s: float
    max_stall_s: float
    audio_s: float
    ended: bool


def playback(sent: float, arrivals: Sequence[float], seconds: Sequence[float]) -> Playback:
    """A real-time player that starts at the first frame; a frame arriving after the player
    ran dry is a stall, and the player resumes when it arrives."""
    if not arrivals:
        return Playback(math.nan, 0, 0.0, 0.0, 0.0, False)
    start = arrivals[0]
    played = seconds[0]
    stalls, stall_s, worst = 0, 0.0, 0.0
    for arrival, dur in zip(arrivals[1:], seconds[1:], strict=True):
        dry_at = start + played + stall_s
        if arrival > dry_at:
            stalls += 1
            stall_s += arrival - dry_at
            worst = max(worst, arrival - dry_at)
        played += dur
    return Playback(arrivals[0] - sent, stalls, stall_s, worst, sum(seconds), True)


def capacity_round(daemon: Daemon, n: int) -> list[Playback]:
    barrier = threading.Barrier(n)
    results: list[Playback | None] = [None] * n

    def one(i: int) -> None:
        try:
            call = Call(daemon, f"cap{n}")
        except OSError:
            barrier.abort()
            raise
        barrier.wait()
        sent = call.text(TEXT_THREE)
        ended = call.finish(timeout=300.0)
        pb = playback(sent, call.arrivals, call.chunk_seconds())
        pb.ended = ended
        results[i] = pb

    threads = [threading.Thread(target=one, args=(i,), name=f"call{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r if r is not None else Playback(math.nan, 0, 0.0, 0.0, 0.0, False) for r in results]


def phase_capacity(daemon: Daemon, plan: Plan) -> dict[str, Any]:
    per_n: list[dict[str, Any]] = []
    for n in range(1, plan.max_n + 1):
        pbs: list[Playback] = []
        for _ in range(plan.repeats):
            pbs += GUARD.run("capacity", functools.partial(capacity_round, daemon, n), retries=1)
            time.sleep(0.1)
        ttfas = [p.ttfa for p in pbs if math.isfinite(p.ttfa)]
        row: dict[str, Any] = {
            "n": n,
            "calls": len(pbs),
            "ttfa_s": summary(ttfas),
            "stall_count": sum(p.stalls for p in pbs),
            "stall_s": _r(sum(p.stall_s for p in pbs)),
            "stall_s_per_call": _r(sum(p.stall_s for p in pbs) / max(1, len(pbs))),
            "max_single_stall_s": _r(max((p.max_stall_s for p in pbs), default=0.0)),
            "audio_s_per_call": _r(statistics.fmean(p.audio_s for p in pbs)),
            "calls_without_end": sum(not p.ended for p in pbs),
        }
        per_n.append(row)
        log(
            f"capacity N={n}: ttfa p50 {row['ttfa_s'].get('p50')} p95 {row['ttfa_s'].get('p95')}"
            f" stalls {row['stall_count']} ({row['stall_s']} s)"
        )
    zero = [r["n"] for r in per_n if r["stall_count"] == 0 and r["calls_without_end"] == 0]
    largest = 0
    for r in per_n:  # largest N such that every N up to it ran clean
        if r["n"] in zero:
            largest = r["n"]
        else:
            break
    return {
        "text": "three-sentence reply, one TEXT frame, then BYE; all N calls at once",
        "per_n": per_n,
        "largest_n_zero_stalls": largest,
    }


# ------------------------------------------------------------------------------ memory


def phase_memory(daemon: Daemon, plan: Plan, cfg: SegmenterConfig) -> dict[str, Any]:
    expected: dict[str, int] = {}
    for text in MEMORY_TEXTS:
        counts = set()
        for first in (True, False):
            seg = Segmenter(cfg)
            if not first:
                seg.push("Hello there. ")
            pushed = seg.push(text)
            if seg.flush():
                raise RuntimeError(f"memory text {text!r} does not segment on push alone")
            counts.add(len(pushed))
        if len(counts) != 1:
            raise RuntimeError(f"memory text {text!r} segments differently mid-utterance")
        expected[text] = counts.pop()
    per_call = 50
    before = daemon.memory_kib()
    samples: list[dict[str, int]] = [{"utterances": 0, **before}]
    done = timeouts = 0
    t0 = time.monotonic()
    while done < plan.memory_utterances:
        call = Call(daemon, "mem")
        want = 0
        for _ in range(min(per_call, plan.memory_utterances - done)):
            text = MEMORY_TEXTS[done % len(MEMORY_TEXTS)]
            want += expected[text]
            call.text(text)
            if not call.wait_chunks(want, 30.0):
                timeouts += 1
                want = call.n_chunks
            done += 1
            if done % 50 == 0:
                samples.append({"utterances": done, **daemon.memory_kib()})
        call.finish(timeout=60.0)
    time.sleep(0.5)
    after = daemon.memory_kib()
    half = min(samples, key=lambda s: abs(s["utterances"] - plan.memory_utterances // 2))
    out: dict[str, Any] = {
        "utterances": done,
        "texts": list(MEMORY_TEXTS),
        "seconds": _r(time.monotonic() - t0, 1),
        "kib_before": before,
        "kib_after": after,
        "rss_growth_pct": _r(100.0 * (after["VmRSS"] - before["VmRSS"]) / before["VmRSS"], 2),
        "hwm_growth_pct": _r(100.0 * (after["VmHWM"] - before["VmHWM"]) / before["VmHWM"], 2),
        "rss_growth_second_half_pct": _r(
            100.0 * (after["VmRSS"] - half["VmRSS"]) / half["VmRSS"], 2
        ),
        "samples": samples,
        "wait_timeouts": timeouts,
    }
    log(f"memory: RSS {before['VmRSS']} -> {after['VmRSS']} KiB ({out['rss_growth_pct']}%)")
    return out


# ------------------------------------------------------------------------------ cancel


def cancel_once(daemon: Daemon, marker_samples: int | None) -> dict[str, Any] | None:
    call = Call(daemon, "cancel")
    sent = call.text(CANCEL_TEXT)
    if not call.wait_chunks(1, 60.0):
        call.finish(timeout=60.0)
        return None
    first = call.arrivals[0]
    call.conn.control(cancel=True)
    t_cancel = time.monotonic()
    before = sum(1 for a in call.arrivals if a <= t_cancel)
    call.quiet_for(2.0, t_cancel, 30.0)
    n_cancelled = call.n_chunks
    last = call.arrivals[-1]
    t_marker = call.text(MARKER_TEXT)
    call.wait_chunks(n_cancelled + 1, 30.0)
    marker_first = call.arrivals[n_cancelled] if call.n_chunks > n_cancelled else math.nan
    ended = call.finish(timeout=60.0)
    marker_len = [len(c.samples) // 4 for c in call.conn.reply.chunks[n_cancelled:]]
    return {
        "ttfa_s": _r(first - sent),
        "frames_before_cancel": before,
        "frames_after_cancel": n_cancelled - before,
        "cancel_to_last_frame_s": _r(max(0.0, last - t_cancel)),
        "marker_ttfa_s": _r(marker_first - t_marker),
        "marker_frames": len(marker_len),
        "marker_samples_match": (
            None if marker_samples is None else sum(marker_len) == marker_samples
        ),
        "ended": ended,
    }


def phase_cancel(daemon: Daemon, plan: Plan, marker_samples: int | None) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    failed = 0
    for k in range(1 + plan.cancel_runs):
        run = GUARD.run("cancel", lambda: cancel_once(daemon, marker_samples))
        if run is None:
            failed += 1
        elif k >= 1:
            runs.append(run)
        time.sleep(0.05)
    lat = [r["cancel_to_last_frame_s"] for r in runs]
    marker = [r["marker_ttfa_s"] for r in runs if math.isfinite(r["marker_ttfa_s"])]
    out: dict[str, Any] = {
        "method": "cancel after the first AUDIO frame; wait until 2 s without frames; "
        "the last frame before that gap is the cancelled reply's last; then a marker "
        "TEXT must still be spoken",
        "cancel_to_last_frame_s": summary(lat),
        "frames_after_cancel_max": max((r["frames_after_cancel"] for r in runs), default=0),
        "marker_spoken_every_run": all(r["marker_frames"] >= 1 for r in runs),
        "marker_ttfa_after_gap_s": summary(marker),
        "failed_runs": failed,
        "runs": runs,
    }
    log(f"cancel: p50 {out['cancel_to_last_frame_s'].get('p50')} s")
    return out


# ------------------------------------------------------------------------------ daemon log


def log_summary(lines: Sequence[str]) -> dict[str, Any]:
    out = parse_daemon_log(lines)
    out.pop("first_segment_synth_list", None)
    return out


def parse_daemon_log(lines: Sequence[str]) -> dict[str, Any]:
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
        out["overall_rtf"] = _r(synth / audio) if audio else math.nan
    if seg:
        rtfs = [s["synth_s"] / s["audio_s"] for s in seg if s.get("audio_s") and "synth_s" in s]
        out["per_segment_rtf"] = summary(rtfs)
        firsts = [x for x in first_seg if math.isfinite(x)]
        out["first_segment_synth_s"] = summary(firsts)
        out["first_segment_synth_list"] = firsts
    return out


# ------------------------------------------------------------------------------ metadata


def cpu_model() -> str:
    """The CPU's model name ("" where /proc/cpuinfo does not say): hosts of one name have
    differed by 2x in synthesis speed, so every result file records it."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def metadata(ns: argparse.Namespace, plan: Plan, daemon: Daemon | None) -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
        except OSError:
            return ""

    src = hashlib.sha256()
    for path in sorted((ROOT / "kokoro_service").glob("*.py")):
        src.update(path.name.encode() + b"\0" + path.read_bytes())
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
        "cpu_count": os.cpu_count(),
        "timestamp": _dt.datetime.now().isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------ targets


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


# ------------------------------------------------------------------------------ main


def run(ns: argparse.Namespace) -> dict[str, Any]:
    plan = make_plan(ns)
    GUARD.retries = max(0, ns.retries)
    phases = [p.strip() for p in ns.only.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise SystemExit(f"unknown phase(s) {', '.join(unknown)}; choose from {', '.join(PHASES)}")
    serve_args: list[str] = list(ns.serve_arg)
    from kokoro_service.config import default_cache_dir

    cache_dir: Path = ns.cache_dir or default_cache_dir()
    seg_chars = setting(serve_args, "--max-segment-chars", "KOKORO_MAX_SEGMENT_CHARS")
    first_words = setting(serve_args, "--first-segment-words", "KOKORO_FIRST_SEGMENT_WORDS")
    cfg = SegmenterConfig()
    if seg_chars or first_words:
        chars = int(seg_chars) if seg_chars else cfg.max_chars
        cfg = SegmenterConfig(
            max_chars=chars,
            first_max_words=int(first_words) if first_words else cfg.first_max_words,
            max_word_chars=min(80, chars),
        )
    res: dict[str, Any] = {"serve_args": serve_args, "phases": phases}
    daemon = Daemon(serve_args, ns.cache_dir, ns.daemon_log_level)
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
        res["daemon_start_s"] = _r(daemon.start(), 2)
        meter.pids.append(daemon.pid)
        log(f"daemon listening on {daemon.host}:{daemon.port} (pid {daemon.pid})")
        for _ in range(2):  # the daemon warms itself up; these warm the socket path too
            ttfa_once(daemon, [TEXT_ONE], 0.0, 0)
        time.sleep(0.5)
        res["memory_start_kib"] = daemon.memory_kib()

        rtf: dict[str, Any] = {}
        marker_samples: int | None = None
        interleaved: InProcess | None = None  # the floor, measured between TTFA runs
        if {"floor", "seed", "cancel"} & set(phases):
            log("in-process engine (daemon idle)")
            inproc = InProcess(serve_args, cache_dir)
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
        rtf["daemon_log"] = log_summary(daemon.since(0))
        res["rtf"] = rtf
        res["memory_end_kib"] = daemon.memory_kib()
    finally:
        res["daemon_exit_code"] = daemon.stop()
        res["wall_s"] = _r(time.monotonic() - t_start, 1)
    warnings = [ln for ln in daemon.since(0) if " WARNING " in ln or " ERROR " in ln]
    res["daemon_warnings"] = warnings[:50]
    res["meta"] = metadata(ns, plan, daemon)
    res["discarded_contended_runs"] = dict(GUARD.discarded)
    res["kept_contended_runs"] = dict(GUARD.kept_contended)
    res["contended_phases"] = [name for name, c in contention.items() if c["foreign_cpu_pct"] > 10]
    res["split"] = split_ttfa(res)
    res["targets"] = evaluate(res)
    return res


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
            "ttfa_over_floor": _r(ttfa / floor),
            "ttfa_minus_floor_s": _r(ttfa - floor),
        }
        in_daemon = ttfa_rec.get("daemon_first_segment_synth_s", {}).get("p50")
        if in_daemon is not None:
            row["daemon_synth_p50_s"] = in_daemon
            row["daemon_synth_minus_floor_s"] = _r(in_daemon - floor)
            row["ttfa_minus_daemon_synth_s"] = _r(ttfa - in_daemon)
        pace = ttfa_rec.get("ttfa_from_that_piece_s", {}).get("p50")
        if pace is not None:
            row["token_pacing_s"] = _r(ttfa - pace)
        out[shape] = row
    return out


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


def compare(paths: Sequence[Path]) -> str:
    """A markdown table of the main figures of several result files, side by side."""
    results = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    names = [
        r.get("meta", {}).get("label") or " ".join(r.get("serve_args", [])) or "default"
        for r in results
    ]
    lines = ["| figure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        if isinstance(v, int) and v > 10_000:
            return f"{v / 1024:.0f}"
        if isinstance(v, list):
            return ",".join(map(str, v)) or "-"
        return "-" if v is None else str(v)

    rows = list(COMPARE_ROWS)
    max_n = max((len(_dig(r, "capacity.per_n") or []) for r in results), default=0)
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


def main(argv: Sequence[str] | None = None) -> int:
    ns = parse_args(argv)
    # Stop the daemon on SIGTERM/SIGINT too (a background shell may have ignored SIGINT).
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    if ns.compare:
        print(compare(ns.compare))
        return 0
    res = run(ns)
    host = socket.gethostname().split(".")[0]
    stem = f"{host}-{_dt.date.today().isoformat()}" + (f"-{ns.label}" if ns.label else "")
    ns.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = ns.results_dir / f"{stem}.json"
    png_path = ns.results_dir / f"{stem}.png"
    res["meta"]["result_files"] = [str(json_path), str(png_path)]
    if not ns.no_plot:
        problem = plot(res, png_path)
        if problem:
            res["meta"]["plot"] = problem
    text = json.dumps(_clean(res), indent=2, default=_json_default, allow_nan=False)
    json_path.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _json_default(obj: object) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


if __name__ == "__main__":
    sys.exit(main())
