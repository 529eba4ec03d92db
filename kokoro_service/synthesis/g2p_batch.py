"""spaCy's tagging for many segments at once, when segments queue for English G2P.

misaki's English G2P tags each segment with spaCy (``tok2vec`` and ``tagger``) before its
lexicon reads it.  For a telephony segment that was 3.7 ms of the 5.7 ms its G2P took on
this project's 2-core host, mostly small matrix products whose fixed cost every call
pays.  ``nlp.pipe`` over 16 waiting segments tags them for about 1 ms each (0.5 ms
through NumPy's BLAS, below, where a lone segment takes 2.2 ms), with the same tags (the
phone corpus at batch sizes 4, 16 and 64: no tag differed; the unit test compares the
phonemes of it and five agent replies).  So when segments wait for G2P together, as in
a burst of new calls, they are tagged in one pass and misaki reads the docs made for
them; a segment tagged alone costs what it did before.

Nothing here changes what misaki does with a doc: :class:`BatchTagger` stands in for
misaki's ``nlp`` and hands it, for a text, a doc tagged ahead from that same text, or
tags the text then and there.  :func:`tag_through_numpy` has the tagger multiply through
NumPy's BLAS, which picks a fast kernel on CPUs that thinc's own BLAS does not know.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

# Docs tagged ahead and not yet read.  A segment whose job was cancelled leaves its doc
# behind; the oldest go first past this bound, so no peer can grow it.
MAX_WAITING_DOCS = 256


class BatchTagger:
    """misaki's ``nlp``, serving docs tagged ahead by :meth:`tag` in one ``nlp.pipe`` pass.

    ``key`` turns the text misaki's G2P is given into the text it tags (misaki's own
    ``preprocess``).  Each doc tagged ahead serves one call for its text; a text with
    none waiting is tagged alone, as misaki would.
    """

    def __init__(self, nlp: Any, key: Callable[[str], str]) -> None:
        self.nlp = nlp
        self._key = key
        self._lock = threading.Lock()
        self._waiting: dict[str, list[Any]] = {}
        self._count = 0
        self.hits = 0
        """Calls served a doc tagged ahead: for tests and profiles."""
        self.misses = 0
        """Calls that tagged their text alone."""

    def tag(self, texts: Sequence[str]) -> None:
        """Tag the texts misaki's G2P will be given, in one pass (needs the G2P lock).

        A text with a doc already waiting for it is not tagged again: the G2P thread and
        a batch taking back the thread's jobs may both tag the same segments.
        """
        keys: list[str] = []
        with self._lock:
            have = {k: len(v) for k, v in self._waiting.items()}
        for key in map(self._key, texts):
            if have.get(key, 0) > 0:
                have[key] -= 1
            else:
                keys.append(key)
        if not keys:
            return
        docs = list(self.nlp.pipe(keys, batch_size=len(keys)))
        with self._lock:
            for key, doc in zip(keys, docs, strict=True):
                self._waiting.setdefault(key, []).append(doc)
            self._count += len(docs)
            while self._count > MAX_WAITING_DOCS:
                oldest = next(iter(self._waiting))
                self._drop(oldest)

    def __call__(self, text: str) -> Any:
        with self._lock:
            docs = self._waiting.get(text)
            doc = docs.pop(0) if docs else None
            if docs is not None and not docs:
                del self._waiting[text]
            if doc is not None:
                self._count -= 1
                self.hits += 1
            else:
                self.misses += 1
        return doc if doc is not None else self.nlp(text)

    @property
    def waiting(self) -> int:
        """Docs tagged ahead and not yet read."""
        with self._lock:
            return self._count

    def _drop(self, key: str) -> None:
        docs = self._waiting[key]
        docs.pop(0)
        self._count -= 1
        if not docs:
            del self._waiting[key]


def tag_through_numpy(pipe: object) -> bool:
    """Have ``pipe``'s spaCy model multiply through NumPy's BLAS rather than cython-blis.

    thinc multiplies with cython-blis, which chooses its kernels by CPU model.  On this
    project's hosts (``AMD EPYC``, family 25, AVX2) it chose its ``generic`` reference
    kernels (``BLIS_ARCH_DEBUG=1``), and a tok2vec product of 10-100 tokens by 288 took
    2.4-3.8x longer there than through NumPy's OpenBLAS, which picks its kernel by the
    CPU's features.  The tags are the same: none differed over 1,400 English sentences
    (Python's docstrings and the phone corpus), alone or 16 to a pass (the unit test
    compares the phone corpus).

    NumPy's OpenBLAS is held to one thread, process-wide (nothing else in the daemon
    multiplies through it; torch has its own): the G2P thread is one of many in a busy
    daemon, and OpenBLAS's second thread spins while idle: for the same 64 calls on the
    simulated device the daemon's CPU was 6.0 s with two threads against 4.0 s on
    cython-blis, in one run, and 3.7 s with one thread against 4.4 s, in the next.

    Returns whether ``pipe`` has a spaCy model (only misaki's English G2P does).
    """
    nodes = tagger_nodes(pipe)
    if not nodes:
        return False
    from thinc.api import NumpyOps  # spaCy's own dependency: English G2P has it

    _one_blas_thread()
    ops = NumpyOps(use_blis=False)
    for node in nodes:
        node.ops = ops
    return True


def tagger_nodes(pipe: object) -> list[Any]:
    """The thinc layers of ``pipe``'s spaCy model (behind its :class:`BatchTagger`, if it
    has one), whose ``ops`` do the model's arithmetic; none for a G2P without spaCy."""
    nlp = getattr(getattr(pipe, "g2p", None), "nlp", None)
    nlp = nlp.nlp if isinstance(nlp, BatchTagger) else nlp
    return [
        node
        for _, component in getattr(nlp, "pipeline", None) or ()
        if getattr(component, "model", None) is not None
        for node in component.model.walk()
    ]


@functools.cache
def _one_blas_thread() -> None:
    from threadpoolctl import ThreadpoolController

    ThreadpoolController().limit(limits=1, user_api="blas")


def batch_tagger(pipe: object) -> BatchTagger | None:
    """Put a :class:`BatchTagger` in front of ``pipe``'s spaCy model, if its G2P has one.

    Only misaki's English G2P tags with spaCy; the other languages' G2Ps are returned
    None and phonemize as before.
    """
    g2p = getattr(pipe, "g2p", None)
    nlp = getattr(g2p, "nlp", None)
    preprocess = getattr(type(g2p), "preprocess", None)
    if isinstance(nlp, BatchTagger):
        return nlp
    if nlp is None or not callable(preprocess) or not hasattr(nlp, "pipe"):
        return None

    def key(text: str) -> str:
        return str(preprocess(text)[0])

    tagger = BatchTagger(nlp, key)
    g2p.nlp = tagger  # type: ignore[union-attr]
    return tagger
