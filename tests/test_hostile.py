"""Hostile input, table-driven: every bad flag, file, size, environment and direct call gets one clear line.

The promise tested here, case by case: the command line exits 2 with exactly one line on stderr, ``error: ...``
(the API raises ``NanogptEduError``, one line), there is no traceback, no code from the input runs (no canary file
appears), nothing large is allocated (each case runs under an address-space limit and its peak memory is
measured), and it ends in seconds. Every hostile file is made here, from code; sparse files stand in for huge ones.

To keep some 150 cases fast, most run in a fork server: one Python process imports nanogpt_edu once, then
forks a child per case, which sets its limits and runs ``nanogpt_edu.sample.main(argv)`` (or an API call) as the
command line would. Cases about the environment and the output streams (what the interpreter does at start-up
and exit) run as fresh ``python -m nanogpt_edu.sample`` processes.
"""

from __future__ import annotations

import http.server
import json
import os
import pickle
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from helpers import NO_NETWORK_PRELUDE
from nanogpt_edu.model import GPT, GPTConfig
from nanogpt_edu.porting import save_hf_folder

MEMORY_LIMIT = 3 << 30  # address space of each case's process (torch alone maps about 0.7 GiB)
GROWTH_LIMIT = 128 << 20  # how far a failing case's peak resident memory may grow over its run
SIZE_GROWTH_LIMIT = 64 << 20  # ... and a size case's: refused before anything large is read or allocated
TIME_LIMIT = 20  # seconds: a case that takes longer has hung
CHARS = "\n !',.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
TINY = dict(n_layer=1, n_head=2, n_embd=8, block_size=16, bias=False, vocab_size=len(CHARS), dropout=0.0)
CANARY = "CANARY"  # the file every code-running payload tries to create in its case's folder
ESC = b"\x1b[2J\x1b[H\x1b]0;title\x07"  # clear the screen, move home, set the window title
TERMINAL_CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


# ---------------------------------------------------------------------------------------------------------------
# Valid files to start from, and small writers for hostile ones


def tiny_state(args=TINY, seed=0) -> dict:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**args, gelu="exact")).state_dict()


def write_run(folder: Path, model_args=None, model=None, meta="valid", extra=None, checkpoint=None) -> Path:
    """Write a nanoGPT out_dir (ckpt.pt + meta.pkl, as train.py and prepare.py do), with any part replaced."""
    folder.mkdir(parents=True, exist_ok=True)
    args = dict(TINY) if model_args is None else model_args
    state = tiny_state() if model is None else model
    if checkpoint is None:
        checkpoint = {"model": state, "model_args": args, "iter_num": 10, "config": {"dataset": "shakespeare_char"},
                      **(extra or {})}
    torch.save(checkpoint, folder / "ckpt.pt")
    if meta == "valid":
        stoi = {c: i for i, c in enumerate(CHARS)}
        meta = {"vocab_size": len(CHARS), "stoi": stoi, "itos": {i: c for c, i in stoi.items()}}
    if meta is not None:
        (folder / "meta.pkl").write_bytes(meta if isinstance(meta, bytes) else pickle.dumps(meta))
    return folder


def write_meta(folder: Path, meta) -> Path:
    write_run(folder, meta=meta)
    return folder


def write_hf(folder: Path, vocab=64, **config_changes) -> Path:
    """Write a tiny Hugging Face GPT-2 folder; ``config_changes`` overwrite keys of its config.json afterwards."""
    torch.manual_seed(0)
    save_hf_folder(GPT(GPTConfig(block_size=16, vocab_size=vocab, n_layer=1, n_head=2, n_embd=8)), folder)
    if config_changes:
        config = json.loads((folder / "config.json").read_text())
        config.update(config_changes)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def write_hf_with_file(folder: Path, name: str, content) -> Path:
    """A tiny Hugging Face folder with ``name`` replaced by ``content`` (bytes, or a function of the path)."""
    write_hf(folder)
    path = folder / name
    path.unlink()
    content(path) if callable(content) else path.write_bytes(content)
    return folder


