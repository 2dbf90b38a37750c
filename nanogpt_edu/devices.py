"""Device, precision and seeding: the few lines of set-up at the top of sample.py, in one function.

On a GPU, sample.py turns on TF32 (matmuls on tensor cores with a 10-bit mantissa: much faster, precise enough
for inference) and wraps every forward pass in ``torch.autocast`` to bfloat16, keeping the weights in fp32. On a
CPU neither applies: matmuls run in fp32 and autocast is a no-op context.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

PT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DeviceError(ValueError):
    """A device that was asked for but is not available here."""


@dataclass
class TorchSetup:
    """What ``setup_torch`` decided: where to run, in which precision, and why (one line)."""

    device: str
    dtype: str  # the precision forward passes actually run in
    autocast: contextlib.AbstractContextManager
    explanation: str


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(device: str = "auto") -> tuple[str, str]:
    """Return ``(device, reason)``: ``auto`` picks cuda, then mps, then cpu; a named device must exist."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda", "a CUDA GPU is available"
        if _mps_available():
            return "mps", "no CUDA GPU, but Apple's Metal (mps) is available"
        return "cpu", "no CUDA GPU or Apple mps found"
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device={device!r} was asked for, but this torch ({torch.__version__}) sees no CUDA GPU; "
                          f"use --device=cpu or --device=auto")
    if kind == "mps" and not _mps_available():
        raise DeviceError(f"device={device!r} was asked for, but Apple's mps is not available here; use --device=cpu")
    if kind not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    return device, "as asked"


def setup_torch(seed: int = 1337, device: str = "auto", dtype: str = "bfloat16") -> TorchSetup:
    """Seed torch, choose the device, turn on TF32 on CUDA, and return the autocast context for forward passes."""
    torch.manual_seed(seed)
    device, reason = pick_device(device)
    device_type = device.split(":")[0]
    if device_type == "cuda":
        torch.cuda.manual_seed(seed)
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls may use TF32 tensor cores
        torch.backends.cudnn.allow_tf32 = True
        if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            dtype = "float16"
        ctx = torch.autocast(device_type="cuda", dtype=PT_DTYPES[dtype]) if dtype != "float32" \
            else contextlib.nullcontext()
        return TorchSetup(device, dtype, ctx, f"device cuda ({reason}): TF32 on, autocast to {dtype}")
    # On cpu and mps, sample.py uses no autocast: the model runs in float32 whatever dtype says.
    return TorchSetup(device, "float32", contextlib.nullcontext(),
                      f"device {device} ({reason}): float32, no autocast (dtype={dtype} applies to CUDA only)")
