"""Device, precision and seeding: the few lines of set-up at the top of sample.py, in one function.

On a GPU, sample.py turns on TF32 (matmuls on tensor cores with a 10-bit mantissa: much faster, precise enough
for inference) and wraps every forward pass in ``torch.autocast`` to bfloat16, keeping the weights in fp32. On a
CPU neither applies: matmuls run in fp32 and autocast is a no-op context.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .errors import NanogptEduError, shown

PT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.manual_seed accepts


class DeviceError(NanogptEduError):
    """A device that is unknown or not available here, or a seed or dtype ``setup_torch`` cannot use."""


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
    if not isinstance(device, str):
        raise DeviceError(f"device must be a string such as 'auto' or 'cpu', got {shown(device)}")
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda", "a CUDA GPU is available"
        if _mps_available():
            return "mps", "no CUDA GPU, but Apple's Metal (mps) is available"
        return "cpu", "no CUDA GPU or Apple mps found"
    try:
        parsed = torch.device(device)  # torch's own reading of the string: "cpu:abc" and " cpu" are refused
    except (RuntimeError, ValueError):
        parsed = None
    kind, index = (parsed.type, parsed.index) if parsed is not None else (None, None)
    if kind not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unknown device {shown(device)}; use auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device={device!r} was asked for, but this torch ({torch.__version__}) sees no CUDA GPU; "
                          f"use --device=cpu or --device=auto")
    if kind == "cuda" and index is not None and index >= torch.cuda.device_count():
        raise DeviceError(f"device={device!r} was asked for, but this machine has {torch.cuda.device_count()} CUDA "
                          f"GPU(s), numbered from 0")
    if kind == "mps" and not _mps_available():
        raise DeviceError(f"device={device!r} was asked for, but Apple's mps is not available here; use --device=cpu")
    return device, "as asked"


def check_seed(seed: int) -> None:
    """Raise ``DeviceError`` unless ``seed`` is a whole number ``torch.manual_seed`` accepts."""
    if type(seed) is not int or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise DeviceError(f"seed must be a whole number from -2**63 to 2**64-1 (what torch.manual_seed accepts), "
                          f"got {shown(seed)}")


def setup_torch(seed: int = 1337, device: str = "auto", dtype: str = "bfloat16") -> TorchSetup:
    """Seed torch, choose the device, turn on TF32 on CUDA, and return the autocast context for forward passes."""
    check_seed(seed)
    if not isinstance(dtype, str) or dtype not in PT_DTYPES:
        raise DeviceError(f"dtype must be one of {', '.join(PT_DTYPES)}, got {shown(dtype)}")
    device, reason = pick_device(device)
    torch.manual_seed(seed)
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
