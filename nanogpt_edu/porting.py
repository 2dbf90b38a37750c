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
import logging
import os
import socket
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.overrides import TorchFunctionMode

from .errors import NanogptEduError, shown
from .limits import MAX_CONFIG_BYTES, check_memory, check_model_dims, read_bounded, refuse_system_file
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
HUB_TIMEOUT = 5.0  # seconds to wait for the Hub to answer one request before giving up


class PortingError(NanogptEduError):
    """A state dict or folder that cannot be ported; the message names the key or file and what was wrong."""


class ModelNotAvailableError(NanogptEduError):
    """GPT-2 weights that are neither on this machine nor downloadable right now."""


def gpt2_config(name: str) -> GPTConfig:
    """Return the ``GPTConfig`` of one of the four GPT-2 sizes."""
    if not isinstance(name, str) or name not in GPT2_DIMS:
        raise PortingError(f"unknown GPT-2 size {shown(name)}; choose one of {', '.join(GPT2_DIMS)}")
    return GPTConfig(vocab_size=N_VOCAB, block_size=1024, bias=True, **GPT2_DIMS[name])


def config_from_hf(hf_config: Mapping, source: str | Path = HF_CONFIG) -> GPTConfig:
    """Return the ``GPTConfig`` described by a Hugging Face GPT-2 ``config.json`` (as a dict).

    Every value is checked (types, ranges, what our GPT implements) before anything is built; a problem raises
    ``PortingError`` naming ``source`` (the file the dict came from) and the key.
    """
    if not isinstance(hf_config, Mapping):
        raise PortingError(f"{source} must hold a JSON object, not a {type(hf_config).__name__}")
    if hf_config.get("model_type", "gpt2") != "gpt2":
        raise PortingError(f"{source} describes a {shown(hf_config['model_type'])} model, not a GPT-2")
    dims = dict(block_size=hf_config.get("n_positions", 1024), vocab_size=hf_config.get("vocab_size", N_VOCAB),
                n_layer=hf_config.get("n_layer", 12), n_head=hf_config.get("n_head", 12),
                n_embd=hf_config.get("n_embd", 768))
    check_model_dims(dims, str(source), PortingError)
    if hf_config.get("n_inner") not in (None, 4 * dims["n_embd"]):
        raise PortingError(f"{source} sets n_inner={shown(hf_config['n_inner'])}; our MLP is always 4 * n_embd wide")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
        if hf_config.get(flag):
            raise PortingError(f"{source} sets {flag}={shown(hf_config[flag])}, which our GPT does not implement")
    if not hf_config.get("tie_word_embeddings", True):
        raise PortingError(f"{source} sets tie_word_embeddings=false; our GPT always ties the head to wte")
    activation = hf_config.get("activation_function", "gelu_new")
    gelus = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}
    if not isinstance(activation, str) or activation not in gelus:
        raise PortingError(f"{source} uses activation_function={shown(activation)}; supported: {', '.join(gelus)}")
    # dropout=0: we port for inference, where dropout would only add noise
    return GPTConfig(**dims, dropout=0.0, bias=True, gelu=gelus[activation])


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


class _NoInitOnMeta(TorchFunctionMode):
    """Skips the random init of tensors on the meta device: they have no values to fill, and torch's meta version
    of the init loads ``torch._dynamo`` on its first call (about 1.5 s, in every process that builds a model)."""

    INIT = {torch.nn.init.normal_, torch.nn.init.uniform_, torch.nn.init.kaiming_uniform_, torch.nn.init.zeros_,
            torch.nn.init.ones_, torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.zero_}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensor = args[0] if args else kwargs.get("tensor")  # nn.init passes it by name
        if func in self.INIT and isinstance(tensor, torch.Tensor) and tensor.is_meta:
            return tensor
        return func(*args, **kwargs)


def _meta_model(config: GPTConfig) -> GPT:
    # built on the meta device: no memory and no random init, even for gpt2-xl
    with torch.device("meta"), _NoInitOnMeta():
        return GPT(config)


def _expected_shapes(config: GPTConfig) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in _meta_model(config).state_dict().items()}


HEAD = "lm_head.weight"  # GPT-2's output head: the token embedding's own tensor (tied), never a separate one


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
    if HEAD in hf_state_dict:
        _check_tied(hf_state_dict[HEAD], ported["transformer.wte.weight"], "the Hugging Face state dict")
    return ported


