import matplotlib

matplotlib.use("Agg")  # no display needed

import matplotlib.pyplot as plt
import pytest
import torch

from nanogpt_edu.plots import (
    BEFORE, FONT_SIZE, KEPT, MASKED, MAX_WIDTH, entropy, plot_architecture, plot_attention, plot_draws_vs_probs, plot_filter_comparison,
    plot_gelu, plot_kept_per_step, plot_logit_lens, plot_next_token_probs, plot_temperature_grid,
    plot_time_per_token, plot_top_k_mask, plural, token_label, token_spans_html,
)
from nanogpt_edu.plots import plot_every_probability, plot_log_probabilities
from nanogpt_edu.sampling import top_k_mask

LOGITS = torch.randn(50257, generator=torch.Generator().manual_seed(0)) * 2


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


PROBS = torch.softmax(LOGITS, -1)
ARCHITECTURE = [("idx", "(B, T)", (1, 5)), ("ln_1", "(B, T, C)", (1, 5, 8)), ("x + attn(ln_1(x))", "(B, T, C)",
                (1, 5, 8)), ("lm_head", "(B, 1, vocab)", (1, 1, 50257))]
TOY = torch.tensor([2.0, 1.0, 1.0, 0.0, -1.0])  # a small vocabulary with a tie
TOY_NAMES = [" a", " b", " c", " d", " e"]
FIGURES = {  # every figure of the notebooks, made from small inputs
    "next token": lambda: plot_next_token_probs(PROBS, top=20),
    "top-k mask": lambda: plot_top_k_mask(LOGITS, k=10),
    "temperature grid": lambda: plot_temperature_grid(LOGITS),
    "filters": lambda: plot_filter_comparison(LOGITS),
    "time per token": lambda: plot_time_per_token([1, 2, 3], {"naive": [0.1, 0.2, 0.3]}),
    "attention": lambda: plot_attention(torch.softmax(torch.randn(4, 5, 5), -1), list("abcde"), "attention"),
    "gelu": plot_gelu,
    "architecture": lambda: plot_architecture(ARCHITECTURE, repeated=(1, 3), n_layer=6, residuals=[(0, 2)]),
    "logit lens": lambda: plot_logit_lens(["emb", "1", "2"], ["'a'", "'b'", "'b'"], [0.1, 0.3, 0.5], "lens"),
    "draws": lambda: plot_draws_vs_probs(PROBS, torch.multinomial(PROBS, 500, replacement=True)),
    "kept per step": lambda: plot_kept_per_step([3, 50, 7], top_k=20, top_p=0.9),
    "every probability": lambda: plot_every_probability(TOY, TOY_NAMES, [dict(temperature=0.5), dict(top_k=2),
                                                                         dict(top_p=0.5)]),
    "log-probabilities": lambda: plot_log_probabilities(TOY, TOY_NAMES),
}


@pytest.mark.parametrize("name", list(FIGURES))
def test_every_figure_fits_a_notebook_column_with_legible_text_a_title_and_axis_labels(name):
    fig = FIGURES[name]()
    assert fig.get_size_inches()[0] <= MAX_WIDTH
    fig.canvas.draw()  # lay out the text, so every label exists with its final size
    sizes = [t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_text().strip()]
    assert min(sizes) >= FONT_SIZE
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>" or not ax.get_visible():
            continue
        assert ax.get_title() or fig._suptitle is not None, name
        # an axis is labelled, or shares its scale with a panel whose axis is (as subplots with sharex/sharey)
        assert any(a.get_xlabel() for a in ax.get_shared_x_axes().get_siblings(ax)), name
        assert any(a.get_ylabel() for a in ax.get_shared_y_axes().get_siblings(ax)) or ax.images, name


def test_next_token_probs_has_one_bar_per_token_with_text_labels():
    fig = plot_next_token_probs(torch.softmax(LOGITS, -1), top=20)
    ax = fig.axes[0]
    assert len(ax.patches) == 20
    assert ax.get_title() == "Next-token probabilities"
    assert ax.get_xlabel() and ax.get_ylabel() == "probability"
    top = int(LOGITS.argmax())
    assert ax.get_xticklabels()[0].get_text() == token_label(top)


