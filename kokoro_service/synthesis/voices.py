"""Voices: the table of voice files, blend specs, and the daemon's default-voice choice.

A blend like ``af_sky:0.7,af_bella:0.3`` is a weighted mean of voice packs (about 0.5 MB
each).  Peers choose blends freely in CONTROL frames, so blends live in a small LRU cache:
what a peer can make the daemon keep is bounded by ``max_blends``, whatever it sends.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from pathlib import Path

import torch

from kokoro_service.errors import StartupError, VoiceError

log = logging.getLogger("kokoro_service.synthesis.voices")

DEFAULT_VOICE = "af_sky"
# jm_kumo speaks the clearest English of the embedded voices (2.3% vs 7.5% WER).
_SUBSTITUTES = ("af_heart", "jm_kumo", "jf_alpha")
BlendKey = tuple[tuple[str, float], ...]


def parse_voice_spec(spec: str) -> list[tuple[str, float]]:
    """``"af_sky:0.7,af_bella:0.3"`` → ``[("af_sky", 0.7), ("af_bella", 0.3)]``."""
    parts = [p.strip() for p in spec.split(",")]
    if not spec.strip() or any(not p for p in parts):
        raise VoiceError(f"malformed voice {spec!r}: expected name or name:weight,name:weight")
    out: list[tuple[str, float]] = []
    for part in parts:
        name, sep, raw = part.partition(":")
        name = name.strip()
        weight = 1.0
        if sep:
            try:
                weight = float(raw)
            except ValueError:
                raise VoiceError(f"malformed weight {raw!r} in voice {spec!r}") from None
        if not name or not math.isfinite(weight) or weight <= 0:
            raise VoiceError(f"malformed voice {spec!r}: weights must be positive numbers")
        out.append((name, weight))
    return out


class VoiceTable:
    """Loads each voice file once and builds blends on request.

    Responsibilities: validate a spec without building anything (:meth:`check`); load a
    voice file at most once (bounded by the files on disk); keep at most ``max_blends``
    blends, least recently used first out.
    """

    def __init__(self, files: dict[str, Path], *, max_blends: int = 32) -> None:
        self._files = dict(files)
        self._packs: dict[str, torch.Tensor] = {}
        self._blends: collections.OrderedDict[BlendKey, torch.Tensor] = collections.OrderedDict()
        self._max_blends = max_blends
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return sorted(self._files)

    @property
    def cached_blends(self) -> int:
        with self._lock:
            return len(self._blends)

    def check(self, spec: str) -> BlendKey:
        """Validate ``spec`` and return its cache key; builds and caches no blend.

        Each named voice file is loaded (at most once, so bounded by the files on disk):
        a file that cannot be read is refused here, not at the call's next segment.
        """
        return self._validated(spec)[1]

    def _validated(self, spec: str) -> tuple[list[tuple[str, float]], BlendKey]:
        blend = parse_voice_spec(spec)
        unknown = [n for n, _ in blend if n not in self._files]
        if unknown:
            raise VoiceError(  # a peer's names, quoted: a newline must not start a log line
                f"unknown voice {', '.join(map(repr, unknown))}; available: {', '.join(self.names)}"
            )
        with self._lock:
            for name, _ in blend:
                self._load(name)
        return blend, _key(blend)

    def get(self, spec: str) -> torch.Tensor:
        """The voice pack of ``spec``: a file's pack, or a (cached) blend of several."""
        blend, key = self._validated(spec)
        with self._lock:
            if len(key) == 1:
                return self._load(key[0][0])
            pack = self._blends.get(key)
            if pack is not None:
                self._blends.move_to_end(key)
                return pack
            total = sum(w for _, w in blend)
            pack = sum((self._load(n) * (w / total) for n, w in blend), torch.zeros(1))
            self._blends[key] = pack
            if len(self._blends) > self._max_blends:
                self._blends.popitem(last=False)
            return pack

    def _load(self, name: str) -> torch.Tensor:
        pack = self._packs.get(name)
        if pack is None:
            try:
                loaded = torch.load(self._files[name], map_location="cpu", weights_only=True)
            except Exception as exc:
                raise VoiceError(f"voice file {self._files[name]} is unreadable: {exc}") from exc
            if not isinstance(loaded, torch.Tensor) or loaded.dim() != 3 or loaded.shape[-1] != 256:
                shape = getattr(loaded, "shape", type(loaded).__name__)
                raise VoiceError(f"voice {name!r} has shape {shape}, expected [510, 1, 256]")
            pack = loaded.float().contiguous()
            self._packs[name] = pack
        return pack


def _key(blend: list[tuple[str, float]]) -> BlendKey:
    """Equal blends spelled differently ("a:1,b:1", "b:0.5,a:0.5") share one cache entry;
    the key only names the entry, the pack is built from the exact weights."""
    merged: dict[str, float] = {}
    for name, weight in blend:
        merged[name] = merged.get(name, 0.0) + weight
    total = sum(merged.values())
    return tuple(sorted((n, round(w / total, 9)) for n, w in merged.items()))


def choose_voice(voices: VoiceTable, requested: str | None, source: str) -> str:
    """The daemon's default voice; the built-in default may be substituted, never a user's.

    ``source`` describes where the voices come from, for the log line.
    """
    spec = requested or DEFAULT_VOICE
    try:
        voices.get(spec)
        return spec
    except VoiceError as exc:
        if requested is not None:
            raise StartupError(f"voice {spec!r} cannot be used: {exc}") from exc
    names = voices.names
    substitute = ([n for n in _SUBSTITUTES if n in names] or names)[0]
    log.warning(
        "default voice %s is not in %s; using %s instead (set KOKORO_VOICE to choose)",
        DEFAULT_VOICE,
        source,
        substitute,
    )
    return substitute
