"""Per-call audio formats (``PROTOCOL.md`` 5.1): resampling, PCM16 and G.711.

Responsibilities:

1. :class:`AudioFormat`: what a call asked for (encoding and rate), and its bytes per sample.
2. Encode float32 samples to each wire encoding and decode them back (clients, tests).
   G.711 follows ITU-T G.711 as in the reference ``g711.c`` (the segment search of the
   13-bit A-law and 14-bit μ-law quantisers), vectorised with numpy.
3. :class:`CallEncoder`: one call's stream.  Its resampler (soxr) keeps its state from
   one AUDIO frame to the next, so that frame boundaries carry no clicks, and it tells
   where each frame's first sample falls in the model's 24 kHz time, which the WORDS
   frame's timings need.

Pure computation on arrays: nothing here touches a socket or a call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import soxr

from kokoro_service.types import SAMPLE_RATE, SAMPLE_WIDTHS

F32 = npt.NDArray[np.float32]

# soxr "HQ": 20-bit precision, passband to 91% of the output Nyquist; VHQ costs about
# twice as much for a difference far below what a phone line carries.
_QUALITY: Final = "HQ"
_SEG_AEND: Final = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)
_SEG_UEND: Final = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_ULAW_BIAS: Final = 0x84
_ULAW_CLIP: Final = 8159


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """A call's wire audio: ``encoding`` (f32le, s16le, mulaw, alaw) at ``rate`` Hz."""

    encoding: str = "f32le"
    rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        if self.encoding not in SAMPLE_WIDTHS:
            raise ValueError(f"unknown encoding {self.encoding!r}")
        if self.rate <= 0:
            raise ValueError(f"bad rate {self.rate}")

    @property
    def width(self) -> int:
        """Bytes per sample on the wire."""
        return SAMPLE_WIDTHS[self.encoding]

    @property
    def is_seed(self) -> bool:
        """The seed protocol's own format: float32 at 24 kHz, sent as the model makes it."""
        return self.encoding == "f32le" and self.rate == SAMPLE_RATE

    def __str__(self) -> str:
        return f"{self.encoding}@{self.rate}"


SEED_FORMAT: Final = AudioFormat()


# ----------------------------------------------------------------------------- encodings


