"""Wire codec for the daemon's protocol (``PROTOCOL.md``): pure functions over ``bytes``.

Nothing here touches a socket.  The module has three responsibilities:

1. Encode every frame a peer or the daemon may send (HELLO, TEXT, KEEPALIVE, BYE, CONTROL,
   AUDIO, WORDS, END) and the UDP registration datagrams.
2. Decode the text connection's byte stream incrementally (:class:`TextStreamDecoder`),
   checking each length against its bound *before* any of the body is buffered.
3. Decode the audio stream a client or an audio processor receives
   (:class:`AudioStreamDecoder`).

All header integers are unsigned 32-bit big-endian; audio samples are float32
little-endian, mono, 24 kHz, unless a call asked for another format (section 5 of
``PROTOCOL.md``), in which case AUDIO payloads are that format's bytes.

Over 400 lines: every frame and datagram of PROTOCOL.md, encoded and decoded, in one
pure module that a peer's implementation can be read against.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from kokoro_service.errors import FrameTooLargeError, ProtocolError
from kokoro_service.types import SAMPLE_RATE, SAMPLE_WIDTHS, Word

KEEPALIVE_LEN: Final = 0x0000_0000
BYE_LEN: Final = 0xFFFF_FFFF
CONTROL_FLAG: Final = 0x8000_0000
MAX_CONTROL_BYTES: Final = 65_535
MAX_CALL_ID_BYTES: Final = 1024
MAX_DATAGRAM_BYTES: Final = 512
DEFAULT_MAX_TEXT_BYTES: Final = 65_536
CONTROL_SPEED_RANGE: Final = (0.5, 2.0)
CONTROL_KEYS: Final = frozenset({"voice", "speed", "lang", "cancel", "format", "rate", "words"})
SAMPLE_RATES: Final = (24_000, 16_000, 8_000)
MAX_WORDS_BYTES: Final = 1 << 20  # a WORDS body a decoder accepts; a segment's is ~100x less

_U32 = struct.Struct(">I")
_AUDIO_HEADER = struct.Struct(">III")
AUDIO_HEADER_BYTES: Final = _AUDIO_HEADER.size
_FLOAT32_LE = np.dtype("<f4")

# ---------------------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame of a text connection: names the call."""

    call_id: str


@dataclass(frozen=True, slots=True)
class Text:
    """Text to speak, in order; any size from one token to a paragraph."""

    text: str


@dataclass(frozen=True, slots=True)
class Keepalive:
    """A zero-length frame; carries nothing and is ignored."""


@dataclass(frozen=True, slots=True)
class Bye:
    """End of the call's text."""


