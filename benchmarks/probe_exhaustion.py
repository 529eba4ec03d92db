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
import asyncio
import contextlib
import errno
import json
import re
import resource
import selectors
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.lib.harness import ROOT, Daemon, host_facts, log, rounded, strict_json
from benchmarks.lib.tables import markdown
from benchmarks.lib.wyoming_peer import describe
from kokoro_service.wire.client import Connection
from kokoro_service.wire.codec import (
    encode_keepalive,
    encode_register,
    encode_unregister,
)

ATTACKS = ("http", "wyoming", "churn", "text")
DEFAULT_ATTACKS = ("http", "wyoming", "churn")
# Runs the daemon's command under RLIMIT_NOFILE = argv[1] (soft and hard); exec keeps the
# pid, so the ready file names the process this probe watches.
_WITH_NOFILE = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
)
# Runs the daemon from the tree named by argv[1]: ahead of the editable install on sys.path.
_FROM_TREE = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); from kokoro_service.cli import main; main()"
)
# The last commit before the daemon's peer limits: the baseline this probe compares with.
BASELINE = "9cb8209"
_LOG_SAMPLE = 5
# How the daemon's log says it ran out of descriptors (asyncio, our own lines, OSError).
_EMFILE = ("Too many open files", "EMFILE", "Errno 24")
_LOUD = (" WARNING ", " ERROR ", " CRITICAL ", "Traceback", *_EMFILE)
_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")
NORMAL_TEXT = "Thanks for calling."


# ------------------------------------------------------------------------------ /proc


def proc_state(proc: subprocess.Popen[str] | None, pid: int) -> dict[str, Any]:
    """Threads, open descriptors, VmRSS (KiB) and whether the daemon still runs."""
    gone: dict[str, Any] = {"threads": None, "fds": None, "rss_kb": None, "alive": False}
    if proc is None or proc.poll() is not None:
        return gone
    out = dict(gone)
    state = ""
    try:
        with Path(f"/proc/{pid}/status").open(encoding="ascii") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key == "State":
                    state = rest.strip()[:1]
                elif key == "Threads":
                    out["threads"] = int(rest.split()[0])
                elif key == "VmRSS":
                    out["rss_kb"] = int(rest.split()[0])
        out["fds"] = sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    except (OSError, ValueError):  # gone between the poll and the read
        return gone
    if state in ("Z", "X") or out["rss_kb"] is None:  # exiting: not yet reaped
        return gone
    out["alive"] = proc.poll() is None
    return out


def nofile_of(pid: int) -> list[int | str] | None:
    """The process's own RLIMIT_NOFILE (soft, hard), as /proc/<pid>/limits gives it."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/limits").read_text(encoding="ascii").splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return [int(v) if v.isdigit() else v for v in (soft, hard)]
    return None


class PeakSampler:
    """Polls the daemon's /proc every ``interval`` s in a thread; the largest values seen."""

    def __init__(self, state: Callable[[], dict[str, Any]], interval: float = 0.1) -> None:
        self._state = state
        self._interval = interval
        self.peak: dict[str, Any] = {"threads": 0, "fds": 0, "rss_kb": 0, "died": False}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._take()
            self._stop.wait(self._interval)

    def _take(self) -> None:
        now = self._state()
        if not now["alive"]:
            self.peak["died"] = True
            return
        for key in ("threads", "fds", "rss_kb"):
            if now[key] is not None:
                self.peak[key] = max(self.peak[key], now[key])

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._take()


# ------------------------------------------------------------------------------ the peers


