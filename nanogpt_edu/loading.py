"""Build the model and its tokenizer from ``init_from``: the two paths of sample.py and a few more.

* ``pocket`` — the small GPT-2 trained by this project, shipped inside the package (the default, works offline);
* ``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl`` — OpenAI's weights from the Hugging Face cache or Hub;
* a folder in Hugging Face format (``config.json`` + ``model.safetensors``);
* ``resume`` (reads ``out_dir``) or a folder holding nanoGPT's ``ckpt.pt`` — a model trained with nanoGPT's
  train.py, with its character vocabulary (``meta.pkl``) when the run had one.

``find_source`` decides once what ``init_from`` names; the model and the tokenizer are both built from that.

Everything read here is checked before it is trusted: a malformed, truncated, oversized or inconsistent file raises
``LoadError`` (a ``NanogptEduError``) whose one-line message names the file and what is wrong, and a model's size is
checked against the machine's memory before a layer is built.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import torch

from .errors import NanogptEduError, shown
from .limits import MAX_PICKLE_BYTES, check_memory, check_model_dims, read_bounded, refuse_system_file
from .model import GPT, GPTConfig
from .porting import (GPT2_DIMS, HF_CONFIG, IGNORED_SUFFIXES, _check_tied, _copy_into, _empty_model,
                      _expected_shapes, _first_line, from_pretrained, read_hf_config)
from .tokenizer import EOT_ID, N_VOCAB, decode, encode, get_encoding

CKPT = "ckpt.pt"
META = "meta.pkl"
NANOGPT_MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")


class LoadError(NanogptEduError):
    """``init_from`` names nothing that can be loaded, or a file that is malformed; the message says which."""


@dataclass(frozen=True)
class ModelSource:
    """What ``init_from`` points at, as ``find_source`` decided.

    ``kind`` is "pocket", "gpt2" (``location`` is a GPT-2 size), "hf_folder" (a folder in Hugging Face's format)
    or "nanogpt" (a folder holding nanoGPT's ``ckpt.pt``, and ``meta.pkl`` when the run had one).
    """

    kind: str
    location: str | Path


@dataclass
class Codec:
    """How to turn text into token ids and back for one model."""

    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    decode_bytes: Callable[[int], bytes]  # one token's bytes, for streaming
    eot: int | None  # the end-of-text id, or None when the vocabulary has none
    name: str


def pocket_dir() -> Path:
    """Return the folder of the pocket model that ships with the package (Hugging Face format)."""
    return Path(str(resources.files("nanogpt_edu") / "pocket"))


def find_source(init_from: str = "pocket", out_dir: str | Path = "out") -> ModelSource:
    """Return the ``ModelSource`` that ``init_from`` names; raise ``LoadError`` when it names nothing loadable."""
    for name, value in (("init_from", init_from), ("out_dir", out_dir)):
        if not isinstance(value, (str, os.PathLike)) or str(value) == "":
            raise LoadError(f"{name} must be a model name or a folder, got {shown(value)}")
    if init_from == "pocket":
        return ModelSource("pocket", pocket_dir())
    if init_from == "resume":  # nanoGPT's word for "the checkpoint train.py left in out_dir"
        return ModelSource("nanogpt", Path(out_dir))
    # os.path's tests, not pathlib's: they answer False where pathlib raises (a name too long, a NUL character)
    path = Path(init_from)
    if init_from in GPT2_DIMS and not os.path.isdir(path):
        return ModelSource("gpt2", init_from)
    if os.path.exists(path / CKPT):
        return ModelSource("nanogpt", path)
    if os.path.exists(path / HF_CONFIG):
        return ModelSource("hf_folder", path)
    raise LoadError(
        f"init_from={shown(str(init_from))}: not 'pocket', 'resume', a GPT-2 size ({', '.join(GPT2_DIMS)}), "
        f"a Hugging Face folder (with {HF_CONFIG}) or a folder with nanoGPT's {CKPT}"
    )


def load(init_from: str = "pocket", out_dir: str | Path = "out") -> tuple[GPT, Codec]:
    """Return the model ``init_from`` names (eval mode, CPU, float32) and its tokenizer."""
    source = find_source(init_from, out_dir)
    model = model_from(source)
    return model, codec_from(source, model.config.vocab_size)


def load_model(init_from: str = "pocket", out_dir: str | Path = "out") -> GPT:
    """Return the ``GPT`` that ``init_from`` names, in eval mode, on the CPU, in float32."""
    return model_from(find_source(init_from, out_dir))


def load_codec(init_from: str = "pocket", out_dir: str | Path = "out") -> Codec:
    """Return the tokenizer for ``init_from``: the char vocabulary of a nanoGPT ``meta.pkl``, else GPT-2's BPE."""
    return codec_from(find_source(init_from, out_dir))


def model_from(source: ModelSource) -> GPT:
    """Return the model of a ``ModelSource`` (see ``load_model``)."""
    if source.kind == "nanogpt":
        return load_nanogpt_checkpoint(source.location)
    return from_pretrained(source.location)


def load_nanogpt_checkpoint(folder: str | Path) -> GPT:
    """Return the model saved in nanoGPT's ``ckpt.pt`` (as train.py writes it), loaded without unpickling code.

    ``model_args`` are checked (types, ranges, memory) before the model is built; every weight is checked (name,
    shape, floating point, no NaN or infinity) before or as it is copied.
    """
    if not isinstance(folder, (str, os.PathLike)):
        raise LoadError(f"folder must be a path, got {shown(folder)}")
    path = Path(folder) / CKPT
    config, state = _read_checkpoint(path)
    model = _empty_model(config, torch.float32)
    _copy_into(model, [(key, key, False) for key in state], state.__getitem__, path)
    return model.eval()


def _read_checkpoint(path: Path) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    # the checkpoint's model config and its model weights (memory-mapped: not read yet), every entry checked
    if not os.path.exists(path):
        raise LoadError(f"init_from='resume' looks for {path}, which does not exist (set --out_dir)")
    if not os.path.isfile(path):
        raise LoadError(f"{path} is not a regular file")
    refuse_system_file(os.path.realpath(path), path, "checkpoint", LoadError)
    _check_archive(path)
    try:
        # weights_only: tensors and plain containers only, so a checkpoint cannot run code while it loads;
        # mmap: tensors stay in the file until copied, so the optimizer state train.py saves costs nothing
        with warnings.catch_warnings():  # odd contents make torch warn (deprecated storages...): the error says it
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises many types for corrupt or unsafe files
        raise LoadError(f"{path} could not be loaded as a nanoGPT checkpoint: {_first_line(e)}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model_args"), dict) \
            or not isinstance(checkpoint.get("model"), dict):
        raise LoadError(f"{path} is not a nanoGPT checkpoint (it needs a 'model_args' dict and a 'model' dict)")
    config = _config_from_model_args(checkpoint["model_args"], path)
    return config, _checked_weights(checkpoint["model"], config, path)


def _check_archive(path: Path) -> None:
    # torch.save writes a zip archive of uncompressed entries. Checking that each entry lies inside the file, and
    # that the pickled part is small, means torch's reader never trusts a size the file does not have.
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except Exception as e:  # zipfile raises many types for damaged archives (BadZipFile, NotImplementedError, ...)
        raise LoadError(f"{path} is not a checkpoint written by torch.save (not a readable zip archive: "
                        f"{_first_line(e)})") from None
    size = path.stat().st_size
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED or entry.header_offset + entry.file_size > size:
            raise LoadError(f"{path} is damaged: its entry {shown(entry.filename)} is not stored as torch.save "
                            "stores it")
        if entry.filename.endswith("data.pkl") and entry.file_size > MAX_PICKLE_BYTES:
            raise LoadError(f"{path}: its pickled structure has {entry.file_size:,} bytes, more than the limit of "
                            f"{MAX_PICKLE_BYTES:,}")


def _config_from_model_args(model_args: dict, path: Path) -> GPTConfig:
    where = f"{path}: model_args"
    check_model_dims(model_args, where, LoadError)
    args = {k: model_args[k] for k in NANOGPT_MODEL_ARGS if k in model_args}
    # nanoGPT's train.py builds its MLP with nn.GELU(), the exact erf GELU, not GPT-2's tanh approximation
    config = GPTConfig(**args, gelu="exact")
    check_memory(config, where, LoadError)
    return config


def _checked_weights(weights: dict, config: GPTConfig, path: Path) -> dict[str, torch.Tensor]:
    # the weights to copy, by our parameter names, after checking that they are exactly the model's parameters
    expected = _expected_shapes(config)
    state = {}
    for key, tensor in weights.items():
        if not isinstance(key, str):
            raise LoadError(f"{path}: the model's weights have a key that is not a string: {shown(key)}")
        name = key.removeprefix("_orig_mod.")  # torch.compile wraps the model, and its keys carry this prefix
        if name.endswith(IGNORED_SUFFIXES):
            continue  # the causal mask nanoGPT keeps as a buffer on torch < 2.0: rebuilt, not loaded
        if name not in expected:
            raise LoadError(f"{path}: unexpected weight {shown(key)} (no such parameter in this model)")
        problem = _tensor_problem(tensor)
        if problem:
            raise LoadError(f"{path}: weight {shown(key)} is {problem}, not a dense floating-point tensor with data")
        if tensor.shape != expected[name]:
            raise LoadError(f"{path}: weight {shown(key)} has shape {tuple(tensor.shape)}, its model_args give "
                            f"{tuple(expected[name])}")
        state[name] = tensor
    head = state.pop("lm_head.weight", None)  # the head is tied to wte: the same tensor, copied once
    missing = [k for k in expected if k != "lm_head.weight" and k not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise LoadError(f"{path}: the weight {missing[0]!r}{more} is missing")
    if head is not None:  # but only if it is wte's: a head of its own would be dropped, and the logits wrong
        _check_tied(head, state["transformer.wte.weight"], path, LoadError)
    return state


def _tensor_problem(tensor) -> str | None:
    # what makes a value unusable as a weight, in a few words, or None: anything but a plain dense tensor
    if not isinstance(tensor, torch.Tensor):
        return f"a {type(tensor).__name__}"
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter):  # a subclass: a jagged nested tensor, say
        return f"a {type(tensor).__name__}"
    if tensor.is_nested:  # strided nested tensors have no shape at all
        return "a nested tensor"
    if tensor.is_quantized:
        return "a quantized tensor"
    if tensor.layout != torch.strided:
        return f"a {tensor.layout} tensor"
    if tensor.device.type != "cpu":  # a tensor saved from the meta device holds no numbers
        return f"a tensor on the {tensor.device.type} device"
    if not tensor.is_floating_point():
        return f"a {tensor.dtype} tensor"
    return None


class _PlainDataUnpickler(pickle.Unpickler):
    # meta.pkl holds only dicts, strings and ints; refusing every class means loading it cannot run code
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"meta.pkl refers to {module}.{name}; only plain data is accepted")


