"""A LiveKit Agents TTS over the daemon's binary protocol (``kokoro-service[livekit]``).

Written against livekit-agents 1.8.9.  :class:`KokoroTTS` declares
``TTSCapabilities(streaming=True, aligned_transcript=True)``:

- :meth:`KokoroTTS.stream` is one daemon call per stream: each ``push_text`` goes out
  as a TEXT frame as the LLM produces it, and the daemon's segmenter decides when a
  segment is ready; the first ``flush`` (or ``end_input``) sends BYE.  A stream carries
  one segment, as livekit-agents 1.8 wants of a stream.
- :meth:`KokoroTTS.synthesize` is one call for a whole text.
- Audio is s16le at the TTS's ``sample_rate`` (24, 16 or 8 kHz: the daemon resamples),
  and every word of the daemon's WORDS frames is pushed as a ``TimedString`` with its
  start and end, seconds from the start of the stream's audio.
- Closing a stream before its end (the agent was interrupted) cancels the call: the
  daemon drops its queued text and unsent audio.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectionError,
    APIConnectOptions,
    APIError,
    APITimeoutError,
    tts,
    utils,
)
from livekit.agents.types import TimedString

from kokoro_service.errors import KokoroServiceError
from kokoro_service.integrations.call import (
    DEFAULT_PORT,
    CallSettings,
    DaemonCall,
    ReplyTimeoutError,
    drain_and_close,
    log,
)
from kokoro_service.types import SAMPLE_RATE

MIME = "audio/pcm"


@dataclass(frozen=True)
class _Options:
    host: str
    port: int
    settings: CallSettings
    read_timeout: float


class KokoroTTS(tts.TTS):
    """LiveKit TTS over kokoro-service's text port, with word-aligned transcripts.

    Args:
        host, port: the daemon's text port.
        voice: a voice name or a blend (``"af_sky:0.7,af_bella:0.3"``); ``None`` is the
            daemon's ``--voice``.
        speed: 0.5 to 2.0; ``None`` is the daemon's ``--speed``.
        lang: a Kokoro language code (``"a"``, ``"b"``, ``"j"``...); ``None`` is the
            daemon's ``--lang``.
        sample_rate: 24 000, 16 000 or 8 000 (the daemon resamples).
        read_timeout: seconds without a byte from the daemon, once the text is complete,
            before the synthesis fails.

    A bad voice or speed, or a rate the daemon does not make, raises ``ValueError``
    here.  The connect timeout is the ``conn_options.timeout`` of each request.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        voice: str | None = None,
        speed: float | None = None,
        lang: str | None = None,
        sample_rate: int = SAMPLE_RATE,
        read_timeout: float = 60.0,
    ) -> None:
        settings = CallSettings(voice=voice, speed=speed, lang=lang, rate=sample_rate)
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True, aligned_transcript=True),
            sample_rate=sample_rate,
            num_channels=1,
        )
        self._opts = _Options(host, port, settings, read_timeout)

    @property
    def model(self) -> str:
        return "kokoro-82m"

    @property
    def provider(self) -> str:
        return "kokoro-service"

    def update_options(
        self, *, voice: str | None = None, speed: float | None = None, lang: str | None = None
    ) -> None:
        """New settings for the requests made from now on (``None`` keeps the current)."""
        s = self._opts.settings
        settings = CallSettings(
            voice=voice if voice is not None else s.voice,
            speed=speed if speed is not None else s.speed,
            lang=lang if lang is not None else s.lang,
            rate=s.rate,
        )
        self._opts = replace(self._opts, settings=settings)

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> KokoroChunkedStream:
        return KokoroChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> KokoroSynthesizeStream:
        return KokoroSynthesizeStream(tts=self, conn_options=conn_options)

    async def _start(
        self, emitter: tts.AudioEmitter, conn_options: APIConnectOptions, *, stream: bool
    ) -> DaemonCall:
        """Set up ``emitter`` for the call's s16le, and open the call."""
        emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=self.sample_rate,
            num_channels=1,
            mime_type=MIME,
            stream=stream,
        )
        o = self._opts
        try:
            call = await DaemonCall.open(
                o.host,
                o.port,
                f"livekit-{uuid.uuid4().hex}",
                o.settings,
                connect_timeout=conn_options.timeout,
                read_timeout=o.read_timeout,
            )
        except ConnectionError as exc:
            raise APIConnectionError(str(exc)) from exc
        log.debug("livekit %s is daemon call %r", "stream" if stream else "synthesis", call.call_id)
        return call


