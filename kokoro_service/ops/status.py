"""What health, readiness and the metrics read of the running server: a snapshot.

The server builds one on request (:meth:`kokoro_service.server.server.Server.status`), at
each probe or scrape, so the levels are never stale and the ops layer never holds the
server, nor imports it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServerStatus:
    thread_error: BaseException | None
    """The error of a server thread that died, or None."""
    active_calls: int
    max_calls: int | None
    """The admission limit (``--max-calls``); None: none."""
    full: bool
    """At ``--max-calls``: the next call would be refused."""
    worker_rtf: float | None
    """One worker's real-time factor, moving average; None before the first segment."""
    segments_waiting: int
    segments_synthesizing: int
    frames_queued: int
    """AUDIO frames queued for the calls' writers."""
    registrations: int
