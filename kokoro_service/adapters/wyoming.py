"""Wyoming text-to-speech server (``--wyoming-port``), on the ``wyoming`` package's events.

Each Wyoming request is an adapter onto the daemon's own wire protocol: it becomes a call
that the daemon serves like any other (reader, scheduler, workers, writers), opened
through :class:`~kokoro_service.server.local_calls.LocalCalls` over an in-process socket
pair, in the s16le format of ``PROTOCOL.md`` 5.1.  A
Home Assistant announcement and a phone call are therefore scheduled fairly against each
other, and share every limit, the drain on shutdown and the logs.

Events: ``describe`` -> ``info``; ``synthesize`` -> ``audio-start``, ``audio-chunk``...,
``audio-stop``; streaming ``synthesize-start``, ``synthesize-chunk``...,
``synthesize-stop`` -> the same audio events, then ``synthesize-stopped``.  A streaming
client also sends the whole text as a ``synthesize`` event for older servers, before
``synthesize-stop`` (Home Assistant does); it is being spoken from the chunks, so it is
ignored.

Over 400 lines: the event handler and the port it serves (caps, timeouts, TLS), which
only each other use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import threading
import uuid
from collections.abc import Collection, Sequence

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.server import AsyncEventHandler
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

from kokoro_service import __version__
from kokoro_service.errors import (
    CallIncompleteError,
    StartupError,
    VoiceError,
    WyomingInputError,
    WyomingRequestError,
)
from kokoro_service.logs import RateLimitedLog, quiet_loop_errors
from kokoro_service.server.local_calls import LocalCalls
from kokoro_service.synthesis.languages import (
    LANGUAGES,
    language_code,
    speakable,
    voice_language,
)
from kokoro_service.wire.codec import (
    SAMPLE_RATE,
    Control,
    encode_bye,
    encode_control,
    encode_hello,
    encode_text,
)
from kokoro_service.wire.local_call import call_audio

log = logging.getLogger("kokoro_service.wyoming")

_WIDTH = 2  # s16le: what every Wyoming client plays
_LINE_LIMIT = 64 * 1024  # an event's JSON header line
_START_TIMEOUT = 10.0
_ATTRIBUTION = Attribution(name="hexgrad", url="https://huggingface.co/hexgrad/Kokoro-82M")


def _text(event: Event) -> str:
    text = event.data.get("text")
    if not isinstance(text, str):
        raise WyomingRequestError("'text' must be a string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise WyomingRequestError("'text' is not valid Unicode (a lone surrogate)") from None
    return text


def _voice(event: Event) -> SynthesizeVoice | None:
    data = event.data.get("voice")
    if data is None:
        return None
    fields = ("name", "language", "speaker")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str | None) for k in fields):
        raise WyomingRequestError("'voice' must be an object of strings")
    return SynthesizeVoice(**{k: data.get(k) for k in fields})


def spoken_language(voice: str, default_lang: str, spoken: Collection[str]) -> str | None:
    """The language a request naming ``voice`` and no language is spoken in: the voice's
    own (``ff_siwis``: French) where this host has its G2P, else the daemon's ``--lang``."""
    own = voice_language(voice)
    if own in spoken:
        return own
    return default_lang if default_lang in spoken else None


def wyoming_info(voices: Sequence[str], default_lang: str, spoken: Collection[str]) -> Info:
    """The ``info`` answer: one TTS program with the engine's voices, streaming included.

    Each voice lists the one language a request naming it is spoken in (see
    :func:`spoken_language`), not every language it could be switched to: Wyoming's client
    sends a voice's name or a language, never both (Home Assistant sends the name alone),
    so a voice listed under a language it is not spoken in by name would read that
    language's text with another language's G2P.  A request for a language alone gets
    any language in ``spoken`` (see :meth:`WyomingHandler._open`).
    """
    tts_voices = []
    for name in voices:
        lang = spoken_language(name, default_lang, spoken)
        tts_voices.append(
            TtsVoice(
                name=name,
                description=f"Kokoro-82M voice {name}",
                attribution=_ATTRIBUTION,
                installed=True,
                version=None,
                languages=[LANGUAGES[lang].tag] if lang else [],
            )
        )
    program = TtsProgram(
        name="kokoro-service",
        description="Kokoro-82M streaming text to speech",
        attribution=_ATTRIBUTION,
        installed=True,
        version=__version__,
        voices=tts_voices,
        supports_synthesize_streaming=True,
    )
    return Info(tts=[program])


