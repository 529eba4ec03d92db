"""The vocoder's precision: the override, the auto choice, and the quality gate.

The gate on real weights is the one the issue sets: bf16 may move the log-mel spectrogram
by at most PRECISION_GATE_FACTOR times what Kokoro's own noise source moves it between two
fp32 renderings, and Whisper's WER on the telephony corpus may rise by at most half a
point.  Renderings are seeded, so the only difference between fp32 and bf16 is the
arithmetic.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kokoro_service.audio.quality import log_mel_distance
from kokoro_service.cli import main
from kokoro_service.config import Settings
from kokoro_service.daemon import load_engine, load_off_main_thread
from kokoro_service.errors import PrecisionUnavailableError
from kokoro_service.synthesis.devices import bf16_unavailable
from kokoro_service.synthesis.engine import PRECISION_GATE_FACTOR
from kokoro_service.wire.client import speak
from tests.asr import TELEPHONY_SENTENCES, corpus_word_error_rate, transcribe
from tests.conftest import TEST_TIMEOUT
from tests.processes import BIN, Daemon, run

CPU_BF16 = bf16_unavailable("cpu")  # None where this CPU runs bf16


def test_an_unknown_precision_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["serve"], env={"KOKORO_PRECISION": "fp16"})
    assert result.exit_code == 2
    assert "KOKORO_PRECISION" in result.output and "fp16" in result.output


def test_auto_without_the_warm_up_stays_fp32(tiny_dir: Path, tmp_path: Path) -> None:
    settings = Settings(model_dir=tiny_dir, cache_dir=tmp_path, device="cpu", warmup=False)
    loaded = load_engine(settings)
    assert loaded.engine.precision == "fp32" and loaded.precision_check is None


def test_auto_with_the_warm_up_checks_bf16_where_the_cpu_has_it(
    tiny_dir: Path, tmp_path: Path
) -> None:
    settings = Settings(model_dir=tiny_dir, cache_dir=tmp_path, device="cpu", warmup=True)
    loaded = load_engine(settings)
    check = loaded.precision_check
    if CPU_BF16 is not None:
        assert check is None and loaded.engine.precision == "fp32"
        return
    # Random weights may pass or fail the gate; the choice must follow the figures.
    assert check is not None and check.chosen == loaded.engine.precision
    assert check.spread > 0 and check.fp32_rtf > 0 and check.bf16_rtf > 0
    passes = check.distance <= check.limit and check.bf16_rtf <= 0.95 * check.fp32_rtf
    assert (check.chosen == "bf16") == passes


def test_named_bf16_runs_where_the_cpu_has_it_and_fails_start_up_where_not(
    tiny_dir: Path,
) -> None:
    args = ["--model-dir", str(tiny_dir), "--precision", "bf16", "--device", "cpu", "--no-warmup"]
    if CPU_BF16 is not None:
        proc = run([str(BIN), "serve", "--tcp-port", "0", "--udp-port", "0", *args])
        assert proc.returncode == 3
        assert "precision bf16 was requested but" in proc.stderr
        return
    d = Daemon(args)
    try:
        assert d.ready["precision"] == "bf16"
        reply = speak("127.0.0.1", d.port, "1", ["Hello there."], timeout=TEST_TIMEOUT)
        assert reply.ended and reply.seconds > 0 and np.isfinite(reply.audio()).all()
    finally:
        assert d.stop() == 0


def test_the_engine_refuses_a_precision_it_does_not_know(tiny_dir: Path, tmp_path: Path) -> None:
    settings = Settings(model_dir=tiny_dir, cache_dir=tmp_path, device="cpu", warmup=False)
    engine = load_engine(settings).engine
    with pytest.raises(PrecisionUnavailableError, match="unknown precision"):
        engine.use_precision("fp8")
    assert engine.precision == "fp32"


# ------------------------------------------------------------------------------ real weights


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, str]:
    if CPU_BF16 is not None:
        pytest.skip(f"bf16 is not offered on this host: {CPU_BF16}")
    cache = tmp_path_factory.getbasetemp() / "embedded-model-cache"
    settings = Settings(cache_dir=cache, device="cpu", warmup=False, precision="fp32")
    loaded = load_off_main_thread(settings)
    assert loaded.engine.source.kind == "embedded"
    return loaded.engine, loaded.voice


@pytest.mark.slow
def test_bf16_passes_the_quality_gate_on_real_weights(real: tuple[object, str]) -> None:
    from kokoro_service.synthesis.engine import Engine

    engine, voice = real
    assert isinstance(engine, Engine)
    distances, spreads, fp32_pairs, bf16_pairs = [], [], [], []
    for sentence in TELEPHONY_SENTENCES:
        a = engine.synthesize_seeded(sentence, voice, "a", "fp32", seed=1)
        b = engine.synthesize_seeded(sentence, voice, "a", "bf16", seed=1)
        c = engine.synthesize_seeded(sentence, voice, "a", "fp32", seed=2)
        assert a.audio is not None and b.audio is not None and c.audio is not None
        # The text side stays fp32, so bf16 keeps every duration: the same length.
        assert len(a.audio) == len(b.audio) == len(c.audio)
        distances.append(log_mel_distance(a.audio, b.audio))
        spreads.append(log_mel_distance(a.audio, c.audio))
        fp32_pairs.append((sentence, transcribe(a.audio, 24000)))
        bf16_pairs.append((sentence, transcribe(b.audio, 24000)))
    engine.use_precision("fp32")
    distance, spread = float(np.mean(distances)), float(np.mean(spreads))
    wer_fp32 = corpus_word_error_rate(fp32_pairs)
    wer_bf16 = corpus_word_error_rate(bf16_pairs)
    print(
        f"log-mel distance bf16 {distance:.4f}, fp32 noise spread {spread:.4f}; "
        f"WER fp32 {wer_fp32:.3f} bf16 {wer_bf16:.3f}"
    )
    assert spread > 0, "two noise seeds must give two renderings"
    assert distance <= PRECISION_GATE_FACTOR * spread
    assert wer_bf16 <= wer_fp32 + 0.005


@pytest.mark.slow
def test_segment_seams_have_no_clicks_dc_or_clipping(
    real: tuple[object, str], tmp_path: Path
) -> None:
    """Consecutive segments of one reply, as the daemon sends them, on the bf16 path."""
    from kokoro_service.audio.quality import clipped_samples, dc_offset, seam
    from kokoro_service.server.server import Server
    from kokoro_service.synthesis.engine import Engine
    from kokoro_service.text.segmenter import Segmenter

    engine, voice = real
    assert isinstance(engine, Engine)
    engine.use_precision("bf16")
    # Sentence mode: the reply is cut into the same segments however fast the host is
    # (the default growth sizes them by the measured speed), and they are what is checked.
    settings = Settings(tcp_port=0, udp_port=0, cache_dir=tmp_path, warmup=False, segment_growth=0)
    text = " ".join(TELEPHONY_SENTENCES[:6])
    plan = Segmenter(settings.segmenter)
    segments = [*plan.push(text), *plan.flush()]
    server = Server(settings, engine, voice=voice)
    server.start()
    try:
        reply = speak(*server.tcp_address, "seams", [text], timeout=TEST_TIMEOUT * 3)
    finally:
        server.stop(drain_timeout=5)
        engine.use_precision("fp32")
    assert reply.ended
    chunks = [c.to_array() for c in reply.chunks]
    assert len(chunks) >= 4, "the reply must be cut into several segments"
    assert len(chunks) == len(segments), segments
    for i, audio in enumerate(chunks):
        assert clipped_samples(audio) == 0, i
        assert abs(dc_offset(audio)) < 0.005, i  # -46 dBFS
    for before, after in itertools.pairwise(chunks):
        s = seam(before, after)
        print(s)
        # A click is a step far larger than the audio's own steps around it.
        assert s.jump <= max(2 * s.local_step, 1e-3), s
        # Segments start and end in silence (measured about 1e-8 RMS), so a seam cannot
        # click however the player joins them; -60 dBFS is the bound.
        assert s.edge_rms < 1e-3, s
