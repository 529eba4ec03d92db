"""The vocoder's arithmetic, each variant on the same telephony sentences:

* ``precision``: the vocoder in fp32 (the baseline), in bf16 (``--precision bf16``, what
  auto picks on a bf16 CPU), bf16 autocast over the whole model, torch's dynamic int8
  generator (the known-bad reference) and, with ``--compile``, the bf16 vocoder under
  ``torch.compile``: RTF over telephony sentences, log-mel distance from fp32 with the
  same noise, beside fp32's own noise spread, and Whisper's WER where the test extras are
  installed;
* ``fused``: the vocoder's residual blocks with the fused forward (kept,
  :mod:`kokoro_service.synthesis.models.rewrites`) against kokoro's stock forward, in fp32 and in
  bf16, with the largest sample difference.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any

from benchmarks.levers.common import Bench, rtf_taking_turns
from benchmarks.levers.int8 import _quantized_generator
from kokoro_service.wire.codec import SAMPLE_RATE


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