def test_top_k_mask_colours_kept_and_masked_and_keeps_masked_bars_visible():
    fig = plot_top_k_mask(LOGITS, k=10, show=30)
    scores, probs = fig.axes
    assert len(scores.patches) == 30 and len(probs.patches) == 60  # probabilities: before, then kept/masked
    colours = [matplotlib.colors.to_hex(p.get_facecolor()) for p in scores.patches]
    assert set(colours[:10]) == {KEPT}
    assert {matplotlib.colors.to_hex(p.get_edgecolor()) for p in scores.patches[10:]} == {MASKED}
    assert all(p.get_hatch() for p in scores.patches[10:]) and not any(p.get_hatch() for p in scores.patches[:10])
    masked_bars = probs.patches[30 + 10:]
    assert all(bar.get_height() > 0 and bar.get_hatch() for bar in masked_bars)  # outlines at the old height
    kept_after = sum(bar.get_height() for bar in probs.patches[30:40])
    assert abs(kept_after - 1) < 1e-4  # the kept tokens' renormalised probabilities add up to 1
    assert probs.get_xticklabels()[0].get_text() == token_label(int(LOGITS.argmax()))
    for ax in (scores, probs):
        assert ax.get_title() and ax.get_ylabel()


def test_temperature_grid_reports_entropy():
    fig = plot_temperature_grid(LOGITS, temperatures=(0.5, 1.0, 2.0), top=10)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 3
    assert all(len(ax.patches) == 10 for ax in panels)
    assert "entropy" in panels[0].get_title()
    assert panels[0].get_ylabel() == "probability (linear scale)"
    assert all(ax.get_xlabel() for ax in panels)
    # lower temperature, lower entropy
    e = [float(ax.get_title().split("entropy ")[1].split()[0]) for ax in panels]
    assert e[0] < e[1] < e[2]
    assert panels[0].get_title().startswith("temperature 0.5:")
    assert float(panels[2].texts[0].get_text()) == pytest.approx(panels[2].patches[0].get_height(), abs=1e-3)


def test_filter_comparison_has_four_panels_with_token_labels_and_counts():
    fig = plot_filter_comparison(LOGITS, top_k=5, top_p=0.5, min_p=0.1, show=16)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 4
    assert titles[0] == "greedy (argmax): 1 token kept"
    assert titles[1] == "top-k, k=5: 5 tokens kept"
    assert fig.axes[0].get_ylabel() and all(ax.get_xlabel() for ax in fig.axes)
    scaled = LOGITS / 0.8
    assert fig.axes[0].get_xticklabels()[0].get_text() == token_label(int(scaled.argmax()))
    kept = torch.isfinite(top_k_mask(scaled[None], 5)[0])
    assert int(kept.sum()) == 5


def test_time_per_token_lines():
    fig = plot_time_per_token([1, 2, 3], {"naive": [0.1, 0.2, 0.3], "cached": [0.05, 0.05, 0.05]})
    ax = fig.axes[0]
    assert len(ax.lines) == 2
    assert ax.get_xlabel() == "context length (tokens)" and ax.get_ylabel() == "milliseconds per token"


def test_attention_heatmaps_one_per_head_labelled_with_tokens():
    weights = torch.softmax(torch.randn(4, 3, 3), -1)
    fig = plot_attention(weights, ["'a'", "'b'", "'c'"], "title")
    heads = [ax for ax in fig.axes if ax.images]
    assert len(heads) == 4
    assert [t.get_text() for t in heads[0].get_yticklabels()] == ["'a'", "'b'", "'c'"]
    shown = torch.tensor(heads[2].images[0].get_array().filled(float("nan")))
    below = torch.ones(3, 3, dtype=torch.bool).tril()
    assert torch.equal(shown[below], weights[2][below]) and shown[~below].isnan().all()  # the future is masked
    assert [t.get_text() for t in heads[0].texts] == [f"{float(w):.2f}" for w in weights[0][below]]