def codec_from(source: ModelSource, vocab_size: int | None = None) -> Codec:
    """Return the tokenizer of a ``ModelSource`` (see ``load_codec``) for a model of ``vocab_size`` tokens.

    ``vocab_size`` is read from the source when not given. A nanoGPT run's ``meta.pkl`` must describe exactly
    that many characters; without one, the model must have at least GPT-2's 50257 tokens, and any id past them
    (nanoGPT pads its vocabulary to 50304) decodes as U+FFFD.
    """
    if vocab_size is None:
        vocab_size = _vocab_size_of(source)
    meta_path = Path(source.location) / META if source.kind == "nanogpt" else None
    if meta_path is not None and os.path.lexists(meta_path):
        return _char_codec(meta_path, vocab_size)
    if vocab_size < N_VOCAB:
        where = meta_path.parent / CKPT if meta_path is not None else source.location
        raise LoadError(f"{where}: the model has {vocab_size} tokens, fewer than GPT-2's {N_VOCAB}, so it needs its "
                        f"own vocabulary, and there is no {META} beside it")
    return _bpe_codec()


def _vocab_size_of(source: ModelSource) -> int:
    if source.kind == "nanogpt":
        return _read_checkpoint(Path(source.location) / CKPT)[0].vocab_size
    if source.kind == "hf_folder":
        return read_hf_config(Path(source.location) / HF_CONFIG).vocab_size
    return N_VOCAB  # the pocket model and OpenAI's GPT-2 sizes