@dataclass(frozen=True, slots=True)
class Control:
    """Per-call settings and barge-in.  ``None`` means the key was absent."""

    voice: str | None = None
    speed: float | None = None
    lang: str | None = None
    cancel: bool = False
    format: str | None = None
    rate: int | None = None
    words: bool | None = None

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for key in ("voice", "speed", "lang", "format", "rate", "words"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.cancel:
            out["cancel"] = True
        return out

    @property
    def sets_format(self) -> bool:
        """Whether the frame sets the call's audio format or rate (only before its text)."""
        return self.format is not None or self.rate is not None


@dataclass(frozen=True, slots=True)
class Audio:
    """One chunk of a call's audio.  ``samples`` is float32 little-endian PCM."""

    sample_rate: int
    chunk_id: int
    samples: bytes

    def to_array(self) -> npt.NDArray[np.float32]:
        return np.frombuffer(self.samples, dtype=_FLOAT32_LE).astype(np.float32, copy=False)


@dataclass(frozen=True, slots=True)
class Words:
    """The words of the AUDIO frame ``chunk_id`` that follows (CONTROL ``words``)."""

    chunk_id: int
    words: tuple[Word, ...]


@dataclass(frozen=True, slots=True)
class End:
    """All audio of the call has been sent."""


ClientFrame = Hello | Text | Keepalive | Bye | Control
ServerFrame = Audio | Words | End


@dataclass(frozen=True, slots=True)
class Register:
    """Datagram: this audio processor plays ``call_id``."""

    call_id: str


@dataclass(frozen=True, slots=True)
class Unregister:
    """Datagram: this audio processor no longer plays ``call_id``."""

    call_id: str


Datagram = Register | Unregister

# ---------------------------------------------------------------------------- encoding


def validate_call_id(call_id: str) -> str:
    """Return ``call_id`` if the protocol allows it, else raise :class:`ProtocolError`."""
    raw = call_id.encode("utf-8")
    if not 1 <= len(raw) <= MAX_CALL_ID_BYTES:
        raise ProtocolError(f"call_id must be 1..{MAX_CALL_ID_BYTES} UTF-8 bytes, got {len(raw)}")
    bad = next((ch for ch in call_id if _is_control_char(ch)), None)
    if bad is not None:
        raise ProtocolError(f"call_id contains control character U+{ord(bad):04X}")
    return call_id


def _is_control_char(ch: str) -> bool:
    code = ord(ch)
    return code < 0x20 or 0x7F <= code <= 0x9F


def encode_hello(call_id: str) -> bytes:
    raw = validate_call_id(call_id).encode("utf-8")
    return _U32.pack(len(raw)) + raw


def encode_text(text: str, max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES) -> bytes:
    raw = text.encode("utf-8")
    if not 1 <= len(raw) <= max_text_bytes:
        raise ProtocolError(f"TEXT must be 1..{max_text_bytes} UTF-8 bytes, got {len(raw)}")
    return _U32.pack(len(raw)) + raw


def encode_keepalive() -> bytes:
    return _U32.pack(KEEPALIVE_LEN)


def encode_bye() -> bytes:
    return _U32.pack(BYE_LEN)


def encode_control(control: Control) -> bytes:
    raw = json.dumps(control.as_json(), separators=(",", ":")).encode("utf-8")
    if len(raw) > MAX_CONTROL_BYTES:
        raise ProtocolError(f"CONTROL JSON is {len(raw)} bytes, limit {MAX_CONTROL_BYTES}")
    return _U32.pack(CONTROL_FLAG | len(raw)) + raw


def encode_audio_header(
    payload_bytes: int, chunk_id: int, sample_rate: int = SAMPLE_RATE, width: int = 4
) -> bytes:
    """Header of an AUDIO frame; the payload follows it separately so it is never copied.

    ``width`` is the bytes per sample of the call's format (4 for the seed's float32).
    """
    if payload_bytes <= 0 or payload_bytes % width:
        # A zero payload would read as END to a seed peer, so it is never produced.
        raise ProtocolError(
            f"AUDIO payload must be a positive multiple of {width}, got {payload_bytes}"
        )
    if not 1 <= chunk_id <= 0xFFFF_FFFF:
        raise ProtocolError(f"chunk_id out of range: {chunk_id}")
    if sample_rate <= 0:
        raise ProtocolError("AUDIO sample_rate must be positive (0 marks WORDS and END)")
    return _AUDIO_HEADER.pack(payload_bytes, sample_rate, chunk_id)


def words_body(words: Sequence[Word]) -> bytes:
    """The JSON body of a WORDS frame; times in seconds, to the millisecond."""
    listed = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} for w in words]
    return json.dumps({"words": listed}, separators=(",", ":"), ensure_ascii=False).encode()


def encode_words_header(body_bytes: int, chunk_id: int) -> bytes:
    """Header of a WORDS frame: ``u32 n, u32 0, u32 chunk_id``; the JSON body follows."""
    if body_bytes < 2:  # n = 0 with a zero rate and chunk id would read as END
        raise ProtocolError(f"WORDS body must be at least 2 bytes, got {body_bytes}")
    if not 1 <= chunk_id <= 0xFFFF_FFFF:
        raise ProtocolError(f"chunk_id out of range: {chunk_id}")
    return _AUDIO_HEADER.pack(body_bytes, 0, chunk_id)


def encode_words(chunk_id: int, words: Sequence[Word]) -> bytes:
    """A WORDS frame: header and JSON body."""
    body = words_body(words)
    return encode_words_header(len(body), chunk_id) + body