def sparse(path: Path, size: int) -> Path:
    """A file that claims ``size`` bytes and takes no disk space (what a huge file looks like to a reader)."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def symlink(target: str):
    return lambda path: path.symlink_to(target)


class RunsCode:
    """Unpickling this creates the canary file: what every pickle payload here tries."""

    def __init__(self, folder: Path):
        self.path = str(folder / CANARY)

    def __reduce__(self):
        return (open, (self.path, "w"))


def huge_bytes_pickle() -> bytes:
    # BINBYTES8 claiming 2**40 bytes, followed by almost nothing: a reader that allocates first asks for a TiB
    return b"\x80\x04" + b"\x8e" + (1 << 40).to_bytes(8, "little") + b"abc"


def safetensors_bytes(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data


def replace_tensor(folder: Path, key: str, tensor: torch.Tensor) -> Path:
    from safetensors.torch import load_file, save_file

    write_hf(folder)
    tensors = load_file(folder / "model.safetensors")
    tensors[key] = tensor
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def with_state(change) -> dict:
    state = tiny_state()
    change(state)
    return state


def too_big_for_float32() -> torch.Tensor:
    return torch.full((16, 8), 1e300, dtype=torch.float64)  # finite in a file of float64, infinite once converted


def nested(tensors, **layout) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():  # torch says its strided nested tensors are a prototype
        warnings.simplefilter("ignore")
        return torch.nested.nested_tensor(tensors, **layout)


def without(key: str) -> dict:
    state = tiny_state()
    del state[key]
    return state


def ckpt_weight(d: Path, key, value) -> list[str]:
    """Arguments that load a nanoGPT run whose weight ``key`` is ``value`` (a function: applied to the valid one)."""
    state = tiny_state()
    state[key] = value(state[key]) if callable(value) else value
    return resume(write_run(d, model=state))


def ckpt_args(d: Path, **changes) -> list[str]:
    return resume(write_run(d, {**TINY, **changes}))


def meta(d: Path, value) -> list[str]:
    return resume(write_meta(d, value))


def hf(d: Path, **config_changes) -> list[str]:
    return ["--init_from=" + str(write_hf(d, **config_changes))]


def hf_file(d: Path, name: str, content) -> list[str]:
    return ["--init_from=" + str(write_hf_with_file(d, name, content))]


def hf_tensor(d: Path, key: str, tensor: torch.Tensor) -> list[str]:
    return ["--init_from=" + str(replace_tensor(d, key, tensor))]


def resume(folder: Path) -> list[str]:
    return ["--init_from=resume", f"--out_dir={folder}"]


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def put(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path.parent


def empty(path: Path) -> Path:
    return put(path, b"")


def truncate(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    return put(path, data[: int(len(data) * fraction)])


def mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path.parent


def link(path: Path, target: str) -> Path:
    path.symlink_to(target)
    return path


def old_format(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": tiny_state(), "model_args": TINY}, folder / "ckpt.pt", _use_new_zipfile_serialization=False)
    return folder


# ---------------------------------------------------------------------------------------------------------------
# The table. A CLI case builds its argv from its own folder ``d`` (making the files it names there); an API case
# is code, with HERE standing for its folder. ``expect`` is a regular expression the one error line must match.


@dataclass
class Case:
    name: str
    kind: str  # "cli" or "api"
    build: object  # d -> argv (cli) or d -> code string (api)
    expect: str
    size: bool = False  # a size case: refused before anything large is read or allocated (a tighter memory limit)


def cli(name, build, expect, size=False):
    return Case(name, "cli", build, expect, size)


def api(name, code, expect, size=False, prepare=None):
    """An API case: ``code`` runs with HERE standing for its folder, after ``prepare(folder)`` made the files."""
    def build(d):
        if prepare is not None:
            prepare(d)
        return code.replace("HERE", repr(str(d)))

    return Case(name, "api", build, expect, size)


BIG = r"(more than the limit|needs about .* of memory)"
WPE = "transformer.wpe.weight"  # a weight of shape (16, 8) in the tiny models
CFG, ST = "config.json", "model.safetensors"
CONFIG_IMPORT = "from nanogpt_edu.config import apply_overrides, check_value, read_config_file, resolve_start\n"
RUN_IMPORT = "from nanogpt_edu import SampleConfig; from nanogpt_edu.sample import run\n"
LOAD_IMPORT = "from nanogpt_edu import load_model\n"
TINY_MODEL = ("import torch; from math import inf; from nanogpt_edu.model import GPT, GPTConfig\n"
              "from nanogpt_edu.sampling import *\n"
              "m = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=1, n_embd=8)).eval()\n")

CASES = [
    # --- the command line's flag values
    cli("seed beyond 64 bits", lambda d: ["--seed=18446744073709551616"], r"seed must be a whole number from -2\*\*63"),
    cli("seed below -2**63", lambda d: ["--seed=-9223372036854775809"], "seed must be a whole number"),
    cli("seed a float", lambda d: ["--seed=1.5"], "seed must be int, got 1.5"),
    cli("a 5000-digit seed", lambda d: ["--seed=" + "7" * 5000], r"seed must be int, got '7777.*\.\.\."),
    cli("device cpu:abc", lambda d: ["--device=cpu:abc"], "unknown device 'cpu:abc'"),
    cli("device with a space", lambda d: ["--device= cpu"], "unknown device ' cpu'"),
    cli("device meta", lambda d: ["--device=meta"], "unknown device 'meta'"),
    cli("device empty", lambda d: ["--device="], "unknown device ''"),
    cli("device cuda:x", lambda d: ["--device=cuda:x"], "unknown device 'cuda:x'"),
    cli("temperature a 400-digit int", lambda d: ["--temperature=1" + "0" * 400],
        "temperature is too large for a float"),
    cli("temperature infinite", lambda d: ["--temperature=1e999"], "temperature must be a finite number"),
    cli("temperature nan text", lambda d: ["--temperature=nan"], "temperature must be float, got 'nan'"),
    cli("top_p a word", lambda d: ["--top_p=half"], "top_p must be float or None"),
    cli("lone surrogate in start", lambda d: ["--start=a\udcffb"], "start is not valid text"),
    cli("lone surrogate in device", lambda d: ["--device=\udcff"], "device is not valid text"),
    cli("max_new_tokens 10**12", lambda d: ["--max_new_tokens=1000000000000"], "max_new_tokens must be at most",
        size=True),
    cli("num_samples 10**12", lambda d: ["--num_samples=1000000000000"], "num_samples must be at most", size=True),
    cli("compile an int", lambda d: ["--compile=1"], "compile must be bool, got 1"),
    cli("init_from empty", lambda d: ["--init_from="], "init_from must be a model name or a folder"),
    cli("init_from with a newline", lambda d: ["--init_from=a\nb"], r"init_from='a\\nb'"),
    cli("init_from a name too long", lambda d: ["--init_from=" + "x" * 5000],
        r"init_from='xxx.*\.\.\..*': not 'pocket'"),
    cli("out_dir a name too long", lambda d: ["--init_from=resume", "--out_dir=" + "x" * 5000], "which does not exist"),
    # --- config files
    cli("config /dev/zero", lambda d: ["/dev/zero"], "config file /dev/zero is not a regular file"),
    cli("config a FIFO", lambda d: [str(fifo(d / "c.py"))], "is not a regular file"),
    cli("config a directory", lambda d: [str(d)], "is a directory"),
    cli("config 1 GiB sparse", lambda d: [str(sparse(d / "c.py", 1 << 30))], BIG, size=True),
    cli("config 1 byte over the limit", lambda d: [str(sparse(d / "c.py", (64 << 10) + 1))], BIG, size=True),
    cli("config unary chain", lambda d: [write(d / "c.py", "seed = " + "-" * 60_000 + "1")],
        "not a config file Python can parse"),
    cli("config addition chain", lambda d: [write(d / "c.py", "seed = 1" + "+1" * 30_000)],
        "not a config file Python can parse"),
    cli("config nested brackets", lambda d: [write(d / "c.py", "seed = " + "[" * 60_000)], "not valid Python syntax"),
    cli("config NUL byte", lambda d: [write(d / "c.py", "seed = 1\0\n")],
        r"c\.py: not (valid Python syntax|a config file Python can parse)"),
    cli("config calls os.system",
        lambda d: [write(d / "c.py", f"seed = __import__('os').system('touch {d / CANARY}')")],
        "the value of seed must be a literal"),
    cli("config imports", lambda d: [write(d / "c.py", f"import os\nos.system('touch {d / CANARY}')\n")],
        "only 'name = value' settings are allowed"),
    cli("config 5000-digit literal", lambda d: [write(d / "c.py", "seed = " + "9" * 5000)],
        "not valid Python syntax|not a config file Python can parse"),
    cli("config long list value", lambda d: [write(d / "c.py", "start = [" + "1," * 30_000 + "]")],
        r"start must be str, got \[1, 1, 1, 1, \.\.\.\]"),
    # --- prompt files
    cli("prompt /dev/zero", lambda d: ["--start=FILE:/dev/zero"], "prompt file /dev/zero is not a regular file"),
    cli("prompt /dev/urandom", lambda d: ["--start=FILE:/dev/urandom"], "is not a regular file"),
    cli("prompt a FIFO", lambda d: [f"--start=FILE:{fifo(d / 'p.txt')}"], "is not a regular file"),
    cli("prompt 1 GiB sparse", lambda d: [f"--start=FILE:{sparse(d / 'p.txt', 1 << 30)}"], BIG, size=True),
    cli("prompt 1 byte over the limit", lambda d: [f"--start=FILE:{sparse(d / 'p.txt', (1 << 20) + 1)}"], BIG,
        size=True),
    cli("prompt a directory", lambda d: [f"--start=FILE:{d}"], "is a directory"),
    cli("prompt /proc/self/mem", lambda d: ["--start=FILE:/proc/self/mem"], "cannot be read"),
    cli("prompt symlink to /dev/zero", lambda d: [f"--start=FILE:{link(d / 'p.txt', '/dev/zero')}"],
        "is not a regular file"),
    cli("prompt file a name too long", lambda d: ["--start=FILE:" + "x" * 5000], "cannot be read: File name too long"),
    # --- nanoGPT checkpoints (ckpt.pt)
    cli("ckpt empty", lambda d: resume(write_run(d) and empty(d / "ckpt.pt")), "not a readable zip archive"),
    cli("ckpt random bytes", lambda d: resume(write_run(d) and put(d / "ckpt.pt", os.urandom(3000))),
        "not a readable zip archive"),
    cli("ckpt truncated", lambda d: resume(truncate(write_run(d) / "ckpt.pt", 0.5)), "ckpt.pt"),
    cli("ckpt the old format", lambda d: resume(old_format(d)), "not a readable zip archive"),
    cli("ckpt a directory", lambda d: resume(mkdir(d / "ckpt.pt")), "ckpt.pt is not a regular file"),
    cli("ckpt a FIFO", lambda d: resume(fifo(d / "ckpt.pt").parent), "ckpt.pt is not a regular file"),
    cli("ckpt -> /dev/zero", lambda d: resume(link(d / "ckpt.pt", "/dev/zero").parent), "is not a regular file"),
    cli("ckpt a list", lambda d: resume(write_run(d, checkpoint=[1, 2])), "is not a nanoGPT checkpoint"),
    cli("ckpt model a list", lambda d: resume(write_run(d, model=[1])), "is not a nanoGPT checkpoint"),
    cli("ckpt without model_args", lambda d: resume(write_run(d, checkpoint={"model": tiny_state()})),
        "is not a nanoGPT checkpoint"),
    cli("ckpt n_layer 10**6", lambda d: ckpt_args(d, n_layer=10**6), "n_layer=1,000,000 is more than the limit",
        size=True),
    cli("ckpt block_size 10**9", lambda d: ckpt_args(d, block_size=10**9), BIG, size=True),
    cli("ckpt vocab_size 10**12", lambda d: ckpt_args(d, vocab_size=10**12), BIG, size=True),
    cli("ckpt a TiB of layers", lambda d: ckpt_args(d, n_layer=64, n_embd=65536), BIG, size=True),
    cli("ckpt n_embd not divisible", lambda d: ckpt_args(d, n_head=3),
        r"n_embd \(8\) must be divisible by n_head \(3\)"),
    cli("ckpt n_head 0", lambda d: ckpt_args(d, n_head=0), "n_head must be a whole number >= 1"),
    cli("ckpt dropout 5", lambda d: ckpt_args(d, dropout=5), r"dropout must be a number in \[0, 1\)"),
    cli("ckpt n_layer a string", lambda d: ckpt_args(d, n_layer="1"), "n_layer must be a whole"),
    cli("ckpt n_layer a float", lambda d: ckpt_args(d, n_layer=1.0), "n_layer must be a whole"),
    cli("ckpt n_layer True", lambda d: ckpt_args(d, n_layer=True), "n_layer must be a whole"),
    cli("ckpt bias a string", lambda d: ckpt_args(d, bias="no"), "bias must be True or False"),
    cli("ckpt a NaN weight", lambda d: ckpt_weight(d, WPE, lambda w: w.index_fill(0, torch.tensor([3]), float("nan"))),
        r"tensor 'transformer\.wpe\.weight' holds NaN or infinite values"),
    cli("ckpt an infinite weight", lambda d: ckpt_weight(d, "transformer.wte.weight", lambda w: w.fill_(-float("inf"))),
        r"'transformer\.wte\.weight' holds NaN or infinite"),
    cli("ckpt a float64 weight too big for float32", lambda d: ckpt_weight(d, WPE, too_big_for_float32()),
        r"'transformer\.wpe\.weight' holds NaN or infinite"),
    cli("ckpt a weight that is a list", lambda d: ckpt_weight(d, WPE, [1.0]),
        r"weight 'transformer\.wpe\.weight' is a list, not a dense floating-point tensor"),
    cli("ckpt an int weight", lambda d: ckpt_weight(d, WPE, torch.zeros(16, 8, dtype=torch.long)),
        "is a torch.int64 tensor"),
    cli("ckpt a weight from the meta device", lambda d: ckpt_weight(d, WPE, torch.empty(16, 8, device="meta")),
        "is a tensor on the meta device"),
    cli("ckpt a sparse weight", lambda d: ckpt_weight(d, WPE, torch.zeros(16, 8).to_sparse()),
        "is a torch.sparse_coo tensor"),
    cli("ckpt a complex weight", lambda d: ckpt_weight(d, WPE, torch.zeros(16, 8, dtype=torch.complex64)),
        "is a torch.complex64 tensor"),
    cli("ckpt a weight of the wrong shape", lambda d: ckpt_weight(d, WPE, torch.zeros(99, 8)),
        r"has shape \(99, 8\), its model_args give \(16, 8\)"),
    cli("ckpt a missing weight", lambda d: resume(write_run(d, model=without("transformer.ln_f.weight"))),
        r"the weight 'transformer\.ln_f\.weight' is missing"),
    cli("ckpt an unexpected weight", lambda d: ckpt_weight(d, "transformer.h.7.x", torch.zeros(1)),
        r"unexpected weight 'transformer\.h\.7\.x'"),
    cli("ckpt a weight key not a string", lambda d: ckpt_weight(d, 7, torch.zeros(1)), "a key that is not a string: 7"),
    cli("ckpt runs code when unpickled", lambda d: resume(write_run(d, extra={"x": RunsCode(d)})),
        "could not be loaded as a nanoGPT checkpoint"),
    cli("ckpt pickled part over the limit", lambda d: resume(write_run(d, extra={"losses": list(range(1_500_000))})),
        "its pickled structure has .* bytes, more than the limit", size=True),
    # --- meta.pkl (a character-level run's vocabulary)
    cli("meta runs code when unpickled", lambda d: meta(d, pickle.dumps({"stoi": RunsCode(d), "itos": {}})),
        "only plain data is accepted"),
    cli("meta empty", lambda d: meta(d, b""), r"meta\.pkl is not a nanoGPT vocabulary \(EOFError"),
    cli("meta random bytes", lambda d: meta(d, bytes(range(256)) * 4), "is not a nanoGPT vocabulary"),
    cli("meta truncated", lambda d: meta(d, pickle.dumps({"stoi": {"a": 0}, "itos": {0: "a"}})[:-5]),
        "is not a nanoGPT vocabulary"),
    cli("meta a TiB of bytes claimed", lambda d: meta(d, huge_bytes_pickle()), "is not a nanoGPT vocabulary",
        size=True),
    cli("meta a list", lambda d: meta(d, [1, 2]), "it needs the dicts 'stoi' and 'itos'"),
    cli("meta stoi a list", lambda d: meta(d, {"stoi": [], "itos": {}}), "it needs the dicts"),
    cli("meta itos keys strings", lambda d: meta(d, {"stoi": {}, "itos": {str(i): c for i, c in enumerate(CHARS)}}),
        "itos must map each id from 0 to"),
    cli("meta itos too short", lambda d: meta(d, {"stoi": {}, "itos": {0: "a"}}),
        rf"vocab_size is {len(CHARS)}\), and it has 1 entries"),
    cli("meta itos values ints", lambda d: meta(d, {"stoi": {}, "itos": {i: i for i in range(len(CHARS))}}),
        r"itos\[0\] is 0, not a string"),
    cli("meta itos a lone surrogate",
        lambda d: meta(d, {"stoi": {}, "itos": dict.fromkeys(range(len(CHARS)), "\udc80")}),
        "not a string of UTF-8 text"),
    cli("meta stoi inconsistent", lambda d: meta(d, {"stoi": {"a": 5}, "itos": dict(enumerate(CHARS))}),
        r"stoi\['a'\] is 5, which does not match itos"),
    cli("meta stoi out of range", lambda d: meta(d, {"stoi": {"a": 10**30}, "itos": dict(enumerate(CHARS))}),
        "which does not match itos"),
    cli("meta nested 200k deep", lambda d: meta(d, b"\x80\x04" + b"]" * 200_000 + b"a" * 199_999 + b"."),
        "it needs the dicts 'stoi' and 'itos'"),
    cli("meta 1 GiB sparse", lambda d: resume(write_run(d, meta=None) and sparse(d / "meta.pkl", 1 << 30).parent),
        BIG, size=True),
    cli("meta a FIFO", lambda d: resume(write_run(d, meta=None) and fifo(d / "meta.pkl").parent),
        "is not a regular file"),
    cli("meta a directory", lambda d: resume(write_run(d, meta=None) and mkdir(d / "meta.pkl")), "is a directory"),
    cli("char model without meta.pkl", lambda d: resume(write_run(d, meta=None)),
        rf"the model has {len(CHARS)} tokens, fewer than GPT-2's 50257, so it needs its own vocabulary"),
    cli("prompt outside the vocabulary", lambda d: resume(write_run(d)) + ["--start=Zürich"],
        "outside this model's vocabulary: 'ü'"),
    # --- Hugging Face folders
    cli("config.json -> /dev/zero", lambda d: hf_file(d, CFG, symlink("/dev/zero")),
        "config.json is not a regular file"),
    cli("config.json not JSON", lambda d: hf_file(d, CFG, b"{nope"), "config.json is not valid JSON"),
    cli("config.json not UTF-8", lambda d: hf_file(d, CFG, b'{"n_layer": "\xff"}'), "config.json is not valid JSON"),
    cli("config.json a list", lambda d: hf_file(d, CFG, b"[1, 2]"), "config.json must hold a JSON object, not a list"),
    cli("config.json nested 60k deep", lambda d: hf_file(d, CFG, b"[" * 60_000), "config.json is not valid JSON"),
    cli("config.json a 5000-digit number", lambda d: hf_file(d, CFG, b'{"n_layer": ' + b"9" * 5000 + b"}"),
        "config.json is not valid JSON"),
    cli("config.json 1 GiB sparse", lambda d: hf_file(d, CFG, lambda p: sparse(p, 1 << 30)), BIG, size=True),
    cli("config.json n_layer 10**6", lambda d: hf(d, n_layer=10**6), "more than the limit of 256", size=True),
    cli("config.json n_positions 10**9", lambda d: hf(d, n_positions=10**9), BIG, size=True),
    cli("config.json vocab_size 10**12", lambda d: hf(d, vocab_size=10**12), BIG, size=True),
    cli("config.json n_head 3", lambda d: hf(d, n_head=3), "must be divisible by n_head"),
    cli("config.json n_head 0", lambda d: hf(d, n_head=0), "n_head must be a whole number"),
    cli("config.json n_layer a string", lambda d: hf(d, n_layer="1"), "n_layer must be a whole"),
    cli("config.json n_embd null", lambda d: hf(d, n_embd=None), "n_embd must be a whole"),
    cli("config.json activation a list", lambda d: hf(d, activation_function=[]), r"activation_function=\[\]"),
    cli("config.json model_type a dict", lambda d: hf(d, model_type={"a": 1}), "describes a {'a': 1} model"),
    cli("safetensors a TiB claimed", lambda d: hf_file(d, ST, safetensors_bytes(
        {"transformer.wte.weight": {"dtype": "F32", "shape": [1 << 38], "data_offsets": [0, 1 << 40]}})),
        "model.safetensors", size=True),
    cli("safetensors reversed offsets", lambda d: hf_file(d, ST, safetensors_bytes(
        {"transformer.wte.weight": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8)),
        "model.safetensors is not a readable safetensors file"),
    cli("safetensors a FIFO", lambda d: hf_file(d, ST, fifo), "model.safetensors is not a regular file"),
    cli("safetensors a NaN weight", lambda d: hf_tensor(d, WPE, torch.full((16, 8), float("nan"))),
        r"'transformer\.wpe\.weight' holds NaN or infinite"),
    cli("safetensors an int weight", lambda d: hf_tensor(d, WPE, torch.zeros(16, 8, dtype=torch.int32)),
        "has dtype torch.int32, not a floating-point type"),
    cli("safetensors float64 too big for float32", lambda d: hf_tensor(d, WPE, too_big_for_float32()),
        "holds NaN or infinite"),
    # --- direct calls of the public API (each must raise NanogptEduError with one line)
    api("load_model of an int", LOAD_IMPORT + "load_model(123)", "init_from must be a model name"),
    api("load_model of None", LOAD_IMPORT + "load_model(None)", "init_from must be a model name"),
    api("load_model with a NUL", LOAD_IMPORT + "load_model('a\\0b')", r"init_from='a\\x00b': not"),
    api("load_codec of a char run without meta", "from nanogpt_edu import load_codec; load_codec('resume', HERE)",
        "fewer than GPT-2's 50257", prepare=lambda d: write_run(d, meta=None)),
    api("load_nanogpt_checkpoint of None", "from nanogpt_edu.loading import load_nanogpt_checkpoint as load\n"
        "load(None)", "folder must be a path"),
    api("from_pretrained of None", "from nanogpt_edu.porting import from_pretrained; from_pretrained(None)",
        "name_or_path must be a GPT-2 size or a folder"),
    api("load_hf_folder of a list", "from nanogpt_edu.porting import load_hf_folder; load_hf_folder([])",
        "folder must be a path"),
    api("load_hf_folder with an int dtype", "import torch; from nanogpt_edu.porting import load_hf_folder\n"
        "load_hf_folder(HERE, dtype=torch.int64)", "dtype must be a floating-point torch dtype", prepare=write_hf),
    api("config_from_hf of a list", "from nanogpt_edu.porting import config_from_hf; config_from_hf([])",
        "must hold a JSON object"),
    api("config_from_hf of 10**6 layers", "from nanogpt_edu.porting import config_from_hf\n"
        "config_from_hf({'n_layer': 10**6})", "more than the limit of 256 layers"),
    api("gpt2_config of a list", "from nanogpt_edu.porting import gpt2_config; gpt2_config([])", "unknown GPT-2 size"),
    api("setup_torch seed 2**64", "from nanogpt_edu.devices import setup_torch; setup_torch(seed=2**64)",
        "seed must be a whole number"),
    api("setup_torch dtype bad", "from nanogpt_edu.devices import setup_torch; setup_torch(dtype='float8')",
        "dtype must be one of"),
    api("pick_device of an int", "from nanogpt_edu.devices import pick_device; pick_device(5)",
        "device must be a string"),
    api("resolve_start with a NUL", CONFIG_IMPORT + "resolve_start('FILE:a\\0b')", "cannot be read"),
    api("resolve_start of an int", CONFIG_IMPORT + "resolve_start(5)", "start must be str"),
    api("read_config_file of /dev/zero", CONFIG_IMPORT + "read_config_file('/dev/zero')", "is not a regular file"),
    api("read_config_file of None", CONFIG_IMPORT + "read_config_file(None)", "a config file must be named by a path"),
    api("apply_overrides of a string", CONFIG_IMPORT + RUN_IMPORT + "apply_overrides(SampleConfig(), '--seed=1')",
        "takes a SampleConfig and a list of strings"),
    api("apply_overrides of None items", CONFIG_IMPORT + RUN_IMPORT + "apply_overrides(SampleConfig(), [None])",
        "takes a SampleConfig and a list of strings"),
    api("check_value of a huge int temperature", CONFIG_IMPORT + RUN_IMPORT +
        "check_value(SampleConfig(), 'temperature', 10**400, 'here')", "too large for a float"),
    api("run with a 2**70 seed", RUN_IMPORT + "run(SampleConfig(seed=2**70))", "seed must be a whole number"),
    api("run with num_samples a string", RUN_IMPORT + "run(SampleConfig(num_samples='3'))", "num_samples must be int"),
    api("run with a 2 MiB prompt", RUN_IMPORT + "run(SampleConfig(start='x' * (2 << 20)))",
        "the prompt has more than the limit", size=True),
    api("decode of an id past the vocabulary", "from nanogpt_edu.tokenizer import decode; decode([50300])",
        r"token id 50300 is not in the vocabulary \(0 to 50256\)"),
    api("decode of a huge id", "from nanogpt_edu.tokenizer import decode; decode([2**70])", "is not in the vocabulary"),
    api("encode of bytes", "from nanogpt_edu.tokenizer import encode; encode(b'hi')", "encode takes text"),
    # --- silent wrong results, refused instead
    cli("safetensors an lm_head of its own", lambda d: hf_tensor(d, "lm_head.weight", torch.ones(64, 8)),
        r"model\.safetensors: 'lm_head\.weight' differs from 'transformer\.wte\.weight'; this GPT ties"),
    cli("ckpt an lm_head of its own", lambda d: ckpt_weight(d, "lm_head.weight", lambda w: w.clone() + 1),
        r"ckpt\.pt: 'lm_head\.weight' differs from 'transformer\.wte\.weight'"),
    api("explorer temperature 0", "from nanogpt_edu.explorer import sampling_explorer\n"
        "sampling_explorer(None, temperature=0)", r"temperature must be from 0\.05 to 2\.0"),
    api("explorer temperature -1", "from nanogpt_edu.explorer import sampling_explorer\n"
        "sampling_explorer(None, temperature=-1.0)", "temperature must be a finite number >= 0"),
    api("explorer_document temperature nan", "from nanogpt_edu.explorer import explorer_document\n"
        "explorer_document([], temperature=float('nan'))", "temperature must be a finite number"),
    api("explorer top_p 0", "from nanogpt_edu.explorer import sampling_explorer\n"
        "sampling_explorer(None, top_p=0)", r"top_p must be a number in \(0, 1\]"),
    # --- one line, not a traceback or a hang
    cli("seed a 5000-digit hex number", lambda d: ["--seed=0x" + "f" * 5000], "seed is a whole number of 20,000 bits"),
    cli("top_k a negative hex number", lambda d: ["--top_k=-0x" + "9" * 5000], "top_k is a whole number of"),
    cli("config a 5000-digit hex seed", lambda d: [write(d / "c.py", "seed = 0x" + "f" * 5000)],
        r"c\.py, line 1: seed is a whole number of 20,000 bits"),
    cli("ckpt a nested-tensor weight", lambda d: ckpt_weight(d, WPE, nested([torch.zeros(16, 8)])),
        r"weight 'transformer\.wpe\.weight' is a nested tensor"),
    cli("ckpt a jagged nested-tensor weight", lambda d: ckpt_weight(
        d, WPE, nested([torch.zeros(2, 8), torch.zeros(3, 8)], layout=torch.jagged)),
        r"weight 'transformer\.wpe\.weight' is a NestedTensor"),
    cli("prompt /proc/kmsg", lambda d: ["--start=FILE:/proc/kmsg"], "cannot be read"),
    cli("prompt a link to /proc/self/status", lambda d: [f"--start=FILE:{link(d / 'p.txt', '/proc/self/status')}"],
        "files under /proc and /sys are the kernel's"),
    cli("config /proc/self/environ", lambda d: ["/proc/self/environ"], "files under /proc and /sys"),
    cli("config a /sys file", lambda d: ["/sys/kernel/mm/transparent_hugepage/enabled"], "cannot be read"),
    cli("ckpt -> /proc/kmsg", lambda d: resume(link(d / "ckpt.pt", "/proc/kmsg").parent), "ckpt.pt"),
    cli("ckpt -> /proc/self/status", lambda d: resume(link(d / "ckpt.pt", "/proc/self/status").parent),
        "files under /proc and /sys"),
    cli("config.json -> /proc/kmsg", lambda d: hf_file(d, CFG, symlink("/proc/kmsg")), "config.json"),
    cli("safetensors -> /proc/self/maps", lambda d: hf_file(d, ST, symlink("/proc/self/maps")),
        "files under /proc and /sys"),
    # --- the API's promise: the sampling steps, the explorer and the figures raise NanogptEduError too
    api("generate an id past the vocabulary", TINY_MODEL + "generate(m, torch.tensor([[99]]), 2)",
        r"token id 99 is not in the model's vocabulary \(0 to 15\)"),
    api("generate a negative id", TINY_MODEL + "generate(m, torch.tensor([[3, -1]]), 2)", "token id -1 is not in"),
    api("generate an empty batch", TINY_MODEL + "generate(m, torch.zeros(0, 3, dtype=torch.long), 2)",
        r"idx holds no sequences \(batch size 0\)"),
    api("generate an empty batch uncached", TINY_MODEL + "generate(m, torch.zeros(0, 3, dtype=torch.long), 2, "
        "use_cache=False)", "idx holds no sequences"),
    api("generate a stop token of text", TINY_MODEL + "generate(m, torch.tensor([[1]]), 2, stop_token='.')",
        "stop_token must be a token id from 0 to 15 or None, got '.'"),
    api("generate a stop token past the vocabulary", TINY_MODEL + "generate(m, torch.tensor([[1]]), 2, stop_token=16)",
        "stop_token must be a token id"),
    api("generate a generator of the wrong type", TINY_MODEL + "generate(m, torch.tensor([[1]]), 2, generator=5)",
        "generator must be a torch.Generator or None, got 5"),
    api("generate with a config of strings", TINY_MODEL + "m.config.vocab_size = '16'\n"
        "generate(m, torch.tensor([[1]]), 2)", "model must be a GPT"),
    api("generate with a list for a model", TINY_MODEL + "generate([], torch.tensor([[1]]), 2)", "model must be a GPT"),
    api("sample_next_token a row of -inf", TINY_MODEL + "sample_next_token(torch.tensor([[0.0, 1.0], [-inf, -inf]]))",
        "a row of logits is -inf everywhere"),
    api("sample_next_token -inf after top-k", TINY_MODEL + "sample_next_token(torch.full((1, 4), -inf), top_k=2)",
        "a row of logits is -inf everywhere"),
    api("sample_next_token a generator of text", TINY_MODEL + "sample_next_token(torch.zeros(1, 4), generator='g')",
        "generator must be a torch.Generator"),
    api("sample_next_token an empty batch", TINY_MODEL + "sample_next_token(torch.zeros(0, 4))", "logits must have shape"),
    api("sample_next_token of a list", TINY_MODEL + "sample_next_token([[1.0, 2.0]])", "logits must be a floating"),
    api("top_k_mask of a string", TINY_MODEL + "top_k_mask('abc', 2)", "logits must be a floating-point tensor"),
    api("apply_temperature 0", TINY_MODEL + "apply_temperature(torch.zeros(4), 0)", "temperature 0 means greedy"),
    api("top_k a 5000-digit number", TINY_MODEL + "top_k_mask(torch.zeros(4), -10**5000)",
        r"top_k must be a whole number .*got <int>"),
    api("stream_text of a string", TINY_MODEL + "list(stream_text(m, 'hi', 2))", "idx must be a 2-D integer tensor"),
    api("plot of a string", "from nanogpt_edu.plots import plot_next_token_probs; plot_next_token_probs('x')",
        r"plot_next_token_probs cannot draw this input \(AttributeError"),
    api("plot ids past the vocabulary", "import torch; from nanogpt_edu.plots import plot_next_token_probs\n"
        "plot_next_token_probs(torch.arange(60000.0))", "token id 59999 is not in the vocabulary"),
    api("plot_attention of a list", "from nanogpt_edu.plots import plot_attention; plot_attention([1], ['a'], 't')",
        "plot_attention cannot draw this input"),
    api("explorer of no model", "from nanogpt_edu.explorer import next_token_logits; next_token_logits(None, 'hi')",
        "model must be a GPT"),
    api("explorer distribution of a string", "from nanogpt_edu.explorer import filtered_distribution\n"
        "filtered_distribution('x', 1.0)", "logits must be a floating-point tensor"),
    api("explorer_document of no rows", "from nanogpt_edu.explorer import explorer_document; explorer_document([])",
        "explorer_document takes a list of NextTokenLogits"),
    # --- terminal escapes in what a crafted file or flag names: shown escaped (every case is checked for them)
    cli("meta a class name that clears the screen", lambda d: meta(d, b"\x80\x02c" + ESC + b"\nx" + ESC + b"\n)R."),
        r"\\x1b\[2J"),
    cli("ckpt a weight named with escapes", lambda d: ckpt_weight(d, "h.\x1b[1A\x1b[2K\r\x9b1A\u202e", torch.zeros(1)),
        r"\\x1b\[1A\\x1b\[2K\\r\\x9b1A\\u202e"),
    cli("prompt file named with escapes", lambda d: ["--start=FILE:" + str(d / "\x1b]0;owned\x07\x08")],
        r"\\x1b\]0;owned\\x07\\x08"),
    cli("folder named with escapes", lambda d: ["--init_from=" + str(d / "\x1b[31mred\x1b[0m") + "/"],
        r"\\x1b\[31mred"),
    cli("config.json key with escapes", lambda d: hf(d, model_type="gpt2\x1b[2J\x00"), r"\\x1b\[2J"),
]


# ---------------------------------------------------------------------------------------------------------------
# The fork server


DRIVER = NO_NETWORK_PRELUDE + r"""
import json, os, resource, signal, sys, time, traceback
import nanogpt_edu.sample as sample
from nanogpt_edu.errors import NanogptEduError
# the imports every case would otherwise repeat: building a model on the meta device loads torch's reference
# operations (about a second), loading a checkpoint its unpickler. No computation runs here, so no thread starts
# that a fork could break.
import torch, safetensors.torch, torch._weights_only_unpickler
from nanogpt_edu.model import GPT, GPTConfig
with torch.device("meta"):
    GPT(GPTConfig(block_size=4, vocab_size=4, n_layer=1, n_head=1, n_embd=4))

