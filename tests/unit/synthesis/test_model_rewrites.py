"""The fused residual blocks compute what kokoro's stock blocks compute."""

from __future__ import annotations

import copy

import pytest
import torch
from kokoro.istftnet import AdaINResBlock1

from kokoro_service.synthesis.engine import Engine
from kokoro_service.synthesis.models.rewrites import FusedAdaINResBlock1, fuse_residual_blocks


def _block(seed: int) -> AdaINResBlock1:
    torch.manual_seed(seed)
    block = AdaINResBlock1(16, kernel_size=7, dilation=(1, 3, 5), style_dim=12).eval()
    for conv in (*block.convs1, *block.convs2):  # as the engine loads them: weight norm folded
        torch.nn.utils.remove_weight_norm(conv)
    with torch.no_grad():  # stock init leaves norms at 1/0 and alphas at 1: vary them all
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 3 and p.shape[-1] == 1 else 0))
    return block


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_fused_block_equals_the_stock_block(seed: int) -> None:
    stock = _block(seed)
    fused = copy.deepcopy(stock)
    assert fuse_residual_blocks(fused) == 1 and isinstance(fused, FusedAdaINResBlock1)
    x, s = torch.randn(2, 16, 3000) * 2 + 0.5, torch.randn(2, 12)
    with torch.inference_mode():
        want, got = stock(x, s), fused(x, s)
        x_before = x.clone()
        fused(x, s)
    assert torch.equal(x, x_before), "the block's input is shared by its siblings"
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_the_fused_block_under_bf16_autocast_stays_as_close_as_the_stock_one() -> None:
    stock = _block(4)
    fused = copy.deepcopy(stock)
    fuse_residual_blocks(fused)
    x, s = torch.randn(1, 16, 4000), torch.randn(1, 12)
    with torch.inference_mode():
        ref = stock(x, s)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a, b = stock(x, s).float(), fused(x, s)
    err_stock = (a - ref).abs().mean().item()
    err_fused = (b - ref).abs().mean().item()
    assert err_fused <= 1.5 * err_stock + 1e-6, (err_fused, err_stock)


def test_the_engine_runs_the_fused_blocks_and_they_sound_the_same(engine: Engine) -> None:
    blocks = [m for m in engine.model.modules() if isinstance(m, AdaINResBlock1)]
    assert blocks and all(isinstance(m, FusedAdaINResBlock1) for m in blocks)
    stock = copy.deepcopy(engine.model)
    for m in stock.modules():
        if isinstance(m, FusedAdaINResBlock1):
            m.__class__ = AdaINResBlock1
    text = "Your appointment is on Tuesday."
    outs = []
    for model in (engine.model, stock):
        saved, engine.model = engine.model, model
        try:
            outs.append(engine.synthesize_seeded(text, "af_sky", "a", "fp32", seed=3).audio)
        finally:
            engine.model = saved
    a, b = outs
    assert a is not None and b is not None and a.shape == b.shape
    assert abs(a - b).max() <= 1e-3 * max(1.0, float(abs(b).max()))
