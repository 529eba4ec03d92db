"""Real Kokoro-82M (the embedded default) through the daemon, heard by an independent ASR."""

from __future__ import annotations

from pathlib import Path

import pytest

from kokoro_service.client import speak
from kokoro_service.config import Settings
from kokoro_service.daemon import load_off_main_thread
from kokoro_service.models import embedded
from kokoro_service.protocol import SAMPLE_RATE
from kokoro_service.server import Server

from .asr import TELEPHONY_SENTENCES, corpus_word_error_rate, transcribe
from .conftest import TEST_TIMEOUT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    cache = tmp_path_factory.getbasetemp() / "embedded-model-cache"
    # The daemon's own loader: no model dir, no hub cache, so the embedded import.
    settings = Settings(tcp_port=0, udp_port=0, cache_dir=cache, workers=2, device="cpu")
    loaded = load_off_main_thread(settings)
    assert loaded.engine.source.kind == "embedded"
    assert loaded.voice == "jm_kumo"  # af_sky is not embedded: the logged substitute
    assert loaded.warm is not None and loaded.warm.rtf > 0
    engine, voice = loaded.engine, loaded.voice
    server = Server(settings, engine, voice=voice)
    server.start()
    return server


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
    real_server.stop(drain_timeout=5)


def test_cache_dir_layout(tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = tmp_path_factory.getbasetemp() / "embedded-model-cache"
    dirs = [p for p in Path(cache).iterdir() if p.is_dir() and p.name.startswith("kokoro-82m")]
    assert len(dirs) == 1
    assert {p.name for p in (dirs[0] / "voices").iterdir()} == {
        f"{v}.pt" for v in embedded.EMBEDDED_VOICES
    }
