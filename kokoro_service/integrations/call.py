"""One daemon call over the text port, for asyncio frameworks: what both plugins share.

:class:`DaemonCall` opens a text connection, says HELLO and one CONTROL (s16le at the
rate asked for, WORDS on, the voice, speed and language), streams TEXT as the framework
produces it, and reads the reply back as :class:`Heard` frames: each AUDIO frame with the
words of the WORDS frame before it, both timed from the call's first sample.  BYE ends
the text; :meth:`DaemonCall.cancel` is barge-in: CONTROL ``cancel`` then BYE while the
text is still coming, after which the daemon drops the call's queued text and unsent
audio and sends END; a reset of the connection once BYE has gone (the daemon reads
nothing after BYE), after which its next write fails and it drops the call's work.

It speaks only ``PROTOCOL.md`` through :mod:`kokoro_service.wire.codec`, the same
frames as the blocking :mod:`kokoro_service.wire.client`, and never imports the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

from kokoro_service.errors import CallIncompleteError, ProtocolError
from kokoro_service.types import SAMPLE_RATE, SAMPLE_WIDTHS, Word
from kokoro_service.wire.codec import (
    SAMPLE_RATES,
    Audio,
    AudioStreamDecoder,
    Control,
    End,
    Words,
    encode_bye,
    encode_control,
    encode_hello,
    encode_text,
    parse_control,
)

log = logging.getLogger("kokoro_service.integrations")

FORMAT: Final = "s16le"
"""What the plugins ask for: the PCM16 both frameworks carry."""
WIDTH: Final = SAMPLE_WIDTHS[FORMAT]
TEXT_CHARS: Final = 16_384
"""Longest TEXT frame sent, in characters: at most 65 536 UTF-8 bytes, the daemon's
default ``--max-text-bytes``, whatever the characters."""
DEFAULT_PORT: Final = 8090


class ReplyTimeoutError(CallIncompleteError):
    """The daemon owed a call audio (its text was complete) and sent nothing for the
    call's ``read_timeout``."""


@dataclass(frozen=True, slots=True)
class CallSettings:
    """What a call asks of the daemon: its voice, speed and language (``None``: the
    daemon's defaults) and the rate of its s16le audio (24 000, 16 000 or 8 000)."""

    voice: str | None = None
    speed: float | None = None
    lang: str | None = None
    rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        if self.rate not in SAMPLE_RATES:
            raise ValueError(f"rate must be one of {SAMPLE_RATES}, got {self.rate!r}")
        try:
            check_control(self.settings())
        except ProtocolError as exc:
            raise ValueError(str(exc)) from None

    def settings(self) -> Control:
        """The CONTROL that sets voice, speed and language (only those given)."""
        return Control(voice=self.voice, speed=self.speed, lang=self.lang)

    def opening(self) -> Control:
        """The call's first CONTROL: its settings, its format, and WORDS on."""
        return Control(
            voice=self.voice,
            speed=self.speed,
            lang=self.lang,
            format=FORMAT,
            rate=self.rate,
            words=True,
        )


def check_control(control: Control) -> Control:
    """``control`` if the daemon would take it; the daemon's own reason otherwise
    (:class:`ProtocolError`), so that a bad setting fails here rather than closing a call."""
    frame = encode_control(control)
    parse_control(frame[4:])  # the body, after the u32 header
    return control


@dataclass(frozen=True, slots=True)
class Heard:
    """One AUDIO frame of a call: s16le ``pcm`` at ``rate``, starting ``start`` seconds
    after the call's first sample, and its words timed from the call's first sample."""

    chunk_id: int
    pcm: bytes
    rate: int
    start: float
    words: tuple[Word, ...]

    @property
    def seconds(self) -> float:
        return len(self.pcm) / WIDTH / self.rate


