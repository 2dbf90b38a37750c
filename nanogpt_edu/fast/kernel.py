"""The compiled kernel behind fast decoding on a CPU: the one-token step's products, layer norms and attention in C.

Generating a token multiplies one row (per sequence) by every weight matrix of the model, and each weight is used
for a single multiply-add, so a decode step lasts as long as reading the weights from memory takes. PyTorch's
general-purpose routes read them more slowly than the memory allows on a small CPU, and around the products each
small PyTorch operation (a layer norm, a GELU, writing a key into the cache) pays a fixed cost that adds up over
a step's many calls. ``bench/matvec.py`` and ``bench/decode_parts.py`` measure both; the README has the numbers.

So the step's work is done by two short C functions in ``kernel.c``, a few calls per layer: ``linear`` (one dot
product per output, the outputs shared between the cores; the layer norm before it, and GELU or the residual
addition as each output is stored) and ``attend`` (store the new key and value, attend over the cached ones).
``nanogpt_edu.fast.decode`` calls them through ``KernelDecodeOps``, the twin of the pure-PyTorch
``TorchDecodeOps``. This module compiles ``kernel.c`` once with the machine's C compiler, keeps the library in a
cache folder, and calls it through ``ctypes``.

``linear`` and ``attend`` check every tensor before handing its address to C (contiguous float32 on the CPU, the
sizes that fit, no output overlapping an input) and raise ``ValueError`` otherwise. Without a C compiler with
OpenMP (common on Windows and macOS) ``load_kernel`` returns ``None`` and generation uses PyTorch's operations:
the same tokens, somewhat slower. ``NANOGPT_EDU_KERNEL=0`` in the environment turns the kernel off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

import torch

from ..errors import one_line

# -march=native: the library is built for, and cached per, the CPU it runs on (see _cache_path)
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
# linear's `mode` for its `gelu` argument (GELU's `approximate`, as in F.gelu), and for adding into `add_to`
GELU_MODES = {None: 0, "none": 1, "tanh": 2}
ADD = 3

_PLAIN = (torch.Tensor, torch.nn.Parameter)  # tensor types whose data_ptr() is where their values are
BUILD_SECONDS = 60  # the compiler's time limit: a build takes about a second; a CC that hangs must not stall us

_kernel = None  # the loaded library, once load_kernel has succeeded
_tried = False  # load_kernel gives up for the rest of the process after one failure


def kernel_enabled() -> bool:
    """Return False when ``NANOGPT_EDU_KERNEL`` is set to ``0`` (or ``off``/``false``/``no``)."""
    return os.environ.get("NANOGPT_EDU_KERNEL", "1").strip().lower() not in ("0", "off", "false", "no")


def load_kernel(build: bool = True) -> ctypes.CDLL | None:
    """Return the compiled library, building it first if needed and ``build`` is True; else ``None``.

    ``None`` means no kernel in this process: it is turned off, there is no C compiler, the build failed, or the
    cache folder is not one only this user can write (then one line on stderr says so). A library is loaded only
    from a folder and a file owned by this user and writable by no one else, and only if its bytes match the
    digest written when it was built; a file that does not is rebuilt. A failed build is remembered in the cache
    folder, so later processes do not try again (``build_kernel`` does, when asked).
    """
    global _kernel, _tried
    if _kernel is not None or _tried or not kernel_enabled():
        return _kernel
    path = _cache_path()
    problem = _untrusted_folder(path.parent)
    if problem is not None:
        _tried = True
        _note(f"decode kernel not used: {problem}; generation uses PyTorch's own operations")
        return None
    fd = _open_verified(path)
    if fd is None:
        if not build:
            return None
        _tried = True  # from here on, one attempt per process
        if _failure_note(path).exists():
            return None
        error = _compile(path)
        if error is not None:
            if "did not finish" in error:
                _note(f"decode kernel not built ({error}); generation uses PyTorch's own operations")
            return None
        fd = _open_verified(path)
        if fd is None:
            return None
    _tried = True
    try:
        # through the descriptor whose bytes were just checked, so the file cannot be swapped before it is loaded
        library = ctypes.CDLL(f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else str(path))
        linear_function, attend_function = library.linear, library.attend
    except (OSError, AttributeError):
        return None
    finally:
        os.close(fd)
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    # the C signatures: ctypes converts and checks each argument against these
    linear_function.argtypes = [pointer] * 4 + [size] * 3 + [ctypes.c_int, pointer, pointer, ctypes.c_float, pointer]
    attend_function.argtypes = [pointer] * 4 + [size] * 5
    linear_function.restype = attend_function.restype = None
    _kernel = library
    return _kernel


def build_kernel() -> str:
    """Build the kernel now and return a one-line report of what happened.

    ``python -m nanogpt_edu.fast.build_kernel`` prints it.
    """
    if not kernel_enabled():
        return "decode kernel: turned off by NANOGPT_EDU_KERNEL"
    path = _cache_path()
    problem = _untrusted_folder(path.parent)
    if problem is not None:
        return f"decode kernel: not built ({problem}); PyTorch's own operations will be used"
    fd = _open_verified(path)
    if fd is not None:
        os.close(fd)
        return f"decode kernel: already built ({path})"
    _failure_note(path).unlink(missing_ok=True)  # asked explicitly: try again
    error = _compile(path)
    if error is not None:
        return f"decode kernel: not built ({error}); PyTorch's own operations will be used"
    return f"decode kernel: built {path}"


def can_use(*tensors: torch.Tensor | None) -> bool:
    """Return True if the kernel can read every one of ``tensors`` (None allowed): plain contiguous fp32 memory on
    the CPU.

    Plain means the values are the bytes at ``data_ptr()``: a ``Tensor`` or ``Parameter`` (no subclass), strided
    and not nested, without the negation bit (a lazy view whose bytes hold the values before the sign change) and
    not a zero tensor (which has no memory at all). A float32 tensor never carries the conjugate bit. Everything
    else goes to PyTorch.
    """
    # a plain loop, is_cpu rather than device.type, the cheapest tests first: this runs for every tensor of every
    # decode step
    for t in tensors:
        if t is not None and not (type(t) in _PLAIN and t.dtype is torch.float32 and t.is_cpu
                                  and t.layout is torch.strided and not t.is_nested and t.is_contiguous()
                                  and not t.is_neg() and not t._is_zerotensor()):
            return False
    return True


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: str | None = None,
           add_to: torch.Tensor | None = None, norm: tuple[torch.Tensor, torch.Tensor | None, float] | None = None,
           ) -> torch.Tensor:
    """Return ``F.linear(x, weight, bias)`` for ``x`` (B, in_features), computed by the kernel.

    ``norm`` (weight, bias, eps) puts ``x`` through a layer norm first; ``gelu`` ("none" or "tanh", as F.gelu's
    ``approximate``) passes the result through GELU; ``add_to`` (B, out_features, sharing no memory with the
    inputs) gets the result added to it in place, and is returned. The sums run in another order than PyTorch's,
    so results agree with ``F.linear`` (and ``F.layer_norm``, ``F.gelu``) up to float rounding. No gradients.
    Raises ``ValueError`` for anything the C code cannot read safely (see ``can_use``) or sizes that do not fit.
    """
    norm_weight, norm_bias, eps = norm if norm is not None else (None, None, 0.0)
    inputs = dict(x=x, weight=weight, bias=bias, norm_weight=norm_weight, norm_bias=norm_bias)
    _check_tensors("linear", dict(inputs, add_to=add_to), dims=dict(x=2, weight=2, add_to=2),
                   optional=("bias", "norm_weight", "norm_bias", "add_to"))
    B, (O, I) = x.size(0), weight.shape
    # the C code trusts these sizes: a mismatch would read or write past a tensor's end
    if (x.size(1) != I or (bias is not None and bias.numel() != O)
            or (add_to is not None and add_to.shape != (B, O))
            or (norm is not None and (norm_weight.numel() != I or (norm_bias is not None and norm_bias.numel() != I)))):
        raise ValueError(f"kernel.linear: x {tuple(x.shape)} and weight {tuple(weight.shape)} (with its bias, norm "
                         "or add_to) do not fit together")
    if gelu not in GELU_MODES:
        raise ValueError(f"kernel.linear: gelu must be None, 'none' or 'tanh', got {gelu!r}")
    if gelu is not None and add_to is not None:
        raise ValueError("kernel.linear: gelu and add_to cannot be combined")
    if norm is not None and not (isinstance(eps, float) and eps > 0):
        raise ValueError(f"kernel.linear: the layer norm's eps must be a float > 0, got {eps!r}")
    if add_to is not None:
        _check_no_overlap("linear", "add_to", add_to, inputs)
    out = torch.empty(B, O, dtype=torch.float32) if add_to is None else add_to
    normed = torch.empty_like(x) if norm is not None else None  # where the kernel puts the layer norm's output
    _library().linear(weight.data_ptr(), x.data_ptr(), _pointer(bias), out.data_ptr(), B, O, I,
                      GELU_MODES[gelu] if add_to is None else ADD, _pointer(norm_weight), _pointer(norm_bias),
                      eps, _pointer(normed))
    return out


def attend(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, position: int) -> torch.Tensor:
    """Store one new position's key and value in one layer's caches and return its attention output (B, C).

    ``qkv`` (B, 3C) is the new position's queries, keys and values (c_attn's output); ``k_cache`` and ``v_cache``
    (B, n_head, capacity, head_size) the layer's cache, whose positions before ``position`` hold the earlier
    keys and values. The same as ``TorchDecodeOps.attend`` (scaled dot-product attention) up to float rounding.
    Raises ``ValueError`` for anything the C code cannot read or write safely.
    """
    _check_tensors("attend", dict(qkv=qkv, k_cache=k_cache, v_cache=v_cache),
                   dims=dict(qkv=2, k_cache=4, v_cache=4))
    B, H, capacity, D = k_cache.shape
    if (qkv.shape != (B, 3 * H * D) or v_cache.shape != k_cache.shape or isinstance(position, bool)
            or not isinstance(position, int) or not 0 <= position < capacity):
        raise ValueError(f"kernel.attend: qkv {tuple(qkv.shape)}, caches {tuple(k_cache.shape)} and "
                         f"{tuple(v_cache.shape)}, position {position!r} do not fit together")
    _check_no_overlap("attend", "k_cache", k_cache, dict(qkv=qkv, v_cache=v_cache))
    _check_no_overlap("attend", "v_cache", v_cache, dict(qkv=qkv))
    y = torch.empty(B, H * D, dtype=torch.float32)
    _library().attend(qkv.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), y.data_ptr(), B, H, D, position,
                      capacity)
    return y


def _check_tensors(function: str, tensors: dict, dims: dict, optional: tuple = ()) -> None:
    # every address handed to C must be a whole, contiguous block of fp32 in this process's memory
    grad = torch.is_grad_enabled()
    for name, t in tensors.items():
        if t is None:
            if name not in optional:
                raise ValueError(f"kernel.{function}: {name} is required")
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"kernel.{function}: {name} must be a tensor, got {type(t).__name__}")
        if not can_use(t) or t.dim() != dims.get(name, 1):
            layout = "contiguous" if t.is_contiguous() else "not contiguous"
            raise ValueError(f"kernel.{function}: {name} must be a plain contiguous {dims.get(name, 1)}-D float32 "
                             f"tensor on the CPU, got {tuple(t.shape)} {str(t.dtype).removeprefix('torch.')} "
                             f"{type(t).__name__} on {t.device}, {t.layout}, {layout}")
        if grad and t.requires_grad:
            raise ValueError(f"kernel.{function}: {name} requires grad, and the kernel computes no gradients; "
                             "call it under torch.no_grad()")


def _check_no_overlap(function: str, name: str, written: torch.Tensor, others: dict) -> None:
    start = written.data_ptr()
    end = start + written.numel() * 4
    for other_name, other in others.items():
        if other is not None and other.numel() and written.numel():
            other_start = other.data_ptr()
            if other_start < end and start < other_start + other.numel() * 4:
                raise ValueError(f"kernel.{function}: {name} shares memory with {other_name}; the kernel writes "
                                 f"{name} while it reads {other_name}")


def _library() -> ctypes.CDLL:
    library = _kernel if _kernel is not None else load_kernel()
    if library is None:
        raise RuntimeError("the decode kernel is not available here; `python -m nanogpt_edu.fast.build_kernel` "
                           "says why")
    return library


def _pointer(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()  # NULL for an absent bias or norm


def _source() -> str:
    return (resources.files(__package__) / "kernel.c").read_text(encoding="utf-8")


def _cache_path() -> Path:
    # one file per (source, flags, compiler, CPU): a home folder shared by different machines gets one each,
    # so a library built for one CPU's instructions never runs on another
    identity = "\n".join([_source(), " ".join(CFLAGS), _compiler() or "", platform.machine(), _cpu_flags()])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return _cache_root() / f"kernel-{digest}{'.dll' if sys.platform == 'win32' else '.so'}"


def _cache_root() -> Path:
    # XDG's rule: a relative XDG_CACHE_HOME is ignored (it would load a library from the current folder)
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "nanogpt-edu"


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


def _digest_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _note(line: str) -> None:
    # the one line that says why generation runs without the kernel (stderr may be closed)
    if sys.stderr is not None:
        try:
            print(one_line(f"note: {line}"), file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass


def _mine(info: os.stat_result) -> bool:
    # owned by this user and writable by no one else (on systems without owners, anything)
    return not hasattr(os, "getuid") or (info.st_uid == os.getuid() and not info.st_mode & 0o022)


def _untrusted_folder(folder: Path) -> str | None:
    """Return why ``folder`` (made if missing, mode 0700) could hold a library someone else wrote, or None.

    It and every folder above it must be owned by this user or root and writable by no one else, except folders
    with the sticky bit (like /tmp), where no one can rename or remove what another user made.
    """
    if not hasattr(os, "getuid"):
        return None
    try:
        _make_private(folder)
        for f in (folder, *folder.parents):
            info = os.lstat(f)
            if stat.S_ISLNK(info.st_mode):
                info = os.stat(f)  # a link to a folder: its target is what counts, and who owns the link's folder
            if info.st_uid not in (os.getuid(), 0):
                return f"{f} belongs to another user"
            if info.st_mode & 0o022 and not (info.st_mode & stat.S_ISVTX and f != folder):
                return f"{f} is writable by other users"
    except OSError as error:
        return f"cannot use {folder}: {error.strerror}"
    return None


def _make_private(folder: Path) -> None:
    # mode 0700 whatever the umask; the folders above are made the same way when missing
    if folder.is_dir():
        return
    if folder.parent != folder:
        _make_private(folder.parent)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        return
    os.chmod(folder, 0o700)


def _open_verified(path: Path) -> int | None:
    """Return a descriptor of the library at ``path`` if it is this user's, private, and matches its digest."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        expected = _read_private(_digest_file(path), 64 + 1).decode("ascii").strip()
        fd = os.open(path, flags)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and _mine(info) and info.st_size < 64 << 20:
            with open(fd, "rb", closefd=False) as f:
                if hashlib.sha256(f.read()).hexdigest() == expected:
                    return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _read_private(path: Path, limit: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with open(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not (stat.S_ISREG(info.st_mode) and _mine(info)):
            raise ValueError(f"{path} is not this user's own file")
        return f.read(limit)


def _compile(path: Path) -> str | None:
    """Compile ``kernel.c`` into ``path``; return None on success, else a short reason (also noted beside it)."""
    error = _try_compile(path)
    if error is not None:
        try:
            _write_private(_failure_note(path), (error + "\n").encode())
        except OSError:
            pass  # a folder we cannot write to: the next process tries again
    return error


def _write_private(target: Path, data: bytes, mode: int = 0o600) -> None:
    # a new file of our own (exclusive create, random name), renamed over the target: never follows a link there
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _try_compile(path: Path) -> str | None:
    compiler = _compiler()
    if compiler is None:
        return "no C compiler found (set CC to one)"
    try:
        _make_private(path.parent)
    except OSError as error:
        return f"cannot create {path.parent}: {error.strerror}"
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        source, library, log = Path(tmp) / "kernel.c", Path(tmp) / path.name, Path(tmp) / "log"
        source.write_text(_source())
        try:
            with open(log, "w") as output:
                # its own session, so that a compiler that hangs is stopped with everything it started
                process = subprocess.Popen([compiler, *CFLAGS, str(source), "-o", str(library), "-lm"],
                                           stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                                           start_new_session=True)
            try:
                returncode = process.wait(timeout=BUILD_SECONDS)
            except subprocess.TimeoutExpired:
                _stop(process)
                return f"{Path(compiler).name} did not finish in {BUILD_SECONDS} s"
        except OSError as error:
            return f"{Path(compiler).name} failed to run: {error}"
        if returncode != 0:
            last = (log.read_text(errors="replace").strip().splitlines() or ["no message"])[-1]
            return f"{Path(compiler).name} failed: {last}"
        try:
            data = library.read_bytes()
            os.chmod(library, 0o700)  # the compiler's mode follows the umask, which may be 000
            _write_private(_digest_file(path), hashlib.sha256(data).hexdigest().encode() + b"\n")
            os.replace(library, path)  # atomic: another process never sees half a library
        except OSError as error:
            return f"cannot store the library in {path.parent}: {error.strerror}"
    return None


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (OSError, AttributeError):
        process.kill()
    process.wait()
