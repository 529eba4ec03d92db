"""Segments queued for English G2P are tagged together, and read exactly as alone."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from benchmarks.lib.simdevice import use_blis
from kokoro_service.synthesis.engine import Engine, Request
from kokoro_service.synthesis.g2p_batch import (
    MAX_WAITING_DOCS,
    BatchTagger,
    batch_tagger,
    tag_through_numpy,
    tagger_nodes,
)
from kokoro_service.synthesis.languages import new_pipeline
from kokoro_service.synthesis.models.architecture import REPO_ID
from tests.phone_corpus import PHONE_CORPUS
from tests.unit.synthesis.test_g2p_pool import hold

# Phone content with homographs, numbers and names: tags decide their readings.
TEXTS = [
    "Thanks for calling Acme Dental, this is Sarah.",
    "I can see your appointment on Tuesday at 3:30 PM with Doctor Patel.",
    "Would you like to keep that time, or should I find you a new slot?",
    "I read the record you sent, and I will record a new one.",
    "Please lead the way; the pipes are made of lead.",
    *(written for written, _ in PHONE_CORPUS),
]


@pytest.fixture(scope="module")
def english() -> object:
    return new_pipeline("a", REPO_ID)


@pytest.fixture
def tagger(english: Any) -> Iterator[BatchTagger]:
    """A fresh tagger in front of the pipeline's spaCy model, for one test."""
    raw = english.g2p.nlp
    raw = raw.nlp if isinstance(raw, BatchTagger) else raw
    english.g2p.nlp = raw
    made = batch_tagger(english)
    assert made is not None
    yield made
    english.g2p.nlp = raw


def phonemes(pipe: object, text: str) -> list[str]:
    return [r.phonemes for r in pipe(text, voice=None, split_pattern=None)]  # type: ignore[operator]


def test_texts_tagged_together_read_as_each_alone(english: Any, tagger: BatchTagger) -> None:
    english.g2p.nlp = tagger.nlp
    alone = [phonemes(english, t) for t in TEXTS]  # misaki as it comes
    english.g2p.nlp = tagger
    assert batch_tagger(english) is tagger  # installed once
    tagger.tag(TEXTS)
    assert tagger.waiting == len(TEXTS)
    together = [phonemes(english, t) for t in TEXTS]
    assert together == alone
    # Every text read the doc tagged for it in the one pass; none was tagged again.
    assert (tagger.hits, tagger.misses, tagger.waiting) == (len(TEXTS), 0, 0)
    # A text nobody tagged ahead is tagged alone, and reads the same.
    assert phonemes(english, TEXTS[0]) == alone[0]
    assert tagger.misses == 1


def test_docs_left_unread_are_bounded(english: object, tagger: BatchTagger) -> None:
    tagger.tag([f"Caller number {i} is waiting." for i in range(MAX_WAITING_DOCS + 40)])
    assert tagger.waiting == MAX_WAITING_DOCS
    # The oldest went first: the newest is still served, the oldest is tagged again.
    hits, misses = tagger.hits, tagger.misses
    phonemes(english, f"Caller number {MAX_WAITING_DOCS + 39} is waiting.")
    phonemes(english, "Caller number 0 is waiting.")
    assert (tagger.hits, tagger.misses) == (hits + 1, misses + 1)


def test_a_text_waiting_already_is_not_tagged_again(english: object, tagger: BatchTagger) -> None:
    tagger.tag(TEXTS[:3])
    tagger.tag(TEXTS[:4])  # a batch taking back the G2P thread's jobs: only one is new
    assert tagger.waiting == 4
    for text in TEXTS[:4]:
        phonemes(english, text)
    assert tagger.waiting == 0


def test_other_languages_are_left_as_they_are() -> None:
    class NoTagger:
        g2p = staticmethod(lambda text: (text, None))

    assert batch_tagger(NoTagger()) is None
    assert batch_tagger(object()) is None


def test_the_tagger_multiplies_through_numpy_and_tags_as_blis_does(english: Any) -> None:
    """English pipelines tag through NumPy's BLAS, with the tags thinc's cython-blis gives
    (the simulated daemon's ``--tagger-blis`` puts it back, for density.py's baseline)."""
    nlp = english.g2p.nlp
    nlp = nlp.nlp if isinstance(nlp, BatchTagger) else nlp
    nodes = tagger_nodes(english)
    assert nodes == [n for _, c in nlp.pipeline for n in c.model.walk()]

    def tags() -> list[list[str]]:
        alone = [[t.tag_ for t in nlp(x)] for x in TEXTS]
        together = [[t.tag_ for t in d] for d in nlp.pipe(TEXTS, batch_size=16)]
        return alone + together

    assert nodes and not any(n.ops.use_blis for n in nodes)  # new_pipeline switched them
    ours = tags()
    use_blis(english)
    try:
        assert all(n.ops.use_blis for n in nodes)
        theirs = tags()
    finally:
        assert tag_through_numpy(english)  # it finds the model behind the BatchTagger
    assert not any(n.ops.use_blis for n in nodes)
    assert ours == theirs
    assert not tag_through_numpy(SimpleNamespace(g2p=SimpleNamespace()))  # no spaCy model


def test_a_batch_takes_back_waiting_g2p_and_tags_it_in_one_pass(engine: Engine) -> None:
    """The synthesis worker takes back G2P jobs not yet started, and tags them together."""
    tagger = batch_tagger(engine.pipeline("a"))
    assert tagger is not None
    texts = TEXTS[:4]
    want = [" / ".join(c.phonemes for c in engine.phonemize(t, "a")) for t in texts]
    # Hold the G2P thread, so the jobs below are all still waiting when the batch forms.
    gate, busy = hold(engine._g2p_pool)
    try:
        waiting = [engine.phonemes_ahead(t, "a") for t in texts]
        hits = tagger.hits
        results = engine.synthesize_batch(
            [Request(t, "af_sky", "a", 1.0, f) for t, f in zip(texts, waiting, strict=True)]
        )
    finally:
        gate.set()
    busy.result(30)
    got = [r.phonemes for r in results if not isinstance(r, Exception)]
    assert got == want
    assert all(f.cancelled() for f in waiting)  # done by the batch, never by the thread
    assert tagger.hits == hits + len(texts)


def test_g2p_batch_1_tags_each_segment_alone(engine: Engine) -> None:
    """``--g2p-batch 1``: the same phonemes, each segment tagged on its own."""
    tagger = batch_tagger(engine.pipeline("a"))
    assert tagger is not None
    texts = TEXTS[4:8]
    want = [" / ".join(c.phonemes for c in engine.phonemize(t, "a")) for t in texts]
    engine.use_g2p_batch(1)
    try:
        gate, busy = hold(engine._g2p_pool)
        try:
            waiting = [engine.phonemes_ahead(t, "a") for t in texts]
            hits, misses = tagger.hits, tagger.misses
            results = engine.synthesize_batch(
                [Request(t, "af_sky", "a", 1.0, f) for t, f in zip(texts, waiting, strict=True)]
            )
        finally:
            gate.set()
        busy.result(30)
    finally:
        engine.use_g2p_batch(16)
    assert [r.phonemes for r in results if not isinstance(r, Exception)] == want
    assert (tagger.hits, tagger.misses) == (hits, misses + len(texts))
