"""The generator's harmonic source, its STFT and the final inverse STFT over a padded batch.

Kokoro computes these for one segment.  Run item by item inside a batch they dispatch
about 68 small operations per item (``benchmarks.levers --only loops``), which on a GPU
is as many kernel launches a pass for every item batched (sglang-omni's profiles of TTS
vocoders: launch-bound).  Here each runs once over the
whole batch, and each item still gets what batch 1 computes on its own length:

- the source's phase is interpolated (down, integrated, up) with the value past each
  item's end held at its last, which is what ``F.interpolate`` clamps to at batch 1;
- the STFT reflects at each item's own end, through one gather, and frames past it are
  zero, as the per-item zero padding left them;
- the inverse STFT overlap-adds each item's own frames and divides by its own window
  envelope, so its last samples are not normalised by a neighbour's frames.

Noise: with a seed per item each item draws from its own ``torch.Generator``, in batch 1's
order (initial phases, then the sine noise), so the tests compare with batch 1 sample by
sample.  Without seeds (serving) the batch draws once from torch's default generator:
the same distribution, one launch instead of one per item.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812 - the name torch's own code uses
from kokoro.istftnet import Generator, TorchSTFT

CPU_GROUP_ELEMENTS = 1 << 20
"""A group's padded size on a CPU, in elements of its largest tensor (4 MB in fp32): the
fastest of 2^18, 2^20, 2^22 and 2^24 for the stages at 16 and 64 mixed items on the
2-core EPYC, where 2^24 made the source 3-6x slower."""


def _held(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``x`` (B, T, C) with each item's steps from its length on equal to its last step."""
    steps = torch.arange(x.shape[1], device=x.device)
    last = (lengths.to(x.device) - 1)[:, None]
    index = torch.minimum(steps[None, :], last).unsqueeze(-1).expand(-1, -1, x.shape[2])
    return torch.gather(x, 1, index)


def _noise(
    shape: tuple[int, int, int],
    lengths: Sequence[int],
    seeds: Sequence[int] | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial phases (B, C) and sine noise (B, T, C): per item from its seed in batch 1's
    order, or one draw for the batch."""
    batch, _, dim = shape
    if seeds is None:
        return torch.rand(batch, dim, device=device), torch.randn(shape, device=device)
    phases = torch.empty(batch, dim, device=device)
    noise = torch.zeros(shape, device=device)
    for b, (seed, length) in enumerate(zip(seeds, lengths, strict=True)):
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        phases[b : b + 1].uniform_(generator=gen)  # kokoro's torch.rand(1, dim)
        # kokoro's torch.randn_like(sine_waves): that tensor is a transpose (harmonic-major
        # in memory), and torch draws a strided tensor's normals otherwise than a
        # contiguous one's, so the draw is made into the same layout.
        drawn = torch.empty(1, dim, length, device=device).transpose(1, 2)
        noise[b, :length] = drawn.normal_(generator=gen)[0]
    return phases, noise


def groups(lengths: Sequence[int], cost: int, device: torch.device) -> list[list[int]]:
    """Item indices in groups of similar length whose padded size (items x longest x
    ``cost``) stays within :data:`CPU_GROUP_ELEMENTS` on a CPU; one group elsewhere.

    On a GPU these stages are launch-bound and one group is the point.  On a CPU they are
    bound by memory: over a whole padded batch the source's tensors (items x samples x 9
    harmonics) outgrow the caches: the source measured 2.5x slower than item by item at
    64 mixed items of 0.5-4 s; groups of similar length that fit keep both the padding
    and the tensors small.
    """
    if device.type != "cpu":
        return [list(range(len(lengths)))]
    out: list[list[int]] = []
    group: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if group and (len(group) + 1) * lengths[i] * cost > CPU_GROUP_ELEMENTS:
            out.append(group)
            group = []
        group.append(i)
    return [*out, group] if group else out


def harmonic_spectrum(
    gen: Generator, f0_curve: torch.Tensor, lengths: Sequence[int], seeds: Sequence[int] | None
) -> torch.Tensor:
    """The harmonic source's STFT (magnitude and phase, B x (n_fft + 2) x frames) of
    ``f0_curve`` (B, T), item b on its first ``lengths[b]`` steps, zero past them."""
    if not isinstance(gen.stft, TorchSTFT):
        raise TypeError("the batched source needs kokoro's TorchSTFT (disable_complex=False)")
    sine = gen.m_source.l_sin_gen
    parts = groups(lengths, int(sine.upsample_scale) * sine.dim, f0_curve.device)
    if len(parts) == 1:
        return _spectrum(gen, f0_curve, lengths, seeds)
    hop = gen.stft.hop_length
    most = max(lengths) * int(sine.upsample_scale) // hop + 1
    out = f0_curve.new_zeros(len(lengths), gen.post_n_fft + 2, most)
    for part in parts:
        longest = max(lengths[i] for i in part)
        spec = _spectrum(
            gen,
            f0_curve[part, :longest],
            [lengths[i] for i in part],
            [seeds[i] for i in part] if seeds is not None else None,
        )
        out[part, :, : spec.shape[-1]] = spec
    return out


def _spectrum(
    gen: Generator, f0_curve: torch.Tensor, lengths: Sequence[int], seeds: Sequence[int] | None
) -> torch.Tensor:
    sine = gen.m_source.l_sin_gen
    scale = int(sine.upsample_scale)
    device = f0_curve.device
    n = torch.tensor(list(lengths))
    f0 = gen.f0_upsamp(f0_curve[:, None, :]).transpose(1, 2)  # (B, samples, 1), nearest
    harmonics = torch.arange(1, sine.dim + 1, dtype=torch.float32, device=device)
    rad = (f0 * harmonics.view(1, 1, -1) / sine.sampling_rate) % 1
    batch, samples, dim = rad.shape
    phases, noise = _noise((batch, samples, dim), [k * scale for k in lengths], seeds, device)
    phases[:, 0] = 0
    rad[:, 0, :] = rad[:, 0, :] + phases
    # SineGen._f02sine: integrate at the frame rate, then interpolate back up.
    down = F.interpolate(rad.transpose(1, 2), scale_factor=1 / scale, mode="linear")
    phase = _held(torch.cumsum(down.transpose(1, 2), dim=1) * 2 * torch.pi, n)
    up = F.interpolate(phase.transpose(1, 2) * scale, scale_factor=scale, mode="linear")
    sines = torch.sin(up.transpose(1, 2)) * sine.sine_amp
    uv = (f0 > sine.voiced_threshold).type(torch.float32)
    noise = (uv * sine.noise_std + (1 - uv) * sine.sine_amp / 3) * noise
    # l_linear over each item's strided (samples x harmonics) rows, rounded as batch 1
    # rounds it, since a last place can turn a near-zero STFT bin's phase by 2 pi: for
    # several items one batched GEMM does (nn.Linear would copy them contiguous and round
    # otherwise), for one item only nn.Linear itself does.
    linear = gen.m_source.l_linear
    excitation = sines * uv + noise
    if batch == 1:
        merged = linear(excitation)
    else:
        weight = linear.weight.T.expand(batch, -1, -1)
        merged = torch.baddbmm(linear.bias.view(1, 1, -1), excitation, weight)
    source = gen.m_source.l_tanh(merged).squeeze(-1)
    return _stft(gen.stft, source, n * scale)


def _stft(stft: TorchSTFT, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``stft.transform`` of each row of ``x`` (B, samples) over its own length, reflected
    at its own ends (``torch.stft``'s centring), as [magnitude; phase] with zero frames
    past each item's last."""
    n_fft, hop = stft.filter_length, stft.hop_length
    half = n_fft // 2
    device = x.device
    ends = (lengths.to(device) - 1)[:, None]
    at = torch.arange(-half, x.shape[1] + half, device=device)[None, :].abs()
    at = torch.where(at > ends, 2 * ends - at, at).clamp_(min=0)
    framed = torch.gather(x, 1, at)
    spec = torch.stft(
        framed,
        n_fft,
        hop,
        stft.win_length,
        window=stft.window.to(device),
        center=False,
        return_complex=True,
    )
    frames = torch.div(lengths, hop, rounding_mode="floor") + 1
    keep = (torch.arange(spec.shape[-1])[None, :] < frames[:, None]).to(device)
    return torch.cat([torch.abs(spec), torch.angle(spec)], dim=1) * keep.unsqueeze(1)


