"""sample.py's settings and a configurator that overrides them safely.

nanoGPT keeps its settings as module-level variables and runs ``exec(open('configurator.py').read())``, which in
turn ``exec``s any config file named on the command line and ``literal_eval``s each ``--key=value``. That is short,
but it runs whatever a config file contains. ``apply_overrides`` does the same job for the user without running
anything: a config file is parsed, and only ``key = literal`` lines are accepted.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import sys
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from .devices import check_seed
from .errors import NanogptEduError, shown
from .limits import MAX_CONFIG_BYTES, MAX_INT_BITS, MAX_PROMPT_BYTES, read_bounded
from .sampling import check_sampling_args

MAX_COUNT = 1_000_000  # num_samples and max_new_tokens: a million tokens is hours of generation on a CPU


class ConfigError(NanogptEduError):
    """A bad config file or ``--key=value`` argument; the message says which and why, in one line."""


def _default_dtype() -> str:
    # nanoGPT's rule: bf16 where the GPU supports it, else fp16 (on a CPU neither is used: see devices.py)
    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float16"


@dataclass
class SampleConfig:
    """The settings of sample.py, with nanoGPT's defaults except ``init_from="pocket"`` and ``device="auto"``."""

    init_from: str = "pocket"  # "pocket", "resume" (a nanoGPT out_dir), gpt2 ... gpt2-xl, or a Hugging Face folder
    out_dir: str = "out"  # where init_from="resume" finds ckpt.pt
    start: str = "\n"  # the prompt; "FILE:prompt.txt" reads it from a file
    num_samples: int = 10
    max_new_tokens: int = 500
    temperature: float = 0.8  # 1.0 = as the model predicts, < 1 sharper, > 1 flatter, 0 (or ~1e-37) = greedy
    top_k: int | None = 200  # keep only the k most likely tokens; None keeps all
    top_p: float | None = None  # keep the most likely tokens until their probability reaches top_p
    min_p: float | None = None  # keep tokens at least min_p times as likely as the most likely one
    seed: int = 1337
    device: str = "auto"  # "auto" picks cuda, then mps, then cpu; or name one: "cpu", "cuda", "cuda:1", "mps"
    dtype: str = dataclasses.field(default_factory=_default_dtype)  # "float32", "bfloat16" or "float16" (GPU only)
    compile: bool = False  # torch.compile the model (PyTorch 2.0+)
    stream: bool = False  # print tokens as they are generated
    stop_at_eot: bool = False  # end a sample when the model writes <|endoftext|>


DTYPES = ("float32", "bfloat16", "float16")


def _allowed_types(key: str) -> tuple[type, ...]:
    # "int | None" -> (int, NoneType); "float" -> (float,)
    field_type = typing.get_type_hints(SampleConfig)[key]
    if isinstance(field_type, types.UnionType) or typing.get_origin(field_type) is typing.Union:
        return typing.get_args(field_type)
    return (field_type,)


def _type_name(types_: tuple[type, ...]) -> str:
    return " or ".join("None" if t is type(None) else t.__name__ for t in types_)


def check_value(config: SampleConfig, key: str, value, where: str):
    """Return ``value`` converted to the type of field ``key`` (int is accepted for a float); raise ``ConfigError``."""
    known = [f.name for f in fields(config)]
    if key not in known:
        raise ConfigError(f"{where}: unknown setting {key!r}; valid settings: {', '.join(known)}")
    allowed = _allowed_types(key)
    if value is None and type(None) in allowed:
        return None
    if isinstance(value, bool) and bool not in allowed:
        pass  # True is an int in Python, but --top_k=True is a mistake
    elif isinstance(value, str) and str in allowed:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: bytes on the command line that are not UTF-8
            raise ConfigError(f"{where}: {key} is not valid text (it holds bytes that are not UTF-8)") from None
        return value
    elif type(value) is int and value.bit_length() > MAX_INT_BITS:  # too long even to print (or to echo)
        raise ConfigError(f"{where}: {key} is a whole number of {value.bit_length():,} bits, far too large for "
                          "any setting")
    elif type(value) in allowed:
        return value
    elif isinstance(value, int) and not isinstance(value, bool) and float in allowed:
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{where}: {key} is too large for a float, got {shown(value)}") from None
    raise ConfigError(f"{where}: {key} must be {_type_name(allowed)}, got {shown(value)} ({type(value).__name__})")


def parse_value(text: str, config: SampleConfig, key: str):
    """Return the value a command-line string stands for: a Python literal if it is one, else the string itself.

    For text settings (like ``start``) the raw string is kept unless it is a quoted string literal, so
    ``--start=42`` means the text "42".
    """
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, OverflowError):
        return text
    known = [f.name for f in fields(config)]
    if key in known and _allowed_types(key) == (str,) and not isinstance(value, str):
        return text
    return value


