"""One text connection: its bytes, decoded into frames, become call events.

Runs in the connection's own reader thread.  The codec (:mod:`kokoro_service.wire.codec`) turns
bytes into frames; this module enforces the connection's timeouts and turns each frame into a
:class:`~kokoro_service.calls.table.Calls` event.  It never touches synthesis or audio.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time

from kokoro_service.calls.table import Call, Calls, Refusal
from kokoro_service.calls.writers import Conn
from kokoro_service.config import TICK, Settings
from kokoro_service.errors import ProtocolError, TlsError
from kokoro_service.logs import RateLimitedLog
from kokoro_service.wire.codec import (
    END_FRAME,
    Bye,
    Control,
    Hello,
    Keepalive,
    Text,
    TextStreamDecoder,
)
from kokoro_service.wire.tls import PEER_CLOSED_IN_HANDSHAKE, TlsConn

log = logging.getLogger("kokoro_service.server.connection")

_LINGER = 2.0  # after END, how long to wait for the peer's close before closing ourselves
# The first bytes of a TLS handshake record; no HELLO starts with them (its length <= 1024).
_TLS_RECORD = b"\x16\x03"


class TextConnection:
    """Reads one peer's frames and drives its call.

    Responsibilities: finish a TLS handshake within ``hello_timeout``; HELLO opens the
    call, or is answered with END when the instance is full; TEXT, CONTROL and KEEPALIVE
    go to it; BYE, a close, a protocol error, a timeout (HELLO, frame, idle) or shutdown
    closes its input with a reason; text left without a sentence end is flushed after
    ``flush_timeout`` of quiet; after the last frame, the socket lingers until the peer
    has read its END.
    """

    def __init__(
        self,
        conn: Conn,
        peer: str,
        *,
        settings: Settings,
        calls: Calls,
        stopping: threading.Event,
        stopped: threading.Event,
        noise: RateLimitedLog | None = None,
    ) -> None:
        self.conn = conn
        self.peer = peer
        self.settings = settings
        self.calls = calls
        self._stopping = stopping
        self._stopped = stopped
        self._noise = noise if noise is not None else RateLimitedLog(log)
        self.call: Call | None = None
        self._opened = time.monotonic()  # --hello-timeout covers a TLS handshake and HELLO

    def serve(self) -> None:
        reason = ""
        try:
            if not self._handshake():
                return  # logged and closed there
            reason = self._read()
        except Exception:
            log.exception("reader crashed peer=%s call=%s", self.peer, self._call_id)
            reason = "internal error"
        finally:
            if self.call is not None:
                self.calls.close_input(self.call, reason)
                self._linger(self.call)
            elif reason == "busy":  # logged where the call was refused
                self._refuse_busy()
            else:
                # A protocol error was logged where it happened; a refusal too.
                if reason and reason != "call refused" and not reason.startswith("protocol"):
                    level = logging.INFO if reason.startswith("closed") else logging.WARNING
                    log.log(level, "connection closed peer=%s before a call: %s", self.peer, reason)
                close_quietly(self.conn)

    def _handshake(self) -> bool:
        """TLS only: finish the handshake, or log why not and close."""
        if not isinstance(self.conn, TlsConn):
            return True
        try:
            self.conn.handshake(
                max(0.0, self._opened + self.settings.hello_timeout - time.monotonic())
            )
        except TlsError as exc:
            key = f"tls:{self.peer.rsplit(':', 1)[0]}"
            if str(exc) == PEER_CLOSED_IN_HANDSHAKE:
                # A TCP health check or a port probe: connected and left, no refusal.
                self._noise.info(key, "connection closed peer=%s before TLS", self.peer)
            else:
                # A port scanner or a misconfigured client can do this in a loop.
                self._noise.warning(
                    key, "connection refused peer=%s: TLS handshake failed: %s", self.peer, exc
                )
                self.calls.metrics.refused("tls")
            close_quietly(self.conn)
            return False
        return True

    def _refuse_busy(self) -> None:
        """The instance is full (PROTOCOL.md 5.3): END at once, then close.

        The peer may already have sent TEXT after its HELLO; it is read and dropped until
        the peer closes (or a short while), since closing with unread input would reset
        the connection and could destroy the END before the peer reads it.
        """
        conn = self.conn
        try:
            conn.settimeout(self.settings.write_timeout)
            view = memoryview(END_FRAME)
            while view.nbytes:
                view = view[conn.sendmsg([view]) :]
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(TICK)
            deadline = time.monotonic() + _LINGER
            while time.monotonic() < deadline and not self._stopped.is_set():
                try:
                    if not conn.recv(65536):
                        break
                except TimeoutError:
                    continue
        except OSError as exc:
            log.debug("busy END not delivered peer=%s: %s", self.peer, exc)
        finally:
            close_quietly(conn)

    @property
    def _call_id(self) -> str:
        return self.call.call_id if self.call is not None else "-"

    def _read(self) -> str:
        """Read frames until the call's input ends; return why it ended."""
        s = self.settings
        conn = self.conn
        conn.settimeout(TICK)
        decoder = TextStreamDecoder(s.max_text_bytes)
        opened, last_frame = self._opened, time.monotonic()
        frame_started: float | None = None
        head = b""
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
            if len(head) < len(_TLS_RECORD):
                head += data[: len(_TLS_RECORD)]
            got_frame = False
            try:
                for frame in decoder.frames(data):
                    got_frame = True
                    last_frame = time.monotonic()
                    reason = self._event(frame)
                    if reason:
                        return reason
            except ProtocolError as exc:
                if self.call is None and head.startswith(_TLS_RECORD):
                    self._noise.warning(
                        f"plain:{self.peer.rsplit(':', 1)[0]}",
                        "connection refused peer=%s: it began a TLS handshake, but this "
                        "port is plaintext (no --tls-cert)",
                        self.peer,
                    )
                    return "protocol error: TLS on the plaintext port"
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
            opened = self.calls.open(frame.call_id, self.peer, self.conn)
            if opened is Refusal.BUSY:
                return "busy"
            if isinstance(opened, Refusal):
                return "call refused"
            self.call = opened
            return ""
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


def close_quietly(conn: Conn) -> None:
    with contextlib.suppress(OSError):
        conn.close()
