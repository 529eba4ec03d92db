"""Per-call audio formats (PROTOCOL.md 5.1) and the WORDS frame's codec, without a daemon.

G.711 is checked against CPython's own C implementation (``audioop``, deprecated but
present on the Pythons this project supports) and against the G.711 error bound; the
resampler against reference tones and against one-shot resampling of the same signal.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import numpy.typing as npt
import pytest
import soxr

from kokoro_service.audio.formats import (
    AudioFormat,
    CallEncoder,
    alaw_to_linear,
    decode_samples,
    encode_samples,
    linear_to_alaw,
    linear_to_ulaw,
    ulaw_to_linear,
)
from kokoro_service.errors import ProtocolError
from kokoro_service.wire.codec import (
    Audio,
    AudioStreamDecoder,
    Control,
    End,
    Word,
    Words,
    encode_audio,
    encode_control,
    encode_end,
    encode_words,
    parse_control,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)
ALL_BYTES = np.arange(256, dtype=np.uint8)


def tone(freq: float, seconds: float, rate: int = 24_000) -> npt.NDArray[np.float32]:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def level_db(x: npt.NDArray[np.float32]) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-12))


# ------------------------------------------------------------------------------ G.711


def test_g711_matches_the_reference_implementation_for_every_input() -> None:
    raw = ALL_PCM.tobytes()
    assert bytes(linear_to_ulaw(ALL_PCM)) == audioop.lin2ulaw(raw, 2)
    assert bytes(linear_to_alaw(ALL_PCM)) == audioop.lin2alaw(raw, 2)
    assert ulaw_to_linear(ALL_BYTES).tobytes() == audioop.ulaw2lin(ALL_BYTES.tobytes(), 2)
    assert alaw_to_linear(ALL_BYTES).tobytes() == audioop.alaw2lin(ALL_BYTES.tobytes(), 2)


@pytest.mark.parametrize(
    ("encode", "decode", "top"),
    [(linear_to_ulaw, ulaw_to_linear, 32124), (linear_to_alaw, alaw_to_linear, 32256)],
)
def test_g711_round_trip_is_within_half_a_quantisation_step(
    encode: object, decode: object, top: int
) -> None:
    x = ALL_PCM.astype(np.int32)
    back = decode(encode(ALL_PCM)).astype(np.int32)  # type: ignore[operator]
    err = np.abs(back - x)
    inside = np.abs(x) <= top
    # Each of the 8 octave-wide segments has 16 levels, so half a step is at most 1/32 of
    # the larger of the value and its code's level, plus the encoder's truncation...
    bound = np.maximum(np.abs(x), np.abs(back)) / 32.0 + 8.0
    assert (err[inside] <= bound[inside]).all()
    # ... and beyond the largest code, the error is the clipping itself.
    assert (back[~inside] == np.sign(x[~inside]) * top).all()


def test_pcm16_rounds_and_clips() -> None:
    x = np.array([0.0, 1.0, -1.0, 2.0, -2.0, 0.5], dtype=np.float32)
    assert encode_samples(x, "s16le").tolist() == [0, 32767, -32767, 32767, -32768, 16384]
    back = decode_samples(encode_samples(x, "s16le").tobytes(), "s16le")
    assert np.allclose(back[:3], x[:3], atol=1 / 32768)


# ------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("rate", [16_000, 8_000])
def test_resampler_keeps_the_passband_and_removes_the_stopband(rate: int) -> None:
    enc = CallEncoder(AudioFormat("f32le", rate))
    inband = enc.encode(tone(1000.0, 1.0)).payload.astype(np.float32)
    assert abs(level_db(inband[400:-400]) - level_db(tone(1000.0, 1.0))) < 0.1
    # A tone above the new Nyquist frequency must not fold back into the band.
    enc = CallEncoder(AudioFormat("f32le", rate))
    alias = enc.encode(tone(rate * 0.6, 1.0)).payload.astype(np.float32)
    assert level_db(alias[400:-400]) - level_db(tone(1000.0, 1.0)) < -60


@pytest.mark.parametrize("rate", [16_000, 8_000])
def test_frames_join_without_clicks(rate: int) -> None:
    signal = tone(440.0, 2.0)
    cuts = [0, 3_100, 9_000, 21_777, 30_000, 48_000]
    enc = CallEncoder(AudioFormat("f32le", rate))
    frames = [enc.encode(signal[a:b]).payload for a, b in itertools.pairwise(cuts)]
    tail = enc.flush()
    streamed = np.concatenate([*frames, *([tail] if tail is not None else [])])
    whole = soxr.resample(signal, 24_000, rate, quality="HQ")
    # Frame by frame is the same signal as all at once: nothing at the joins.
    assert len(streamed) == len(whole)
    assert np.max(np.abs(streamed - whole)) < 1e-4
    # The check has teeth: resampling each frame on its own clicks at every join.
    naive = np.concatenate(
        [soxr.resample(signal[a:b], 24_000, rate) for a, b in itertools.pairwise(cuts)]
    )
    assert np.max(np.abs(naive[: len(whole)] - whole)) > 0.05


def test_lag_places_each_frame_in_the_segments_time() -> None:
    # Clicks at known times: each frame's lag says where its segment's first sample
    # falls in the frame, so time t of a segment is at t + lag in its frame.
    rate = 8_000
    enc = CallEncoder(AudioFormat("f32le", rate))
    for _ in range(3):
        segment = np.zeros(12_000, dtype=np.float32)
        segment[6_000] = 1.0  # 0.25 s into the segment
        out = enc.encode(segment)
        peak = int(np.argmax(out.payload)) / rate
        assert out.lag >= 0
        assert abs(peak - (0.25 + out.lag)) <= 1 / rate


def test_an_encoder_never_makes_an_empty_frame() -> None:
    enc = CallEncoder(AudioFormat("mulaw", 8_000))
    out = enc.encode(np.full(10, 0.1, dtype=np.float32))  # less than the filter holds back
    assert out.payload.size > 0 and out.payload.dtype == np.uint8


def test_the_seed_format_is_untouched() -> None:
    x = tone(300.0, 0.1)
    out = CallEncoder(AudioFormat()).encode(x)
    assert out.lag == 0.0 and out.payload.dtype == np.float32
    assert np.array_equal(out.payload, x)


# -------------------------------------------------------------------------- the codec


def test_control_format_keys_round_trip_and_are_checked() -> None:
    ctl = Control(format="mulaw", rate=8000, words=True)
    assert parse_control(encode_control(ctl)[4:]) == ctl
    for bad in (
        b'{"format":"mp3"}',
        b'{"rate":44100}',
        b'{"rate":true}',
        b'{"rate":"8000"}',
        b'{"rate":8000.0}',
        b'{"words":1}',
    ):
        with pytest.raises(ProtocolError):
            parse_control(bad)


def test_words_frame_bytes_and_decoding() -> None:
    words = (Word("Thanks", 0.0, 0.31), Word("for", 0.31, 0.4504))
    frame = encode_words(7, words)
    body = (
        b'{"words":[{"word":"Thanks","start":0.0,"end":0.31},'
        b'{"word":"for","start":0.31,"end":0.45}]}'
    )
    assert frame == len(body).to_bytes(4, "big") + b"\0\0\0\0" + (7).to_bytes(4, "big") + body
    stream = frame + encode_audio(7, b"\x01\x02", sample_rate=8000, width=1) + encode_end()
    dec = AudioStreamDecoder(width=1)
    got = [f for i in range(len(stream)) for f in dec.feed(stream[i : i + 1])]
    assert got == [
        Words(7, (Word("Thanks", 0.0, 0.31), Word("for", 0.31, 0.45))),
        Audio(8000, 7, b"\x01\x02"),
        End(),
    ]
    assert encode_words(1, []).endswith(b'{"words":[]}')


def test_a_bad_words_frame_is_a_protocol_error() -> None:
    dec = AudioStreamDecoder()
    with pytest.raises(ProtocolError):
        dec.feed(b"\0\0\0\x03\0\0\0\0\0\0\0\x01{x}")
