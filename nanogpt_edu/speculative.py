"""Speculative decoding with a draft made of the model's own first blocks (self-speculative decoding).

Notebook 04's logit lens reads a guess after every block: the first ``draft_layers`` blocks, then ``ln_f`` and the
head, are a smaller language model that costs nothing to get. Here it *drafts* ``draft_tokens`` tokens one at a
time, and the full model then scores all of them in **one** forward pass. The rule of Leviathan et al. (2023) and
Chen et al. (2023) keeps a prefix of the drafts and draws one more token so that the text comes from exactly the
full model's distribution, whatever the draft proposed: with ``temperature=0`` the output is plain greedy
decoding's, token for token. At temperature 0 every distribution is one-hot and the rule comes down to "keep the
drafts while they are the full model's argmax", so that case is written out directly, with no draws.

The draft's blocks are the full model's first blocks, fed the same tokens, so their keys and values are the same:
one ``KVCache`` serves both (LayerSkip shares it the same way). After each round the cache is cut back to the
tokens that were accepted (``cache.length``); what the rejected drafts wrote beyond it is overwritten later.

This is a wing above the lesson: it runs ``nanogpt_edu.model``'s modules as they are and changes none of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .errors import NanogptEduError
from .model import GPT, KVCache
from .sampling import _check_generate_args, apply_masks


@dataclass
class Round:
    """One round of speculative decoding: ``drafted`` tokens proposed, the first ``accepted`` of them kept, and
    ``tokens`` (1, accepted + 1), the kept drafts followed by the full model's own next token. ``cache`` is the
    generation's cache after the round: the keys and values of every token so far but the newest."""

    drafted: int
    accepted: int
    tokens: torch.Tensor
    cache: KVCache


def forward_layers(model: GPT, idx: torch.Tensor, cache: KVCache, n_layers: int) -> torch.Tensor:
    """Return the logits at every position of ``idx`` (B, T) -> (B, T, vocab_size), read after ``n_layers`` blocks.

    ``GPT.forward`` taken apart: embeddings, the first ``n_layers`` blocks writing their keys and values into
    ``cache`` after its ``cache.length`` positions, then ``ln_f`` and the head (the logit lens). With ``n_layers``
    equal to ``n_layer`` it is the full model; unlike ``GPT.forward`` it scores every position, which the
    verification needs.
    """
    start, T = cache.length, idx.size(1)
    pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
    x = model.transformer.wte(idx) + model.transformer.wpe(pos)  # (B, T, n_embd)
    for layer in range(n_layers):
        x = model.transformer.h[layer](x, cache, layer)
    cache.length = start + T  # the layers past n_layers are now stale at these positions: the caller knows
    return model.lm_head(model.transformer.ln_f(x))  # (B, T, vocab_size)


def token_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, min_p: float | None = None) -> torch.Tensor:
    """Return the distribution ``generate`` samples from, for each row of ``logits`` (..., vocab_size).

    Temperature, the masks that are set, softmax; at ``temperature=0`` all the probability on the argmax (greedy
    decoding is sampling from that one-hot distribution).
    """
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).to(logits.dtype)
    return F.softmax(apply_masks(logits / temperature, top_k, top_p, min_p), dim=-1)


def accept_or_resample(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor,
                       generator: torch.Generator | None = None) -> tuple[int, int]:
    """Return ``(accepted, next_token)``: how many of the K drafts to keep, and the token that follows them.

    ``p`` (K + 1, V): the full model's distributions for each drafted position and the one after them; ``q``
    (K, V): the draft's distributions each draft was drawn from; ``drafts`` (K,). Draft i is kept with probability
    min(1, p_i(d_i) / q_i(d_i)); at the first rejection the next token is drawn from the leftover max(0, p_i - q_i),
    renormalised; if all K are kept it is drawn from p_K. The K uniform numbers are drawn first, then one
    ``torch.multinomial``, both from ``generator``.
    """
    K = drafts.numel()
    u = torch.rand(K, generator=generator, device=p.device)
    rows = torch.arange(K, device=p.device)
    ratio = p[rows, drafts] / q[rows, drafts]  # q_i(d_i) > 0: d_i was drawn from q_i
    rejected = (u >= ratio).nonzero()
    accepted = int(rejected[0]) if len(rejected) else K
    if accepted < K:
        leftover = (p[accepted] - q[accepted]).clamp(min=0)
        if not leftover.sum() > 0:  # p_i == q_i up to rounding: then nothing is rejected in exact arithmetic
            leftover = p[accepted]
    else:
        leftover = p[K]  # every draft kept: one more token from the full model, for free
    next_token = torch.multinomial(leftover, num_samples=1, generator=generator)
    return accepted, int(next_token)


