"""A pipecat TTS service over the daemon's binary protocol (``kokoro-service[pipecat]``).

Written against pipecat-ai 1.14.0, where word timestamps are part of every
``TTSService`` (``WordTTSService`` and ``InterruptibleWordTTSService`` are deprecated
aliases), so :class:`KokoroTTSService` is a ``TTSService`` that pushes no text frames of
its own: its words come from the daemon's WORDS frames, timed as heard.

- One LLM turn is one daemon call.  By default text is aggregated by token
  (``TextAggregationMode.TOKEN``): every token goes out as a TEXT frame as the LLM
  produces it, and the daemon's own segmenter decides when a segment is ready.  The end
  of the turn sends BYE.
- AUDIO frames become ``TTSAudioRawFrame`` s at the pipeline's output rate: the daemon
  resamples to 24, 16 or 8 kHz (CONTROL ``format``/``rate``); any other rate is asked as
  24 kHz and resampled here.  WORDS frames become word timestamps.
- An interruption cancels the call (CONTROL ``cancel``, then BYE), so the daemon stops
  synthesizing it, and nothing more of it is pushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Final

from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TextAggregationMode, TTSService
from pipecat.transcriptions.language import Language
from pipecat.utils.types import NOT_GIVEN, NotGiven

from kokoro_service.errors import KokoroServiceError
from kokoro_service.integrations.call import DEFAULT_PORT, CallSettings, DaemonCall, Heard
from kokoro_service.types import SAMPLE_RATE
from kokoro_service.wire.codec import SAMPLE_RATES

# Kokoro's language codes, by the codes pipecat's ``Language`` values carry: a regional
# value ("en-US") is looked up whole, then by its base ("en").
LANGUAGES: dict[str, str] = {
    "en": "a",
    "en-GB": "b",
    "es": "e",
    "fr": "f",
    "hi": "h",
    "it": "i",
    "ja": "j",
    "pt": "p",
    "zh": "z",
}
# Read once as typed values: under mypy's Python 3.10 target pipecat's StrEnum members
# read as plain strings.
TOKEN: Final = TextAggregationMode("token")
KEEPALIVE_S: Final = 0.5
"""How often (at most) an open call restarts pipecat's wait for its context's next frame;
a third of ``stop_frame_timeout_s`` where that is shorter."""


@dataclass
class KokoroTTSSettings(TTSSettings):
    """Runtime-updatable settings: ``voice`` (a name or a blend such as
    ``"af_sky:0.7,af_bella:0.3"``), ``language`` (a ``Language`` or a Kokoro code such as
    ``"a"``), ``speed`` (0.5 to 2.0).  ``None`` leaves the daemon's default."""

    speed: float | NotGiven | None = field(default_factory=lambda: NOT_GIVEN)


