"""The server: sockets, threads and their lifecycle.

Threads: one accept loop, one reader per text connection (:mod:`.connection`), one UDP
registrar, ``workers`` synthesis workers (:mod:`kokoro_service.calls.workers`), and one
writer per audio destination (:mod:`kokoro_service.calls.writers`).  What happens to a
call is :mod:`kokoro_service.calls.table`.  The adapters see only :meth:`Server.local_calls`,
health and metrics only :meth:`Server.status`.

Over 400 lines: the lifecycle, the accept loop with its descriptor reserve and the UDP
registrar share one stop flag and one set of threads.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable

from kokoro_service.calls.pacing import Pacing
from kokoro_service.calls.routing import Registry
from kokoro_service.calls.scheduler import Scheduler
from kokoro_service.calls.table import Calls
from kokoro_service.calls.workers import BatchCounts, Worker
from kokoro_service.calls.writers import Conn
from kokoro_service.config import TICK, Settings, is_loopback
from kokoro_service.errors import ProtocolError, StartupError
from kokoro_service.logs import RateLimitedLog
from kokoro_service.ops.metrics import Metrics
from kokoro_service.ops.status import ServerStatus
from kokoro_service.ops.trace import SegmentTrace
from kokoro_service.server.connection import TextConnection, close_quietly
from kokoro_service.server.local_calls import LocalCalls
from kokoro_service.synthesis.engine import Engine
from kokoro_service.wire.codec import Register, parse_datagram
from kokoro_service.wire.tls import TlsConn, client_context, server_context

log = logging.getLogger("kokoro_service.server.server")

START_TIMEOUT = 30.0  # how long start() waits for every thread to report ready
_ACCEPT_BACKOFF = 0.1  # after a failed accept: descriptors free up as calls end
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


class Server:
    """Serves the wire protocol (docs/protocol.md) with a loaded :class:`Engine`.

    Responsibilities: bind the TCP and UDP sockets; accept text connections within
    ``--allow`` and ``--max-connections``, over TLS when configured; receive and expire
    registrations; run the workers; stop.  Calls beyond ``--max-calls`` (its default
    from ``capacity``, the warm-up's estimate) are refused as busy by :class:`Calls`.

    ``start()`` binds, starts every thread and returns once each has reported ready, or
    raises :class:`StartupError` with the first thread's error, leaving nothing open.
    ``stop()`` may be called from any thread, any number of times: it drains for at most
    ``drain_timeout``, ENDs every call and joins every thread it started.
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        voice: str,
        capacity: float | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.voice = voice
        self.metrics = metrics if metrics is not None else Metrics()
        self.max_batch = settings.batch_limit(engine.device)
        self.batches = BatchCounts()
        self.scheduler = Scheduler(settings.batch_policy)
        self.trace: SegmentTrace | None = None
        if settings.trace_file is not None:
            try:
                self.trace = SegmentTrace(settings.trace_file)
            except OSError as exc:
                raise StartupError(f"cannot open --trace-file: {exc}") from exc
        self.registry = Registry(settings.max_registrations, settings.registration_ttl)
        self.pacing = Pacing(settings.workers)
        # Both contexts read their files now: a bad one fails start-up, not a call.
        self._tls: ssl.SSLContext | None = None
        sink_tls = None
        try:
            if settings.tls_cert is not None and settings.tls_key is not None:
                self._tls = server_context(
                    settings.tls_cert, settings.tls_key, settings.tls_client_ca
                )
            # Sinks only on request: a seed processor's port reads plaintext frames.
            if settings.tls_sink_ca is not None:
                sink_tls = client_context(settings.tls_cert, settings.tls_key, settings.tls_sink_ca)
        except BaseException:
            if self.trace is not None:  # no stop() will close it: the caller has no server
                self.trace.close()
            raise
        self.calls = Calls(
            settings,
            engine,
            voice=voice,
            scheduler=self.scheduler,
            registry=self.registry,
            pacing=self.pacing,
            g2p_ahead=self.max_batch > 1,
            metrics=self.metrics,
            max_calls=settings.admission_limit(capacity),
            sink_tls=sink_tls,
        )
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._readers: set[threading.Thread] = set()
        self._readers_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._tcp: socket.socket | None = None
        self._udp: socket.socket | None = None
        self._thread_error: BaseException | None = None
        # Separate budgets: a flood of strangers' garbage must not silence the lines an
        # operator needs (connections refused for capacity, registrations).
        self._noise = RateLimitedLog(log)
        self._ops = RateLimitedLog(log)
        self._registrations = RateLimitedLog(log, interval=0.0, burst=200, rate=50.0)

    # ------------------------------------------------------------------ lifecycle

    @property
    def tcp_address(self) -> tuple[str, int]:
        return _address(self._tcp)

    @property
    def udp_address(self) -> tuple[str, int]:
        return _address(self._udp)

    @property
    def active_calls(self) -> int:
        return len(self.calls)

    @property
    def thread_error(self) -> BaseException | None:
        return self._thread_error

    @property
    def tls(self) -> ssl.SSLContext | None:
        """The text port's TLS context, which the adapters' ports serve with too."""
        return self._tls

    def status(self) -> ServerStatus:
        """A snapshot for health, readiness and the metrics."""
        waiting, synthesizing = self.scheduler.depths()
        return ServerStatus(
            thread_error=self._thread_error,
            active_calls=len(self.calls),
            max_calls=self.calls.max_calls,
            full=self.calls.full,
            worker_rtf=self.pacing.rtf,
            segments_waiting=waiting,
            segments_synthesizing=synthesizing,
            frames_queued=sum(c.route.queued_frames() for c in self.calls.live()),
            registrations=len(self.registry),
        )

    def local_calls(self) -> LocalCalls:
        """What the in-process adapters (Wyoming, HTTP) may use of this server."""
        return LocalCalls(
            settings=self.settings,
            metrics=self.metrics,
            voices=self.engine.voices.names,
            voice=self.voice,
            check_voice=self.engine.voices.check,
            open=self.open_local_call,
        )

    def start(self) -> None:
        """Bind both sockets, start every thread and wait until each is running."""
        s = self.settings
        self._tcp, self._udp = _bind(s)
        allowed = ",".join(str(n) for n in s.allow)
        if not is_loopback(s.host) and self._tls is None:
            log.warning(
                "listening on %s, beyond loopback, without TLS: text and audio cross the "
                "network in clear and unauthenticated (set --tls-cert and --tls-key); only "
                "peers in --allow (%s) are served",
                s.host,
                allowed,
            )
        elif not is_loopback(s.host):
            log.info(
                "listening on %s over TLS; only peers in --allow (%s) are served", s.host, allowed
            )
        workers = [
            Worker(
                self.engine,
                self.scheduler,
                self.calls,
                max_batch=self.max_batch,
                batch_chars=s.batch_chars,
                counts=self.batches,
                trace=self.trace,
                overlap_delivery=s.overlap_delivery,
            )
            for _ in range(s.workers)
        ]
        loops: list[tuple[str, Callable[[], None], Callable[[], None]]] = [
            ("accept", _nothing, self._accept_loop),
            ("registrar", _nothing, self._udp_loop),
        ] + [(f"worker-{i}", w.prepare, w.run) for i, w in enumerate(workers)]
        readies = []
        for name, prepare, loop in loops:
            ready = threading.Event()
            t = threading.Thread(
                target=self._guard, args=(prepare, loop, ready), name=name, daemon=True
            )
            self._threads.append(t)
            readies.append(ready)
            t.start()
        deadline = time.monotonic() + START_TIMEOUT
        late = [r for r in readies if not r.wait(max(0.0, deadline - time.monotonic()))]
        if self._thread_error is not None or late:
            why = self._thread_error or f"{len(late)} thread(s) not running after {START_TIMEOUT}s"
            self.stop(drain_timeout=0.0)
            raise StartupError(f"a server thread failed to start: {why}") from self._thread_error
        log.info(
            "listening tcp=%s:%d%s udp=%s:%d workers=%d max_batch=%d max_calls=%s voice=%s lang=%s",
            *self.tcp_address,
            " (tls)" if self._tls is not None else "",
            *self.udp_address,
            s.workers,
            self.max_batch,
            self.calls.max_calls or "unlimited",
            self.voice,
            s.lang,
        )

    def _guard(
        self, prepare: Callable[[], None], loop: Callable[[], None], ready: threading.Event
    ) -> None:
        try:
            prepare()
        except BaseException as exc:
            self._died(exc)
            return
        finally:
            # Set after _died has recorded the error: start() reads it once every thread
            # got here.
            ready.set()
        try:
            loop()
        except BaseException as exc:
            self._died(exc)

    def _died(self, exc: BaseException) -> None:
        self._thread_error = exc
        log.exception("thread %s died", threading.current_thread().name)
        self._stopping.set()

    def stop(self, drain_timeout: float | None = None) -> bool:
        """Stop accepting, finish owed audio within the drain timeout, END every call.

        Thread-safe and idempotent.  Returns True when every call drained in time.
        """
        with self._stop_lock:
            if self._stopped.is_set():
                return True
            timeout = self.settings.drain_timeout if drain_timeout is None else drain_timeout
            deadline = time.monotonic() + timeout
            self._stopping.set()
            for sock in (self._tcp, self._udp):
                if sock is not None:
                    sock.close()
            with self._readers_lock:
                readers = list(self._readers)
            for t in readers:  # readers see the flag within a tick and close call input
                t.join(max(0.0, deadline - time.monotonic()))
            while self.active_calls and time.monotonic() < deadline:
                time.sleep(0.02)
            left = self.calls.live()
            for call in left:
                self.calls.abandon(call, "daemon stopped (drain timeout)")
            self.scheduler.stop()
            for t in self._threads:
                t.join(max(1.0, deadline - time.monotonic()))
            self.calls.join_routes(deadline)
            if self.trace is not None:
                self.trace.close()
            self._stopped.set()
            log.info("stopped drained=%s", not left)
            return not left

    # ------------------------------------------------------------------ TCP

    def _accept_loop(self) -> None:
        tcp = self._tcp
        assert tcp is not None  # noqa: S101 - start() binds before starting this loop
        spare = _Spare()
        try:
            while not self._stopping.is_set():
                try:
                    conn, addr = tcp.accept()
                except TimeoutError:
                    continue
                except OSError as exc:
                    if self._stopping.is_set():
                        return
                    self._accept_failed(tcp, exc, spare)
                    continue
                spare.restore()
                self._accepted(conn, addr)
        finally:
            spare.close()

    def _accept_failed(self, tcp: socket.socket, exc: OSError, spare: _Spare) -> None:
        """Out of descriptors (or kernel memory): shed the connection waiting at the head
        of the queue, with the spare descriptor kept for this, so its peer hears a close
        rather than hanging in the backlog; then pause, and go on serving."""
        self._ops.warning(
            "accept",
            "accept failed on the text port: %s; shedding connections until descriptors "
            "free up (max_connections=%d; raise LimitNOFILE or lower the caps)",
            exc.strerror or exc,
            self.settings.max_connections,
        )
        if exc.errno in _OUT_OF_DESCRIPTORS and spare.release():
            with contextlib.suppress(OSError):
                conn, _ = tcp.accept()
                self.metrics.refused("resources")
                close_quietly(conn)
            spare.restore()
        self._stopping.wait(_ACCEPT_BACKOFF)

    def _accepted(self, conn: socket.socket, addr: tuple[object, ...]) -> None:
        peer = _peer(addr)
        if not self.settings.peer_allowed(str(addr[0])):
            self._noise.warning(
                f"deny:{addr[0]}", "connection refused peer=%s: not in --allow", peer
            )
            self.metrics.refused("not_allowed")
            close_quietly(conn)
            return
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # reset before we got to it
            close_quietly(conn)
            return
        if self._tls is not None:
            # The handshake runs in the connection's own thread, within --hello-timeout,
            # so a peer that never finishes it holds up no one else.
            self.serve_connection(TlsConn.server(conn, self._tls), peer)
        else:
            self.serve_connection(conn, peer)

    def serve_connection(self, conn: Conn, peer: str) -> bool:
        """Serve the wire protocol on ``conn`` in a reader thread of its own.

        The accept loop's connections come here, and so do in-process adapters (the
        Wyoming server's, over a socket pair), so that every call shares the same
        scheduler, limits and shutdown.  Returns False, with ``conn`` closed, when
        ``--max-connections`` are already served or the server is stopping.
        """
        with self._readers_lock:
            self._readers = {t for t in self._readers if t.is_alive()}
            full = len(self._readers) >= self.settings.max_connections
            if not full and not self._stopping.is_set():
                handler = TextConnection(
                    conn,
                    peer,
                    settings=self.settings,
                    calls=self.calls,
                    stopping=self._stopping,
                    stopped=self._stopped,
                    noise=self._noise,
                )
                t = threading.Thread(target=handler.serve, name=f"conn:{peer}", daemon=True)
                try:
                    t.start()
                except RuntimeError as exc:  # "can't start new thread": the task limit
                    self.metrics.refused("resources")
                    self._ops.warning("threads", "connection refused peer=%s: %s", peer, exc)
                    close_quietly(conn)
                    return False
                self._readers.add(t)
                return True
        if full:
            self.metrics.refused("max_connections")
            self._ops.warning(
                "maxconn",
                "connection refused peer=%s: max_connections=%d reached",
                peer,
                self.settings.max_connections,
            )
        close_quietly(conn)
        return False

    def open_local_call(self, call_id: str, peer: str, opening: bytes) -> socket.socket | None:
        """A connection for an in-process adapter's call (Wyoming, HTTP), its ``opening``
        frames (HELLO first) already sent; None when the instance is full (logged and
        counted as busy) or refuses connections.

        The call's place under ``--max-calls`` is held until its HELLO is read, so the
        adapter can answer "busy" in its own protocol: an END alone would read as silence
        to its client.  The HELLO is sent here, so that no failure of the adapter's can
        leave a place held for a HELLO that never comes.
        """
        if not self.calls.reserve(call_id, peer):
            return None
        ours, theirs = socket.socketpair()
        if not self.serve_connection(ours, peer):
            self.calls.release(call_id)
            theirs.close()
            return None
        try:
            theirs.sendall(opening)  # a few hundred bytes: the socket buffer takes them
        except OSError:
            self.calls.release(call_id)
            theirs.close()
            return None
        return theirs

    # ------------------------------------------------------------------ UDP

    def _udp_loop(self) -> None:
        udp = self._udp
        assert udp is not None  # noqa: S101 - start() binds before starting this loop
        swept = time.monotonic()
        while not self._stopping.is_set():
            if time.monotonic() - swept >= TICK:
                swept = time.monotonic()
                self._expire_registrations()
            try:
                data, addr = udp.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            try:
                self._datagram(data, addr)
            except Exception:  # a bug or an exhausted process must not end registrations
                self._ops.exception("udp", "datagram from peer=%s failed", _peer(addr))

    def _expire_registrations(self) -> None:
        expired = self.registry.expire(lambda call_id: self.calls.get(call_id) is not None)
        for call_id in expired:
            # Every instance of a fleet hears every REGISTER: expiry is routine, not news.
            log.debug("registration expired call=%s: not held here", call_id)
        if expired:
            self.metrics.registrations_expired.inc(len(expired))

    def _datagram(self, data: bytes, addr: tuple[object, ...]) -> None:
        peer = _peer(addr)
        if not self.settings.peer_allowed(str(addr[0])):
            self._noise.warning(
                f"udpdeny:{addr[0]}", "datagram dropped peer=%s: not in --allow", peer
            )
            return
        try:
            msg = parse_datagram(data)
        except ProtocolError as exc:
            self._noise.warning(f"udpbad:{addr[0]}", "datagram dropped peer=%s: %s", peer, exc)
            return
        # Registry first, call second: a HELLO that opens the call meanwhile reads the
        # registry after it is in the table, so one of the two routes it.
        if isinstance(msg, Register):
            new, evicted = self.registry.register(msg.call_id)
            if evicted is not None:
                self._ops.warning(
                    "evict",
                    "registration table full (max_registrations=%d): forgot call=%s",
                    self.settings.max_registrations,
                    evicted,
                )
            call = self.calls.get(msg.call_id)
            if new:
                self._registrations.info(
                    f"reg:{msg.call_id}",
                    "register call=%s peer=%s active=%s",
                    msg.call_id,
                    peer,
                    call is not None,
                )
        else:
            existed = self.registry.unregister(msg.call_id)
            call = self.calls.get(msg.call_id)
            self._registrations.info(
                f"unreg:{msg.call_id}",
                "unregister call=%s peer=%s was_registered=%s",
                msg.call_id,
                peer,
                existed,
            )
        if call is not None:
            call.route.follow_registration()


def _bind(s: Settings) -> tuple[socket.socket, socket.socket]:
    """Both sockets bound, or a StartupError with neither left open."""
    family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
    opened: list[socket.socket] = []
    try:
        tcp = socket.socket(family, socket.SOCK_STREAM)
        opened.append(tcp)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((s.host, s.tcp_port))
        tcp.listen(min(s.max_connections, 1024))
        tcp.settimeout(TICK)
        udp = socket.socket(family, socket.SOCK_DGRAM)
        opened.append(udp)
        udp.bind((s.host, s.udp_port))
        udp.settimeout(TICK)
    except OSError as exc:
        for sock in opened:
            sock.close()
        raise StartupError(
            f"cannot bind {s.host} tcp:{s.tcp_port} udp:{s.udp_port}: {exc.strerror or exc}"
        ) from exc
    return tcp, udp


def _nothing() -> None:
    """The accept and registrar loops need no preparation in their thread."""


def _address(sock: socket.socket | None) -> tuple[str, int]:
    if sock is None:
        raise RuntimeError("server not started")
    addr = sock.getsockname()
    return str(addr[0]), int(addr[1])


def _peer(addr: tuple[object, ...]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class _Spare:
    """One descriptor held in reserve, so that an accept loop out of descriptors can still
    accept the connection at the head of its queue and close it."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self.restore()

    def release(self) -> bool:
        if self._fd is None:
            return False
        os.close(self._fd)
        self._fd = None
        return True

    def restore(self) -> None:
        if self._fd is None:
            with contextlib.suppress(OSError):
                self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        self.release()