@torch.no_grad()
def _check_tied(head: torch.Tensor, wte: torch.Tensor, source, error: type[NanogptEduError] = PortingError) -> None:
    # our GPT ties the head to wte, as GPT-2 does; a checkpoint whose own head differs would give other logits
    # (transformers then keeps the two apart), so it is refused rather than loaded with the wrong head
    if not isinstance(head, torch.Tensor) or head.shape != wte.shape:
        same = False
    elif (head.dtype, head.device, head.stride(), head.data_ptr()) == (wte.dtype, wte.device, wte.stride(),
                                                                        wte.data_ptr()):
        same = True  # one tensor saved under both names, as torch.save writes a tied model
    else:
        same = torch.equal(head.to(device=wte.device, dtype=wte.dtype), wte)
    if not same:
        raise error(f"{source}: {HEAD!r} differs from 'transformer.wte.weight'; this GPT ties the output "
                    "head to the token embedding, as GPT-2 does, so a separate head cannot be loaded")


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
    if not isinstance(folder, (str, os.PathLike)):
        raise PortingError(f"folder must be a path, got {shown(folder)}")
    folder = Path(folder)
    for filename in (HF_CONFIG, HF_WEIGHTS):
        if not os.path.lexists(folder / filename):
            raise PortingError(f"{folder} has no {filename}; a Hugging Face GPT-2 folder needs config.json and {HF_WEIGHTS}")
    config = read_hf_config(folder / HF_CONFIG)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise PortingError(f"dtype must be a floating-point torch dtype, got {shown(dtype)}")
    check_memory(config, str(folder / HF_CONFIG), PortingError, dtype.itemsize)
    weights = folder / HF_WEIGHTS
    if not os.path.isfile(weights):
        raise PortingError(f"{weights} is not a regular file")
    refuse_system_file(os.path.realpath(weights), weights, "weights file", PortingError)
    try:
        with safe_open(weights, framework="pt") as f:
            plan = _port_plan(f.keys(), lambda k: f.get_slice(k).get_shape(), config)
            model = _empty_model(config, dtype)
            _copy_into(model, plan, f.get_tensor, weights)
            if HEAD in f.keys():
                _check_tied(f.get_tensor(HEAD), model.transformer.wte.weight, weights)
    except (SafetensorError, OSError) as e:
        raise PortingError(f"{weights} is not a readable safetensors file ({_first_line(e)})") from None
    return model.eval()


def read_hf_config(path: str | Path) -> GPTConfig:
    """Return the ``GPTConfig`` of a Hugging Face ``config.json`` (at most 64 KiB of JSON; see ``config_from_hf``)."""
    data = read_bounded(path, MAX_CONFIG_BYTES, "config file", PortingError)
    try:
        hf_config = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, nested too deeply, a 5000-digit number
        raise PortingError(f"{path} is not valid JSON: {_first_line(e)}") from None
    return config_from_hf(hf_config, path)


def _first_line(error: BaseException) -> str:
    # libraries' messages may be empty or run over several lines; an error line of ours quotes one line
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _empty_model(config: GPTConfig, dtype: torch.dtype) -> GPT:
    # built on the meta device (no memory, no random init), then given real but unfilled memory once
    model = _meta_model(config).to(dtype)
    try:
        model.to_empty(device="cpu")
    except (RuntimeError, MemoryError):  # the memory check estimates; the allocator has the last word
        raise PortingError(f"not enough memory for a model of {model.get_num_params(False):,} parameters") from None
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
        if not tensor.is_floating_point():
            raise PortingError(f"{source}: tensor {hf_key!r} has dtype {tensor.dtype}, not a floating-point type")
        params[key].copy_(tensor.t() if transpose else tensor)  # converts the file's dtype too
        # checked after the conversion: a float64 1e300 is finite in the file but infinite in float32
        if not _all_finite(params[key]):
            raise PortingError(f"{source}: tensor {hf_key!r} holds NaN or infinite values")


def _all_finite(tensor: torch.Tensor) -> bool:
    # any NaN or infinity makes the sum NaN or infinite, and summing is fast; a sum of huge finite values can
    # overflow too, so only then is every element looked at
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def hub_repo_ids(name: str) -> tuple[str, ...]:
    """Return the Hugging Face repository ids a GPT-2 size may be stored under (new name first, old alias next)."""
    return (f"openai-community/{name}", name)


def _huggingface_hub():
    # huggingface_hub reads its HF_* environment variables on import, and a bad one (HF_HUB_ETAG_TIMEOUT=abc)
    # makes the import itself fail
    try:
        import huggingface_hub
        import huggingface_hub.constants  # where the environment is read (the package imports lazily)
    except Exception as e:
        raise ModelNotAvailableError(f"huggingface_hub cannot start ({_first_line(e)}): check the HF_* environment "
                                     "variables") from None
    return huggingface_hub


