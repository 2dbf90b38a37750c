"""Figures for the notebooks: what the model predicts next, what temperature and the masks do to it, and what
attention and the layers compute.

Every function returns a matplotlib ``Figure`` with a title that states what it shows and labelled axes; the
notebook shows it. Figures are at most ``MAX_WIDTH`` inches wide, so a notebook column shows them at full size,
and every label is at least ``FONT_SIZE`` points. Tokens are labelled with their text (``repr``-style, so a
leading space or a newline stays visible). Every text is drawn as it is, never parsed as math: GPT-2 has tokens
like ``$$``, `` $$``, ``#$#$`` and ``$$$$`` that matplotlib would otherwise read as the start of a formula.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import LogFormatter, LogFormatterMathtext
from matplotlib.patches import Patch
from torch.nn import functional as F

from .errors import NanogptEduError, shown
from .sampling import apply_masks, apply_temperature, min_p_mask, top_k_mask, top_p_mask
from .tokenizer import get_encoding

# kept tokens, masked tokens, probabilities before a mask. Blue and orange stay apart for the common colour-vision
# deficiencies, and masked bars are hatched outlines besides (never hue alone); the orange is dark enough for 3:1
# (WCAG's contrast for graphics) on white and on the grey bars it is drawn over
KEPT, MASKED, BEFORE = "#2b7bb9", "#a34f00", "#c9c9c9"
MAX_WIDTH = 10.0  # inches: about the width of a notebook column at matplotlib's 100 dpi
FONT_SIZE = 9  # points: the smallest text on any figure


def figure_function(plot: Callable[..., Figure]) -> Callable[..., Figure]:
    """Return ``plot`` wrapped as every figure function of the package is (decorate each ``plot_*`` with it)."""
    # Every figure function is wrapped, the one place where each is entered. Its texts are made while math
    # parsing is off, and any text the figure holds afterwards is switched off too, so a "$" in a token, title or
    # label is drawn as a dollar sign, and log axes number their ticks in plain text. Input it cannot draw (the wrong type, shape or size) raises
    # NanogptEduError in one line, as the package promises, instead of whatever torch or matplotlib raised.
    @functools.wraps(plot)
    def wrapper(*args, **kwargs) -> Figure:
        try:
            with plt.rc_context({"text.parse_math": False}):
                fig = plot(*args, **kwargs)
        except NanogptEduError:
            raise
        except (TypeError, ValueError, IndexError, KeyError, AttributeError, RuntimeError) as e:
            message = (str(e).strip().splitlines() or [""])[0]
            raise NanogptEduError(f"{plot.__name__} cannot draw this input ({type(e).__name__}: {message})") from None
        for text in fig.findobj(Text):
            text.set_parse_math(False)
        for ax in fig.axes:  # a log axis labels its ticks in math text ($10^{1}$): plain numbers, as math is off
            for axis in (ax.xaxis, ax.yaxis):
                for major in (True, False):
                    formatter = axis.get_major_formatter() if major else axis.get_minor_formatter()
                    if isinstance(formatter, LogFormatterMathtext):
                        plain = LogFormatter(base=formatter._base, labelOnlyBase=formatter.labelOnlyBase)
                        axis.set_major_formatter(plain) if major else axis.set_minor_formatter(plain)
        return fig

    return wrapper


def token_label(token_id: int, decode_bytes: Callable[[int], bytes] | None = None) -> str:
    """Return a short printable label for a token: its text in quotes, with spaces and newlines visible."""
    decode_bytes = decode_bytes or get_encoding().decode_single_token_bytes
    try:
        text = decode_bytes(token_id).decode("utf-8", errors="replace")
    except (KeyError, IndexError, ValueError, TypeError, OverflowError):  # tiktoken: KeyError for an unknown id
        raise NanogptEduError(f"token id {shown(token_id)} is not in the vocabulary") from None
    return repr(text)


def entropy(probs: torch.Tensor) -> float:
    """Return the entropy of a probability vector, in nats (0 for a sure thing, log(V) for uniform)."""
    p = probs[probs > 0]
    return float(-(p * p.log()).sum())


def plural(n: int, word: str) -> str:
    """Return "1 token" or "2 tokens": ``n`` and ``word``, with an s unless n is 1."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _top(values: torch.Tensor, n: int) -> list[int]:
    return torch.topk(values, min(n, values.numel())).indices.tolist()