def inverse_stft(
    stft: TorchSTFT, magnitude: torch.Tensor, phase: torch.Tensor, frames: Sequence[int]
) -> list[torch.Tensor]:
    """``stft.inverse`` of each item's first ``frames[b]`` frames, as 1-D audio views."""
    parts = groups(frames, stft.filter_length, magnitude.device)
    if len(parts) == 1:
        return _inverse(stft, magnitude, phase, frames)
    out: list[torch.Tensor] = [magnitude.new_empty(0)] * len(frames)
    for part in parts:
        longest = max(frames[i] for i in part)
        audio = _inverse(
            stft,
            magnitude[part, :, :longest],
            phase[part, :, :longest],
            [frames[i] for i in part],
        )
        for i, a in zip(part, audio, strict=True):
            out[i] = a
    return out


def _inverse(
    stft: TorchSTFT, magnitude: torch.Tensor, phase: torch.Tensor, frames: Sequence[int]
) -> list[torch.Tensor]:
    n_fft, hop = stft.filter_length, stft.hop_length
    batch, _, most = magnitude.shape
    device = magnitude.device
    keep = (torch.arange(most)[None, :] < torch.tensor(list(frames))[:, None]).to(device)
    # polar(m, p) is kokoro's m * exp(p * 1j) to a last place, in one operation instead of
    # three, and in about half of exp's CPU time (torch.profiler, 64 items).
    spectrum = torch.polar((magnitude * keep.unsqueeze(1)).float(), phase.float())
    window = stft.window.to(device)
    pieces = torch.fft.irfft(spectrum, n=n_fft, dim=1) * window[:, None]
    size = (1, n_fft + hop * (most - 1))
    summed = F.fold(pieces, size, kernel_size=(1, n_fft), stride=(1, hop)).view(batch, -1)
    weights = (window * window)[None, :, None] * keep.unsqueeze(1).to(window.dtype)
    envelope = F.fold(weights, size, kernel_size=(1, n_fft), stride=(1, hop)).view(batch, -1)
    audio = summed / envelope.clamp_(min=1e-11)  # only past an item's end
    half = n_fft // 2
    return [audio[b, half : half + hop * (f - 1)] for b, f in enumerate(frames)]
