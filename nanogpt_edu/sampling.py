"""The sampling loop of nanoGPT's ``GPT.generate``, taken apart into steps a notebook can run one at a time.

One step of generation: crop the context to the last ``block_size`` tokens, run the model, keep the logits of the
last position, divide by the temperature, mask the unlikely tokens (top-k, and here also top-p or min-p), turn the
logits into probabilities with softmax, draw one token with ``torch.multinomial``, append it, repeat.

Each step checks what it is given and raises ``NanogptEduError`` (a ``ValueError``) in one line for anything it
cannot use: settings out of range, logits that are not a tensor of scores, token ids outside the model's vocabulary.
"""

from __future__ import annotations

import codecs
import math
import operator
from collections.abc import Iterator

import torch
from torch.nn import functional as F

from . import fast  # the engine: generate_steps asks it, once per call, for a faster one-token step
from .errors import NanogptEduError, shown
from .tokenizer import EOT_ID, get_encoding


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Return ``logits / temperature``: below 1 sharpens the distribution, above 1 flattens it.

    Temperature 0 is greedy decoding, which is an argmax rather than a division: ``sample_next_token`` handles it.
    """
    check_sampling_args(temperature=temperature)
    check_logits(logits)
    if temperature == 0:
        raise NanogptEduError("temperature 0 means greedy decoding (argmax); it cannot scale logits")
    return logits / temperature


def top_k_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Return ``logits`` with every value below the k-th largest (per row) set to -inf.

    This is nanoGPT's rule, a comparison with the k-th value, so tokens that tie with it all survive and a row may
    keep more than k tokens. (Hugging Face's ``TopKLogitsWarper`` uses the same comparison.) A ``k`` larger than
    the vocabulary keeps everything.
    """
    check_sampling_args(top_k=k)
    check_logits(logits)
    k = min(k, logits.size(-1))
    kth_largest = torch.topk(logits, k, dim=-1).values[..., [-1]]  # (B, 1)
    return logits.masked_fill(logits < kth_largest, -float("inf"))


