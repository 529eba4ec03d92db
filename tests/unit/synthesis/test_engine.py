"""Engine: device choice, model sources, voices and blends, synthesis on real KModel code."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from kokoro_service.errors import (
    DeviceUnavailableError,
    ModelLoadError,
    StartupError,
    VoiceError,
)
from kokoro_service.synthesis.devices import select_device
from kokoro_service.synthesis.engine import Engine
from kokoro_service.synthesis.models.checkpoint import build_random_checkpoint
from kokoro_service.synthesis.models.sources import model_dir_source, resolve_source
from kokoro_service.synthesis.voices import choose_voice, parse_voice_spec

# --------------------------------------------------------------------------- devices


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(False, False, "cpu"), (True, False, "cuda"), (False, True, "mps"), (True, True, "mps")],
)
def test_auto_prefers_mps_then_cuda_then_cpu(cuda: bool, mps: bool, expected: str) -> None:
    assert select_device("auto", cuda_available=cuda, mps_available=mps) == expected


def test_named_devices() -> None:
    assert select_device("cpu", cuda_available=True, mps_available=True) == "cpu"
    assert select_device("CUDA:1", cuda_available=True, mps_available=False) == "cuda:1"
    assert select_device("mps", cuda_available=False, mps_available=True) == "mps"


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "mps"])
def test_missing_device_is_an_error_not_a_fallback(device: str) -> None:
    with pytest.raises(DeviceUnavailableError, match="not available"):
        select_device(device, cuda_available=False, mps_available=False)


def test_unknown_device_name() -> None:
    with pytest.raises(DeviceUnavailableError, match="unknown device 'tpu'"):
        select_device("tpu", cuda_available=True, mps_available=True)


# --------------------------------------------------------------------------- voices


def test_voice_spec_parsing() -> None:
    assert parse_voice_spec("af_sky") == [("af_sky", 1.0)]
    assert parse_voice_spec("af_sky:0.7, af_bella:0.3") == [("af_sky", 0.7), ("af_bella", 0.3)]
    for bad in ("", "a,,b", "af_sky:x", "af_sky:-1", "af_sky:nan", ":1"):
        with pytest.raises(VoiceError):
            parse_voice_spec(bad)


def test_blend_is_weighted_mean(engine: Engine, tiny_dir: Path) -> None:
    sky = torch.load(tiny_dir / "voices" / "af_sky.pt", weights_only=True)
    bella = torch.load(tiny_dir / "voices" / "af_bella.pt", weights_only=True)
    blend = engine.voices.get("af_sky:0.75,af_bella:0.25")
    torch.testing.assert_close(blend, 0.75 * sky + 0.25 * bella)
    assert engine.voices.get("af_sky:0.75,af_bella:0.25") is blend  # cached once


def test_an_unreadable_voice_file_is_refused_when_chosen(tiny_dir: Path, tmp_path: Path) -> None:
    """CONTROL validation loads the voice file, so a call keeps its voice rather than
    switching to one whose every segment would fail."""
    from kokoro_service.synthesis.voices import VoiceTable

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a tensor")
    table = VoiceTable({"af_sky": tiny_dir / "voices" / "af_sky.pt", "broken": broken})
    with pytest.raises(VoiceError, match="unreadable"):
        table.check("broken")
    with pytest.raises(VoiceError, match="unreadable"):
        table.check("af_sky:0.5,broken:0.5")
    assert table.cached_blends == 0


def test_unknown_voice(engine: Engine) -> None:
    with pytest.raises(VoiceError, match="unknown voice 'nobody'; available: af_bella"):
        engine.voices.get("af_sky,nobody")


def test_default_voice_substitution_only_for_builtin_default(engine: Engine) -> None:
    assert choose_voice(engine.voices, None, engine.source.description) == "af_sky"
    assert choose_voice(engine.voices, "am_adam", engine.source.description) == "am_adam"
    with pytest.raises(StartupError, match="voice 'nobody'"):
        choose_voice(engine.voices, "nobody", engine.source.description)


def test_builtin_default_is_substituted_with_a_log(tmp_path: Path) -> None:
    src = build_random_checkpoint(tmp_path / "ck", voices=("jm_kumo", "jf_alpha"))
    eng = Engine(model_dir_source(src))
    assert choose_voice(eng.voices, None, eng.source.description) == "jm_kumo"


def test_unknown_language_is_a_voice_error(engine: Engine) -> None:
    with pytest.raises(VoiceError, match="unknown language 'xx'"):
        engine.pipeline("xx")


# --------------------------------------------------------------------------- sources


def test_model_dir_must_be_complete(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        model_dir_source(tmp_path / "nope")
    partial = tmp_path / "partial"
    shutil.copytree(tiny_dir, partial)
    shutil.rmtree(partial / "voices")
    with pytest.raises(ModelLoadError, match=r"lacks voices/\*\.pt"):
        model_dir_source(partial)
    assert resolve_source(tiny_dir, tmp_path).kind == "model-dir"


def test_corrupt_weights_fail_clearly(tiny_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    (bad / "kokoro-v1_0.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="cannot load the model"):
        Engine(model_dir_source(bad))


def test_config_mismatch_fails_clearly(tiny_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "mismatch"
    shutil.copytree(tiny_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    config["plbert"]["hidden_size"] = 96
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="cannot load the model"):
        Engine(model_dir_source(bad))


# --------------------------------------------------------------------------- synthesis


def test_synthesis_gives_float32_audio(engine: Engine) -> None:
    result = engine.synthesize("Hello there.", voice="af_sky", lang="a")
    assert result.audio is not None
    assert result.audio.dtype == np.float32
    assert result.audio.ndim == 1
    assert result.audio.size % 600 == 0  # whole 25 ms duration frames
    assert np.isfinite(result.audio).all()
    assert "h" in result.phonemes


def test_nothing_to_speak(engine: Engine) -> None:
    assert engine.synthesize("   ", voice="af_sky", lang="a").audio is None


def test_weight_norm_is_folded(engine: Engine) -> None:
    assert not any(hasattr(m, "weight_g") for m in engine.model.modules())


# Out-of-lexicon words through the espeak fallback: just over one forward's 510 phonemes
# (two chunks), so the chunking path runs without synthesizing minutes of audio.
OVER_CONTEXT = "Zxqwv " * 24


@pytest.mark.parametrize(
    "text",
    [
        OVER_CONTEXT,
        "1234567890" * 20,
        "https://example.com/a/very/long/path?with=query&and=more",
        "Café, naïve, 東京, Москва.",
        "😀😀😀",
        "$12.50 at 3:30 PM on 12/25/2026.",
    ],
)
def test_hard_text_never_crashes(engine: Engine, text: str) -> None:
    result = engine.synthesize(text, voice="af_sky", lang="a")
    assert result.audio is None or np.isfinite(result.audio).all()


def test_over_context_text_is_spoken_in_several_chunks(engine: Engine) -> None:
    # The premise of the hard-text case above: more phonemes than one forward may take.
    chunks = engine.phonemize(OVER_CONTEXT, "a")
    assert len(chunks) >= 2 and all(len(c.phonemes) <= 510 for c in chunks)


def test_every_worker_thread_flushes_denormals(engine: Engine) -> None:
    """The daemon builds the engine in a loader thread and synthesizes in worker threads;
    the flush-to-zero flags are per thread, so each worker must set them itself."""
    seen: dict[str, float] = {}

    def worker() -> None:
        torch.set_flush_denormal(False)  # what a thread started elsewhere may inherit
        tiny = torch.tensor([1e-39], dtype=torch.float32)  # subnormal in float32
        seen["before"] = float((tiny * 1.0).item())
        engine.bind_thread()
        seen["after"] = float((tiny * 1.0).item())

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen["before"] != 0.0
    assert seen["after"] == 0.0


@pytest.mark.slow
def test_full_size_architecture(tmp_path: Path) -> None:
    """The full Kokoro-82M configuration, random weights, through the same loader."""
    src = build_random_checkpoint(tmp_path / "full", size="full", seed=3)
    eng = Engine(model_dir_source(src))
    params = sum(p.numel() for p in eng.model.parameters())
    assert 80e6 < params < 84e6
    result = eng.synthesize("Hi.", voice="af_sky", lang="a")
    assert result.audio is not None and np.isfinite(result.audio).all()
