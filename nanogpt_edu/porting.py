"""Porting GPT-2 weights between Hugging Face's format and our ``GPT``, in both directions.

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
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from .model import GPT, GPTConfig

# The four GPT-2 sizes (nanoGPT keeps the same table in model.py). All share vocab 50257, block 1024 and biases.
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
    return GPTConfig(vocab_size=50257, block_size=1024, bias=True, **GPT2_DIMS[name])


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
        vocab_size=hf_config.get("vocab_size", 50257),
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
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
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


def port_hf_state_dict(hf_state_dict: Mapping[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Return our ``GPT`` state dict for ``config`` made from a Hugging Face GPT-2 state dict.

    Keys may carry the ``transformer.`` prefix or not; mask buffers are dropped; the four Conv1D weights are
    transposed; ``lm_head.weight`` is filled from ``wte`` when the checkpoint leaves it out (it is tied). Every
    key and shape is checked, and a mismatch raises ``PortingError`` naming the key and both shapes. Values are
    read one key at a time, so a lazy mapping (see ``SafetensorsFile``) never holds more than one extra tensor.
    """
    expected = _expected_shapes(config)
    lazy = isinstance(hf_state_dict, SafetensorsFile)  # a file read tensor by tensor, not a dict in memory
    ported: dict[str, torch.Tensor] = {}
    for hf_key in hf_state_dict.keys():
        if hf_key.endswith(IGNORED_SUFFIXES):
            continue
        key = _our_key(hf_key)
        if key not in expected:
            raise PortingError(f"unexpected key {hf_key!r} in the Hugging Face state dict (no such parameter)")
        if key.endswith(TRANSPOSED):
            hf_shape = hf_state_dict.shape(hf_key) if lazy else tuple(hf_state_dict[hf_key].shape)
            if len(hf_shape) != 2 or hf_shape[::-1] != tuple(expected[key]):
                raise PortingError(
                    f"shape mismatch for {hf_key!r}: Hugging Face has {hf_shape}, "
                    f"our GPT expects {tuple(expected[key])} after transposing the Conv1D weight, "
                    f"so {tuple(expected[key][::-1])} before"
                )
            # copied into nn.Linear's (out, in) row order, which the decode kernel reads row by row; from a file,
            # a few rows at a time, so porting never holds a second copy of a big matrix
            tensor = hf_state_dict.read_transposed(hf_key) if lazy else hf_state_dict[hf_key].t().contiguous()
        else:
            tensor = hf_state_dict[hf_key]
            if tensor.shape != expected[key]:
                raise PortingError(
                    f"shape mismatch for {hf_key!r}: Hugging Face has {tuple(tensor.shape)}, "
                    f"our GPT expects {tuple(expected[key])}"
                )
        ported[key] = tensor
    if "lm_head.weight" not in ported and "transformer.wte.weight" in ported:
        ported["lm_head.weight"] = ported["transformer.wte.weight"]
    missing = [k for k in expected if k not in ported]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise PortingError(f"missing key {missing[0]!r}{more} in the Hugging Face state dict")
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


# safetensors' dtype names -> torch dtypes (the ones a GPT-2 checkpoint can hold)
SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                      "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}


READ_CHUNK_BYTES = 4 << 20  # see SafetensorsFile.read_transposed