def top_p_mask(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Return ``logits`` with -inf outside the nucleus: the most likely tokens whose probabilities first reach ``p``.

    A token is kept when the probability of all tokens ranked above it is still below ``p``; the most likely token
    is always kept. ``p = 1`` keeps everything. Hugging Face's ``TopPLogitsWarper`` states the same rule from the
    other end (drop the least likely tokens while their total stays at most ``1 - p``); the two can disagree only
    on tokens whose cumulative probability lands on the cut-off up to float rounding, and at ``p = 1``, where
    rounding can make Hugging Face drop tokens of vanishing probability.
    """
    check_sampling_args(top_p=p)
    check_logits(logits)
    if p == 1:
        return logits  # cumulative sums can round to just above 1; keeping everything is what p = 1 means
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = F.softmax(sorted_logits, dim=-1)
    mass_above = torch.cumsum(probs, dim=-1) - probs  # probability of everything ranked higher
    drop_sorted = mass_above >= p
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, -float("inf"))


def min_p_mask(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Return ``logits`` with -inf on tokens less likely than ``p`` times the most likely token's probability.

    Unlike top-k and top-p the cut-off moves with the model's confidence: a sure model keeps few tokens, an unsure
    one many. ``p = 0`` keeps everything; ``p = 1`` keeps only the top token (and its ties).
    """
    check_sampling_args(min_p=p)
    check_logits(logits)
    probs = F.softmax(logits, dim=-1)
    threshold = p * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, -float("inf"))


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return the next token id for each row of ``logits`` (B, vocab_size), as a (B, 1) LongTensor.

    Temperature, then the masks that are set, then softmax and one ``torch.multinomial`` draw per row, with
    ``generator`` (or torch's global generator, as nanoGPT uses). ``temperature=0`` takes the argmax instead.
    """
    check_sampling_args(temperature, top_k, top_p, min_p)
    check_logits(logits)
    if logits.dim() != 2 or logits.size(0) == 0:
        raise NanogptEduError(f"logits must have shape (batch, vocab_size), got {tuple(logits.shape)}")
    _check_generator(generator)
    return _sample(logits, temperature, top_k, top_p, min_p, generator)


def _sample(logits, temperature, top_k, top_p, min_p, generator) -> torch.Tensor:
    # sample_next_token without the argument checks: generate checks its arguments once, not at every step
    top = logits.amax(dim=-1)  # one pass: NaN anywhere makes a row's top NaN, +inf makes it +inf
    if not torch.isfinite(top).all():
        if (top == -math.inf).any():  # -inf is a masked token, and this row has nothing else
            raise NanogptEduError("a row of logits is -inf everywhere: every token is masked, so there is nothing "
                                  "to sample")
        raise NanogptEduError("the logits contain NaN or +inf: the model's forward pass went wrong (check its "
                              "weights and dtype)")
    if temperature == 0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    if temperature < 1:
        if (torch.isinf(top / temperature) & torch.isfinite(top)).any():
            # so small a temperature that the top score overflows float: softmax would give NaN, and the
            # distribution it tends to as the temperature falls to 0 puts everything on the argmax: greedy
            return torch.argmax(logits, dim=-1, keepdim=True)
    probs = F.softmax(apply_masks(logits / temperature, top_k, top_p, min_p), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def apply_masks(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None,
                min_p: float | None = None) -> torch.Tensor:
    """Return ``logits`` with every mask that is set applied, in ``sample_next_token``'s order: top-k, top-p, min-p."""
    if top_k is not None:
        logits = top_k_mask(logits, top_k)
    if top_p is not None:
        logits = top_p_mask(logits, top_p)
    if min_p is not None:
        logits = min_p_mask(logits, min_p)
    return logits


@torch.no_grad()
def generate_steps(
    model: torch.nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    stop_token: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    engine: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield the new token of every row, a (B, 1) LongTensor, one step at a time (see ``generate``)."""
    idx = _check_generate_args(model, idx, max_new_tokens, temperature, top_k, top_p, min_p, stop_token, generator)
    block_size = model.config.block_size
    finished = torch.zeros(idx.size(0), 1, dtype=torch.bool, device=idx.device)
    # room for the whole generation, or for block_size positions once it must slide the window
    capacity = min(block_size, idx.size(1) + max(max_new_tokens, 1))
    cache = model.new_cache(idx.size(0), capacity) if use_cache else None
    # the engine's flat one-token step where it computes what the modules would (None: run model's forward)
    decode_step = fast.decode_step_for(model, cache) if use_cache and engine else None
    for _ in range(max_new_tokens):
        if cache is None:
            # nanoGPT's way: the model has only block_size position embeddings, so past that it sees the most
            # recent block_size tokens, and every step runs the whole window again
            idx_cond = idx if idx.size(1) <= block_size else idx[:, -block_size:]
            logits, _ = model(idx_cond)  # (B, 1, vocab_size): the last position only
        elif idx.size(1) > block_size:
            # the window slid by one token, so every token now sits at a new position and nothing cached is
            # valid: run the cropped window again from scratch, exactly what nanoGPT's loop computes
            cache.reset()
            logits, _ = model(idx[:, -block_size:], cache=cache)
        elif decode_step is not None and cache.length > 0:
            logits = decode_step(idx[:, -1:])  # one token per step, after the prompt
        else:
            logits, _ = model(idx[:, cache.length :], cache=cache)  # the prompt once, then one token per step
        idx_next = _sample(logits[:, -1, :], temperature, top_k, top_p, min_p, generator)
        if stop_token is not None:
            idx_next = idx_next.masked_fill(finished, stop_token)  # a finished row is padded with stop_token
            finished |= idx_next == stop_token
        idx = torch.cat((idx, idx_next), dim=1)
        yield idx_next
        if stop_token is not None and finished.all():
            return


def generate(
    model: torch.nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    stop_token: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    engine: bool = True,
) -> torch.Tensor:
    """Return ``idx`` (B, T) followed by up to ``max_new_tokens`` sampled tokens: (B, T + max_new_tokens).

    Faithful to nanoGPT's ``GPT.generate``: with the same weights and the same RNG state it draws the same tokens.
    ``use_cache=False`` runs nanoGPT's loop literally, re-running the whole (cropped) context every step; the
    default keeps each layer's keys and values in a ``KVCache`` so each step runs only the new token, and falls
    back to recomputing the window once the context passes ``block_size``, so the tokens stay the same.
    ``engine=False`` runs every cached step through the model's own modules instead of the engine's faster
    one-token step (``nanogpt_edu.fast``): the lesson's model with its cache, the same tokens, slower.
    Beyond nanoGPT: ``temperature=0`` is greedy; ``top_p``/``min_p`` masks; an empty prompt (T = 0) starts from
    ``<|endoftext|>``; with ``stop_token`` a row that samples it is padded with it from then on, and generation
    stops early once every row has.
    """
    idx = start_from_eot_if_empty(idx)
    steps = list(generate_steps(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                min_p=min_p, stop_token=stop_token, generator=generator, use_cache=use_cache,
                                engine=engine))
    return torch.cat([idx, *steps], dim=1)


def stream_text(
    model: torch.nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    decode_bytes=None,
    **sampling,
) -> Iterator[str]:
    """Yield the text of one generated sequence piece by piece as the tokens arrive (``idx`` is (1, T)).

    A GPT-2 token is a run of bytes and may end in the middle of a UTF-8 character (emoji and many CJK characters
    span two or three tokens). Bytes are held back until they complete a character, so no piece ever holds half a
    character. ``decode_bytes`` maps a token id to its bytes (GPT-2's by default); ``sampling`` takes the keyword
    arguments of ``generate``.
    """
    if isinstance(idx, torch.Tensor) and idx.dim() == 2 and idx.size(0) != 1:
        raise NanogptEduError(f"stream_text generates one sequence at a time; idx has {idx.size(0)} rows")
    if decode_bytes is None:
        decode_bytes = get_encoding().decode_single_token_bytes
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for idx_next in generate_steps(model, idx, max_new_tokens, **sampling):  # it starts empty prompts itself
        if sampling.get("stop_token") is not None and idx_next.item() == sampling["stop_token"]:
            break
        piece = decoder.decode(decode_bytes(idx_next.item()))
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


def start_from_eot_if_empty(idx: torch.Tensor, eot: int | None = EOT_ID) -> torch.Tensor:
    """Return ``idx`` (B, T), or one ``eot`` token per row when it holds no tokens (T = 0).

    An empty prompt leaves the model nothing to condition on; GPT-2 saw ``<|endoftext|>`` before every document,
    so starting from it asks for the beginning of a new one. ``eot=None`` (a vocabulary without such a token)
    makes an empty prompt an error.
    """
    if not (isinstance(idx, torch.Tensor) and idx.dim() == 2 and idx.size(1) == 0):
        return idx
    if eot is None:
        raise NanogptEduError("the prompt is empty and this model's vocabulary has no <|endoftext|> to start from")
    return torch.full((idx.size(0), 1), eot, dtype=torch.long, device=idx.device)


def check_sampling_args(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                        min_p: float | None = None) -> None:
    """Raise ``NanogptEduError`` naming the first sampling setting out of its range (the one place they are checked).

    temperature: a finite number >= 0 (0 is greedy); top_k: a whole number >= 1; top_p: in (0, 1]; min_p: in
    [0, 1]; ``None`` turns a filter off.
    """
    if not _is_number(temperature) or not _is_finite(temperature) or temperature < 0:
        raise NanogptEduError(f"temperature must be a finite number >= 0 (0 means greedy), got {shown(temperature)}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise NanogptEduError(f"top_k must be a whole number of at least 1 (or None for no limit), got {shown(top_k)}")
    if top_p is not None and not (_is_number(top_p) and 0 < top_p <= 1):
        raise NanogptEduError(f"top_p must be a number in (0, 1], got {shown(top_p)}")
    if min_p is not None and not (_is_number(min_p) and 0 <= min_p <= 1):
        raise NanogptEduError(f"min_p must be a number in [0, 1], got {shown(min_p)}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def check_logits(logits) -> None:
    """Raise ``NanogptEduError`` unless ``logits`` is a floating-point tensor of scores (..., vocab_size >= 1)."""
    if not (isinstance(logits, torch.Tensor) and logits.is_floating_point() and logits.dim() >= 1
            and logits.size(-1) >= 1):
        what = f"{tuple(logits.shape)} {logits.dtype}" if isinstance(logits, torch.Tensor) else shown(logits)
        raise NanogptEduError(f"logits must be a floating-point tensor (..., vocab_size), got {what}")


def _is_token_id(value) -> bool:
    # a whole number (ints, numpy ints, one-element integer tensors), not a bool
    try:
        operator.index(value)
    except TypeError:
        return False
    return not isinstance(value, bool)


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise NanogptEduError(f"generator must be a torch.Generator or None, got {shown(generator)}")


def _check_generate_args(model, idx, max_new_tokens, temperature, top_k, top_p, min_p, stop_token,
                         generator) -> torch.Tensor:
    # everything generate is given, checked once before the first step: the model's own forward (the lesson)
    # raises plain errors, so ids outside its vocabulary and empty batches are refused here, by name
    config = getattr(model, "config", None)
    vocab_size, block_size = getattr(config, "vocab_size", None), getattr(config, "block_size", None)
    if not isinstance(model, torch.nn.Module) or type(vocab_size) is not int or type(block_size) is not int \
            or vocab_size < 1 or block_size < 1:
        raise NanogptEduError(f"model must be a GPT (a module whose config has whole-number vocab_size and "
                              f"block_size), got {shown(model)}")
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype not in (torch.long, torch.int, torch.int16):
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise NanogptEduError(f"idx must be a 2-D integer tensor of token ids (batch, time), got {shape}")
    if idx.size(0) == 0:
        raise NanogptEduError("idx holds no sequences (batch size 0): there is nothing to generate from")
    if idx.numel() and (idx.min() < 0 or idx.max() >= vocab_size):
        bad = idx.min() if idx.min() < 0 else idx.max()
        raise NanogptEduError(f"token id {bad.item()} is not in the model's vocabulary (0 to {vocab_size - 1})")
    if stop_token is not None and not (_is_token_id(stop_token) and 0 <= stop_token < vocab_size):
        raise NanogptEduError(f"stop_token must be a token id from 0 to {vocab_size - 1} or None, got "
                              f"{shown(stop_token)}")
    _check_generator(generator)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise NanogptEduError(f"max_new_tokens must be a whole number >= 0, got {shown(max_new_tokens)}")
    check_sampling_args(temperature, top_k, top_p, min_p)
    return start_from_eot_if_empty(idx.long())