async def read_event(reader: asyncio.StreamReader, max_data: int) -> Event | None:
    """The next event, or None at end of stream; its lengths are checked before its data
    is read, so a peer cannot make this server buffer more than ``max_data`` bytes."""
    try:
        line = await reader.readline()
    except ValueError:  # asyncio's line limit
        raise WyomingInputError(f"event header longer than {_LINE_LIMIT} bytes") from None
    if not line:
        return None
    try:
        header = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WyomingInputError(f"event header is not JSON ({exc})") from None
    except RecursionError:
        raise WyomingInputError("event header is nested too deeply") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise WyomingInputError("event header has no type")
    data = header.get("data") or {}
    lengths = [header.get("data_length") or 0, header.get("payload_length") or 0]
    if not all(isinstance(n, int) and 0 <= n <= max_data for n in lengths) or not isinstance(
        data, dict
    ):
        raise WyomingInputError(f"event {header['type']!r} has bad lengths {lengths}")
    try:
        if lengths[0]:
            more = json.loads(await reader.readexactly(lengths[0]))
            if not isinstance(more, dict):
                raise WyomingInputError("event data is not a JSON object")
            data.update(more)
        payload = await reader.readexactly(lengths[1]) if lengths[1] else None
    except asyncio.IncompleteReadError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WyomingInputError(f"event data is not JSON ({exc})") from None
    except RecursionError:
        raise WyomingInputError("event data is nested too deeply") from None
    return Event(type=header["type"], data=data, payload=payload)