def _token_axis(ax, labels: Sequence[str], xlabel: str) -> None:
    ax.set_xticks(range(len(labels)), labels, rotation=70, ha="right", fontsize=FONT_SIZE)
    ax.set_xlabel(xlabel, fontsize=FONT_SIZE + 1)
    ax.tick_params(axis="y", labelsize=FONT_SIZE)


@figure_function
def plot_next_token_probs(probs: torch.Tensor, top: int = 20, title: str = "Next-token probabilities",
                          decode_bytes=None) -> Figure:
    """Return a bar chart of the ``top`` most likely next tokens of a probability vector (vocab_size,)."""
    ids = _top(probs, top)
    fig, ax = plt.subplots(figsize=(MAX_WIDTH, 4))
    ax.bar(range(len(ids)), [probs[i].item() for i in ids], color=KEPT)
    _token_axis(ax, [token_label(i, decode_bytes) for i in ids], "next token (most likely first)")
    ax.set_title(title)
    ax.set_ylabel("probability", fontsize=FONT_SIZE + 1)
    fig.tight_layout()
    return fig


def _masked_bars(ax, before: torch.Tensor, after: torch.Tensor, masked: torch.Tensor, ids: list[int]) -> None:
    # wide grey bars: each token's probability before the mask; on top, narrower: a kept token in blue at its
    # renormalised probability, a masked one as an empty orange outline at the height it had (it now has 0)
    x = range(len(ids))
    kept = [bool(torch.isfinite(masked[i])) for i in ids]
    ax.bar(x, [before[i].item() for i in ids], color=BEFORE, width=0.85)
    ax.bar([i for i, k in zip(x, kept) if k], [after[i].item() for i, k in zip(ids, kept) if k], width=0.45,
           color=KEPT)
    ax.bar([i for i, k in zip(x, kept) if not k], [before[i].item() for i, k in zip(ids, kept) if not k],
           width=0.45, facecolor="none", edgecolor=MASKED, hatch="///", linewidth=1.2)


def _mask_legend(ax) -> None:
    ax.legend(handles=[Patch(color=BEFORE, label="before the mask"),
                       Patch(color=KEPT, label="kept, renormalised"),
                       Patch(facecolor="none", edgecolor=MASKED, hatch="///", label="masked: had this, now 0")],
              fontsize=FONT_SIZE)


@figure_function
def plot_top_k_mask(logits: torch.Tensor, k: int, show: int = 20, decode_bytes=None,
                    score_label: str = "logit") -> Figure:
    """Return a two-row figure of the top-k mask on scores (vocab_size,): the scores, then the probabilities.

    Top: the ``show`` largest scores (``score_label`` names them, say "logit / temperature"), coloured by whether
    top-k keeps them. Bottom: their probabilities before the mask and after it (renormalised over the kept
    tokens, which therefore all grow).
    """
    masked = top_k_mask(logits[None, :], k)[0]
    ids = _top(logits, show)
    labels = [token_label(i, decode_bytes) for i in ids]
    kept = [bool(torch.isfinite(masked[i])) for i in ids]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(MAX_WIDTH, 7.5), sharex=True)
    top.bar(range(len(ids)), [logits[i].item() for i in ids], color=[KEPT if keep else "none" for keep in kept],
            edgecolor=[KEPT if keep else MASKED for keep in kept], hatch=None)
    for bar, keep in zip(top.patches, kept):
        bar.set_hatch(None if keep else "///")
    top.axhline(torch.topk(logits, k).values[-1].item(), color="black", linestyle="--", linewidth=1,
                label=f"the k-th largest score (k={k})")
    top.set_title(f"Top-k, k={k}: scores below the k-th largest become -inf")
    top.set_ylabel(score_label, fontsize=FONT_SIZE + 1)
    top.tick_params(axis="y", labelsize=FONT_SIZE)
    top.legend(fontsize=FONT_SIZE)
    _masked_bars(bottom, F.softmax(logits, dim=-1), F.softmax(masked, dim=-1), masked, ids)
    bottom.set_title(f"After softmax the {plural(k, 'kept token')} share all the probability")
    bottom.set_ylabel("probability (linear scale)", fontsize=FONT_SIZE + 1)
    _token_axis(bottom, labels, "token (highest logit first)")
    _mask_legend(bottom)
    fig.tight_layout()
    return fig


