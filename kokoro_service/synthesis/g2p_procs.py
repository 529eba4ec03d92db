"""G2P in worker processes (``--g2p-processes``), so it stops competing for the daemon's GIL.

misaki's English G2P runs spaCy's tagger in Python: on the simulated H200 with no model time
at all, it was 65 % of the daemon's GIL-holding samples at 128 calls (py-spy ``--gil``),
and the daemon, one process, saturated one core while the second sat mostly idle.  Here
each G2P job runs in one of N spawned processes, each with its own G2P pipelines; the
daemon's side only sends the rewritten text and unpickles the phonemes and tokens.

Processes are spawned, not forked: the daemon has torch's and its own threads by then.
A process that dies takes its pool down with it; every job then fails, and the engine
falls back to G2P in the daemon (logged once), so no segment loses its audio.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, NamedTuple

_PIPELINES: dict[str, Any] = {}
_PARENT_POLL_S = 0.5


class WordToken(NamedTuple):
    """What word timing reads of a misaki token.  misaki's own tokens carry an ``addict``
    dictionary that does not survive pickling, so only these three fields cross."""

    text: str
    phonemes: str | None
    whitespace: str


Chunks = list[tuple[str, tuple[WordToken, ...] | None]]


def _child_g2p(repo_id: str, lang: str, text: str) -> Chunks:
    """In a worker process: misaki's phonemes and tokens for ``text``, chunk by chunk."""
    pipe = _PIPELINES.get(lang)
    if pipe is None:  # the engine's choice of G2P for the language (Japanese: not misaki's)
        from kokoro_service.synthesis.languages import new_pipeline

        pipe = _PIPELINES[lang] = new_pipeline(lang, repo_id)
    return [
        (r.phonemes, tuple(_word(t) for t in r.tokens) if r.tokens else None)
        for r in pipe(text, voice=None, split_pattern=None)
        if r.phonemes
    ]


def _word(token: Any) -> WordToken:
    return WordToken(str(token.text), token.phonemes, str(token.whitespace or ""))


def _child_start(parent: int, repo_id: str, lang: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never the hub, as in the daemon
    # systemd's stop and a terminal's Ctrl-C signal the whole group: the daemon drains
    # with these processes and closes them itself, so they ignore both.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A pool's processes outlive a daemon that is killed or leaves through os._exit: the
    # queue they wait on stays open in the other processes (measured: five of them, 550 MB
    # each, idle for half an hour).  So each one leaves as soon as its parent is gone.
    threading.Thread(target=_exit_with, args=(parent,), name="parent-watch", daemon=True).start()
    try:  # kokoro narrates every call through loguru; the daemon's log says what matters
        from loguru import logger

        logger.disable("kokoro")
    except ImportError:  # pragma: no cover - kokoro depends on loguru
        pass
    # The daemon's language is built and run once here, before this process takes its
    # first job: the pool hands jobs only to processes past their initializer, so no
    # caller's segment waits for a cold pipeline, however the warm-up's jobs were spread.
    _child_g2p(repo_id, lang, "Hello.")


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_S)
    os._exit(0)


class G2PProcesses:
    """N spawned processes that each run G2P jobs one at a time."""

    def __init__(self, processes: int, repo_id: str, lang: str) -> None:
        self.processes = processes
        self.repo_id = repo_id
        self._pool = ProcessPoolExecutor(
            processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_child_start,
            initargs=(os.getpid(), repo_id, lang),
        )

    def submit(self, text: str, lang: str) -> Future[Chunks]:
        return self._pool.submit(_child_g2p, self.repo_id, lang, text)

    def warm_up(self, lang: str, timeout: float = 120.0) -> None:
        """Start every process (the pool spawns one per job while none is idle), each
        building ``lang``'s pipeline in its initializer, and fail if one cannot."""
        jobs = [self.submit("Hello.", lang) for _ in range(self.processes)]
        for job in jobs:
            job.result(timeout)

    def close(self, *, wait: bool = True) -> None:
        """Stop the processes; with ``wait``, wait for them (a job in hand takes
        milliseconds), else leave them to end on their own."""
        self._pool.shutdown(wait=wait, cancel_futures=True)