def _bpe_codec() -> Codec:
    enc = get_encoding()

    def decode_bytes(i: int) -> bytes:
        return enc.decode_single_token_bytes(i) if 0 <= i < N_VOCAB else "\ufffd".encode()

    def decode_ids(ids: list[int]) -> str:
        if all(0 <= i < N_VOCAB for i in ids):
            return decode(ids, enc)
        return b"".join(decode_bytes(i) for i in ids).decode("utf-8", errors="replace")

    return Codec(encode=lambda text: encode(text, enc), decode=decode_ids, decode_bytes=decode_bytes,
                 eot=EOT_ID, name="gpt2 BPE (tiktoken)")


def _char_codec(meta_path: Path, vocab_size: int) -> Codec:
    stoi, itos = _read_vocabulary(meta_path, vocab_size)

    def encode_chars(text: str) -> list[int]:
        unknown = sorted(set(text) - set(stoi))
        if unknown:
            raise LoadError(f"the prompt has characters outside this model's vocabulary: {shown(''.join(unknown))}")
        return [stoi[c] for c in text]

    return Codec(encode=encode_chars, decode=lambda ids: "".join(itos[i] for i in ids),
                 decode_bytes=lambda i: itos[i].encode("utf-8"), eot=None, name=f"characters ({meta_path})")


