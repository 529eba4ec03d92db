"""OpenAI's speech API on the HTTP port: ``POST /v1/audio/speech``, ``GET /v1/models`` and
``GET /v1/voices``, for agent frameworks that speak to any OpenAI-compatible TTS server.

Each request becomes one call of the daemon's own, over a socket pair, exactly as a
phone call arrives on the text port: the same scheduler, limits (``--max-calls``
included), metrics and shutdown.  The call asks for s16le at 24 kHz; ``pcm`` and ``wav``
stream each AUDIO frame as it comes, so the first bytes leave with the first segment;
``mp3``, ``opus`` and ``flac`` are encoded by libsndfile once the reply is whole, since
their encoders need the whole stream to finish.  A client that goes away mid-stream
cancels its call at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import itertools
import json
import logging
import math
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import ProtocolError, VoiceError
from ..protocol import (
    CONTROL_SPEED_RANGE,
    SAMPLE_RATE,
    Audio,
    AudioStreamDecoder,
    Control,
    End,
    encode_bye,
    encode_control,
    encode_hello,
    encode_text,
)
from ..ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from ..readiness import Lifecycle
    from ..server import Server

log = logging.getLogger("kokoro_service.openai")

# OpenAI's documented speed range; Kokoro speaks 0.5-2.0, so the rest is clamped.
OPENAI_SPEED_RANGE = (0.25, 4.0)
MODELS = ("kokoro", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")
# response_format -> (libsndfile format, subtype, media type); pcm and wav are streamed.
ENCODED = {
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"),
    "opus": ("OGG", "OPUS", "audio/ogg"),
    "flac": ("FLAC", "PCM_16", "audio/flac"),
}
STREAMED = {"pcm": "audio/pcm", "wav": "audio/wav"}
UNSUPPORTED = {"aac": "no AAC encoder is installed (libsndfile has none)"}
MAX_BODY_BYTES = 1 << 20
_WIDTH = 2
_call_ids = itertools.count(1)


class RequestError(Exception):
    """A request that cannot be served: its status and OpenAI-style error body."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body = {"message": str(self), "type": kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


@dataclass(frozen=True)
class SpeechRequest:
    """A validated ``POST /v1/audio/speech`` body."""

    input: str
    voice: str
    speed: float
    response_format: str
    stream_format: str


def routes(
    lifecycle: Lifecycle, *, api_key: str | None, open_to: Callable[[str], str | None]
) -> list[Route]:
    """The API's routes.  ``open_to(client_host)`` returns why a client may not use it
    (None when it may): the daemon keeps it off beyond loopback without TLS or a key."""
    noise = RateLimitedLog(log)

    def guard(handler: Callable[[Request], Awaitable[Response]]) -> Any:
        async def guarded(request: Request) -> Response:
            try:
                host = request.client.host if request.client else ""
                why = open_to(host)
                if why is not None:
                    raise RequestError(403, why, code="endpoint_off")
                if api_key is not None:
                    given = request.headers.get("authorization", "")
                    if given != f"Bearer {api_key}":
                        noise.warning(
                            f"key:{host}", "openai request refused peer=%s: bad API key", host
                        )
                        raise RequestError(401, "missing or wrong API key", code="invalid_api_key")
                return await handler(request)
            except RequestError as exc:
                return exc.response()

        return guarded

    async def models(_: Request) -> Response:
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "kokoro-service"} for m in MODELS
        ]
        return JSONResponse({"object": "list", "data": data})

    async def voices(_: Request) -> Response:
        return JSONResponse({"voices": _server(lifecycle).engine.voices.names})

    async def speech(request: Request) -> Response:
        server = _server(lifecycle)
        body = await _read_json(request)
        req = parse_speech(body, server)
        return await _speak(server, req, request.client.host if request.client else "?")

    return [
        Route("/v1/audio/speech", guard(speech), methods=["POST"]),
        Route("/v1/models", guard(models), methods=["GET"]),
        Route("/v1/voices", guard(voices), methods=["GET"]),
        Route("/v1/audio/voices", guard(voices), methods=["GET"]),
    ]


def _server(lifecycle: Lifecycle) -> Server:
    server = lifecycle.server
    if server is None or lifecycle.draining:
        raise RequestError(503, "not ready: " + lifecycle.readiness()[1], code="not_ready")
    return server


