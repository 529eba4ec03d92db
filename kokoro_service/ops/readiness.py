"""Where the daemon stands, for machines: a ready file, systemd's notify protocol, and
the state behind ``/healthz`` and ``/readyz``.

Log lines are for people.  Tools and tests wait for the ready file (``--ready-file``), a
JSON object written atomically once the daemon is warm and listening; systemd
(``Type=notify``) gets ``READY=1`` at the same moment, ``STOPPING=1`` when the drain
begins, and ``WATCHDOG=1`` pings when the unit sets ``WatchdogSec=``.  Load balancers ask
the HTTP port (:mod:`kokoro_service.adapters.http`), which answers from
:class:`Lifecycle`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kokoro_service.ops.status import ServerStatus

log = logging.getLogger("kokoro_service.ops.readiness")


def sd_notify(message: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``message`` to the service manager; False when there is none (or it failed).

    The protocol is one datagram to the unix socket named by ``NOTIFY_SOCKET``; a name
    starting with ``@`` is in the abstract namespace.
    """
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot notify the service manager at %s: %s", address.strip("\0"), exc)
        return False
    return True


class Readiness:
    """Publishes ready and stopping, and keeps the watchdog fed.

    Responsibilities: write the ready file atomically (a reader never sees half a file)
    and remove it when the daemon stops serving; send the matching notify messages; tell
    the main loop how often to ping the watchdog.
    """

    def __init__(self, ready_file: Path | None, environ: Mapping[str, str] = os.environ) -> None:
        self.ready_file = ready_file
        self._environ = environ

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half systemd's timeout), or None."""
        usec = self._environ.get("WATCHDOG_USEC", "")
        pid = self._environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 2e6

    def ready(self, info: Mapping[str, Any], status: str) -> None:
        if self.ready_file is not None:
            path = self.ready_file
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_text(json.dumps(dict(info), indent=2) + "\n", encoding="utf-8")
                os.replace(tmp, path)
            except OSError as exc:
                # Serving matters more than the file: say so loudly and go on.
                log.error("cannot write the ready file %s: %s", path, exc)
        sd_notify(f"READY=1\nSTATUS={status}", self._environ)

    def ping(self) -> None:
        sd_notify("WATCHDOG=1", self._environ)

    def stopping(self, status: str) -> None:
        self.withdraw()
        sd_notify(f"STOPPING=1\nSTATUS={status}", self._environ)

    def withdraw(self) -> None:
        """Remove the ready file this daemon wrote."""
        if self.ready_file is not None:
            with contextlib.suppress(OSError):
                self.ready_file.unlink()

    def withdraw_stale(self) -> None:
        """Remove a ready file left by a daemon that is gone, so it does not read as ready
        while this one starts; a live daemon's file is left alone."""
        if self.ready_file is None:
            return
        try:
            pid = int(json.loads(self.ready_file.read_text(encoding="utf-8"))["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            pid = 0  # absent, or not one of ours: nothing to protect
        if pid > 0 and _alive(pid):
            log.warning("ready file %s belongs to running pid %d", self.ready_file, pid)
            return
        self.withdraw()


class Lifecycle:
    """The daemon's phase (loading, serving, draining) and what readiness means.

    Responsibilities: read the running server's status once it serves; say whether the
    process is healthy (no server thread died) and whether it is ready for another call
    (serving, not draining, under ``--max-calls``), each with a reason a person can read.
    """

    def __init__(self) -> None:
        self.status: Callable[[], ServerStatus] | None = None
        """The running server's snapshot, once it serves."""
        self.capacity: float | None = None
        """Calls the workers keep speaking in real time, from the warm-up."""
        self.draining = False

    def serving(self, status: Callable[[], ServerStatus], capacity: float | None) -> None:
        self.capacity = capacity
        self.status = status

    def drain(self) -> None:
        self.draining = True

    def health(self) -> tuple[bool, str]:
        if self.status is None:
            return True, "loading the model"
        error = self.status().thread_error
        if error is not None:
            return False, f"a server thread died: {error}"
        return True, "draining" if self.draining else "serving"

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining to stop"
        if self.status is None:
            return False, "loading the model and warming up"
        now = self.status()
        if now.thread_error is not None:
            return False, f"a server thread died: {now.thread_error}"
        if now.full:
            return False, f"full: {now.active_calls} of {now.max_calls} calls (--max-calls)"
        return True, f"{now.active_calls} of {now.max_calls or 'unlimited'} calls"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
