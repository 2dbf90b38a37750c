"""Porting GPT-2 weights between Hugging Face's format and our ``GPT``, in both directions.

nanoGPT does this in ``GPT.from_pretrained``; here it is ``from_pretrained`` in this module, because reading
Hugging Face's files takes libraries (safetensors, huggingface_hub) that ``model.py`` does without.

Hugging Face's ``GPT2LMHeadModel`` and our ``GPT`` have the same parameters under the same names, with one twist:
OpenAI's original code (and so Hugging Face's) builds four of the linear layers in each block as ``Conv1D``, which
stores its weight as (in_features, out_features), while ``nn.Linear`` stores (out_features, in_features). Those four
weights are transposed on the way in; everything else is copied as it is.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .model import GPT, LAYER_NORM_EPS, GPTConfig
from .tokenizer import EOT_ID, N_VOCAB

# The four GPT-2 sizes (nanoGPT keeps the same table in model.py). All share the vocabulary, block 1024 and biases.
GPT2_DIMS: dict[str, dict[str, int]] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M parameters
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 355M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}

# The Conv1D weights: stored (in, out) by Hugging Face, (out, in) by nn.Linear. Only weights: biases are 1-D.
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

# Hugging Face checkpoints may carry the causal mask as a buffer; it is not a parameter and we rebuild it anyway.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")

HF_WEIGHTS = "model.safetensors"
HF_CONFIG = "config.json"


class PortingError(ValueError):
    """A state dict or folder that cannot be ported; the message names the key or file and what was wrong."""


class ModelNotAvailableError(RuntimeError):
    """GPT-2 weights that are neither on this machine nor downloadable right now."""


def gpt2_config(name: str) -> GPTConfig:
    """Return the ``GPTConfig`` of one of the four GPT-2 sizes."""
    if name not in GPT2_DIMS:
        raise ValueError(f"unknown GPT-2 size {name!r}; choose one of {', '.join(GPT2_DIMS)}")
    return GPTConfig(vocab_size=N_VOCAB, block_size=1024, bias=True, **GPT2_DIMS[name])


def config_from_hf(hf_config: Mapping) -> GPTConfig:
    """Return the ``GPTConfig`` described by a Hugging Face GPT-2 ``config.json`` (as a dict)."""
    if hf_config.get("model_type", "gpt2") != "gpt2":
        raise PortingError(f"config.json describes a {hf_config['model_type']!r} model, not a GPT-2")
    n_embd = hf_config.get("n_embd", 768)
    if hf_config.get("n_inner") not in (None, 4 * n_embd):
        raise PortingError(f"config.json sets n_inner={hf_config['n_inner']}; our MLP is always 4 * n_embd wide")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
        if hf_config.get(flag):
            raise PortingError(f"config.json sets {flag}=true, which our GPT does not implement")
    if not hf_config.get("tie_word_embeddings", True):
        raise PortingError("config.json sets tie_word_embeddings=false; our GPT always ties the head to wte")
    activation = hf_config.get("activation_function", "gelu_new")
    gelus = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}
    if activation not in gelus:
        raise PortingError(f"config.json uses activation_function={activation!r}; supported: {', '.join(gelus)}")
    return GPTConfig(
        block_size=hf_config.get("n_positions", 1024),
        vocab_size=hf_config.get("vocab_size", N_VOCAB),
        n_layer=hf_config.get("n_layer", 12),
        n_head=hf_config.get("n_head", 12),
        n_embd=n_embd,
        dropout=0.0,  # we port for inference; dropout would only add noise
        bias=True,
        gelu=gelus[activation],
    )


def config_to_hf(config: GPTConfig) -> dict:
    """Return a ``config.json`` dict that ``transformers.GPT2LMHeadModel`` accepts for a model of this shape."""
    if not config.bias:
        raise PortingError("GPT-2's Hugging Face format always has biases; this model was built with bias=False")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new" if config.gelu == "tanh" else "gelu",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": EOT_ID,
        "eos_token_id": EOT_ID,
    }


def _expected_shapes(config: GPTConfig) -> dict[str, torch.Size]:
    # building on the meta device costs no memory, even for gpt2-xl
    with torch.device("meta"):
        model = GPT(config)
    return {k: v.shape for k, v in model.state_dict().items()}


def _our_key(hf_key: str) -> str:
    # GPT2LMHeadModel checkpoints say "transformer.h.0...", bare GPT2Model ones (like OpenAI's upload) say "h.0..."
    if hf_key.startswith(("transformer.", "lm_head.")):
        return hf_key
    return "transformer." + hf_key


def _port_plan(hf_keys: Iterable[str], shape_of: Callable[[str], tuple[int, ...]],
               config: GPTConfig) -> list[tuple[str, str, bool]]:
    """Return ``(hf_key, our_key, transpose)`` for every tensor to copy, having checked every name and shape.

    Nothing is read yet: a checkpoint that does not fit ``config`` is refused before any tensor is loaded. The
    head is tied to ``wte``, so a checkpoint's own ``lm_head.weight`` is checked but not copied.
    """
    expected = _expected_shapes(config)
    plan = []
    for hf_key in hf_keys:
        if hf_key.endswith(IGNORED_SUFFIXES):
            continue
        key = _our_key(hf_key)
        if key not in expected:
            raise PortingError(f"unexpected key {hf_key!r} in the Hugging Face state dict (no such parameter)")
        shape, transpose = tuple(shape_of(hf_key)), key.endswith(TRANSPOSED)
        if shape != (tuple(expected[key])[::-1] if transpose else tuple(expected[key])):
            note = (f" after transposing the Conv1D weight, so {tuple(expected[key])[::-1]} before"
                    if transpose else "")
            raise PortingError(f"shape mismatch for {hf_key!r}: Hugging Face has {shape}, "
                               f"our GPT expects {tuple(expected[key])}{note}")
        if key != "lm_head.weight":
            plan.append((hf_key, key, transpose))
    missing = [k for k in expected if k != "lm_head.weight" and k not in {key for _, key, _ in plan}]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise PortingError(f"missing key {missing[0]!r}{more} in the Hugging Face state dict")
    return plan


def port_hf_state_dict(hf_state_dict: Mapping[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Return our ``GPT`` state dict for ``config`` made from a Hugging Face GPT-2 state dict.

    Keys may carry the ``transformer.`` prefix or not; mask buffers are dropped; the four Conv1D weights are
    transposed (into new tensors in ``nn.Linear``'s row order); ``lm_head.weight`` is ``wte``'s tensor (tied).
    Every key and shape is checked, and a mismatch raises ``PortingError`` naming the key and both shapes.
    """
    plan = _port_plan(hf_state_dict.keys(), lambda k: hf_state_dict[k].shape, config)
    ported = {key: hf_state_dict[hf_key].t().contiguous() if transpose else hf_state_dict[hf_key]
              for hf_key, key, transpose in plan}
    ported["lm_head.weight"] = ported["transformer.wte.weight"]
    return ported