def read_config_file(path: str | Path) -> list[tuple[str, object, int]]:
    """Return ``(key, value, line)`` for each assignment in a config file, without running any of it.

    Only ``name = literal`` lines (and comments and docstrings) are accepted; anything else raises ``ConfigError``
    naming the file and line. The file must be a regular file of UTF-8 text of at most ``MAX_CONFIG_BYTES`` (64 KiB).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"a config file must be named by a path, got {shown(path)}")
    path = Path(path)
    source = _read_text(path, "config file", MAX_CONFIG_BYTES)
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as e:
        where = f"{path}, line {e.lineno}" if e.lineno else str(path)
        raise ConfigError(f"{where}: not valid Python syntax ({e.msg})") from None
    except (MemoryError, RecursionError, ValueError):  # nested too deeply for the parser; a NUL character
        message = "not a config file Python can parse (nested too deeply, or a NUL character)"
        raise ConfigError(f"{path}: {message}") from None
    assignments = []
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue  # a docstring or a bare string: harmless
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            what = type(node).__name__.lower()
            raise ConfigError(f"{path}, line {node.lineno}: only 'name = value' settings are allowed, found {what} "
                              f"(config files are read, never run)")
        try:
            value = ast.literal_eval(node.value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, OverflowError):
            raise ConfigError(f"{path}, line {node.lineno}: the value of {node.targets[0].id} must be a literal "
                              f"(a number, string, True/False or None), not an expression") from None
        assignments.append((node.targets[0].id, value, node.lineno))
    return assignments


def apply_overrides(config: SampleConfig, argv: list[str], log=print) -> SampleConfig:
    """Return a copy of ``config`` with the config files and ``--key=value`` arguments in ``argv`` applied in order.

    Each change is reported as nanoGPT does, ``Overriding: key = value``, through ``log``.
    """
    if not isinstance(config, SampleConfig) or isinstance(argv, str) or not all(isinstance(a, str) for a in argv):
        raise ConfigError(f"apply_overrides takes a SampleConfig and a list of strings, got {shown(argv)}")
    config = dataclasses.replace(config)
    for arg in argv:
        if not arg.startswith("--"):
            if arg.startswith("-") or "=" in arg:
                raise ConfigError(f"argument {shown(arg)}: settings are written --key=value")
            for key, value, line in read_config_file(arg):
                value = check_value(config, key, value, f"{arg}, line {line}")
                log(f"Overriding: {key} = {value}")
                setattr(config, key, value)
            continue
        key, sep, text = arg[2:].partition("=")  # partition: the value itself may contain "="
        if not sep:
            raise ConfigError(f"argument {shown(arg)}: settings are written --key=value")
        value = check_value(config, key, parse_value(text, config, key), f"argument {shown(arg)}")
        log(f"Overriding: {key} = {value}")
        setattr(config, key, value)
    validate(config)
    return config


def validate(config: SampleConfig) -> None:
    """Raise ``ConfigError`` for a setting of the wrong type or an impossible value (sizes included)."""
    for f in fields(config):  # a SampleConfig made in code has not been through check_value yet
        check_value(config, f.name, getattr(config, f.name), "SampleConfig")
    if config.num_samples < 1:
        raise ConfigError(f"num_samples must be at least 1, got {config.num_samples}")
    if config.max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {config.max_new_tokens}")
    for key in ("num_samples", "max_new_tokens"):
        if getattr(config, key) > MAX_COUNT:
            raise ConfigError(f"{key} must be at most {MAX_COUNT:,}, got {shown(getattr(config, key))}")
    try:  # the sampling settings' ranges are checked where they are used, in nanogpt_edu.sampling
        check_sampling_args(config.temperature, config.top_k, config.top_p, config.min_p)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if config.dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {shown(config.dtype)}")
    try:  # as torch.manual_seed accepts it, checked where the seed is used, in nanogpt_edu.devices
        check_seed(config.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    bad_threads = getattr(sys.modules.get("nanogpt_edu"), "BAD_OMP_NUM_THREADS", None)
    if bad_threads is not None:
        raise ConfigError(f"the environment's OMP_NUM_THREADS={shown(bad_threads)} is not a number of threads "
                          "(a whole number >= 1, or a list of them separated by commas)")
    if len(config.start.encode("utf-8")) > MAX_PROMPT_BYTES:
        raise ConfigError(f"start: the prompt has more than the limit of {MAX_PROMPT_BYTES:,} bytes")


def resolve_start(start: str) -> str:
    """Return the prompt: ``start`` itself, or the contents of the file named by ``FILE:path``.

    A prompt file must be a regular file of UTF-8 text of at most ``MAX_PROMPT_BYTES`` (1 MiB).
    """
    if not isinstance(start, str):
        raise ConfigError(f"start must be str, got {shown(start)}")
    if not start.startswith("FILE:"):
        return start
    return _read_text(Path(start[len("FILE:"):]), "start: prompt file", MAX_PROMPT_BYTES)


def _read_text(path: Path, what: str, limit: int) -> str:
    # what the user named is a file of theirs: say which, and why it cannot be read, in one line
    data = read_bounded(path, limit, what, ConfigError)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text") from None
