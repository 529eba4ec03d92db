"""Synthesis engine: one shared Kokoro model, one G2P pipeline per language.

Everything that runs torch, kokoro or misaki for synthesis lives here, so the daemon only
ever sees ``Engine.synthesize(text, voice, lang, speed) -> float32 samples``.  Where the
weights come from is :mod:`.models.sources`; the voices are :mod:`.voices`.

Over 400 lines: the model, the G2P pipelines, batching and the precision check share one
device and one lock.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import torch

from kokoro_service.audio.quality import log_mel_distance
from kokoro_service.errors import (
    ModelLoadError,
    PrecisionUnavailableError,
    SynthesisError,
    VoiceError,
)
from kokoro_service.synthesis.devices import bf16_unavailable
from kokoro_service.synthesis.g2p_batch import batch_tagger
from kokoro_service.synthesis.g2p_pool import MAX_BATCH, PriorityG2P
from kokoro_service.synthesis.g2p_procs import G2PProcesses
from kokoro_service.synthesis.languages import LANG_CODES, new_pipeline, unavailable
from kokoro_service.synthesis.models.architecture import REPO_ID, new_kmodel
from kokoro_service.synthesis.models.sources import ModelSource
from kokoro_service.synthesis.voices import VoiceTable
from kokoro_service.types import SAMPLE_RATE, Word

log = logging.getLogger("kokoro_service.synthesis.engine")

try:  # kokoro narrates every call through loguru at DEBUG; our own log lines say what matters.
    from loguru import logger as _loguru

    _loguru.disable("kokoro")
except ImportError:  # pragma: no cover - kokoro depends on loguru
    pass

_WARMUP_TEXTS = (
    "Yes.",
    "Hello, thanks for calling. How can I help you today?",
    "I can see your appointment on Tuesday at three thirty with Doctor Patel, and I can also "
    "move it to Wednesday morning or Thursday afternoon if either of those works better for you.",
)
# The precision check's sentences: everyday phone content, about seven seconds of audio.
_CHECK_TEXTS = (
    "Hello, thanks for calling. How can I help you today?",
    "Your prescription is ready for pickup at the pharmacy on Main Street after four.",
)
# bf16 is kept only if it moves the log-mel spectrogram by at most this many times what
# Kokoro's own noise source moves it between two fp32 renderings of the same phonemes.
# bf16 measured 2.2x on the embedded weights (0.109 against 0.051) with an unchanged
# Whisper WER; the figures, and torch's dynamic int8 as the known-bad reference, are in
# benchmarks/README.md (benchmarks.levers --only precision).
PRECISION_GATE_FACTOR = 3.0
# bf16 must also be clearly faster: within 5% is noise, and fp32 is the reference.
_MIN_GAIN = 0.95


# ------------------------------------------------------------------------------ engine


@dataclass(frozen=True, slots=True)
class G2PChunk:
    """A piece of a segment's phonemes within the model's context, and misaki's tokens
    for it (English only: other languages' G2P gives none, and so no word timings)."""

    phonemes: str
    tokens: tuple[object, ...] | None = None


@dataclass(frozen=True, slots=True)
class Synthesis:
    """One segment's audio, what it cost, and when each of its words is heard."""

    audio: npt.NDArray[np.float32] | None
    seconds: float
    phonemes: str
    words: tuple[Word, ...] = ()
    """Seconds from the audio's first sample, from the model's predicted durations."""

    @property
    def audio_seconds(self) -> float:
        return 0.0 if self.audio is None else len(self.audio) / SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class Request:
    """One segment to synthesize, with the settings of the call it belongs to."""

    text: str
    voice: str
    lang: str
    speed: float = 1.0
    phonemes: Future[list[G2PChunk]] | None = None
    """The text's phonemes, started ahead by :meth:`Engine.phonemes_ahead`, if they were."""


@dataclass(frozen=True, slots=True)
class WarmUp:
    """What the start-up warm-up cost, and the synthesis speed it measured on this host."""

    seconds: float
    rtf: float
    """Synthesis seconds per second of audio, one worker's threads, warm."""


@dataclass(frozen=True, slots=True)
class PrecisionCheck:
    """The start-up comparison of bf16 against fp32 on this host, and what it chose."""

    chosen: str
    reason: str
    fp32_rtf: float
    bf16_rtf: float
    distance: float
    """Log-mel distance of bf16 from fp32, the same noise in both."""
    spread: float
    """Log-mel distance of fp32 from fp32 with other noise: the model's own variation."""

    @property
    def limit(self) -> float:
        return PRECISION_GATE_FACTOR * self.spread

    def as_dict(self) -> dict[str, object]:
        return {
            "chosen": self.chosen,
            "reason": self.reason,
            "fp32_rtf": round(self.fp32_rtf, 4),
            "bf16_rtf": round(self.bf16_rtf, 4),
            "log_mel_distance": round(self.distance, 4),
            "log_mel_limit": round(self.limit, 4),
        }


class _Bf16Decoder(torch.nn.Module):
    """Kokoro's decoder (the vocoder) with its convolutions and linear layers in bf16.

    Only the decoder, which does about 95% of the arithmetic: the text side (ALBERT, the
    duration predictor) stays fp32, so every duration, and so the timing of every word,
    is exactly fp32's.  Norms, activations and the iSTFT stay fp32 under autocast.
    """

    def __init__(self, decoder: torch.nn.Module, device_type: str) -> None:
        super().__init__()
        self.inner = decoder
        self.device_type = device_type

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out: torch.Tensor = self.inner(*args)
        return out.float()


# How long a G2P process may take for one segment before the daemon does it itself (a
# stuck or swapped-out process must not hold a batch; a segment takes milliseconds).
_G2P_PROCESS_WAIT = 5.0


class Engine:
    """Owns the one shared ``KModel``, a G2P ``KPipeline`` per language, and the voices.

    Responsibilities:

    1. Load the weights once from a :class:`ModelSource` onto the chosen device.
    2. Turn a text segment into phonemes (serialised per language: G2P is not thread-safe),
       after ``rewrite`` (phone-text normalisation, the lexicon), and run the model under
       ``inference_mode`` (concurrently: the model is read-only).
    3. Time each word of a segment from the model's predicted durations (:func:`word_times`).
    4. Hold the voice table (:mod:`.voices`) of the model's voice files.
    5. Switch the vocoder between fp32 and bf16 before serving, and compare the two.
    """

    def __init__(
        self,
        source: ModelSource,
        *,
        device: str = "cpu",
        default_lang: str = "a",
        torch_threads: int | None = None,
        rewrite: Callable[[str, str], str] | None = None,
    ) -> None:
        from kokoro_service.synthesis.models.rewrites import fuse_residual_blocks

        self.torch_threads = torch_threads
        self.rewrite = rewrite
        """(text, lang) -> the text G2P reads: phone content in words, lexicon names."""
        self.bind_thread()
        self.source = source
        self.device = device
        self.voices = VoiceTable(source.voice_files())
        if not self.voices.names:
            raise ModelLoadError(f"{source.description} has no voices")
        t0 = time.perf_counter()
        try:
            model = new_kmodel(str(source.config_path), str(source.weights_path))
            _verify_loaded(model, source.weights_path)
            _fold_weight_norm(model)
            fused = fuse_residual_blocks(model)
            self.model = model.to(device).eval()
        except Exception as exc:  # any failure here (pickle, shapes, config) is fatal
            raise ModelLoadError(f"cannot load the model from {source.description}: {exc}") from exc
        log.info(
            "model loaded source=%s device=%s params=%.1fM fused_blocks=%d seconds=%.2f",
            source.kind,
            device,
            sum(p.numel() for p in self.model.parameters()) / 1e6,
            fused,
            time.perf_counter() - t0,
        )
        # Lock order: a language's building lock, then _pipelines_lock (held only briefly).
        self._pipelines: dict[str, object] = {}
        self._g2p_locks: dict[str, threading.Lock] = {}
        self._building: dict[str, threading.Lock] = {}
        self._failed: dict[str, str] = {}
        self._pipelines_lock = threading.Lock()
        self.g2p_batch = MAX_BATCH
        """English segments tagged together at most (:meth:`use_g2p_batch`)."""
        self._g2p_pool = PriorityG2P(prepare=self._tag_ahead)
        self._g2p_procs: G2PProcesses | None = None
        self.batch_failures = 0
        """Batched passes that failed and were redone one segment at a time."""
        self.pipeline(default_lang)
        self.precision = "fp32"
        self._decoders: dict[str, torch.nn.Module] = {"fp32": self.model.decoder}

    # -- precision ---------------------------------------------------------------------

    def use_precision(self, precision: str) -> None:
        """Run the vocoder in ``precision`` ("fp32" or "bf16") from now on.

        Only before serving: the model is shared by the workers without a lock.
        """
        if precision not in ("fp32", "bf16"):
            raise PrecisionUnavailableError(f"unknown precision {precision!r}")
        if precision == "bf16" and "bf16" not in self._decoders:
            why = bf16_unavailable(self.device)
            if why is not None:
                raise PrecisionUnavailableError(
                    f"precision bf16 was requested but {why} (device {self.device})"
                )
            device_type = self.device.split(":", 1)[0]
            self._decoders["bf16"] = _Bf16Decoder(self._decoders["fp32"], device_type)
        self.model.decoder = self._decoders[precision]
        self.precision = precision

    def compare_precisions(self, voice: str, lang: str) -> PrecisionCheck:
        """Render the check sentences in fp32 and bf16 with the same noise, and pick one.

        bf16 is chosen only if it is clearly faster here and its log-mel distance from
        fp32 stays within :data:`PRECISION_GATE_FACTOR` times fp32's own spread (fp32
        against fp32 with other noise).  Leaves the engine in the chosen precision.
        """
        for precision in ("fp32", "bf16"):  # each path's first use, untimed, so neither
            self.use_precision(precision)  # pays lazy initialisation inside the comparison
            self.synthesize(_WARMUP_TEXTS[0], voice=voice, lang=lang)
        seconds = {"fp32": 0.0, "bf16": 0.0}
        audio_s = 0.0
        distances, spreads = [], []
        for text in _CHECK_TEXTS:
            # Interleaved, so that both precisions see the machine in the same state.
            a = self.synthesize_seeded(text, voice, lang, "fp32", seed=1)
            b = self.synthesize_seeded(text, voice, lang, "bf16", seed=1)
            c = self.synthesize_seeded(text, voice, lang, "fp32", seed=2)
            if a.audio is None or b.audio is None or c.audio is None:
                raise SynthesisError("the precision check's sentences produced no audio")
            seconds["fp32"] += (a.seconds + c.seconds) / 2
            seconds["bf16"] += b.seconds
            audio_s += a.audio_seconds
            distances.append(log_mel_distance(a.audio, b.audio))
            spreads.append(log_mel_distance(a.audio, c.audio))
        fp32_rtf, bf16_rtf = seconds["fp32"] / audio_s, seconds["bf16"] / audio_s
        distance = sum(distances) / len(distances)
        spread = sum(spreads) / len(spreads)
        limit = PRECISION_GATE_FACTOR * spread
        if distance > limit:
            chosen, reason = (
                "fp32",
                f"bf16 changes the sound too much ({distance:.3f} > {limit:.3f})",
            )
        elif bf16_rtf > fp32_rtf * _MIN_GAIN:
            chosen, reason = "fp32", "bf16 is not clearly faster here"
        else:
            chosen, reason = "bf16", "bf16 is faster and passes the quality check"
        self.use_precision(chosen)
        return PrecisionCheck(chosen, reason, fp32_rtf, bf16_rtf, distance, spread)

    def synthesize_seeded(
        self, text: str, voice: str, lang: str, precision: str, seed: int
    ) -> Synthesis:
        """One synthesis in ``precision`` with the noise source seeded, the RNG restored."""
        from kokoro_service.synthesis.models.batched import seeded

        self.use_precision(precision)
        with seeded(seed, torch.device(self.device)):
            return self.synthesize(text, voice=voice, lang=lang)

    # -- languages ---------------------------------------------------------------------

    def pipeline(self, lang: str) -> object:
        """The quiet (G2P-only) KPipeline for ``lang``, created on first use.

        Building one loads a lexicon and a spaCy model (seconds).  Only callers asking for
        that same language wait for it: calls speaking a loaded language never do.  Each
        language's G2P is chosen in :mod:`.languages`.
        """
        lang = lang.strip().lower()
        pipe = self._pipelines.get(lang)
        if pipe is not None:
            return pipe
        if lang not in LANG_CODES:
            raise VoiceError(
                f"unknown language {lang[:16]!r}; kokoro knows {', '.join(LANG_CODES)}"
            )
        with self._pipelines_lock:
            building = self._building.setdefault(lang, threading.Lock())
        with building:
            pipe = self._pipelines.get(lang)
            if pipe is not None:
                return pipe
            failed = self._failed.get(lang)
            if failed is not None:  # a peer repeating a missing language costs nothing more
                raise VoiceError(failed)
            missing = unavailable(lang)
            if missing is not None:  # a missing extra stays missing
                self._failed[lang] = f"language {lang!r} is unavailable here: {missing}"
                raise VoiceError(self._failed[lang])
            try:
                pipe = new_pipeline(lang, REPO_ID)
            except (ImportError, OSError, RuntimeError, ValueError) as exc:
                why = f"language {lang!r} is unavailable here: {exc}"
                if isinstance(exc, ImportError):  # a missing extra stays missing
                    self._failed[lang] = why
                raise VoiceError(why) from exc
            batch_tagger(pipe)  # English: segments queued together are tagged together
            with self._pipelines_lock:
                self._g2p_locks[lang] = threading.Lock()
                self._pipelines[lang] = pipe
            return pipe

    # -- synthesis ---------------------------------------------------------------------

    def phonemize(self, text: str, lang: str) -> list[G2PChunk]:
        """Phoneme chunks for ``text``, each within the model's 510-symbol context."""
        pipe = self.pipeline(lang)
        lang = lang.strip().lower()
        if self.rewrite is not None:
            text = self.rewrite(text, lang)
        with self._g2p_locks[lang]:
            results = list(pipe(text, voice=None, split_pattern=None))  # type: ignore[operator]
        return [
            G2PChunk(r.phonemes, tuple(r.tokens) if r.tokens else None)
            for r in results
            if r.phonemes
        ]

    def phonemes_ahead(
        self, text: str, lang: str, *, first: bool = False
    ) -> Future[list[G2PChunk]]:
        """Start :meth:`phonemize` in the engine's G2P thread and return at once.

        G2P is Python (misaki, spaCy) at a few milliseconds a segment.  Done in the
        synthesis worker for a batch of 64 it would hold the GPU idle for a good part of
        a second per batch; started when a segment is cut, it is ready by the time the
        segment's batch forms.  A ``first`` segment goes ahead of the others, and segments
        queued together are tagged together (:mod:`.g2p_batch`).
        """
        job = functools.partial(self._phonemize_ahead, text, lang)
        return self._g2p_pool.submit(job, urgent=first, key=(text, lang))

    def use_g2p_batch(self, size: int) -> None:
        """Tag at most ``size`` English segments in one spaCy pass (1: each alone).
        Only before serving, and before :meth:`use_g2p_processes`."""
        self.g2p_batch = max(1, size)
        prepare = self._tag_ahead if self.g2p_batch > 1 else None
        self._g2p_pool = PriorityG2P(prepare=prepare, batch=self.g2p_batch)

    def use_g2p_processes(self, processes: int, lang: str) -> None:
        """Run G2P started ahead in ``processes`` spawned processes (0: a thread here),
        with ``lang``'s pipeline built in each.  Only before serving."""
        if processes < 1:
            return
        t0 = time.perf_counter()
        procs = G2PProcesses(processes, REPO_ID, lang)
        try:
            procs.warm_up(lang)
        except Exception as exc:
            procs.close()
            raise SynthesisError(f"the G2P processes failed to start: {exc}") from exc
        self._g2p_procs = procs
        self._g2p_pool = PriorityG2P(threads=processes)
        log.info("G2P in %d process(es), ready in %.1fs", processes, time.perf_counter() - t0)

    def close(self, *, wait: bool = True) -> None:
        """Stop the G2P processes, if any (the model needs no closing); without ``wait``
        they are left to end on their own (they leave when the daemon is gone)."""
        procs, self._g2p_procs = self._g2p_procs, None
        if procs is not None:
            procs.close(wait=wait)

    def _tag_ahead(self, keys: Sequence[object]) -> None:
        """Tag the English texts of ``(text, lang)`` keys in one spaCy pass per language,
        for :meth:`phonemize` to read.  Not with G2P processes: they phonemize there."""
        if self._g2p_procs is not None or self.g2p_batch < 2:
            return
        texts: dict[str, list[str]] = {}
        for key in keys:
            text, lang = cast("tuple[str, str]", key)
            texts.setdefault(lang.strip().lower(), []).append(text)
        for lang, group in texts.items():
            pipe = self._pipelines.get(lang)
            tagger = batch_tagger(pipe) if pipe is not None and len(group) > 1 else None
            if tagger is None:
                continue
            rewrite = self.rewrite
            read = [rewrite(t, lang) for t in group] if rewrite is not None else group
            # In pieces, so that the G2P thread's first segments wait for one piece at most.
            for start in range(0, len(read), self.g2p_batch):
                with self._g2p_locks[lang]:
                    tagger.tag(read[start : start + self.g2p_batch])

    def _take_back(self, requests: Sequence[Request]) -> set[int]:
        """The requests whose G2P had not started, taken back to be done here, and their
        texts tagged together: a burst's first segments would otherwise be tagged one
        at a time while the device waits."""
        mine = {i for i, r in enumerate(requests) if r.phonemes is None or r.phonemes.cancel()}
        if len(mine) > 1:
            try:
                self._tag_ahead([(requests[i].text, requests[i].lang) for i in sorted(mine)])
            except Exception:  # each is phonemized alone, as it would be without this
                log.exception("tagging %d segments together failed", len(mine))
        return mine

    def _phonemize_ahead(self, text: str, lang: str) -> list[G2PChunk]:
        procs = self._g2p_procs
        if procs is None:
            return self.phonemize(text, lang)
        self.pipeline(lang)  # a language this host cannot speak fails as it does here
        rewritten = self.rewrite(text, lang.strip().lower()) if self.rewrite else text
        try:
            chunks = procs.submit(rewritten, lang.strip().lower()).result(_G2P_PROCESS_WAIT)
        except BrokenProcessPool as exc:
            if self._g2p_procs is procs:
                self._g2p_procs = None
                procs.close(wait=False)
                log.error("G2P processes failed (%s); G2P runs in the daemon from now on", exc)
            return self.phonemize(text, lang)
        except Exception:  # misaki's error for this text, or a stuck process: G2P here
            return self.phonemize(text, lang)
        return [G2PChunk(ph, tokens) for ph, tokens in chunks]

    def synthesize(
        self,
        text: str,
        *,
        voice: str,
        lang: str,
        speed: float = 1.0,
        phonemes: Future[list[G2PChunk]] | None = None,
    ) -> Synthesis:
        """Audio for one segment, or ``audio=None`` when the text has nothing to speak."""
        from kokoro import KPipeline

        t0 = time.perf_counter()
        pack = self.voices.get(voice)
        try:
            chunks = self._phonemes(text, lang, phonemes)
            pieces: list[npt.NDArray[np.float32]] = []
            durations: list[torch.Tensor] = []
            with torch.inference_mode():
                for chunk in chunks:
                    out = KPipeline.infer(self.model, chunk.phonemes, pack, speed)
                    pieces.append(out.audio.detach().float().cpu().numpy().reshape(-1))
                    durations.append(out.pred_dur)
        except VoiceError:
            raise
        except Exception as exc:
            raise request_error(exc) from exc
        words = self._word_times(text, chunks, durations, pieces)
        return _synthesis(pieces, time.perf_counter() - t0, chunks, words)

    def _word_times(
        self,
        text: str,
        chunks: Sequence[G2PChunk],
        durations: Sequence[torch.Tensor],
        pieces: Sequence[npt.NDArray[np.float32]],
    ) -> tuple[Word, ...]:
        """:func:`word_times`, never at the cost of the audio: timings are a courtesy."""
        try:
            return word_times(chunks, durations, [len(p) for p in pieces], self.model.vocab)
        except Exception as exc:
            log.warning("word timing failed text=%r: %s", text[:80], exc)
            return ()

    def synthesize_batch(self, requests: Sequence[Request]) -> list[Synthesis | Exception]:
        """Audio for segments of different calls, in one forward pass where there are several.

        One result per request, in order: its :class:`Synthesis`, or the
        :class:`VoiceError`/:class:`SynthesisError` that request alone met.  A lone request
        takes :meth:`synthesize`'s batch-1 path, so a call never pays for batching it does
        not use.  Each result's ``seconds`` is its share of the batch's time, in proportion
        to its audio, which is what one segment cost the host.

        If the batched pass itself fails, every request is retried alone, so that one bad
        item cannot cost the others their audio.
        """
        if len(requests) <= 1:
            return [self._one(r) for r in requests]
        from kokoro_service.synthesis.models import batched

        t0 = time.perf_counter()
        results: list[Synthesis | Exception | None] = [None] * len(requests)
        owners: list[int] = []
        phonemes: dict[int, list[G2PChunk]] = {}
        items: list[batched.BatchItem] = []
        for i, (req, chunks) in enumerate(
            zip(requests, self.batch_phonemes(requests), strict=True)
        ):
            if isinstance(chunks, Exception):
                results[i] = chunks
                continue
            try:
                pack = self.voices.get(req.voice)
                # Checked here, per request, so that input the model cannot take fails
                # only its own request, not the whole batch.
                mine = [
                    batched.BatchItem(c.phonemes, pack[len(c.phonemes) - 1], req.speed)
                    for c in chunks
                ]
                for item in mine:
                    batched.token_ids(self.model, item.phonemes)
            except Exception as exc:
                results[i] = request_error(exc)
                continue
            phonemes[i] = chunks
            items += mine
            owners += [i] * len(mine)
        try:
            with torch.inference_mode():
                outs = batched.forward_batch(
                    self.model,
                    items,
                    autocast=torch.bfloat16 if self.precision == "bf16" else None,
                )
                host = self._to_host([o.audio for o in outs])
        except Exception as exc:
            self.batch_failures += 1
            log.error(
                "batched synthesis of %d segments failed (%s: %s); synthesizing them one by one",
                len(items),
                type(exc).__name__,
                exc,
            )
            return [r if r is not None else self._one(requests[i]) for i, r in enumerate(results)]
        seconds = time.perf_counter() - t0
        pieces: dict[int, list[npt.NDArray[np.float32]]] = {i: [] for i in phonemes}
        durations: dict[int, list[torch.Tensor]] = {i: [] for i in phonemes}
        for owner, audio, out in zip(owners, host, outs, strict=True):
            pieces[owner].append(audio)
            durations[owner].append(out.pred_dur)
        total = sum(len(a) for a in host) or 1
        for i, chunks in phonemes.items():
            share = seconds * sum(len(a) for a in pieces[i]) / total
            words = self._word_times(requests[i].text, chunks, durations[i], pieces[i])
            results[i] = _synthesis(pieces[i], share, chunks, words)
        return [r if r is not None else SynthesisError("no result") for r in results]

    def batch_phonemes(self, requests: Sequence[Request]) -> list[list[G2PChunk] | Exception]:
        """Each request's phonemes, or the :class:`VoiceError`/:class:`SynthesisError` it
        alone met.  G2P jobs not yet started are taken back and tagged together; with G2P
        processes each is taken back only when its turn comes, as the processes work on
        the others meanwhile."""
        local = self._take_back(requests) if self._g2p_procs is None else set()
        out: list[list[G2PChunk] | Exception] = []
        for i, req in enumerate(requests):
            try:
                self.voices.get(req.voice)  # a bad voice fails its request before G2P
                if i in local:
                    out.append(self._phonemize_ahead(req.text, req.lang))
                else:
                    out.append(self._phonemes(req.text, req.lang, req.phonemes))
            except Exception as exc:
                out.append(request_error(exc))
        return out

    def _phonemes(
        self, text: str, lang: str, ahead: Future[list[G2PChunk]] | None
    ) -> list[G2PChunk]:
        """The request's phonemes: those started ahead if they are done; else G2P now.

        A G2P job not yet started is taken back and done now rather than waited for, so
        a segment never waits behind other calls' G2P.
        """
        if ahead is not None and (ahead.done() or not ahead.cancel()):
            return ahead.result()  # done, or running now: a few milliseconds at most
        # Not started: taken back, so it waits behind no other call's G2P.  With G2P
        # processes it still goes to one (waiting there releases the GIL).
        return self._phonemize_ahead(text, lang)

    def _one(self, req: Request) -> Synthesis | Exception:
        try:
            return self.synthesize(
                req.text, voice=req.voice, lang=req.lang, speed=req.speed, phonemes=req.phonemes
            )
        except (VoiceError, SynthesisError) as exc:
            return exc

    def _to_host(self, audio: list[torch.Tensor]) -> list[npt.NDArray[np.float32]]:
        """Copy the batch's audio to the host in one transfer (through pinned memory on
        CUDA, so the copy is a DMA and the only wait is for the batch's last kernel)."""
        if not audio:
            return []
        flat = torch.cat([a.reshape(-1).float() for a in audio])
        if flat.device.type == "cuda":
            host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            host.copy_(flat, non_blocking=True)
            torch.cuda.current_stream(flat.device).synchronize()
        else:
            host = flat.cpu()
        whole = host.numpy()
        bounds = np.cumsum([0, *(len(a) for a in audio)])
        return [whole[a:b] for a, b in itertools.pairwise(bounds)]

    def bind_thread(self) -> None:
        """Apply the intra-op thread count and denormal flushing to the calling thread.

        OpenMP keeps the thread count per calling thread, and the flush-to-zero flags live
        in each thread's FPU state, inherited only by threads created after they are set
        (the OpenMP team of this thread included).  So every synthesis worker calls this
        once, before its first forward pass.
        """
        if self.torch_threads is not None:
            torch.set_num_threads(self.torch_threads)
        # Subnormal floats make CPU kernels crawl (measured 6x slower on random weights).
        torch.set_flush_denormal(True)

    def warm_up(self, voice: str, lang: str, max_batch: int = 1) -> WarmUp:
        """Synthesize short, medium and long text so the first caller pays no
        lazy-initialisation cost (G2P caches, kernel selection, allocator pools), then
        batches: on a GPU every power-of-two size up to ``max_batch`` (its allocator and
        kernel choice depend on the shape), on the CPU only the first batched pass."""
        t0 = time.perf_counter()
        done = [self.synthesize(text, voice=voice, lang=lang) for text in _WARMUP_TEXTS]
        # The first synthesis pays the lazy initialisation: the speed comes from the rest.
        warm = done[1:]
        largest = max_batch if self.device.split(":", 1)[0] == "cuda" else min(max_batch, 2)
        size = 2
        while size <= largest:
            # Short and medium text: the shapes, not minutes of audio, are what warms.
            texts = itertools.islice(itertools.cycle(_WARMUP_TEXTS[:2]), size)
            failures = self.batch_failures
            for result in self.synthesize_batch([Request(t, voice, lang) for t in texts]):
                if isinstance(result, Exception):
                    raise result
            if self.batch_failures > failures:  # a --max-batch this device cannot run
                raise SynthesisError(
                    f"a batch of {size} segments failed at warm-up (see the log); lower --max-batch"
                )
            size *= 2
        return WarmUp(
            seconds=time.perf_counter() - t0,
            rtf=sum(r.seconds for r in warm) / max(1e-9, sum(r.audio_seconds for r in warm)),
        )


SAMPLES_PER_FRAME = 600  # one predicted-duration frame of Kokoro-82M at 24 kHz


def word_times(
    chunks: Sequence[G2PChunk],
    durations: Sequence[torch.Tensor],
    samples: Sequence[int],
    vocab: Mapping[str, int],
) -> tuple[Word, ...]:
    """When each word of a segment is heard, from the model's predicted durations.

    A word starts on the first frame of its first phoneme and ends on the last frame of
    its last, each phoneme found at the model position it was fed at (the symbols the
    vocabulary lacks are skipped, as the model skips them).  The durations are already
    divided by the speed, so the times are as heard.  kokoro's ``join_timestamps`` was
    measured against Whisper's word times on the embedded weights: a median boundary
    error of 116 ms, against 67 ms for this (benchmarks/README.md).  Each chunk's times
    are offset by the audio of the chunks before it; tokens with no letter or digit
    (punctuation) are left out, and a chunk whose tokens do not spell its phonemes gets
    no words rather than wrong ones.
    """
    words: list[Word] = []
    offset = 0.0
    for chunk, dur, n in zip(chunks, durations, samples, strict=True):
        if chunk.tokens:
            words += _chunk_words(chunk, dur.reshape(-1).tolist(), vocab, offset)
        offset += n / SAMPLE_RATE
    return tuple(words)


def _chunk_words(
    chunk: G2PChunk, frames: list[int], vocab: Mapping[str, int], offset: float
) -> list[Word]:
    assert chunk.tokens is not None  # noqa: S101 - the caller checks
    spelled: list[str] = []
    owner: list[int] = []  # the token of each character of the phoneme string
    for k, token in enumerate(chunk.tokens):
        ps = str(getattr(token, "phonemes", None) or "")
        space = " " if getattr(token, "whitespace", "") else ""
        spelled.append(ps + space)
        owner += [k] * len(ps) + [-1] * len(space)
    joined = "".join(spelled)
    lead = len(joined) - len(joined.lstrip())
    if joined.strip() != chunk.phonemes:
        return []
    span: dict[int, tuple[int, int]] = {}  # token -> its first and last model position
    position = 0  # 0 is the boundary token the model adds in front
    for ch, k in zip(chunk.phonemes, owner[lead:], strict=False):
        if ch not in vocab:
            continue
        position += 1
        if k >= 0:
            first, _ = span.get(k, (position, position))
            span[k] = (first, position)
    if position + 2 != len(frames):
        return []
    ends = list(itertools.accumulate(frames))
    scale = SAMPLES_PER_FRAME / SAMPLE_RATE
    out = []
    for k, (first, last) in sorted(span.items()):
        text = str(getattr(chunk.tokens[k], "text", ""))
        if any(c.isalnum() for c in text):
            out.append(Word(text, offset + ends[first - 1] * scale, offset + ends[last] * scale))
    return out


def request_error(exc: Exception) -> Exception:
    """What one request's failure is reported as: a bad voice as itself, anything else
    (G2P, input the model cannot take) as a :class:`SynthesisError` naming the cause."""
    if isinstance(exc, VoiceError):
        return exc
    return SynthesisError(f"{type(exc).__name__}: {exc}")


def _synthesis(
    pieces: Sequence[npt.NDArray[np.float32]],
    seconds: float,
    chunks: Sequence[G2PChunk],
    words: tuple[Word, ...],
) -> Synthesis:
    phonemes = " / ".join(c.phonemes for c in chunks)
    return Synthesis(_wire_audio(pieces), seconds, phonemes, words)


def _wire_audio(pieces: Sequence[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32] | None:
    """A segment's chunks as one contiguous float32 array, or None when there is none."""
    if not pieces:
        return None
    audio = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if not np.isfinite(audio).all():
        # Never put NaN/inf on the wire: a player would turn it into a loud click.
        audio = np.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0)
    return audio if audio.size else None


def _verify_loaded(model: torch.nn.Module, weights: Path) -> None:
    """Check that every parameter came from the checkpoint, unchanged.

    kokoro's loader retries a failed load non-strictly, which can leave a module with
    random weights and no error: a daemon that speaks noise.  This refuses that.
    """
    state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state, dict) or not state:
        raise ModelLoadError(f"{weights} holds no component state dicts")
    for name in ("bert", "bert_encoder", "predictor", "text_encoder", "decoder"):
        if name not in state:
            raise ModelLoadError(f"{weights} lacks the {name!r} component")
        want = {k.removeprefix("module."): v for k, v in state[name].items()}
        have = getattr(model, name).state_dict()
        missing = sorted(set(have) - set(want))
        extra = sorted(set(want) - set(have))
        if missing or extra:
            raise ModelLoadError(
                f"{weights}: component {name!r} does not match the config "
                f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''})"
            )
        for key, tensor in want.items():
            if have[key].shape != tensor.shape or not torch.equal(have[key], tensor):
                raise ModelLoadError(
                    f"{weights}: {name}.{key} was not loaded (shape {tuple(tensor.shape)} in the "
                    f"file, {tuple(have[key].shape)} in the model built from config.json)"
                )


def _fold_weight_norm(model: torch.nn.Module) -> None:
    """Bake weight norm into plain weights: inference recomputed g*v/|v| on every call."""
    for module in model.modules():
        if hasattr(module, "weight_g") and hasattr(module, "weight_v"):
            with contextlib.suppress(ValueError):
                torch.nn.utils.remove_weight_norm(module)
