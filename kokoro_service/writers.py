"""Writers: one thread and one bounded queue per audio destination.

A destination is a call's text connection or an audio processor's sink connection.  Each
has its own writer, so a peer that reads slowly or never stalls only itself.  Samples are
sent with ``sendmsg`` straight from the worker's array, header and all, never copied.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from .errors import DestinationError, TlsError
from .protocol import (
    SAMPLE_RATE,
    audio_payload,
    encode_audio_header,
    encode_hello,
    encode_words_header,
    sample_width,
)
from .tls import TlsConn

log = logging.getLogger("kokoro_service.writers")

SINK_LINGER = 2.0


class Conn(Protocol):
    """What the readers and writers use of a connected stream: a plain socket, or a
    :class:`~kokoro_service.tls.TlsConn` that keeps the same calls safe across threads."""

    def recv(self, bufsize: int, /) -> bytes: ...
    def settimeout(self, value: float | None, /) -> None: ...
    def sendmsg(self, buffers: list[memoryview], /) -> int: ...
    def dup(self) -> Conn: ...
    def shutdown(self, how: int, /) -> None: ...
    def close(self) -> None: ...


@dataclass(slots=True)
class AudioItem:
    """One AUDIO frame, and the WORDS frame that goes just before it, if the call asked."""

    chunk_id: int
    samples: npt.NDArray[np.generic]
    """float32 (the seed format), or the call's encoded samples (int16, G.711 bytes)."""
    sample_rate: int = SAMPLE_RATE
    words: bytes | None = None


@dataclass(slots=True)
class RawItem:
    data: bytes
    label: str


Item = AudioItem | RawItem


