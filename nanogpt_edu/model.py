"""The GPT-2 architecture, written the way nanoGPT's ``model.py`` writes it.

One class per concept: ``LayerNorm``, ``CausalSelfAttention``, ``MLP``, ``Block`` and ``GPT``, configured by the
``GPTConfig`` dataclass; ``KVCache``, ``DecodeLinear``, ``GPT.decode_step`` and its two sets of operations
(``TorchDecodeOps``, ``KernelDecodeOps``) are what make generating one token at a time fast. Parameter names match
Hugging Face's ``GPT2LMHeadModel`` so that porting weights is a matter of copying tensors (see
``nanogpt_edu.porting``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn import functional as F

from . import kernel
from .kernel import can_use, load_kernel

GELU_KINDS = ("tanh", "exact")
LAYER_NORM_EPS = 1e-5  # what GPT-2 was trained with (Hugging Face's layer_norm_epsilon)


@dataclass
class GPTConfig:
    """The shape of a GPT. The defaults are GPT-2 small (124M parameters).

    ``gelu`` picks the MLP's activation. GELU(x) = x * Phi(x), with Phi the normal distribution's CDF. GPT-2 was
    trained (in 2019 TensorFlow) with a tanh-based approximation of Phi, and Hugging Face calls that "gelu_new";
    nanoGPT's current code uses PyTorch's exact, erf-based GELU. The two differ by at most about 1e-3 per
    activation, which is harmless for training from scratch but moves a ported GPT-2's logits by more than a
    parity check allows, so the default is "tanh": ported weights then reproduce GPT-2 to float precision.
    """

    block_size: int = 1024  # longest context the model can see (number of position embeddings)
    vocab_size: int = 50257  # GPT-2's BPE vocabulary: 50,000 merges + 256 bytes + <|endoftext|>
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # GPT-2 has biases in its Linears and LayerNorms; nanoGPT can train without
    gelu: str = "tanh"  # "tanh" as GPT-2 was trained, or "exact" (erf) as nanoGPT's current code uses

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.gelu not in GELU_KINDS:
            raise ValueError(f"gelu must be one of {GELU_KINDS}, got {self.gelu!r}")
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class KVCache:
    """Keys and values of every layer for the tokens seen so far, in buffers allocated once (no growth per step).

    Without a cache, generating each new token re-runs the whole context through every layer. The keys and values
    of the earlier positions do not change (attention is causal), so a cache keeps them: the prompt is run once
    ("prefill"), then each step runs only the new token and appends its key and value ("decode").
    """

    def __init__(self, config: "GPTConfig", batch_size: int, device: torch.device, dtype: torch.dtype,
                 capacity: int | None = None):
        head_size = config.n_embd // config.n_head
        self.capacity = config.block_size if capacity is None else capacity  # positions the buffers can hold
        shape = (config.n_layer, batch_size, config.n_head, self.capacity, head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # how many positions hold valid keys and values

    def reset(self) -> None:
        """Forget every cached position (the buffers are reused)."""
        self.length = 0


# oneDNN's linear kernel, in PyTorch builds that include oneDNN (torch.backends.mkldnn); see DecodeLinear
_ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
# A oneDNN call costs about 30 microseconds before it reads anything, so it only pays off on big weights: below
# about half a million numbers (every pocket-model layer) BLAS is faster; GPT-2 small's smallest, 768 x 768, gains.
ONEDNN_MIN_WEIGHTS = 1 << 19


class DecodeLinear(nn.Linear):
    """``nn.Linear`` that multiplies one position per sequence with a memory-speed kernel when nothing needs gradients.

    Generating a token multiplies a single row by every weight matrix, so a decode step lasts as long as reading the
    weights from memory takes, and PyTorch's usual route for a single row reads them slower than the memory allows
    (``bench/matvec.py`` measures the routes side by side). On a CPU in fp32 with no gradients this layer uses the
    compiled kernel of ``nanogpt_edu.kernel`` if the machine could build it, else oneDNN for big weights (see
    ``ONEDNN_MIN_WEIGHTS``). It is the same product up to float rounding (the sums run in another order).
    Parameters and state_dict are nn.Linear's. Training, several positions at once, other dtypes and other devices
    take the ordinary ``F.linear``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._one_row_per_sequence(x):
            B, _, C = x.shape
            return one_row_linear(x.reshape(B, C), self).view(B, 1, self.out_features)
        return F.linear(x, self.weight, self.bias)

    def _one_row_per_sequence(self, x: torch.Tensor) -> bool:
        # cheapest checks first: this runs for every Linear of every step
        return (
            x.dim() == 3
            and x.size(1) == 1
            and not torch.is_grad_enabled()  # neither fast route has a backward
            and not torch.compiler.is_compiling()  # torch.compile makes its own choice of kernels
        )