def _read_vocabulary(path: Path, vocab_size: int) -> tuple[dict[str, int], dict[int, str]]:
    # meta.pkl as nanoGPT's prepare.py writes it: {"vocab_size": n, "stoi": {char: id}, "itos": {id: char}}
    data = read_bounded(path, MAX_PICKLE_BYTES, "vocabulary", LoadError)
    try:
        meta = _PlainDataUnpickler(io.BytesIO(data)).load()
    except Exception as e:  # garbage makes the unpickler raise almost any type: all mean "not a vocabulary"
        raise LoadError(f"{path} is not a nanoGPT vocabulary ({type(e).__name__}: {_first_line(e)})") from None
    if not (isinstance(meta, dict) and isinstance(meta.get("stoi"), dict) and isinstance(meta.get("itos"), dict)):
        raise LoadError(f"{path} is not a nanoGPT vocabulary (it needs the dicts 'stoi' and 'itos')")
    stoi, itos = meta["stoi"], meta["itos"]
    if len(itos) != vocab_size or not all(type(i) is int and 0 <= i < vocab_size for i in itos):
        raise LoadError(f"{path}: itos must map each id from 0 to {vocab_size - 1} (the checkpoint's vocab_size is "
                        f"{vocab_size}), and it has {len(itos)} entries")
    for i, text in itos.items():
        if not _is_text(text):
            raise LoadError(f"{path}: itos[{i}] is {shown(text)}, not a string of UTF-8 text")
    for text, i in stoi.items():
        if not _is_text(text) or type(i) is not int or not 0 <= i < vocab_size or itos[i] != text:
            raise LoadError(f"{path}: stoi[{shown(text)}] is {shown(i)}, which does not match itos")
    return stoi, itos


def _is_text(value) -> bool:
    # a string that can be written out: no lone surrogates
    try:
        return isinstance(value, str) and bool(value.encode("utf-8"))
    except UnicodeEncodeError:
        return False