@figure_function
def plot_temperature_grid(logits: torch.Tensor, temperatures: Sequence[float] = (0.5, 0.8, 1.0, 1.5),
                          top: int = 12, decode_bytes=None) -> Figure:
    """Return one panel per temperature (two per row): the ``top`` tokens' probabilities of
    softmax(logits / temperature), on one shared scale so the panels compare, the top probability written in."""
    ids = _top(logits, top)
    labels = [token_label(i, decode_bytes) for i in ids]
    rows = (len(temperatures) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(MAX_WIDTH, 3.6 * rows), sharey=True, squeeze=False)
    for ax, t in zip(axes.flat, temperatures):
        probs = F.softmax(logits / t, dim=-1)
        heights = [probs[i].item() for i in ids]
        ax.bar(range(len(ids)), heights, color=KEPT)
        ax.text(0, heights[0], f" {heights[0]:.3f}", ha="left", va="bottom", fontsize=FONT_SIZE + 1)
        ax.set_title(f"temperature {t}: entropy {entropy(probs):.2f} nats", fontsize=FONT_SIZE + 2)
        _token_axis(ax, labels, "next token")
    for ax in axes[:, 0]:
        ax.set_ylabel("probability (linear scale)", fontsize=FONT_SIZE + 1)
    for ax in axes.flat[len(temperatures):]:
        ax.set_visible(False)
    top_height = max(ax.patches[0].get_height() for ax in axes.flat[: len(temperatures)])
    axes.flat[0].set_ylim(0, top_height * 1.15)  # shared: room above the tallest bar for its number
    fig.suptitle("Lower temperature sharpens the distribution, higher flattens it", fontsize=FONT_SIZE + 3)
    fig.tight_layout()
    return fig


@figure_function
def plot_filter_comparison(logits: torch.Tensor, temperature: float = 0.8, top_k: int = 10, top_p: float = 0.5,
                           min_p: float = 0.2, show: int = 16, decode_bytes=None) -> Figure:
    """Return greedy, top-k, top-p and min-p side by side on the same logits (after the temperature): which of
    the ``show`` likeliest tokens each keeps, and their probabilities before and after."""
    scaled = logits[None, :] / temperature
    greedy = torch.full_like(scaled, -float("inf"))
    greedy[0, scaled.argmax()] = 0.0
    rules = [
        ("greedy (argmax)", greedy),
        (f"top-k, k={top_k}", top_k_mask(scaled, top_k)),
        (f"top-p, p={top_p}", top_p_mask(scaled, top_p)),
        (f"min-p, p={min_p}", min_p_mask(scaled, min_p)),
    ]
    before = F.softmax(scaled[0], dim=-1)
    ids = _top(before, show)
    labels = [token_label(i, decode_bytes) for i in ids]
    # each panel keeps its own scale: greedy's single bar at 1 would flatten the others
    fig, axes = plt.subplots(2, 2, figsize=(MAX_WIDTH, 8))
    for ax, (name, masked) in zip(axes.flat, rules):
        _masked_bars(ax, before, F.softmax(masked[0], dim=-1), masked[0], ids)
        ax.set_title(f"{name}: {plural(int(torch.isfinite(masked).sum()), 'token')} kept", fontsize=FONT_SIZE + 2)
        ax.set_ylabel("probability (linear scale)", fontsize=FONT_SIZE + 1)
        _token_axis(ax, labels, "next token")
    _mask_legend(axes[0, 1])
    fig.suptitle(f"Four ways to choose the candidates, on the same distribution (temperature {temperature})",
                 fontsize=FONT_SIZE + 3)
    fig.tight_layout()
    return fig


