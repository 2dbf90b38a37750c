"""How big is too big: what nanogpt_edu checks before it reads a file or allocates a model.

A file a user names may be anything: a device like ``/dev/zero`` that never ends, a pipe that never opens, a sparse
file of a gigabyte, a checkpoint whose ``model_args`` ask for a trillion parameters. So text and pickles are read
only from regular files and only up to a stated limit, and a model's shape is checked (whole numbers, positive, and
a memory estimate that fits this machine) before a single layer is built.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from .errors import NanogptEduError, shown

MAX_PROMPT_BYTES = 1 << 20  # a prompt (text or file): 1 MiB is some 250,000 tokens, far more than any context
MAX_CONFIG_BYTES = 64 << 10  # a config file or config.json is a few lines; parsing code costs ~300x its size
MAX_PICKLE_BYTES = 4 << 20  # meta.pkl, and the pickled structure of a ckpt.pt (its tensors are not counted)
MAX_LAYERS = 256  # twice the deepest GPT-style model published; each layer is a dozen Python objects to build
MODEL_DIMS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")


SYSTEM_FOLDERS = ("/proc/", "/sys/")  # the kernel's own files: they look regular, and may block or never end
MAX_INT_BITS = 14_000  # about 4,200 digits: Python will not write an int of more than 4,300 as text


def check_omp_num_threads(environ=os.environ) -> str | None:
    """Take a malformed ``OMP_NUM_THREADS`` out of ``environ`` before torch loads OpenMP; return the value, or None.

    GNU OpenMP reads it once, when torch is first imported, and prints its own two-line complaint about a value
    it cannot use (not a list of whole numbers >= 1). The package imports this before torch, so the command line
    can refuse the value in its one error line instead (``sample.run``).
    """
    value = environ.get("OMP_NUM_THREADS")
    if value is None or _valid_thread_counts(value):
        return None
    del environ["OMP_NUM_THREADS"]
    return value


def _valid_thread_counts(value: str) -> bool:
    # libgomp's rule: blank, or a comma-separated list of whole numbers from 1 to 2**64 - 1 (spaces and + allowed)
    if not value.strip():
        return True
    for item in value.split(","):
        digits = item.strip().removeprefix("+")
        if not (digits.isascii() and digits.isdigit() and 0 < int(digits) < 1 << 64):
            return False
    return True


def read_bounded(path: str | Path, limit: int, what: str, error: type[NanogptEduError]) -> bytes:
    """Return the bytes of the regular file ``path``; raise ``error`` naming ``what`` and ``path`` otherwise.

    Devices, pipes and sockets are refused without opening them (``/dev/zero`` never ends, a pipe with no writer
    never opens), and so is anything under ``/proc`` or ``/sys`` and any file of more than ``limit`` bytes. The
    file is opened without blocking and checked again once open, so it cannot be swapped for a pipe in between.
    """
    check_regular_file(path, what, error)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        with open(fd, "rb") as f:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise error(f"{what} {path} is not a regular file (devices, pipes and sockets are not read)")
            if info.st_size > limit:
                raise error(f"{what} {path} has {info.st_size:,} bytes, more than the limit of {limit:,}")
            data = f.read(limit + 1)  # a file may grow after stat, or report size 0: read no further
    except (OSError, ValueError) as e:
        raise error(f"{what} {path} cannot be read: {getattr(e, 'strerror', None) or e}") from None
    if len(data) > limit:
        raise error(f"{what} {path} has more than the limit of {limit:,} bytes")
    return data


def check_regular_file(path: str | Path, what: str, error: type[NanogptEduError]) -> os.stat_result:
    """Raise ``error`` unless ``path`` is a regular file outside ``/proc`` and ``/sys``; return its ``os.stat``.

    Files there look regular but are not: ``/proc/kmsg`` blocks until the kernel logs something, others never end
    or change as they are read. Nothing a user names for this package lives there.
    """
    try:
        info = os.stat(path)
        real = os.path.realpath(path)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL character in the path
        raise error(f"{what} {path} cannot be read: {getattr(e, 'strerror', None) or e}") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{what} {path} is a directory")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} {path} is not a regular file (devices, pipes and sockets are not read)")
    refuse_system_file(real, path, what, error)
    return info


def refuse_system_file(real: str, path: str | Path, what: str, error: type[NanogptEduError]) -> None:
    """Raise ``error`` if ``real`` (``path`` with its links resolved) is under ``/proc`` or ``/sys``."""
    if real.startswith(SYSTEM_FOLDERS):
        raise error(f"{what} {path} cannot be read: files under /proc and /sys are the kernel's, not data")


def check_model_dims(dims: Mapping, where: str, error: type[NanogptEduError]) -> None:
    """Raise ``error`` unless ``dims`` (``n_layer`` ... ``vocab_size``, optional ``bias`` and ``dropout``) are sane.

    Checked: whole numbers >= 1 (not bools, not floats), at most ``MAX_LAYERS`` layers, ``n_embd`` divisible by
    ``n_head``, ``bias`` a bool, ``dropout`` a number in [0, 1). Cheap: nothing is built.
    """
    for name in MODEL_DIMS:
        value = dims.get(name)
        if type(value) is not int or value < 1:
            raise error(f"{where}: {name} must be a whole number >= 1, got {shown(value)}")
    if dims["n_layer"] > MAX_LAYERS:
        raise error(f"{where}: n_layer={dims['n_layer']:,} is more than the limit of {MAX_LAYERS} layers")
    if dims["n_embd"] % dims["n_head"]:
        raise error(f"{where}: n_embd ({dims['n_embd']}) must be divisible by n_head ({dims['n_head']})")
    if type(dims.get("bias", True)) is not bool:
        raise error(f"{where}: bias must be True or False, got {shown(dims['bias'])}")
    dropout = dims.get("dropout", 0.0)
    if type(dropout) not in (int, float) or not 0 <= dropout < 1:
        raise error(f"{where}: dropout must be a number in [0, 1), got {shown(dropout)}")


def parameter_count(n_layer: int, n_embd: int, block_size: int, vocab_size: int, bias: bool = True) -> int:
    """Return the parameters of a GPT of this shape, the tied embedding counted once (as ``get_num_params``)."""
    C = n_embd
    # per block: c_attn 3C*C, attn c_proj C*C, c_fc 4C*C, mlp c_proj 4C*C, two layer norm gains; biases 11C
    per_layer = 12 * C * C + 2 * C + (11 * C if bias else 0)
    return n_layer * per_layer + vocab_size * C + block_size * C + C * (2 if bias else 1)


def model_memory(config, bytes_per_value: int = 4) -> int:
    """Return an estimate of the bytes a GPT of ``config``'s shape needs to generate one sequence.

    Its parameters, the key/value cache of one ``block_size``-long sequence, and the activations of a forward pass
    over that many positions (a generous 16 values per position and channel, and one row of logits).
    """
    params = parameter_count(config.n_layer, config.n_embd, config.block_size, config.vocab_size, config.bias)
    cache = 2 * config.n_layer * config.block_size * config.n_embd
    work = 16 * config.block_size * config.n_embd + config.vocab_size
    return (params + cache + work) * bytes_per_value


def available_memory() -> int | None:
    """Return how many bytes this process can still allocate, as far as the system tells, or None if unknown.

    On Linux the smallest of: ``MemAvailable`` (/proc/meminfo), a cgroup's memory limit minus its use, file cache
    not counted (containers, v1 or v2), and what ``ulimit -v``/``-d`` leave above the process's current size.
    Elsewhere the size of the physical memory (``os.sysconf``), and where even that is unknown, None: then only the
    fixed limits apply.
    """
    found = [_meminfo("/proc/meminfo", "MemAvailable")]
    found.append(_cgroup_room())
    try:
        import resource  # Unix only

        for limit, used in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
            soft = resource.getrlimit(limit)[0]
            if soft != resource.RLIM_INFINITY:
                found.append(soft - (_meminfo("/proc/self/status", used) or 0))
    except (ImportError, OSError, ValueError):
        pass
    found = [n for n in found if n is not None]
    if found:
        return max(0, min(found))
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def check_memory(config, where: str, error: type[NanogptEduError], bytes_per_value: int = 4) -> None:
    """Raise ``error`` when ``model_memory(config)`` is more than ``available_memory()``."""
    need, have = model_memory(config, bytes_per_value), available_memory()
    if have is not None and need > have:
        raise error(f"{where}: a model with n_layer={config.n_layer}, n_embd={config.n_embd}, "
                    f"block_size={config.block_size:,} and vocab_size={config.vocab_size:,} needs about "
                    f"{_size(need)} of memory, and {_size(have)} is available")


def _size(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,} bytes"


def _meminfo(path: str, key: str) -> int | None:
    # "/proc/meminfo" and "/proc/self/status" both hold lines like "MemAvailable:   24222324 kB"
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    # a container's (or systemd unit's) memory limit minus what its group uses, counting the file cache the kernel
    # can drop as free; the tightest limit on the way up the group's folders
    rooms = []
    try:
        groups = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in groups:
        _, controllers, relative = line.split(":", 2)
        if controllers == "":  # cgroup v2
            root, files = Path("/sys/fs/cgroup"), ("memory.max", "memory.current", "file")
        elif "memory" in controllers.split(","):  # cgroup v1
            root, files = Path("/sys/fs/cgroup/memory"), ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                                          "total_inactive_file")
        else:
            continue
        folder = root / relative.strip("/")
        while True:
            rooms.append(_room(folder, *files))
            if folder == root or root not in folder.parents:
                break
            folder = folder.parent
    rooms = [room for room in rooms if room is not None]
    return min(rooms) if rooms else None


def _room(folder: Path, limit_file: str, usage_file: str, cache_key: str) -> int | None:
    try:
        limit = (folder / limit_file).read_text().strip()
        if limit == "max" or int(limit) >= 1 << 60:  # no limit ("max" in v2, a huge number in v1)
            return None
        stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines())
        return int(limit) - int((folder / usage_file).read_text()) + int(stat.get(cache_key, 0))
    except (OSError, ValueError):
        return None