def one_row_linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """Return ``layer(x)`` for ``x`` of shape (B, in_features), one row per sequence, by the fastest route here.

    The compiled kernel where it was built and can read the tensors, else oneDNN for big fp32 weights on a CPU,
    else ``F.linear``. For inference only: neither fast route computes gradients.
    """
    weight, bias = layer.weight, layer.bias
    if load_kernel() is not None and x.dim() == 2 and can_use(x, weight, bias):
        return kernel.linear(x, weight, bias)
    if (weight.numel() >= ONEDNN_MIN_WEIGHTS and _ONEDNN_LINEAR is not None and x.device.type == "cpu"
            and x.dtype == weight.dtype == torch.float32):
        return _ONEDNN_LINEAR(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's own could not turn the bias off before version 2.1)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, LAYER_NORM_EPS)


class TorchDecodeOps:
    """The two operations of ``GPT.decode_step``, in PyTorch: the reference ``KernelDecodeOps`` is tested against.

    Both work on one position per sequence, (B, C) rows. With these, ``decode_step`` computes exactly what the
    modules' ``forward`` computes (the same numbers, tested).
    """

    @staticmethod
    def linear(x: torch.Tensor, layer: nn.Linear, norm: LayerNorm | None = None, gelu: str | None = None,
               add_to: torch.Tensor | None = None) -> torch.Tensor:
        """Return ``layer(norm(x))``, through GELU if ``gelu`` names its ``approximate`` ("none" or "tanh"), and
        plus ``add_to`` if given (a residual connection)."""
        if norm is not None:
            x = F.layer_norm(x, (x.size(-1),), norm.weight, norm.bias, LAYER_NORM_EPS)
        y = one_row_linear(x, layer)
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
    """``TorchDecodeOps`` done by the compiled kernel (``nanogpt_edu.kernel``): the same results up to float rounding.

    Each small PyTorch operation of a step (a layer norm, a GELU, a cache write) costs tens of microseconds once
    the weights streaming through the CPU's caches have pushed out what it needs; done inside the kernel's calls
    they cost next to nothing, and the residual stream is updated in place. A tensor the kernel cannot read
    (see ``kernel.can_use``) sends that operation to ``TorchDecodeOps``. For inference: no gradients.
    """

    @staticmethod
    def linear(x: torch.Tensor, layer: nn.Linear, norm: LayerNorm | None = None, gelu: str | None = None,
               add_to: torch.Tensor | None = None) -> torch.Tensor:
        weight, bias = layer.weight, layer.bias  # read once: a module's attributes are slow to look up
        norm_weight, norm_bias = (None, None) if norm is None else (norm.weight, norm.bias)
        if not can_use(x, weight, bias, add_to, norm_weight, norm_bias):
            return TorchDecodeOps.linear(x, layer, norm, gelu, add_to)
        norm_args = None if norm is None else (norm_weight, norm_bias, LAYER_NORM_EPS)
        return kernel.linear(x, weight, bias, gelu, add_to, norm_args)

    @staticmethod
    def attend(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, position: int) -> torch.Tensor:
        if not can_use(qkv, k_cache, v_cache):
            return TorchDecodeOps.attend(qkv, k_cache, v_cache, position)
        return kernel.attend(qkv, k_cache, v_cache, position)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which each position may only look at itself and earlier positions."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # one matmul makes queries, keys and values for all heads at once
        self.c_attn = DecodeLinear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = DecodeLinear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.size()  # batch, sequence length, n_embd
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, n_head, T, head_size): heads become a batch dimension
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if cache is None:
            # scaled_dot_product_attention picks a fused kernel where one exists; is_causal applies the triangle mask
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
            )  # (B, n_head, T, head_size)
        else:
            y = self._attend_with_cache(q, k, v, cache, layer)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))

    def _attend_with_cache(self, q, k, v, cache: KVCache, layer: int) -> torch.Tensor:
        start, T = cache.length, q.size(2)
        cache.k[layer, :, :, start : start + T] = k  # write the new positions into the preallocated buffers
        cache.v[layer, :, :, start : start + T] = v
        k_all = cache.k[layer, :, :, : start + T]  # (B, n_head, start + T, head_size)
        v_all = cache.v[layer, :, :, : start + T]
        if T == 1:  # decode: the one new query may look at every cached position, so no mask at all
            return F.scaled_dot_product_attention(q, k_all, v_all)
        if start == 0:  # prefill: queries and keys line up, the usual triangle
            return F.scaled_dot_product_attention(q, k_all, v_all, is_causal=True)
        # several new tokens after cached ones: query i (at position start + i) sees keys 0 .. start + i
        mask = torch.ones(T, start + T, dtype=torch.bool, device=q.device).tril(diagonal=start)
        return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)