@figure_function
def plot_time_per_token(positions: Sequence[int], series: dict[str, Sequence[float]],
                        title: str = "Time per generated token") -> Figure:
    """Return a line plot of milliseconds per token against context length, one line per method."""
    fig, ax = plt.subplots(figsize=(MAX_WIDTH * 0.8, 4))
    for name, times in series.items():
        ax.plot(positions, [1000 * t for t in times], label=name)
    ax.set_title(title)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("milliseconds per token")
    ax.legend()
    fig.tight_layout()
    return fig


@figure_function
def plot_attention(weights: torch.Tensor, labels: Sequence[str], title: str) -> Figure:
    """Return one heatmap per head of attention ``weights`` (n_head, T, T): row = the token that looks (query),
    column = the token looked at (key); ``labels`` are the T tokens. The masked future (above the diagonal) is
    hatched grey, and each weight is written in its cell while they fit."""
    n_head, T = weights.size(0), weights.size(-1)
    cols = min(n_head, 2)
    rows = (n_head + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(MAX_WIDTH * 0.85, 3.9 * rows + 0.6), squeeze=False,
                             sharex=True, sharey=True, layout="constrained")
    future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
    for h, ax in enumerate(axes.flat):
        if h >= n_head:
            ax.set_visible(False)
            continue
        shown = weights[h].detach().float().masked_fill(future, float("nan")).numpy()  # NaN: drawn as "bad"
        image = ax.imshow(shown, cmap=plt.get_cmap("Blues").with_extremes(bad=BEFORE), vmin=0, vmax=1)
        for q, k in future.nonzero().tolist():
            ax.add_patch(plt.Rectangle((k - 0.5, q - 0.5), 1, 1, fill=False, hatch="//", edgecolor="white",
                                       linewidth=0))
        if T <= 8:
            for q in range(T):
                for k in range(q + 1):
                    w = float(weights[h, q, k])
                    ax.text(k, q, f"{w:.2f}", ha="center", va="center", fontsize=FONT_SIZE,
                            color="white" if w > 0.55 else "black")
        ax.set_title(f"head {h}", fontsize=FONT_SIZE + 2)
    for ax in axes[-1]:
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=FONT_SIZE)
        ax.set_xlabel("looked at (key)", fontsize=FONT_SIZE + 1)
    for ax in axes[:, 0]:
        ax.set_yticks(range(len(labels)), labels, fontsize=FONT_SIZE)
        ax.set_ylabel("looking (query)", fontsize=FONT_SIZE + 1)
    fig.colorbar(image, ax=axes, shrink=0.7, label="attention weight (grey: masked future)")
    fig.suptitle(title, fontsize=FONT_SIZE + 3)
    return fig


@figure_function
def plot_gelu() -> Figure:
    """Return GELU (exact and GPT-2's tanh form) beside ReLU on [-4, 3]."""
    x = torch.linspace(-4, 3, 400)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.plot(x, F.relu(x), color=BEFORE, linewidth=3, label="ReLU: max(0, x)")
    ax.plot(x, F.gelu(x), color=KEPT, label="GELU: x * Phi(x)")
    ax.plot(x, F.gelu(x, approximate="tanh"), color=MASKED, linestyle="--", label="GELU, GPT-2's tanh form")
    ax.set_title("GELU: like ReLU, but smooth, and slightly negative just below 0")
    ax.set_xlabel("input")
    ax.set_ylabel("output")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