def audio_payload(samples: npt.NDArray[np.generic]) -> memoryview:
    """The AUDIO payload bytes of ``samples``, without copying when already laid out.

    Float arrays are sent as float32 LE (the seed format); integer arrays are a call's
    encoded format (int16 LE, G.711 bytes) and are sent as they are.
    """
    if np.issubdtype(samples.dtype, np.floating):
        arr = np.ascontiguousarray(samples, dtype=_FLOAT32_LE).reshape(-1)
    else:
        arr = np.ascontiguousarray(samples).reshape(-1)
    return memoryview(arr.data).cast("B")


def sample_width(samples: npt.NDArray[np.generic]) -> int:
    """Bytes per sample of ``samples`` on the wire, as :func:`audio_payload` sends them."""
    return 4 if np.issubdtype(samples.dtype, np.floating) else samples.dtype.itemsize


def encode_audio(
    chunk_id: int,
    samples: npt.NDArray[np.generic] | bytes,
    sample_rate: int = SAMPLE_RATE,
    width: int = 4,
) -> bytes:
    """A whole AUDIO frame; ``width`` is the bytes per sample of a ``bytes`` payload."""
    if isinstance(samples, bytes):
        payload = samples
    else:
        payload = audio_payload(samples).tobytes()
        width = sample_width(samples)
    return encode_audio_header(len(payload), chunk_id, sample_rate, width) + payload


END_FRAME: Final = _AUDIO_HEADER.pack(0, 0, 0)


def encode_end() -> bytes:
    return END_FRAME


def encode_register(call_id: str) -> bytes:
    return f"REGISTER:{validate_call_id(call_id)}".encode()


def encode_unregister(call_id: str) -> bytes:
    return f"BYE:{validate_call_id(call_id)}".encode()


# ---------------------------------------------------------------------------- decoding


def parse_control(payload: bytes) -> Control:
    """Decode and validate a CONTROL body; any deviation raises :class:`ProtocolError`."""
    try:
        obj = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            f"CONTROL is not valid UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"CONTROL is not valid JSON ({exc.msg} at char {exc.pos})") from None
    except RecursionError:  # 65 535 bytes of "[" nest deeper than the parser recurses
        raise ProtocolError("CONTROL is nested too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"CONTROL must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - CONTROL_KEYS)
    if unknown:
        raise ProtocolError(f"CONTROL has unknown key(s) {unknown}; allowed {sorted(CONTROL_KEYS)}")
    voice = obj.get("voice")
    if voice is not None and (not isinstance(voice, str) or not voice.strip()):
        raise ProtocolError("CONTROL 'voice' must be a non-empty string")
    lang = obj.get("lang")
    if lang is not None and (not isinstance(lang, str) or not lang.strip()):
        raise ProtocolError("CONTROL 'lang' must be a non-empty string")
    speed = obj.get("speed")
    if speed is not None:
        if (
            isinstance(speed, bool)
            or not isinstance(speed, int | float)
            or not math.isfinite(speed)
        ):
            raise ProtocolError("CONTROL 'speed' must be a number")
        lo, hi = CONTROL_SPEED_RANGE
        if not lo <= speed <= hi:
            raise ProtocolError(f"CONTROL 'speed' must be in {lo}..{hi}, got {speed}")
        speed = float(speed)
    cancel = obj.get("cancel", False)
    if not isinstance(cancel, bool):
        raise ProtocolError("CONTROL 'cancel' must be true or false")
    fmt = obj.get("format")
    if fmt is not None and fmt not in SAMPLE_WIDTHS:
        raise ProtocolError(f"CONTROL 'format' must be one of {', '.join(SAMPLE_WIDTHS)}")
    rate = obj.get("rate")
    if rate is not None and (type(rate) is not int or rate not in SAMPLE_RATES):
        raise ProtocolError(
            f"CONTROL 'rate' must be one of {', '.join(str(r) for r in SAMPLE_RATES)}"
        )
    words = obj.get("words")
    if words is not None and not isinstance(words, bool):
        raise ProtocolError("CONTROL 'words' must be true or false")
    return Control(
        voice=voice,
        speed=speed,
        lang=lang,
        cancel=cancel,
        format=fmt,
        rate=None if rate is None else int(rate),
        words=words,
    )


