"""``loops``: the generator's harmonic source, its STFT and the inverse STFT over a batch,
once over the whole batch (kept, :mod:`kokoro_service.synthesis.models.batched_source`)
against item by item through kokoro's own modules, as ``forward_batch`` ran them before.

Per batch size B:

- **operations per pass**, counted at torch's dispatcher with the batch in one group, as
  a GPU runs it: there most are a kernel launch (a whole pass's 11 more per item are
  views and host bookkeeping), and a launch-bound pass costs about what its launches do.
  Counted for the stages alone and for a whole ``forward_batch`` of B short segments;
- **time per pass** on the lever's device (``--device``, the CPU by default): of the stages,
  and of whole ``forward_batch`` passes (on a CPU at B = 4 and 16 only), the variants
  taking turns.  A CPU runs the stages in groups of similar length
  (:func:`~kokoro_service.synthesis.models.batched_source.groups`), a GPU in one.

On a GPU host, with the full-size random checkpoint that ``gpu_density.sh`` builds::

    python -m benchmarks.levers --only loops --device cuda --model-dir CHECKPOINT

Both run as they serve, unseeded.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the name torch's own code uses
from kokoro.istftnet import Generator, TorchSTFT
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.levers.common import Bench, versus
from benchmarks.lib.harness import log
from kokoro_service.synthesis.models import batched, batched_source
from kokoro_service.synthesis.models.batched_source import harmonic_spectrum, inverse_stft

SIZES = (1, 4, 16, 64)
# F0-curve steps per item (80 a second of audio): 0.5 to 4 s, the spread of phone replies.
STEPS = (40, 120, 200, 320)
SHORT = "Sure, one moment."
PASS_SIZES_CPU = (4, 16)


class _Count(TorchDispatchMode):
    """Counts the operations torch dispatches inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        self.ops += 1
        return func(*args, **(kwargs or {}))


def _count(fn: Callable[[], object]) -> int:
    with _Count() as counter:
        fn()
    return counter.ops


def per_item_spectrum(
    gen: Generator, f0_curve: torch.Tensor, lengths: Sequence[int], seeds: Sequence[int] | None
) -> torch.Tensor:
    """The baseline: kokoro's source and STFT on each item's own length, zero-padded."""
    hars = []
    for b, length in enumerate(lengths):
        with batched.seeded(seeds[b] if seeds is not None else None, f0_curve.device):
            f0 = gen.f0_upsamp(f0_curve[b : b + 1, None, :length]).transpose(1, 2)
            source, _, _ = gen.m_source(f0)
            spec, phase = gen.stft.transform(source.transpose(1, 2).squeeze(1))
        hars.append(torch.cat([spec, phase], dim=1))
    frames = max(h.shape[-1] for h in hars)
    return torch.cat([F.pad(h, (0, frames - h.shape[-1])) for h in hars], dim=0)


def per_item_inverse(
    stft: TorchSTFT, magnitude: torch.Tensor, phase: torch.Tensor, frames: Sequence[int]
) -> list[torch.Tensor]:
    """The baseline: kokoro's inverse STFT on each item's own frames."""
    return [
        stft.inverse(magnitude[b : b + 1, :, :n], phase[b : b + 1, :, :n]).reshape(-1)
        for b, n in enumerate(frames)
    ]


@contextlib.contextmanager
def _one_group() -> Iterator[None]:
    """The batch in one group, as on a GPU."""
    kept = batched_source.CPU_GROUP_ELEMENTS
    batched_source.CPU_GROUP_ELEMENTS = 1 << 62
    try:
        yield
    finally:
        batched_source.CPU_GROUP_ELEMENTS = kept


@contextlib.contextmanager
def _per_item_in_forward() -> Iterator[None]:
    """``forward_batch`` with the per-item stages, as it ran before."""
    kept = batched.harmonic_spectrum, batched.inverse_stft
    batched.harmonic_spectrum, batched.inverse_stft = per_item_spectrum, per_item_inverse
    try:
        yield
    finally:
        batched.harmonic_spectrum, batched.inverse_stft = kept