async def _read_json(request: Request) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise RequestError(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
    raw = bytearray()
    async for chunk in request.stream():  # bounded as it arrives, whatever the header said
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise RequestError(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"the body is not JSON: {exc}") from None


def parse_speech(body: Any, server: Server) -> SpeechRequest:
    """Check a request body against what OpenAI documents and what the daemon can do."""
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise RequestError(400, "'input' must be a non-empty string", param="input")
    limit = server.settings.max_text_bytes
    if len(text.encode("utf-8")) > limit:
        raise RequestError(
            400, f"'input' is longer than {limit} bytes (--max-text-bytes)", param="input"
        )
    voice = body.get("voice")
    if isinstance(voice, dict):  # the newer SDKs may send {"id": ...}
        voice = voice.get("id")
    if not isinstance(voice, str) or not voice.strip():
        raise RequestError(400, "'voice' must name a voice or a blend", param="voice")
    try:
        server.engine.voices.check(voice)
    except VoiceError as exc:
        raise RequestError(400, str(exc), param="voice", code="unknown_voice") from None
    speed = body.get("speed", 1.0)
    lo, hi = OPENAI_SPEED_RANGE
    if (
        isinstance(speed, bool)
        or not isinstance(speed, int | float)
        or not math.isfinite(speed)
        or not lo <= speed <= hi
    ):
        raise RequestError(400, f"'speed' must be a number from {lo} to {hi}", param="speed")
    fmt = body.get("response_format", "mp3")
    if fmt in UNSUPPORTED:
        raise RequestError(400, f"'{fmt}': {UNSUPPORTED[fmt]}", param="response_format")
    if fmt not in STREAMED and fmt not in ENCODED:
        known = ", ".join([*STREAMED, *ENCODED])
        raise RequestError(
            400, f"'response_format' must be one of {known}", param="response_format"
        )
    stream_format = body.get("stream_format", "audio")
    if stream_format not in ("audio", "sse"):
        raise RequestError(400, "'stream_format' must be 'audio' or 'sse'", param="stream_format")
    if stream_format == "sse" and fmt != "pcm":
        raise RequestError(
            400, "'stream_format' 'sse' needs 'response_format' 'pcm'", param="stream_format"
        )
    clamped = min(max(float(speed), CONTROL_SPEED_RANGE[0]), CONTROL_SPEED_RANGE[1])
    return SpeechRequest(text, voice, clamped, fmt, stream_format)


async def _speak(server: Server, req: SpeechRequest, client: str) -> Response:
    """Open the call and answer with its audio, streamed as it is synthesized."""
    call_id = f"http-{next(_call_ids)}"
    peer = f"http:{client}"
    if server.calls.full:
        server.calls.refuse_busy(call_id, peer)
        raise RequestError(503, "server busy: --max-calls calls are open", code="busy")
    ours, theirs = socket.socketpair()
    if not server.serve_connection(ours, peer):
        theirs.close()
        raise RequestError(503, "server busy: no connection free", code="busy")
    reader, writer = await asyncio.open_connection(sock=theirs)
    control = Control(format="s16le", voice=req.voice, speed=req.speed)
    max_text = server.settings.max_text_bytes
    writer.write(
        encode_hello(call_id)
        + encode_control(control)
        + encode_text(req.input, max_text)
        + encode_bye()
    )
    frames = _frames(call_id, reader, writer)
    if req.response_format in ENCODED:
        return await _encoded(frames, req.response_format)
    if req.stream_format == "sse":
        return StreamingResponse(_sse(frames), media_type="text/event-stream")
    body = _pcm(frames) if req.response_format == "pcm" else _wav(frames)
    return StreamingResponse(body, media_type=STREAMED[req.response_format])


async def _frames(
    call_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> AsyncIterator[bytes]:
    """The call's samples (s16le), frame by frame, until END.

    Leaving early (the client went away, or the response was cancelled) cancels the
    call, so its queued segments are dropped at once rather than synthesized for no one.
    """
    decoder = AudioStreamDecoder(width=_WIDTH)
    ended = False
    try:
        while not ended:
            data = await reader.read(1 << 16)
            if not data:
                break
            for frame in decoder.feed(data):
                if isinstance(frame, Audio):
                    yield frame.samples
                elif isinstance(frame, End):
                    ended = True
        if not ended:
            log.warning("openai call=%s: the call ended without END", call_id)
    except (ConnectionError, ProtocolError) as exc:
        log.warning("openai call=%s: %s", call_id, exc)
    finally:
        if not ended:
            with contextlib.suppress(OSError):
                writer.write(encode_control(Control(cancel=True)))
        writer.close()


async def _pcm(frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for samples in frames:
        yield samples


async def _wav(frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A WAV header whose sizes say "unknown" (as streaming encoders write them), then
    the samples as they come."""
    yield wav_header(SAMPLE_RATE, _WIDTH)
    async for samples in frames:
        yield samples


async def _sse(frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """OpenAI's server-sent events: ``speech.audio.delta`` per frame, then ``done``."""
    async for samples in frames:
        event = {"type": "speech.audio.delta", "audio": base64.b64encode(samples).decode()}
        yield f"data: {json.dumps(event)}\n\n".encode()
    usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    yield f"data: {json.dumps({'type': 'speech.audio.done', 'usage': usage})}\n\n".encode()


async def _encoded(frames: AsyncIterator[bytes], fmt: str) -> Response:
    """The whole reply, then encoded by libsndfile (in a thread: it takes a while)."""
    pcm = bytearray()
    async for samples in frames:
        pcm += samples
    encoded = await asyncio.to_thread(encode_audio, bytes(pcm), fmt)
    return Response(encoded, media_type=ENCODED[fmt][2])


def encode_audio(pcm: bytes, fmt: str) -> bytes:
    import soundfile as sf

    container, subtype, _ = ENCODED[fmt]
    out = io.BytesIO()
    samples = np.frombuffer(pcm, dtype="<i2")
    sf.write(out, samples, SAMPLE_RATE, format=container, subtype=subtype)
    return out.getvalue()


def wav_header(rate: int, width: int) -> bytes:
    """A 44-byte PCM WAV header for a stream of unknown length (sizes 0xFFFFFFFF)."""
    unknown = 0xFFFFFFFF
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * width, width, width * 8)
        + b"data"
        + struct.pack("<I", unknown)
    )