def export_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Return ``model``'s weights as a Hugging Face ``GPT2LMHeadModel`` state dict (the inverse of porting).

    The tied head is left out, as ``save_pretrained`` leaves it out: loading re-ties it to ``wte``.
    """
    exported = {}
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight":
            continue
        exported[key] = tensor.t().contiguous() if key.endswith(TRANSPOSED) else tensor.contiguous()
    return exported


def save_hf_folder(model: GPT, folder: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``model`` as a Hugging Face folder (``config.json`` + ``model.safetensors``); return the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf_config = config_to_hf(model.config)
    hf_config["dtype"] = str(dtype).removeprefix("torch.")
    (folder / HF_CONFIG).write_text(json.dumps(hf_config, indent=2) + "\n")
    tensors = {k: v.detach().to("cpu", dtype) for k, v in export_hf_state_dict(model).items()}
    save_file(tensors, folder / HF_WEIGHTS, metadata={"format": "pt"})
    return folder


def load_hf_folder(folder: str | Path, dtype: torch.dtype = torch.float32) -> GPT:
    """Return a ``GPT`` (in eval mode) loaded from a Hugging Face GPT-2 folder written by ``save_pretrained``.

    The model's parameters are allocated once, empty, and each tensor of ``model.safetensors`` is read on its own
    and copied into its parameter (the Conv1D weights transposed on the way), so loading holds the weights about
    once, plus one tensor. Any tensor holding NaN or infinity is refused, by name.
    """
    folder = Path(folder)
    for filename in (HF_CONFIG, HF_WEIGHTS):
        if not (folder / filename).is_file():
            raise PortingError(f"{folder} has no {filename}; a Hugging Face GPT-2 folder needs config.json and {HF_WEIGHTS}")
    try:
        hf_config = json.loads((folder / HF_CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PortingError(f"{folder / HF_CONFIG} is not valid JSON: {e}") from None
    config = config_from_hf(hf_config)
    weights = folder / HF_WEIGHTS
    try:
        with safe_open(weights, framework="pt") as f:
            plan = _port_plan(f.keys(), lambda k: f.get_slice(k).get_shape(), config)
            model = _empty_model(config, dtype)
            _copy_into(model, plan, f.get_tensor, weights)
    except SafetensorError as e:
        raise PortingError(f"{weights} is not a readable safetensors file ({str(e).splitlines()[0]})") from None
    return model.eval()


def _empty_model(config: GPTConfig, dtype: torch.dtype) -> GPT:
    # built on the meta device (no memory, no random init), then given real but unfilled memory once
    with torch.device("meta"):
        model = GPT(config).to(dtype)
    model.to_empty(device="cpu")
    model.lm_head.weight = model.transformer.wte.weight  # keep the tie whatever to_empty did with it
    return model


@torch.no_grad()
def _copy_into(model: GPT, plan: list[tuple[str, str, bool]], read: Callable[[str], torch.Tensor],
               source: Path) -> None:
    params = model.state_dict()  # the model's own tensors: copying into them fills the model
    # the biggest tensors first, while little of the model is filled yet: the one tensor read at a time then
    # never sits on top of an almost full model
    for hf_key, key, transpose in sorted(plan, key=lambda step: -params[step[1]].numel()):
        tensor = read(hf_key)
        if tensor.is_floating_point() and not _all_finite(tensor):
            raise PortingError(f"{source}: tensor {hf_key!r} holds NaN or infinite values")
        params[key].copy_(tensor.t() if transpose else tensor)  # converts the file's dtype too


def _all_finite(tensor: torch.Tensor) -> bool:
    # any NaN or infinity makes the sum NaN or infinite, and summing is fast; a sum of huge finite values can
    # overflow too, so only then is every element looked at
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def hub_repo_ids(name: str) -> tuple[str, ...]:
    """Return the Hugging Face repository ids a GPT-2 size may be stored under (new name first, old alias next)."""
    return (f"openai-community/{name}", name)


def _find_in_hf_cache(name: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for repo_id in hub_repo_ids(name):
        found = [try_to_load_from_cache(repo_id, f) for f in (HF_CONFIG, HF_WEIGHTS)]
        if all(isinstance(p, str) for p in found):
            return Path(found[0]).parent
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    # Without this check, huggingface_hub spends ~25 s retrying before it gives up on a machine with no network.
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urllib.parse.urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def download_gpt2(name: str) -> Path:
    """Return a local folder holding GPT-2 ``name`` in Hugging Face format: from the cache, else from the Hub.

    Raises ``ModelNotAvailableError`` at once, with what to do, when it is not cached and the Hub is out of reach.
    """
    if name not in GPT2_DIMS:
        raise ValueError(f"unknown GPT-2 size {name!r}; choose one of {', '.join(GPT2_DIMS)}")
    cached = _find_in_hf_cache(name)
    if cached is not None:
        return cached
    repo_id = hub_repo_ids(name)[0]
    if not _hub_reachable():
        from huggingface_hub import constants

        raise ModelNotAvailableError(
            f"{name} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub cannot be reached; "
            f"on a machine with network run `hf download {repo_id} {HF_CONFIG} {HF_WEIGHTS}` "
            f"(or use init_from='pocket', which ships with nanogpt_edu)"
        )
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, allow_patterns=[HF_CONFIG, HF_WEIGHTS]))


def from_pretrained(name_or_path: str | Path, dtype: torch.dtype = torch.float32) -> GPT:
    """Return a ``GPT`` in eval mode with GPT-2 weights ported from Hugging Face's format.

    ``name_or_path`` is a GPT-2 size (``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``: found in the Hugging
    Face cache, or downloaded when online) or a local folder written by ``save_pretrained``.
    """
    if str(name_or_path) in GPT2_DIMS and not os.path.isdir(name_or_path):
        folder = download_gpt2(str(name_or_path))
    elif os.path.isdir(name_or_path):
        folder = Path(name_or_path)
    else:
        raise PortingError(
            f"{name_or_path!r} is neither a GPT-2 size ({', '.join(GPT2_DIMS)}) nor a folder holding "
            f"{HF_CONFIG} and {HF_WEIGHTS}"
        )
    return load_hf_folder(folder, dtype=dtype)