class KokoroTTSService(TTSService):
    """pipecat TTS over kokoro-service's text port, with word timestamps.

    Args:
        host, port: the daemon's text port.
        settings: voice, language and speed (see :class:`KokoroTTSSettings`).
        text_aggregation_mode: ``TOKEN`` (the default) streams each token to the daemon;
            ``SENTENCE`` sends whole sentences, still into one call per turn.
        connect_timeout: seconds to reach the daemon before the turn fails.
        read_timeout: seconds without a byte from the daemon, after the turn's BYE,
            before the call is reported failed.
        **kwargs: passed to ``TTSService`` (``sample_rate``, ``text_transforms``...).

    The turn's audio context stays open as long as its daemon call does: the daemon's
    END closes it, not pipecat's ``stop_frame_timeout_s`` (3 s without a frame), which a
    slow or loaded host can exceed between two segments and which would drop the rest.
    """

    Settings = KokoroTTSSettings
    _settings: KokoroTTSSettings

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        settings: KokoroTTSSettings | None = None,
        text_aggregation_mode: TextAggregationMode = TOKEN,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        **kwargs: Any,
    ) -> None:
        defaults = KokoroTTSSettings(model=None, voice=None, language=None, speed=None)
        if settings is not None:
            defaults.apply_update(settings)
        super().__init__(
            text_aggregation_mode=text_aggregation_mode,
            push_text_frames=False,
            push_start_frame=True,
            settings=defaults,
            **kwargs,
        )
        self._host = host
        self._port = port
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._calls: dict[str, DaemonCall] = {}
        self._receivers: dict[DaemonCall, asyncio.Task[None]] = {}
        self._failed: set[str] = set()  # contexts whose call could not be had: skip them
        self._call_settings(SAMPLE_RATE)  # a bad voice or speed fails here, not mid-call

    def can_generate_metrics(self) -> bool:
        return True

    def language_to_service_language(self, language: Language) -> str | None:
        """Kokoro's code for ``language``; ``None`` (kept as given, and the daemon says
        it refused it) for a language Kokoro does not speak."""
        code = str(language)
        found = LANGUAGES.get(code) or LANGUAGES.get(code.partition("-")[0])
        if found is None:
            logger.warning(f"{self}: Kokoro has no language {code!r}")
        return found

    def _call_settings(self, rate: int) -> CallSettings:
        s = self._settings
        voice = s.voice if isinstance(s.voice, str) else None
        lang = s.language if isinstance(s.language, str) else None
        speed = s.speed if isinstance(s.speed, int | float) else None
        return CallSettings(voice=voice, speed=speed, lang=lang, rate=rate)

    @property
    def _wire_rate(self) -> int:
        """The rate asked of the daemon: the pipeline's own when the daemon makes it."""
        return self.sample_rate if self.sample_rate in SAMPLE_RATES else SAMPLE_RATE

    # ------------------------------------------------------------------ the call

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Send ``text`` into the context's call, opening the call at its first text; the
        audio arrives on the call's receive task."""
        if context_id in self._failed:
            yield None
            return
        call = self._calls.get(context_id)
        try:
            if call is None or call.text_ended:
                call = await self._open(context_id)
            await call.text(text)
        except (OSError, KokoroServiceError, ValueError) as exc:
            # The context stays open, silent, until the turn ends (flush_audio): one
            # error for the turn, not one per token and a context reopened for each.
            logger.error(f"{self}: context {context_id}: {exc}")
            self._failed.add(context_id)
            yield ErrorFrame(error=f"kokoro-service: {exc}", exception=exc)
            return
        yield None

    async def _open(self, context_id: str) -> DaemonCall:
        settings = self._call_settings(self._wire_rate)
        call = await DaemonCall.open(
            self._host,
            self._port,
            f"pipecat-{uuid.uuid4().hex}",
            settings,
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
        )
        logger.debug(f"{self}: context {context_id} is daemon call {call.call_id!r}")
        self._calls[context_id] = call
        task = self.create_task(self._receive(context_id, call), name=f"kokoro-{call.call_id}")
        self._receivers[call] = task
        return call

    async def _receive(self, context_id: str, call: DaemonCall) -> None:
        """The call's audio and words into its audio context, until END."""
        keeping = self.create_task(self._keep_open(context_id, call), name="kokoro-keepalive")
        try:
            async for heard in call.heard():
                await self._deliver(context_id, heard)
            if not call.cancelled:
                await self._end_context(context_id)
        except (OSError, KokoroServiceError) as exc:
            if not call.cancelled:
                logger.error(f"{self}: context {context_id}: {exc}")
                await self.push_error(error_msg=f"kokoro-service: {exc}", exception=exc)
                await self._end_context(context_id)
        finally:
            await self.cancel_task(keeping)
            if self._calls.get(context_id) is call:
                del self._calls[context_id]
            self._receivers.pop(call, None)
            await call.aclose()

    async def _keep_open(self, context_id: str, call: DaemonCall) -> None:
        """Restart pipecat's wait for the context's next frame while the call is open."""
        every = max(0.05, min(KEEPALIVE_S, self._stop_frame_timeout_s / 3))
        while not call.cancelled:
            await asyncio.sleep(every)
            self._refresh_audio_context(context_id)

    async def _end_context(self, context_id: str) -> None:
        await self.append_to_audio_context(context_id, TTSStoppedFrame(context_id=context_id))
        await self.remove_audio_context(context_id)

    async def _deliver(self, context_id: str, heard: Heard) -> None:
        audio = heard.pcm
        if heard.rate != self.sample_rate:
            audio = await self._resampler.resample(audio, heard.rate, self.sample_rate)
        if audio:
            frame = TTSAudioRawFrame(audio, self.sample_rate, 1, context_id=context_id)
            await self.append_to_audio_context(context_id, frame)
        if heard.words:
            await self.add_word_timestamps([(w.word, w.start) for w in heard.words], context_id)

    async def flush_audio(self, context_id: str | None = None) -> None:
        """The turn is complete: BYE, so the daemon speaks the rest and ends the call."""
        context_id = context_id or self.get_active_audio_context_id() or ""
        if context_id in self._failed:
            self._failed.discard(context_id)
            await self._end_context(context_id)
        call = self._calls.get(context_id)
        if call is None:
            return
        try:
            await call.end_text()
        except OSError as exc:  # the receive task reports the call's end
            logger.warning(f"{self}: BYE for {call.call_id!r} not sent: {exc}")

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        """Barge-in: the daemon drops the call's queued text and unsent audio."""
        await self.stop_all_metrics()
        self._failed.discard(context_id)
        call = self._calls.get(context_id)
        if call is not None:
            await call.cancel()  # its receive task reads on to END and closes it
        await super().on_audio_context_interrupted(context_id)

    # TTSService narrows AIService's ServiceSettings to TTSSettings the same way.
    async def _update_settings(self, delta: TTSSettings) -> dict[str, Any]:  # type: ignore[override]
        """Voice, language or speed changed: the open calls take it for their next text."""
        changed = await super()._update_settings(delta)
        if changed.keys() & {"voice", "language", "speed"}:
            try:
                control = self._call_settings(SAMPLE_RATE).settings()
                for call in list(self._calls.values()):
                    await call.control(control)
            except (OSError, KokoroServiceError, ValueError) as exc:
                await self.push_error(error_msg=f"kokoro-service: settings refused: {exc}")
        return changed

    # ------------------------------------------------------------------ lifecycle

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)  # plays every context out, to each call's END
        await self._close_calls(cancel=False)

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._close_calls(cancel=True)

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._close_calls(cancel=True)

    async def _close_calls(self, *, cancel: bool) -> None:
        """End (or cancel) every open call; give their receive tasks two seconds to read
        on to END, then stop them (each closes its call as it ends)."""
        for call in list(self._calls.values()):
            with contextlib.suppress(OSError):
                await (call.cancel() if cancel else call.end_text())
        tasks = list(self._receivers.values())
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        for task in tasks:
            if not task.done():
                await self.cancel_task(task)
