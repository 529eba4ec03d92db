"""G2P in spawned processes gives what G2P in the daemon gives, and a dead process costs
no segment its phonemes: the engine falls back to G2P in the daemon, saying so once."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from kokoro_service.synthesis.engine import Engine
from kokoro_service.synthesis.models.sources import model_dir_source

TEXT = "Hello there, your table for two is booked at seven thirty."


def _fields(token: object) -> tuple[object, ...]:
    """What word timing reads of a token."""
    return tuple(getattr(token, name) for name in ("text", "phonemes", "whitespace"))


@pytest.fixture
def proc_engine(tiny_dir: Path) -> Iterator[Engine]:
    eng = Engine(model_dir_source(tiny_dir), device="cpu", default_lang="a")
    eng.use_g2p_processes(1, "a")
    yield eng
    eng.close()


def test_processes_give_the_phonemes_and_words_of_g2p_here(proc_engine: Engine) -> None:
    here = proc_engine.phonemize(TEXT, "a")
    ahead = proc_engine.phonemes_ahead(TEXT, "a", first=True).result(60)
    assert [c.phonemes for c in ahead] == [c.phonemes for c in here]
    for a, h in zip(ahead, here, strict=True):
        assert a.tokens is not None and h.tokens is not None
        assert [_fields(t) for t in a.tokens] == [_fields(t) for t in h.tokens]
    # Whole syntheses agree too, word timings included.
    s = proc_engine.synthesize(
        TEXT, voice="af_sky", lang="a", phonemes=proc_engine.phonemes_ahead(TEXT, "a")
    )
    assert [w.word for w in s.words] == [
        w.word for w in proc_engine.synthesize(TEXT, voice="af_sky", lang="a").words
    ]


def test_a_dead_process_falls_back_to_g2p_here(
    proc_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    expected = [c.phonemes for c in proc_engine.phonemize(TEXT, "a")]
    procs = proc_engine._g2p_procs
    assert procs is not None
    for pid in list(procs._pool._processes):  # killing it is the test
        os.kill(pid, signal.SIGKILL)
    with caplog.at_level(logging.ERROR, logger="kokoro_service.synthesis.engine"):
        got = [proc_engine.phonemes_ahead(TEXT, "a").result(60) for _ in range(3)]
    assert all([c.phonemes for c in g] == expected for g in got)
    assert sum("G2P processes failed" in r.getMessage() for r in caplog.records) == 1
    assert proc_engine._g2p_procs is None


def test_an_unknown_language_fails_as_it_does_here(proc_engine: Engine) -> None:
    from kokoro_service.errors import VoiceError

    with pytest.raises(VoiceError, match="unknown language"):
        proc_engine.phonemes_ahead(TEXT, "xx").result(60)