class MLP(nn.Module):
    """The feed-forward part of a block: widen 4x, GELU, narrow back."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = DecodeLinear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = DecodeLinear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        # GPT-2 was trained with the tanh approximation of GELU (Hugging Face calls it "gelu_new"); the exact,
        # erf-based GELU differs by up to ~1e-3 per activation, small but enough to move ported logits visibly.
        self.gelu_approximate = "tanh" if config.gelu == "tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.c_fc(x), approximate=self.gelu_approximate)
        return self.dropout(self.c_proj(x))


class Block(nn.Module):
    """One transformer block: attention then MLP, each on a layer-normed input and added back (pre-norm)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """A GPT-2-style language model: token + position embeddings, ``n_layer`` blocks, a final norm, a tied head."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
                wpe=nn.Embedding(config.block_size, config.n_embd),  # position embeddings
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = DecodeLinear(config.n_embd, config.vocab_size, bias=False)
        # weight tying: the head that scores tokens is the same matrix that embeds them (as in GPT-2)
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # residual projections get a smaller init so the residual stream does not grow with depth (GPT-2 paper)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Return the number of parameters, counting the tied embedding/head matrix once.

        With ``non_embedding=True`` (nanoGPT's default) the position embeddings are left out; the token
        embeddings stay in because, being tied, they are also the weights of the output layer.
        """
        n_params = sum(p.numel() for p in self.parameters())  # parameters() yields a shared tensor once
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(logits, loss)`` for token ids ``idx`` of shape (B, T).

        With ``targets`` (B, T) the logits cover every position, (B, T, vocab_size), and ``loss`` is the mean
        cross-entropy (targets of -1 are ignored). Without targets only the last position is scored, giving
        (B, 1, vocab_size) and ``loss=None``: generation needs nothing else, and it saves the big head matmul.
        With a ``cache`` (see ``new_cache``), ``idx`` holds only the tokens that follow the cached ones.
        """
        B, T = idx.size()
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"cannot forward a sequence of {start + T} tokens: block_size is {self.config.block_size}; "
                f"crop the context to its last {self.config.block_size} tokens first"
            )
        if cache is not None and start + T > cache.capacity:
            raise ValueError(f"the cache holds {cache.capacity} positions, {start + T} asked: make it with "
                             f"new_cache(batch_size, capacity={start + T}) or more")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, n_embd)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)
        if cache is not None:
            cache.length += T
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)  # (B, T, vocab_size)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
            return logits, loss
        # list index [-1] keeps the time dimension: (B, 1, vocab_size)
        return self.lm_head(x[:, [-1], :]), None

    @torch.no_grad()
    def decode_step(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Return the logits (B, 1, vocab_size) of one new token per sequence, ``idx`` (B, 1), after the cached ones.

        The same computation as ``self(idx, cache=cache)``, written as one flat loop over the layers with the
        operations of ``decode_ops``: the compiled kernel's where it was built, else PyTorch's (then the very same
        numbers as ``forward``, tested). On the README's 2-core test machine a GPT-2 small step spends about 18 ms
        reading its 500 MB of weights; everything around those products (with ``generate``'s sampling) took
        about 6 ms through ``forward``'s ~140 module calls, 4 ms in this loop with PyTorch's operations and 2 ms
        with the kernel's (``bench/decode_parts.py``, products replaced by zeros). ``generate`` uses it for its
        one-token steps when ``uses_flat_decode()`` says it may.
        """
        B, T = idx.size()
        start = cache.length
        if T != 1 or start + 1 > cache.capacity:
            return self(idx, cache=cache)[0]  # forward checks and explains what is wrong
        ops = self.decode_ops(cache)
        x = self.transformer.wte.weight[idx[:, 0]] + self.transformer.wpe.weight[start]  # (B, C), a new tensor
        for layer, block in enumerate(self.transformer.h):
            qkv = ops.linear(x, block.attn.c_attn, norm=block.ln_1)  # c_attn(ln_1(x))
            y = ops.attend(qkv, cache.k[layer], cache.v[layer], start)
            x = ops.linear(y, block.attn.c_proj, add_to=x)  # x + c_proj(y)
            h = ops.linear(x, block.mlp.c_fc, norm=block.ln_2, gelu=block.mlp.gelu_approximate)  # gelu(c_fc(ln_2(x)))
            x = ops.linear(h, block.mlp.c_proj, add_to=x)  # x + c_proj(h)
        cache.length += 1
        return ops.linear(x, self.lm_head, norm=self.transformer.ln_f).view(B, 1, -1)

    def decode_ops(self, cache: KVCache) -> type[TorchDecodeOps] | type[KernelDecodeOps]:
        """Return the operations ``decode_step`` uses: ``KernelDecodeOps`` if the kernel is built and can read the
        cache (contiguous fp32 on the CPU), else ``TorchDecodeOps``."""
        if load_kernel() is not None and can_use(cache.k, cache.v):
            return KernelDecodeOps
        return TorchDecodeOps

    def uses_flat_decode(self) -> bool:
        """Return True if ``decode_step`` computes what the modules would: eval mode (or no dropout), no hooks.

        ``decode_step`` skips the dropout layers and the modules' forward methods, so a model in training mode
        with dropout, or one with forward hooks (say, to record activations), decodes through ``forward``.
        """
        if self.training and self.config.dropout > 0:
            return False
        hooks = nn.modules.module
        if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
            return False
        return not any(m._forward_hooks or m._forward_pre_hooks for m in self.modules())

    def new_cache(self, batch_size: int, capacity: int | None = None) -> KVCache:
        """Return an empty ``KVCache`` for ``batch_size`` sequences, on this model's device and dtype.

        It holds ``capacity`` positions, ``block_size`` by default; a shorter generation can ask for less (GPT-2
        small's full cache is 75 MB per sequence, gpt2-xl's 630 MB).
        """
        capacity = self.config.block_size if capacity is None else capacity
        if not 1 <= capacity <= self.config.block_size:
            raise ValueError(f"capacity must be between 1 and block_size ({self.config.block_size}), got {capacity}")
        weight = self.lm_head.weight
        return KVCache(self.config, batch_size, device=weight.device, dtype=weight.dtype, capacity=capacity)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **kwargs) -> "GPT":
        """Return a ``GPT`` with GPT-2 weights: a name (``gpt2`` ... ``gpt2-xl``) or a Hugging Face folder.

        See ``nanogpt_edu.porting.from_pretrained``, which does the work.
        """
        from .porting import from_pretrained  # porting imports this module, so import it late

        return from_pretrained(name_or_path, **kwargs)