class FrameWriter:
    """Sends one destination's frames from its own thread, through a bounded queue.

    Responsibilities: own the socket's sending side; send each frame whole, header and
    samples without copying the samples; give up on a peer that makes no progress for
    ``write_timeout`` seconds; report a failure once, with the frames it could not send;
    close the socket after the last frame when asked to finish.
    """

    def __init__(
        self,
        name: str,
        *,
        write_timeout: float,
        on_failure: Callable[[FrameWriter, str, list[Item]], None],
        on_progress: Callable[[], None],
        sock: Conn | None = None,
    ) -> None:
        self.name = name
        self._sock = sock
        self._write_timeout = write_timeout
        self._on_failure = on_failure
        self._on_progress = on_progress
        self._queue: collections.deque[Item] = collections.deque()
        self._cond = threading.Condition()
        self._finishing = False
        self._aborted = False
        self.failed = False
        # Seconds to read (and drop) what the peer sends after our FIN, before closing.
        self._linger = 0.0
        self._thread = threading.Thread(target=self._run, name=f"writer:{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Accepting frames: not failed, aborted or finishing."""
        with self._cond:
            return not (self.failed or self._aborted or self._finishing)

    @property
    def queued_audio(self) -> int:
        with self._cond:
            return sum(1 for item in self._queue if isinstance(item, AudioItem))

    def offer(self, item: Item) -> bool:
        with self._cond:
            if self.failed or self._aborted or self._finishing:
                return False
            self._queue.append(item)
            self._cond.notify()
            return True

    def offer_all(self, items: list[Item]) -> bool:
        with self._cond:
            if self.failed or self._aborted or self._finishing:
                return False
            self._queue.extend(items)
            self._cond.notify()
            return True

    def purge_audio(self) -> list[int]:
        """Drop queued AUDIO frames (barge-in) and return their chunk ids; a frame already
        on the wire completes."""
        with self._cond:
            dropped = [item.chunk_id for item in self._queue if isinstance(item, AudioItem)]
            self._queue = collections.deque(
                item for item in self._queue if not isinstance(item, AudioItem)
            )
            return dropped

    def finish(self) -> None:
        """Send what is queued, then close."""
        with self._cond:
            self._finishing = True
            self._cond.notify()

    def abort(self) -> None:
        """Stop now and close; queued frames are dropped."""
        with self._cond:
            self._aborted = True
            self._queue.clear()
            self._cond.notify()
        sock = self._sock
        if sock is not None:
            _shutdown(sock)

    def join(self, timeout: float | None = None) -> bool:
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- thread ------------------------------------------------------------------------

    def _connect(self) -> Conn:
        """Return the socket to send on; sink writers override this to dial out."""
        if self._sock is None:
            raise DestinationError("no socket")
        return self._sock

    def _preamble(self) -> bytes:
        return b""

    def _run(self) -> None:
        sock: Conn | None = None
        try:
            sock = self._connect()
            self._sock = sock
            sock.settimeout(self._write_timeout)
            preamble = self._preamble()
            if preamble:
                self._send(sock, [memoryview(preamble)])
            while True:
                with self._cond:
                    while not self._queue and not self._finishing and not self._aborted:
                        self._cond.wait()
                    if self._aborted or (not self._queue and self._finishing):
                        break
                    item = self._queue.popleft()
                try:
                    self._send_item(sock, item)
                except DestinationError:
                    with self._cond:
                        self._queue.appendleft(item)
                    raise
                self._on_progress()
        except DestinationError as exc:
            self._fail(str(exc))
        except Exception as exc:  # never let a writer thread die silently
            log.exception("writer=%s crashed", self.name)
            self._fail(f"internal error: {exc}")
        finally:
            if sock is not None:
                if self.failed or self._aborted:
                    _shutdown(sock)
                else:
                    # FIN only: the peer reads every byte before it sees the close.  A
                    # full shutdown here could turn into a reset that discards them.
                    _close_after_fin(sock, self._linger)
            self._on_progress()

    def _fail(self, reason: str) -> None:
        with self._cond:
            if self._aborted:
                return
            self.failed = True
            unsent = list(self._queue)
            self._queue.clear()
        self._on_failure(self, reason, unsent)

    def _send_item(self, sock: Conn, item: Item) -> None:
        if isinstance(item, RawItem):
            self._send(sock, [memoryview(item.data)])
            return
        payload = audio_payload(item.samples)
        width = sample_width(item.samples)
        header = encode_audio_header(payload.nbytes, item.chunk_id, item.sample_rate, width)
        buffers = [memoryview(header), payload]
        if item.words is not None:  # one sendmsg: a WORDS frame never parts from its AUDIO
            words_header = encode_words_header(len(item.words), item.chunk_id)
            buffers[:0] = [memoryview(words_header), memoryview(item.words)]
        self._send(sock, buffers)

    def _send(self, sock: Conn, buffers: list[memoryview]) -> None:
        """Send every byte; fail when the peer accepts nothing for ``write_timeout``."""
        pending = [b for b in buffers if b.nbytes]
        while pending:
            if self._aborted:
                raise DestinationError("aborted")
            try:
                sent = sock.sendmsg(pending)
            except TimeoutError:
                raise DestinationError(
                    f"peer accepted no data for {self._write_timeout:g}s (not reading)"
                ) from None
            except OSError as exc:
                raise DestinationError(f"send failed: {exc.strerror or exc}") from None
            while sent and pending:
                head = pending[0]
                if sent >= head.nbytes:
                    sent -= head.nbytes
                    pending.pop(0)
                else:
                    pending[0] = head[sent:]
                    sent = 0


class SinkWriter(FrameWriter):
    """Writer to an audio processor: dials ``host:port`` with backoff (over TLS when given
    a context: ``--tls-sink-ca``, PROTOCOL.md 5.5), then sends HELLO."""

    def __init__(
        self,
        name: str,
        *,
        call_id: str,
        host: str,
        port: int,
        attempts: int,
        backoff: float,
        write_timeout: float,
        on_failure: Callable[[FrameWriter, str, list[Item]], None],
        on_progress: Callable[[], None],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(
            name, write_timeout=write_timeout, on_failure=on_failure, on_progress=on_progress
        )
        self.call_id = call_id
        self.host = host
        self.port = port
        self._attempts = attempts
        self._backoff = backoff
        self._tls = tls
        # Nothing else reads a sink connection, and closing with unread bytes (a TLS 1.3
        # server's session tickets, say) resets it, which can destroy the frames the
        # processor has not read yet: wait for its close instead, briefly.
        self._linger = SINK_LINGER

    def _connect(self) -> Conn:
        delay = self._backoff
        last = ""
        for attempt in range(1, self._attempts + 1):
            if self._aborted:
                raise DestinationError("aborted")
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self._write_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = self._secure(sock)
                log.info(
                    "sink connected call=%s sink=%s:%d attempt=%d%s",
                    self.call_id,
                    self.host,
                    self.port,
                    attempt,
                    " tls" if self._tls is not None else "",
                )
                return conn
            except TlsError as exc:
                # The processor was reached and TLS failed (its certificate, or ours):
                # configuration, which trying again will not mend.
                log.warning(
                    "sink TLS failed call=%s sink=%s:%d: %s",
                    self.call_id,
                    self.host,
                    self.port,
                    exc,
                )
                raise DestinationError(
                    f"TLS to sink {self.host}:{self.port} failed: {exc}"
                ) from exc
            except OSError as exc:
                last = exc.strerror or str(exc)
                log.warning(
                    "sink connect failed call=%s sink=%s:%d attempt=%d/%d: %s",
                    self.call_id,
                    self.host,
                    self.port,
                    attempt,
                    self._attempts,
                    last,
                )
            if attempt < self._attempts:
                time.sleep(delay)
                delay *= 2
        raise DestinationError(f"cannot connect to sink {self.host}:{self.port}: {last}")

    def _secure(self, sock: socket.socket) -> Conn:
        if self._tls is None:
            return sock
        conn = TlsConn.client(sock, self._tls, self.host)
        try:
            conn.handshake(self._write_timeout)
        except OSError:
            conn.close()
            raise
        return conn

    def _preamble(self) -> bytes:
        return encode_hello(self.call_id)


def _close_after_fin(sock: Conn, linger: float = 0.0) -> None:
    """FIN, then (for ``linger`` seconds at most) read and drop until the peer closes."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + linger
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if not sock.recv(65536):
                break
    with contextlib.suppress(OSError):
        sock.close()


def _shutdown(sock: Conn) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
