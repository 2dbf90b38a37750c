"""Why the output looks good: the numbers behind notebook 07, measured the way Holtzman et al. (2019) measure them.

"The Curious Case of Neural Text Degeneration" (Holtzman, Buys, Du, Forbes, Choi; ICLR 2020, arXiv 1904.09751)
compares decoding methods by four numbers, each computed here on token ids:

- **perplexity** of a text under the model: exp of the mean negative log-probability of its tokens, from the
  *untruncated* model at temperature 1 (whatever settings generated the text), so every row is judged by the same
  distribution;
- **repetition**: the share of texts that *end* in a loop, a phrase of at least 2 tokens repeated at least 3 times
  back to back (the paper's definition; its released code counts a phrase of 3 or more tokens seen twice);
- **Self-BLEU-4**: the BLEU-4 of each text against all the others as references, averaged (nltk's BLEU, smoothing
  method 1 as the paper's code uses): high means the texts resemble each other;
- the **Zipf coefficient**: minus the slope of log frequency against log rank of the tokens (about 1 for most
  human text).

Beside them: distinct-n, the speaker names a sample invents, and the probability that the model continues a
repeated line once more. Bad input (empty lists, texts shorter than the n-gram, a model that is not a ``GPT``,
probabilities that are not finite) raises ``NanogptEduError`` with one line.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from torch.nn import functional as F

from .errors import NanogptEduError, shown
from .model import GPT
from .plots import FONT_SIZE, MAX_WIDTH, figure_function
from .sampling import generate

SHAKESPEARE = Path(__file__).parent / "data" / "shakespeare"
# a speaker's line in tinyshakespeare: after a blank line, one to four capitalised words and a colon, alone
SPEAKER = re.compile(r"(?:^|\n\n)([A-Z][A-Za-z']*(?: [A-Z][A-Za-z']*){0,3}):\n")


def heldout_text() -> str:
    """Return the held-out Shakespeare that ships with the package: the first 40,424 characters of the pocket
    model's validation split (the last 10% of tinyshakespeare), which it never trained on."""
    return (SHAKESPEARE / "heldout.txt").read_text(encoding="utf-8")


def training_speakers() -> set[str]:
    """Return every speaker name of the pocket model's training split (the first 90% of tinyshakespeare)."""
    return set((SHAKESPEARE / "train_speakers.txt").read_text(encoding="utf-8").split("\n")) - {""}


def speaker_names(text: str) -> list[str]:
    """Return the speaker names in ``text``, in order: lines like ``ROMEO:`` or ``First Citizen:`` after a blank
    line (or at the start)."""
    if not isinstance(text, str):
        raise NanogptEduError(f"speaker_names needs a str, got {type(text).__name__}")
    return SPEAKER.findall(text)