@figure_function
def plot_architecture(stages: Sequence[tuple[str, str, Sequence[int]]], repeated: tuple[int, int], n_layer: int,
                      residuals: Sequence[tuple[int, int]] = (), title: str = "One forward pass") -> Figure:
    """Return a top-to-bottom diagram of a forward pass: one box per stage, with its shape.

    ``stages`` are ``(what, shape in symbols, shape)`` in the order the pass meets them (the shapes as a forward
    hook recorded them, so the figure shows what really ran). ``stages[start:stop]`` for ``repeated = (start,
    stop)`` are one Block, framed and marked as run ``n_layer`` times. Each ``(i, j)`` of ``residuals`` draws the
    residual stream's skip from the output of stage ``i`` to stage ``j``, where it is added back.
    """
    n = len(stages)
    fig, ax = plt.subplots(figsize=(MAX_WIDTH * 0.8, 0.62 * n + 1.4))
    y = [n - 1 - i for i in range(n)]  # the first stage at the top
    left, right = 0.12, 0.94
    for i, (what, symbols, shape) in enumerate(stages):
        added = what.lstrip().startswith("x +")
        ax.add_patch(plt.Rectangle((left, y[i] - 0.3), right - left, 0.6, facecolor="#dbe9f6" if added else "white",
                                   edgecolor=KEPT, linewidth=1.2))
        ax.text(left + 0.02, y[i], what, ha="left", va="center", fontsize=FONT_SIZE + 1)
        dims = "(" + ", ".join(f"{d:,}" for d in shape) + ")"
        ax.text(right - 0.02, y[i], f"{symbols} = {dims}", ha="right", va="center", fontsize=FONT_SIZE + 1,
                family="monospace")
        if i + 1 < n:
            ax.annotate("", xy=(0.5, y[i + 1] + 0.3), xytext=(0.5, y[i] - 0.3),
                        arrowprops=dict(arrowstyle="->", color="black", linewidth=1))
    for i, j in residuals:  # the skip leaves stage i's box on the left, runs down and joins stage j's box
        ax.plot([left, 0.06, 0.06], [y[i], y[i], y[j]], color=MASKED, linewidth=1.6)
        ax.annotate("", xy=(left, y[j]), xytext=(0.06, y[j]),
                    arrowprops=dict(arrowstyle="->", color=MASKED, linewidth=1.6))
    start, stop = repeated
    top, bottom = y[start] + 0.45, y[stop - 1] - 0.45
    ax.add_patch(plt.Rectangle((0.02, bottom), 0.96, top - bottom, fill=False, linestyle="--", edgecolor="grey"))
    ax.text(0.99, (top + bottom) / 2, f"Block: run n_layer = {n_layer} times, the shape never changes",
            rotation=270, ha="left", va="center", fontsize=FONT_SIZE)
    ax.set_xlim(0, 1.04)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(title)
    ax.set_xlabel("each box: the stage, and its output's shape in symbols = as recorded (orange: the residual "
                  "skips)", fontsize=FONT_SIZE)
    ax.set_ylabel("the forward pass, top to bottom", fontsize=FONT_SIZE + 1)
    fig.tight_layout()
    return fig


