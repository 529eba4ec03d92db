"""Compressed audio encoded as it is produced: mp3, Ogg Opus, AAC (ADTS) and FLAC.

FFmpeg's encoders, through PyAV, fed 16-bit PCM frame by frame.  Each :meth:`feed` returns
the bytes that are ready, so a reply's first bytes leave with its first segment instead
of after the whole reply (libsndfile, used before, writes only whole files and has no
AAC).  The containers chosen need no seeking back: mp3 and ADTS are plain frame streams,
Ogg pages are flushed every 20 ms of audio, and FLAC leaves the total length in its
STREAMINFO unset, which the format allows for a stream.

Pure computation on bytes: nothing here touches a socket or a call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, cast

import av
import numpy as np


@dataclass(frozen=True, slots=True)
class Codec:
    """How one response format is made: FFmpeg's container and encoder, the bit rate for
    lossy ones, and the media type it is served as."""

    container: str
    encoder: str
    media_type: str
    bit_rate: int | None = None
    options: tuple[tuple[str, str], ...] = ()


# Bit rates for 24 kHz mono speech: mp3 and AAC are transparent for speech near 64 kb/s,
# Opus at 32 kb/s (it was designed for speech at far less).
CODECS: Final[dict[str, Codec]] = {
    "mp3": Codec("mp3", "libmp3lame", "audio/mpeg", 64_000),
    # The Ogg muxer holds a page for a second by default: 20 ms pages let audio out as
    # soon as the encoder has it.
    "opus": Codec("ogg", "libopus", "audio/ogg", 32_000, (("page_duration", "20000"),)),
    "aac": Codec("adts", "aac", "audio/aac", 64_000),
    "flac": Codec("flac", "flac", "audio/flac"),
}


class _Sink:
    """A write-only file for the muxer: no ``seek``, so FFmpeg writes a pure stream."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def take(self) -> bytes:
        out = bytes(self.data)
        self.data.clear()
        return out


class StreamEncoder:
    """One reply's encoder: :meth:`feed` 16-bit little-endian mono PCM as it comes, then
    :meth:`finish` once for the tail.  Not thread-safe; one reply, one encoder."""

    def __init__(self, fmt: str, rate: int) -> None:
        codec = CODECS[fmt]  # KeyError for a format that is not encoded here
        self.media_type = codec.media_type
        self._rate = rate
        self._sink = _Sink()
        self._out = av.open(self._sink, "w", format=codec.container, options=dict(codec.options))
        # An audio encoder's name gives an audio stream; the stubs type the union.
        self._stream = cast(
            "av.audio.stream.AudioStream",
            self._out.add_stream(codec.encoder, rate=rate, layout="mono"),
        )
        if codec.bit_rate is not None:
            self._stream.bit_rate = codec.bit_rate
        self._pts = 0
        self._done = False

    def feed(self, pcm: bytes | bytearray | memoryview) -> bytes:
        """Encode ``pcm`` (s16le samples, a whole number of them) and return what is ready."""
        samples = np.frombuffer(pcm, dtype="<i2")
        if self._done or samples.size == 0:
            return b""
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self._rate
        frame.pts = self._pts
        self._pts += samples.size
        for packet in self._stream.encode(frame):
            self._out.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        """Flush the encoder and close the container; the stream's last bytes."""
        if self._done:
            return b""
        self._done = True
        for packet in self._stream.encode(None):
            self._out.mux(packet)
        self._out.close()
        return self._sink.take()

    def close(self) -> None:
        """Release the encoder without flushing (the reply was abandoned)."""
        if not self._done:
            self._done = True
            self._out.close()
