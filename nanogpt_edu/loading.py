"""Build the model and its tokenizer from ``init_from``: the two paths of sample.py and a few more.

* ``pocket`` — the small GPT-2 trained by this project, shipped inside the package (the default, works offline);
* ``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl`` — OpenAI's weights from the Hugging Face cache or Hub;
* a folder in Hugging Face format (``config.json`` + ``model.safetensors``);
* ``resume`` (reads ``out_dir``) or a folder holding nanoGPT's ``ckpt.pt`` — a model trained with nanoGPT's
  train.py, with its character vocabulary (``meta.pkl``) when the run had one.

``find_source`` decides once what ``init_from`` names; the model and the tokenizer are both built from that.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import torch

from .model import GPT, GPTConfig
from .porting import GPT2_DIMS, HF_CONFIG, from_pretrained
from .tokenizer import EOT_ID, decode, encode, get_encoding

CKPT = "ckpt.pt"
META = "meta.pkl"
NANOGPT_MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")


class LoadError(ValueError):
    """``init_from`` names nothing that can be loaded; the message says what was looked for."""


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
    if init_from == "pocket":
        return ModelSource("pocket", pocket_dir())
    if init_from == "resume":  # nanoGPT's word for "the checkpoint train.py left in out_dir"
        return ModelSource("nanogpt", Path(out_dir))
    path = Path(init_from)
    if init_from in GPT2_DIMS and not path.is_dir():
        return ModelSource("gpt2", init_from)
    if (path / CKPT).is_file():
        return ModelSource("nanogpt", path)
    if (path / HF_CONFIG).is_file():
        return ModelSource("hf_folder", path)
    raise LoadError(
        f"init_from={init_from!r}: not 'pocket', 'resume', a GPT-2 size ({', '.join(GPT2_DIMS)}), "
        f"a Hugging Face folder (with {HF_CONFIG}) or a folder with nanoGPT's {CKPT}"
    )


def load(init_from: str = "pocket", out_dir: str | Path = "out") -> tuple[GPT, Codec]:
    """Return the model ``init_from`` names (eval mode, CPU, float32) and its tokenizer."""
    source = find_source(init_from, out_dir)
    return model_from(source), codec_from(source)


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
    """Return the model saved in nanoGPT's ``ckpt.pt`` (as train.py writes it), loaded without unpickling code."""
    path = Path(folder) / CKPT
    if not path.is_file():
        raise LoadError(f"init_from='resume' looks for {path}, which does not exist (set --out_dir)")
    try:
        # weights_only: tensors and plain containers only; a checkpoint cannot run code while it loads
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or unsafe files
        raise LoadError(f"{path} could not be loaded as a nanoGPT checkpoint: {str(e).splitlines()[0]}") from None
    if not isinstance(checkpoint, dict) or "model_args" not in checkpoint or "model" not in checkpoint:
        raise LoadError(f"{path} is not a nanoGPT checkpoint (no 'model_args' and 'model' entries)")
    args = {k: checkpoint["model_args"][k] for k in NANOGPT_MODEL_ARGS if k in checkpoint["model_args"]}
    # nanoGPT's train.py builds its MLP with nn.GELU(), the exact erf GELU, not GPT-2's tanh approximation
    config = GPTConfig(**args, gelu="exact")
    model = GPT(config)
    # torch.compile wraps the model, and its state dict keys then carry this prefix
    state = {k.removeprefix("_orig_mod."): v for k, v in checkpoint["model"].items()}
    if "transformer.wte.weight" in state:
        state.setdefault("lm_head.weight", state["transformer.wte.weight"])  # the same tensor: tied
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1].strip()
        raise LoadError(f"{path}: the weights do not fit its model_args: {reason}") from None
    return model.eval()


class _PlainDataUnpickler(pickle.Unpickler):
    # meta.pkl holds only dicts, strings and ints; refusing every class means loading it cannot run code
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"meta.pkl refers to {module}.{name}; only plain data is accepted")


def codec_from(source: ModelSource) -> Codec:
    """Return the tokenizer of a ``ModelSource`` (see ``load_codec``)."""
    meta_path = Path(source.location) / META if source.kind == "nanogpt" else None
    if meta_path is None or not meta_path.is_file():
        return Codec(encode=encode, decode=decode, decode_bytes=get_encoding().decode_single_token_bytes,
                     eot=EOT_ID, name="gpt2 BPE (tiktoken)")
    try:
        with open(meta_path, "rb") as f:
            meta = _PlainDataUnpickler(f).load()
        stoi, itos = meta["stoi"], meta["itos"]
    except (pickle.UnpicklingError, KeyError, TypeError, EOFError) as e:
        raise LoadError(f"{meta_path} is not a nanoGPT vocabulary: {e}") from None

    def encode_chars(text: str) -> list[int]:
        unknown = sorted(set(text) - set(stoi))
        if unknown:
            raise LoadError(f"the prompt has characters outside this model's vocabulary: {''.join(unknown)!r}")
        return [stoi[c] for c in text]

    return Codec(encode=encode_chars, decode=lambda ids: "".join(itos[i] for i in ids),
                 decode_bytes=lambda i: itos[i].encode("utf-8"), eot=None, name=f"characters ({meta_path})")
