"""The HTTP application: ``/metrics``, ``/healthz``, ``/readyz``, and OpenAI's speech API
under ``/v1`` (:mod:`.openai`).

``/healthz`` answers 200 while the process serves or loads (a liveness probe: restart
only what is wedged), 503 once a server thread has died.  ``/readyz`` answers 200 only
when the model is loaded and warm, the daemon is not draining and it is under
``--max-calls`` (a readiness probe: send the next call elsewhere).  Both bodies are JSON
with a reason a person can read.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kokoro_service.adapters.http import openai
from kokoro_service.config import Settings, is_loopback
from kokoro_service.logs import RateLimitedLog
from kokoro_service.ops.metrics import Metrics
from kokoro_service.ops.readiness import Lifecycle
from kokoro_service.server.local_calls import LocalCalls

log = logging.getLogger("kokoro_service.adapters.http")


def create_app(
    metrics: Metrics,
    lifecycle: Lifecycle,
    settings: Settings,
    serving: Callable[[], LocalCalls | None],
) -> ASGIApp:
    """The ASGI app of the HTTP port, its clients limited to ``--allow``; ``serving()``
    gives the daemon's calls once it serves, for the speech API."""

    async def scrape(_: Request) -> Response:
        # Collecting takes the server's locks briefly: off the event loop.
        body = await run_in_threadpool(generate_latest, metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> Response:
        ok, reason = lifecycle.health()
        return JSONResponse({"healthy": ok, "reason": reason}, status_code=200 if ok else 503)

    async def readyz(_: Request) -> Response:
        ok, reason = lifecycle.readiness()
        return JSONResponse({"ready": ok, "reason": reason}, status_code=200 if ok else 503)

    app = Starlette(
        routes=[
            Route("/metrics", scrape, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            *openai.routes(
                lifecycle, serving, api_key=settings.api_key, open_to=speech_gate(settings)
            ),
        ]
    )
    return RequestId(AllowList(app, settings.peer_allowed))


def speech_gate(settings: Settings) -> Callable[[str], str | None]:
    """Why a client may not use the speech API, or None: beyond loopback it needs TLS
    on the HTTP port or ``--api-key``, since it spends the host's compute for anyone."""
    local = is_loopback(settings.http_host)
    guarded = local or settings.tls or settings.api_key is not None
    if not local and settings.api_key is None:
        if settings.tls:
            log.warning(
                "the speech API on %s is open to every client in --allow (TLS, no --api-key)",
                settings.http_host,
            )
        else:
            log.info(
                "the speech API is off: the HTTP port is beyond loopback without TLS or --api-key"
            )

    def why_not(_host: str) -> str | None:
        if guarded:
            return None
        return (
            "the speech API is off: the HTTP port listens beyond loopback without TLS "
            "(--tls-cert) or --api-key"
        )

    return why_not


class AllowList:
    """ASGI middleware: answer 403 to a client outside ``--allow``, as the text port
    refuses it, logging each address at most every few seconds."""

    def __init__(self, app: ASGIApp, peer_allowed: Callable[[str], bool]) -> None:
        self.app = app
        self.peer_allowed = peer_allowed
        self._noise = RateLimitedLog(log)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        host = str(client[0]) if client else ""
        if scope["type"] == "http" and not self.peer_allowed(host):
            self._noise.warning(
                f"deny:{host}", "http request refused peer=%s: not in --allow", host
            )
            await PlainTextResponse("not in --allow\n", status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


# What a client's own request id may be: short and plain, so it can go back in a header and
# into a log line as it is.  Anything else is replaced, never echoed.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestId:
    """ASGI middleware: every response carries ``x-request-id``, the client's own where it
    sent a plain one, else a new one.  OpenAI's clients (LiveKit's plugin among them) read
    it, and warn on every response without it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_id)
