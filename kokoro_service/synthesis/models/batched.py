"""Kokoro-82M over a batch of segments from different calls, in one forward pass.

``KModel.forward`` takes one segment.  :func:`forward_batch` runs several, each with its
own voice, speed and length, through the same modules and weights (kokoro's own
``bert``, ``predictor``, ``text_encoder`` and ``decoder`` instances: no fork of them),
with what batching needs added around them:

- the token sequences padded, with ALBERT's attention mask and packed sequences for
  every LSTM, so that no item sees another's padding;
- each item's own durations, from its own speed, and its own alignment (a gather, which
  is exact where kokoro multiplies by a one-hot matrix);
- a decoder over padded frames whose instance norms take their statistics over the
  item's own frames only, and whose every neighbour-reading operation (convolution,
  transposed convolution) sees zeros past the item's end, as it does at batch 1;
- the harmonic source, its STFT and the inverse STFT once over the batch, each item on
  its own length, edges and window envelope included (:mod:`.batched_source`); with a
  seed per item, each draws batch 1's noise from its own generator.

Lengths at every stage are exact multiples of the item's frame count F: 2F after the
decoder's upsampling block, 20F and 120F + 1 in the generator, 600F samples of audio.
The suite checks every item against batch 1 (``tests/test_batched.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - the name torch's own code uses
from kokoro.istftnet import AdaIN1d, AdainResBlk1d, AdaINResBlock1, Decoder, Generator
from kokoro.model import KModel
from torch import nn

from kokoro_service.synthesis.models.batched_source import harmonic_spectrum, inverse_stft
from kokoro_service.synthesis.models.rewrites import adain_scale_shift, snake_

# kokoro scales each AdainResBlk1d's sum by rsqrt(2) computed in fp32; the same constant,
# as a Python number so that no block copies a tensor to the device.
_RSQRT2 = float(torch.rsqrt(torch.tensor(2.0)))


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One segment's model input: phonemes, its voice's style row, and its speed."""

    phonemes: str
    ref_s: torch.Tensor
    """The voice pack's row for this length, shape (1, 256)."""
    speed: float = 1.0


@dataclass(frozen=True, slots=True)
class BatchOutput:
    """One item's audio (on the model's device) and its per-token durations in frames
    (on the host)."""

    audio: torch.Tensor
    pred_dur: torch.Tensor


def token_ids(model: KModel, phonemes: str) -> list[int]:
    """``phonemes`` as kokoro's input ids, with the boundary token at each end."""
    ids = [i for i in (model.vocab.get(p) for p in phonemes) if i is not None]
    if len(ids) + 2 > model.context_length:
        raise ValueError(f"{len(ids) + 2} tokens exceed the context of {model.context_length}")
    return [0, *ids, 0]


