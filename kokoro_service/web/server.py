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
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from ..errors import StartupError

log = logging.getLogger("kokoro_service.web")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


class HttpServer:
    """Serves an ASGI app on ``host:port`` from a thread of its own.

    Responsibilities: bind (or fail start-up with the reason); ``start()`` returns once
    uvicorn accepts connections, or raises :class:`StartupError` with the thread's
    error; ``stop()`` may be called from any thread, any number of times, and joins.
    """

    def __init__(
        self, app: ASGIApp, host: str, port: int, *, tls: tuple[Path, Path] | None = None
    ) -> None:
        """``tls``: (certificate, key) to serve HTTPS.  Clients are not asked for
        certificates here: health checkers and scrapers seldom have one."""
        self._config = uvicorn.Config(
            app,
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

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock] if self._sock else None))
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
