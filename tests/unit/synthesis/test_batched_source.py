"""The generator's source and STFTs over a padded batch against kokoro's own, item by item.

Lengths are mixed on purpose: the longest item has no padding, the others end inside the
batch, where the interpolation, the reflection and the window envelope meet padding.
"""

from __future__ import annotations

import pytest
import torch
from kokoro.istftnet import Generator

from kokoro_service.synthesis.engine import Engine
from kokoro_service.synthesis.models import batched_source
from kokoro_service.synthesis.models.batched import seeded
from kokoro_service.synthesis.models.batched_source import harmonic_spectrum, inverse_stft

LENGTHS = [30, 57, 2, 44]  # the F0 curve's steps per item (two per predicted frame)


@pytest.fixture(params=["one group", "groups of two", "one item a group"])
def grouping(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The CPU's grouping by length, at budgets that give each of its three shapes."""
    budget = {"one group": 1 << 30, "groups of two": 2 * 57 * 2700, "one item a group": 1}
    monkeypatch.setattr(batched_source, "CPU_GROUP_ELEMENTS", budget[request.param])
    return str(request.param)


def _generator(engine: Engine) -> Generator:
    gen = engine.model.decoder.generator
    assert isinstance(gen, Generator)
    return gen


def _f0(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    f0 = torch.rand(len(LENGTHS), max(LENGTHS), generator=g) * 300
    f0[:, :5] = 0  # unvoiced steps draw the louder noise
    return f0


def test_groups_by_length_within_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batched_source, "CPU_GROUP_ELEMENTS", 100)
    cpu, gpu = torch.device("cpu"), torch.device("meta")
    assert batched_source.groups([30, 5, 20, 6], 2, cpu) == [[1, 3], [2], [0]]
    assert batched_source.groups([30, 5, 20, 6], 2, gpu) == [[0, 1, 2, 3]]
    assert batched_source.groups([80], 2, cpu) == [[0]]  # over the budget, still served


def test_harmonic_spectrum_is_each_items_own(engine: Engine, grouping: str) -> None:
    gen = _generator(engine)
    f0 = _f0(1)
    seeds = [11, 12, 13, 14]
    with torch.inference_mode():
        batch = harmonic_spectrum(gen, f0, LENGTHS, seeds)
        for b, (length, seed) in enumerate(zip(LENGTHS, seeds, strict=True)):
            with seeded(seed, f0.device):  # what the model draws at batch 1
                up = gen.f0_upsamp(f0[b : b + 1, None, :length]).transpose(1, 2)
                source, _, _ = gen.m_source(up)
                spec, phase = gen.stft.transform(source.transpose(1, 2).squeeze(1))
            frames = spec.shape[-1]
            assert torch.equal(batch[b : b + 1, : spec.shape[1], :frames], spec)
            # atan2 rounds a last place differently where it runs vectorised.
            turned = batch[b : b + 1, spec.shape[1] :, :frames] - phase
            wrapped = torch.remainder(turned + torch.pi, 2 * torch.pi) - torch.pi
            assert wrapped.abs().max() < 1e-6
            assert not batch[b, :, frames:].any(), "frames past the item are not zero"


def test_unseeded_source_is_drawn_afresh_and_stays_in_range(engine: Engine) -> None:
    gen = _generator(engine)
    f0 = _f0(2)
    with torch.inference_mode():
        a = harmonic_spectrum(gen, f0, LENGTHS, None)
        b = harmonic_spectrum(gen, f0, LENGTHS, None)
    assert a.shape == b.shape and not torch.equal(a, b)  # noise, drawn per pass
    assert torch.isfinite(a).all()


def test_inverse_stft_is_each_items_own(engine: Engine, grouping: str) -> None:
    stft = _generator(engine).stft
    g = torch.Generator().manual_seed(3)
    frames = [31, 40, 2, 17]
    magnitude = torch.rand(len(frames), 11, max(frames), generator=g)
    phase = (torch.rand(len(frames), 11, max(frames), generator=g) - 0.5) * 6
    with torch.inference_mode():
        outs = inverse_stft(stft, magnitude, phase, frames)
        for b, n in enumerate(frames):
            ref = stft.inverse(magnitude[b : b + 1, :, :n], phase[b : b + 1, :, :n]).reshape(-1)
            assert outs[b].shape == ref.shape
            torch.testing.assert_close(outs[b], ref, rtol=0, atol=1e-6)
