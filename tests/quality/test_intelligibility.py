"""Real Kokoro-82M (the embedded default) through the daemon, heard by an independent ASR."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from kokoro_service.server.server import Server
from kokoro_service.synthesis.models import embedded
from kokoro_service.wire.client import speak
from kokoro_service.wire.codec import SAMPLE_RATE
from tests.asr import (
    TELEPHONY_SENTENCES,
    corpus_word_error_rate,
    transcribe,
    transcribe_words,
    whisper_word_error_rate,
)
from tests.conftest import TEST_TIMEOUT, RealWeights
from tests.phone_corpus import PHONE_CORPUS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_server(real_weights: RealWeights) -> Iterator[Server]:
    loaded = real_weights.loaded
    # Sentence mode: each reply is cut as on a host with speed to spare (its first clause,
    # then whole sentences), however fast this one is; the default growth cuts finer where
    # the measured speed is lower, so what is scored would follow the host's speed.
    settings = dataclasses.replace(real_weights.settings, segment_growth=0)
    server = Server(settings, loaded.engine, voice=loaded.voice)
    server.start()
    yield server
    server.stop(drain_timeout=5)


def test_daemon_speech_is_intelligible(real_server: Server) -> None:
    # One call at a time, as a voice agent speaks: this measures what a caller hears in
    # normal operation (overload trades prosody for fewer stalls and is tested elsewhere).
    replies = {
        i: speak(*real_server.tcp_address, str(100 + i), [sentence], timeout=TEST_TIMEOUT * 3)
        for i, sentence in enumerate(TELEPHONY_SENTENCES)
    }
    pairs = []
    for i, sentence in enumerate(TELEPHONY_SENTENCES):
        reply = replies[i]
        assert reply.ended
        assert reply.chunk_ids == list(range(1, len(reply.chunks) + 1))
        heard = transcribe(reply.audio(), SAMPLE_RATE)
        print(f"[{i:2d}] said : {sentence}\n     heard: {heard}")
        pairs.append((sentence, heard))
    wer = corpus_word_error_rate(pairs)
    print(f"daemon corpus WER over {len(pairs)} sentences: {wer:.1%}")
    assert wer <= 0.05


def test_the_openai_endpoint_is_intelligible_through_the_official_client(
    real_server: Server,
) -> None:
    """What an agent framework gets from ``POST /v1/audio/speech``, in each format as it
    streams (pcm, wav, and FFmpeg's mp3, opus, aac and flac), heard by the ASR: the same
    calls, scheduled like the phone calls.  The voice is named by OpenAI's ``onyx``, an
    alias of the embedded ``jm_kumo``."""
    import io

    import av
    import numpy as np
    import openai

    from kokoro_service.adapters.http.server import HttpServer
    from tests.conftest import http_app

    http = HttpServer(http_app(real_server), "127.0.0.1", 0)
    http.start()
    formats: list[Literal["pcm", "wav", "mp3", "opus", "aac", "flac"]] = [
        "pcm",
        "wav",
        "mp3",
        "opus",
        "aac",
        "flac",
    ]
    try:
        host, port = http.address
        client = openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="-", max_retries=0)
        pairs = []
        for fmt, sentence in zip(formats, TELEPHONY_SENTENCES, strict=False):
            with client.audio.speech.with_streaming_response.create(
                model="tts-1", voice="onyx", input=sentence, response_format=fmt
            ) as resp:
                data = b"".join(resp.iter_bytes())
            if fmt == "pcm":
                audio, rate = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768, 24000
            else:
                with av.open(io.BytesIO(data)) as container:
                    frames = list(container.decode(audio=0))
                audio = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
                audio = audio.astype(np.float32) / (32768 if audio.dtype == np.int16 else 1)
                rate = frames[0].sample_rate
            heard = transcribe(audio, rate)
            print(f"[{fmt}] said : {sentence}\n      heard: {heard}")
            pairs.append((sentence, heard))
    finally:
        http.stop()
    wer = corpus_word_error_rate(pairs)
    print(f"OpenAI endpoint WER over {len(pairs)} sentences: {wer:.1%}")
    # Six sentences; one misheard word is under 2 %.  pcm and wav over the first four
    # measured 5.4 % ("0199" heard as "199", "due" as "do"); audio that the endpoint or an
    # encoder garbled (a wrong width, rate or byte order, lost frames) scores near 100 %.
    # The 5 % gate over the whole corpus is test_daemon_speech_is_intelligible's.
    assert wer <= 0.10


# Plain words, so that the two aligners see the same tokens.
TIMED_REPLY = [
    "Thanks for calling Acme Dental.",
    "Your appointment is confirmed for Tuesday morning.",
    "Please arrive ten minutes early and bring your insurance card.",
    "Is there anything else I can help you with today?",
]


def test_word_times_agree_with_an_independent_asr(real_server: Server) -> None:
    reply = speak(
        *real_server.tcp_address, "300", TIMED_REPLY, words=True, timeout=TEST_TIMEOUT * 3
    )
    assert reply.ended and set(reply.words) == set(reply.chunk_ids)
    ours = reply.words_heard(math.inf)
    heard = transcribe_words(reply.audio(), SAMPLE_RATE)

    def key(word: str) -> str:
        return re.sub(r"[^a-z0-9']", "", word.lower())

    matcher = difflib.SequenceMatcher(
        a=[key(w.word) for w in ours], b=[key(h[0]) for h in heard], autojunk=False
    )
    pairs = [
        (ours[block.a + k], heard[block.b + k])
        for block in matcher.get_matching_blocks()
        for k in range(block.size)
    ]
    assert len(pairs) >= 0.9 * len(ours), "the ASR heard other words"
    errors = [abs(w.start - h[1]) for w, h in pairs] + [abs(w.end - h[2]) for w, h in pairs]
    median = statistics.median(errors)
    print(
        f"word boundaries against Whisper: {len(pairs)} words, median error {median * 1e3:.0f} ms"
    )
    assert median <= 0.080

    # Barge-in half way through: as many words count as heard from the WORDS frames as
    # the ASR heard end by then, give or take the word being spoken.
    played = reply.seconds / 2
    counted = reply.words_heard(played)
    asr_heard = [h for h in heard if h[2] <= played]
    print(f"at {played:.2f}s: {len(counted)} words counted heard, the ASR heard {len(asr_heard)}")
    assert abs(len(counted) - len(asr_heard)) <= 1


def test_phone_text_is_said_as_a_person_says_it(real_server: Server) -> None:
    """The corpus through the daemon with --phone-text (its default) and without: WER
    against the spoken forms, scored with Whisper's English normaliser."""
    engine = real_server.engine
    rewrite = engine.rewrite
    assert rewrite is not None  # the daemon's default

    def corpus_wer(call_base: int) -> float:
        pairs = []
        for i, (written, spoken) in enumerate(PHONE_CORPUS):
            reply = speak(
                *real_server.tcp_address, str(call_base + i), [written], timeout=TEST_TIMEOUT * 3
            )
            assert reply.ended
            heard = transcribe(reply.audio(), SAMPLE_RATE)
            print(f"   said: {written}\n  heard: {heard}")
            pairs.append((spoken, heard))
        return whisper_word_error_rate(pairs)

    after = corpus_wer(400)
    engine.rewrite = None  # what --no-phone-text loads
    try:
        before = corpus_wer(500)
    finally:
        engine.rewrite = rewrite
    print(f"phone corpus WER: {before:.1%} without --phone-text, {after:.1%} with it")
    assert after <= 0.15
    assert after <= 0.6 * before


def test_cache_dir_layout(tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = tmp_path_factory.getbasetemp() / "embedded-model-cache"
    dirs = [p for p in Path(cache).iterdir() if p.is_dir() and p.name.startswith("kokoro-82m")]
    assert len(dirs) == 1
    assert {p.name for p in (dirs[0] / "voices").iterdir()} == {
        f"{v}.pt" for v in embedded.EMBEDDED_VOICES
    }
