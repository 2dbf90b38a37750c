"""A one-row matrix product that reads the weights at memory speed: the kernel behind fast decoding on a CPU.

Generating a token multiplies one row (per sequence) by every weight matrix of the model, and each weight is used
for a single multiply-add, so a decode step lasts as long as reading the weights from memory takes. PyTorch's
built-in routes read them slower than the memory allows on a small CPU (``bench/matvec.py`` measures them side by
side): the BLAS matrix-vector routine hardly uses the second core, and oneDNN spends tens of microseconds on each
call before it reads anything. The product itself is ten lines of C: one dot product per output, the outputs
shared between the cores. This module compiles those lines once with the machine's C compiler (about a second),
keeps the library in a cache folder, and calls it through ``ctypes``.

Without a C compiler with OpenMP (common on Windows and macOS) ``load_kernel`` returns ``None`` and the model
uses PyTorch's own routes: the same numbers up to float rounding, somewhat slower. ``NANOGPT_EDU_KERNEL=0`` in
the environment turns the kernel off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

# out[b][o] = bias[o] + sum over i of x[b][i] * w[o][i], w stored (out_features, in_features) row by row: the
# layout of nn.Linear's weight. Each output is the dot product of one weight row with x, so every row is read once,
# from start to end, and the cores share the rows.
C_SOURCE = r"""
#include <stdint.h>

void matvec(const float *w, const float *x, const float *bias, float *out, int64_t B, int64_t O, int64_t I)
{
    /* small matrices stay on one core: starting the other one costs more than it saves. Rows are handed out
       in shrinking chunks ("guided") rather than in two fixed halves, so a core that starts late takes fewer */
    #pragma omp parallel for schedule(guided, 16) if (O * I >= 65536)
    for (int64_t o = 0; o < O; o++) {
        const float *row = w + o * I;
        for (int64_t b = 0; b < B; b++) {
            const float *xb = x + b * I;
            float sum = 0.0f;
            #pragma omp simd reduction(+ : sum)
            for (int64_t i = 0; i < I; i++)
                sum += row[i] * xb[i];
            out[b * O + o] = bias ? sum + bias[o] : sum;
        }
    }
}
"""
# -march=native: the library is built for, and cached per, the CPU it runs on (see _cache_path)
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]

_kernel = None  # the loaded ctypes function, once load_kernel has succeeded
_tried = False  # load_kernel gives up for the rest of the process after one failure


def kernel_enabled() -> bool:
    """Return False when ``NANOGPT_EDU_KERNEL`` is set to ``0`` (or ``off``/``false``/``no``)."""
    return os.environ.get("NANOGPT_EDU_KERNEL", "1").strip().lower() not in ("0", "off", "false", "no")


def load_kernel(build: bool = True):
    """Return the compiled ``matvec`` function, building it first if needed and ``build`` is True; else ``None``.

    ``None`` means no kernel in this process: it is turned off, there is no C compiler, or the build failed.
    A failed build is remembered in the cache folder, so later processes do not try again (``build_kernel``
    does, when asked).
    """
    global _kernel, _tried
    if _kernel is not None or _tried or not kernel_enabled():
        return _kernel
    path = _cache_path()
    if not path.exists():
        if not build:
            return None
        _tried = True  # from here on, one attempt per process: this runs before every one-row product
        if _failure_note(path).exists() or _compile(path) is not None:
            return None
    _tried = True
    try:
        function = ctypes.CDLL(str(path)).matvec
    except (OSError, AttributeError):
        path.unlink(missing_ok=True)  # a damaged file from an interrupted build: rebuilt next process
        return None
    function.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3
    function.restype = None
    _kernel = function
    return _kernel


def build_kernel() -> str:
    """Build the kernel now and return a one-line report of what happened (``python -m nanogpt_edu.build_kernel``)."""
    if not kernel_enabled():
        return "matvec kernel: turned off by NANOGPT_EDU_KERNEL"
    path = _cache_path()
    if path.exists() and load_kernel(build=False) is not None:
        return f"matvec kernel: already built ({path})"
    _failure_note(path).unlink(missing_ok=True)  # asked explicitly: try again
    error = _compile(path)
    if error is not None:
        return f"matvec kernel: not built ({error}); PyTorch's own matrix products will be used"
    return f"matvec kernel: built {path}"


def matvec(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Return ``F.linear(x, weight, bias)`` for a 2-D ``x`` with the compiled kernel (see ``can_use``).

    The sums run in another order than PyTorch's, so results agree with ``F.linear`` up to float rounding.
    """
    out = torch.empty(x.size(0), weight.size(0), dtype=x.dtype, device=x.device)
    _kernel(weight.data_ptr(), x.data_ptr(), 0 if bias is None else bias.data_ptr(), out.data_ptr(),
            x.size(0), weight.size(0), weight.size(1))
    return out


def can_use(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Return True if ``matvec`` may compute ``F.linear(x, weight, bias)``: contiguous fp32 on the CPU."""
    return (
        x.dim() == 2
        and x.is_contiguous()
        and weight.is_contiguous()
        and (bias is None or bias.is_contiguous())
        and x.device.type == weight.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
    )


def _cache_path() -> Path:
    # one file per (source, flags, compiler, CPU): a home folder shared by different machines gets one each,
    # so a library built for one CPU's instructions never runs on another
    identity = "\n".join([C_SOURCE, " ".join(CFLAGS), _compiler() or "", platform.machine(), _cpu_flags()])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nanogpt-edu"
    return root / f"matvec-{digest}{'.dll' if sys.platform == 'win32' else '.so'}"


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc"))


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _failure_note(path: Path) -> Path:
    return path.with_name(path.name + ".failed")


def _compile(path: Path) -> str | None:
    """Compile ``C_SOURCE`` into ``path``; return None on success, else a short reason (also noted beside it)."""
    error = _try_compile(path)
    if error is not None:
        try:
            _failure_note(path).write_text(error + "\n")
        except OSError:
            pass  # a folder we cannot write to: the next process tries again
    return error


def _try_compile(path: Path) -> str | None:
    compiler = _compiler()
    if compiler is None:
        return "no C compiler found (set CC to one)"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"cannot create {path.parent}: {error.strerror}"
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        source, library = Path(tmp) / "matvec.c", Path(tmp) / path.name
        source.write_text(C_SOURCE)
        try:
            result = subprocess.run([compiler, *CFLAGS, str(source), "-o", str(library)],
                                    capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"{Path(compiler).name} failed to run: {error}"
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no message"])[-1]
            return f"{Path(compiler).name} failed: {last}"
        os.replace(library, path)  # atomic: another process never sees half a library
    return None
