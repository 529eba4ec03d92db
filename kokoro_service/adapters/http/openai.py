"""OpenAI's speech API on the HTTP port: ``POST /v1/audio/speech``, ``GET /v1/models`` and
``GET /v1/voices``, for agent frameworks that speak to any OpenAI-compatible TTS server.

Each request becomes one call of the daemon's own, over a socket pair, exactly as a
phone call arrives on the text port: the same scheduler, limits (``--max-calls``
included), metrics and shutdown.  The call asks for s16le at 24 kHz, and every format
streams: ``pcm`` and ``wav`` send each AUDIO frame as it comes, and ``mp3``, ``opus``,
``aac`` and ``flac`` send what the encoder (:mod:`kokoro_service.audio.encoders`) has
made of it, so the first bytes leave with the first segment.  ``stream_format: "sse"``
wraps the same bytes, whatever the format, in OpenAI's events.  A client that goes away
closes its call's socket, and the daemon drops the call's queued segments at its next
frame.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import math
import struct
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from kokoro_service.adapters.http.voices import resolve, voice_aliases
from kokoro_service.audio.encoders import CODECS, StreamEncoder
from kokoro_service.errors import SpeechRequestError, VoiceError
from kokoro_service.logs import RateLimitedLog
from kokoro_service.ops.readiness import Lifecycle
from kokoro_service.server.local_calls import LocalCalls
from kokoro_service.wire.codec import (
    CONTROL_SPEED_RANGE,
    SAMPLE_RATE,
    Control,
    encode_bye,
    encode_control,
    encode_hello,
    encode_text,
)
from kokoro_service.wire.local_call import call_audio

log = logging.getLogger("kokoro_service.openai")

# OpenAI's documented speed range; Kokoro speaks 0.5-2.0, so the rest is clamped.
OPENAI_SPEED_RANGE = (0.25, 4.0)
MODELS = ("kokoro", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")
# response_format -> media type: the samples themselves, and what the encoders make.
RAW = {"pcm": "audio/pcm", "wav": "audio/wav"}
FORMATS = {**RAW, **{fmt: codec.media_type for fmt, codec in CODECS.items()}}
MAX_BODY_BYTES = 1 << 20
MAX_VOICE_CHARS = 1024
_WIDTH = 2


def error_response(exc: SpeechRequestError) -> JSONResponse:
    """OpenAI's error body for ``exc``."""
    kind = "invalid_request_error" if exc.status < 500 else "server_error"
    body = {"message": str(exc), "type": kind, "param": exc.param, "code": exc.code}
    return JSONResponse({"error": body}, status_code=exc.status)


@dataclass(frozen=True)
class SpeechRequest:
    """A validated ``POST /v1/audio/speech`` body."""

    input: str
    voice: str
    speed: float
    response_format: str
    stream_format: str


def routes(
    lifecycle: Lifecycle,
    serving: Callable[[], LocalCalls | None],
    *,
    api_key: str | None,
    open_to: Callable[[str], str | None],
) -> list[Route]:
    """The API's routes.  ``serving()`` gives the daemon's calls once it serves (the
    port opens while the model loads).  ``open_to(client_host)`` returns why a client may
    not use it (None when it may): the daemon keeps it off beyond loopback without TLS or
    a key."""
    noise = RateLimitedLog(log)

    def guard(handler: Callable[[Request], Awaitable[Response]]) -> Any:
        async def guarded(request: Request) -> Response:
            try:
                host = request.client.host if request.client else ""
                why = open_to(host)
                if why is not None:
                    raise SpeechRequestError(403, why, code="endpoint_off")
                if api_key is not None:
                    given = request.headers.get("authorization", "").encode()
                    # Constant time: how much of a guess matched must not show in timing.
                    if not hmac.compare_digest(given, f"Bearer {api_key}".encode()):
                        noise.warning(
                            f"key:{host}", "openai request refused peer=%s: bad API key", host
                        )
                        raise SpeechRequestError(
                            401, "missing or wrong API key", code="invalid_api_key"
                        )
                return await handler(request)
            except SpeechRequestError as exc:
                return error_response(exc)

        return guarded

    async def models(_: Request) -> Response:
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "kokoro-service"} for m in MODELS
        ]
        return JSONResponse({"object": "list", "data": data})

    async def voices(_: Request) -> Response:
        calls = _calls(lifecycle, serving)
        named = aliases(calls)
        listed = [*calls.voices, *(a for a in sorted(named) if a not in calls.voices)]
        return JSONResponse({"voices": listed, "aliases": named})

    async def speech(request: Request) -> Response:
        calls = _calls(lifecycle, serving)
        body = await _read_json(request)
        try:
            req = parse_speech(body, calls)
        except (TypeError, ValueError, OverflowError) as exc:  # UnicodeError too
            raise SpeechRequestError(400, f"the body cannot be used: {exc}") from None
        return await _speak(calls, req, request)

    return [
        Route("/v1/audio/speech", guard(speech), methods=["POST"]),
        Route("/v1/models", guard(models), methods=["GET"]),
        Route("/v1/voices", guard(voices), methods=["GET"]),
        Route("/v1/audio/voices", guard(voices), methods=["GET"]),
    ]


