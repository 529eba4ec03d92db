"""The HTTP port's server: uvicorn, in a thread with its own event loop.

The socket is bound here, before uvicorn runs, so a port in use is a
:class:`~kokoro_service.errors.StartupError` from :meth:`HttpServer.start` rather than
uvicorn's ``sys.exit`` inside a thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from kokoro_service.errors import StartupError
from kokoro_service.logs import RateLimitedLog, quiet_loop_errors

log = logging.getLogger("kokoro_service.adapters.http")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


def guarded_h11(
    max_connections: int, first_request_timeout: float, on_refused: Callable[[], None]
) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the text port's two guards, which uvicorn lacks.

    - At most ``max_connections`` open: one more is closed as it arrives (uvicorn's
      ``limit_concurrency`` answers 503 only once a request comes, so idle connections
      still held descriptors until the process ran out).
    - A connection that sends nothing for ``first_request_timeout`` is closed (uvicorn
      times out only between requests).
    """
    refusals = RateLimitedLog(log)

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                on_refused()
                refusals.warning(
                    "maxconn",
                    "http connection refused peer=%s: max_http_connections=%d reached",
                    f"{self.client[0]}:{self.client[1]}" if self.client else "?",
                    max_connections,
                )
                transport.abort()
                return
            # The keep-alive timer's handler closes the connection; any byte cancels it.
            self.timeout_keep_alive_task = self.loop.call_later(
                first_request_timeout, self.timeout_keep_alive_handler
            )

    return GuardedH11Protocol


class HttpServer:
    """Serves an ASGI app on ``host:port`` from a thread of its own.

    Responsibilities: bind (or fail start-up with the reason); ``start()`` returns once
    uvicorn accepts connections, or raises :class:`StartupError` with the thread's
    error; ``stop()`` may be called from any thread, any number of times, and joins.
    """

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        *,
        tls: tuple[Path, Path] | None = None,
        max_connections: int = 64,
        first_request_timeout: float = 10.0,
        on_refused: Callable[[], None] = lambda: None,
    ) -> None:
        """``tls``: (certificate, key) to serve HTTPS.  Clients are not asked for
        certificates here: health checkers and scrapers seldom have one."""
        self._config = uvicorn.Config(
            app,
            http=guarded_h11(max_connections, first_request_timeout, on_refused),
            log_config=None,  # the daemon's logging stays as configured
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            # --allow judges the connecting address; no header may stand in for it.
            proxy_headers=False,
            ssl_certfile=str(tls[0]) if tls else None,
            ssl_keyfile=str(tls[1]) if tls else None,
        )
        self.tls = tls is not None
        self._host, self._port = host, port
        self._server = uvicorn.Server(self._config)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._stop_lock = threading.Lock()

    @property
    def address(self) -> tuple[str, int]:
        if self._sock is None:
            raise RuntimeError("http server not started")
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        try:
            sock = socket.create_server((self._host, self._port), family=family, backlog=128)
        except OSError as exc:
            raise StartupError(
                f"cannot bind the HTTP port {self._host}:{self._port}: {exc.strerror or exc}"
            ) from exc
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if not self._server.started:
            why = self._error or f"not serving after {START_TIMEOUT:g}s"
            self.stop()
            raise StartupError(f"the HTTP port failed to start: {why}") from self._error
        log.info(
            "http port %s:%d%s: /metrics /healthz /readyz /v1/audio/speech",
            *self.address,
            " (tls)" if self.tls else "",
        )

    async def _serve(self) -> None:
        quiet_loop_errors(asyncio.get_running_loop(), RateLimitedLog(log), "http")
        await self._server.serve(sockets=[self._sock] if self._sock else None)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # SystemExit too: uvicorn exits on some start errors
            self._error = exc
            log.exception("http port stopped")

    def stop(self) -> None:
        with self._stop_lock:
            self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(STOP_TIMEOUT)
                if self._thread.is_alive():
                    self._server.force_exit = True
                    self._thread.join(STOP_TIMEOUT)
            if self._sock is not None:
                self._sock.close()
