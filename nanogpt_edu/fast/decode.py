"""The one-token decode step, written flat: what ``GPT.forward`` computes for one new token, with fewer calls.

When ``generate`` has a key/value cache, every step after the prompt runs a single new token through the model.
``GPT.forward`` does that through some ten module calls per layer, each with its own Python overhead, and with
one row per sequence that overhead is a large part of the step. ``decode_step`` is the same computation as one
loop over the layers with five calls per layer, against one of two interchangeable sets of operations:

* ``TorchDecodeOps``: plain PyTorch, the very operations the modules use (so the logits equal ``forward``'s,
  bit for bit; tested);
* ``KernelDecodeOps``: the compiled kernel of ``nanogpt_edu.fast.kernel``, which folds the layer norms, GELU,
  residual additions and attention into its few calls (the same numbers up to float rounding; tested).

``nanogpt_edu.sampling.generate`` asks ``decode_step_for`` once per call which step to use, if any.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn as nn
from torch.nn import functional as F

from ..model import GPT, LAYER_NORM_EPS, KVCache, LayerNorm
from . import kernel


class TorchDecodeOps:
    """The two operations of ``decode_step`` in plain PyTorch, on one position per sequence: (B, C) rows.

    With these, ``decode_step`` computes exactly what the modules' ``forward`` computes (tested bit for bit);
    they are the reference ``KernelDecodeOps`` is tested against, and what runs where the kernel cannot.
    """

    @staticmethod
    def linear(x: torch.Tensor, layer: nn.Linear, norm: LayerNorm | None = None, gelu: str | None = None,
               add_to: torch.Tensor | None = None) -> torch.Tensor:
        """Return ``layer(norm(x))``, through GELU if ``gelu`` names its ``approximate`` ("none" or "tanh"), and
        plus ``add_to`` if given (a residual connection)."""
        if norm is not None:
            x = F.layer_norm(x, (x.size(-1),), norm.weight, norm.bias, LAYER_NORM_EPS)
        y = F.linear(x, layer.weight, layer.bias)
        if gelu is not None:
            y = F.gelu(y, approximate=gelu)
        return y if add_to is None else add_to + y

    @staticmethod
    def attend(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, position: int) -> torch.Tensor:
        """Store the new keys and values at ``position`` of one layer's caches; return the attention output (B, C)."""
        B, n_head, _, head_size = k_cache.shape
        # (B, 3C) -> three (B, n_head, 1, head_size): with one position, the heads need no transpose
        q, k, v = qkv.view(B, 3, n_head, 1, head_size).unbind(1)
        k_cache[:, :, position : position + 1] = k
        v_cache[:, :, position : position + 1] = v
        y = F.scaled_dot_product_attention(q, k_cache[:, :, : position + 1], v_cache[:, :, : position + 1])
        return y.view(B, n_head * head_size)


class KernelDecodeOps:
    """``TorchDecodeOps`` done by the compiled kernel: the same results up to float rounding.

    Inside the kernel's calls the layer norms, GELU and cache writes cost next to nothing, and the residual stream
    is updated in place. Anything the kernel refuses (a tensor it cannot read: see ``kernel.can_use``) goes to
    ``TorchDecodeOps`` instead, one operation at a time. For inference: no gradients.
    """

    @staticmethod
    def linear(x: torch.Tensor, layer: nn.Linear, norm: LayerNorm | None = None, gelu: str | None = None,
               add_to: torch.Tensor | None = None) -> torch.Tensor:
        norm_args = None if norm is None else (norm.weight, norm.bias, LAYER_NORM_EPS)
        try:
            return kernel.linear(x, layer.weight, layer.bias, gelu, add_to, norm_args)
        except ValueError:  # the kernel checked the tensors before touching anything: PyTorch does this one
            return TorchDecodeOps.linear(x, layer, norm, gelu, add_to)

    @staticmethod
    def attend(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, position: int) -> torch.Tensor:
        try:
            return kernel.attend(qkv, k_cache, v_cache, position)
        except ValueError:
            return TorchDecodeOps.attend(qkv, k_cache, v_cache, position)


DecodeOps = type[TorchDecodeOps] | type[KernelDecodeOps]


@torch.no_grad()
def decode_step(model: GPT, idx: torch.Tensor, cache: KVCache, ops: DecodeOps = TorchDecodeOps) -> torch.Tensor:
    """Return the logits (B, 1, vocab_size) of one new token per sequence, ``idx`` (B, 1), after the cached ones.

    The same computation as ``model(idx, cache=cache)[0]`` (which it falls back to for anything but one token
    that fits in the cache), written as one flat loop over the layers with ``ops``' operations. It skips the
    dropout layers and the modules' ``forward`` methods: see ``can_decode_flat`` for when that is allowed.
    """
    B, T = idx.size()
    start = cache.length
    if T != 1 or start + 1 > cache.capacity:
        return model(idx, cache=cache)[0]  # forward checks and explains what is wrong
    x = model.transformer.wte.weight[idx[:, 0]] + model.transformer.wpe.weight[start]  # (B, C), a new tensor
    for layer, block in enumerate(model.transformer.h):
        qkv = ops.linear(x, block.attn.c_attn, norm=block.ln_1)  # c_attn(ln_1(x))
        y = ops.attend(qkv, cache.k[layer], cache.v[layer], start)
        x = ops.linear(y, block.attn.c_proj, add_to=x)  # x + c_proj(y)
        h = ops.linear(x, block.mlp.c_fc, norm=block.ln_2, gelu=block.mlp.gelu_approximate)  # gelu(c_fc(ln_2(x)))
        x = ops.linear(h, block.mlp.c_proj, add_to=x)  # x + c_proj(h)
    cache.length += 1
    return ops.linear(x, model.lm_head, norm=model.transformer.ln_f).view(B, 1, -1)


def can_decode_flat(model: torch.nn.Module) -> bool:
    """Return True if ``decode_step`` computes what ``model``'s modules would: our ``GPT``, eval mode (or no
    dropout), no forward hooks.

    A model wrapped by ``torch.compile`` or of another class runs its own forward; so does a model in training
    mode with dropout, or one with hooks (say, recording activations), since the flat step skips the modules.
    """
    if not isinstance(model, GPT) or (model.training and model.config.dropout > 0):
        return False
    hooks = nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def pick_ops(cache: KVCache) -> DecodeOps:
    """Return ``KernelDecodeOps`` if the kernel is built and can read the cache (contiguous fp32 on the CPU),
    else ``TorchDecodeOps``."""
    if kernel.load_kernel() is not None and kernel.can_use(cache.k, cache.v):
        return KernelDecodeOps
    return TorchDecodeOps


def decode_step_for(model: torch.nn.Module, cache: KVCache) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Return the function ``generate`` calls for each one-token step, ``step(idx) -> logits``, or ``None`` when
    the model's own ``forward`` must run (see ``can_decode_flat``). The operations are chosen here, once."""
    if not can_decode_flat(model):
        return None
    return partial(decode_step, model, cache=cache, ops=pick_ops(cache))
