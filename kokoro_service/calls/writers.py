"""Writers: one thread and one bounded queue per audio destination.

A destination is a call's text connection or an audio processor's sink connection.  Each
has its own writer, so a peer that reads slowly or never stalls only itself.  Samples are
sent with ``sendmsg`` straight from the worker's array, header and all, never copied.

Over 400 lines: the text connection's writer and the sink's share the queue and failure
rules, and the sink's dial, retry and withdrawal belong with them.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from kokoro_service.errors import DestinationError, TlsError
from kokoro_service.logs import RateLimitedLog
from kokoro_service.wire.codec import (
    SAMPLE_RATE,
    audio_payload,
    encode_audio_header,
    encode_hello,
    encode_words_header,
    sample_width,
)
from kokoro_service.wire.tls import TlsConn

log = logging.getLogger("kokoro_service.calls.writers")

SINK_LINGER = 2.0
# How often a dialling sink writer looks at its abort flag: a processor that unregistered
# (BYE) must not keep a thread and a socket dialling for it.
_DIAL_TICK = 0.25


class Conn(Protocol):
    """What the readers and writers use of a connected stream: a plain socket, or a
    :class:`~kokoro_service.wire.tls.TlsConn` that keeps the same calls safe across threads."""

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
        on_failure: Callable[[FrameWriter, str], None],
        on_progress: Callable[[], None],
        on_settled: Callable[[FrameWriter], None] = lambda _writer: None,
        sock: Conn | None = None,
    ) -> None:
        self.name = name
        self._sock = sock
        self._write_timeout = write_timeout
        self._on_failure = on_failure
        self._on_progress = on_progress
        self._on_settled = on_settled
        self._queue: collections.deque[Item] = collections.deque()
        self._cond = threading.Condition()
        self._finishing = False
        self._aborted = False
        self.failed = False
        self.failure_reason = ""
        # Set by the owner (under its own lock) once it has dealt with this failure.
        self.failure_handled = False
        self.settled = False
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

    def take_audio(self) -> list[AudioItem]:
        """Remove the queued AUDIO frames (and their WORDS) and return them, oldest first;
        a frame already on the wire completes."""
        with self._cond:
            taken = [item for item in self._queue if isinstance(item, AudioItem)]
            self._queue = collections.deque(
                item for item in self._queue if not isinstance(item, AudioItem)
            )
            return taken

    def purge_audio(self) -> list[int]:
        """Drop queued AUDIO frames (barge-in) and return their chunk ids."""
        return [item.chunk_id for item in self.take_audio()]

    def take_items(self) -> list[Item]:
        """Remove and return everything queued (a failed writer's unsent frames)."""
        with self._cond:
            items = list(self._queue)
            self._queue.clear()
            return items

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

    def _connect(self) -> Conn | None:
        """Return the socket to send on, or None when there is nothing left to send it;
        sink writers override this to dial out."""
        if self._sock is None:
            raise DestinationError("no socket")
        return self._sock

    def _preamble(self) -> bytes:
        return b""

    def _run(self) -> None:
        sock: Conn | None = None
        try:
            sock = self._connect()
            if sock is None:
                return  # abandoned before it connected: nothing to send, nothing failed
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
            # Every frame it will ever send is sent, or was handed back by _fail.
            self.settled = True
            self._on_settled(self)
            if sock is not None:
                if self.failed or self._aborted:
                    _shutdown(sock)
                else:
                    # FIN only: the peer reads every byte before it sees the close.  A
                    # full shutdown here could turn into a reset that discards them.
                    _close_after_fin(sock, self._linger)
            self._on_progress()

    def _fail(self, reason: str) -> None:
        """Mark the writer failed, its queue kept, and tell the owner, which takes the
        unsent frames with :meth:`take_items` (here, or earlier from its own thread)."""
        with self._cond:
            if self._aborted:
                return
            self.failed = True
            self.failure_reason = reason
        self._on_failure(self, reason)

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
    a context: ``--tls-sink-ca``, PROTOCOL.md 5.5), then sends HELLO.

    A sink that is withdrawn (BYE) or aborted before it has connected stops dialling
    within a quarter of a second and sends nothing: a processor that sent BYE is not
    called back, and REGISTER/BYE churn cannot pile up dialling threads.
    """

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
        on_failure: Callable[[FrameWriter, str], None],
        on_progress: Callable[[], None],
        on_settled: Callable[[FrameWriter], None] = lambda _writer: None,
        tls: ssl.SSLContext | None = None,
        noise: RateLimitedLog | None = None,
    ) -> None:
        super().__init__(
            name,
            write_timeout=write_timeout,
            on_failure=on_failure,
            on_progress=on_progress,
            on_settled=on_settled,
        )
        self.call_id = call_id
        self.host = host
        self.port = port
        self._attempts = attempts
        self._backoff = backoff
        self._tls = tls
        self._withdrawn = False
        self._noise = noise if noise is not None else RateLimitedLog(log)
        # Nothing else reads a sink connection, and closing with unread bytes (a TLS 1.3
        # server's session tickets, say) resets it, which can destroy the frames the
        # processor has not read yet: wait for its close instead, briefly.
        self._linger = SINK_LINGER

    def _abandoned(self) -> bool:
        """Aborted, or finished with no audio queued: dialling would serve nobody."""
        with self._cond:
            return self._abandoned_locked()

    def _abandoned_locked(self) -> bool:
        return self._aborted or (
            self._withdrawn and not any(isinstance(i, AudioItem) for i in self._queue)
        )

    def withdraw(self) -> None:
        """Finish, and if not yet connected with no audio queued, do not connect at all:
        the processor unregistered the call (BYE)."""
        with self._cond:
            self._withdrawn = True
        self.finish()

    def _connect(self) -> Conn | None:
        delay = self._backoff
        last = ""
        where = f"{self.host}:{self.port}"
        for attempt in range(1, self._attempts + 1):
            if self._abandoned():
                return None
            try:
                sock = self._dial()
                if sock is None:
                    return None
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = self._secure(sock)
                self._noise.info(
                    f"sinkup:{self.call_id}",
                    "sink connected call=%s sink=%s attempt=%d%s",
                    self.call_id,
                    where,
                    attempt,
                    " tls" if self._tls is not None else "",
                )
                return conn
            except TlsError as exc:
                # The processor was reached and TLS failed (its certificate, or ours):
                # configuration, which trying again will not mend.
                self._noise.warning(
                    f"sinktls:{self.port}",
                    "sink TLS failed call=%s sink=%s: %s",
                    self.call_id,
                    where,
                    exc,
                )
                raise DestinationError(f"TLS to sink {where} failed: {exc}") from exc
            except OSError as exc:
                last = exc.strerror or str(exc)
                self._noise.warning(
                    f"sinkdown:{self.port}",
                    "sink connect failed call=%s sink=%s attempt=%d/%d: %s",
                    self.call_id,
                    where,
                    attempt,
                    self._attempts,
                    last,
                )
            if attempt < self._attempts:
                with self._cond:
                    self._cond.wait_for(self._abandoned_locked, delay)
                delay *= 2
        raise DestinationError(f"cannot connect to sink {where}: {last}")

    def _dial(self) -> socket.socket | None:
        """A connected socket, within ``write_timeout``, or None once abandoned."""
        deadline = time.monotonic() + self._write_timeout
        last: OSError = OSError(errno.EHOSTUNREACH, "no address")
        for family, kind, proto, _, address in socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM
        ):
            sock = socket.socket(family, kind, proto)
            try:
                if self._connect_within(sock, address, deadline):
                    return sock
                sock.close()
                return None
            except OSError as exc:
                sock.close()
                last = exc
        raise last

    def _connect_within(
        self, sock: socket.socket, address: tuple[object, ...], deadline: float
    ) -> bool:
        """Connect ``sock``; False if abandoned first.  Polls, so any descriptor number
        works (select() stops at 1024)."""
        sock.setblocking(False)
        err = sock.connect_ex(address)
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        while err in (errno.EINPROGRESS, errno.EAGAIN):
            if self._abandoned():
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(errno.ETIMEDOUT, "timed out")
            if poller.poll(min(_DIAL_TICK, left) * 1000):
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
        sock.setblocking(True)
        return True

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
