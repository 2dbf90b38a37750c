"""The GPT-2 architecture, in the shape of nanoGPT's ``model.py``.

One class per concept, in the order a forward pass meets them: ``GPTConfig`` (the shape), ``LayerNorm``,
``CausalSelfAttention``, ``MLP``, ``Block``, then ``KVCache`` (keys and values kept between generation steps) and
``GPT`` itself, with nanoGPT's ``generate`` loop. Parameter names match Hugging Face's ``GPT2LMHeadModel``, so
porting OpenAI's weights is a matter of copying tensors (``nanogpt_edu.porting`` does it, as nanoGPT's
``GPT.from_pretrained`` does).

This file is the lesson: plain PyTorch, nothing else. The fast one-token decode step lives in its own wing,
``nanogpt_edu.fast``, which reads these modules' weights and is tested against them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

GELU_KINDS = ("tanh", "exact")
LAYER_NORM_EPS = 1e-5  # what GPT-2 was trained with (Hugging Face calls it layer_norm_epsilon)


@dataclass
class GPTConfig:
    """The shape of a GPT. The defaults are GPT-2 small (124M parameters).

    ``gelu`` picks the MLP's activation. GELU(x) = x * Phi(x), with Phi the normal distribution's CDF. GPT-2 was
    trained with a tanh-based approximation of Phi (Hugging Face calls it "gelu_new"), while nanoGPT's current
    code uses PyTorch's exact, erf-based GELU. The two differ by at most 5e-4 per activation: harmless when
    training from scratch, but enough to move a ported GPT-2's logits past a parity check, so "tanh" is the
    default and ported weights reproduce GPT-2 to float precision.
    """

    block_size: int = 1024  # the longest context the model can see (one position embedding per position)
    vocab_size: int = 50257  # GPT-2's BPE: 256 byte tokens + 50,000 merges + <|endoftext|>
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # GPT-2 has biases in its Linears and LayerNorms; nanoGPT can also train without
    gelu: str = "tanh"  # "tanh" as GPT-2 was trained, or "exact" (erf) as nanoGPT's train.py uses

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.gelu not in GELU_KINDS:
            raise ValueError(f"gelu must be one of {GELU_KINDS}, got {self.gelu!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's own could not turn the bias off before version 2.1)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, LAYER_NORM_EPS)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which each position may only look at itself and earlier positions."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # one matmul makes the queries, keys and values of every head at once
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.size()  # batch, sequence length, n_embd
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, n_head, T, head_size): the heads become a batch dimension
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if cache is None:
            # softmax(q k^T / sqrt(head_size)) v with the causal (lower-triangle) mask, in one fused call
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
            )  # (B, n_head, T, head_size)
        else:
            y = self._attend_with_cache(q, k, v, cache, layer)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # the heads side by side again
        return self.resid_dropout(self.c_proj(y))

    def _attend_with_cache(self, q, k, v, cache: KVCache, layer: int) -> torch.Tensor:
        start, T = cache.length, q.size(2)
        cache.k[layer, :, :, start : start + T] = k  # write the new positions into the buffers
        cache.v[layer, :, :, start : start + T] = v
        k_all = cache.k[layer, :, :, : start + T]  # (B, n_head, start + T, head_size)
        v_all = cache.v[layer, :, :, : start + T]
        if T == 1:  # one new token: it may look at every cached position, so no mask at all
            return F.scaled_dot_product_attention(q, k_all, v_all)
        if start == 0:  # the prompt: queries and keys line up, the usual triangle
            return F.scaled_dot_product_attention(q, k_all, v_all, is_causal=True)
        # several new tokens after cached ones: new token i (at position start + i) sees keys 0 .. start + i
        mask = torch.ones(T, start + T, dtype=torch.bool, device=q.device).tril(diagonal=start)
        return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)


class MLP(nn.Module):
    """The feed-forward half of a block: widen 4x, GELU, narrow back."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.gelu_approximate = "tanh" if config.gelu == "tanh" else "none"  # F.gelu's name for the two kinds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.c_fc(x), approximate=self.gelu_approximate)
        return self.dropout(self.c_proj(x))


class Block(nn.Module):
    """One transformer block: attention, then the MLP, each reading a layer-normed copy and adding back (pre-norm)."""

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


