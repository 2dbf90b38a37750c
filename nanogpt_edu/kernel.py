"""The compiled kernel behind fast decoding on a CPU: the one-token step's products, layer norms and attention in C.

Generating a token multiplies one row (per sequence) by every weight matrix of the model, and each weight is used
for a single multiply-add, so a decode step lasts as long as reading the weights from memory takes. PyTorch's
built-in routes read them slower than the memory allows on a small CPU (``bench/matvec.py`` measures them side by
side): the BLAS matrix-vector routine hardly uses the second core, and oneDNN spends tens of microseconds on each
call before it reads anything. And around the products, each of the step's small PyTorch operations (a layer
norm, a GELU, writing a key into the cache) costs tens of microseconds: the weights streaming through the CPU's
caches have pushed out the code and data those operations need.

So the step's work is done by two short C functions, a few calls per layer: ``linear`` (one dot product per
output, the outputs shared between the cores; the layer norm before it, and GELU or the residual addition as each
output is stored) and ``attend`` (store the new key and value, attend over the cached ones). ``GPT.decode_step``
calls them through ``KernelDecodeOps`` (in ``model``), which has the same methods as its PyTorch reference
``TorchDecodeOps``. This module compiles the C once with the machine's C compiler (about a second), keeps the
library in a cache folder, and calls it through ``ctypes``.

Without a C compiler with OpenMP (common on Windows and macOS) ``load_kernel`` returns ``None`` and the model
uses PyTorch's own routes: the same tokens, the same numbers up to float rounding, somewhat slower.
``NANOGPT_EDU_KERNEL=0`` in the environment turns the kernel off.
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

# Tensors are passed as pointers to their first float, so every tensor handed over must be contiguous fp32 on
# the CPU (see can_use). Matrices are stored row by row: a weight w is (out_features, in_features), nn.Linear's
# layout, so each output is the dot product of one weight row with x and every row is read once, start to end.
C_SOURCE = r"""
#include <math.h>
#include <stdint.h>

enum { STORE, GELU, GELU_TANH, ADD };  /* what linear does with each output: see GELU_MODES in kernel.py */

static inline void put(float *out, float y, int mode)
{
    if (mode == GELU)
        y = 0.5f * y * (1.0f + erff(y * 0.70710678118654752f));
    else if (mode == GELU_TANH)  /* GPT-2's 0.5 y (1 + tanh(u)), u = sqrt(2/pi) (y + 0.044715 y^3), written as
                                    y / (1 + exp(-2u)): the same function, and expf is 4x faster than tanhf */
        y = y / (1.0f + expf(-1.5957691216057308f * (y + 0.044715f * y * y * y)));
    *out = mode == ADD ? *out + y : y;
}

/* out[b] = (x[b] - mean) / sqrt(variance + eps) * weight + bias, for x (B, C); linear calls it */
static void layer_norm(const float *x, const float *weight, const float *bias, float *out, int64_t B, int64_t C,
                       float eps)
{
    for (int64_t b = 0; b < B; b++) {
        const float *xb = x + b * C;
        float mean = 0.0f, variance = 0.0f;
        #pragma omp simd reduction(+ : mean)
        for (int64_t i = 0; i < C; i++)
            mean += xb[i];
        mean /= C;
        #pragma omp simd reduction(+ : variance)
        for (int64_t i = 0; i < C; i++)
            variance += (xb[i] - mean) * (xb[i] - mean);
        float scale = 1.0f / sqrtf(variance / C + eps);
        for (int64_t i = 0; i < C; i++)
            out[b * C + i] = (xb[i] - mean) * scale * weight[i] + (bias ? bias[i] : 0.0f);
    }
}

/* out[b][o] (=, or += for ADD) bias[o] + sum over i of x[b][i] * w[o][i], for x (B, I), w (O, I), out (B, O);
   with norm_weight, x first goes through layer_norm into normed (B, I) */
void linear(const float *w, const float *x, const float *bias, float *out, int64_t B, int64_t O, int64_t I,
            int mode, const float *norm_weight, const float *norm_bias, float eps, float *normed)
{
    if (norm_weight) {
        layer_norm(x, norm_weight, norm_bias, normed, B, I, eps);
        x = normed;
    }
    /* Each core reads four rows at once, from four places a quarter of the matrix apart: the memory delivers
       several streams far apart faster than one (GPT-2 small's products took 20-30% less time here, bench/matvec.py).
       The cores share the groups of rows, handed out in shrinking chunks ("guided") so a core that starts late
       takes fewer; a small matrix stays on one core, as starting the other costs more than it saves */
    int64_t Q = (O + 3) / 4;  /* rows r, r + Q, r + 2Q and r + 3Q go together */
    #pragma omp parallel for schedule(guided, 16) if (O * I >= 65536)
    for (int64_t r = 0; r < Q; r++) {
        const float *w0 = w + r * I;  /* where the last quarter is short, row r again: summed, never stored */
        const float *w1 = r + Q < O ? w0 + Q * I : w0;
        const float *w2 = r + 2 * Q < O ? w0 + 2 * Q * I : w0;
        const float *w3 = r + 3 * Q < O ? w0 + 3 * Q * I : w0;
        for (int64_t b = 0; b < B; b++) {
            const float *xb = x + b * I;
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
            #pragma omp simd reduction(+ : s0, s1, s2, s3)
            for (int64_t i = 0; i < I; i++) {
                s0 += w0[i] * xb[i];
                s1 += w1[i] * xb[i];
                s2 += w2[i] * xb[i];
                s3 += w3[i] * xb[i];
            }
            float sums[4] = {s0, s1, s2, s3};
            for (int64_t k = 0; k < 4 && r + k * Q < O; k++)
                put(out + b * O + r + k * Q, bias ? sums[k] + bias[r + k * Q] : sums[k], mode);
        }
    }
}

