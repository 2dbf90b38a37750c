import matplotlib

matplotlib.use("Agg")  # no display needed

import matplotlib.pyplot as plt
import pytest
import torch

from nanogpt_edu.plots import (
    entropy, plot_filter_comparison, plot_next_token_probs, plot_temperature_grid, plot_time_per_token,
    plot_top_k_mask, token_label,
)

LOGITS = torch.randn(50257, generator=torch.Generator().manual_seed(0)) * 2


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")



def test_next_token_probs_has_one_bar_per_token_with_text_labels():
    fig = plot_next_token_probs(torch.softmax(LOGITS, -1), top=20)
    ax = fig.axes[0]
    assert len(ax.patches) == 20
    assert ax.get_title() == "Next-token probabilities"
    assert ax.get_xlabel() and ax.get_ylabel() == "probability"
    top = int(LOGITS.argmax())
    assert ax.get_xticklabels()[0].get_text() == token_label(top)


def test_top_k_mask_colours_kept_and_masked():
    fig = plot_top_k_mask(LOGITS, k=10, show=30)
    left, right = fig.axes
    assert len(left.patches) == 30 and len(right.patches) == 60
    colours = [p.get_facecolor() for p in left.patches]
    assert len(set(colours[:10])) == 1 and colours[10] != colours[0]  # first 10 kept, the rest grey
    for ax in (left, right):
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


def test_temperature_grid_reports_entropy():
    fig = plot_temperature_grid(LOGITS, temperatures=(0.5, 1.0, 2.0), top=10)
    assert len(fig.axes) == 3
    assert all(len(ax.patches) == 10 for ax in fig.axes)
    assert "entropy" in fig.axes[0].get_title()
    assert fig.axes[0].get_ylabel() == "probability"
    assert all(ax.get_xlabel() for ax in fig.axes)
    # lower temperature, lower entropy
    e = [float(ax.get_title().split("entropy ")[1].split()[0]) for ax in fig.axes]
    assert e[0] < e[1] < e[2]


def test_filter_comparison_has_four_panels():
    fig = plot_filter_comparison(LOGITS, top_k=5, top_p=0.5, min_p=0.1, show=20)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 4
    assert titles[0] == "greedy (T=0): 1 tokens kept"
    assert titles[1] == "top-k, k=5: 5 tokens kept"
    assert fig.axes[0].get_ylabel() and all(ax.get_xlabel() for ax in fig.axes)


def test_time_per_token_lines():
    fig = plot_time_per_token([1, 2, 3], {"naive": [0.1, 0.2, 0.3], "cached": [0.05, 0.05, 0.05]})
    ax = fig.axes[0]
    assert len(ax.lines) == 2
    assert ax.get_xlabel() == "context length (tokens)" and ax.get_ylabel() == "milliseconds per token"


def test_entropy_bounds():
    assert entropy(torch.tensor([1.0, 0.0])) == 0.0
    assert abs(entropy(torch.full((4,), 0.25)) - torch.log(torch.tensor(4.0)).item()) < 1e-6


def test_token_label_shows_spaces_and_newlines():
    assert token_label(198) == repr("\n")
    assert token_label(616) == repr(" my")