def _mask(lengths: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """(B, 1, size) float mask on ``device``: 1 inside each item, 0 in its padding.

    Lengths live on the host (they are known once the durations are), so building a mask
    copies a few integers to the device and never waits for it.
    """
    steps = torch.arange(size, device=device)
    ends = lengths.to(device, non_blocking=True)
    return (steps[None, :] < ends[:, None]).unsqueeze(1).float()


def _packed_lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """A batch-first LSTM over each item's own steps; the padding comes out zero."""
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, _ = lstm(packed)
    padded, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return padded


def _norm(norm: AdaIN1d, x: torch.Tensor, s: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """AdaIN1d over each item's frames only, zero in the padding; computed in fp32.

    The instance norm, its affine and the style's affine fold into one scale and shift
    per item and channel, as in :mod:`.rewrites`: four passes over ``x``, not ten.
    """
    x = x.float()
    count = m.sum(dim=-1, keepdim=True)
    masked = x * m
    mean = masked.sum(dim=-1, keepdim=True) / count
    var = masked.mul_(x).sum(dim=-1, keepdim=True) / count - mean * mean
    scale, shift = adain_scale_shift(norm, s, mean, var)
    return torch.addcmul(shift, x, scale).mul_(m)


def _adain_block(
    blk: AdainResBlk1d, x: torch.Tensor, s: torch.Tensor, n: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``AdainResBlk1d`` with masked norms; returns the output and its lengths."""
    m = _mask(n, x.shape[-1], x.device)
    r = blk.actv(_norm(blk.norm1, x, s, m))
    n_out = n
    if blk.upsample_type != "none":
        r = blk.pool(r)
        n_out = n * 2
        m = _mask(n_out, r.shape[-1], x.device)
        r = r * m  # the transposed convolution leaves its bias one step past the end
    r = blk.conv1(r)
    r = blk.actv(_norm(blk.norm2, r, s, m))
    r = blk.conv2(r)
    return (r + blk._shortcut(x)) * _RSQRT2, n_out


def _norm_snake(
    x: torch.Tensor,
    norm: AdaIN1d,
    s: torch.Tensor,
    alpha: torch.Tensor,
    m: torch.Tensor,
) -> torch.Tensor:
    """Snake of the masked AdaIN: ``y + 1/a * sin(a*y)**2``, zero where ``y`` is."""
    return snake_(_norm(norm, x, s, m), alpha)


def _residual_block(
    blk: AdaINResBlock1, x: torch.Tensor, s: torch.Tensor, m: torch.Tensor
) -> torch.Tensor:
    out = x
    for c1, c2, n1, n2, a1, a2 in zip(
        blk.convs1, blk.convs2, blk.adain1, blk.adain2, blk.alpha1, blk.alpha2, strict=True
    ):
        xt = c1(_norm_snake(out, n1, s, a1, m))
        xt = c2(_norm_snake(xt, n2, s, a2, m))
        out = out + xt.float() if out is x else out.add_(xt.float())  # never write into x
    return out


def _conv_length(conv: nn.Conv1d, n: torch.Tensor) -> torch.Tensor:
    k, stride, dil = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
    pad = int(conv.padding[0])  # an int tuple in every convolution kokoro builds
    return torch.div(n + 2 * pad - dil * (k - 1) - 1, stride, rounding_mode="floor") + 1


def _upsample_length(conv: nn.ConvTranspose1d, n: torch.Tensor) -> torch.Tensor:
    k, stride, out_pad = conv.kernel_size[0], conv.stride[0], conv.output_padding[0]
    pad = int(conv.padding[0])
    return (n - 1) * stride - 2 * pad + k + out_pad


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """torch's RNG on ``device`` seeded with ``seed`` inside, and restored after; a no-op
    for None."""
    if seed is None:
        yield
        return
    devices = [] if device.type == "cpu" else [device.index or 0]
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(seed)
        yield


def _generator(
    gen: Generator,
    x: torch.Tensor,
    s: torch.Tensor,
    f0_curve: torch.Tensor,
    n: torch.Tensor,
    seeds: Sequence[int] | None,
) -> list[torch.Tensor]:
    har = harmonic_spectrum(gen, f0_curve, n.tolist(), seeds)
    # The source runs at the sample rate (f0_upsamp's factor); its STFT is centred.
    samples = n * int(gen.f0_upsamp.scale_factor or 1)
    n_har = torch.div(samples, gen.stft.hop_length, rounding_mode="floor") + 1
    for i in range(gen.num_upsamples):
        x = F.leaky_relu(x, negative_slope=0.1)
        n_src = _conv_length(gen.noise_convs[i], n_har)
        x_source = gen.noise_convs[i](har)
        x_source = _residual_block(
            gen.noise_res[i], x_source, s, _mask(n_src, x_source.shape[-1], x.device)
        )
        x = gen.ups[i](x * _mask(n, x.shape[-1], x.device))
        n = _upsample_length(gen.ups[i], n)
        if i == gen.num_upsamples - 1:
            x = gen.reflection_pad(x)
            n = n + 1
        x = x + x_source
        m = _mask(n, x.shape[-1], x.device)
        xs: torch.Tensor | None = None
        for j in range(gen.num_kernels):
            y = _residual_block(gen.resblocks[i * gen.num_kernels + j], x, s, m)
            xs = y if xs is None else xs + y
        assert xs is not None  # noqa: S101 - every stage has residual blocks
        x = xs / gen.num_kernels
    x = F.leaky_relu(x) * _mask(n, x.shape[-1], x.device)
    x = gen.conv_post(x)
    cut = gen.post_n_fft // 2 + 1
    spec, phase = torch.exp(x[:, :cut, :]), torch.sin(x[:, cut:, :])
    return inverse_stft(gen.stft, spec, phase, n.tolist())


def _decoder(
    dec: Decoder,
    asr: torch.Tensor,
    f0_curve: torch.Tensor,
    noise: torch.Tensor,
    s: torch.Tensor,
    frames: torch.Tensor,
    seeds: Sequence[int] | None,
) -> list[torch.Tensor]:
    f0 = dec.F0_conv(f0_curve.unsqueeze(1))
    n_curve = dec.N_conv(noise.unsqueeze(1))
    x = torch.cat([asr, f0, n_curve], dim=1)
    x, n = _adain_block(dec.encode, x, s, frames)
    asr_res = dec.asr_res(asr)
    res = True
    for block in dec.decode:
        if res:
            x = torch.cat([x, asr_res, f0, n_curve], dim=1)
        x, n = _adain_block(block, x, s, n)
        if block.upsample_type != "none":
            res = False
    return _generator(dec.generator, x, s, f0_curve, n, seeds)


def _curves(
    model: KModel, en: torch.Tensor, s: torch.Tensor, frames: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prosody predictor's F0 and noise curves (``F0Ntrain``), zero past each item."""
    pred = model.predictor
    x = _packed_lstm(pred.shared, en.transpose(-1, -2), frames).transpose(-1, -2)
    out = []
    for blocks, proj in ((pred.F0, pred.F0_proj), (pred.N, pred.N_proj)):
        y, n = x, frames
        for block in blocks:
            y, n = _adain_block(block, y, s, n)
        y = proj(y).squeeze(1)
        out.append(y * _mask(n, y.shape[-1], y.device).squeeze(1))
    return out[0], out[1]


def forward_batch(
    model: KModel,
    items: Sequence[BatchItem],
    *,
    decoder: nn.Module | None = None,
    autocast: torch.dtype | None = None,
    seeds: Sequence[int] | None = None,
) -> list[BatchOutput]:
    """Synthesize ``items`` in one pass; each output as batch 1 would give it.

    ``decoder`` is the model's decoder module (default ``model.decoder``), run under
    ``autocast`` when given (the bf16 vocoder).  ``seeds``, one per item, make each item's
    noise what ``torch.manual_seed(seed)`` before ``model(...)`` would draw: the tests use
    them to compare with batch 1 sample by sample.
    """
    if not items:
        return []
    if seeds is not None and len(seeds) != len(items):
        raise ValueError("one seed per item")
    device = model.device
    ids = [token_ids(model, item.phonemes) for item in items]
    lengths_cpu = torch.tensor([len(i) for i in ids])
    lengths = lengths_cpu.to(device)
    tokens = max(len(i) for i in ids)
    input_ids = torch.zeros((len(ids), tokens), dtype=torch.long)
    for b, row in enumerate(ids):
        input_ids[b, : len(row)] = torch.tensor(row)
    input_ids = input_ids.to(device)
    ref_s = torch.cat([item.ref_s.reshape(1, -1) for item in items]).to(device)
    speed = torch.tensor([item.speed for item in items], device=device).view(-1, 1)
    text_mask = torch.arange(tokens, device=device)[None, :] >= lengths[:, None]

    # Text side: durations and the features they stretch over frames.
    bert = model.bert(input_ids, attention_mask=(~text_mask).int())
    d_en = model.bert_encoder(bert).transpose(-1, -2)
    s = ref_s[:, 128:]
    d = model.predictor.text_encoder(d_en, s, lengths_cpu, text_mask)
    x = _packed_lstm(model.predictor.lstm, d, lengths_cpu)
    duration = torch.sigmoid(model.predictor.duration_proj(x)).sum(dim=-1) / speed
    pred_dur = torch.round(duration).clamp(min=1).long() * (~text_mask)
    # The one wait for the device in the whole pass: every later shape depends on it, and
    # word timings need the durations on the host anyway.
    durations = pred_dur.cpu()
    frames = durations.sum(dim=1)
    most = int(frames.max())
    # Frame f of an item belongs to the token whose cumulative duration first passes f;
    # frames past the item point at an all-zero row.
    ends = pred_dur.cumsum(dim=1)
    steps = torch.arange(most, device=device).expand(len(items), most).contiguous()
    token_of = torch.searchsorted(ends, steps, right=True)

    def stretch(feats: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, C, frames)
        padded = F.pad(feats, (0, 1))
        index = token_of.unsqueeze(1).expand(-1, feats.shape[1], -1)
        return torch.gather(padded, 2, index)

    en = stretch(d.transpose(-1, -2))
    f0_curve, noise = _curves(model, en, s, frames)
    t_en = model.text_encoder(input_ids, lengths_cpu, text_mask)
    asr = stretch(t_en)

    dec = decoder if decoder is not None else model.decoder
    dec = getattr(dec, "inner", dec)  # the bf16 wrapper's own module
    context = (
        torch.autocast(device.type, dtype=autocast)
        if autocast is not None
        else contextlib.nullcontext()
    )
    with context:
        audio = _decoder(dec, asr, f0_curve, noise, ref_s[:, :128], frames, seeds)
    return [
        BatchOutput(a.float(), durations[b, : int(lengths_cpu[b])]) for b, a in enumerate(audio)
    ]