def passages(tokens: Sequence[int] | torch.Tensor, n: int, prompt_len: int, continuation_len: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (prompts, continuations), (n, prompt_len) and (n, continuation_len): ``n`` windows spread evenly
    over ``tokens`` without overlap, each cut into a prompt and what the text really says next."""
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    span = prompt_len + continuation_len
    if n < 1 or prompt_len < 1 or continuation_len < 1:
        raise NanogptEduError(f"passages needs n, prompt_len and continuation_len >= 1, got {n}, {prompt_len}, "
                              f"{continuation_len}")
    if tokens.dim() != 1 or len(tokens) < n * span:
        raise NanogptEduError(f"{n} passages of {span} tokens need {n * span} tokens; the text has {tokens.numel()}")
    stride = len(tokens) // n
    windows = torch.stack([tokens[i * stride : i * stride + span] for i in range(n)])  # (n, span)
    return windows[:, :prompt_len], windows[:, prompt_len:]


def _check_model(model) -> GPT:
    if not isinstance(model, GPT):
        raise NanogptEduError(f"model must be a nanogpt_edu GPT (load_model(...)), got {type(model).__name__}")
    return model


def _check_ids(name: str, ids) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point() or ids.numel() == 0:
        got = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise NanogptEduError(f"{name} must be a non-empty 2-D tensor of token ids (rows, tokens), got {got}")
    return ids.long()


@torch.no_grad()
def token_probs(model: GPT, prompts: torch.Tensor, continuations: torch.Tensor) -> torch.Tensor:
    """Return (B, C): the probability the model gave each token of ``continuations`` (B, C) after its prompt
    (B, P) and the tokens before it. The untruncated model at temperature 1: no mask, whatever wrote the text."""
    model = _check_model(model)
    prompts, continuations = _check_ids("prompts", prompts), _check_ids("continuations", continuations)
    if prompts.size(0) != continuations.size(0):
        raise NanogptEduError(f"prompts has {prompts.size(0)} rows and continuations {continuations.size(0)}")
    text = torch.cat([prompts, continuations], dim=1)  # (B, P + C)
    if text.size(1) > model.config.block_size + 1:
        raise NanogptEduError(f"prompt + continuation is {text.size(1)} tokens; the model sees at most "
                              f"{model.config.block_size} at once (block_size)")
    logits, _ = model(text[:, :-1], text[:, 1:].contiguous())  # with targets: logits at every position, (B, P + C - 1, V)
    logits = logits[:, prompts.size(1) - 1 :]  # the positions that predict the continuation, (B, C, V)
    return F.softmax(logits.float(), dim=-1).gather(-1, continuations[..., None])[..., 0]


def perplexity(probs: torch.Tensor | Sequence[float]) -> float:
    """Return exp(mean of -log p) over all the token probabilities ``probs``: 1 when every token was certain,
    the vocabulary size when the model guessed uniformly."""
    p = torch.as_tensor(probs, dtype=torch.float64)
    if p.numel() == 0:
        raise NanogptEduError("perplexity needs at least one token probability, got none")
    if not torch.isfinite(p).all() or (p <= 0).any() or (p > 1).any():
        raise NanogptEduError(f"token probabilities must be finite numbers in (0, 1], got {shown(p.flatten().tolist())}")
    return math.exp(float(-p.log().mean()))


def _check_texts(texts, n: int, what: str) -> list[list[int]]:
    if isinstance(texts, torch.Tensor):
        texts = texts.tolist()
    if not isinstance(texts, (list, tuple)) or not texts:
        raise NanogptEduError(f"{what} needs a non-empty list of token lists, got {shown(texts)}")
    out = []
    for i, text in enumerate(texts):
        text = text.tolist() if isinstance(text, torch.Tensor) else text
        if not isinstance(text, (list, tuple)):
            raise NanogptEduError(f"{what}: text {i} should be a list of token ids, got {type(text).__name__}")
        if len(text) < n:
            raise NanogptEduError(f"{what}: text {i} has {len(text)} tokens, fewer than the n-gram's {n}")
        out.append(list(text))
    return out


def ends_in_repetition(tokens: Sequence[int], min_phrase: int = 2, min_repeats: int = 3) -> bool:
    """Return True when ``tokens`` ends in a loop: some phrase of at least ``min_phrase`` tokens occurs at least
    ``min_repeats`` times in a row at the very end (Holtzman et al.'s definition with the defaults)."""
    (tokens,) = _check_texts([tokens], 1, "ends_in_repetition")
    for size in range(min_phrase, len(tokens) // min_repeats + 1):
        phrase = tokens[-size:]
        if all(tokens[-(k + 1) * size : len(tokens) - k * size] == phrase for k in range(1, min_repeats)):
            return True
    return False


def repetition_rate(texts: Sequence[Sequence[int]], min_phrase: int = 2, min_repeats: int = 3) -> float:
    """Return the share of ``texts`` (lists of token ids) that end in a loop (``ends_in_repetition``)."""
    texts = _check_texts(texts, 1, "repetition_rate")
    return sum(ends_in_repetition(t, min_phrase, min_repeats) for t in texts) / len(texts)


def self_bleu(texts: Sequence[Sequence[int]], n: int = 4) -> float:
    """Return Self-BLEU-n: the mean BLEU (uniform weights on 1..n-grams) of each text against all the others.

    0 when no text shares an n-gram with another, 1 when they are all the same. nltk computes BLEU, with its
    smoothing method 1 (as Holtzman et al.'s code), so a text with no shared 4-gram scores near 0, not exactly 0.
    """
    texts = _check_texts(texts, n, "self_bleu")
    if len(texts) < 2:
        raise NanogptEduError("self_bleu compares each text with the others: it needs at least 2 texts")
    weights = (1 / n,) * n
    smooth = SmoothingFunction().method1
    scores = [sentence_bleu(texts[:i] + texts[i + 1 :], text, weights=weights, smoothing_function=smooth)
              for i, text in enumerate(texts)]
    return float(sum(scores) / len(scores))


def distinct_n(texts: Sequence[Sequence[int]], n: int = 2) -> float:
    """Return distinct-n: different n-grams over all n-grams, pooled over ``texts`` (1 = no n-gram repeats)."""
    texts = _check_texts(texts, n, "distinct_n")
    grams = [tuple(t[i : i + n]) for t in texts for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams)


def repeated_ngrams(texts: Sequence[Sequence[int]], n: int = 3) -> float:
    """Return the mean, over ``texts``, of the share of a text's n-grams that already occurred earlier in it.

    Not one of the paper's measures: it sees a loop as soon as it starts, where "ends in a loop" needs room for
    three copies, so it suits short texts. 0 for a text that never repeats an n-gram.
    """
    texts = _check_texts(texts, n, "repeated_ngrams")
    shares = []
    for t in texts:
        grams = [tuple(t[i : i + n]) for i in range(len(t) - n + 1)]
        shares.append(1 - len(set(grams)) / len(grams))
    return sum(shares) / len(shares)


def zipf_coefficient(texts: Sequence[Sequence[int]], top: int = 5000) -> float:
    """Return s in frequency ∝ rank^-s: minus the least-squares slope of log(count) on log(rank) over the ``top``
    most frequent tokens of ``texts`` pooled (the paper's measure). It needs at least two different tokens."""
    texts = _check_texts(texts, 1, "zipf_coefficient")
    counts = sorted(Counter(tok for t in texts for tok in t).values(), reverse=True)[:top]
    if len(counts) < 2:
        raise NanogptEduError("zipf_coefficient needs at least two different tokens to fit a slope")
    ranks = np.arange(1, len(counts) + 1)
    slope = np.polyfit(np.log(ranks), np.log(counts), 1)[0]
    return float(-slope)


def generate_rows(model: GPT, prompts: torch.Tensor, max_new_tokens: int, seed: int = 0, **sampling) -> torch.Tensor:
    """Return (B, max_new_tokens): the new tokens ``generate`` draws after every prompt at once, seeded."""
    model = _check_model(model)
    prompts = _check_ids("prompts", prompts)
    out = generate(model, prompts, max_new_tokens, generator=torch.Generator().manual_seed(seed), **sampling)
    return out[:, prompts.size(1) :]


def score(model: GPT, prompts: torch.Tensor, continuations: torch.Tensor) -> dict[str, float]:
    """Return the scorecard's numbers for texts (B, C) written after ``prompts`` (B, P): perplexity (under the
    untruncated model), repetition (share ending in a loop), repeated 3-grams, Self-BLEU-4, distinct-2 and the
    Zipf coefficient."""
    texts = _check_ids("continuations", continuations).tolist()
    return {"perplexity": perplexity(token_probs(model, prompts, continuations)),
            "repetition": repetition_rate(texts), "repeated3": repeated_ngrams(texts), "self_bleu4": self_bleu(texts), "distinct2": distinct_n(texts),
            "zipf": zipf_coefficient(texts)}


@torch.no_grad()
def repeat_probability(model: GPT, line: Sequence[int], repeats: int) -> float:
    """Return how likely the model is to write ``line`` (token ids) once more after reading it ``repeats`` times in
    a row: the geometric mean of the probabilities of its tokens, each after the ones before (a probability per
    token, so lines of different lengths compare; Holtzman et al.'s Figure 4 plots the same per token)."""
    (line,) = _check_texts([line], 1, "repeat_probability")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise NanogptEduError(f"repeats must be a whole number >= 1, got {shown(repeats)}")
    context = torch.tensor([line * repeats])
    probs = token_probs(model, context, torch.tensor([line]))
    return float(probs.log().mean().exp())


# ---- figures -------------------------------------------------------------------------------------------------

@figure_function
def plot_scorecard(rows: dict[str, dict[str, float]], human: str = "human") -> Figure:
    """Return four bar charts, one per metric, a bar per decoding setting; the ``human`` row is drawn as a line."""
    metrics = [("perplexity", "perplexity (log scale)"), ("repeated3", "share of repeated 3-grams"),
               ("self_bleu4", "Self-BLEU-4"), ("zipf", "Zipf coefficient")]
    names = [name for name in rows if name != human]
    fig, axes = plt.subplots(2, 2, figsize=(MAX_WIDTH, 7.5), sharex=True)
    for ax, (key, label) in zip(axes.flat, metrics):
        ax.bar(range(len(names)), [rows[n][key] for n in names], color="#2b7bb9")
        if human in rows:
            ax.axhline(rows[human][key], color="#d95f02", linestyle="--", label="held-out Shakespeare (human)")
        if key == "perplexity":
            ax.set_yscale("log")
        ax.set_title(label, fontsize=FONT_SIZE + 2)
        ax.set_ylabel(label, fontsize=FONT_SIZE + 1)
        ax.tick_params(labelsize=FONT_SIZE)
    for ax in axes[1]:
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=FONT_SIZE)
        ax.set_xlabel("decoding setting", fontsize=FONT_SIZE + 1)
    axes[0, 0].legend(fontsize=FONT_SIZE)
    fig.suptitle("The same model, eight ways of choosing tokens, against the real text", fontsize=FONT_SIZE + 3)
    fig.tight_layout()
    return fig


@figure_function
def plot_temperature_sweep(temperatures: Sequence[float], series: dict[str, dict[str, Sequence[float]]],
                           human: dict[str, float] | None = None) -> Figure:
    """Return two line charts against temperature, perplexity and distinct-2, a line per method in ``series``
    ({method: {"perplexity": [...], "distinct2": [...]}}); ``human`` values are drawn as dashed lines."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(MAX_WIDTH, 4.2))
    for ax, key, label in ((left, "perplexity", "perplexity under the model (log scale)"),
                           (right, "distinct2", "distinct-2 (share of different 2-grams)")):
        for method, values in series.items():
            ax.plot(temperatures, values[key], marker="o", label=method)
        if human is not None:
            ax.axhline(human[key], color="grey", linestyle="--", label="held-out Shakespeare")
        ax.set_xlabel("temperature", fontsize=FONT_SIZE + 1)
        ax.set_ylabel(label, fontsize=FONT_SIZE + 1)
        ax.set_title(label.split(" (")[0] + " against temperature", fontsize=FONT_SIZE + 2)
        ax.tick_params(labelsize=FONT_SIZE)
    left.set_yscale("log")
    left.legend(fontsize=FONT_SIZE)
    fig.suptitle("Turning up the heat: plain sampling, top-p and min-p", fontsize=FONT_SIZE + 3)
    fig.tight_layout()
    return fig


@figure_function
def plot_repetition_trap(repeats: Sequence[int], curves: dict[str, Sequence[float]]) -> Figure:
    """Return a line chart of the probability of writing a line once more against how often it was already
    repeated, a line per line of text in ``curves``."""
    fig, ax = plt.subplots(figsize=(MAX_WIDTH * 0.8, 4.2))
    for label, probs in curves.items():
        ax.plot(repeats, probs, marker="o", label=label)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("times the line was already repeated in the context", fontsize=FONT_SIZE + 1)
    ax.set_ylabel("probability per token of one more copy", fontsize=FONT_SIZE + 1)
    ax.set_title("Does each copy make the next one likelier?", fontsize=FONT_SIZE + 2)
    ax.tick_params(labelsize=FONT_SIZE)
    ax.legend(fontsize=FONT_SIZE)
    fig.tight_layout()
    return fig


def load_early_model() -> GPT:
    """Return the early pocket model: the pocket model's recipe stopped after 120 of its 1,600 steps
    (``nanogpt_edu/pocket_early/README.md`` says how it was made)."""
    from .loading import load_model  # loading is heavier than this module needs elsewhere

    return load_model(str(Path(__file__).parent / "pocket_early"))
