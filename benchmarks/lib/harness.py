"""What every benchmark stands on: the daemon as a subprocess, the engine in this process,
the machine (CPU facts, other processes' load) and the statistics.

The daemon is started with ``--ready-file`` and is ready when that file appears; its log
is kept only as a measurement (per-segment synthesis times, warnings), never read for
readiness.  The in-process engine is loaded by the product's own loader from the same
settings the daemon parses, so the two cannot drift apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
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

from kokoro_service.config import Settings
from kokoro_service.errors import ConfigError
from kokoro_service.wire.codec import SAMPLE_RATE

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]  # the repository
RESULTS_DIR = ROOT / "benchmarks" / "results"


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


def rounded(x: float, nd: int = 4) -> float:
    return round(x, nd) if math.isfinite(x) else x


def summary(values: Sequence[float]) -> dict[str, Any]:
    """n, p50, p95, min, max, mean (seconds or ratios, rounded to 0.1 ms)."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": rounded(percentile(values, 50)),
        "p95": rounded(percentile(values, 95)),
        "min": rounded(min(values)),
        "max": rounded(max(values)),
        "mean": rounded(statistics.fmean(values)),
    }


# ------------------------------------------------------------------------------ the machine


def print_table(path: Path, table: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """``--table RESULT.json``: print the README table that ``table`` makes of a result."""
    saved: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    print(table(saved))
    return saved


def strict_json(obj: Any) -> Any:
    """``obj`` with NaN and infinity as null and paths as strings: results are strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def host_facts() -> dict[str, Any]:
    """What a result must record of the machine and the tree: results compare across
    hosts only as ratios, and a dirty tree is not the commit it names."""
    try:
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.splitlines()
    except OSError:
        dirty = []
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "git_commit": git_commit(),
        "git_dirty_files": [ln for ln in dirty if ln],
        "timestamp": _dt.datetime.now().isoformat(timespec="seconds"),
    }


def cpu_model() -> str:
    """The CPU's model name ("" where /proc/cpuinfo does not say): hosts of one name have
    differed by 2x in synthesis speed, so every result file records it."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


# The instruction sets that decide how fast the model's kernels run: an AVX2-only host and
# an AVX-512/bf16 one of the same name differ by 2.5x.
_SPEED_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def cpu_flags() -> list[str]:
    """The speed-relevant CPU flags this host has, from /proc/cpuinfo."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in _SPEED_FLAGS if f in have]
    return []


def git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    return None


def proc_ticks(pid: int) -> int:
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
        own = sum(proc_ticks(pid) for pid in self.pids)
        return CpuSample(total - idle, total, own, time.monotonic())

    @staticmethod
    def usage(a: CpuSample, b: CpuSample) -> dict[str, float]:
        """Percent of the whole machine (all cores) used by others and by us."""
        total = max(1, b.total - a.total)
        own = b.own - a.own
        foreign = max(0, (b.busy - a.busy) - own)
        return {
            "foreign_cpu_pct": rounded(100.0 * foreign / total, 1),
            "own_cpu_pct": rounded(100.0 * own / total, 1),
            "seconds": rounded(b.at - a.at, 1),
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
        return {"waited_s": rounded(time.monotonic() - t0, 1), **last}


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


# ------------------------------------------------------------------------------ settings


def serve_settings(args: Sequence[str]) -> Settings:
    """The :class:`Settings` that ``kokoro-service serve ARGS`` will run with, parsed by the
    ``serve`` command itself (its options, their ``KOKORO_*`` variables, last one wins)."""
    import click

    from kokoro_service.cli import serve, settings_from_options

    try:
        ctx = serve.make_context("serve", list(args))
        return settings_from_options(**ctx.params)
    except ConfigError as exc:
        raise SystemExit(f"serve argument {exc.setting}: {exc}") from None
    except click.ClickException as exc:
        raise SystemExit(f"serve arguments {list(args)}: {exc.format_message()}") from None


# ------------------------------------------------------------------------------ the daemon


class Daemon:
    """``kokoro-service serve`` as a subprocess, on ephemeral ports.

    Ready means its ready file exists: the daemon writes it (JSON: pid, ports, device,
    voice, measured RTF) once warm and listening.  Its stderr is recorded in ``lines`` for
    the measurements that only the debug log carries, and for the result's warnings.
    """

    def __init__(
        self,
        serve_args: Sequence[str],
        cache_dir: Path | None,
        log_level: str,
        workdir: Path | None = None,
        *,
        admission: bool = False,
        launcher: Sequence[str] | None = None,
    ) -> None:
        """``workdir`` holds the ready file and the kept log (default: a new temp dir);
        ``launcher`` replaces ``kokoro-service`` (before ``serve``'s arguments), as the
        simulated device's ``python -m benchmarks.lib.simulated_daemon`` does.

        Without ``admission`` the daemon runs with ``--max-calls 0``: the benchmarks
        measure what the host does at every load, past its capacity too, rather than
        how it refuses calls (``admission.py`` measures that, with ``admission=True``).
        """
        exe = ROOT / ".venv" / "bin" / "kokoro-service"
        base = (
            [str(exe)]
            if exe.exists()
            else [sys.executable, "-c", "from kokoro_service.cli import main; main()"]
        )
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="kokoro-bench-"))
        self.ready_file = self.dir / "ready.json"
        # The harness's choices first, so the caller's serve args override them; the
        # ready file last, since the harness waits for that one.
        args = ["--tcp-port", "0", "--udp-port", "0", "--log-level", log_level]
        if not admission:
            args += ["--max-calls", "0"]
        if cache_dir is not None:
            args += ["--cache-dir", str(cache_dir)]
        args += [*serve_args, "--ready-file", str(self.ready_file)]
        self.settings = serve_settings(args)  # bad arguments fail here, before the start
        self.argv = [*launcher, *args] if launcher else [*base, "serve", *args]
        self.info: dict[str, Any] = {}
        self.host = "127.0.0.1"
        self.port = 0
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self.log_path = self.dir / "daemon.log"
        self._log_file: TextIO = self.log_path.open("w", encoding="utf-8")
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("daemon not started")
        return self.proc.pid

    def start(self, timeout: float = 180.0) -> float:
        """Start and wait for the ready file; return the seconds it took."""
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            cwd=str(ROOT),
        )
        self._reader = threading.Thread(target=self._read, name="daemon-log", daemon=True)
        self._reader.start()
        while (info := self._ready_info()) is None:
            if self.proc.poll() is not None:
                self._reader.join(5)
                tail = "\n".join(line for _, line in self.lines[-20:])
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{tail}")
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise RuntimeError(f"daemon not ready after {timeout:.0f}s")
            time.sleep(0.05)
        if info.get("pid") != self.proc.pid:
            self.stop()
            raise RuntimeError(f"ready file {self.ready_file} names pid {info.get('pid')}")
        self.info = info
        self.host, self.port = str(info["tcp"]["host"]), int(info["tcp"]["port"])
        return time.monotonic() - t0

    def _ready_info(self) -> dict[str, Any] | None:
        try:  # written atomically (rename), so a file that exists is whole
            info = json.loads(self.ready_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return info if isinstance(info, dict) else None

    # -- the log: a measurement source (per-segment synth_s), never readiness --------

    def _read(self) -> None:
        proc = self.proc
        if proc is None or proc.stderr is None:
            return
        for raw in proc.stderr:
            line = raw.rstrip("\n")
            with self._lock:
                self.lines.append((time.monotonic(), line))
            self._log_file.write(line + "\n")
        self._log_file.flush()

    def mark(self) -> int:
        with self._lock:
            return len(self.lines)

    def since(self, mark: int) -> list[str]:
        with self._lock:
            return [line for _, line in self.lines[mark:]]

    # ------------------------------------------------------------------------------

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
        """SIGTERM (the daemon drains and removes its ready file); the exit code."""
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
        if self.ready_file.exists():  # the log, which the result names, stays
            log(f"the daemon left its ready file {self.ready_file} behind")
            self.ready_file.unlink()
        return proc.returncode


# ------------------------------------------------------------------------------ in-process


class InProcess:
    """The engine alone, loaded by the daemon's own loader from the daemon's settings.

    It is loaded, warmed up and used on the calling thread (the harness's main thread),
    so, like one of the daemon's workers, the synthesizing thread owns the process's only
    OpenMP team.
    """

    def __init__(self, settings: Settings) -> None:
        from kokoro_service.daemon import load_engine

        loaded = load_engine(dataclasses.replace(settings, warmup=True))
        self.engine = loaded.engine
        self.voice = loaded.voice
        self.lang = settings.lang
        self.speed = settings.speed
        self.description = loaded.engine.source.description
        self.device = loaded.engine.device

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
