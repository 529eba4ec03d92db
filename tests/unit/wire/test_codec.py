"""The codec, byte for byte, against PROTOCOL.md."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kokoro_service.errors import FrameTooLargeError, ProtocolError
from kokoro_service.wire.codec import (
    Audio,
    AudioStreamDecoder,
    Bye,
    ClientFrame,
    Control,
    End,
    Hello,
    Keepalive,
    Register,
    Text,
    TextStreamDecoder,
    Unregister,
    encode_audio,
    encode_bye,
    encode_control,
    encode_end,
    encode_hello,
    encode_keepalive,
    encode_register,
    encode_text,
    encode_unregister,
    parse_control,
    parse_datagram,
)

# --------------------------------------------------------------------------- vectors


def test_hello_bytes() -> None:
    assert encode_hello("42") == b"\x00\x00\x00\x0242"
    assert encode_hello("é") == b"\x00\x00\x00\x02\xc3\xa9"


def test_text_keepalive_bye_bytes() -> None:
    assert encode_text("Hi.") == b"\x00\x00\x00\x03Hi."
    assert encode_keepalive() == b"\x00\x00\x00\x00"
    assert encode_bye() == b"\xff\xff\xff\xff"


def test_control_bytes() -> None:
    raw = encode_control(Control(cancel=True))
    assert raw == struct.pack(">I", 0x8000_0000 | len(b'{"cancel":true}')) + b'{"cancel":true}'
    raw = encode_control(Control(voice="af_sky", speed=1.25, lang="b"))
    body = raw[4:]
    assert struct.unpack(">I", raw[:4])[0] == 0x8000_0000 | len(body)
    assert json.loads(body) == {"voice": "af_sky", "speed": 1.25, "lang": "b"}


def test_audio_bytes() -> None:
    samples = np.array([0.0, 1.0, -0.5], dtype=np.float32)
    raw = encode_audio(7, samples)
    assert raw[:12] == b"\x00\x00\x00\x0c" + b"\x00\x00\x5d\xc0" + b"\x00\x00\x00\x07"
    assert raw[12:] == b"\x00\x00\x00\x00" + b"\x00\x00\x80\x3f" + b"\x00\x00\x00\xbf"
    assert encode_end() == b"\x00" * 12


def test_audio_never_empty() -> None:
    with pytest.raises(ProtocolError):
        encode_audio(1, np.zeros(0, dtype=np.float32))


def test_datagram_bytes() -> None:
    assert encode_register("42") == b"REGISTER:42"
    assert encode_unregister("42") == b"BYE:42"
    assert parse_datagram(b"  REGISTER:42\n") == Register("42")
    assert parse_datagram(b"BYE:abc") == Unregister("abc")


# --------------------------------------------------------------------------- decoding

STREAM_FRAMES: list[ClientFrame] = [
    Hello("call-7"),
    Keepalive(),
    Text("Hello there. "),
    Control(voice="af_sky:0.7,af_bella:0.3", speed=1.5),
    Text("ünïcödé ✓"),
    Control(cancel=True),
    Text("after"),
    Bye(),
]


def _encode(frame: ClientFrame) -> bytes:
    if isinstance(frame, Hello):
        return encode_hello(frame.call_id)
    if isinstance(frame, Text):
        return encode_text(frame.text)
    if isinstance(frame, Control):
        return encode_control(frame)
    if isinstance(frame, Bye):
        return encode_bye()
    return encode_keepalive()


def test_round_trip_whole_stream() -> None:
    data = b"".join(_encode(f) for f in STREAM_FRAMES)
    assert TextStreamDecoder().feed(data) == STREAM_FRAMES


def test_round_trip_split_at_every_point() -> None:
    data = b"".join(_encode(f) for f in STREAM_FRAMES)
    for cut in range(len(data) + 1):
        dec = TextStreamDecoder()
        assert dec.feed(data[:cut]) + dec.feed(data[cut:]) == STREAM_FRAMES, cut


def test_round_trip_byte_by_byte() -> None:
    data = b"".join(_encode(f) for f in STREAM_FRAMES)
    dec = TextStreamDecoder()
    out: list[ClientFrame] = []
    for i in range(len(data)):
        out += dec.feed(data[i : i + 1])
    assert out == STREAM_FRAMES
    assert not dec.mid_frame


def test_audio_decoder_split_and_hello() -> None:
    a = np.linspace(-1, 1, 100, dtype=np.float32)
    data = encode_hello("9") + encode_audio(1, a) + encode_audio(2, a[:4]) + encode_end()
    for cut in range(len(data) + 1):
        dec = AudioStreamDecoder(expect_hello=True)
        frames = dec.feed(data[:cut]) + dec.feed(data[cut:])
        assert dec.call_id == "9"
        assert [type(f) for f in frames] == [Audio, Audio, End]
        first = frames[0]
        assert isinstance(first, Audio)
        assert first.sample_rate == 24000
        assert first.chunk_id == 1
        np.testing.assert_array_equal(first.to_array(), a)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (encode_text("Hi.\nHow are you?"), "control character U+000A"),
        (encode_text("x" * 2000), "HELLO length 2000 exceeds 1024"),
        (encode_bye(), "first frame must be HELLO"),
        (encode_control(Control(cancel=True)), "first frame must be HELLO"),
        (struct.pack(">I", 1025) + b"x" * 1025, "HELLO length 1025 exceeds 1024"),
        (struct.pack(">I", 3) + b"a\x07b", "control character U+0007"),
        (struct.pack(">I", 2) + b"\xff\xfe", "not valid UTF-8"),
    ],
)
def test_bad_first_frame(data: bytes, reason: str) -> None:
    dec = TextStreamDecoder()
    with pytest.raises(ProtocolError, match=re.escape(reason)):
        dec.feed(data)


def test_text_before_hello_reads_as_hello() -> None:
    # HELLO and TEXT share one wire form, so a first frame is always read as HELLO; only
    # text that cannot be a call_id (too long, control characters) is detectably wrong.
    assert TextStreamDecoder().feed(encode_text("hi")) == [Hello("hi")]


def test_length_bound_checked_before_body() -> None:
    dec = TextStreamDecoder(max_text_bytes=100)
    dec.feed(encode_hello("1"))
    # Only the 4-byte header: the error comes before any of the body exists.
    with pytest.raises(FrameTooLargeError, match="TEXT length 101 exceeds 100"):
        dec.feed(struct.pack(">I", 101))
    with pytest.raises(FrameTooLargeError):
        dec.feed(b"more")  # a failed decoder stays failed


def test_control_length_bound() -> None:
    dec = TextStreamDecoder()
    dec.feed(encode_hello("1"))
    with pytest.raises(FrameTooLargeError, match="CONTROL length 65536"):
        dec.feed(struct.pack(">I", 0x8000_0000 | 65536))


def test_second_hello_reads_as_text() -> None:
    dec = TextStreamDecoder(max_text_bytes=10)
    frames = dec.feed(encode_hello("1") + encode_text("ok"))
    assert frames == [Hello("1"), Text("ok")]
    # After HELLO every data frame is TEXT, so a second HELLO is simply a TEXT frame;
    # the grammar is enforced by the bound and by the server's call table.
    assert dec.feed(encode_hello("2")) == [Text("2")]


def test_frames_before_an_error_are_kept() -> None:
    dec = TextStreamDecoder()
    data = encode_hello("1") + encode_text("a") + struct.pack(">I", 0x8000_0002) + b"{x"
    seen: list[ClientFrame] = []
    with pytest.raises(ProtocolError, match="not valid JSON"):
        for frame in dec.frames(data):
            seen.append(frame)
    assert seen == [Hello("1"), Text("a")]


def test_invalid_utf8_text() -> None:
    dec = TextStreamDecoder()
    dec.feed(encode_hello("1"))
    with pytest.raises(ProtocolError, match="TEXT is not valid UTF-8"):
        dec.feed(struct.pack(">I", 2) + b"\xc3\x28")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{", "not valid JSON"),
        (b"[1]", "must be a JSON object"),
        (b'{"volume": 3}', "unknown key"),
        (b'{"speed": 3}', "0.5..2.0"),
        (b'{"speed": "fast"}', "must be a number"),
        (b'{"speed": true}', "must be a number"),
        (b'{"cancel": 1}', "true or false"),
        (b'{"voice": ""}', "non-empty string"),
        (b'{"lang": 5}', "non-empty string"),
        (b"\xff", "not valid UTF-8"),
    ],
)
def test_bad_control(body: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(reason)):
        parse_control(body)


def test_good_control() -> None:
    assert parse_control(b'{"speed": 1}') == Control(speed=1.0)
    assert parse_control(b"{}") == Control()


@pytest.mark.parametrize(
    "data",
    [b"", b"HELLO:1", b"REGISTER:", b"REGISTER:a\x01", b"\xff\xfe", b"R" * 513, b"BYE"],
)
def test_bad_datagrams(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_datagram(data)


# --------------------------------------------------------------------------- fuzzing


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6))
def test_fuzz_any_split_same_result(data: bytes, cuts: list[int]) -> None:
    """Any byte stream, split anywhere, gives the same frames or the same clear error."""

    def run(chunks: list[bytes]) -> tuple[list[ClientFrame], str | None]:
        dec = TextStreamDecoder(max_text_bytes=64)
        out: list[ClientFrame] = []
        try:
            for chunk in chunks:
                for frame in dec.frames(chunk):
                    out.append(frame)
        except ProtocolError as exc:
            assert str(exc)
            return out, str(exc)
        return out, None

    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert run([data]) == run(pieces)


@settings(max_examples=200, deadline=None)
@given(
    st.text(min_size=1, max_size=20).filter(
        lambda s: not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in s)
    ),
    st.lists(st.text(min_size=1, max_size=50), max_size=5),
    st.integers(1, 50),
)
def test_fuzz_round_trip(call_id: str, texts: list[str], step: int) -> None:
    frames: list[ClientFrame] = [Hello(call_id), *[Text(t) for t in texts], Bye()]
    data = b"".join(_encode(f) for f in frames)
    dec = TextStreamDecoder()
    out: list[ClientFrame] = []
    for i in range(0, len(data), step):
        out += dec.feed(data[i : i + step])
    assert out == frames
