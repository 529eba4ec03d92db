"""Telephony extensions over real sockets: audio formats, WORDS frames, phone text.

The daemon runs the real engine on a small random-weight checkpoint: durations, and so
frame lengths and word timings, are deterministic, while the audio is noise.
"""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest

from kokoro_service.config import Settings
from kokoro_service.daemon import text_rewrite
from kokoro_service.errors import ConfigError, ProtocolError
from kokoro_service.synthesis.engine import Engine, Request
from kokoro_service.text.segmenter import Segmenter, SegmenterConfig
from kokoro_service.wire.client import Connection
from kokoro_service.wire.codec import (
    Audio,
    AudioStreamDecoder,
    Control,
    End,
    ServerFrame,
    Words,
    encode_control,
    encode_register,
)
from tests.conftest import (
    TEST_TIMEOUT,
    DaemonFactory,
    FakeSink,
    LogCapture,
    wait_for,
)

TEXTS = ["Thanks for calling Acme Dental.", "How can I help you today?"]


def segments(texts: list[str]) -> list[str]:
    seg = Segmenter(SegmenterConfig(growth=0))
    out = [s for t in texts for s in seg.push(t)]
    return out + seg.flush()


def frames_in_order(sock: socket.socket, width: int) -> list[ServerFrame]:
    """Every frame the daemon sends on ``sock``, in the order it sent them."""
    decoder = AudioStreamDecoder(width=width)
    frames: list[ServerFrame] = []
    sock.settimeout(TEST_TIMEOUT)
    while not frames or not isinstance(frames[-1], End):
        data = sock.recv(1 << 16)
        if not data:
            break
        frames += decoder.feed(data)
    return frames


def check_words_and_audio(
    frames: list[ServerFrame], engine: Engine, texts: list[str], rate: int, width: int
) -> None:
    """WORDS just before each AUDIO frame, ids 1..n, the rate asked for, every sample of
    every segment, and each segment's words in its own frame."""
    assert isinstance(frames[-1], End)
    pairs = list(zip(frames[:-1:2], frames[1:-1:2], strict=True))
    assert len(pairs) * 2 == len(frames) - 1
    expected = [engine.synthesize(s, voice="af_sky", lang="a") for s in segments(texts)]
    total = 0
    for i, (words, audio) in enumerate(pairs, start=1):
        assert isinstance(words, Words) and isinstance(audio, Audio)
        assert words.chunk_id == audio.chunk_id == i
        assert audio.sample_rate == rate and len(audio.samples) % width == 0
        total += len(audio.samples) // width
        seconds = len(audio.samples) / width / rate
        for w in words.words:
            assert 0 <= w.start < w.end <= seconds + 0.1
    # Every segment's frame carries its words; a last frame may hold the resampler's tail.
    for (words, _), synth in zip(pairs, expected, strict=False):
        assert isinstance(words, Words)
        assert [w.word for w in words.words] == [w.word for w in synth.words]
    assert all(isinstance(w, Words) and not w.words for w, _ in pairs[len(expected) :])
    want = sum(len(s.audio) for s in expected if s.audio is not None) * rate / 24_000
    assert abs(total - want) <= 1


@pytest.mark.parametrize(("fmt", "rate", "width"), [("s16le", 16_000, 2), ("alaw", 8_000, 1)])
def test_a_call_gets_its_format_and_words(
    daemon: DaemonFactory, engine: Engine, fmt: str, rate: int, width: int
) -> None:
    server = daemon()
    with Connection(*server.tcp_address) as conn:
        conn.hello("41")
        conn.control(format=fmt, rate=rate, words=True)
        for text in TEXTS:
            conn.text(text)
        conn.bye()
        frames = frames_in_order(conn.sock, width)
    check_words_and_audio(frames, engine, TEXTS, rate, width)


def test_a_sink_gets_the_calls_format_and_words(daemon: DaemonFactory, engine: Engine) -> None:
    server = daemon()
    call_id = "7"
    sink = FakeSink(server.settings.sink_port_base + int(call_id), width=1)
    try:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.sendto(encode_register(call_id), server.udp_address)
        udp.close()
        assert wait_for(lambda: call_id in server.registry)
        with Connection(*server.tcp_address) as conn:
            conn.hello(call_id)
            conn.control(format="mulaw", rate=8000, words=True)
            for text in TEXTS:
                conn.text(text)
            conn.bye()
            reply = conn.read_until_end(TEST_TIMEOUT)
        assert reply.ended and not reply.chunks
        assert sink.wait_end()
        # The sink's frames, with its WORDS frames put back in front of their AUDIO.
        words = {w.chunk_id: w for w in sink.words}
        ordered: list[ServerFrame] = []
        for frame in sink.frames:
            if isinstance(frame, Audio):
                ordered.append(words[frame.chunk_id])
            ordered.append(frame)
        check_words_and_audio(ordered, engine, TEXTS, 8000, 1)
    finally:
        sink.close()