class IdleConnections:
    """Many TCP connections that never send a byte, opened together (non-blocking
    connects, waited for with epoll) and held until :meth:`close`."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.socks: list[socket.socket] = []
        self.errors: dict[str, int] = {}

    def _error(self, code: int) -> None:
        name = errno.errorcode.get(code, str(code))
        self.errors[name] = self.errors.get(name, 0) + 1

    def open(self, n: int, timeout: float, batch: int = 50, pause: float = 0.05) -> dict[str, Any]:
        """Connect ``n``, ``batch`` at a time ``pause`` s apart (a burst larger than the
        daemon's listen backlog would only be queued by SYN retransmits, seconds later);
        those not established within ``timeout`` s are given up."""
        t0 = time.monotonic()
        sel = selectors.DefaultSelector()
        pending = 0

        def settle(until: float) -> None:
            nonlocal pending
            while pending and time.monotonic() < until:
                for key, _ in sel.select(timeout=max(0.0, until - time.monotonic())):
                    sock = key.data
                    sel.unregister(sock)
                    pending -= 1
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code == 0:
                        self.socks.append(sock)
                    else:
                        self._error(code)
                        sock.close()

        try:
            for i in range(n):
                try:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                except OSError as exc:  # the probe's own limit: counted, not fatal
                    self._error(exc.errno or 0)
                    break
                sock.setblocking(False)
                code = sock.connect_ex((self.host, self.port))
                if code == 0:
                    self.socks.append(sock)
                elif code in (errno.EINPROGRESS, errno.EAGAIN):
                    sel.register(sock, selectors.EVENT_WRITE, data=sock)
                    pending += 1
                else:
                    self._error(code)
                    sock.close()
                if (i + 1) % batch == 0:
                    settle(time.monotonic() + pause)
                    time.sleep(max(0.0, t0 + (i + 1) / batch * pause - time.monotonic()))
            settle(t0 + max(timeout, n / batch * pause + 1.0))
            for key in list(sel.get_map().values()):
                sock = key.data
                sel.unregister(sock)
                sock.close()
                self._error(errno.ETIMEDOUT)
        finally:
            sel.close()
        return {
            "asked": n,
            "established": len(self.socks),
            "errors": dict(self.errors),
            "open_s": rounded(time.monotonic() - t0, 2),
        }

    def still_open(self) -> int:
        """How many the daemon has not closed (a peek that would block means open)."""
        n = 0
        for sock in self.socks:
            try:
                data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                n += 1
                continue
            except OSError:
                continue
            n += bool(data)  # bytes unread count as open; b"" is the daemon's close
        return n

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.socks.clear()


class LiveCall:
    """A call held open on the text port: HELLO, then KEEPALIVE every second."""

    def __init__(self, host: str, port: int, call_id: str, timeout: float) -> None:
        self.conn = Connection(host, port, timeout=timeout)
        self.call_id = call_id
        self.keepalive_error: str | None = None
        self._stop = threading.Event()
        self.conn.hello(call_id)
        self._thread = threading.Thread(target=self._keepalive, name="keepalive", daemon=True)
        self._thread.start()

    def _keepalive(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.conn.send_raw(encode_keepalive())
            except OSError as exc:
                self.keepalive_error = f"{type(exc).__name__}: {exc}"
                return

    def finish(self, text: str, timeout: float) -> dict[str, Any]:
        """Stop the keepalives, then TEXT and BYE: does the call still get its audio?"""
        self._stop.set()
        self._thread.join(5)
        t0 = time.monotonic()
        try:
            self.conn.text(text)
            self.conn.bye()
            reply = self.conn.read_until_end(timeout)
        except Exception as exc:  # a reset, or bytes that are not the protocol
            return _reply_result([], [], False, t0, f"{type(exc).__name__}: {exc}")
        finally:
            self.conn.close()
        return _reply_result(reply.chunks, reply.arrivals, reply.ended, t0, self.keepalive_error)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.conn.close()


def _reply_result(
    chunks: Sequence[object], arrivals: Sequence[float], ended: bool, t0: float, error: str | None
) -> dict[str, Any]:
    ok = bool(chunks) and ended
    if error is None and not ok:
        error = "no AUDIO frame" if not chunks else "no END"
    return {
        "ok": ok,
        "audio_frames": len(chunks),
        "ended": ended,
        "first_audio_s": rounded(arrivals[0] - t0, 3) if arrivals else None,
        "total_s": rounded(time.monotonic() - t0, 3),
        "error": None if ok else error,
    }


def normal_call(host: str, port: int, call_id: str, text: str, timeout: float) -> dict[str, Any]:
    """HELLO ``call_id``, one TEXT, BYE; ok with at least one AUDIO frame and END."""
    t0 = time.monotonic()
    try:
        with Connection(host, port, timeout=timeout) as conn:
            conn.hello(call_id)
            conn.text(text)
            conn.bye()
            reply = conn.read_until_end(max(1.0, timeout - (time.monotonic() - t0)))
    except Exception as exc:  # refused, reset, or bytes that are not the protocol
        out = _reply_result([], [], False, t0, f"{type(exc).__name__}: {exc}")
    else:
        out = _reply_result(reply.chunks, reply.arrivals, reply.ended, t0, None)
    out["call_id"] = call_id
    return out


def http_health(host: str, port: int, timeout: float) -> dict[str, Any]:
    """``GET /healthz``: ok on 200."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=timeout) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except Exception as exc:  # refused, reset, timed out, not HTTP
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": status == 200, "status": status, "body": body.decode(errors="replace")[:200]}


def wyoming_health(host: str, port: int, timeout: float) -> dict[str, Any]:
    """``describe`` answered with ``info``."""
    try:
        asyncio.run(asyncio.wait_for(describe(host, port, timeout), timeout))
    except Exception as exc:  # refused, reset, timed out, not Wyoming
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True}


