"""One daemon under a descriptor limit and the attacks of ``probe_exhaustion.py`` run
against it in turn: each held, then released, with the daemon's threads, descriptors and
RSS before, at the peak, after and once recovered, normal calls made while it holds and
after, the ports checked, and what the daemon logged meanwhile."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from benchmarks.lib.daemon_log import log_load
from benchmarks.lib.harness import Daemon, log, rounded
from benchmarks.lib.peers import (
    IdleConnections,
    LiveCall,
    http_health,
    normal_call,
    register_bye_pairs,
    wyoming_health,
)
from benchmarks.lib.proc_watch import (
    PeakSampler,
    in_background,
    proc_state,
    wait_near,
    wait_settled,
)

_LOG_SAMPLE = 5


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
        return log_load(self.daemon.since(mark), _LOG_SAMPLE)

    def recover_in_background(
        self, before: dict[str, Any], released_at: float
    ) -> Callable[[], tuple[dict[str, Any], Any]]:
        """Poll until threads and descriptors are back near ``before``, in a thread, so the
        calls made meanwhile do not delay the clock; returns the function that waits for
        its answer, (state, seconds)."""
        opts = self.opts
        return in_background(
            lambda: wait_near(
                self.state,
                before,
                thread_slack=opts["thread_slack"],
                fd_slack=opts["fd_slack"],
                since=released_at,
                timeout=opts["recover_timeout"],
            ),
            lambda: (self.state(), None),
            "recovery",
        )

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
            out["connections"].update(
                wait_settled(self.state, self.opts["nofile"], self.opts["settle_timeout"])
            )
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
            t0 = time.monotonic()
            sent = register_bye_pairs(udp, call_id, pairs, seconds)
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


def progress_line(out: dict[str, Any]) -> str:
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