async def _relay(call: DaemonCall, emitter: tts.AudioEmitter) -> None:
    """The call's audio and timed words into ``emitter``, until END."""
    async for heard in call.heard():
        if heard.words:
            timed = [
                TimedString(w.word + " ", start_time=w.start, end_time=w.end) for w in heard.words
            ]
            emitter.push_timed_transcript(timed)
        emitter.push(heard.pcm)


def _api_error(exc: BaseException) -> BaseException:
    """LiveKit's error for a failed call: a timeout or a connection error (retryable:
    LiveKit retries a request that has pushed no audio yet), or text the protocol cannot
    carry (a lone surrogate: not retryable)."""
    if isinstance(exc, ReplyTimeoutError):
        return APITimeoutError(str(exc))
    if isinstance(exc, OSError | KokoroServiceError):
        return APIConnectionError(str(exc))
    if isinstance(exc, ValueError):
        return APIError(f"text not sent: {exc}", body=None, retryable=False)
    return exc


async def _run_call(
    call: DaemonCall, emitter: tts.AudioEmitter, send: Callable[[], Coroutine[Any, Any, None]]
) -> None:
    """Send with ``send`` while relaying the reply, until the call's END.  A call left
    before its END (an error, or the stream closed by an interruption) is cancelled in
    the daemon."""
    sending = asyncio.create_task(send())
    relaying = asyncio.create_task(_relay(call, emitter))
    try:
        pending: set[asyncio.Task[None]] = {sending, relaying}
        while relaying in pending:  # END may come before the input ends: a refused call
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if (exc := task.exception()) is not None:
                    if (mapped := _api_error(exc)) is exc:
                        raise exc
                    raise mapped from exc
    finally:
        for task in (sending, relaying):
            task.cancel()
        await asyncio.gather(sending, relaying, return_exceptions=True)
        if call.ended:
            await call.aclose()
        else:
            await call.cancel()
            # Read on to END in the background: a cancelled task must not wait here.
            _closing(drain_and_close(call))


_CLOSING: set[asyncio.Task[None]] = set()


def _closing(coro: Awaitable[None]) -> None:
    task: asyncio.Task[None] = asyncio.ensure_future(coro)
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)


class KokoroChunkedStream(tts.ChunkedStream):
    """``synthesize()``: one call for the whole text."""

    def __init__(self, *, tts: KokoroTTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._kokoro = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        call = await self._kokoro._start(output_emitter, self._conn_options, stream=False)

        async def send() -> None:
            await call.text(self.input_text)
            await call.end_text()

        # No flush: the end of input sends the held-back tail as the final frame (a
        # flush first would make the emitter add 10 ms of silence as its final marker).
        await _run_call(call, output_emitter, send)


class KokoroSynthesizeStream(tts.SynthesizeStream):
    """``stream()``: the text as the LLM produces it, into one call."""

    def __init__(self, *, tts: KokoroTTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._kokoro = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        call = await self._kokoro._start(output_emitter, self._conn_options, stream=True)
        output_emitter.start_segment(segment_id=utils.shortuuid())

        async def send() -> None:
            async for data in self._input_ch:
                if isinstance(data, self._FlushSentinel):
                    break  # one segment a stream: its flush completes the call's text
                self._mark_started()
                await call.text(data)
            await call.end_text()

        await _run_call(call, output_emitter, send)
        output_emitter.end_segment()