def listening_sink(call_id: int, backlog: int) -> tuple[socket.socket, int]:
    """A listener that never accepts, and the sink port base that routes ``call_id`` to it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    base = sock.getsockname()[1] - call_id
    if base < 1:
        sock.close()
        raise SystemExit(f"call id {call_id} is too large for port {sock.getsockname()[1]}")
    return sock, base


@contextlib.contextmanager
def raised_nofile(want: int) -> Iterator[list[int]]:
    """This process's soft RLIMIT_NOFILE raised to its hard limit for the attack's
    sockets (restored after); yields [soft, hard] as set."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = max(soft, want) if hard == resource.RLIM_INFINITY else hard
    if hard != resource.RLIM_INFINITY and hard < want:
        log(f"this process may open only {hard} descriptors; the attacks want about {want}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    try:
        yield [new, hard]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ------------------------------------------------------------------------------ the probe


def _nothing() -> None:
    """The release of an attack that never started."""


class Probe:
    """One daemon under a descriptor limit, and the attacks run against it in turn."""

    def __init__(self, daemon: Daemon, opts: dict[str, Any], sink_call_id: int) -> None:
        self.daemon = daemon
        self.opts = opts
        self.sink_call_id = sink_call_id
        self._next_call = 900_000  # fresh decimal ids, never registered

    def state(self) -> dict[str, Any]:
        return proc_state(self.daemon.proc, self.daemon.pid)

    def fresh_id(self) -> str:
        self._next_call += 1
        return str(self._next_call)

    def address(self, which: str) -> tuple[str, int]:
        entry = self.daemon.info.get(which)
        if not isinstance(entry, dict):
            raise RuntimeError(f"the ready file has no {which!r} address: {self.daemon.info}")
        return str(entry["host"]), int(entry["port"])

    def call(self) -> dict[str, Any]:
        host, port = self.address("tcp")
        return normal_call(
            host, port, self.fresh_id(), self.opts["text"], self.opts["call_timeout"]
        )

    def ports(self) -> dict[str, Any]:
        timeout = self.opts["call_timeout"]
        return {
            "http": http_health(*self.address("http"), timeout=timeout),
            "wyoming": wyoming_health(*self.address("wyoming"), timeout=timeout),
        }

    def log_since(self, mark: int) -> dict[str, Any]:
        lines = self.daemon.since(mark)
        loud: list[str] = []  # the first few distinct warnings and errors, undated
        for line in lines:
            text = _STAMP.sub("", line)[:300]
            if text not in loud and any(m in line for m in _LOUD):
                loud.append(text)
                if len(loud) >= _LOG_SAMPLE:
                    break
        return {
            "log_bytes": sum(len(ln.encode()) + 1 for ln in lines),
            "log_lines": len(lines),
            "log_emfile_lines": sum(any(m in ln for m in _EMFILE) for ln in lines),
            "log_sample": loud[:_LOG_SAMPLE],
        }

    def settle(self, stable: float = 1.0) -> dict[str, Any]:
        """Wait until the daemon has taken what it will of the connections the kernel
        queued for it: its descriptor count unchanged for ``stable`` s, at the limit, or
        ``settle_timeout`` s gone; the seconds it took and the count."""
        t0 = time.monotonic()
        last, since = -1, t0
        while True:
            now = self.state()
            fds = now["fds"]
            if fds != last:
                last, since = fds, time.monotonic()
            done = (
                not now["alive"]
                or fds >= self.opts["nofile"] - 1
                or time.monotonic() - since >= stable
            )
            if done or time.monotonic() - t0 >= self.opts["settle_timeout"]:
                return {"settle_s": rounded(time.monotonic() - t0, 2), "settled_fds": fds}
            time.sleep(0.1)

    def recover(self, before: dict[str, Any], released_at: float) -> tuple[dict[str, Any], Any]:
        """Poll until threads and descriptors are back near ``before``; (state, seconds)."""
        deadline = released_at + self.opts["recover_timeout"]
        while True:
            now = self.state()
            if not now["alive"]:
                return now, None
            near = (
                now["threads"] <= before["threads"] + self.opts["thread_slack"]
                and now["fds"] <= before["fds"] + self.opts["fd_slack"]
            )
            if near:
                return now, rounded(time.monotonic() - released_at, 2)
            if time.monotonic() >= deadline:
                return now, None
            time.sleep(0.25)

    def recover_in_background(
        self, before: dict[str, Any], released_at: float
    ) -> Callable[[], tuple[dict[str, Any], Any]]:
        """:meth:`recover` in a thread, so the calls made meanwhile do not delay the clock;
        returns the function that waits for its answer."""
        box: list[tuple[dict[str, Any], Any]] = []
        thread = threading.Thread(
            target=lambda: box.append(self.recover(before, released_at)),
            name="recovery",
            daemon=True,
        )
        thread.start()

        def answer() -> tuple[dict[str, Any], Any]:
            thread.join()
            return box[0] if box else (self.state(), None)

        return answer

    # -- attacks: each holds its load, then releases it ---------------------------

    def attack(self, name: str) -> dict[str, Any]:
        """Run one attack; before/peak/after/recovered states, calls, ports and log."""
        out: dict[str, Any] = {"before": self.state()}
        if not out["before"]["alive"]:
            return {**out, "skipped": "the daemon is not running"}
        mark = self.daemon.mark()
        released_at = time.monotonic()
        with PeakSampler(self.state) as peak:
            release: Callable[[], None] = _nothing
            try:
                held, release = self._hold(name, out)
                time.sleep(self.opts["hold"])
                out["after"] = self.state()
                out["normal_call_held"] = self.call()
                if held is not None:
                    out["still_open_after_call"] = held.still_open()
                held_log = self.log_since(mark)
                out["log_bytes_held"] = held_log["log_bytes"]
                out["log_lines_held"] = held_log["log_lines"]
            except Exception as exc:  # an attack that cannot be run is a result, not a crash
                out["error"] = f"{type(exc).__name__}: {exc}"
                log(f"attack {name}: {out['error']}")
            finally:
                release()  # the churn's release ends its live call: a reply's time
                released_at = time.monotonic()
        out["peak"] = peak.peak
        out["released"] = self.state()
        recovered = self.recover_in_background(out["before"], released_at)
        if out["released"]["alive"]:
            out["normal_call_released"] = self.call()
            out["ports_released"] = self.ports()
        out["recovered"], out["recovered_s"] = recovered()
        out.update(self.log_since(mark))
        return out

    def _hold(
        self, name: str, out: dict[str, Any]
    ) -> tuple[IdleConnections | None, Callable[[], None]]:
        if name in ("http", "wyoming", "text"):
            host, port = self.address({"text": "tcp"}.get(name, name))
            idle = IdleConnections(host, port)
            out["target"] = {"host": host, "port": port}
            out["connections"] = idle.open(self.opts["connections"], self.opts["connect_timeout"])
            out["connections"].update(self.settle())
            out["connections"]["open_after_settle"] = idle.still_open()
            return idle, idle.close
        if name == "churn":
            return None, self._churn(out)
        raise ValueError(f"unknown attack {name!r}")

    def _churn(self, out: dict[str, Any]) -> Callable[[], None]:
        """Live call N on the text port, then REGISTER/BYE pairs for it over UDP."""
        host, port = self.address("tcp")
        udp = self.address("udp")
        call_id = str(self.sink_call_id)
        live = LiveCall(host, port, call_id, self.opts["call_timeout"])
        try:
            time.sleep(0.5)  # the HELLO is read and the call is live before the first REGISTER
            pairs, seconds = self.opts["pairs"], self.opts["churn_seconds"]
            out["target"] = {
                "udp": list(udp),
                "call_id": call_id,
                "sink_port": self.opts["sink_port"],
            }
            sent = 0
            t0 = time.monotonic()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for i in range(pairs):
                    with contextlib.suppress(OSError):  # a full buffer loses a datagram
                        sock.sendto(encode_register(call_id), udp)
                        sock.sendto(encode_unregister(call_id), udp)
                        sent += 1
                    time.sleep(max(0.0, t0 + (i + 1) * seconds / pairs - time.monotonic()))
        except BaseException:
            live.close()
            raise
        out["churn"] = {
            "pairs": pairs,
            "pairs_sent": sent,
            "churn_s": rounded(time.monotonic() - t0, 2),
        }

        def release() -> None:  # the call ends: its audio, after the last BYE, comes back
            out["live_call"] = live.finish(self.opts["text"], self.opts["call_timeout"])

        return release


def failures_of(name: str, res: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(failures, warnings) of one attack's result."""
    fail: list[str] = []
    warn: list[str] = []
    if "skipped" in res:
        return [f"{name}: skipped, {res['skipped']}"], warn
    if "error" in res:
        fail.append(f"{name}: the attack could not be run ({res['error']})")
    if not res["released"]["alive"] or not res["recovered"]["alive"]:
        fail.append(f"{name}: the daemon died")
    for key in ("normal_call_held", "normal_call_released", "live_call"):
        call = res.get(key)
        if call is not None and not call["ok"]:
            fail.append(f"{name}: {key} failed ({call['error']})")
    for port, check in res.get("ports_released", {}).items():
        if not check["ok"]:
            fail.append(f"{name}: the {port} port does not answer after the release ({check})")
    if res["recovered"]["alive"] and res["recovered_s"] is None:
        warn.append(f"{name}: threads/descriptors not back near the baseline: {res['recovered']}")
    return fail, warn


def make_checkpoint(into: Path) -> Path:
    """A tiny random-weight checkpoint, built by the daemon's own command."""
    exe = ROOT / ".venv" / "bin" / "kokoro-service"
    base = (  # as the harness starts the daemon
        [str(exe)]
        if exe.exists()
        else [sys.executable, "-c", "from kokoro_service.cli import main; main()"]
    )
    argv = [*base, "make-checkpoint", str(into), "--size", "tiny"]
    subprocess.run(argv, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return into


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
        if code is not None:
            serve = daemon.argv.index("serve")
            daemon.argv = [sys.executable, "-c", _FROM_TREE, str(code), *daemon.argv[serve:]]
        daemon.argv = [sys.executable, "-c", _WITH_NOFILE, str(nofile), *daemon.argv]
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
                log(f"attack {name}: {_line(out)}")
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


def _line(out: dict[str, Any]) -> str:
    """One progress line: the counts before, at the peak, after, recovered."""
    if "skipped" in out:
        return str(out["skipped"])
    parts = []
    for key in ("before", "peak", "after", "recovered"):
        s = out.get(key) or {}
        parts.append(f"{key} {s.get('threads')} threads {s.get('fds')} fds")
    held = out.get("normal_call_held", {}).get("ok")
    released = out.get("normal_call_released", {}).get("ok")
    return "; ".join(parts) + f"; call held ok={held}, released ok={released}"


# ------------------------------------------------------------------------------ main


@contextlib.contextmanager
def baseline_tree(ref: str) -> Iterator[Path]:
    """``kokoro_service`` as it was at ``ref`` (``git archive``), removed afterwards."""
    tree = Path(tempfile.mkdtemp(prefix="kokoro-baseline-"))
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", ref, "kokoro_service"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        yield tree
    finally:
        shutil.rmtree(tree, ignore_errors=True)


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
        print(table(json.loads(ns.table.read_text(encoding="utf-8"))))
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