def test_architecture_has_a_box_per_stage_with_its_shapes_the_block_framed_and_the_skips_drawn():
    fig = plot_architecture(ARCHITECTURE, repeated=(1, 3), n_layer=6, residuals=[(0, 2)], title="map")
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    for what, symbols, _ in ARCHITECTURE:
        assert what in texts
    assert "(B, 1, vocab) = (1, 1, 50,257)" in texts and "(B, T) = (1, 5)" in texts  # symbols = recorded shape
    boxes = [p for p in ax.patches if p.get_fill()]
    assert len(boxes) == 4
    shaded = [matplotlib.colors.to_hex(b.get_facecolor()) != "#ffffff" for b in boxes]
    assert shaded == [False, False, True, False]  # the residual addition stands out
    (frame,) = [p for p in ax.patches if not p.get_fill()]
    tops = [b.get_y() + b.get_height() for b in boxes]
    assert frame.get_y() < boxes[2].get_y() and frame.get_y() + frame.get_height() > tops[1]  # the block's stages
    assert frame.get_y() + frame.get_height() < boxes[0].get_y()  # and not the stage before it
    assert any("n_layer = 6" in t for t in texts)
    skips = [line for line in ax.lines if matplotlib.colors.to_hex(line.get_color()) == MASKED]
    assert len(skips) == 1 and list(skips[0].get_ydata()) == [3, 3, 1]  # from stage 0's box down to stage 2's


def test_logit_lens_marks_the_final_answer():
    fig = plot_logit_lens(["emb", "1", "2"], ["'x'", "'y'", "'y'"], [0.1, 0.3, 0.5], "lens")
    colours = [matplotlib.colors.to_hex(p.get_facecolor()) for p in fig.axes[0].patches]
    assert colours[1] == colours[2] == KEPT and colours[0] != KEPT
    assert [t.get_text() for t in fig.axes[0].texts] == ["'x'", "'y'", "'y'"]


def test_draws_vs_probabilities_counts_shares():
    probs = torch.tensor([0.5, 0.3, 0.2])
    draws = torch.tensor([0, 0, 1, 2])
    fig = plot_draws_vs_probs(probs, draws, top=3, decode_bytes=lambda i: str(i).encode())
    bars = fig.axes[0].patches
    assert [round(b.get_height(), 3) for b in bars] == [0.5, 0.3, 0.2, 0.5, 0.25, 0.25]


def test_draws_vs_probabilities_reads_the_same_bars_as_counts_on_the_right():
    fig = plot_draws_vs_probs(torch.tensor([0.5, 0.5]), torch.tensor([0, 1, 1, 1]), top=2,
                              decode_bytes=lambda i: str(i).encode())
    (counts,) = fig.axes[0].child_axes
    assert counts.get_ylabel() == "count of 4 draws"
    fig.canvas.draw()
    share_top, count_top = fig.axes[0].get_ylim()[1], counts.get_ylim()[1]
    assert count_top == pytest.approx(4 * share_top)  # a bar's share on the left is its count / 4 on the right


def test_every_probability_draws_every_token_with_the_masks_of_sample_next_token():
    settings = [dict(temperature=0.5), dict(top_k=2), dict(temperature=2.0, top_p=0.5), dict(min_p=0.3)]
    fig = plot_every_probability(TOY, TOY_NAMES, settings)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 4 and all(len(ax.patches) == 2 * len(TOY) for ax in panels)  # every token, each panel
    assert panels[1].get_title() == "top-k 2: 3 tokens kept, holding 90%"  # the tie with the 2nd score stays
    from nanogpt_edu.explorer import filtered_distribution
    for ax, setting in zip(panels, settings):
        expected = filtered_distribution(TOY, **{"temperature": 1.0, **setting})
        grey, shown = ax.patches[: len(TOY)], ax.patches[len(TOY):]
        assert [b.get_height() for b in grey] == pytest.approx(expected.before.tolist())
        kept = [b for b in shown if not b.get_hatch()]
        assert [b.get_height() for b in kept] == pytest.approx(expected.after[: len(kept)].tolist())
        assert len(kept) == expected.kept and f"{expected.kept} token" in ax.get_title()
    assert panels[0].get_shared_y_axes().joined(panels[0], panels[3])  # one scale for all panels
    assert "linear" in panels[0].get_ylabel()
    assert [t.get_text() for t in panels[3].get_xticklabels()] == [repr(n) for n in TOY_NAMES]


