"""Tests of the embedded int8 ONNX -> Kokoro model directory importer.

Responsibilities: prove that the imported torch KModel computes what the ONNX graph computes
(durations and log-mel spectra compared with onnxruntime), that corrupt, missing or mismatched
parts fail with ModelImportError, and that a complete cached import is reused untouched.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from kokoro_service.errors import ModelImportError
from kokoro_service.synthesis.models import embedded, onnx_import

SAMPLE_RATE = 24000
EQUIVALENCE_VOICE = "jf_alpha"
EQUIVALENCE_SENTENCES = (
    "Hello world, how are you today?",
    "Please call five five five, zero one nine nine.",
    "Hi Sarah, this is Michael from Acme Dental.",
    "Thank you for calling. Your appointment has been confirmed for Tuesday afternoon, "
    "and we will send a reminder by text message the day before.",
)
# ORT's duration tensor before the final cast; the graph only exposes audio as an output.
_ONNX_DURATION_VALUE = "/encoder/Clip_output_0"


def imported_model_dir(factory: pytest.TempPathFactory) -> Path:
    """Import once per session into a shared cache; later callers hit that cache."""
    return embedded.ensure_embedded_model(factory.getbasetemp() / "embedded-model-cache")


@pytest.fixture(scope="session")
def embedded_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return imported_model_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def embedded_config(embedded_model_dir: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((embedded_model_dir / "config.json").read_text("utf-8"))
    return config


@pytest.fixture(scope="session")
def embedded_kmodel(embedded_model_dir: Path, embedded_config: dict[str, Any]) -> Any:
    from kokoro import KModel

    model = KModel(
        repo_id="hexgrad/Kokoro-82M",
        config=embedded_config,
        model=str(embedded_model_dir / embedded.MODEL_FILENAME),
    )
    return model.eval()


@pytest.fixture(scope="session")
def onnx_session(tmp_path_factory: pytest.TempPathFactory) -> Any:
    ort = pytest.importorskip("onnxruntime")
    import onnx
    from onnx import TensorProto, helper

    path = tmp_path_factory.mktemp("onnx") / "kokoro-int8.onnx"
    digest = embedded.assemble_onnx(path)
    if digest != embedded.expected_sha256():
        pytest.fail("installed parts do not assemble to the expected model")
    model = onnx.load(str(path))
    model.graph.output.append(
        helper.make_tensor_value_info(_ONNX_DURATION_VALUE, TensorProto.FLOAT, None)
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


@pytest.fixture(scope="session")
def english_g2p() -> Any:
    from misaki import en

    return en.G2P(trf=False, british=False, fallback=None)


def _log_mel(
    audio: NDArray[np.float32], n_fft: int = 1024, hop: int = 256, n_mels: int = 80
) -> NDArray[np.float64]:
    """HTK-style log-mel spectrogram, computed here so the test depends on no audio library."""
    spec = (
        torch.stft(
            torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)),
            n_fft,
            hop,
            window=torch.hann_window(n_fft),
            return_complex=True,
        ).abs()
        ** 2
    )
    freqs = np.linspace(0.0, SAMPLE_RATE / 2, n_fft // 2 + 1)

    def to_mel(hz: NDArray[np.float64]) -> NDArray[np.float64]:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    edges = 700.0 * (
        10 ** (np.linspace(0.0, float(to_mel(np.array(SAMPLE_RATE / 2))), n_mels + 2) / 2595.0)
        - 1.0
    )
    bank = np.zeros((n_mels, freqs.size))
    for i in range(n_mels):
        lo, mid, hi = edges[i : i + 3]
        bank[i] = np.clip(
            np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0.0, None
        )
    mel = bank @ spec.double().numpy()
    return np.log(mel + 1e-5)


def _warp_by_durations(
    audio: NDArray[np.float32], own: NDArray[np.int64], reference: NDArray[np.int64], hop: int
) -> NDArray[np.float32]:
    """Stretch each token's segment of ``audio`` to the length the reference durations give.

    Durations may differ by a frame on a few tokens; aligning per token keeps later tokens
    comparable instead of letting one extra frame shift the rest of the utterance.
    """
    pieces = []
    start = 0
    for mine, ref in zip(own.tolist(), reference.tolist(), strict=True):
        length = ref * hop
        offsets = np.floor(np.arange(length) * (mine / max(ref, 1))).astype(np.int64)
        pieces.append(start * hop + offsets)
        start += mine
    index = np.minimum(np.concatenate(pieces), audio.size - 1)
    return audio[index]


def test_layout_and_strict_load(embedded_model_dir: Path, embedded_config: dict[str, Any]) -> None:
    from kokoro import KModel

    manifest = json.loads((embedded_model_dir / embedded.MANIFEST_FILENAME).read_text("utf-8"))
    assert manifest["source_sha256"] == embedded.expected_sha256()
    assert manifest["voices"] == list(embedded.EMBEDDED_VOICES)
    state = torch.load(embedded_model_dir / embedded.MODEL_FILENAME, weights_only=True)
    assert sorted(state) == sorted(["bert", "bert_encoder", "predictor", "text_encoder", "decoder"])
    skeleton = embedded_model_dir.parent / "skeleton.pth"
    torch.save({}, skeleton)
    bare = KModel(repo_id="hexgrad/Kokoro-82M", config=embedded_config, model=str(skeleton))
    for name, sub_state in state.items():
        # strict=True: KModel's own loader silently falls back to strict=False.
        getattr(bare, name).load_state_dict(sub_state, strict=True)
    for voice in embedded.EMBEDDED_VOICES:
        table = torch.load(embedded_model_dir / "voices" / f"{voice}.pt", weights_only=True)
        assert table.dtype == torch.float32 and tuple(table.shape) == (510, 1, 256)
    print(f"\nunobservable parameters filled by rule: {len(manifest['unobservable_parameters'])}")


def test_torch_matches_onnxruntime(
    embedded_kmodel: Any,
    embedded_model_dir: Path,
    embedded_config: dict[str, Any],
    onnx_session: Any,
    english_g2p: Any,
) -> None:
    vocab: dict[str, int] = embedded_config["vocab"]
    pack = torch.load(embedded_model_dir / "voices" / f"{EQUIVALENCE_VOICE}.pt", weights_only=True)
    agree_total = 0
    token_total = 0
    correlations = []
    print()
    for sentence in EQUIVALENCE_SENTENCES:
        phonemes, _tokens = english_g2p(sentence)
        ids = [vocab[c] for c in phonemes if c in vocab]
        tokens = torch.tensor([[0, *ids, 0]], dtype=torch.long)
        style = pack[len(ids) - 1]
        torch.manual_seed(0)
        audio_t, dur_t = embedded_kmodel.forward_with_tokens(tokens, style)
        audio_o, dur_o = onnx_session.run(
            None,
            {
                "tokens": tokens.numpy(),
                "style": style.numpy(),
                "speed": np.array([1.0], dtype=np.float32),
            },
        )
        dur_torch = dur_t.numpy().astype(np.int64).reshape(-1)
        dur_onnx = np.asarray(dur_o).astype(np.int64).reshape(-1)
        wave_t = audio_t.numpy().reshape(-1)
        wave_o = np.asarray(audio_o, dtype=np.float32).reshape(-1)
        assert dur_torch.shape == dur_onnx.shape
        agree = int((dur_torch == dur_onnx).sum())
        agree_total += agree
        token_total += dur_torch.size
        hop = wave_t.size // int(dur_torch.sum())
        aligned = _warp_by_durations(wave_o, dur_onnx, dur_torch, hop)
        corr = float(np.corrcoef(_log_mel(wave_t).ravel(), _log_mel(aligned).ravel())[0, 1])
        correlations.append(corr)
        print(
            f"  tokens={dur_torch.size:3d} durations equal {agree}/{dur_torch.size} "
            f"({agree / dur_torch.size:.1%}), max |diff|={int(np.abs(dur_torch - dur_onnx).max())}"
            f", log-mel corr={corr:.4f}, samples torch={wave_t.size} onnx={wave_o.size}"
        )
        # Differences come from ORT's dynamic uint8 activation quantization flipping a rounding.
        assert int(np.abs(dur_torch - dur_onnx).max()) <= 1
        assert corr >= 0.95, f"log-mel correlation {corr:.3f} for {sentence!r}"
    overall = agree_total / token_total
    print(
        f"  durations equal on {overall:.1%} of {token_total} tokens; "
        f"min corr {min(correlations):.4f}"
    )
    assert overall >= 0.95


def test_weight_norm_unfolding_reconstructs_weight() -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(4, 3, 5)).astype(np.float32)
    weight[2] = 0.0  # an all-zero output channel must not turn into NaN
    builder = onnx_import._StateBuilder({"m.weight_g": (4, 1, 1), "m.weight_v": (4, 3, 5)})
    builder.put_weight("m", weight, "test")
    rebuilt = torch._weight_norm(
        torch.from_numpy(builder.values["m.weight_v"]),
        torch.from_numpy(builder.values["m.weight_g"]),
        0,
    )
    np.testing.assert_allclose(rebuilt.numpy(), weight, rtol=1e-5, atol=1e-6)


@pytest.fixture()
def part_copies(tmp_path: Path) -> Iterator[list[Path]]:
    copies = []
    for index, part in enumerate(embedded.locate_parts(), start=1):
        copy = tmp_path / f"part{index}.bin"
        shutil.copyfile(part, copy)
        copies.append(copy)
    yield copies


def _leftovers(cache: Path) -> list[Path]:
    return list(cache.iterdir()) if cache.exists() else []


def test_corrupted_part_is_rejected(part_copies: list[Path], tmp_path: Path) -> None:
    with open(part_copies[2], "r+b") as handle:
        handle.seek(1000)
        data = handle.read(16)
        handle.seek(1000)
        handle.write(bytes(b ^ 0xFF for b in data))
    cache = tmp_path / "cache"
    with pytest.raises(ModelImportError, match=r"SHA-256 check .* failed.*reinstall") as info:
        embedded.ensure_embedded_model(cache, parts=part_copies)
    print(f"\n  corrupted part -> {info.value}")
    assert _leftovers(cache) == []


def test_missing_part_is_rejected(part_copies: list[Path], tmp_path: Path) -> None:
    part_copies[1].unlink()
    with pytest.raises(ModelImportError, match=r"part 2/4 is missing"):
        embedded.ensure_embedded_model(tmp_path / "cache", parts=part_copies)
    with pytest.raises(ModelImportError, match=r"part"):
        embedded.assemble_onnx(tmp_path / "out.onnx", parts=part_copies)


def test_wrong_sha_is_rejected(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(ModelImportError, match=r"SHA-256 check"):
        embedded.ensure_embedded_model(cache, sha256="0" * 64)
    with pytest.raises(ModelImportError, match=r"64 hex digits"):
        embedded.ensure_embedded_model(cache, sha256="not-a-digest")
    assert _leftovers(cache) == []


def test_cached_import_is_reused(
    tmp_path_factory: pytest.TempPathFactory,
    embedded_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifest = embedded_model_dir / embedded.MANIFEST_FILENAME
    before = (
        manifest.stat().st_mtime_ns,
        (embedded_model_dir / embedded.MODEL_FILENAME).stat().st_mtime_ns,
    )

    def forbidden(*_args: object, **_kwargs: object) -> str:
        raise AssertionError("a valid cache must not re-read the parts")

    monkeypatch.setattr(embedded, "assemble_onnx", forbidden)
    monkeypatch.setattr(embedded, "_import_into", forbidden)
    again = imported_model_dir(tmp_path_factory)
    assert again == embedded_model_dir
    after = (
        manifest.stat().st_mtime_ns,
        (embedded_model_dir / embedded.MODEL_FILENAME).stat().st_mtime_ns,
    )
    assert before == after


def test_incomplete_cache_is_not_trusted(embedded_model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / embedded_model_dir.name
    shutil.copytree(embedded_model_dir, copy)
    (copy / "voices" / "jm_kumo.pt").unlink()
    assert not embedded._cache_is_valid(copy, embedded.expected_sha256())
    assert embedded._cache_is_valid(embedded_model_dir, embedded.expected_sha256())