def to_pcm16(samples: npt.NDArray[np.floating]) -> npt.NDArray[np.int16]:
    """Float samples in [-1, 1] to 16-bit PCM, rounded and clipped."""
    scaled = np.rint(np.asarray(samples, dtype=np.float32) * 32767.0)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def linear_to_ulaw(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    """16-bit PCM to G.711 μ-law bytes."""
    val = pcm.astype(np.int32) >> 2
    mask = np.where(val < 0, 0x7F, 0xFF)
    val = np.minimum(np.abs(val), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_SEG_UEND, val, side="left").astype(np.int32)
    uval = (seg << 4) | ((val >> (seg + 1)) & 0xF)
    uval = np.where(seg >= 8, 0x7F, uval)
    return (uval ^ mask).astype(np.uint8)


def ulaw_to_linear(data: npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    """G.711 μ-law bytes to 16-bit PCM."""
    u = (~data.astype(np.int32)) & 0xFF
    t = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def linear_to_alaw(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    """16-bit PCM to G.711 A-law bytes."""
    val = pcm.astype(np.int32) >> 3
    negative = val < 0
    mask = np.where(negative, 0x55, 0xD5)
    val = np.where(negative, -val - 1, val)
    seg = np.searchsorted(_SEG_AEND, val, side="left").astype(np.int32)
    shift = np.where(seg < 2, 1, seg)
    aval = (seg << 4) | ((val >> shift) & 0xF)
    aval = np.where(seg >= 8, 0x7F, aval)
    return (aval ^ mask).astype(np.uint8)


def alaw_to_linear(data: npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    """G.711 A-law bytes to 16-bit PCM."""
    a = data.astype(np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


def encode_samples(samples: F32, encoding: str) -> npt.NDArray[np.generic]:
    """Float32 samples as ``encoding``'s wire array (its bytes are the AUDIO payload)."""
    if encoding == "f32le":
        return np.ascontiguousarray(samples, dtype="<f4")
    pcm = to_pcm16(samples)
    if encoding == "s16le":
        return pcm.astype("<i2", copy=False)
    if encoding == "mulaw":
        return linear_to_ulaw(pcm)
    if encoding == "alaw":
        return linear_to_alaw(pcm)
    raise ValueError(f"unknown encoding {encoding!r}")


def decode_samples(payload: bytes, encoding: str) -> F32:
    """An AUDIO payload of ``encoding`` back to float32 samples in [-1, 1]."""
    if encoding == "f32le":
        return np.frombuffer(payload, dtype="<f4").astype(np.float32)
    if encoding == "s16le":
        pcm = np.frombuffer(payload, dtype="<i2")
    elif encoding == "mulaw":
        pcm = ulaw_to_linear(np.frombuffer(payload, dtype=np.uint8))
    elif encoding == "alaw":
        pcm = alaw_to_linear(np.frombuffer(payload, dtype=np.uint8))
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)


# ------------------------------------------------------------------------------ streams


@dataclass(frozen=True, slots=True)
class Encoded:
    """One frame's payload, and where its first sample lies relative to the segment's."""

    payload: npt.NDArray[np.generic]
    lag: float
    """Seconds from the frame's first sample to the segment's first sample: add it to a
    time measured from the start of the segment's 24 kHz audio."""


class CallEncoder:
    """One call's audio stream in its format.

    Responsibilities: resample 24 kHz to the call's rate with one soxr stream whose
    filter state runs on from frame to frame; encode; say how far the resampler's delay
    has moved each frame relative to its segment (:attr:`Encoded.lag`); flush the held
    tail when the call's speech pauses, and forget it on barge-in.  Not thread-safe: the
    call's lock serialises its frames.
    """

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self._stream: soxr.ResampleStream | None = None
        self._in = 0  # 24 kHz samples fed since the stream last started
        self._out = 0  # samples of the call's rate produced since then

    def _resampler(self) -> soxr.ResampleStream:
        if self._stream is None:
            self._stream = soxr.ResampleStream(
                SAMPLE_RATE, self.format.rate, 1, dtype="float32", quality=_QUALITY
            )
        return self._stream

    def encode(self, samples: F32) -> Encoded:
        """The next frame of the call: ``samples`` (24 kHz float32) in the call's format.

        The resampler holds back a few milliseconds it cannot filter yet; they open the
        next frame.  A frame never comes out empty (an empty AUDIO frame would read as
        END): if all of ``samples`` were held, the stream is flushed.
        """
        if self.format.rate == SAMPLE_RATE:
            return Encoded(encode_samples(samples, self.format.encoding), 0.0)
        lag = self._in / SAMPLE_RATE - self._out / self.format.rate
        stream = self._resampler()
        out = stream.resample_chunk(np.ascontiguousarray(samples, dtype=np.float32))
        self._in += len(samples)
        if out.size == 0:
            out = stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            self.reset()
        else:
            self._out += len(out)
        return Encoded(encode_samples(out, self.format.encoding), lag)

    def flush(self) -> npt.NDArray[np.generic] | None:
        """The held tail, encoded, or None if nothing is held; the stream starts afresh.

        Called when the call's speech pauses, so the last words of a reply are not kept
        back until its next one.
        """
        if self._stream is None or self._in == 0:
            return None
        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self.reset()
        return encode_samples(tail, self.format.encoding) if tail.size else None

    def reset(self) -> None:
        """Forget the stream (barge-in: the held tail belongs to dropped audio)."""
        if self._stream is not None:
            self._stream.clear()
        self._in = self._out = 0
