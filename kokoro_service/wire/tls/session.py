"""One TLS session over memory BIOs, shared safely by a reader and a writer thread.

:class:`ssl.SSLSocket` releases the GIL inside ``SSL_read`` and ``SSL_write``, while
OpenSSL forbids two threads in one ``SSL`` object at once.  So :class:`Session` drives an
:class:`ssl.SSLObject` over two :class:`ssl.MemoryBIO` itself, on a non-blocking raw
socket, for every :class:`~kokoro_service.wire.tls.conn.TlsConn` handle on that socket.

Locking, per session (every handle on one connection shares it):

* the *ssl lock* guards every ``SSLObject`` and BIO call, and is never held while waiting
  on the socket (the raw socket is non-blocking, so a read or write under it never waits);
* the *send lock* is held while encrypted bytes are taken from the outgoing BIO and
  written to the socket, so TLS records leave in the order they were made.  It is taken
  before the ssl lock, never after.

What OpenSSL writes while reading (an alert, such as its refusal of a TLS 1.2
renegotiation) is sent by the reader itself, or by the writer if it holds the send lock;
an answer to a TLS 1.3 KeyUpdate waits, by OpenSSL's design, for the next record written.
A send that fails looks for the peer's alert, so that a connection that is only written
(a sink) still learns why it was refused.

Waits use :func:`select.poll`, which works for descriptors above 1024 too.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from kokoro_service.errors import TlsError
from kokoro_service.wire.tls.reasons import describe

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["Session", "bad_fd", "wait"]

# Plaintext taken per SSLObject.write: a few full records, and a bound on the encrypted
# bytes held in memory before they reach the socket.
_WRITE_CHUNK = 64 * 1024
# Raw bytes taken from the socket per read.
_READ_CHUNK = 64 * 1024
# After a failed send, how many reads to look through for the peer's alert.
_ALERT_SCAN_READS = 16


def bad_fd() -> OSError:
    """The error of a call on a closed handle or descriptor, as a socket raises it."""
    return OSError(errno.EBADF, os.strerror(errno.EBADF))


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def wait(fd: int, events: int, deadline: float | None) -> int:
    """Wait until ``fd`` reports one of ``events`` (or an error); 0 when the deadline passes.

    ``select.poll`` rather than ``select.select``: a busy daemon's descriptors pass 1024.
    """
    if fd < 0:
        raise bad_fd()
    poller = select.poll()
    poller.register(fd, events)
    while True:
        if deadline is None:
            ms: int | None = None
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                return 0
            ms = max(1, math.ceil(left * 1000))
        ready = poller.poll(ms)
        if ready:
            revents = ready[0][1]
            if revents & select.POLLNVAL:
                raise bad_fd()
            return revents


class Session:
    """One TLS session over one raw socket, shared by every :class:`TlsConn` handle on it.

    Responsibilities: move bytes between the socket and the BIOs under the locks described
    in the module docstring; keep encrypted bytes that the socket has not taken yet; keep
    the read side's end state (close_notify, TCP EOF); close the socket once the last
    handle is closed and no call is still running on it.
    """

    def __init__(
        self,
        raw: socket.socket,
        obj: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        *,
        server_side: bool,
    ) -> None:
        self.raw = raw
        self.obj = obj
        self.incoming = incoming
        self.outgoing = outgoing
        self.server_side = server_side
        self.ssl_lock = threading.Lock()
        self.send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        # Encrypted bytes taken from the outgoing BIO that the socket has not accepted yet:
        # they go before anything else (guarded by the send lock).
        self.unsent = memoryview(b"")
        # Plaintext decrypted early, before unwrap(), so that it cannot be discarded
        # (guarded by the ssl lock).
        self.plain = bytearray()
        self.raw_eof = False  # the peer's FIN arrived (ssl lock)
        self.read_closed = False  # recv has reported the end (ssl lock)
        self.handshaken = False
        self.close_sent = False  # close_notify queued (ssl lock)
        self.send_failed = False  # the socket refused bytes: nothing more will go out
        self._handles = 1
        self._ops = 0
        self._raw_closed = False

    # -- life --------------------------------------------------------------------------

    def add_handle(self) -> None:
        with self._state_lock:
            self._handles += 1

    def drop_handle(self) -> None:
        self._release(handles=1)

    def enter(self) -> None:
        with self._state_lock:
            self._ops += 1

    def leave(self) -> None:
        # A handle closed by another thread during this call (an abort) closes the socket
        # only now, so that the descriptor is not reused under a call still polling it.
        self._release(ops=1)

    def _release(self, *, handles: int = 0, ops: int = 0) -> None:
        """Count a handle closed or a call left; close the socket after the last of both."""
        with self._state_lock:
            self._handles -= handles
            self._ops -= ops
            close = self._handles == 0 and self._ops == 0 and not self._raw_closed
            self._raw_closed |= close
        if close:
            self.raw.close()

    # -- moving bytes ------------------------------------------------------------------

    def pull(self) -> bool:
        """Move what the socket has into the incoming BIO without waiting; False if none."""
        with self.ssl_lock:
            if self.raw_eof:
                return False
            try:
                data = self.raw.recv(_READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return False
            if data:
                self.incoming.write(data)
            else:
                # Not written to the BIO as EOF: unwrap() needs to put bytes back, and a
                # BIO at EOF takes none.  Readers look at this flag instead.
                self.raw_eof = True
            return True

    def flush(self, timeout: float | None) -> None:
        """Send every encrypted byte waiting; the send lock must be held.

        Raises TimeoutError when the socket accepts nothing for ``timeout`` seconds.
        """
        deadline = _deadline(timeout)
        while True:
            if not self.unsent.nbytes:
                with self.ssl_lock:
                    data = self.outgoing.read()
                if not data:
                    return
                self.unsent = memoryview(data)
            try:
                sent = self.raw.send(self.unsent)
            except (BlockingIOError, InterruptedError):
                if not wait(self.raw.fileno(), select.POLLOUT, deadline):
                    raise TimeoutError("timed out") from None
                continue
            except OSError as exc:
                self.send_failed = True
                reason = self.peer_alert() if self.handshaken else None
                if reason is not None:
                    raise TlsError(reason) from exc
                raise
            if sent:
                self.unsent = self.unsent[sent:]
                deadline = _deadline(timeout)

    def peer_alert(self) -> str | None:
        """Why the peer ended the session, if an alert no one has read yet says so.

        A sink connection is only written: when its processor refuses our certificate,
        the writer would see nothing but a reset.  What is read here on the way to the
        alert is kept for ``recv``.
        """
        with self.ssl_lock:
            for _ in range(_ALERT_SCAN_READS):
                try:
                    data = self.obj.read(_READ_CHUNK)
                except ssl.SSLWantReadError:
                    try:
                        chunk = self.raw.recv(_READ_CHUNK)
                    except OSError:  # nothing more (or the reset itself)
                        return None
                    if not chunk:
                        self.raw_eof = True
                        return None
                    self.incoming.write(chunk)
                    continue
                except ssl.SSLZeroReturnError:
                    return None
                except ssl.SSLError as exc:
                    return describe(exc, server_side=self.server_side, handshake=False)
                self.plain += data
        return None

    def flush_nowait(self) -> None:
        """Send what is waiting as far as the socket takes it now, if no one else is.

        A holder of the send lock sends all that is queued before letting go and calls
        this after, so bytes queued while the lock was busy are never stranded.
        """
        while self.send_lock.acquire(blocking=False):
            try:
                with contextlib.suppress(OSError):  # the sender reports a broken socket
                    self.flush(0.0)
            finally:
                self.send_lock.release()
            if self.unsent.nbytes:
                return  # the socket is full: a later send or recv goes on with it
            with self.ssl_lock:
                if not self.outgoing.pending:
                    return

    # -- reading -----------------------------------------------------------------------

    def recv(self, bufsize: int, timeout: float | None) -> bytes:
        deadline = _deadline(timeout)
        while True:
            data: bytes | None = None
            failure: ssl.SSLError | None = None
            with self.ssl_lock:
                if self.plain:
                    data = bytes(self.plain[:bufsize])
                    del self.plain[:bufsize]
                    return data
                if self.read_closed:
                    return b""
                try:
                    data = self.obj.read(bufsize)
                except ssl.SSLWantReadError:
                    data = None
                except ssl.SSLZeroReturnError:  # close_notify
                    data = b""
                except ssl.SSLError as exc:
                    failure = exc
                if data is None and failure is None and self.raw_eof:
                    data = b""  # a TCP close without close_notify counts as a close
                if data == b"":
                    self.read_closed = True
                # Reading can make OpenSSL send something: an alert (refusing a TLS 1.2
                # renegotiation, or a fatal one).  A TLS 1.3 KeyUpdate's answer waits for
                # the next record written, by OpenSSL's design.
                answer = self.outgoing.pending > 0
            if answer:
                self.flush_nowait()
            if failure is not None:
                raise TlsError(
                    describe(failure, server_side=self.server_side, handshake=False)
                ) from failure
            if data is not None:
                return data
            if self.pull():
                continue
            events = select.POLLIN
            if self.unsent.nbytes and not self.send_failed and not self.send_lock.locked():
                events |= select.POLLOUT  # an answer is stuck and no sender will send it
            revents = wait(self.raw.fileno(), events, deadline)
            if not revents:
                raise TimeoutError("timed out")
            if revents & select.POLLOUT:
                self.flush_nowait()

    # -- writing -----------------------------------------------------------------------

    def send(self, buffers: Iterable[ReadableBuffer], timeout: float | None) -> int:
        """Encrypt and send all of ``buffers``; return their length in bytes.

        Small buffers are packed together (a frame's header and samples go out as one
        record, not two), up to ``_WRITE_CHUNK`` per record batch; each batch is on the
        socket before the next is encrypted, so memory stays bounded.
        """
        if not self.send_lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError("timed out")
        total = 0
        try:
            parts: list[memoryview] = []
            size = 0
            for buffer in buffers:
                view = _byte_view(buffer)
                total += view.nbytes
                start = 0
                while start < view.nbytes:
                    take = min(_WRITE_CHUNK - size, view.nbytes - start)
                    parts.append(view[start : start + take])
                    size += take
                    start += take
                    if size == _WRITE_CHUNK:
                        self._seal(parts, timeout)
                        parts, size = [], 0
            if parts:
                self._seal(parts, timeout)
        finally:
            self.send_lock.release()
        self.flush_nowait()  # the reader's answers queued while the lock was ours
        return total

    def _seal(self, parts: list[memoryview], timeout: float | None) -> None:
        """Encrypt ``parts`` as one plaintext and send it; the send lock must be held."""
        data: ReadableBuffer = parts[0] if len(parts) == 1 else b"".join(parts)
        with memoryview(data) as view, self.ssl_lock:
            try:
                done = 0
                while done < view.nbytes:
                    done += self.obj.write(view[done:])
            except ssl.SSLWantReadError:
                raise TlsError("the TLS session wants a handshake to send") from None
            except ssl.SSLError as exc:
                raise TlsError(
                    describe(exc, server_side=self.server_side, handshake=False)
                ) from exc
        self.flush(timeout)

    def close_write(self, timeout: float | None) -> None:
        """Send close_notify after everything written so far, then FIN."""
        if not self.send_lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError("timed out")
        try:
            with self.ssl_lock:
                if self.handshaken and not self.close_sent:
                    self.close_sent = True
                    self._unwrap()
            self.flush(timeout)
        finally:
            self.send_lock.release()
        self.raw.shutdown(socket.SHUT_WR)

    def _unwrap(self) -> None:
        """SSL_shutdown, once, without losing what the peer has sent; ssl lock held.

        Python's unwrap() calls SSL_shutdown a second time to read the peer's close_notify,
        and OpenSSL discards application data that it reads then.  So the plaintext that
        OpenSSL holds is read out first, and the encrypted bytes not yet read are taken out
        of the BIO for the call and put back after it.
        """
        with contextlib.suppress(ssl.SSLError):
            while self.obj.pending():
                self.plain += self.obj.read(self.obj.pending())
        held = self.incoming.read()
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass  # the peer's close_notify is not here yet: expected
        except ssl.SSLError:
            pass  # a broken session: the FIN that follows says enough
        finally:
            if held:
                self.incoming.write(held)


def _byte_view(buffer: ReadableBuffer) -> memoryview:
    view = memoryview(buffer)
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view
