"""Figures for the notebooks: what the model predicts next, and what temperature and the masks do to it.

Every function returns a matplotlib ``Figure`` with a title and labelled axes; the notebook shows it. Token ids are
labelled with their text (``repr``-style, so a leading space or a newline stays visible).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torch.nn import functional as F

from .sampling import min_p_mask, top_k_mask, top_p_mask
from .tokenizer import get_encoding

KEPT, MASKED = "#2b7bb9", "#d9d9d9"


def token_label(token_id: int, decode_bytes: Callable[[int], bytes] | None = None) -> str:
    """Return a short printable label for a token: its text in quotes, with spaces and newlines visible."""
    decode_bytes = decode_bytes or get_encoding().decode_single_token_bytes
    text = decode_bytes(token_id).decode("utf-8", errors="replace")
    return repr(text)


def entropy(probs: torch.Tensor) -> float:
    """Return the entropy of a probability vector, in nats (0 for a sure thing, log(V) for uniform)."""
    p = probs[probs > 0]
    return float(-(p * p.log()).sum())


def _top(probs: torch.Tensor, n: int) -> tuple[list[int], list[float]]:
    values, ids = torch.topk(probs, min(n, probs.numel()))
    return ids.tolist(), values.tolist()


def plot_next_token_probs(probs: torch.Tensor, top: int = 20, title: str = "Next-token probabilities",
                          decode_bytes=None) -> Figure:
    """Return a bar chart of the ``top`` most likely next tokens of a probability vector (vocab_size,)."""
    ids, values = _top(probs, top)
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar(range(len(ids)), values, color=KEPT)
    ax.set_xticks(range(len(ids)), [token_label(i, decode_bytes) for i in ids], rotation=60, ha="right")
    ax.set_title(title)
    ax.set_xlabel("next token (most likely first)")
    ax.set_ylabel("probability")
    fig.tight_layout()
    return fig


def plot_top_k_mask(logits: torch.Tensor, k: int, show: int = 30, decode_bytes=None) -> Figure:
    """Return a two-panel figure of the top-k mask on logits (vocab_size,): kept vs -inf, then probabilities.

    Left: the ``show`` largest logits, coloured by whether top-k keeps them. Right: their probabilities before the
    mask and after it (renormalised over the kept tokens, which therefore all grow).
    """
    masked = top_k_mask(logits[None, :], k)[0]
    before = F.softmax(logits, dim=-1)
    after = F.softmax(masked, dim=-1)
    ids, _ = _top(logits, show)
    kept = [bool(torch.isfinite(masked[i])) for i in ids]
    colors = [KEPT if keep else MASKED for keep in kept]
    labels = [token_label(i, decode_bytes) for i in ids]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    left.bar(range(len(ids)), [logits[i].item() for i in ids], color=colors)
    left.set_title(f"Top-k mask, k={k}: grey tokens become -inf")
    left.set_xlabel("token (highest logit first)")
    left.set_ylabel("logit")
    left.set_xticks(range(len(ids)), labels, rotation=75, ha="right", fontsize=7)
    x = torch.arange(len(ids))
    right.bar(x - 0.2, [before[i].item() for i in ids], width=0.4, color=MASKED, label="before the mask")
    right.bar(x + 0.2, [after[i].item() for i in ids], width=0.4, color=KEPT, label=f"after (renormalised over {k})")
    right.set_title("Probabilities before and after the mask")
    right.set_xlabel("token (highest logit first)")
    right.set_ylabel("probability")
    right.set_xticks(range(len(ids)), labels, rotation=75, ha="right", fontsize=7)
    right.legend()
    fig.tight_layout()
    return fig


def plot_temperature_grid(logits: torch.Tensor, temperatures: Sequence[float] = (0.5, 0.8, 1.0, 1.5),
                          top: int = 15, decode_bytes=None) -> Figure:
    """Return one panel per temperature: the ``top`` tokens' probabilities of softmax(logits / T), with entropy."""
    ids, _ = _top(logits, top)
    labels = [token_label(i, decode_bytes) for i in ids]
    fig, axes = plt.subplots(1, len(temperatures), figsize=(4 * len(temperatures), 4), sharey=True)
    for ax, t in zip(axes, temperatures):
        probs = F.softmax(logits / t, dim=-1)
        ax.bar(range(len(ids)), [probs[i].item() for i in ids], color=KEPT)
        ax.set_title(f"T = {t}: entropy {entropy(probs):.2f} nats")
        ax.set_xlabel("token")
        ax.set_xticks(range(len(ids)), labels, rotation=75, ha="right", fontsize=7)
    axes[0].set_ylabel("probability")
    fig.suptitle("Temperature reshapes the next-token distribution")
    fig.tight_layout()
    return fig


def plot_filter_comparison(logits: torch.Tensor, temperature: float = 0.8, top_k: int = 200, top_p: float = 0.9,
                           min_p: float = 0.05, show: int = 40) -> Figure:
    """Return greedy, top-k, top-p and min-p side by side: which of the ``show`` likeliest tokens each keeps."""
    scaled = logits[None, :] / temperature
    greedy = torch.full_like(scaled, -float("inf"))
    greedy[0, scaled.argmax()] = 0.0
    rules = [
        ("greedy (T=0)", greedy),
        (f"top-k, k={top_k}", top_k_mask(scaled, top_k)),
        (f"top-p, p={top_p}", top_p_mask(scaled, top_p)),
        (f"min-p, p={min_p}", min_p_mask(scaled, min_p)),
    ]
    ids, _ = _top(logits, show)
    fig, axes = plt.subplots(1, len(rules), figsize=(16, 4), sharey=True)
    for ax, (name, masked) in zip(axes, rules):
        probs = F.softmax(masked[0], dim=-1)
        n_kept = int(torch.isfinite(masked).sum())
        colors = [KEPT if torch.isfinite(masked[0, i]) else MASKED for i in ids]
        ax.bar(range(len(ids)), [probs[i].item() for i in ids], color=colors)
        ax.set_title(f"{name}: {n_kept} tokens kept")
        ax.set_xlabel(f"the {len(ids)} likeliest tokens")
    axes[0].set_ylabel("probability after masking")
    fig.suptitle(f"Four ways to choose the candidates (temperature {temperature} first)")
    fig.tight_layout()
    return fig


def plot_time_per_token(positions: Sequence[int], series: dict[str, Sequence[float]],
                        title: str = "Time per generated token") -> Figure:
    """Return a line plot of milliseconds per token against context length, one line per method."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, times in series.items():
        ax.plot(positions, [1000 * t for t in times], label=name)
    ax.set_title(title)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("milliseconds per token")
    ax.legend()
    fig.tight_layout()
    return fig