/* One new position t per sequence: qkv (B, 3 * H * D) holds its query, key and value for every head. Store the
   key and value at position t of this layer's caches k, v (B, H, capacity, D), then write to y (B, H * D) each
   head's softmax(q . k_s / sqrt(D)) weighted sum of the values v_s, s = 0 ... t */
void attend(const float *qkv, float *k, float *v, float *y, int64_t B, int64_t H, int64_t D, int64_t t,
            int64_t capacity)
{
    float scale = 1.0f / sqrtf((float)D);
    #pragma omp parallel for if (B * H * (t + 1) * D >= 65536)
    for (int64_t bh = 0; bh < B * H; bh++) {
        int64_t b = bh / H, h = bh % H;
        const float *q = qkv + b * 3 * H * D + h * D;
        float *keys = k + bh * capacity * D, *values = v + bh * capacity * D, *out = y + b * H * D + h * D;
        for (int64_t d = 0; d < D; d++) {
            keys[t * D + d] = q[H * D + d];
            values[t * D + d] = q[2 * H * D + d];
        }
        /* softmax in one pass ("online"): keep the largest score so far and rescale the running sums when it
           grows, so no buffer of t + 1 scores is needed */
        float top = -INFINITY, total = 0.0f;
        for (int64_t d = 0; d < D; d++)
            out[d] = 0.0f;
        for (int64_t s = 0; s <= t; s++) {
            float score = 0.0f;
            #pragma omp simd reduction(+ : score)
            for (int64_t d = 0; d < D; d++)
                score += q[d] * keys[s * D + d];
            score *= scale;
            if (score > top) {
                float shrink = expf(top - score);
                for (int64_t d = 0; d < D; d++)
                    out[d] *= shrink;
                total *= shrink;
                top = score;
            }
            float weight = expf(score - top);
            total += weight;
            for (int64_t d = 0; d < D; d++)
                out[d] += weight * values[s * D + d];
        }
        for (int64_t d = 0; d < D; d++)
            out[d] /= total;
    }
}
"""
# -march=native: the library is built for, and cached per, the CPU it runs on (see _cache_path)
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
# linear's `mode` for its `gelu` argument (GELU's `approximate`, as in F.gelu), and for adding into `add_to`
GELU_MODES = {None: 0, "none": 1, "tanh": 2}
ADD = 3

_kernel = None  # the loaded library, once load_kernel has succeeded
_tried = False  # load_kernel gives up for the rest of the process after one failure


def kernel_enabled() -> bool:
    """Return False when ``NANOGPT_EDU_KERNEL`` is set to ``0`` (or ``off``/``false``/``no``)."""
    return os.environ.get("NANOGPT_EDU_KERNEL", "1").strip().lower() not in ("0", "off", "false", "no")


def load_kernel(build: bool = True) -> ctypes.CDLL | None:
    """Return the compiled library, building it first if needed and ``build`` is True; else ``None``.

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
        _tried = True  # from here on, one attempt per process: this runs before every decode step
        if _failure_note(path).exists() or _compile(path) is not None:
            return None
    _tried = True
    try:
        library = ctypes.CDLL(str(path))
        linear_function, attend_function = library.linear, library.attend
    except (OSError, AttributeError):
        path.unlink(missing_ok=True)  # a damaged file from an interrupted build: rebuilt next process
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    # the C signatures: ctypes converts and checks each argument against these
    linear_function.argtypes = [pointer] * 4 + [size] * 3 + [ctypes.c_int, pointer, pointer, ctypes.c_float, pointer]
    attend_function.argtypes = [pointer] * 4 + [size] * 5
    linear_function.restype = attend_function.restype = None
    _kernel = library
    return _kernel


