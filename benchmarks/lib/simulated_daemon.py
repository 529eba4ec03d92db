"""``kokoro-service serve`` on a simulated device: the real daemon, a slept forward pass.

    python -m benchmarks.lib.simulated_daemon [--calibration FILE] [--tagger-blis] SERVE-ARGS...

Everything but the model's forward pass is the product's (see :mod:`.simdevice`).  The
vocoder precision is pinned to fp32: its start-up check compares real renderings, which a
simulated pass does not make.  ``--tagger-blis`` leaves spaCy's tagger on thinc's own
BLAS, the baseline of the product's NumPy BLAS (``density.py``'s ``batched-blis`` mode).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from pathlib import Path

from benchmarks.lib.harness import serve_settings
from benchmarks.lib.simdevice import DEFAULT_CALIBRATION, Calibration, SimulatedEngine
from kokoro_service.daemon import run
from kokoro_service.logs import EscapingFormatter


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--calibration", type=Path, default=DEFAULT_CALIBRATION)
    p.add_argument("--tagger-blis", action="store_true", help="spaCy's tagger on cython-blis")
    ns, serve_args = p.parse_known_args(argv)
    settings = serve_settings([*serve_args, "--precision", "fp32"])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    level = getattr(logging, settings.log_level.upper())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    calibration = Calibration.load(ns.calibration)
    logging.getLogger("benchmarks.simulated").info(
        "simulated device %s: %.1f ms + %.2f us per item-frame",
        calibration.name,
        calibration.fixed_s * 1e3,
        calibration.per_item_frame_s * 1e6,
    )
    make_engine = functools.partial(
        SimulatedEngine, calibration=calibration, tagger_blis=ns.tagger_blis
    )
    code = run(settings, make_engine=make_engine)
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)  # as ``serve`` does: worker threads may still be parked


if __name__ == "__main__":
    main()
