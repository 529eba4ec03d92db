"""TLS for the daemon's TCP connections: the text port and the sink connections it dials.

The daemon reads a connection in one thread and writes it from another, through a
``dup()`` of the socket, with ``sendmsg``.  :class:`ssl.SSLSocket` allows none of that
safely: it has no ``sendmsg`` or ``dup``, and it releases the GIL inside ``SSL_read`` and
``SSL_write``, while OpenSSL forbids two threads in one ``SSL`` object at once.  So
:class:`TlsConn` drives an :class:`ssl.SSLObject` over two :class:`ssl.MemoryBIO` itself,
on a non-blocking raw socket, and offers the few socket calls the daemon makes:
``settimeout``, ``recv``, ``sendmsg``, ``dup``, ``shutdown``, ``close`` and ``fileno``.

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

Over 400 lines: a TLS session over memory BIOs shared by two threads, with the
handshake, alert reading and shutdown that make that safe.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from kokoro_service.errors import ConfigError, TlsError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["PEER_CLOSED_IN_HANDSHAKE", "TlsConn", "client_context", "server_context"]

# The reason of a handshake the peer left before finishing (a TCP health check, a probe).
PEER_CLOSED_IN_HANDSHAKE = "peer closed during the TLS handshake"

# Plaintext taken per SSLObject.write: a few full records, and a bound on the encrypted
# bytes held in memory before they reach the socket.
_WRITE_CHUNK = 64 * 1024
# Raw bytes taken from the socket per read.
_READ_CHUNK = 64 * 1024
# After a failed send, how many reads to look through for the peer's alert.
_ALERT_SCAN_READS = 16

# OpenSSL reasons for bytes that are not a TLS record at all.
_NOT_TLS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "HTTP_REQUEST",
        "HTTPS_PROXY_REQUEST",
        "UNKNOWN_PROTOCOL",
        "PACKET_LENGTH_TOO_LONG",
        "RECORD_LENGTH_MISMATCH",
        "RECORD_LAYER_FAILURE",
        "UNEXPECTED_RECORD",
        "WRONG_SSL_VERSION",
    }
)
_NO_COMMON_VERSION = frozenset(
    {"UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE", "VERSION_TOO_LOW", "VERSION_TOO_HIGH"}
)
# Alerts a peer sends when it refuses the certificate this end presented (or its absence).
_CERT_ALERTS = frozenset(
    {
        "bad certificate",
        "unsupported certificate",
        "certificate revoked",
        "certificate expired",
        "certificate unknown",
        "unknown ca",
        "certificate required",
        "access denied",
    }
)
_ALERT = re.compile(r"^(?:SSLV3|TLSV1|TLSV13)_ALERT_(\w+)$")


# ---------------------------------------------------------------------------- contexts


def server_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """The text port's context: TLS 1.2 or later, this instance's certificate and key, and,
    with ``client_ca``, client certificates required and checked against that bundle.

    Raises :class:`ConfigError` naming the file and the setting at fault.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    _load_chain(context, cert, key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        _load_trust(context, client_ca, "tls_client_ca", "client CA bundle")
    return context


def client_context(cert: Path | None, key: Path | None, ca: Path | None) -> ssl.SSLContext:
    """The context for dialing an audio processor: TLS 1.2 or later, its certificate
    checked (chain and host name) against ``ca``, or the system's trust store without it;
    ``cert``/``key`` presented as this instance's client certificate when given.

    Raises :class:`ConfigError` naming the file and the setting at fault.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED
    _harden(context)
    if ca is not None:
        _load_trust(context, ca, "tls_sink_ca", "sink CA bundle")
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert is not None:
        _load_chain(context, cert, key)
    elif key is not None:
        raise ConfigError(f"TLS key {key} given without a certificate", "tls_cert")
    return context


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Renegotiation would make a write wait for a read that another thread owns; nothing
    # here needs it (TLS 1.3 has none at all).
    context.options |= ssl.OP_NO_RENEGOTIATION


def _read_file(path: Path, setting: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}", setting) from None


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path | None) -> None:
    """Load ``cert`` (and ``key``), blaming the right file when either is unusable."""
    _read_file(cert, "tls_cert", "TLS certificate")
    if key is not None:
        _read_file(key, "tls_key", "TLS key")
    # Parse the certificate alone first: load_cert_chain's errors do not say which file.
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=str(cert))
    except ssl.SSLError as exc:
        raise ConfigError(
            f"TLS certificate {cert} holds no usable PEM certificate ({_reason(exc)})",
            "tls_cert",
        ) from None
    where = cert if key is None else key

    def no_passphrase() -> bytes:
        # Without a callback, OpenSSL would prompt on the terminal for an encrypted key.
        raise ConfigError(f"TLS key {where} is encrypted; give an unencrypted PEM key", "tls_key")

    try:
        context.load_cert_chain(str(cert), None if key is None else str(key), no_passphrase)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"TLS key {where} does not match the certificate {cert}", "tls_key"
            ) from None
        # OpenSSL says only "PEM lib" for a file without a key, or with a broken one.
        detail = "" if exc.reason in (None, "PEM_LIB") else f" ({_reason(exc)})"
        raise ConfigError(
            f"TLS key {where} holds no usable PEM private key{detail}", "tls_key"
        ) from None
    except OSError as exc:  # the file vanished between the checks above and this load
        raise ConfigError(
            f"cannot read TLS key {where}: {exc.strerror or exc}", "tls_key"
        ) from None


def _load_trust(context: ssl.SSLContext, path: Path, setting: str, what: str) -> None:
    _read_file(path, setting, what)
    try:
        context.load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{what} {path} holds no usable PEM certificate ({_reason(exc)})", setting
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}", setting) from None


# ---------------------------------------------------------------------------- errors


def _reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason in words: ``WRONG_VERSION_NUMBER`` -> ``wrong version number``."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return str(exc.verify_message)
    reason = exc.reason
    if reason:
        match = _ALERT.match(reason)
        return (match.group(1) if match else reason).lower().replace("_", " ")
    return str(exc.strerror or exc)


def _describe(exc: ssl.SSLError, *, server_side: bool, handshake: bool) -> str:
    """A human reason for a TLS failure, for the log line that closes the connection."""
    reason = exc.reason or ""
    words = _reason(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        if server_side:
            return f"client certificate rejected: {words}"
        return f"certificate verify failed: {words}"
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return "client certificate rejected: the client presented none"
    if reason in _NOT_TLS:
        if server_side:
            return "not TLS (a plaintext client on the TLS port?)"
        return "not TLS (a plaintext server on that port?)"
    if reason in _NO_COMMON_VERSION or reason == "TLSV1_ALERT_PROTOCOL_VERSION":
        return f"no TLS version in common (TLS 1.2 or later is required): {words}"
    if reason == "NO_SHARED_CIPHER":
        return "no TLS cipher in common"
    if isinstance(exc, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING":
        return PEER_CLOSED_IN_HANDSHAKE if handshake else "peer closed abruptly"
    if _ALERT.match(reason):
        if words in _CERT_ALERTS:
            return f"peer rejected our certificate: {words}"
        return f"peer sent TLS alert: {words}"
    return f"TLS handshake failed: {words}" if handshake else f"TLS error: {words}"


def _bad_fd() -> OSError:
    return OSError(errno.EBADF, os.strerror(errno.EBADF))


# ---------------------------------------------------------------------------- waiting


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _wait(fd: int, events: int, deadline: float | None) -> int:
    """Wait until ``fd`` reports one of ``events`` (or an error); 0 when the deadline passes.

    ``select.poll`` rather than ``select.select``: a busy daemon's descriptors pass 1024.
    """
    if fd < 0:
        raise _bad_fd()
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
                raise _bad_fd()
            return revents


# ---------------------------------------------------------------------------- session


class _Session:
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
                if not _wait(self.raw.fileno(), select.POLLOUT, deadline):
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
                    return _describe(exc, server_side=self.server_side, handshake=False)
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
                    _describe(failure, server_side=self.server_side, handshake=False)
                ) from failure
            if data is not None:
                return data
            if self.pull():
                continue
            events = select.POLLIN
            if self.unsent.nbytes and not self.send_failed and not self.send_lock.locked():
                events |= select.POLLOUT  # an answer is stuck and no sender will send it
            revents = _wait(self.raw.fileno(), events, deadline)
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
                    _describe(exc, server_side=self.server_side, handshake=False)
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


# ---------------------------------------------------------------------------- handle


class TlsConn:
    """One handle on a TLS connection, used like the plain socket it replaces.

    Responsibilities: the handshake, with a reason in words when it fails; ``recv`` and
    ``sendmsg`` with this handle's own timeout, safe to call at once from two threads
    through two handles (:meth:`dup`); close_notify on ``shutdown(SHUT_WR)``; closing the
    socket when the last handle closes.  ``recv`` returns ``b""`` on close_notify and on
    a TCP close alike; TLS failures raise :class:`TlsError`, an ``OSError``.
    """

    def __init__(self, session: _Session, timeout: float | None) -> None:
        self._session = session
        self._timeout = timeout
        self._closed = False

    @classmethod
    def server(cls, sock: socket.socket, context: ssl.SSLContext) -> TlsConn:
        """Wrap an accepted socket as the server end; call :meth:`handshake` next.

        ``sock`` is taken over: made non-blocking, and closed with the last handle.
        """
        return cls._wrap(sock, context, server_side=True, server_hostname=None)

    @classmethod
    def client(cls, sock: socket.socket, context: ssl.SSLContext, server_hostname: str) -> TlsConn:
        """Wrap a connected socket as the client end of ``server_hostname``, whose
        certificate must name it; call :meth:`handshake` next.

        ``sock`` is taken over: made non-blocking, and closed with the last handle.
        """
        return cls._wrap(sock, context, server_side=False, server_hostname=server_hostname)

    @classmethod
    def _wrap(
        cls,
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None,
    ) -> TlsConn:
        timeout = sock.gettimeout()  # the handle keeps the socket's timeout, as dup() does
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = context.wrap_bio(
            incoming, outgoing, server_side=server_side, server_hostname=server_hostname
        )
        sock.setblocking(False)
        return cls(_Session(sock, obj, incoming, outgoing, server_side=server_side), timeout)

    # -- socket calls ------------------------------------------------------------------

    def handshake(self, timeout: float) -> None:
        """Complete the TLS handshake within ``timeout`` seconds, or raise TlsError."""
        s = self._enter()
        try:
            self._handshake(s, timeout)
        finally:
            s.leave()

    def _handshake(self, s: _Session, timeout: float) -> None:
        if s.handshaken:
            return
        deadline = time.monotonic() + timeout
        late = f"no TLS handshake within {timeout:g}s"
        try:
            while True:
                failure: ssl.SSLError | None = None
                done = False
                with s.ssl_lock:
                    try:
                        s.obj.do_handshake()
                        done = True
                    except ssl.SSLWantReadError:
                        pass
                    except ssl.SSLError as exc:
                        failure = exc
                if failure is not None:
                    s.flush_nowait()  # the alert, so the peer learns why too
                    raise TlsError(
                        _describe(failure, server_side=s.server_side, handshake=True)
                    ) from failure
                with s.send_lock:
                    try:
                        s.flush(max(0.0, deadline - time.monotonic()))
                    except TimeoutError:
                        raise TlsError(late) from None
                if done:
                    s.handshaken = True
                    return
                if s.raw_eof:
                    raise TlsError(PEER_CLOSED_IN_HANDSHAKE)
                if s.pull():
                    continue
                if not _wait(s.raw.fileno(), select.POLLIN, deadline):
                    raise TlsError(late)
        except TlsError:
            raise
        except OSError as exc:
            if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                raise TlsError(PEER_CLOSED_IN_HANDSHAKE) from exc
            raise TlsError(f"TLS handshake failed: {exc.strerror or exc}") from exc

    def settimeout(self, value: float | None) -> None:
        """This handle's timeout for recv, sendmsg and shutdown; None waits for ever."""
        if value is not None and value < 0:
            raise ValueError("Timeout value out of range")
        self._timeout = value

    def gettimeout(self) -> float | None:
        return self._timeout

    def recv(self, bufsize: int, /) -> bytes:
        """Up to ``bufsize`` bytes of plaintext; ``b""`` once the peer has closed.

        Raises TimeoutError when nothing comes within this handle's timeout.
        """
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        s = self._enter()
        try:
            if bufsize == 0:
                return b""
            self._need_handshake(s)
            return s.recv(bufsize, self._timeout)
        finally:
            s.leave()

    def sendmsg(self, buffers: Iterable[ReadableBuffer], /) -> int:
        """Encrypt and send every byte of ``buffers``; return how many there were.

        Unlike a socket's, never a partial count: raises TimeoutError when the peer
        accepts nothing for this handle's timeout (the connection is then unusable for
        sending, since part of a record may be out).
        """
        s = self._enter()
        try:
            self._need_handshake(s)
            return s.send(buffers, self._timeout)
        finally:
            s.leave()

    def dup(self) -> TlsConn:
        """Another handle on the same session, with this one's timeout; the socket closes
        when every handle is closed."""
        s = self._enter()
        try:
            s.add_handle()
            return TlsConn(s, self._timeout)
        finally:
            s.leave()

    def shutdown(self, how: int, /) -> None:
        """``SHUT_WR``: close_notify after all that was sent, then FIN; the peer reads
        every byte before it sees the close.  ``SHUT_RD``/``SHUT_RDWR``: the socket's own
        shutdown, at once (an abort; safe while another thread is sending)."""
        s = self._enter()
        try:
            if how == socket.SHUT_WR:
                s.close_write(self._timeout)
            else:
                s.raw.shutdown(how)
        finally:
            s.leave()

    def close(self) -> None:
        """Close this handle (again is harmless); the last one closes the socket."""
        if self._closed:
            return
        self._closed = True
        self._session.drop_handle()

    def fileno(self) -> int:
        """The raw socket's descriptor, or -1 once this handle is closed."""
        return -1 if self._closed else self._session.raw.fileno()

    # -- for log lines -----------------------------------------------------------------

    @property
    def version(self) -> str | None:
        """The TLS version agreed, e.g. ``TLSv1.3``; None before the handshake."""
        with self._session.ssl_lock:
            return self._session.obj.version()

    @property
    def peer_subject(self) -> str | None:
        """Who the peer's verified certificate names (its CN, else its first DNS or IP
        name); None without a verified certificate."""
        with self._session.ssl_lock:
            try:
                cert = self._session.obj.getpeercert()
            except ValueError:  # before the handshake
                return None
        if not cert:
            return None
        info: dict[str, Any] = dict(cert)  # typeshed types every value as str | tuple
        for rdn in info.get("subject", ()):
            for name, value in rdn:
                if name == "commonName":
                    return str(value)
        for kind, value in info.get("subjectAltName", ()):
            if kind in ("DNS", "IP Address"):
                return str(value)
        return None

    # -- helpers -----------------------------------------------------------------------

    def _enter(self) -> _Session:
        if self._closed:
            raise _bad_fd()
        self._session.enter()
        return self._session

    @staticmethod
    def _need_handshake(s: _Session) -> None:
        if not s.handshaken:
            raise TlsError("TLS handshake not done")

    def __enter__(self) -> TlsConn:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._session.raw.fileno()}"
        side = "server" if self._session.server_side else "client"
        return f"<TlsConn {side} {state} timeout={self._timeout}>"