def aliases(calls: LocalCalls) -> dict[str, str]:
    """Alias -> voice spec for ``calls``' model (a few dozen names: built per request)."""
    return voice_aliases(calls.voices, calls.voice, calls.settings.voice_alias)


def _calls(lifecycle: Lifecycle, serving: Callable[[], LocalCalls | None]) -> LocalCalls:
    calls = serving()
    if calls is None or lifecycle.draining:
        raise SpeechRequestError(503, "not ready: " + lifecycle.readiness()[1], code="not_ready")
    return calls


async def _read_json(request: Request) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise SpeechRequestError(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
    raw = bytearray()
    async for chunk in request.stream():  # bounded as it arrives, whatever the header said
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise SpeechRequestError(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, huge ints, deep nesting
        raise SpeechRequestError(400, f"the body is not JSON: {exc}") from None


def parse_speech(body: Any, calls: LocalCalls) -> SpeechRequest:
    """Check a request body against what OpenAI documents and what the daemon can do."""
    if not isinstance(body, dict):
        raise SpeechRequestError(400, "the body must be a JSON object")
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise SpeechRequestError(400, "'input' must be a non-empty string", param="input")
    limit = calls.settings.max_text_bytes
    if len(text.encode("utf-8")) > limit:
        raise SpeechRequestError(
            400, f"'input' is longer than {limit} bytes (--max-text-bytes)", param="input"
        )
    voice = body.get("voice")
    if isinstance(voice, dict):  # the newer SDKs may send {"id": ...}
        voice = voice.get("id")
    if not isinstance(voice, str) or not voice.strip():
        raise SpeechRequestError(400, "'voice' must name a voice or a blend", param="voice")
    if len(voice) > MAX_VOICE_CHARS:
        raise SpeechRequestError(400, f"'voice' is longer than {MAX_VOICE_CHARS}", param="voice")
    voice = resolve(voice, calls.voices, aliases(calls))
    try:
        calls.check_voice(voice)
    except VoiceError as exc:
        raise SpeechRequestError(400, str(exc), param="voice", code="unknown_voice") from None
    speed = body.get("speed", 1.0)
    lo, hi = OPENAI_SPEED_RANGE
    try:
        value = math.nan if isinstance(speed, bool) else float(speed)
    except (TypeError, ValueError, OverflowError):  # not a number, or a 400-digit one
        value = math.nan
    if not isinstance(speed, int | float) or not lo <= value <= hi:  # NaN fails too
        raise SpeechRequestError(400, f"'speed' must be a number from {lo} to {hi}", param="speed")
    fmt = body.get("response_format", "mp3")
    if not isinstance(fmt, str):
        raise SpeechRequestError(400, "'response_format' must be a string", param="response_format")
    if fmt not in FORMATS:
        known = ", ".join(FORMATS)
        raise SpeechRequestError(
            400, f"'response_format' must be one of {known}", param="response_format"
        )
    stream_format = body.get("stream_format", "audio")
    if not isinstance(stream_format, str) or stream_format not in ("audio", "sse"):
        raise SpeechRequestError(
            400, "'stream_format' must be 'audio' or 'sse'", param="stream_format"
        )
    clamped = min(max(value, CONTROL_SPEED_RANGE[0]), CONTROL_SPEED_RANGE[1])
    return SpeechRequest(text, voice, clamped, fmt, stream_format)


async def _speak(calls: LocalCalls, req: SpeechRequest, request: Request) -> Response:
    """Open the call and answer with its audio, streamed as it is synthesized."""
    call_id = f"http-{uuid.uuid4().hex[:16]}"  # unguessable: no text-port call can take it
    peer = f"http:{request.client.host if request.client else '?'}"
    control = Control(format="s16le", voice=req.voice, speed=req.speed)
    # Built first: a frame that cannot be encoded opens no call.
    opening = encode_hello(call_id) + encode_control(control)
    rest = encode_text(req.input, calls.settings.max_text_bytes) + encode_bye()
    theirs = calls.open(call_id, peer, opening)
    if theirs is None:
        raise SpeechRequestError(503, "server busy: the instance is full", code="busy")
    try:
        reader, writer = await asyncio.open_connection(sock=theirs)
    except BaseException:
        theirs.close()
        raise
    try:
        writer.write(rest)
        body: AsyncIterator[bytes] = _frames(call_id, reader, writer)
        if req.response_format == "wav":
            body = _wav(body)
        elif req.response_format in CODECS:
            body = _encoded(body, req.response_format)
        media_type = FORMATS[req.response_format]
        if req.stream_format == "sse":
            body, media_type = _sse(body), "text/event-stream"
        return _CallResponse(writer, body, media_type=media_type)
    except BaseException:
        writer.close()
        raise


class _CallResponse(StreamingResponse):
    """A streamed reply that closes its call's socket however the response ends.

    A client that leaves before the first body byte makes Starlette cancel the stream
    before the body generator has started, and a generator that never started never runs
    its ``finally``: without this, the call would synthesize until its write timeout.
    """

    def __init__(self, writer: asyncio.StreamWriter, content: AsyncIterator[bytes], **kw: Any):
        super().__init__(content, **kw)
        self._writer = writer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._writer.close()


async def _frames(
    call_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> AsyncGenerator[bytes, None]:
    """The call's samples (s16le), frame by frame, until END; then
    :class:`CallIncompleteError` if the call ended without it.

    Leaving early (the client went away) closes the socket: the daemon's next frame for
    the call fails, and the call's queued segments are dropped then.
    """
    try:
        async with contextlib.aclosing(call_audio(call_id, reader, width=_WIDTH)) as frames:
            async for frame in frames:
                yield frame.samples
    finally:
        writer.close()


async def _wav(frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A WAV header whose sizes say "unknown" (as streaming encoders write them), then
    the samples as they come."""
    yield wav_header(SAMPLE_RATE, _WIDTH)
    async for samples in frames:
        yield samples


async def _sse(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """OpenAI's server-sent events: ``speech.audio.delta`` per chunk of the format's
    bytes (base64), then ``speech.audio.done``."""
    async for chunk in chunks:
        event = {"type": "speech.audio.delta", "audio": base64.b64encode(chunk).decode()}
        yield f"data: {json.dumps(event)}\n\n".encode()
    usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    yield f"data: {json.dumps({'type': 'speech.audio.done', 'usage': usage})}\n\n".encode()


async def _encoded(frames: AsyncIterator[bytes], fmt: str) -> AsyncIterator[bytes]:
    """``fmt``'s bytes as the encoder makes them from each frame, then its tail.

    Encoded on this (the HTTP port's) loop: about 1.5 ms per second of speech for mp3,
    less for the others, short enough not to need a thread, whose encode could then still
    be running when a client that left makes this close the encoder.
    """
    encoder = StreamEncoder(fmt, SAMPLE_RATE)
    try:
        async for samples in frames:
            out = encoder.feed(samples)
            if out:
                yield out
        tail = encoder.finish()
        if tail:
            yield tail
    finally:
        encoder.close()


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
