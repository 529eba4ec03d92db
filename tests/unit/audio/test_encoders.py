"""The streaming encoders: bytes come out as PCM goes in, and decode to what went in."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from kokoro_service.audio.encoders import CODECS, StreamEncoder

RATE = 24000


def tone(seconds: float, start: int = 0) -> bytes:
    n = np.arange(start, start + int(seconds * RATE))
    return (np.sin(2 * np.pi * 220 * n / RATE) * 8000).astype("<i2").tobytes()


@pytest.mark.parametrize("fmt", sorted(CODECS))
def test_each_frame_gives_bytes_before_the_stream_ends(fmt: str) -> None:
    encoder = StreamEncoder(fmt, RATE)
    parts = [encoder.feed(tone(0.5, start=i * RATE // 2)) for i in range(4)]
    tail = encoder.finish()
    # Bytes leave with the first half second already (mp3 and AAC keep a frame or two
    # of look-ahead; Ogg's 20 ms pages and FLAC's blocks leave at once).
    assert parts[0], fmt
    assert all(parts[1:]), [len(p) for p in parts]
    with av.open(io.BytesIO(b"".join(parts) + tail)) as got:
        frames = list(got.decode(audio=0))
    seconds = sum(f.samples for f in frames) / frames[0].sample_rate
    assert abs(seconds - 2.0) < 0.1, seconds  # the tail holds only the encoder's padding


def test_a_reply_left_unfinished_can_be_closed() -> None:
    encoder = StreamEncoder("mp3", RATE)
    encoder.feed(tone(0.2))
    encoder.close()  # a client that left: no flush, nothing raised
    assert encoder.feed(tone(0.2)) == b"" and encoder.finish() == b""


def test_an_empty_frame_is_nothing() -> None:
    encoder = StreamEncoder("flac", RATE)
    assert encoder.feed(b"") == b""
    encoder.close()


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(KeyError):
        StreamEncoder("wma", RATE)