class _Request:
    """One synthesis in flight: the call's socket to the daemon and the audio relay."""

    def __init__(
        self, writer: asyncio.StreamWriter, relay: asyncio.Task[None], max_text: int
    ) -> None:
        self.writer = writer
        self.relay = relay
        self.max_text = max_text

    async def text(self, text: str) -> None:
        """Send ``text`` as TEXT frames, waiting while the daemon's side is full, so a
        client streaming faster than it is read cannot grow this server's buffers."""
        # A Wyoming text may be longer than one TEXT frame: pieces of max_text / 4
        # characters always fit (UTF-8 takes at most 4 bytes a character), and the
        # segmenter joins them again.
        if not text:
            # An empty chunk says nothing, and the wire has no empty TEXT frame; it would
            # also make ``step`` 0, which range() refuses (a crash, once).
            return
        fits = len(text.encode("utf-8")) <= self.max_text
        step = len(text) if fits else max(1, self.max_text // 4)
        for i in range(0, len(text), step):
            self.writer.write(encode_text(text[i : i + step], self.max_text))
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()

    async def finish(self) -> None:
        """BYE, then wait for the call's audio to be relayed, END included."""
        self.writer.write(encode_bye())
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()
        await self.relay

    def abort(self) -> None:
        self.relay.cancel()
        self.writer.close()


class WyomingHandler(AsyncEventHandler):
    """One Wyoming connection.

    Responsibilities: answer ``describe``; turn each synthesis into a call on the daemon
    (HELLO, CONTROL with the voice, its language and the s16le format, TEXT, BYE); relay
    the call's AUDIO frames as ``audio-chunk`` events between ``audio-start`` and
    ``audio-stop``; report a malformed request, an unknown voice, a full server or a
    failed synthesis as a Wyoming ``error``; read only bounded events; end every call it
    opened when the client goes.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        calls: LocalCalls,
        info: Info,
        peer: str,
        spoken: Collection[str],
        noise: RateLimitedLog | None = None,
    ) -> None:
        """``spoken``: the language codes this host's G2P speaks."""
        super().__init__(reader, writer)
        self.calls = calls
        self.info = info
        self.spoken = spoken
        self.peer = peer
        self._streaming: _Request | None = None
        self._open_requests: set[_Request] = set()
        # The port's budget, shared by every connection: many peers' bad events or idle
        # connections cannot flood the log either.
        self._bad = noise if noise is not None else RateLimitedLog(log)

    async def run(self) -> None:
        """Like the package's loop, with :func:`read_event`'s bounds, and the text port's
        timeouts: the first event within ``--hello-timeout``, each next within
        ``--idle-timeout`` (a request being spoken is not idle: its audio is awaited in
        :meth:`handle_event`)."""
        settings = self.calls.settings
        limit = settings.max_text_bytes + _LINE_LIMIT
        timeout = settings.hello_timeout
        try:
            while True:
                try:
                    event = await asyncio.wait_for(read_event(self.reader, limit), timeout)
                except TimeoutError:
                    self._bad.info(
                        f"idle:{self.peer.rsplit(':', 1)[0]}",
                        "wyoming connection closed peer=%s: no event for %gs",
                        self.peer,
                        timeout,
                    )
                    break
                if event is None or not await self.handle_event(event):
                    break
                timeout = settings.idle_timeout
        except WyomingInputError as exc:
            self._bad.warning("input", "wyoming bad input peer=%s: %s; closing", self.peer, exc)
        except ConnectionError as exc:
            log.info("wyoming connection lost peer=%s: %s", self.peer, exc)
        except Exception:  # a bug, not bad input: end this connection, not the server
            log.exception("wyoming handler crashed peer=%s", self.peer)
        finally:
            await self.disconnect()
            self.writer.close()

    async def disconnect(self) -> None:
        """The client is gone: end every call this connection opened."""
        self._streaming = None
        for request in list(self._open_requests):
            request.abort()
        self._open_requests.clear()

    async def handle_event(self, event: Event) -> bool:
        try:
            await self._handle(event)
        except WyomingRequestError as exc:
            self._bad.warning(
                f"bad:{self.peer.rsplit(':', 1)[0]}",
                "wyoming request refused peer=%s type=%r: %s",
                self.peer,
                event.type,
                exc,
            )
            await self.write_event(Error(text=str(exc), code="bad-request").event())
        return True

    async def _handle(self, event: Event) -> None:
        if Describe.is_type(event.type):
            await self.write_event(self.info.event())
        elif Synthesize.is_type(event.type):
            if self._streaming is not None:
                return  # a streaming client's copy of the text it is streaming
            text = _text(event)
            voice = _voice(event)
            if not text.strip():
                # Nothing to speak: answer no audio at once, as a call would, without
                # taking a call (a full instance would answer `busy`, and no audio-stop
                # that Home Assistant waits for).
                self._bad.info(
                    f"blank:{self.peer.rsplit(':', 1)[0]}",
                    "wyoming synthesize with no text peer=%s: empty audio",
                    self.peer,
                )
                await self.write_event(
                    AudioStart(rate=SAMPLE_RATE, width=_WIDTH, channels=1).event()
                )
                await self.write_event(AudioStop().event())
                return
            request = await self._open(voice)
            if request is not None:
                await request.text(text)
                await self._finish(request)
        elif SynthesizeStart.is_type(event.type):
            voice = _voice(event)
            if self._streaming is not None:  # a new stream before the last one stopped
                await self._finish(self._streaming)
            self._streaming = await self._open(voice)
        elif SynthesizeChunk.is_type(event.type):
            text = _text(event)
            if self._streaming is not None:
                await self._streaming.text(text)
        elif SynthesizeStop.is_type(event.type):
            request, self._streaming = self._streaming, None
            if request is not None:
                await self._finish(request)
            await self.write_event(SynthesizeStopped().event())
        else:
            log.debug("wyoming event ignored peer=%s type=%r", self.peer, event.type)

    async def _finish(self, request: _Request) -> None:
        try:
            await request.finish()
        finally:
            self._open_requests.discard(request)

    async def _open(self, voice: SynthesizeVoice | None) -> _Request | None:
        """A call on the daemon for one synthesis, or None after an ``error`` event.

        A voice asked for by name speaks the language the ``info`` answer lists it under
        (:func:`spoken_language`).  A language asked for (Wyoming's client sends it only
        without a name) is spoken if this host's G2P speaks it, by the first voice whose
        own language it is, else by the daemon's voice; one it cannot speak is logged.  A
        client writing its own JSON may send both: the voice then reads that language.
        """
        control = Control(format="s16le")
        lang = None
        name = voice.name if voice is not None else None
        if voice is not None and voice.name:
            try:
                self.calls.check_voice(voice.name)
            except VoiceError as exc:
                self._bad.warning(
                    f"voice:{self.peer.rsplit(':', 1)[0]}",
                    "wyoming voice refused peer=%s: %s",
                    self.peer,
                    exc,
                )
                await self.write_event(Error(text=str(exc), code="unknown-voice").event())
                return None
            lang = spoken_language(voice.name, self.calls.settings.lang, self.spoken)
        if voice is not None and voice.language:
            asked = language_code(voice.language)
            if asked in self.spoken:
                lang = asked
                if not name:
                    name = next((v for v in self.calls.voices if voice_language(v) == asked), None)
            else:
                self._bad.warning(
                    f"lang:{self.peer.rsplit(':', 1)[0]}",
                    "wyoming language not spoken here peer=%s language=%r; speaking %s",
                    self.peer,
                    voice.language[:40],
                    lang or self.calls.settings.lang,
                )
        if name or lang:
            control = Control(format="s16le", voice=name or None, lang=lang)
        call_id = f"wyoming-{uuid.uuid4().hex[:16]}"  # no text-port call can take it
        peer = f"wyoming:{self.peer}"
        theirs = self.calls.open(call_id, peer, encode_hello(call_id) + encode_control(control))
        if theirs is None:
            await self.write_event(Error(text="server busy", code="busy").event())
            return None
        reader, writer = await asyncio.open_connection(sock=theirs)
        await self.write_event(AudioStart(rate=SAMPLE_RATE, width=_WIDTH, channels=1).event())
        relay = asyncio.create_task(self._relay(call_id, reader, writer))
        request = _Request(writer, relay, self.calls.settings.max_text_bytes)
        self._open_requests.add(request)
        return request

    async def _relay(
        self, call_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """The call's AUDIO frames as ``audio-chunk`` events until END, then ``audio-stop``."""
        ended = False
        try:
            async with contextlib.aclosing(call_audio(call_id, reader, width=_WIDTH)) as frames:
                async for frame in frames:
                    chunk = AudioChunk(
                        rate=frame.sample_rate, width=_WIDTH, channels=1, audio=frame.samples
                    )
                    await self.write_event(chunk.event())
            ended = True
        except CallIncompleteError:
            pass  # logged where it was found; the client is told below
        except ConnectionError as exc:  # the Wyoming client went away
            log.warning("wyoming relay failed call=%s peer=%s: %s", call_id, self.peer, exc)
        finally:
            writer.close()
        with contextlib.suppress(ConnectionError):
            if not ended:
                await self.write_event(
                    Error(text="synthesis ended early", code="synthesis-failed").event()
                )
            await self.write_event(AudioStop().event())


class WyomingServer:
    """Serves Wyoming on its own port, from an asyncio loop in a thread of its own.

    ``start()`` binds, starts the thread and returns once it serves, or raises
    :class:`StartupError` with the thread's error.  ``stop()`` is thread-safe and
    idempotent: it stops accepting, cancels what is left (run it after the daemon's
    drain, which has already finished every call) and joins the thread.
    """

    def __init__(self, calls: LocalCalls, port: int, *, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: the text port's server context, so Wyoming gets the same TLS (and
        client certificates) as the text port whenever ``--tls-cert`` is set."""
        self.calls = calls
        self.port = port
        self._tls = tls
        self._refusals = RateLimitedLog(log)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._spoken: tuple[str, ...] = ()

    @property
    def address(self) -> tuple[str, int]:
        if self._sock is None:
            raise RuntimeError("Wyoming server not started")
        addr = self._sock.getsockname()
        return str(addr[0]), int(addr[1])

    def start(self) -> None:
        host = self.calls.settings.host
        try:
            self._sock = socket.create_server(
                (host, self.port), family=socket.AF_INET6 if ":" in host else socket.AF_INET
            )
        except OSError as exc:
            raise StartupError(
                f"cannot bind {host} wyoming:{self.port}: {exc.strerror or exc}"
            ) from exc
        # Before the thread, outside its start-up timeout: importing each language's G2P
        # takes a second or two (once per process).
        self._spoken = speakable()
        self._thread = threading.Thread(target=self._run, name="wyoming", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT) or self._error is not None:
            self.stop()
            raise StartupError(f"the Wyoming server failed to start: {self._error}")
        log.info(
            "wyoming listening tcp=%s:%d%s languages=%s",
            *self.address,
            " (tls)" if self._tls else "",
            ",".join(self._spoken) or "none",
        )

    def stop(self) -> None:
        with self._lock:
            loop, stop = self._loop, self._stop
            if loop is not None and stop is not None:
                with contextlib.suppress(RuntimeError):  # the loop already ended
                    loop.call_soon_threadsafe(stop.set)
            if self._thread is not None:
                self._thread.join(_START_TIMEOUT)
                self._thread = None
            if self._sock is not None:
                self._sock.close()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
            log.exception("the Wyoming server died")
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        assert self._sock is not None  # noqa: S101 - start() binds first
        self._loop = asyncio.get_running_loop()
        quiet_loop_errors(self._loop, self._refusals, "wyoming")
        self._stop = asyncio.Event()
        settings = self.calls.settings
        spoken = self._spoken
        info = wyoming_info(self.calls.voices, settings.lang, spoken)
        tasks: set[asyncio.Task[None]] = set()
        metrics = self.calls.metrics

        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            address = writer.get_extra_info("peername") or ("?", 0)
            peer = f"{address[0]}:{address[1]}"
            if not settings.peer_allowed(str(address[0])):
                self._refusals.warning(
                    f"deny:{address[0]}", "wyoming connection refused peer=%s: not in --allow", peer
                )
                metrics.refused("not_allowed")
                writer.transport.abort()
                return
            if len(tasks) >= settings.max_wyoming_connections:
                self._refusals.warning(
                    "maxconn",
                    "wyoming connection refused peer=%s: max_wyoming_connections=%d reached",
                    peer,
                    settings.max_wyoming_connections,
                )
                metrics.refused("max_connections")
                writer.transport.abort()
                return
            if task is not None:
                tasks.add(task)
            try:
                handler = WyomingHandler(
                    reader,
                    writer,
                    calls=self.calls,
                    info=info,
                    peer=peer,
                    spoken=spoken,
                    noise=self._refusals,
                )
                await handler.run()
            finally:
                if task is not None:
                    tasks.discard(task)

        listener = await asyncio.start_server(
            connected,
            sock=self._sock,
            limit=_LINE_LIMIT,
            ssl=self._tls,
            ssl_handshake_timeout=settings.hello_timeout if self._tls is not None else None,
        )
        self._ready.set()
        await self._stop.wait()
        # Close, cancel, then wait: from Python 3.12 wait_closed() waits for every client
        # connection, so the handlers go first.
        listener.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await listener.wait_closed()