def parse_words(body: bytes) -> tuple[Word, ...]:
    """Decode a WORDS body; any deviation raises :class:`ProtocolError`."""
    try:
        obj = json.loads(body.decode("utf-8"))
        listed = obj["words"]
        return tuple(Word(str(w["word"]), float(w["start"]), float(w["end"])) for w in listed)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"bad WORDS body ({type(exc).__name__}: {exc})") from None


def _decode_utf8(payload: bytes, what: str) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            f"{what} is not valid UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None


class TextStreamDecoder:
    """Incremental decoder of the text connection (LLM process → daemon).

    Responsibilities: split an arbitrary byte stream into frames, enforce every per-frame
    bound as soon as the 4-byte header is complete (so an oversized body is never
    buffered), and enforce the connection grammar: HELLO first, exactly once.
    After the first error the decoder refuses all further input.
    """

    def __init__(self, max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES) -> None:
        if not 1 <= max_text_bytes < CONTROL_FLAG:
            raise ValueError(f"max_text_bytes out of range: {max_text_bytes}")
        self.max_text_bytes = max_text_bytes
        self._buf = bytearray()
        self._need: int | None = None  # body length of the frame being read
        self._header: int = 0
        self._hello_seen = False
        self._failed: ProtocolError | None = None

    @property
    def hello_seen(self) -> bool:
        return self._hello_seen

    @property
    def mid_frame(self) -> bool:
        """True when bytes of an unfinished frame are buffered."""
        return bool(self._buf) or self._need is not None

    def _check_header(self, header: int) -> int:
        """Return the body length announced by ``header``; raise if above its bound."""
        if header in (KEEPALIVE_LEN, BYE_LEN):
            return 0
        if header & CONTROL_FLAG:
            n = header & ~CONTROL_FLAG
            if n > MAX_CONTROL_BYTES:
                raise FrameTooLargeError(
                    f"CONTROL length {n} exceeds {MAX_CONTROL_BYTES} (header 0x{header:08X})"
                )
            return n
        bound = MAX_CALL_ID_BYTES if not self._hello_seen else self.max_text_bytes
        if header > bound:
            kind = "HELLO" if not self._hello_seen else "TEXT"
            raise FrameTooLargeError(f"{kind} length {header} exceeds {bound}")
        return header

    def _frame(self, header: int, body: bytes) -> ClientFrame:
        if header == KEEPALIVE_LEN:
            return Keepalive()
        if not self._hello_seen:
            if header == BYE_LEN or header & CONTROL_FLAG:
                raise ProtocolError("first frame must be HELLO")
            self._hello_seen = True
            return Hello(validate_call_id(_decode_utf8(body, "HELLO call_id")))
        if header == BYE_LEN:
            return Bye()
        if header & CONTROL_FLAG:
            return parse_control(body)
        return Text(_decode_utf8(body, "TEXT"))

    def feed(self, data: bytes) -> list[ClientFrame]:
        """Consume ``data``; return every frame it completes, in order.

        Raises :class:`ProtocolError` at the first malformed frame, which loses the frames
        completed before it in the same call; callers that must act on those iterate
        :meth:`frames` instead.
        """
        return list(self.frames(data))

    def frames(self, data: bytes) -> Iterator[ClientFrame]:
        """Consume ``data`` and yield frames one by one; the error, if any, comes last."""
        if self._failed is not None:
            raise self._failed
        self._buf += data
        while (frame := self._next()) is not None:
            yield frame

    def _next(self) -> ClientFrame | None:
        if self._failed is not None:
            raise self._failed
        try:
            if self._need is None:
                if len(self._buf) < 4:
                    return None
                self._header = _U32.unpack_from(self._buf, 0)[0]
                del self._buf[:4]
                self._need = self._check_header(self._header)
            if len(self._buf) < self._need:
                return None
            body = bytes(self._buf[: self._need])
            del self._buf[: self._need]
            self._need = None
            return self._frame(self._header, body)
        except ProtocolError as exc:
            self._failed = exc
            self._buf.clear()
            raise

    def wanted(self) -> int:
        """Bytes still missing for the frame in progress (counting a header as 4)."""
        if self._need is None:
            return max(1, 4 - len(self._buf))
        return max(1, self._need - len(self._buf))