def run_case(case):
    signal.alarm(TIME_LIMIT)  # a case that hangs is killed, and its status says so
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    os.chdir(case["dir"])
    for fd, name in ((1, "out"), (2, "err")):
        os.dup2(os.open(case[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    if "argv" in case:
        return sample.main(case["argv"])
    try:
        exec(case["code"], {"__name__": "case"})
    except NanogptEduError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0

def resident():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

for line in sys.stdin:
    case = json.loads(line)
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            with open(case["rss"], "w") as f:  # the child's own size at the start: its peak is measured from here
                f.write(str(resident()))
            code = run_case(case)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    _, status, usage = os.wait4(pid, 0)
    with open(case["rss"]) as f:
        growth = usage.ru_maxrss * 1024 - int(f.read())
    print(json.dumps({"status": os.waitstatus_to_exitcode(status), "growth": growth,
                      "seconds": time.monotonic() - start}), flush=True)
""".replace("MEMORY_LIMIT", str(MEMORY_LIMIT)).replace("TIME_LIMIT", str(TIME_LIMIT))


@dataclass
class Outcome:
    status: int
    stderr: str
    stdout: str
    seconds: float
    growth: int  # how many bytes the case's peak resident memory grew over its run
    canary: bool


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    """Run every case of the table in the fork server; return what each did."""
    root = tmp_path_factory.mktemp("hostile")
    specs = []
    for i, case in enumerate(CASES):
        d = root / f"case{i}"
        d.mkdir()
        built = case.build(d)
        spec = {"dir": str(d), "out": str(root / f"{i}.out"), "err": str(root / f"{i}.err"),
                "rss": str(root / f"{i}.rss")}
        if case.kind == "cli":
            spec["argv"] = ["--max_new_tokens=2", "--num_samples=1", "--device=cpu", *built]
        else:
            spec["code"] = built
        specs.append(spec)
    server = subprocess.run([sys.executable, "-c", DRIVER], input="".join(json.dumps(s) + "\n" for s in specs),
                            capture_output=True, text=True, timeout=TIME_LIMIT * len(specs))
    assert server.returncode == 0, server.stderr
    results = [json.loads(line) for line in server.stdout.splitlines()]
    assert len(results) == len(CASES), server.stderr
    found = {}
    for case, spec, result in zip(CASES, specs, results):
        found[case.name] = Outcome(
            status=result["status"], stderr=Path(spec["err"]).read_text(errors="replace"),
            stdout=Path(spec["out"]).read_text(errors="replace"), seconds=result["seconds"],
            growth=result["growth"], canary=any(Path(spec["dir"]).rglob(CANARY)))
    return found


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_gets_one_line(case, outcomes):
    outcome = outcomes[case.name]
    lines = outcome.stderr.splitlines()
    assert "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    assert outcome.status == 2, (outcome.status, outcome.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), outcome.stderr[-3000:]
    assert re.search(case.expect, lines[0]), lines[0]
    assert not TERMINAL_CONTROLS.search(outcome.stderr), outcome.stderr  # only the final newline
    assert not outcome.canary, "code from the input ran"
    assert outcome.seconds < TIME_LIMIT
    limit = SIZE_GROWTH_LIMIT if case.size else GROWTH_LIMIT
    assert outcome.growth < limit, f"peak resident memory grew by {outcome.growth >> 20} MiB"


def test_enough_distinct_hostile_cases():
    assert len(CASES) >= 60 and len({c.name for c in CASES}) == len(CASES)
    assert sum(c.size for c in CASES) >= 15


# ---------------------------------------------------------------------------------------------------------------
# Cases that need a fresh process: the environment is read at start-up, and the output streams at exit. They run
# three at a time (much of their time is waiting for a silent server) and are checked one by one.


CLI = NO_NETWORK_PRELUDE + "import runpy; runpy.run_module('nanogpt_edu.sample', run_name='__main__')"
SHORT = ["--max_new_tokens=3", "--num_samples=1", "--device=cpu", "--start=Hi"]


def start_cli(args, env=None, stdout=subprocess.PIPE, close_stdout=False) -> subprocess.Popen:
    """Start ``python -m nanogpt_edu.sample`` without network, under the memory limit."""
    def limit():
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
        if close_stdout:
            os.close(1)

    # one OpenMP thread: processes running side by side on a small machine do not spin against each other
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-c", CLI, *args], env=env, stdout=stdout, stderr=subprocess.PIPE,
                            preexec_fn=limit)


@dataclass
class Finished:
    returncode: int
    stdout: bytes
    stderr: bytes
    seconds: float


class _NotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_error(404)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> dict[str, Finished]:
    """Run every fresh-process case, a few at a time; return how each ended."""
    blocker = tmp_path_factory.mktemp("fresh") / "a-file"
    blocker.write_text("not a folder")  # a cache under a regular file: nobody, not even root, can write there
    full = open("/dev/full", "w")
    runs = {
        "hub timeout setting not a number": (["--init_from=gpt2", *SHORT], {"HF_HUB_ETAG_TIMEOUT": "soon"}),
        "tiktoken cache unwritable": (SHORT, {"TIKTOKEN_CACHE_DIR": str(blocker / "cache")}),
        "full disk": (SHORT, {}, {"stdout": full}),
        "stdout closed": (SHORT, {}, {"close_stdout": True}),
        "OMP_NUM_THREADS a word": (SHORT, {"OMP_NUM_THREADS": "many"}),
        "compile without a C++ compiler": (["--compile=True", *SHORT], {"CXX": "/nonexistent/g++"}),
    }

    def finish(run) -> Finished:
        start = time.monotonic()
        process = start_cli(run[0], run[1], **(run[2] if len(run) > 2 else {}))
        stdout, stderr = process.communicate(timeout=120)
        return Finished(process.returncode, stdout or b"", stderr, time.monotonic() - start)

    with ThreadPoolExecutor(max_workers=2) as pool:
        finished = dict(zip(runs, pool.map(finish, runs.values())))
    full.close()
    return finished


def assert_one_error_line(result: Finished, pattern: str) -> None:
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("error: ") and re.search(pattern, stderr), stderr
    assert result.seconds < TIME_LIMIT


@pytest.fixture(scope="module")
def hub_answering_404():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def hub_never_answering():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # connections are accepted by the kernel, and nothing is ever sent back
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


@pytest.mark.parametrize("endpoint, pattern", [
    ("hub_answering_404", r"downloading it from http://127\.0\.0\.1:\d+ failed \(\w+: .*404 Not Found"),
    # huggingface_hub's first request in a process (its agent-harness registry) waits up to 3 s, then ours up to
    # HUB_TIMEOUT (5 s)
    ("hub_never_answering", r"downloading it from http://127\.0\.0\.1:\d+ failed \(\w*Timeout"),
    ("http://127.0.0.1:99999", r"HF_ENDPOINT='http://127\.0\.0\.1:99999' is not a URL .*Port out of range"),
    ("not a url at all", "HF_ENDPOINT='not a url at all' is not a URL the Hub can be reached at"),
    # notebook 05 stores this message: a machine with no network must still see exactly it
    ("http://127.0.0.1:9", r"gpt2 is not in the Hugging Face cache \(.*\) and the Hub cannot be reached; on a "
                           r"machine with network run `hf download openai-community/gpt2 config\.json "
                           r"model\.safetensors`"),
])
def test_a_hub_that_fails_is_one_line_within_seconds(endpoint, pattern, request, monkeypatch, capsys):
    from huggingface_hub import constants

    from nanogpt_edu.sample import main

    if endpoint.startswith("hub_"):
        endpoint = request.getfixturevalue(endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)  # what HF_ENDPOINT sets when huggingface_hub starts
    started = time.monotonic()
    assert main(["--init_from=gpt2", *SHORT]) == 2
    assert time.monotonic() - started < 15
    stderr = capsys.readouterr().err
    assert len(stderr.splitlines()) == 1 and re.search("^error: .*" + pattern, stderr), stderr
    if "downloading" in pattern:
        assert "hf download openai-community/gpt2" in stderr


def test_a_bad_hub_setting_is_one_line(fresh):
    assert_one_error_line(fresh["hub timeout setting not a number"], r"huggingface_hub cannot start \(invalid literal")


def test_an_unwritable_tiktoken_cache_changes_nothing(fresh, tmp_path, capsys):
    from nanogpt_edu.sample import main

    result = fresh["tiktoken cache unwritable"]
    assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr
    assert main(SHORT) == 0
    assert result.stdout.decode() == capsys.readouterr().out  # the same samples as with a working cache
    blocked = str(tmp_path / "a-file" / "cache")
    (tmp_path / "a-file").write_text("not a folder")
    seed_line = NO_NETWORK_PRELUDE + ("import nanogpt_edu, tiktoken\n"
                                      "print(tiktoken.get_encoding('gpt2').encode('Hello'))")
    for value in (blocked, ""):  # "" is tiktoken's way of turning its cache off
        line = subprocess.run([sys.executable, "-c", seed_line], env={**os.environ, "TIKTOKEN_CACHE_DIR": value},
                              capture_output=True, text=True, timeout=60)
        assert line.returncode == 0 and line.stdout.strip() == "[15496]", line.stderr


def test_output_to_a_full_disk_is_one_line(fresh):
    assert_one_error_line(fresh["full disk"], "^error: cannot write the samples: No space left on device$")


def test_closed_stdout_is_one_line(fresh):
    assert_one_error_line(fresh["stdout closed"], "^error: standard output is closed; nowhere to write the samples$")


def test_output_to_a_closed_pipe_ends_quietly():
    # what `python -m nanogpt_edu.sample | head -1` does: the reader leaves after its first line
    process = start_cli(["--max_new_tokens=50", "--num_samples=20", "--device=cpu"])
    process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141
    # at most the line saying which device runs: no error, no traceback, no "Exception ignored" at exit
    assert not stderr or (len(stderr.splitlines()) == 1 and stderr.startswith("device cpu")), stderr


# ---------------------------------------------------------------------------------------------------------------
# Sizes and temperatures that are not errors


def test_a_temperature_so_small_that_scores_overflow_is_greedy(capsys):
    from nanogpt_edu.sample import main

    def samples(temperature: str) -> list[str]:
        assert main([*SHORT, "--max_new_tokens=8", f"--temperature={temperature}"]) == 0
        return [line for line in capsys.readouterr().out.splitlines() if not line.startswith("Overriding")]

    greedy = samples("0")
    assert samples("1e-40") == greedy and samples("5e-324") == greedy


def test_the_size_checks_accept_real_models():
    from nanogpt_edu.limits import available_memory, model_memory, parameter_count
    from nanogpt_edu.porting import gpt2_config

    config = gpt2_config("gpt2")
    assert parameter_count(config.n_layer, config.n_embd, config.block_size, config.vocab_size) == 124_439_808
    assert 124_439_808 * 4 < model_memory(config) < 124_439_808 * 4 * 1.3  # the weights, and a little more
    assert available_memory() is None or available_memory() > 0


# ---------------------------------------------------------------------------------------------------------------
# Fuzzing: a valid meta.pkl, ckpt.pt, config.json and model.safetensors, mutated a few hundred times each (seeded).
# Every outcome must be a load that works or NanogptEduError with one line; anything else is a failure to fix.

FUZZ_ROUNDS = 300
HOSTILE_VALUES = [None, True, 0, -1, 1.5, float("nan"), float("inf"), 10**6, 10**9, 10**12, 2**63, 2**64, -(2**70),
                  "", "1", "\udc80", [], [1, 2], {}, {"a": 1}, b"\xff"]


def _bytes_mutation(data: bytes, rng, region: tuple[int, int] | None = None) -> tuple[bytes, str]:
    """Return ``data`` changed in one of several ways a damaged or crafted file is, and what was done."""
    lo, hi = region or (0, len(data))
    hi = max(hi, lo + 1)
    at = rng.randrange(lo, hi)
    kind = rng.choice(["flip", "byte", "truncate", "delete", "insert", "duplicate", "integer"])
    if kind == "flip":
        data = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(lo, hi) % max(len(data), 1)
            data[i] ^= 1 << rng.randrange(8)
        return bytes(data), f"flip bits near {at}"
    if kind == "byte":
        value = rng.choice([0x00, 0xFF, 0x7F, 0x80, 0x01, rng.randrange(256)])
        return data[:at] + bytes([value]) + data[at + 1:], f"byte {value:#x} at {at}"
    if kind == "truncate":
        return data[:at], f"truncate at {at}"
    if kind == "delete":
        n = rng.randint(1, 64)
        return data[:at] + data[at + n:], f"delete {n} at {at}"
    if kind == "insert":
        n = rng.randint(1, 64)
        return data[:at] + bytes(rng.randrange(256) for _ in range(n)) + data[at:], f"insert {n} at {at}"
    if kind == "duplicate":
        n = rng.randint(1, 256)
        return data[:at] + data[at:at + n] * rng.randint(2, 4) + data[at:], f"duplicate {n} at {at}"
    value = rng.choice([0, 1, 2**31 - 1, 2**32 - 1, 2**40, 2**63 - 1, 2**64 - 1, rng.getrandbits(64)])
    return data[:at] + value.to_bytes(8, "little") + data[at + 8:], f"integer {value} at {at}"


def _hostile(rng):
    return rng.choice(HOSTILE_VALUES)


def _fuzz_meta(folder: Path, rng, valid: bytes) -> str:
    if rng.random() < 0.5:
        data, what = _bytes_mutation(valid, rng)
    else:
        meta = pickle.loads(valid)
        target = rng.choice(["stoi", "itos", "top"])
        if target == "top":
            key = rng.choice(["stoi", "itos", "vocab_size"])
            meta[key] = _hostile(rng) if rng.random() < 0.8 else meta.pop(key, None)
            what = f"meta[{key!r}] replaced"
        else:
            table = meta[target]
            key = rng.choice(list(table))
            if rng.random() < 0.5:
                table[key] = _hostile(rng)
            else:
                new_key = _hostile(rng)
                table[new_key if new_key.__hash__ is not None else "x"] = table.pop(key)
            what = f"{target} entry {key!r} changed"
        data = pickle.dumps(meta, protocol=rng.randrange(0, pickle.HIGHEST_PROTOCOL + 1))
    (folder / "meta.pkl").write_bytes(data)
    return what


def _fuzz_checkpoint(folder: Path, rng, valid: bytes) -> str:
    import zipfile

    if rng.random() < 0.5:
        with zipfile.ZipFile(folder / "valid.pt") as archive:
            pkl = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
        the_pickle = (pkl.header_offset, pkl.header_offset + 60 + pkl.file_size)
        region = rng.choice([the_pickle, (len(valid) - 200, len(valid)), (0, len(valid))])  # or the zip directory
        data, what = _bytes_mutation(valid, rng, region)
        (folder / "ckpt.pt").write_bytes(data)
        return what
    checkpoint = torch.load(folder / "valid.pt", weights_only=True)
    if rng.random() < 0.5:
        key = rng.choice(list(checkpoint["model_args"]))
        checkpoint["model_args"][key] = _hostile(rng)
        what = f"model_args[{key!r}] = {checkpoint['model_args'][key]!r}"
    else:
        key = rng.choice(list(checkpoint["model"]))
        tensor = checkpoint["model"][key]
        choice = rng.choice(["nan", "inf", "dtype", "shape", "value", "drop", "nested", "own head"])
        if choice == "own head":  # a head of its own beside the tied embedding
            key, tensor = "lm_head.weight", checkpoint["model"]["transformer.wte.weight"]
        changed = {"nan": lambda: tensor.clone().fill_(float("nan")),
                   "nested": lambda: nested([tensor.clone()]), "own head": lambda: tensor.clone() * 2,
                   "inf": lambda: tensor.clone().fill_(-float("inf")),
                   "dtype": lambda: tensor.to(rng.choice([torch.int64, torch.bool, torch.float16, torch.float64,
                                                          torch.complex64])),
                   "shape": lambda: tensor.reshape(-1)[: max(tensor.numel() - 1, 1)],
                   "value": lambda: _hostile(rng), "drop": lambda: None}[choice]()
        if changed is None:
            del checkpoint["model"][key]
        else:
            checkpoint["model"][key] = changed
        what = f"model[{key!r}]: {choice}"
    torch.save(checkpoint, folder / "ckpt.pt")
    return what


def _fuzz_config_json(folder: Path, rng, valid: bytes) -> str:
    if rng.random() < 0.4:
        data, what = _bytes_mutation(valid, rng)
    else:
        config = json.loads(valid)
        key = rng.choice(["n_layer", "n_head", "n_embd", "n_positions", "vocab_size", "n_inner", "model_type",
                          "activation_function", "tie_word_embeddings", "add_cross_attention", "bogus"])
        value = _hostile(rng)
        config[key] = value if not isinstance(value, bytes) else value.decode("latin-1")
        what = f"config[{key!r}] = {config[key]!r}"
        data = json.dumps(config).encode()
    (folder / "config.json").write_bytes(data)
    return what


def _fuzz_safetensors(folder: Path, rng, valid: bytes) -> str:
    header_end = 8 + int.from_bytes(valid[:8], "little")
    if rng.random() < 0.5:
        region = rng.choice([(0, header_end), (header_end, len(valid)), (0, len(valid))])
        data, what = _bytes_mutation(valid, rng, region)
    else:
        header = json.loads(valid[8:header_end])
        key = rng.choice([k for k in header if k != "__metadata__"])
        if rng.random() < 0.15:  # the same bytes named once more as lm_head.weight: the tied head, or another
            key = rng.choice(["transformer.wte.weight", "transformer.wpe.weight", key])
            header["lm_head.weight"] = dict(header[key])
            key = "lm_head.weight"
        field = rng.choice(["dtype", "shape", "data_offsets"])
        entry = header[key]
        if field == "dtype":
            entry["dtype"] = rng.choice(["F64", "F16", "BF16", "I64", "U8", "BOOL", "X9", 5, None])
        elif field == "shape":
            entry["shape"] = rng.choice([[], [0], [2**40], [-1], [1, 2**62], "x", entry["shape"][::-1]])
        else:
            a, b = entry["data_offsets"]
            entry["data_offsets"] = rng.choice([[b, a], [a, b + 4], [a - 4, b], [0, 2**40], [-8, b], [a, a], "x"])
        what = f"{key}.{field} = {entry[field]!r}"
        raw = json.dumps(header).encode()
        data = len(raw).to_bytes(8, "little") + raw + valid[header_end:]
    (folder / "model.safetensors").write_bytes(data)
    return what


FUZZ = {  # what to mutate, how, and which public call must load it or refuse it
    "meta.pkl": (_fuzz_meta, "meta.pkl", lambda f: __import__("nanogpt_edu").loading.load("resume", f)),
    "ckpt.pt": (_fuzz_checkpoint, "valid.pt", lambda f: __import__("nanogpt_edu").loading.load("resume", f)),
    "config.json": (_fuzz_config_json, "config.json", lambda f: __import__("nanogpt_edu").loading.load(str(f))),
    "model.safetensors": (_fuzz_safetensors, "model.safetensors",
                          lambda f: __import__("nanogpt_edu").loading.load(str(f))),
}


def fuzz(target: str, folder: str, seed: int, rounds: int) -> dict:
    """Mutate ``target`` ``rounds`` times in ``folder`` and load it each time; return the tally and any failures."""
    import random
    import signal
    import traceback

    import nanogpt_edu.loading  # noqa: F401  (FUZZ's loaders reach it through the package)
    from nanogpt_edu.errors import NanogptEduError

    mutate, valid_name, load = FUZZ[target]
    folder = Path(folder)
    if target in ("meta.pkl", "ckpt.pt"):
        write_run(folder)
        (folder / "valid.pt").write_bytes((folder / "ckpt.pt").read_bytes())
    else:
        write_hf(folder, vocab=50257)  # GPT-2's vocabulary, so that its tokenizer fits and load() can succeed
    valid = (folder / valid_name).read_bytes()
    rng = random.Random(seed)
    tally, failures = {"loaded": 0, "refused": 0}, []
    for round_ in range(rounds):
        if target in ("meta.pkl", "ckpt.pt"):  # each round starts from the valid files
            (folder / "ckpt.pt").write_bytes((folder / "valid.pt").read_bytes())
        what = mutate(folder, rng, valid)
        signal.alarm(TIME_LIMIT)  # a round that hangs kills the process, and the test says which round
        print(f"round {round_}: {what}", file=sys.stderr, flush=True)
        try:
            load(folder)
            tally["loaded"] += 1
        except NanogptEduError as e:
            tally["refused"] += 1
            if "\n" in str(e) or TERMINAL_CONTROLS.search(str(e)):
                failures.append(f"round {round_} ({what}): a message of several lines or raw controls: {str(e)!r}")
        except BaseException as e:  # noqa: B902  (exactly what must not happen)
            failures.append(f"round {round_} ({what}): {type(e).__name__}: {e} | "
                            f"{traceback.format_exc().strip().splitlines()[-3]}")
        signal.alarm(0)
    return {"tally": tally, "failures": failures}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Fuzz every target in its own process under the memory limit, two at a time; return how each ended."""
    def run(target: str) -> subprocess.CompletedProcess:
        folder = tmp_path_factory.mktemp("fuzz")
        code = (NO_NETWORK_PRELUDE + "import json, resource, sys\n"
                f"resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))\n"
                f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                "import test_hostile\n"
                f"print(json.dumps(test_hostile.fuzz({target!r}, {str(folder)!r}, seed=17, rounds={FUZZ_ROUNDS})))\n")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(FUZZ, pool.map(run, FUZZ)))


@pytest.mark.parametrize("target", list(FUZZ))
def test_fuzzed_files_load_or_raise_the_one_error(target, fuzzed):
    result = fuzzed[target]
    assert result.returncode == 0, result.stderr[-3000:]  # a crash or a hang: the last "round" line says where
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["failures"] == [], "\n".join(report["failures"][:20])
    assert sum(report["tally"].values()) == FUZZ_ROUNDS
    assert report["tally"]["loaded"] > 0 and report["tally"]["refused"] > FUZZ_ROUNDS // 4, report["tally"]


def test_weights_that_overflow_while_generating_end_in_one_error_line(tmp_path, capsys):
    # finite weights pass the load's check, but 3e38 everywhere overflows in the first layer: the logits are NaN
    from nanogpt_edu.sample import main

    write_run(tmp_path, model=with_state(lambda state: [value.fill_(3e38) for value in state.values()]))
    assert main([*SHORT, *resume(tmp_path), "--start=to be"]) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and stderr.splitlines()[-1] == (
        "error: init_from='resume': generation stopped: the logits contain NaN or +inf: the model's forward pass "
        "went wrong (check its weights and dtype)")


@pytest.mark.parametrize("files, room", [
    ({"memory.max": "1000000", "memory.current": "700000", "memory.stat": "anon 600000\nfile 100000\n"}, 400_000),
    ({"memory.max": "max", "memory.current": "700000", "memory.stat": "file 1\n"}, None),
    ({"memory.limit_in_bytes": "9223372036854771712", "memory.usage_in_bytes": "5",
      "memory.stat": "total_inactive_file 1\n"}, None),
    ({"memory.limit_in_bytes": "2000000", "memory.usage_in_bytes": "1500000",
      "memory.stat": "total_inactive_file 500000\n"}, 1_000_000),
])
def test_a_containers_memory_limit_counts_and_its_file_cache_does_not(tmp_path, files, room):
    from nanogpt_edu.limits import _room

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    v2 = "memory.max" in files
    names = ("memory.max", "memory.current", "file") if v2 else \
        ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
    assert _room(tmp_path, *names) == room


# ---------------------------------------------------------------------------------------------------------------
# Files the package writes: only into folders the user chose, created exclusively, renamed into place


def test_tiktokens_shared_default_cache_is_never_written(tmp_path):
    # /tmp/data-gym-cache is everyone's: a link planted there by another user must not be followed, and nothing
    # of ours appears there, yet tiktoken.get_encoding("gpt2") works offline
    shared = tmp_path / "data-gym-cache"
    shared.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("mine")
    for url, _ in __import__("nanogpt_edu").tokenizer.GPT2_FILES.values():
        name = __import__("hashlib").sha1(url.encode()).hexdigest()
        (shared / name).symlink_to(victim)
        for pid in range(1, 400):  # the names a guessable temporary file would have
            (shared / f"{name}.{pid}.tmp").symlink_to(victim)
    env = {k: v for k, v in os.environ.items() if k not in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")}
    code = NO_NETWORK_PRELUDE + "import nanogpt_edu, tiktoken; print(tiktoken.get_encoding('gpt2').encode('Hello'))"
    result = subprocess.run([sys.executable, "-c", code], env={**env, "TMPDIR": str(tmp_path)}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[15496]", result.stderr
    assert victim.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data-gym-cache", "victim"]
    assert all(p.is_symlink() for p in shared.iterdir())


@pytest.mark.parametrize("plant", ["symlink", "fifo", "huge", "directory"])
def test_a_chosen_tiktoken_cache_with_planted_files(plant, tmp_path, monkeypatch):
    import hashlib

    from nanogpt_edu.tokenizer import GPT2_FILES, bpe_file, install_tiktoken_cache

    cache, victim = tmp_path / "cache", tmp_path / "victim"
    cache.mkdir()
    victim.write_text("mine")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    targets = {}
    for filename, (url, _) in GPT2_FILES.items():
        target = targets[filename] = cache / hashlib.sha1(url.encode()).hexdigest()
        for pid in range(os.getpid() - 5, os.getpid() + 5):
            target.with_name(f"{target.name}.{pid}.tmp").symlink_to(victim)
        {"symlink": lambda: target.symlink_to(victim), "fifo": lambda: os.mkfifo(target),
         "huge": lambda: sparse(target, 1 << 40), "directory": lambda: target.mkdir()}[plant]()
    started = time.monotonic()
    done = install_tiktoken_cache()
    assert time.monotonic() - started < 5  # a FIFO is not waited on, a huge file not read
    assert victim.read_text() == "mine"
    for filename, target in targets.items():
        if plant == "directory":  # cannot be replaced by a file: left alone, and tiktoken still works
            assert not done and target.is_dir()
        else:
            assert done and not target.is_symlink() and target.read_bytes() == bpe_file(filename).read_bytes()
            assert target.stat().st_mode & 0o022 == 0
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    assert __import__("tiktoken").get_encoding("gpt2").encode("Hello") == [15496]


# ---------------------------------------------------------------------------------------------------------------
# Native code: the kernel's library is loaded only from this user's private folder, and only as it was built

PLANTED_C = r"""
#include <fcntl.h>
__attribute__((constructor)) static void planted(void) { creat("%s", 0600); }
void linear(void) {}
void attend(void) {}
"""


@pytest.fixture
def kernel_home(monkeypatch, tmp_path):
    """The kernel module with nothing loaded, a cache under ``tmp_path/home``, and a compiler (else skipped)."""
    import nanogpt_edu.fast.kernel as kernel

    if kernel._compiler() is None:
        pytest.skip("no C compiler on this machine")
    monkeypatch.setattr(kernel, "_kernel", None)
    monkeypatch.setattr(kernel, "_tried", False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NANOGPT_EDU_KERNEL", raising=False)
    (tmp_path / "home").mkdir(mode=0o700)
    return kernel


def plant_library(kernel, path: Path, canary: Path) -> bytes:
    """Compile a library whose start-up code creates ``canary`` into ``path``; return its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    source = path.parent.parent / "planted.c"
    source.write_text(PLANTED_C % canary)
    subprocess.run([kernel._compiler(), "-shared", "-fPIC", str(source), "-o", str(path)], check=True)
    return path.read_bytes()


def kernel_works(kernel) -> bool:
    x, w = torch.randn(2, 8), torch.randn(4, 8)
    return kernel.load_kernel() is not None and torch.allclose(kernel.linear(x, w, None), x @ w.T, atol=1e-5)


@pytest.mark.parametrize("how", ["no digest", "its own digest, writable by others", "a digest that is a link"])
def test_a_planted_kernel_library_never_runs(how, kernel_home, tmp_path):
    import hashlib

    kernel, canary = kernel_home, tmp_path / CANARY
    path = kernel._cache_path()
    planted = plant_library(kernel, path, canary)
    digest = kernel._digest_file(path)
    if how == "its own digest, writable by others":
        digest.write_text(hashlib.sha256(planted).hexdigest())
        path.chmod(0o666)
    elif how == "a digest that is a link":
        (tmp_path / "d").write_text(hashlib.sha256(planted).hexdigest())
        digest.symlink_to(tmp_path / "d")
    assert kernel_works(kernel)  # rebuilt from kernel.c, then loaded
    assert not canary.exists() and path.read_bytes() != planted


@pytest.mark.parametrize("where", ["the cache folder", "the folder above it"])
def test_a_kernel_folder_others_can_write_is_not_used(where, kernel_home, tmp_path, capsys):
    import hashlib

    kernel, canary = kernel_home, tmp_path / CANARY
    path = kernel._cache_path()
    planted = plant_library(kernel, path, canary)
    kernel._digest_file(path).write_text(hashlib.sha256(planted).hexdigest())  # as if it had been built there
    (path.parent if where == "the cache folder" else path.parent.parent).chmod(0o777)
    assert kernel.load_kernel() is None and not canary.exists()
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and re.match(r"note: decode kernel not used: .* is writable by other users", err)
    assert kernel.build_kernel().startswith("decode kernel: not built (")


def test_a_relative_xdg_cache_home_is_ignored(kernel_home, tmp_path, monkeypatch):
    kernel, canary = kernel_home, tmp_path / CANARY
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", "cache")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = kernel._cache_path()
    assert path.is_relative_to(tmp_path / "home" / ".cache")  # XDG: a relative path is ignored
    plant_library(kernel, tmp_path / "cache" / "nanogpt-edu" / path.name, canary)
    assert kernel_works(kernel) and not canary.exists()


def test_under_umask_000_the_kernel_is_private(kernel_home, tmp_path):
    kernel = kernel_home
    old = os.umask(0)
    try:
        assert kernel_works(kernel)
    finally:
        os.umask(old)
    path = kernel._cache_path()
    for f in (path.parent, path, kernel._digest_file(path)):
        assert f.stat().st_mode & 0o077 == 0, (f, oct(f.stat().st_mode))


def test_a_compiler_that_hangs_is_stopped_with_a_note(kernel_home, tmp_path, monkeypatch, capsys):
    kernel = kernel_home
    hangs = tmp_path / "cc"
    hangs.write_text("#!/bin/sh\nsleep 300 &\nsleep 300\n")  # and a child that holds the output open
    hangs.chmod(0o755)
    monkeypatch.setenv("CC", str(hangs))
    monkeypatch.setattr(kernel, "BUILD_SECONDS", 2)
    started = time.monotonic()
    assert kernel.load_kernel() is None
    assert time.monotonic() - started < 10
    assert capsys.readouterr().err == ("note: decode kernel not built (cc did not finish in 2 s); generation uses "
                                       "PyTorch's own operations\n")
    assert kernel._failure_note(kernel._cache_path()).exists()  # later processes do not wait again


# ---------------------------------------------------------------------------------------------------------------
# Real tokens that break figures: GPT-2's "$$", " $$", "#$#$", "$$$$" and "$" are drawn as text, never as math

DOLLAR_TOKENS = [13702, 32382, 34206, 36737, 3]  # '$$', ' $$', '#$#$', '$$$$', '$'


def every_figure(logits: torch.Tensor) -> dict:
    from nanogpt_edu import plots

    probs = torch.softmax(logits, dim=-1)
    labels = ["'$$'", "' $$'", "'#$#$'", "'$x$'"]
    return {
        "plot_next_token_probs": lambda: plots.plot_next_token_probs(probs, title="after 'it costs $5 or $$6$$'"),
        "plot_top_k_mask": lambda: plots.plot_top_k_mask(logits, 3, score_label="$logit$ / $T$"),
        "plot_temperature_grid": lambda: plots.plot_temperature_grid(logits),
        "plot_filter_comparison": lambda: plots.plot_filter_comparison(logits),
        "plot_time_per_token": lambda: plots.plot_time_per_token([1, 2], {"$$a$$": [0.1, 0.2]}, title="$t$ $x$"),
        "plot_attention": lambda: plots.plot_attention(torch.full((2, 4, 4), 0.25).tril(), labels, "$$ $$"),
        "plot_gelu": plots.plot_gelu,
        "plot_logit_lens": lambda: plots.plot_logit_lens(["h.0", "h.1"], ["'$$'", "'$$$$'"], [0.2, 0.5], "$a$b$"),
        "plot_draws_vs_probs": lambda: plots.plot_draws_vs_probs(probs, torch.tensor(DOLLAR_TOKENS * 20)),
        "plot_kept_per_step": lambda: plots.plot_kept_per_step([3, 40, 7], 5, 0.9),
        "plot_architecture": lambda: plots.plot_architecture([("$$idx$$", "(B, T)", (1, 2)), ("'$$'", "$x$", (1, 2, 8))],
                                                             repeated=(1, 2), n_layer=2, title="$a$ $b$"),
        "plot_every_probability": lambda: plots.plot_every_probability(
            logits[DOLLAR_TOKENS], ["'$$'", "' $$'", "'#$#$'", "'$$$$'", "'$'"], [dict(temperature=1.0)]),
        "plot_log_probabilities": lambda: plots.plot_log_probabilities(
            logits[DOLLAR_TOKENS], ["'$$'", "' $$'", "'#$#$'", "'$$$$'", "'$'"], title="$T$"),
    }


def test_every_figure_draws_dollar_tokens_as_text():
    import io

    import matplotlib
    import matplotlib.pyplot as plt

    from nanogpt_edu import plots

    matplotlib.use("Agg")
    logits = torch.full((50257,), -5.0)
    logits[DOLLAR_TOKENS] = torch.tensor([5.0, 4.5, 4.0, 3.5, 3.0])  # the five are the likeliest
    figures = every_figure(logits)
    public = {name for name in dir(plots) if name.startswith("plot_")}
    assert public == set(figures), "a new figure function: add it here"
    for name, make in figures.items():
        fig = make()
        fig.savefig(io.BytesIO(), format="png")  # raises inside the math-text parser if any text is read as math
        shown = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
        assert all(not t.get_parse_math() for t in fig.findobj(matplotlib.text.Text)), name
        if name in ("plot_next_token_probs", "plot_top_k_mask", "plot_temperature_grid", "plot_filter_comparison"):
            assert {"'$$'", "' $$'", "'#$#$'", "'$$$$'", "'$'"} <= set(shown), (name, shown)
        plt.close(fig)
    assert matplotlib.rcParams["text.parse_math"]  # the user's own figures are left as they were


def test_the_explorers_title_is_plain_text():
    from bokeh.models import PlainText

    from nanogpt_edu.explorer import NextTokenLogits, explorer_document

    row = NextTokenLogits("it costs $$5$$ or \\(6\\)", torch.arange(10.0).flip(0).numpy(), list(range(3)),
                          ["'$$'", "' $$'", "'$$$$'"])
    fig = explorer_document([row]).select_one({"name": "bars"})
    assert isinstance(fig.title.text, PlainText) and "$$5$$" in fig.title.text.text


def test_a_head_saved_equal_to_wte_still_loads(tmp_path):
    # save_pretrained leaves the tied head out, but some tools write it: equal to wte, it is the same model
    from safetensors.torch import load_file, save_file

    from nanogpt_edu.porting import load_hf_folder, port_hf_state_dict

    write_hf(tmp_path)
    tensors = load_file(tmp_path / ST)
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"].clone()
    save_file(tensors, tmp_path / ST, metadata={"format": "pt"})
    model = load_hf_folder(tmp_path)
    assert torch.equal(model.lm_head.weight, tensors["transformer.wte.weight"])
    tensors["lm_head.weight"] = tensors["lm_head.weight"] * -1
    with pytest.raises(__import__("nanogpt_edu").NanogptEduError, match="the Hugging Face state dict: 'lm_head"):
        port_hf_state_dict(tensors, model.config)


def test_the_kernel_takes_only_plain_fp32_memory():
    # lazy views keep their bytes as they were (the negation bit), a zero tensor has none: PyTorch does these
    import nanogpt_edu.fast.kernel as kernel
    from nanogpt_edu.fast.decode import KernelDecodeOps, TorchDecodeOps

    class Marked(torch.Tensor):
        pass

    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    odd = {"negation bit": torch._neg_view(x), "zero tensor": torch._efficientzerotensor(2, 8),
           "a subclass": x.as_subclass(Marked)}
    for name, t in odd.items():
        assert not kernel.can_use(t), name
        with torch.no_grad():
            expected = TorchDecodeOps.linear(t.clone() if name != "zero tensor" else torch.zeros(2, 8), layer)
            assert torch.allclose(KernelDecodeOps.linear(t, layer), expected, atol=1e-6), name
        if kernel.load_kernel() is not None:
            with pytest.raises(ValueError, match="must be a plain contiguous"):
                kernel.linear(t, layer.weight.detach(), None)
    assert kernel.can_use(x, layer.weight, torch.nn.Parameter(x))


def test_a_malformed_omp_num_threads_is_one_line(fresh):
    assert_one_error_line(fresh["OMP_NUM_THREADS a word"], r"^error: the environment's OMP_NUM_THREADS='many' is not")


def test_compile_without_a_cpp_compiler_is_one_line(fresh):
    result = fresh["compile without a C++ compiler"]
    assert_one_error_line(Finished(result.returncode, result.stdout, result.stderr, 0),
                          r"^error: compile=True needs a working C\+\+ compiler on a CPU, and none was found")


def test_with_stderr_closed_errors_stay_out_of_the_samples():
    result = subprocess.run([sys.executable, "-c", CLI, "--seed=x"], capture_output=False, stdout=subprocess.PIPE,
                            preexec_fn=lambda: os.close(2), timeout=60)
    assert result.returncode == 2 and b"error" not in result.stdout and b"Traceback" not in result.stdout