def test_format_after_the_first_text_is_refused_and_the_call_goes_on(
    daemon: DaemonFactory, logs: LogCapture
) -> None:
    server = daemon()
    with Connection(*server.tcp_address) as conn:
        conn.hello("42")
        conn.control(format="s16le", rate=16000)
        conn.text(TEXTS[0])
        with pytest.raises(ProtocolError):  # the client knows the rule ...
            conn.control(format="f32le", rate=24000)
        conn.send_raw(encode_control(Control(format="f32le", rate=24000)))  # ... the daemon too
        conn.text(TEXTS[1])
        conn.bye()
        frames = frames_in_order(conn.sock, 2)
    assert logs.wait("format refused call=42", "keeping s16le@16000")
    audio = [f for f in frames if isinstance(f, Audio)]
    assert len(audio) >= 2 and {a.sample_rate for a in audio} == {16000}
    assert isinstance(frames[-1], End)


def test_cancel_forgets_the_resamplers_held_audio(daemon: DaemonFactory) -> None:
    server = daemon()
    with Connection(*server.tcp_address) as conn:
        conn.hello("43")
        conn.control(format="s16le", rate=8000)
        conn.text(TEXTS[0])
        assert wait_for(lambda: conn.read_some(0.2) and len(conn.reply.chunks) >= 1)
        conn.control(cancel=True)
        conn.text(TEXTS[1])
        conn.bye()
        reply = conn.read_until_end(TEST_TIMEOUT)
    assert reply.ended
    assert reply.chunk_ids == list(range(1, len(reply.chunks) + 1))


def test_words_heard_follow_the_playback_position(daemon: DaemonFactory) -> None:
    server = daemon()
    with Connection(*server.tcp_address) as conn:
        conn.hello("44")
        conn.control(words=True)
        for text in TEXTS:
            conn.text(text)
        conn.bye()
        reply = conn.read_until_end(TEST_TIMEOUT)
    every = reply.words_heard(reply.seconds + 1)
    assert [
        w.word for w in every
    ] == "Thanks for calling Acme Dental How can I help you today".split()
    # Half way through playback: a prefix of the words, each over by then, the next not.
    half = reply.seconds / 2
    heard = reply.words_heard(half)
    assert 0 < len(heard) < len(every) and heard == every[: len(heard)]
    assert heard[-1].end <= half < every[len(heard)].end


def test_word_times_follow_speed_and_batching(engine: Engine) -> None:
    text = "Your table for four is ready at seven thirty."
    normal = engine.synthesize(text, voice="af_sky", lang="a")
    fast = engine.synthesize(text, voice="af_sky", lang="a", speed=2.0)
    assert normal.audio is not None and fast.audio is not None
    assert [w.word for w in normal.words] == "Your table for four is ready at seven thirty".split()
    assert all(
        a.end <= b.start + 1e-9 for a, b in zip(normal.words, normal.words[1:], strict=False)
    )
    assert normal.words[-1].end <= normal.audio_seconds
    ratio = fast.words[-1].end / normal.words[-1].end
    assert 0.4 < ratio < 0.6  # durations are divided by the speed, then rounded to frames
    batch = engine.synthesize_batch([Request(text, "af_sky", "a"), Request("Okay.", "af_sky", "a")])
    first = batch[0]
    assert not isinstance(first, Exception)
    assert first.words == normal.words  # the same durations, batched or not


# --------------------------------------------------------------------------- phone text


def test_phone_text_and_the_lexicon_reach_g2p_through_the_daemon(
    daemon: DaemonFactory, engine: Engine, tmp_path: Path
) -> None:
    # The words a caller hears are the words G2P read: the WORDS frames show them.
    lexicon = tmp_path / "names.txt"
    lexicon.write_text("# name  phonemes\nNguyen  wˈɪn\n", encoding="utf-8")
    settings = Settings(lexicon=lexicon)
    rewrite = text_rewrite(settings, set(engine.model.vocab))
    assert rewrite is not None
    server = daemon()
    engine.rewrite = rewrite
    try:
        with Connection(*server.tcp_address) as conn:
            conn.hello("57")
            conn.control(words=True)
            conn.text("Dr. Nguyen is at 555-0199.")
            conn.bye()
            reply = conn.read_until_end(TEST_TIMEOUT)
        spoken = [w.word for w in reply.words_heard(math.inf)]
        assert spoken == "Doctor Nguyen is at five five five zero one nine nine".split()
        assert "wˈɪn" in engine.phonemize("Nguyen", "a")[0].phonemes
    finally:
        engine.rewrite = None


def test_a_bad_lexicon_fails_start_up_with_its_line(engine: Engine, tmp_path: Path) -> None:
    lexicon = tmp_path / "names.txt"
    lexicon.write_text("Nguyen wˈɪn\nPatel\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="line 2"):
        text_rewrite(Settings(lexicon=lexicon), set(engine.model.vocab))
    assert text_rewrite(Settings(phone_text=False), set()) is None