@torch.no_grad()
def speculative_rounds(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    draft_layers: int,
    draft_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[Round]:
    """Yield one ``Round`` per verification pass until ``max_new_tokens`` tokens are out (see
    ``speculative_generate``)."""
    idx = _check_speculative_args(model, idx, max_new_tokens, draft_layers, draft_tokens, temperature, top_k,
                                  top_p, min_p)
    settings = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    n_layer, greedy = model.config.n_layer, temperature == 0
    cache = model.new_cache(1, capacity=idx.size(1) + max(max_new_tokens, 1))
    if idx.size(1) > 1:
        forward_layers(model, idx[:, :-1], cache, n_layer)  # the prompt but its last token, which each round feeds
    generated = 0
    while generated < max_new_tokens:
        start = cache.length  # every layer holds the keys and values of idx[:, :start]; idx[:, start] is next
        k = min(draft_tokens, max_new_tokens - generated - 1)  # a round gives up to k + 1 tokens
        last, drafts, q_rows = idx[:, -1:], [], []
        for _ in range(k):  # draft: the first draft_layers blocks, one token at a time
            draft_logits = forward_layers(model, last, cache, draft_layers)[0, -1]  # (V,)
            if greedy:  # as nanochat does at temperature 0: the argmax, no distribution to draw from
                last = draft_logits.argmax().view(1, 1)
            else:
                q = token_probs(draft_logits, **settings)  # (V,)
                last = torch.multinomial(q, num_samples=1, generator=generator).view(1, 1)
                q_rows.append(q)
            drafts.append(last)
        drafted = torch.cat(drafts, dim=1) if drafts else idx.new_zeros(1, 0)  # (1, k)
        cache.length = start  # verify: the full model over the last token and the k drafts, in one pass
        full_logits = forward_layers(model, torch.cat((idx[:, -1:], drafted), dim=1), cache, n_layer)[0]  # (k+1, V)
        if greedy:  # the rule on one-hot distributions: keep drafts while they are the full model's argmax
            choice = full_logits.argmax(dim=-1)  # (k + 1,)
            agree = (choice[:k] == drafted[0]).tolist() + [False]
            accepted = agree.index(False)
            next_token = int(choice[accepted])
        else:
            p = token_probs(full_logits, **settings)  # (k + 1, V)
            q = torch.stack(q_rows) if q_rows else p.new_zeros(0, p.size(-1))
            accepted, next_token = accept_or_resample(p, q, drafted[0], generator)
        # roll back: keep the last token and the accepted drafts; the rejected drafts' keys and values are dropped
        cache.length = start + 1 + accepted
        tokens = torch.cat((drafted[:, :accepted], idx.new_full((1, 1), next_token)), dim=1)
        idx = torch.cat((idx, tokens), dim=1)
        generated += tokens.size(1)
        yield Round(drafted=k, accepted=accepted, tokens=tokens, cache=cache)


def speculative_generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    draft_layers: int,
    draft_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return ``idx`` (1, T) followed by ``max_new_tokens`` tokens, drawn by self-speculative decoding: (1, T + n).

    Each round the first ``draft_layers`` blocks (with ``ln_f`` and the head) draft up to ``draft_tokens`` tokens,
    the full model checks them in one forward pass, and ``accept_or_resample`` keeps a prefix and adds a token.
    The tokens come from the full model's distribution under the sampling settings, as ``generate`` takes them;
    ``temperature=0`` gives exactly greedy decoding's tokens. One sequence at a time, and the whole text must fit
    in the model's window (``T + max_new_tokens <= block_size``).
    """
    idx = _check_speculative_args(model, idx, max_new_tokens, draft_layers, draft_tokens, temperature, top_k,
                                  top_p, min_p)
    rounds = speculative_rounds(model, idx, max_new_tokens, draft_layers=draft_layers, draft_tokens=draft_tokens,
                                temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, generator=generator)
    return torch.cat([idx, *(r.tokens for r in rounds)], dim=1)


def chi_square_test(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> tuple[float, int, float]:
    """Return ``(statistic, degrees_of_freedom, p_value)`` of Pearson's test that ``counts`` (V,) were drawn from
    ``probs`` (V,).

    Tokens expected fewer than ``min_expected`` times are pooled into one category (the test's approximation
    needs about five per category). A small p-value (say below 0.001) says the draws do not follow ``probs``.
    """
    counts, probs = counts.double(), probs.double()
    expected = probs * counts.sum()
    big = expected >= min_expected
    observed_cat = torch.cat((counts[big], counts[~big].sum().view(1)))
    expected_cat = torch.cat((expected[big], expected[~big].sum().view(1)))
    if expected_cat[-1] < min_expected:  # too few to stand alone: join the pool to the smallest category
        smallest = int(expected_cat[:-1].argmin())
        observed_cat[smallest] += observed_cat[-1]
        expected_cat[smallest] += expected_cat[-1]
        observed_cat, expected_cat = observed_cat[:-1], expected_cat[:-1]
    statistic = float(((observed_cat - expected_cat) ** 2 / expected_cat).sum())
    dof = observed_cat.numel() - 1
    # the chi-square distribution's upper tail is the regularised upper incomplete gamma function
    p_value = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.double),
                                            torch.tensor(statistic / 2, dtype=torch.double)))
    return statistic, dof, p_value


def _check_speculative_args(model, idx, max_new_tokens, draft_layers, draft_tokens, temperature, top_k, top_p,
                            min_p) -> torch.Tensor:
    idx = _check_generate_args(model, idx, max_new_tokens, temperature, top_k, top_p, min_p, None, None)
    n_layer, block_size = model.config.n_layer, model.config.block_size
    if isinstance(draft_tokens, bool) or not isinstance(draft_tokens, int) or draft_tokens < 1:
        raise NanogptEduError(f"draft_tokens must be a whole number >= 1, got {draft_tokens!r}")
    if isinstance(draft_layers, bool) or not isinstance(draft_layers, int) or not 1 <= draft_layers < n_layer:
        raise NanogptEduError(f"draft_layers must be a whole number from 1 to n_layer - 1 = {n_layer - 1} (the "
                              f"draft is the model's first blocks), got {draft_layers!r}")
    if idx.size(0) != 1:
        raise NanogptEduError(f"speculative decoding here runs one sequence at a time; idx has {idx.size(0)} rows")
    if idx.size(1) + max_new_tokens > block_size:
        raise NanogptEduError(f"the prompt ({idx.size(1)} tokens) plus max_new_tokens ({max_new_tokens}) must fit in "
                              f"block_size ({block_size}): speculative decoding here keeps the whole text in the cache")
    return idx