def build_kernel() -> str:
    """Build the kernel now and return a one-line report of what happened (``python -m nanogpt_edu.build_kernel``)."""
    if not kernel_enabled():
        return "decode kernel: turned off by NANOGPT_EDU_KERNEL"
    path = _cache_path()
    if path.exists() and load_kernel(build=False) is not None:
        return f"decode kernel: already built ({path})"
    _failure_note(path).unlink(missing_ok=True)  # asked explicitly: try again
    error = _compile(path)
    if error is not None:
        return f"decode kernel: not built ({error}); PyTorch's own operations will be used"
    return f"decode kernel: built {path}"


def can_use(*tensors: torch.Tensor | None) -> bool:
    """Return True if the kernel can read every one of ``tensors`` (None allowed): contiguous fp32 on the CPU."""
    # a plain loop, and is_cpu rather than device.type: this runs for every tensor of every decode step
    for t in tensors:
        if t is not None and not (t.dtype is torch.float32 and t.is_cpu and t.is_contiguous()):
            return False
    return True


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: str | None = None,
           add_to: torch.Tensor | None = None, norm: tuple[torch.Tensor, torch.Tensor | None, float] | None = None,
           ) -> torch.Tensor:
    """Return ``F.linear(x, weight, bias)`` for ``x`` (B, in_features), computed by the kernel (see ``can_use``).

    ``norm`` (weight, bias, eps) puts ``x`` through a layer norm first; ``gelu`` ("none" or "tanh", as F.gelu's
    ``approximate``) passes the result through GELU; ``add_to`` (B, out_features, not sharing memory with ``x``)
    gets the result added to it in place, and is returned. The sums run in another order than PyTorch's, so
    results agree with ``F.linear`` (and ``F.layer_norm``, ``F.gelu``) up to float rounding. No gradients.
    """
    B, (O, I) = x.size(0), weight.shape
    norm_weight, norm_bias, eps = norm if norm is not None else (None, None, 0.0)
    # the C code trusts these sizes: a mismatch would read or write past a tensor's end
    if (x.dim() != 2 or x.size(1) != I or (bias is not None and bias.numel() != O)
            or (add_to is not None and add_to.shape != (B, O))
            or (norm is not None and (norm_weight.numel() != I or (norm_bias is not None and norm_bias.numel() != I)))):
        raise ValueError(f"kernel.linear: x {tuple(x.shape)} and weight {tuple(weight.shape)} (with its bias, norm "
                         "or add_to) do not fit together")
    if gelu is not None and add_to is not None:
        raise ValueError("kernel.linear: gelu and add_to cannot be combined")
    out = torch.empty(B, O, dtype=torch.float32) if add_to is None else add_to
    normed = torch.empty_like(x) if norm is not None else None  # where the kernel puts the layer norm's output
    _kernel.linear(weight.data_ptr(), x.data_ptr(), _pointer(bias), out.data_ptr(), B, O, I,
                   GELU_MODES[gelu] if add_to is None else ADD, _pointer(norm_weight), _pointer(norm_bias), eps,
                   _pointer(normed))
    return out


def attend(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, position: int) -> torch.Tensor:
    """Store one new position's key and value in one layer's caches and return its attention output (B, C).

    ``qkv`` (B, 3C) is the new position's queries, keys and values (c_attn's output); ``k_cache`` and ``v_cache``
    (B, n_head, capacity, head_size) the layer's cache, whose positions before ``position`` hold the earlier
    keys and values. The same as ``model.TorchDecodeOps.attend`` (scaled dot-product attention) up to float
    rounding.
    """
    B, H, capacity, D = k_cache.shape
    if qkv.shape != (B, 3 * H * D) or v_cache.shape != k_cache.shape or not 0 <= position < capacity:
        raise ValueError(f"kernel.attend: qkv {tuple(qkv.shape)}, caches {tuple(k_cache.shape)} and "
                         f"{tuple(v_cache.shape)}, position {position} do not fit together")
    y = torch.empty(B, H * D, dtype=torch.float32)
    _kernel.attend(qkv.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), y.data_ptr(), B, H, D, position, capacity)
    return y


def _pointer(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()  # NULL for an absent bias or norm


def _cache_path() -> Path:
    # one file per (source, flags, compiler, CPU): a home folder shared by different machines gets one each,
    # so a library built for one CPU's instructions never runs on another
    identity = "\n".join([C_SOURCE, " ".join(CFLAGS), _compiler() or "", platform.machine(), _cpu_flags()])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nanogpt-edu"
    return root / f"kernel-{digest}{'.dll' if sys.platform == 'win32' else '.so'}"


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
        source, library = Path(tmp) / "kernel.c", Path(tmp) / path.name
        source.write_text(C_SOURCE)
        try:
            result = subprocess.run([compiler, *CFLAGS, str(source), "-o", str(library), "-lm"],
                                    capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"{Path(compiler).name} failed to run: {error}"
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no message"])[-1]
            return f"{Path(compiler).name} failed: {last}"
        os.replace(library, path)  # atomic: another process never sees half a library
    return None
