"""Our side of the Wyoming comparison: ``kokoro-service serve`` as a subprocess (the
harness's :class:`Daemon`, ready when its ready file appears) with ``--wyoming-port`` on a
free port added to its arguments, and that port answering ``describe``.  What a result
records of it is kept in ``info``, as :class:`benchmarks.lib.wyoming_peer.Peer` keeps the
peer's."""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.lib.harness import Daemon, log, rounded
from benchmarks.lib.wyoming_peer import free_port, info_summary, wait_describe


def serve_has_wyoming() -> bool:
    """Whether ``kokoro-service serve`` has a ``--wyoming-port`` option yet."""
    from kokoro_service.cli import serve

    return any("--wyoming-port" in getattr(param, "opts", ()) for param in serve.params)


class Ours:
    """Our daemon, with ``--wyoming-port`` where ``serve`` has it (``has_wyoming``)."""

    def __init__(self, serve_args: Sequence[str], cache_dir: Path | None, log_level: str) -> None:
        self.has_wyoming = serve_has_wyoming()
        self.info: dict[str, Any] = {"serve_has_wyoming_port": self.has_wyoming}
        args = list(serve_args)
        self.wyoming_port: int | None = None
        if self.has_wyoming:
            self.wyoming_port = free_port()
            args += ["--wyoming-port", str(self.wyoming_port)]
        self.daemon = Daemon(args, cache_dir, log_level)
        self.info["command"] = shlex.join(self.daemon.argv)

    def start(self, timeout: float, *, describe: bool) -> None:
        """Start it and wait for its ready file; with ``describe``, also for its Wyoming
        port to answer ``describe``.  RuntimeError if either does not happen."""
        daemon = self.daemon
        log(f"starting our daemon: {shlex.join(daemon.argv)}")
        self.info["start_s"] = rounded(daemon.start(timeout), 2)
        self.info["ready"] = daemon.info
        log(f"our daemon is ready on {daemon.host}:{daemon.port} (pid {daemon.pid})")
        announced = daemon.info.get("wyoming")
        if isinstance(announced, dict) and isinstance(announced.get("port"), int):
            self.wyoming_port = int(announced["port"])  # where the ready file says it listens
        if self.wyoming_port is not None and describe:
            proc = daemon.proc
            info, took = wait_describe(
                daemon.host,
                self.wyoming_port,
                time.monotonic() + 60.0,
                lambda: proc is not None and proc.poll() is None,
            )
            self.info["wyoming_port"] = self.wyoming_port
            self.info["wyoming_info"] = summary = info_summary(info, took)
            log(f"our Wyoming port {self.wyoming_port} answers describe: {summary}")

    def give_up(self) -> None:
        """Stop a daemon that did not start or answer; keep its exit code and log tail."""
        self.info["exit_code"] = self.daemon.stop()
        self.info["log_tail"] = [line for _, line in self.daemon.lines[-30:]]

    def stop(self) -> None:
        """Stop it after the run; keep its exit code, its log file and the log's warnings."""
        self.info["exit_code"] = self.daemon.stop()
        self.info["log"] = str(self.daemon.log_path)
        self.info["warnings"] = [
            ln for ln in self.daemon.since(0) if " WARNING " in ln or " ERROR " in ln
        ][:50]