class SafetensorsFile(Mapping):
    """A read-only mapping over the tensors of a ``.safetensors`` file that reads each tensor only when asked.

    The format is an 8-byte header length, a JSON header (dtype, shape and byte range of every tensor), then the
    raw bytes. safetensors' own loader memory-maps the file, and every page it touches stays counted in the
    process's resident memory while the mapping lives, which doubles the peak while porting. Reading each tensor
    straight into its own buffer instead keeps the peak at the size of the weights.
    """

    def __init__(self, path: str | Path, dtype: torch.dtype | None = None):
        self.path = Path(path)
        self.dtype = dtype  # convert floating-point tensors to this as they are read (None: keep the file's)
        with open(self.path, "rb") as f:
            header_length = int.from_bytes(f.read(8), "little")
            try:
                header = json.loads(f.read(header_length))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise PortingError(f"{self.path} is not a safetensors file (its header is not JSON)") from None
        header.pop("__metadata__", None)
        self._entries = header
        self._data_start = 8 + header_length
        self._buffer = torch.empty(0, dtype=torch.uint8)  # reused by read_transposed

    def __getitem__(self, key: str) -> torch.Tensor:
        entry = self._entries[key]
        if entry["dtype"] not in SAFETENSORS_DTYPES:
            raise PortingError(f"{self.path}: tensor {key!r} has dtype {entry['dtype']}, which we do not read")
        start, end = entry["data_offsets"]
        raw = torch.empty(end - start, dtype=torch.uint8)
        with open(self.path, "rb") as f:
            f.seek(self._data_start + start)
            if f.readinto(raw.numpy()) != end - start:
                raise PortingError(f"{self.path} is truncated (tensor {key!r} is incomplete)")
        tensor = raw.view(SAFETENSORS_DTYPES[entry["dtype"]]).reshape(entry["shape"])
        if self.dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(self.dtype)  # one tensor at a time: a float16 file never exists twice in float32
        return tensor

    def shape(self, key: str) -> tuple[int, ...]:
        """Return the shape of tensor ``key`` without reading it."""
        return tuple(self._entries[key]["shape"])

    def read_transposed(self, key: str) -> torch.Tensor:
        """Return the 2-D tensor ``key`` transposed, as a new contiguous tensor, reading it a few rows at a time.

        A transpose needs a copy. Reading the whole matrix and then copying it would free a matrix-sized buffer
        for every tensor, and the C allocator keeps such freed memory for later (measured: the peak while porting
        gpt2-medium: 1.35x the weights that way, 1.06x with one reused buffer of at most 4 MB).
        """
        entry = self._entries[key]
        file_dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
        if file_dtype is None or len(entry["shape"]) != 2:
            raise PortingError(f"{self.path}: tensor {key!r} is not a 2-D matrix of a dtype we read")
        rows, cols = entry["shape"]
        dtype = self.dtype if self.dtype is not None and file_dtype.is_floating_point else file_dtype
        out = torch.empty(cols, rows, dtype=dtype)
        row_bytes = cols * file_dtype.itemsize
        chunk = max(1, READ_CHUNK_BYTES // max(row_bytes, 1))
        if self._buffer.numel() < min(chunk, rows) * row_bytes:
            self._buffer = torch.empty(min(chunk, rows) * row_bytes, dtype=torch.uint8)
        buffer = self._buffer
        with open(self.path, "rb") as f:
            f.seek(self._data_start + entry["data_offsets"][0])
            for first in range(0, rows, chunk):
                n = min(chunk, rows - first)
                part = buffer[: n * row_bytes]
                if f.readinto(part.numpy()) != n * row_bytes:
                    raise PortingError(f"{self.path} is truncated (tensor {key!r} is incomplete)")
                out[:, first : first + n] = part.view(file_dtype).view(n, cols).t()  # converts dtype too
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def load_hf_folder(folder: str | Path, dtype: torch.dtype = torch.float32) -> GPT:
    """Return a ``GPT`` (in eval mode) loaded from a Hugging Face GPT-2 folder written by ``save_pretrained``."""
    folder = Path(folder)
    for filename in (HF_CONFIG, HF_WEIGHTS):
        if not (folder / filename).is_file():
            raise PortingError(f"{folder} has no {filename}; a Hugging Face GPT-2 folder needs config.json and {HF_WEIGHTS}")
    try:
        hf_config = json.loads((folder / HF_CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PortingError(f"{folder / HF_CONFIG} is not valid JSON: {e}") from None
    config = config_from_hf(hf_config)
    ported = port_hf_state_dict(SafetensorsFile(folder / HF_WEIGHTS, dtype=dtype), config)
    with torch.device("meta"):
        model = GPT(config)  # no memory yet: load_state_dict(assign=True) adopts the loaded tensors
    model.load_state_dict(ported, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # assign=True replaced the parameter: tie it again
    return model.eval()


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
