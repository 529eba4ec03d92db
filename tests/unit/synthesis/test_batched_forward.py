"""The batched forward pass against batch 1: durations, lengths and audio, item by item.

Kokoro's generator draws noise, so two batch-1 renderings of the same phonemes differ;
that run-to-run spread is measured here (another seed) and is what the tolerance is stated
against.  With the same seed per item, batched and batch-1 audio differ only by float
rounding: on the embedded weights the log-mel distance measured 0.001-0.004 against a
spread of 0.043-0.051, so the tolerance is a quarter of the spread.  Random weights are
less sensitive to rounding: there the samples agree to 1e-4.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import torch

from kokoro_service.audio.quality import log_mel_distance
from kokoro_service.config import Settings
from kokoro_service.daemon import load_off_main_thread
from kokoro_service.errors import SynthesisError, VoiceError
from kokoro_service.synthesis.devices import bf16_unavailable
from kokoro_service.synthesis.engine import Engine, G2PChunk, Request, Synthesis
from kokoro_service.synthesis.models import batched
from kokoro_service.synthesis.models.batched import BatchItem, forward_batch
from tests.conftest import LogCapture

# Mixed on purpose: one word, a sentence, a long sentence; different voices and speeds.
MIXED = (
    ("Yes.", 0, 1.0),
    ("Hello, thanks for calling. How can I help you today?", 1, 1.3),
    ("Your prescription is ready for pickup at the pharmacy on Main Street after four.", 2, 0.8),
    ("Can I get a callback number, please?", 3, 1.0),
)
# Samples hop 600 per predicted frame (two 12.5 ms steps of 300 samples at 24 kHz).
SAMPLES_PER_FRAME = 600
SPREAD_FRACTION = 0.25


def _items(engine: Engine) -> list[BatchItem]:
    names = engine.voices.names
    items = []
    for text, voice, speed in MIXED:
        ps = engine.phonemize(text, "a")[0].phonemes
        pack = engine.voices.get(names[voice % len(names)])
        items.append(BatchItem(ps, pack[len(ps) - 1], speed))
    return items


def _batch_one(engine: Engine, item: BatchItem, seed: int) -> tuple[np.ndarray, torch.Tensor]:
    torch.manual_seed(seed)
    out = engine.model(item.phonemes, item.ref_s, item.speed, return_output=True)
    assert out.pred_dur is not None
    return out.audio.reshape(-1).numpy(), out.pred_dur.reshape(-1)


def _compare(engine: Engine) -> list[dict[str, float]]:
    items = _items(engine)
    seeds = [101, 102, 103, 104]
    with torch.inference_mode():
        batched = forward_batch(engine.model, items, seeds=seeds)
        rows = []
        for item, seed, out in zip(items, seeds, batched, strict=True):
            ref, ref_dur = _batch_one(engine, item, seed)
            other, _ = _batch_one(engine, item, seed + 1000)
            audio = out.audio.reshape(-1).numpy()
            assert torch.equal(out.pred_dur.cpu(), ref_dur), "durations differ from batch 1"
            assert len(audio) == len(ref) == SAMPLES_PER_FRAME * int(ref_dur.sum())
            rows.append(
                {
                    "max_abs": float(np.abs(audio - ref).max()),
                    "distance": log_mel_distance(ref, audio),
                    "spread": log_mel_distance(ref, other),
                }
            )
    return rows


def test_batched_items_equal_batch_one_on_random_weights(engine: Engine) -> None:
    for row in _compare(engine):
        assert row["max_abs"] < 1e-4, row
        assert row["distance"] < SPREAD_FRACTION * row["spread"], row


@pytest.mark.slow
def test_batched_items_equal_batch_one_on_real_weights(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    cache = tmp_path_factory.getbasetemp() / "embedded-model-cache"
    loaded = load_off_main_thread(
        Settings(cache_dir=cache, device="cpu", warmup=False, precision="fp32")
    )
    assert loaded.engine.source.kind == "embedded"
    for row in _compare(loaded.engine):
        assert row["distance"] < SPREAD_FRACTION * row["spread"], row


def test_the_same_item_twice_in_a_batch_gives_the_same_audio(engine: Engine) -> None:
    item = _items(engine)[1]
    with torch.inference_mode():
        a, b = forward_batch(engine.model, [item, item], seeds=[5, 5])
    assert torch.equal(a.audio, b.audio)


def test_engine_batch_isolates_a_bad_request_and_keeps_lengths(engine: Engine) -> None:
    good = [Request(text, "af_sky", "a", speed) for text, _, speed in MIXED[:3]]
    requests = [good[0], Request("Hello there.", "no_such_voice", "a"), *good[1:]]
    results = engine.synthesize_batch(requests)
    assert isinstance(results[1], VoiceError)
    for req, result in zip(good, (results[0], *results[2:]), strict=True):
        assert not isinstance(result, Exception)
        alone = engine.synthesize(req.text, voice=req.voice, lang=req.lang, speed=req.speed)
        assert result.audio is not None and alone.audio is not None
        assert len(result.audio) == len(alone.audio)  # durations are deterministic
        assert result.phonemes == alone.phonemes


def test_engine_batch_of_text_without_phonemes_gives_no_audio(engine: Engine) -> None:
    results = engine.synthesize_batch(
        [Request("   ", "af_sky", "a"), Request("Okay.", "af_sky", "a")]
    )
    first, second = results
    assert not isinstance(first, Exception) and first.audio is None
    assert not isinstance(second, Exception) and second.audio is not None


def test_warm_up_runs_a_batched_pass_and_fails_where_it_cannot(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kokoro_service.synthesis.models.sources import model_dir_source

    eng = Engine(model_dir_source(tiny_dir), device="cpu")
    eng.warm_up("af_sky", "a", max_batch=4)
    assert eng.batch_failures == 0

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CUDA out of memory (injected by the test)")

    # A --max-batch the device cannot run fails start-up, not the first busy minute.
    monkeypatch.setattr(batched, "forward_batch", out_of_memory)
    with pytest.raises(SynthesisError, match="lower --max-batch"):
        eng.warm_up("af_sky", "a", max_batch=4)


def test_phonemes_started_ahead_are_the_ones_used(engine: Engine) -> None:
    other = "Your table for four is booked for seven tonight."
    ahead = engine.phonemes_ahead(other, "a")
    ahead.result()  # done before the batch forms, as the daemon intends
    bad = engine.phonemes_ahead("Bonjour.", "zz")  # no such language: fails in the G2P thread
    bad.exception()
    results = engine.synthesize_batch(
        [Request("Okay.", "af_sky", "a", 1.0, ahead), Request("Bonjour.", "af_sky", "zz", 1.0, bad)]
    )
    # The phonemes started ahead are spoken, not a fresh G2P of the request's own text.
    alone = engine.synthesize(other, voice="af_sky", lang="a")
    first, second = results
    assert not isinstance(first, Exception) and first.phonemes == alone.phonemes
    assert first.audio is not None and alone.audio is not None
    assert len(first.audio) == len(alone.audio)
    assert isinstance(second, VoiceError) and "zz" in str(second)


def test_a_segment_of_several_chunks_is_put_back_together(engine: Engine) -> None:
    # Over 510 phonemes: kokoro's pipeline cuts it into chunks, each its own batch item.
    long = " ".join(["Your appointment with Doctor Patel is on Tuesday at three thirty."] * 9)
    assert len(engine.phonemize(long, "a")) >= 2
    # At twice the speed: half the frames to synthesize, the same chunking.
    results = engine.synthesize_batch(
        [Request("Hello.", "af_sky", "a", 2.0), Request(long, "af_sky", "a", 2.0)]
    )
    _assert_as_alone(engine, [(results[0], "Hello."), (results[1], long)], speed=2.0)


@pytest.mark.skipif(bf16_unavailable("cpu") is not None, reason="no bf16 on this CPU")
def test_batched_bf16_items_equal_batch_one_bf16(engine: Engine) -> None:
    engine.use_precision("bf16")
    try:
        items = _items(engine)[:3]
        seeds = [7, 8, 9]
        with torch.inference_mode():
            outs = forward_batch(engine.model, items, autocast=torch.bfloat16, seeds=seeds)
            for item, seed, out in zip(items, seeds, outs, strict=True):
                ref, ref_dur = _batch_one(engine, item, seed)
                other, _ = _batch_one(engine, item, seed + 1000)
                assert torch.equal(out.pred_dur.cpu(), ref_dur)  # the text side stays fp32
                audio = out.audio.reshape(-1).numpy()
                spread = log_mel_distance(ref, other)
                assert log_mel_distance(ref, audio) < SPREAD_FRACTION * spread
    finally:
        engine.use_precision("fp32")


def test_a_request_the_model_cannot_take_fails_alone(engine: Engine) -> None:
    # Phonemes beyond the model's 510-symbol context: G2P never cuts such a chunk, but a
    # caller of the engine can hand one in.
    too_long: Future[list[G2PChunk]] = Future()
    too_long.set_result([G2PChunk("ə" * 600)])
    results = engine.synthesize_batch(
        [
            Request("Okay.", "af_sky", "a"),
            Request("anything", "af_sky", "a", 1.0, too_long),
            Request("Thank you.", "af_sky", "a"),
        ]
    )
    assert isinstance(results[1], SynthesisError)
    _assert_as_alone(engine, [(results[0], "Okay."), (results[2], "Thank you.")])


def test_a_failing_batched_pass_falls_back_to_one_by_one(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, logs: LogCapture
) -> None:
    # A fault injected into the batched pass (on a GPU: running out of memory) must cost
    # no request its audio: each is then synthesized alone.
    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CUDA out of memory (injected by the test)")

    monkeypatch.setattr(batched, "forward_batch", out_of_memory)
    texts = ["Okay.", "Thank you."]
    results = engine.synthesize_batch([Request(t, "af_sky", "a") for t in texts])
    _assert_as_alone(engine, list(zip(results, texts, strict=True)))
    assert logs.has("batched synthesis of 2 segments failed", "one by one")


def _assert_as_alone(
    engine: Engine, pairs: list[tuple[Synthesis | Exception, str]], speed: float = 1.0
) -> None:
    for result, text in pairs:
        assert not isinstance(result, Exception) and result.audio is not None
        alone = engine.synthesize(text, voice="af_sky", lang="a", speed=speed).audio
        assert alone is not None and len(result.audio) == len(alone)
