"""TlsConn: a handle on a TLS connection that the daemon uses like the plain socket.

The daemon reads a connection in one thread and writes it from another, through a
``dup()`` of the socket, with ``sendmsg``; :class:`ssl.SSLSocket` has no ``sendmsg`` or
``dup``, and is not safe in two threads at once.  :class:`TlsConn` offers the few socket
calls the daemon makes (``settimeout``, ``recv``, ``sendmsg``, ``dup``, ``shutdown``,
``close`` and ``fileno``) over a :class:`~kokoro_service.wire.tls.session.Session`, which
holds the locks that make them safe.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from kokoro_service.errors import TlsError
from kokoro_service.wire.tls.reasons import PEER_CLOSED_IN_HANDSHAKE, describe
from kokoro_service.wire.tls.session import Session, bad_fd, wait

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["TlsConn"]


class TlsConn:
    """One handle on a TLS connection, used like the plain socket it replaces.

    Responsibilities: the handshake, with a reason in words when it fails; ``recv`` and
    ``sendmsg`` with this handle's own timeout, safe to call at once from two threads
    through two handles (:meth:`dup`); close_notify on ``shutdown(SHUT_WR)``; closing the
    socket when the last handle closes.  ``recv`` returns ``b""`` on close_notify and on
    a TCP close alike; TLS failures raise :class:`TlsError`, an ``OSError``.
    """

    def __init__(self, session: Session, timeout: float | None) -> None:
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
        return cls(Session(sock, obj, incoming, outgoing, server_side=server_side), timeout)

    # -- socket calls ------------------------------------------------------------------

    def handshake(self, timeout: float) -> None:
        """Complete the TLS handshake within ``timeout`` seconds, or raise TlsError."""
        s = self._enter()
        try:
            self._handshake(s, timeout)
        finally:
            s.leave()

    def _handshake(self, s: Session, timeout: float) -> None:
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
                        describe(failure, server_side=s.server_side, handshake=True)
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
                if not wait(s.raw.fileno(), select.POLLIN, deadline):
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

    def _enter(self) -> Session:
        if self._closed:
            raise bad_fd()
        self._session.enter()
        return self._session

    @staticmethod
    def _need_handshake(s: Session) -> None:
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