def test_log_probabilities_are_log_softmax_and_temperature_divides_their_gaps():
    fig = plot_log_probabilities(TOY, TOY_NAMES, temperatures=(0.5, 1.0, 2.0))
    ax = fig.axes[0]
    lines = [torch.tensor(line.get_ydata(), dtype=torch.float64) for line in ax.lines]
    assert len(lines) == 3 and all(len(y) == len(TOY) for y in lines)
    torch.testing.assert_close(lines[1], torch.log_softmax(TOY.double(), -1))
    for y, t in zip(lines, (0.5, 1.0, 2.0)):
        torch.testing.assert_close(y[0] - y, (TOY[0] - TOY).double() / t)  # every gap is the logits' gap / T
    assert "nats" in ax.get_ylabel() and ax.get_yscale() == "linear"


def test_kept_per_step_against_fixed_k():
    fig = plot_kept_per_step([3, 50, 7], top_k=20, top_p=0.9)
    ax = fig.axes[0]
    assert list(ax.lines[0].get_ydata()) == [3, 50, 7] and ax.get_yscale() == "log"
    assert list(ax.lines[1].get_ydata()) == [20, 20]


def test_plural():
    assert plural(1, "token") == "1 token" and plural(0, "token") == "0 tokens" and plural(1200, "x") == "1,200 xs"


def test_token_spans_show_every_token_with_visible_spaces():
    page = token_spans_html([15496, 11, 616, 198, 27])
    assert page.count("<span") == 5
    assert "·my" in page and "↵" in page and "&lt;" in page  # spaces, newlines and HTML characters made visible
    assert 'title="id 616"' in page


def test_entropy_bounds():
    assert entropy(torch.tensor([1.0, 0.0])) == 0.0
    assert abs(entropy(torch.full((4,), 0.25)) - torch.log(torch.tensor(4.0)).item()) < 1e-6


def test_token_label_shows_spaces_and_newlines():
    assert token_label(198) == repr("\n")
    assert token_label(616) == repr(" my")


def test_every_figure_function_in_the_package_is_wrapped_as_one():
    # the wrapper is the one mechanism that draws "$" as text and turns bad input into NanogptEduError, so a new
    # plot_* anywhere in the package must carry it
    import ast
    from pathlib import Path

    import nanogpt_edu

    for path in Path(nanogpt_edu.__file__).parent.rglob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("plot_"):
                names = {getattr(d, "id", getattr(d, "attr", None)) for d in node.decorator_list}
                assert "figure_function" in names, f"{path.name}: {node.name} is not decorated with figure_function"


def test_mask_colours_meet_graphics_contrast_and_masked_is_told_by_hatching_too():
    def luminance(colour):
        rgb = matplotlib.colors.to_rgb(colour)
        r, g, b = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    def contrast(a, b):
        light, dark = sorted([luminance(a), luminance(b)], reverse=True)
        return (light + 0.05) / (dark + 0.05)

    assert contrast(KEPT, "white") >= 3 and contrast(MASKED, "white") >= 3 and contrast(MASKED, BEFORE) >= 3
    fig = plot_top_k_mask(LOGITS, k=10, show=30)
    for ax in fig.axes:  # a masked bar differs from a kept one in pattern and fill, not in hue alone
        for bar in ax.patches:
            if matplotlib.colors.to_hex(bar.get_edgecolor()) == MASKED:
                assert bar.get_hatch() and bar.get_facecolor()[3] == 0


def test_log_axes_number_their_ticks_in_plain_text():
    # math parsing is off in every figure, so a math-text tick label ("$\mathdefault{10^{1}}$") would show raw
    fig = plot_kept_per_step([3, 40, 700, 7], 5, 0.9)
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels(minor=False) + fig.axes[0].get_yticklabels(minor=True)]
    assert any(labels) and not any("$" in label or "mathdefault" in label for label in labels), labels
    plt.close(fig)
