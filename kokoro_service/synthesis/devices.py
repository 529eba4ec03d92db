"""Which device synthesis runs on, and whether it runs bf16 at speed.

torch is imported inside each function: the option parser (:mod:`kokoro_service.config`)
takes the device names from here and must not load torch to print ``--help``.
"""

from __future__ import annotations

from kokoro_service.errors import DeviceUnavailableError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")


def select_device(requested: str, *, cuda_available: bool, mps_available: bool) -> str:
    """Map ``--device`` to a torch device name; never falls back silently."""
    import torch

    req = requested.strip().lower()
    base = req.split(":", 1)[0]
    if base not in DEVICES:
        raise DeviceUnavailableError(
            f"unknown device {requested!r}; choose one of {', '.join(DEVICES)} (or cuda:N)"
        )
    if base == "auto":
        if mps_available:
            return "mps"
        return "cuda" if cuda_available else "cpu"
    if base == "cuda" and not cuda_available:
        raise DeviceUnavailableError(
            f"device {requested!r} was requested but CUDA is not available "
            f"(torch {torch.__version__}, built for CUDA: {torch.version.cuda or 'no'})"
        )
    if base == "mps" and not mps_available:
        raise DeviceUnavailableError(f"device {requested!r} was requested but MPS is not available")
    return req


def bf16_unavailable(device: str) -> str | None:
    """Why ``device`` cannot run bf16 at speed, or None when it can.

    Without bf16 instructions oneDNN emulates bf16 in fp32 and is slower than plain fp32,
    so such a CPU is refused rather than silently slowed down.
    """
    import torch

    base = device.split(":", 1)[0]
    if base == "cpu":
        cpu = torch.cpu
        native = any(
            getattr(cpu, probe, lambda: False)()
            for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        )
        return None if native else "this CPU has neither AVX512-BF16 nor AMX"
    if base == "cuda":
        return None if torch.cuda.is_bf16_supported() else "this GPU has no bf16 arithmetic"
    return f"bf16 is not offered on {base}"


def probe_devices() -> tuple[bool, bool]:
    """(cuda_available, mps_available) on this host."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available(), bool(mps is not None and mps.is_available())
