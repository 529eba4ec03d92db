"""Synthesis workers: threads that turn scheduled segments into audio.

Each worker takes the next segment from the scheduler, synthesizes it with the shared
engine and hands the audio to the call (:meth:`Calls.deliver`), then lets the call cut its
next segment (:meth:`Calls.segment_done`).  A failure inside one segment is logged and the
call goes on with the next one.
"""

from __future__ import annotations

import logging

from .calls import Call, Calls
from .config import TICK
from .engine import Engine
from .errors import SynthesisError, VoiceError
from .scheduler import Scheduler, Segment

log = logging.getLogger("kokoro_service.workers")


class Worker:
    """One synthesis thread's loop.

    ``prepare()`` runs first in the thread (torch threads, denormal flushing) and then
    ``ready`` is set, so the server knows the worker could start before it says it is up.
    """

    def __init__(self, engine: Engine, scheduler: Scheduler, calls: Calls) -> None:
        self.engine = engine
        self.scheduler = scheduler
        self.calls = calls

    def prepare(self) -> None:
        self.engine.bind_thread()

    def run(self) -> None:
        while True:
            job = self.scheduler.next_job(timeout=TICK)
            if job is None:
                if self.scheduler.stopped:
                    return
                continue
            work, segment = job
            call = self.calls.for_work(work)
            if call is None:
                self.scheduler.done(work, segment)
                continue
            self._synthesize(call, segment)

    def _synthesize(self, call: Call, seg: Segment) -> None:
        if self.calls.current(call, seg):
            try:
                result = self.engine.synthesize(
                    seg.text, voice=seg.voice, lang=seg.lang, speed=seg.speed
                )
            except (SynthesisError, VoiceError) as exc:
                log.error(
                    "synthesis failed call=%s text=%r: %s; going on with the next segment",
                    call.call_id,
                    seg.text[:200],
                    exc,
                )
            except Exception:
                log.exception("synthesis crashed call=%s text=%r", call.call_id, seg.text[:200])
            else:
                if result.audio is None:
                    log.info(
                        "nothing to speak call=%s text=%r (no phonemes)",
                        call.call_id,
                        seg.text[:80],
                    )
                else:
                    chunk = self.calls.deliver(call, seg, result.audio, result.seconds)
                    if chunk is not None:
                        log.debug(
                            "segment call=%s chunk=%d chars=%d synth_s=%.3f audio_s=%.3f",
                            call.call_id,
                            chunk,
                            len(seg.text),
                            result.seconds,
                            result.audio_seconds,
                        )
        self.calls.segment_done(call, seg)