@figure_function
def plot_logit_lens(layer_names: Sequence[str], guesses: Sequence[str], probs: Sequence[float],
                    title: str) -> Figure:
    """Return one bar per layer: the probability of that layer's top guess, labelled with the guess itself."""
    fig, ax = plt.subplots(figsize=(MAX_WIDTH * 0.8, 4.2))
    final = guesses[-1]
    ax.bar(range(len(probs)), probs, color=[KEPT if g == final else BEFORE for g in guesses])
    for i, (guess, p) in enumerate(zip(guesses, probs)):
        ax.text(i, p + 0.01, guess, ha="center", va="bottom", fontsize=FONT_SIZE + 1)
    ax.set_xticks(range(len(layer_names)), layer_names, fontsize=FONT_SIZE)
    ax.set_ylim(0, max(probs) * 1.25 + 0.02)
    ax.set_title(title)
    ax.set_xlabel("read out after", fontsize=FONT_SIZE + 1)
    ax.set_ylabel("probability of the top guess", fontsize=FONT_SIZE + 1)
    ax.legend(handles=[Patch(color=KEPT, label="the final answer"), Patch(color=BEFORE, label="another token")],
              fontsize=FONT_SIZE, loc="upper left")
    fig.tight_layout()
    return fig


@figure_function
def plot_draws_vs_probs(probs: torch.Tensor, draws: torch.Tensor, top: int = 15, decode_bytes=None) -> Figure:
    """Return the ``top`` likeliest tokens' probabilities beside how often each came up in ``draws`` (ids).

    Both on one linear scale: the left axis reads probability (the draws' bars as their share), the right axis
    the same heights as counts of draws."""
    ids = _top(probs, top)
    counts = torch.bincount(draws.flatten(), minlength=probs.numel()).float() / draws.numel()
    x = torch.arange(len(ids))
    fig, ax = plt.subplots(figsize=(MAX_WIDTH, 4.2))
    ax.bar(x - 0.2, [probs[i].item() for i in ids], width=0.4, color=BEFORE, label="probability")
    ax.bar(x + 0.2, [counts[i].item() for i in ids], width=0.4, color=KEPT,
           label=f"share of {draws.numel():,} draws")
    _token_axis(ax, [token_label(i, decode_bytes) for i in ids], "token (most likely first)")
    ax.set_ylabel("probability, or share of draws (linear scale)", fontsize=FONT_SIZE + 1)
    n = draws.numel()  # the same bars read as counts on the right: share x n
    counts_axis = ax.secondary_yaxis("right", functions=(lambda share: share * n, lambda count: count / n))
    counts_axis.set_ylabel(f"count of {n:,} draws", fontsize=FONT_SIZE + 1)
    counts_axis.tick_params(labelsize=FONT_SIZE)
    ax.set_title("torch.multinomial draws each token about as often as its probability says")
    ax.legend(fontsize=FONT_SIZE)
    fig.tight_layout()
    return fig


@figure_function
def plot_kept_per_step(kept: Sequence[int], top_k: int, top_p: float) -> Figure:
    """Return how many tokens top-p kept at each step of a generation, beside top-k's fixed ``top_k``."""
    fig, ax = plt.subplots(figsize=(MAX_WIDTH * 0.8, 4))
    ax.plot(range(1, len(kept) + 1), kept, color=KEPT, marker=".", label=f"top-p, p={top_p}")
    ax.axhline(top_k, color=MASKED, linestyle="--", label=f"top-k, k={top_k}")
    ax.set_yscale("log")
    ax.set_title("Top-p keeps few tokens where the model is sure, many where it is not")
    ax.set_xlabel("generation step")
    ax.set_ylabel("tokens kept (log scale)")
    ax.legend()
    fig.tight_layout()
    return fig


