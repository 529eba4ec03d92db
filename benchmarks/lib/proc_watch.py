"""A process watched from ``/proc/<pid>``: its threads, open descriptors and RSS now, at
their peak over a span (sampled in a thread), once they stop growing and once they are
back near where they were; its descriptor limit, and this process's own, raised."""

from __future__ import annotations

import contextlib
import resource
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.lib.harness import log, rounded

T = TypeVar("T")
State = Callable[[], dict[str, Any]]


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

    def __init__(self, state: State, interval: float = 0.1) -> None:
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


def wait_settled(state: State, limit: int, timeout: float, stable: float = 1.0) -> dict[str, Any]:
    """Wait until the process has taken what it will of the connections the kernel
    queued for it: its descriptor count unchanged for ``stable`` s, at ``limit`` - 1, or
    ``timeout`` s gone; the seconds it took and the count."""
    t0 = time.monotonic()
    last, since = -1, t0
    while True:
        now = state()
        fds = now["fds"]
        if fds != last:
            last, since = fds, time.monotonic()
        done = not now["alive"] or fds >= limit - 1 or time.monotonic() - since >= stable
        if done or time.monotonic() - t0 >= timeout:
            return {"settle_s": rounded(time.monotonic() - t0, 2), "settled_fds": fds}
        time.sleep(0.1)


def wait_near(
    state: State,
    before: dict[str, Any],
    *,
    thread_slack: int,
    fd_slack: int,
    since: float,
    timeout: float,
) -> tuple[dict[str, Any], Any]:
    """Poll until threads and descriptors are back within the slacks of ``before``, at
    most ``timeout`` s after ``since``; (state, seconds since ``since``, or None)."""
    deadline = since + timeout
    while True:
        now = state()
        if not now["alive"]:
            return now, None
        near = (
            now["threads"] <= before["threads"] + thread_slack
            and now["fds"] <= before["fds"] + fd_slack
        )
        if near:
            return now, rounded(time.monotonic() - since, 2)
        if time.monotonic() >= deadline:
            return now, None
        time.sleep(0.25)


def in_background(work: Callable[[], T], fallback: Callable[[], T], name: str) -> Callable[[], T]:
    """``work`` in a thread, so what is done meanwhile does not delay its clock; returns
    the function that waits for its answer (``fallback()`` if it raised)."""
    box: list[T] = []
    thread = threading.Thread(target=lambda: box.append(work()), name=name, daemon=True)
    thread.start()

    def answer() -> T:
        thread.join()
        return box[0] if box else fallback()

    return answer


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
