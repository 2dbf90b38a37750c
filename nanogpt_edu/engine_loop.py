"""Pieces of nanochat's generation loop (``nanochat/engine.py``), written for this package's model.

nanochat is the project nanoGPT's README now points to. Its ``Engine.generate`` differs from nanoGPT's loop in a
few ways that notebook 08 runs one by one; the ones worth reusing are here:

- ``nanochat_sample_next_token``: greedy at temperature 0, and top-k by *gather*: draw among the k largest
  logits, then look up the id (no ``-inf`` mask, so a tie at the k-th value cannot keep more than k tokens);
- ``repeat_cache`` and ``generate_samples``: run the prompt once, copy its keys and values into one row per
  sample, and decode all rows together, each with its own seeded ``torch.Generator``;
- ``generate_with_tool``: forced tokens; when the text reaches a trigger, a tool's answer is written into the
  sequence by the loop itself, and a mask records which tokens were sampled and which were forced.

Like ``nanogpt_edu.speculative`` it sits above the lesson and uses ``model.py``'s ``KVCache`` as it is; like
``generate``, ``generate_samples`` hands its one-token steps to the engine (``nanogpt_edu.fast``) unless told not to.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F

from . import fast  # the engine's one-token step, as generate uses it
from .errors import NanogptEduError
from .model import GPT, KVCache
from .sampling import _check_generate_args, _sample, check_sampling_args


def nanochat_sample_next_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                               generator: torch.Generator | None = None) -> torch.Tensor:
    """Return the next token id of each row of ``logits`` (B, vocab_size) as (B, 1), drawn as nanochat draws it.

    Temperature 0 is the argmax. With ``top_k`` the k largest logits are kept as values (B, k), softmax and one
    draw pick a column among them, and ``gather`` turns the column back into a token id: exactly k candidates even
    when more tokens tie with the k-th value (which of the tied ones ``torch.topk`` returns is not specified).
    """
    _check(logits=logits, temperature=temperature, top_k=top_k)
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    if top_k is None:
        return torch.multinomial(F.softmax(logits / temperature, dim=-1), num_samples=1, generator=generator)
    values, ids = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1)  # (B, k) each
    choice = torch.multinomial(F.softmax(values / temperature, dim=-1), num_samples=1, generator=generator)
    return ids.gather(-1, choice)  # (B, 1): the id in the chosen column


def repeat_cache(cache: KVCache, num_rows: int, capacity: int | None = None) -> KVCache:
    """Return a new ``KVCache`` of ``num_rows`` rows, each holding a copy of row 0 of ``cache``'s filled positions.

    nanochat's ``KVCache.prefill``: the prompt runs once, with batch size 1, and every sample starts from its
    keys and values. ``capacity`` (default: ``cache``'s) is the room the new cache has for the text to come.
    """
    capacity = cache.capacity if capacity is None else capacity
    if capacity < cache.length:
        raise NanogptEduError(f"capacity ({capacity}) is smaller than the {cache.length} positions to copy")
    n_layer, _, n_head, _, head_size = cache.k.shape
    rows = KVCache.__new__(KVCache)  # the lesson's class, filled here rather than through its constructor
    rows.capacity, rows.length = capacity, cache.length
    shape = (n_layer, num_rows, n_head, capacity, head_size)
    rows.k = cache.k.new_zeros(shape)
    rows.v = cache.v.new_zeros(shape)
    rows.k[:, :, :, : cache.length] = cache.k[:, :1, :, : cache.length]  # broadcast row 0 into every row
    rows.v[:, :, :, : cache.length] = cache.v[:, :1, :, : cache.length]
    return rows


@torch.no_grad()
def generate_samples(
    model: GPT,
    idx: torch.Tensor,
    num_samples: int,
    max_new_tokens: int,
    *,
    generators: Sequence[torch.Generator],
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    engine: bool = True,
) -> torch.Tensor:
    """Return ``num_samples`` continuations of the prompt ``idx`` (1, T): (num_samples, T + max_new_tokens).

    The prompt runs through the model once; its cache is copied into ``num_samples`` rows (``repeat_cache``),
    and every step runs one token per row, all rows in one forward pass. Row i draws with ``generators[i]``
    and ``nanogpt_edu.sampling``'s rule, so it gets the tokens ``generate(model, idx, ...,
    generator=generators[i], engine=engine)`` would give on its own. Past ``block_size`` the window slides and
    is recomputed for all rows, as ``generate`` does. ``engine=False`` runs the one-token steps through the
    model's own modules instead of the engine's step (``nanogpt_edu.fast``), as ``generate``'s flag does.
    """
    idx = _checked(model, idx, max_new_tokens, temperature, top_k, top_p, min_p)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise NanogptEduError(f"num_samples must be a whole number >= 1, got {num_samples!r}")
    if idx.size(0) != 1:
        raise NanogptEduError(f"generate_samples continues one prompt; idx has {idx.size(0)} rows")
    if len(generators) != num_samples or not all(isinstance(g, torch.Generator) for g in generators):
        raise NanogptEduError(f"generators must be {num_samples} torch.Generator objects, one per sample")
    block_size = model.config.block_size
    prompt = idx[:, -block_size:]
    capacity = min(block_size, prompt.size(1) + max(max_new_tokens, 1))
    prefill = model.new_cache(1, capacity=prompt.size(1))
    logits, _ = model(prompt, cache=prefill)  # (1, 1, vocab_size): the prompt, once
    cache = repeat_cache(prefill, num_samples, capacity)
    logits = logits[:, -1, :].expand(num_samples, -1)  # every row starts from the same scores
    decode_step = fast.decode_step_for(model, cache) if engine else None  # None: the modules' forward
    rows = idx.expand(num_samples, -1)
    for step in range(max_new_tokens):
        idx_next = torch.cat([_sample(logits[i : i + 1], temperature, top_k, top_p, min_p, g)
                              for i, g in enumerate(generators)])  # (num_samples, 1): each row its own draw
        rows = torch.cat((rows, idx_next), dim=1)
        if step == max_new_tokens - 1:
            break
        if rows.size(1) > block_size:  # the window slid: nothing cached is valid (notebook 06)
            cache.reset()
            logits, _ = model(rows[:, -block_size:], cache=cache)
        elif decode_step is not None:
            logits = decode_step(idx_next)  # one token per row, all rows in one step
        else:
            logits, _ = model(idx_next, cache=cache)
        logits = logits[:, -1, :]
    return rows


@torch.no_grad()
def generate_with_tool(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    trigger: str,
    tool: Callable[[str], str | None],
    encode: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, KVCache]:
    """Return ``(tokens, sampled, cache)``: the prompt ``idx`` (1, T) and ``max_new_tokens`` more, (1, T + n); a
    bool mask (1, n) that is True where the model sampled the token and False where the loop forced it; and the
    cache, holding every token but the last.

    After each token, if the generated text (from the last forced answer on) ends with ``trigger``, ``tool`` gets
    that text and may return an answer; the answer's tokens are then queued and written into the sequence one per
    step instead of a sampled token, each fed through the model like any other, so the cache stays what a full
    forward pass over the text would compute. nanochat does the same with its calculator: ``<|python_start|>``
    ... ``<|python_end|>`` triggers it, and ``<|output_start|>`` result ``<|output_end|>`` is forced.
    """
    idx = _checked(model, idx, max_new_tokens, temperature, top_k, None, None)
    if idx.size(0) != 1:
        raise NanogptEduError(f"generate_with_tool follows one sequence; idx has {idx.size(0)} rows")
    if not isinstance(trigger, str) or not trigger:
        raise NanogptEduError(f"trigger must be a non-empty string, got {trigger!r}")
    if idx.size(1) + max_new_tokens > model.config.block_size:
        raise NanogptEduError(f"the prompt ({idx.size(1)} tokens) plus max_new_tokens ({max_new_tokens}) must fit "
                              f"in block_size ({model.config.block_size})")
    cache = model.new_cache(1, capacity=idx.size(1) + max(max_new_tokens, 1))
    logits, _ = model(idx, cache=cache)
    forced: deque[int] = deque()
    new, sampled = [], []
    since = 0  # where the text the tool may read starts: after its last answer
    for step in range(max_new_tokens):
        drawn = nanochat_sample_next_token(logits[:, -1, :], temperature, top_k, generator)
        is_forced = len(forced) > 0  # nanochat draws for every row even when it then forces: the same here
        new.append(forced.popleft() if is_forced else int(drawn))
        sampled.append(not is_forced)
        if is_forced and not forced:
            since = len(new)
        text = decode(new[since:])
        if not is_forced and text.endswith(trigger):
            answer = tool(text)
            if answer:
                forced.extend(encode(answer))
                since = len(new)
        if step < max_new_tokens - 1:
            logits, _ = model(torch.tensor([[new[-1]]], device=idx.device), cache=cache)
    tokens = torch.cat((idx, torch.tensor([new], dtype=torch.long, device=idx.device)), dim=1)
    return tokens, torch.tensor([sampled]), cache


def _check(logits, temperature, top_k) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise NanogptEduError(f"logits must have shape (batch, vocab_size), got {shape}")
    check_sampling_args(temperature=temperature, top_k=top_k)  # raises NanogptEduError, in one line


def _checked(model, idx, max_new_tokens, temperature, top_k, top_p, min_p) -> torch.Tensor:
    # generate's own checks (the model, the ids against its vocabulary, the settings); generators come apart
    return _check_generate_args(model, idx, max_new_tokens, temperature, top_k, top_p, min_p, None, None)
