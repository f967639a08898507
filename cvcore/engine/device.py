"""Device and mixed-precision choices (DESIGN.md §5: cuda when present, GPU runs use AMP)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def resolve_device(spec: str = "auto") -> torch.device:
    """``"auto"`` → ``cuda`` when a GPU is visible, else ``cpu``; anything else is parsed as given.

    Raises ValueError for an unparsable name, or a CUDA device asked for on a machine without one.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {spec!r} ({exc}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} asked for, but no CUDA GPU is available here; use --device cpu")
    return device


@dataclass(frozen=True)
class Precision:
    """How the forward pass runs: ``dtype`` None means full float32 (no autocast).

    ``use_scaler`` is true only for float16, whose small range needs loss scaling; bfloat16 has
    float32's range and trains without it.
    """

    dtype: torch.dtype | None
    use_scaler: bool

    def autocast(self, device: torch.device):
        """The autocast context for ``device`` (a disabled one when dtype is None)."""
        return torch.autocast(device_type=device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)


def choose_precision(device: torch.device, *, amp: bool) -> Precision:
    """bf16 on GPUs that support it, else fp16 with a GradScaler; float32 on CPU or when amp is off.

    CPU autocast exists but is slower than float32 on most CPUs and changes results, so CPU runs
    stay in float32 (the config's ``amp`` is documented as ignored on CPU).
    """
    if not amp or device.type != "cuda":
        return Precision(dtype=None, use_scaler=False)
    if torch.cuda.is_bf16_supported():
        return Precision(dtype=torch.bfloat16, use_scaler=False)
    return Precision(dtype=torch.float16, use_scaler=True)


def make_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler:
    """A GradScaler that is a no-op unless fp16 needs it (so checkpoints always have its state)."""
    return torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu", enabled=precision.use_scaler)