class AudioStreamDecoder:
    """Incremental decoder of the daemon's output (AUDIO and END frames).

    Used by clients, tests, benchmarks and the ``send`` command.  With
    ``expect_hello=True`` it first reads the HELLO frame that an audio processor sink
    receives (``u32 len`` + call_id).  ``width`` is the bytes per sample of the format
    the call asked for (4, float32, unless it sent CONTROL ``format``); WORDS frames are
    decoded whether or not they were asked for.
    """

    def __init__(
        self, *, expect_hello: bool = False, max_payload: int = 1 << 28, width: int = 4
    ) -> None:
        self._buf = bytearray()
        self._expect_hello = expect_hello
        self.call_id: str | None = None
        self.max_payload = max_payload
        self.width = width

    def feed(self, data: bytes) -> list[ServerFrame]:
        self._buf += data
        out: list[ServerFrame] = []
        while True:
            if self._expect_hello:
                if len(self._buf) < 4:
                    return out
                n = _U32.unpack_from(self._buf, 0)[0]
                if n > MAX_CALL_ID_BYTES:
                    raise FrameTooLargeError(f"sink HELLO length {n} exceeds {MAX_CALL_ID_BYTES}")
                if len(self._buf) < 4 + n:
                    return out
                self.call_id = validate_call_id(_decode_utf8(bytes(self._buf[4 : 4 + n]), "HELLO"))
                del self._buf[: 4 + n]
                self._expect_hello = False
            if len(self._buf) < AUDIO_HEADER_BYTES:
                return out
            size, rate, chunk = _AUDIO_HEADER.unpack_from(self._buf, 0)
            if size == 0 and rate == 0 and chunk == 0:
                del self._buf[:AUDIO_HEADER_BYTES]
                out.append(End())
                continue
            if rate == 0:
                if not 2 <= size <= MAX_WORDS_BYTES:
                    raise ProtocolError(f"bad WORDS length {size}")
                if len(self._buf) < AUDIO_HEADER_BYTES + size:
                    return out
                body = bytes(self._buf[AUDIO_HEADER_BYTES : AUDIO_HEADER_BYTES + size])
                del self._buf[: AUDIO_HEADER_BYTES + size]
                out.append(Words(chunk, parse_words(body)))
                continue
            if size % self.width or size == 0 or size > self.max_payload:
                raise ProtocolError(f"bad AUDIO payload size {size}")
            if len(self._buf) < AUDIO_HEADER_BYTES + size:
                return out
            payload = bytes(self._buf[AUDIO_HEADER_BYTES : AUDIO_HEADER_BYTES + size])
            del self._buf[: AUDIO_HEADER_BYTES + size]
            out.append(Audio(sample_rate=rate, chunk_id=chunk, samples=payload))


def parse_datagram(data: bytes) -> Datagram:
    """Decode a registration datagram; raise :class:`ProtocolError` with the reason."""
    if len(data) > MAX_DATAGRAM_BYTES:
        raise FrameTooLargeError(f"datagram is {len(data)} bytes, limit {MAX_DATAGRAM_BYTES}")
    text = _decode_utf8(data, "datagram").strip()
    verb, sep, call_id = text.partition(":")
    if not sep or verb not in ("REGISTER", "BYE"):
        shown = text[:40] + ("..." if len(text) > 40 else "")
        raise ProtocolError(f"datagram is not REGISTER:<call_id> or BYE:<call_id>: {shown!r}")
    validate_call_id(call_id)
    return Register(call_id) if verb == "REGISTER" else Unregister(call_id)