def _find_in_hf_cache(name: str) -> Path | None:
    hub = _huggingface_hub()
    for repo_id in hub_repo_ids(name):
        try:
            found = [hub.try_to_load_from_cache(repo_id, f) for f in (HF_CONFIG, HF_WEIGHTS)]
        except (OSError, ValueError):  # a damaged cache counts as an empty one
            continue
        if all(isinstance(p, str) for p in found):
            return Path(found[0]).parent
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    # Without this check, huggingface_hub spends ~25 s retrying before it gives up on a machine with no network.
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        url = urllib.parse.urlparse(constants.ENDPOINT)
        port = url.port or (80 if url.scheme == "http" else 443)  # .port raises ValueError when out of range
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("not an http(s) URL")
    except ValueError as e:
        raise ModelNotAvailableError(f"HF_ENDPOINT={shown(constants.ENDPOINT)} is not a URL the Hub can be reached "
                                     f"at ({e})") from None
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except (OSError, ValueError):  # ValueError: a host name that cannot be encoded
        return False
    return True


def gpt2_availability() -> dict[str, str]:
    """Return, for each GPT-2 size, where its weights can come from on this machine right now: "in the Hugging
    Face cache", "downloadable" (not cached, but the Hub answers) or "not available"."""
    try:
        online = _hub_reachable()
    except ModelNotAvailableError:  # an HF_ENDPOINT that is no URL: no Hub
        online = False
    availability = {}
    for name in GPT2_DIMS:
        try:
            cached = _find_in_hf_cache(name) is not None
        except ModelNotAvailableError:  # huggingface_hub cannot start: nothing cached that we can reach
            cached = False
        availability[name] = "in the Hugging Face cache" if cached else ("downloadable" if online else "not available")
    return availability


def download_gpt2(name: str) -> Path:
    """Return a local folder holding GPT-2 ``name`` in Hugging Face format: from the cache, else from the Hub.

    Raises ``ModelNotAvailableError`` with what to do, at once when it is not cached and the Hub is out of reach,
    and within seconds when the Hub does not answer (``HUB_TIMEOUT``, or ``HF_HUB_ETAG_TIMEOUT`` when set) or
    answers with an error.
    """
    if not isinstance(name, str) or name not in GPT2_DIMS:
        raise PortingError(f"unknown GPT-2 size {shown(name)}; choose one of {', '.join(GPT2_DIMS)}")
    hub = _huggingface_hub()
    cached = _find_in_hf_cache(name)
    if cached is not None:
        return cached
    repo_id = hub_repo_ids(name)[0]
    missing = f"{name} is not in the Hugging Face cache ({hub.constants.HF_HUB_CACHE})"
    advice = (f"on a machine with network run `hf download {repo_id} {HF_CONFIG} {HF_WEIGHTS}` "
              f"(or use init_from='pocket', which ships with nanogpt_edu)")
    if not _hub_reachable():
        raise ModelNotAvailableError(f"{missing} and the Hub cannot be reached; {advice}")
    timeout = hub.constants.HF_HUB_ETAG_TIMEOUT if "HF_HUB_ETAG_TIMEOUT" in os.environ else HUB_TIMEOUT
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its "Retrying in 1s" notes would be more lines; our one line says it all
    try:
        # huggingface_hub's own client waits forever by default: every request here carries a timeout
        endpoint = hub.constants.ENDPOINT  # the one _hub_reachable checked
        revision = hub.HfApi(endpoint=endpoint).model_info(repo_id, timeout=timeout).sha
        for filename in (HF_CONFIG, HF_WEIGHTS):
            path = hub.hf_hub_download(repo_id, filename, revision=revision, etag_timeout=timeout, endpoint=endpoint)
    except Exception as e:  # HTTP errors, timeouts, a full disk, an unwritable cache: all say the same to the user
        raise ModelNotAvailableError(f"{missing} and downloading it from {hub.constants.ENDPOINT} failed "
                                     f"({type(e).__name__}: {_first_line(e)}); {advice}") from None
    finally:
        hub_log.setLevel(level)
    return Path(path).parent


def from_pretrained(name_or_path: str | Path, dtype: torch.dtype = torch.float32) -> GPT:
    """Return a ``GPT`` in eval mode with GPT-2 weights ported from Hugging Face's format.

    ``name_or_path`` is a GPT-2 size (``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``: found in the Hugging
    Face cache, or downloaded when online) or a local folder written by ``save_pretrained``.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise PortingError(f"name_or_path must be a GPT-2 size or a folder, got {shown(name_or_path)}")
    if str(name_or_path) in GPT2_DIMS and not os.path.isdir(name_or_path):
        folder = download_gpt2(str(name_or_path))
    elif os.path.isdir(name_or_path):
        folder = Path(name_or_path)
    else:
        raise PortingError(
            f"{shown(str(name_or_path))} is neither a GPT-2 size ({', '.join(GPT2_DIMS)}) nor a folder holding "
            f"{HF_CONFIG} and {HF_WEIGHTS}"
        )
    return load_hf_folder(folder, dtype=dtype)