@figure_function
def plot_every_probability(logits: torch.Tensor, names: Sequence[str], settings: Sequence[dict],
                           title: str = "Every token's probability under each setting") -> Figure:
    """Return one panel per sampling setting, each with a bar for every token of a small vocabulary.

    ``logits`` (V,) are the scores of the ``names`` (V of them, a dozen or so); each of ``settings`` is a dict of
    ``sample_next_token``'s keywords (temperature, top_k, top_p, min_p; temperature > 0). Bars as in the mask
    figures: grey the probability at that temperature, blue what a kept token gets after the masks (renormalised),
    an orange outline a masked one at the height it had. All panels share one probability scale.
    """
    order = torch.argsort(logits, descending=True).tolist()
    labels = [repr(names[i]) for i in order]
    rows = (len(settings) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(MAX_WIDTH, 2.3 * rows + 1.4), sharex=True, sharey=True,
                             squeeze=False)
    for ax, setting in zip(axes.flat, settings):
        scaled = apply_temperature(logits[None, :].double(), setting.get("temperature", 1.0))
        masked = apply_masks(scaled, setting.get("top_k"), setting.get("top_p"), setting.get("min_p"))[0]
        before = F.softmax(scaled[0], dim=-1)
        _masked_bars(ax, before, F.softmax(masked, dim=-1), masked, order)
        kept = torch.isfinite(masked)
        what = ", ".join(f"{key.replace('temperature', 'T').replace('_', '-')} {value}"
                         for key, value in setting.items())
        ax.set_title(f"{what}: {plural(int(kept.sum()), 'token')} kept, holding {before[kept].sum():.0%}",
                     fontsize=FONT_SIZE + 1)
    for ax in axes.flat[len(settings):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("probability\n(linear scale)", fontsize=FONT_SIZE + 1)
    for ax in axes.flat:
        ax.tick_params(axis="y", labelsize=FONT_SIZE)
    last = len(settings) - 1
    for i, ax in enumerate(axes.flat[: len(settings)]):
        if i + 2 > last:  # the lowest visible panel of each column carries the token names
            _token_axis(ax, labels, "token (highest logit first)")
            ax.xaxis.set_tick_params(labelbottom=True)
    _mask_legend(axes.flat[0])
    fig.suptitle(title, fontsize=FONT_SIZE + 3)
    fig.tight_layout()
    return fig


@figure_function
def plot_log_probabilities(logits: torch.Tensor, names: Sequence[str], temperatures: Sequence[float] = (0.5, 1.0, 2.0),
                           title: str = "Log-probabilities: temperature divides every gap by T") -> Figure:
    """Return ln p of every token of a small vocabulary, one line per temperature: log_softmax(logits / T).

    On this axis the tail that a linear probability axis squashes to nothing is visible, and temperature's effect
    is plain: the gaps between tokens' log-probabilities are the logits' gaps divided by T.
    """
    order = torch.argsort(logits, descending=True).tolist()
    fig, ax = plt.subplots(figsize=(MAX_WIDTH * 0.8, 4.2))
    for t, colour in zip(temperatures, plt.get_cmap("viridis")(torch.linspace(0, 0.85, len(temperatures)).numpy())):
        log_probs = F.log_softmax(logits.double() / t, dim=-1)
        ax.plot(range(len(order)), [log_probs[i].item() for i in order], marker="o", color=colour,
                label=f"temperature {t}")
    _token_axis(ax, [repr(names[i]) for i in order], "token (highest logit first)")
    ax.set_ylabel("log-probability ln p (nats)\n(linear axis; 0 means p = 1)", fontsize=FONT_SIZE + 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=FONT_SIZE)
    fig.tight_layout()
    return fig


def token_spans_html(ids: Sequence[int], decode_bytes=None) -> str:
    """Return HTML showing each token of ``ids`` as a coloured span (hover: its id); spaces show as "·"."""
    decode_bytes = decode_bytes or get_encoding().decode_single_token_bytes
    colours = ("#cfe3f5", "#fde2b8", "#d4edd0", "#f6d0d8", "#e3d7f2")
    spans = []
    for n, i in enumerate(ids):
        text = decode_bytes(i).decode("utf-8", errors="replace").replace(" ", "·").replace("\n", "↵")
        spans.append(f'<span title="id {i}" style="background:{colours[n % len(colours)]}; padding:2px 1px; '
                     f'margin:0 1px; border-radius:3px">{html.escape(text)}</span>')
    return f'<div style="font-family:monospace; font-size:15px; line-height:2">{"".join(spans)}</div>'