def _stages(
    spectrum: Callable[..., torch.Tensor],
    inverse: Callable[..., list[torch.Tensor]],
    gen: Generator,
    f0: torch.Tensor,
    lengths: list[int],
    frames: list[int],
    magnitude: torch.Tensor,
    phase: torch.Tensor,
) -> None:
    """One pass of the three stages, unseeded, as they serve."""
    spectrum(gen, f0, lengths, None)
    inverse(gen.stft, magnitude, phase, frames)


def _turns(
    variants: dict[str, Callable[[], object]], runs: int, sync: Callable[[], None]
) -> dict[str, list[float]]:
    """Seconds of each variant, ``runs`` times, taking turns (after one unmeasured run
    each) so drift hits both alike; ``sync`` waits for the device before each clock."""
    for fn in variants.values():
        fn()
    out: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(runs):
        for name, fn in variants.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            out[name].append(time.perf_counter() - t0)
    return out


def lever_loops(b: Bench, runs: int) -> dict[str, Any]:
    from kokoro_service.synthesis.models.batched import BatchItem, forward_batch

    e = b.engine
    device = e.model.device
    gen = e.model.decoder.generator
    assert isinstance(gen, Generator) and isinstance(gen.stft, TorchSTFT)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # Whole passes on a CPU only where they take seconds, not minutes.
    pass_sizes = PASS_SIZES_CPU if device.type == "cpu" else SIZES
    out: dict[str, Any] = {
        "what": "the generator's harmonic source + STFT + inverse STFT over B items, once "
        "over the batch (kept) vs item by item through kokoro's modules; operations "
        "dispatched per pass (kernel launches on a GPU) and ms per pass on the device, of "
        "the stages and of whole forward_batch passes of B short segments",
        "device": str(device),
        "runs": runs,
        "f0_steps_per_item": list(STEPS),
        "pass_segment": SHORT,
    }
    ps = e.phonemize(SHORT, "a")[0].phonemes
    ref_s = e.voices.get(b.voice)[len(ps) - 1]
    g = torch.Generator().manual_seed(0)
    for size in SIZES:
        lengths = [STEPS[i % len(STEPS)] for i in range(size)]
        f0 = (torch.rand(size, max(lengths), generator=g) * 250).to(device)
        frames = [n * 60 + 1 for n in lengths]  # the generator's frames for F0 steps n
        magnitude = torch.rand(size, gen.post_n_fft // 2 + 1, max(frames), generator=g)
        phase = (torch.rand(magnitude.shape, generator=g) * 6 - 3).to(device)
        magnitude = magnitude.to(device)

        stages = (gen, f0, lengths, frames, magnitude, phase)
        kept = functools.partial(_stages, harmonic_spectrum, inverse_stft, *stages)
        per_item = functools.partial(_stages, per_item_spectrum, per_item_inverse, *stages)

        items = [BatchItem(ps, ref_s)] * size

        def whole(items: list[BatchItem] = items) -> None:
            forward_batch(e.model, items)

        def whole_per_item(items: list[BatchItem] = items) -> None:
            with _per_item_in_forward():
                forward_batch(e.model, items)

        with torch.inference_mode(), _one_group():
            stage_ops = {"kept": _count(kept), "per_item": _count(per_item)}
            pass_ops = {"kept": _count(whole), "per_item": _count(whole_per_item)}
        with torch.inference_mode():
            times = _turns({"kept": kept, "per_item": per_item}, runs, sync)
            row: dict[str, Any] = {
                "stage_ops": stage_ops,
                "forward_batch_ops": pass_ops,
                "stage_ms": versus(times["kept"], times["per_item"], scale=1e3),
            }
            if size in pass_sizes:
                passes = _turns({"kept": whole, "per_item": whole_per_item}, runs, sync)
                row["forward_batch_ms"] = versus(passes["kept"], passes["per_item"], scale=1e3)
        out[f"b{size}"] = row
        log(
            f"loops B={size}: stage ops {stage_ops}, pass ops {pass_ops}, stage ms "
            f"{row['stage_ms']['kept']['p50']} kept, {row['stage_ms']['alternative']['p50']} "
            f"per item; pass ms {row.get('forward_batch_ms')}"
        )
    return out
