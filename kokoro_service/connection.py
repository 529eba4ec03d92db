"""One text connection: its bytes, decoded into frames, become call events.

Runs in the connection's own reader thread.  The codec (:mod:`.protocol`) turns bytes into
frames; this module enforces the connection's timeouts and turns each frame into a
:class:`~kokoro_service.calls.Calls` event.  It never touches synthesis or audio.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time

from .calls import Call, Calls
from .config import TICK, Settings
from .errors import ProtocolError
from .protocol import Bye, Control, Hello, Keepalive, Text, TextStreamDecoder

log = logging.getLogger("kokoro_service.connection")

_LINGER = 2.0  # after END, how long to wait for the peer's close before closing ourselves


class TextConnection:
    """Reads one peer's frames and drives its call.

    Responsibilities: HELLO opens the call; TEXT, CONTROL and KEEPALIVE go to it; BYE, a
    close, a protocol error, a timeout (HELLO, frame, idle) or shutdown closes its input
    with a reason; text left without a sentence end is flushed after ``flush_timeout`` of
    quiet; after the last frame, the socket lingers until the peer has read its END.
    """

    def __init__(
        self,
        conn: socket.socket,
        peer: str,
        *,
        settings: Settings,
        calls: Calls,
        stopping: threading.Event,
        stopped: threading.Event,
    ) -> None:
        self.conn = conn
        self.peer = peer
        self.settings = settings
        self.calls = calls
        self._stopping = stopping
        self._stopped = stopped
        self.call: Call | None = None

    def serve(self) -> None:
        reason = ""
        try:
            reason = self._read()
        except Exception:
            log.exception("reader crashed peer=%s call=%s", self.peer, self._call_id)
            reason = "internal error"
        finally:
            if self.call is None:
                # A protocol error was logged where it happened; a refusal too.
                if reason and reason != "call refused" and not reason.startswith("protocol"):
                    level = logging.INFO if reason.startswith("closed") else logging.WARNING
                    log.log(level, "connection closed peer=%s before a call: %s", self.peer, reason)
                close_quietly(self.conn)
            else:
                self.calls.close_input(self.call, reason)
                self._linger(self.call)

    @property
    def _call_id(self) -> str:
        return self.call.call_id if self.call is not None else "-"

    def _read(self) -> str:
        """Read frames until the call's input ends; return why it ended."""
        s = self.settings
        conn = self.conn
        conn.settimeout(TICK)
        decoder = TextStreamDecoder(s.max_text_bytes)
        opened = last_frame = time.monotonic()
        frame_started: float | None = None
        log.debug("connection opened peer=%s", self.peer)
        while True:
            now = time.monotonic()
            call = self.call
            if self._stopping.is_set():
                return "daemon shutting down"
            if call is None and now - opened > s.hello_timeout:
                return f"no HELLO within {s.hello_timeout:g}s"
            if frame_started is not None and now - frame_started > s.frame_timeout:
                return f"frame incomplete after {s.frame_timeout:g}s (peer too slow)"
            if call is not None and frame_started is None and now - last_frame > s.idle_timeout:
                return f"idle for {s.idle_timeout:g}s"
            if call is not None and not call.route.deliverable:
                return "no destination left for the call's audio"
            try:
                data = conn.recv(65536)
            except TimeoutError:
                if call is not None and self.calls.has_unsent_text(call):
                    quiet = time.monotonic() - last_frame
                    if quiet > s.flush_timeout:
                        self.calls.flush_quiet(call, whole_words_only=quiet < 2 * s.flush_timeout)
                continue
            except OSError as exc:
                return f"read failed: {exc.strerror or exc}"
            if not data:
                return "closed mid-frame" if decoder.mid_frame else "closed without BYE"
            got_frame = False
            try:
                for frame in decoder.frames(data):
                    got_frame = True
                    last_frame = time.monotonic()
                    reason = self._event(frame)
                    if reason:
                        return reason
            except ProtocolError as exc:
                log.warning(
                    "bad input peer=%s call=%s: %s; closing after owed audio",
                    self.peer,
                    self._call_id,
                    exc,
                )
                return f"protocol error: {exc}"
            if not decoder.mid_frame:
                frame_started = None
            elif got_frame or frame_started is None:
                frame_started = time.monotonic()

    def _event(self, frame: object) -> str:
        """Apply one frame; return a reason when the call's input ends with it."""
        if isinstance(frame, Hello):
            self.call = self.calls.open(frame.call_id, self.peer, self.conn)
            return "call refused" if self.call is None else ""
        call = self.call
        if call is None:  # pragma: no cover - the decoder yields HELLO first or raises
            raise ProtocolError("frame before HELLO")
        if isinstance(frame, Text):
            self.calls.text(call, frame.text)
        elif isinstance(frame, Control):
            self.calls.control(call, frame)
        elif isinstance(frame, Bye):
            return "BYE"
        elif not isinstance(frame, Keepalive):  # pragma: no cover - the codec's whole alphabet
            raise ProtocolError(f"unexpected frame {type(frame).__name__}")
        return ""

    def _linger(self, call: Call) -> None:
        """Keep reading (and discarding) until the peer closes or the call's output is done.

        Closing a socket with unread input makes the kernel reset the connection, which
        can destroy audio the peer has not read yet.
        """
        conn = self.conn
        done_at: float | None = None
        while True:
            if call.route.text.join(0) and done_at is None:
                done_at = time.monotonic()
            if done_at is not None and time.monotonic() - done_at > _LINGER:
                break
            if self._stopped.is_set():
                break
            try:
                if not conn.recv(65536):
                    if call.route.text.join(0) or not call.route.text.alive:
                        break
                    time.sleep(TICK)
            except TimeoutError:
                continue
            except OSError:
                break
        close_quietly(conn)


def close_quietly(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.close()
