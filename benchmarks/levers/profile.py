"""``profile``: not a lever but where one segment's milliseconds go: time per operator,
the forward's floating-point operations per second of audio, and this host's measured
fp32 (and, where the CPU has it, bf16) GEMM rate, which together bound the real-time
factor from below; beside them, the generator's hottest convolution through each
algorithm torch offers."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.levers.common import SEGMENT, Bench, alternating, timed


def _gemm_gflops(threads: int, dtype: str = "float32") -> float:
    """This host's matrix-multiply rate at ``threads``: the practical compute ceiling."""
    import torch

    torch.set_num_threads(threads)
    kind = getattr(torch, dtype)
    a, b = torch.randn(2048, 2048, dtype=kind), torch.randn(2048, 2048, dtype=kind)
    best = min(timed(lambda: a @ b, 10, warmup=3))
    return 2 * 2048**3 / best / 1e9


def _conv_algorithms(threads: int, runs: int, bf16: bool) -> dict[str, Any]:
    """The generator's hottest convolution shape (128 channels, 16 k frames, kernel 11)
    through oneDNN (what torch picks), torch's own im2col+GEMM path, and a sum of one GEMM
    per kernel tap: GFLOP/s of each, so the ceiling is measured, not assumed."""
    import torch
    from torch.nn import functional

    torch.set_num_threads(threads)
    channels, frames, kernel, dilation = 128, 15_961, 11, 5
    pad = dilation * (kernel - 1) // 2
    x, w, bias = torch.randn(1, channels, frames), torch.randn(channels, channels, kernel), None

    xb, wb = x.bfloat16(), w.bfloat16()

    def onednn() -> object:
        return functional.conv1d(x, w, bias, padding=pad, dilation=dilation)

    def onednn_bf16() -> object:
        return functional.conv1d(xb, wb, bias, padding=pad, dilation=dilation)

    def native() -> object:
        with torch.backends.mkldnn.flags(enabled=False):
            return functional.conv1d(x, w, bias, padding=pad, dilation=dilation)

    def taps() -> object:
        xp = functional.pad(x[0], (pad, pad))
        y = torch.zeros(channels, frames)
        for j in range(kernel):
            y.addmm_(w[:, :, j], xp[:, j * dilation : j * dilation + frames])
        return y

    flop = 2 * channels * channels * kernel * frames
    with torch.inference_mode():
        variants = {"onednn": onednn, "im2col_gemm": native, "gemm_per_tap": taps}
        if bf16:
            variants["onednn_bf16"] = onednn_bf16
        times = alternating(variants, runs)
    return {
        "shape": f"conv1d {channels}->{channels} ch, {frames} frames, k={kernel}, d={dilation}",
        "gflops": {k: round(flop / statistics.median(v) / 1e9, 1) for k, v in times.items()},
    }


def _self_cpu_shares(b: Bench) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        b.engine.synthesize(SEGMENT, voice=b.voice, lang="a")
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    self_total = sum(e.self_cpu_time_total for e in events) or 1.0
    return {e.key: round(e.self_cpu_time_total / self_total, 4) for e in events[:12]}


def lever_profile(b: Bench, runs: int) -> dict[str, Any]:
    """Where a segment's time goes, and the fastest RTF this host's arithmetic allows.

    The bound is the forward's floating-point operations per second of audio at the
    host's own measured matrix-multiply rate, for fp32 and (where the CPU has it) bf16:
    no kernel does convolutions faster than a large GEMM of the same type.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from kokoro_service.synthesis.devices import bf16_unavailable

    synth = [b.engine.synthesize(SEGMENT, voice=b.voice, lang="a") for _ in range(runs)]
    seconds = statistics.median(r.seconds for r in synth)
    audio_s = synth[-1].audio_seconds
    with FlopCounterMode(display=False) as counter:
        b.engine.synthesize(SEGMENT, voice=b.voice, lang="a")
    total = counter.get_total_flops()
    by_op = {str(op): float(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    shares = _self_cpu_shares(b)
    gflops = _gemm_gflops(b.threads)
    per_audio_s = total / audio_s / 1e9
    bf16 = bf16_unavailable("cpu") is None
    out: dict[str, Any] = {
        "segment": SEGMENT,
        "synth_s_p50": round(seconds, 4),
        "audio_s": round(audio_s, 4),
        "rtf": round(seconds / audio_s, 4),
        "gflop_per_audio_second": round(per_audio_s, 2),
        "gflop_by_op": {k: round(v / 1e9, 3) for k, v in sorted(by_op.items())},
        "achieved_gflops": round(total / seconds / 1e9, 1),
        "host_gemm_gflops": round(gflops, 1),
        "rtf_lower_bound_at_gemm_rate": round(per_audio_s / gflops, 4),
        "hot_convolution": _conv_algorithms(b.threads, runs, bf16),
        "self_cpu_share_by_op": shares,
    }
    if bf16:
        b.engine.use_precision("bf16")
        try:
            synth = [b.engine.synthesize(SEGMENT, voice=b.voice, lang="a") for _ in range(runs)]
            bf16_shares = _self_cpu_shares(b)
        finally:
            b.engine.use_precision("fp32")
        bf16_s = statistics.median(r.seconds for r in synth)
        bf16_gflops = _gemm_gflops(b.threads, "bfloat16")
        bound = per_audio_s / bf16_gflops
        out["bf16_vocoder"] = {
            "rtf": round(bf16_s / audio_s, 4),
            "host_gemm_gflops": round(bf16_gflops, 1),
            "rtf_lower_bound_at_gemm_rate": round(bound, 4),
            "lower_bound_over_fp32_rtf": round(bound / (seconds / audio_s), 3),
            "self_cpu_share_by_op": bf16_shares,
        }
    return out