class DaemonCall:
    """One call: open it, stream its text, read what it says, end or cancel it.

    Responsibilities: the frames sent (HELLO, CONTROL, TEXT, BYE, CONTROL ``cancel``), in
    the protocol's order; the reply decoded and timed (:meth:`heard`); a clear error for
    a daemon that cannot be reached, closes without END, sends bytes outside the protocol,
    or goes silent for ``read_timeout`` seconds while it owes audio (after BYE).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        call_id: str,
        rate: int,
        read_timeout: float,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.call_id = call_id
        self.rate = rate
        self.read_timeout = read_timeout
        self.text_ended = False
        self.cancelled = False
        self.ended = False
        """END arrived: the daemon has sent everything it owed."""
        self.chars_sent = 0
        # The reply's decoding state lives here, not in one :meth:`heard` generator, so a
        # reader cancelled mid-frame (a framework's interruption) can be followed by another.
        self._decoder = AudioStreamDecoder(width=WIDTH)
        self._words: dict[int, tuple[Word, ...]] = {}
        self._samples = 0

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        call_id: str,
        settings: CallSettings,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
    ) -> DaemonCall:
        """Connect, and send HELLO and the call's first CONTROL."""
        hello = encode_hello(call_id)  # a bad call_id fails before connecting
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), connect_timeout
            )
        except (OSError, asyncio.TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise ConnectionError(f"kokoro-service at {host}:{port} not reached: {reason}") from exc
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        call = cls(reader, writer, call_id, settings.rate, read_timeout)
        await call._send(hello + encode_control(settings.opening()))
        log.debug("call opened call=%r at %s:%d rate=%d", call_id, host, port, settings.rate)
        return call

    async def _send(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError as exc:
            raise ConnectionError(
                f"call {self.call_id!r}: the daemon's connection broke: {exc}"
            ) from exc

    async def text(self, text: str) -> None:
        """Send ``text`` as it comes (a token, a sentence): TEXT frames, cut if long."""
        if self.text_ended:
            raise ProtocolError(f"call {self.call_id!r}: TEXT after the call's BYE")
        if not text:
            return
        frames = b"".join(
            encode_text(text[i : i + TEXT_CHARS]) for i in range(0, len(text), TEXT_CHARS)
        )
        await self._send(frames)
        self.chars_sent += len(text)

    async def control(self, control: Control) -> None:
        """Voice, speed or language for the text that follows (a bad one raises here)."""
        if self.text_ended:
            return  # nothing follows a BYE for a setting to apply to
        await self._send(encode_control(check_control(control)))

    async def end_text(self) -> None:
        """BYE: the call's text is complete; the daemon speaks what it has, then END."""
        if self.text_ended:
            return
        self.text_ended = True
        await self._send(encode_bye())

    async def cancel(self) -> None:
        """Barge-in: the daemon drops the call's queued text and unsent audio.

        Before BYE this is CONTROL ``cancel`` then BYE; the daemon sends END, which
        :meth:`heard` reads (yielding nothing more).  After BYE the daemon reads nothing
        more of the connection (PROTOCOL.md: what follows BYE is discarded), so a cancel
        cannot reach it; the connection is reset instead, the daemon's next AUDIO write
        fails, and it drops the call's pending work (logging the lost connection).
        """
        if self.cancelled or self.ended:
            return
        self.cancelled = True
        if self.text_ended:
            self._reset()
            log.debug("call reset call=%r after its BYE", self.call_id)
            return
        self.text_ended = True
        with contextlib.suppress(ConnectionError):  # a daemon gone has stopped anyway
            await self._send(encode_control(Control(cancel=True)) + encode_bye())
        log.debug("call cancelled call=%r after %d chars", self.call_id, self.chars_sent)

    def _reset(self) -> None:
        """Close with a TCP reset rather than a FIN: the daemon's next write fails at once."""
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._writer.transport.abort()

    async def heard(self) -> AsyncIterator[Heard]:
        """The call's audio, frame by frame, until END (then returns).

        Raises :class:`CallIncompleteError` when the connection closes or breaks before
        END, :class:`ReplyTimeoutError` when the daemon sends nothing for
        ``read_timeout`` seconds after BYE;
        :class:`ProtocolError` for bytes outside the protocol.  After :meth:`cancel` it
        yields nothing more, and returns at END (so the daemon's close is clean) or at
        the reset.
        """
        last = time.monotonic()
        while not self.ended:
            try:
                data = await asyncio.wait_for(self._reader.read(1 << 16), 0.5)
            except asyncio.TimeoutError:
                if self.text_ended and time.monotonic() - last > self.read_timeout:
                    raise ReplyTimeoutError(
                        f"call {self.call_id!r}: no reply for {self.read_timeout:.0f} s after BYE"
                    ) from None
                continue
            except OSError as exc:
                if self.cancelled:
                    return
                raise CallIncompleteError(
                    f"call {self.call_id!r}: connection broke: {exc}"
                ) from exc
            if not data:
                if self.cancelled:  # reset by :meth:`cancel`: nothing more is wanted
                    return
                raise CallIncompleteError(f"call {self.call_id!r}: closed without END")
            last = time.monotonic()
            for frame in self._decoder.feed(data):
                if isinstance(frame, End):
                    self.ended = True
                    break
                if isinstance(frame, Words):
                    self._words[frame.chunk_id] = frame.words
                    continue
                heard = self._timed(frame)
                if not self.cancelled:
                    yield heard

    def _timed(self, frame: Audio) -> Heard:
        """The frame with its words, timed from the call's first sample."""
        if frame.sample_rate != self.rate:
            raise ProtocolError(
                f"call {self.call_id!r}: AUDIO at {frame.sample_rate} Hz, asked {self.rate}"
            )
        start = self._samples / self.rate
        self._samples += len(frame.samples) // WIDTH
        words = self._words.pop(frame.chunk_id, ())
        timed = tuple(Word(w.word, start + w.start, start + w.end) for w in words)
        return Heard(frame.chunk_id, frame.samples, frame.sample_rate, start, timed)

    async def aclose(self) -> None:
        """Close the connection (a call still owed text is then ended by the daemon as by
        BYE: call :meth:`cancel` first to stop it)."""
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


async def drain_and_close(call: DaemonCall, timeout: float = 5.0) -> None:
    """Read a cancelled or ended call on to END, at most ``timeout`` seconds, and close it:
    a socket closed with unread bytes is reset, which would cost the daemon its END."""

    async def read_on() -> None:
        async for _ in call.heard():
            pass

    try:
        await asyncio.wait_for(read_on(), timeout)
    except (asyncio.TimeoutError, CallIncompleteError, ProtocolError) as exc:
        log.debug("call %r closed before END: %s", call.call_id, exc)
    finally:
        await call.aclose()