class KVCache:
    """The keys and values of every layer for the tokens seen so far, in buffers allocated once.

    Attention is causal, so the keys and values of earlier positions never change as text is added. A cache keeps
    them: the prompt runs through the model once, then each generation step runs only the new token and appends
    its key and value. The buffers have a fixed size, so appending is a write, not a copy of everything so far.
    """

    def __init__(self, config: GPTConfig, batch_size: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, capacity: int | None = None):
        self.capacity = config.block_size if capacity is None else capacity  # how many positions fit
        shape = (config.n_layer, batch_size, config.n_head, self.capacity, config.n_embd // config.n_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # how many positions hold valid keys and values

    def reset(self) -> None:
        """Forget every cached position (the buffers are kept and reused)."""
        self.length = 0


class GPT(nn.Module):
    """A GPT-2-style language model: token + position embeddings, ``n_layer`` blocks, a final norm, a tied head."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
            wpe=nn.Embedding(config.block_size, config.n_embd),  # position embeddings
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying: the matrix that scores tokens is the one that embeds them (as in GPT-2)
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # the projections into the residual stream start smaller, so the stream does not grow with depth (GPT-2)
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

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(logits, loss)`` for token ids ``idx`` of shape (B, T).

        With ``targets`` (B, T) the logits cover every position, (B, T, vocab_size), and ``loss`` is the mean
        cross-entropy (targets of -1 are ignored). Without targets only the last position is scored, giving
        (B, 1, vocab_size) and ``loss=None``: generation needs nothing more, and it saves the biggest matmul.
        With a ``cache`` (see ``new_cache``), ``idx`` holds only the tokens that follow the cached ones.
        """
        B, T = idx.size()
        start = 0 if cache is None else cache.length  # the position of idx's first token
        if start + T > self.config.block_size:
            raise ValueError(f"cannot forward a sequence of {start + T} tokens: block_size is "
                             f"{self.config.block_size}; crop the context to its last {self.config.block_size} "
                             "tokens first")
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
        # the list index [-1] keeps the time dimension: (B, 1, vocab_size)
        return self.lm_head(x[:, [-1], :]), None

    def new_cache(self, batch_size: int, capacity: int | None = None) -> KVCache:
        """Return an empty ``KVCache`` for ``batch_size`` sequences, on this model's device and in its dtype.

        It holds ``capacity`` positions, ``block_size`` by default; a generation that needs fewer can ask for
        fewer, since the buffers grow with every layer, head and position.
        """
        capacity = self.config.block_size if capacity is None else capacity
        if not 1 <= capacity <= self.config.block_size:
            raise ValueError(f"capacity must be between 1 and block_size ({self.config.block_size}), got {capacity}")
        weight = self.lm_head.weight
        return KVCache(self.config, batch_size, device=weight.device, dtype=weight.dtype, capacity=capacity)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None) -> torch.Tensor:
        """Return ``idx`` (B, T) followed by ``max_new_tokens`` sampled tokens: (B, T + max_new_tokens).

        nanoGPT's loop, step for step: every token costs one forward pass over the whole (cropped) context, and
        the draw uses torch's global random generator, so ``torch.manual_seed`` makes it repeatable. Call
        ``model.eval()`` first. ``nanogpt_edu.sampling.generate`` draws the same tokens from the same seed and adds
        a key/value cache, greedy decoding (temperature 0), top-p, min-p and a stop token.
        """
        if not temperature > 0 or (top_k is not None and top_k < 1):  # they would fail deep inside the loop
            raise ValueError(f"generate needs temperature > 0 and top_k >= 1 or None, got temperature={temperature}, "
                             f"top_k={top_k} (for greedy decoding use nanogpt_edu.sampling.generate, temperature=0)")
        for _ in range(max_new_tokens):
            # the model has block_size position embeddings, so it can only look at the last block_size tokens
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            # the scores for the token after the last position, sharpened (< 1) or flattened (> 1)
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                # everything below the k-th largest score becomes -inf: probability 0 after the softmax
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("Inf")
            probs = F.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)  # (B, 1): one random draw per row
            idx = torch.cat((idx, idx_next), dim=1)  # append, and go again with the longer context
        return idx
