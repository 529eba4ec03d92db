"""The adapters' view of the daemon: open a call, check a voice, read the limits.

Wyoming and the HTTP speech API speak to the daemon as a local text-port client would:
each request is a call of its own over an in-process socket pair, served by the same
reader, scheduler and workers as the phone calls, under the same ``--max-calls``.  This
is all of the server an adapter sees, so none of them can reach past admission.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kokoro_service.config import Settings
from kokoro_service.ops.metrics import Metrics


@dataclass(frozen=True)
class LocalCalls:
    settings: Settings
    metrics: Metrics
    voices: Sequence[str]
    """The voice names the engine has."""
    voice: str
    """The daemon's default voice (or blend): what a call that names none speaks."""
    check_voice: Callable[[str], object]
    """Raises :class:`~kokoro_service.errors.VoiceError` for a voice or blend that
    cannot be spoken."""
    open: Callable[[str, str, bytes], socket.socket | None]
    """``open(call_id, peer, opening)``: the adapter's end of a new call, its opening
    frames (HELLO first) already sent; None when the instance is full (counted as busy)
    or stopping."""


class LocalCallsSlot:
    """Where the HTTP port, which opens before the model loads, finds the calls once the
    server serves: None until then."""

    def __init__(self) -> None:
        self._calls: LocalCalls | None = None

    def fill(self, calls: LocalCalls) -> None:
        self._calls = calls

    def __call__(self) -> LocalCalls | None:
        return self._calls
