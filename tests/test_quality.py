"""nanogpt_edu.quality: each measure on small examples worked out by hand, its bad inputs, its data and figures."""

import json
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed

import matplotlib.pyplot as plt
import pytest
import torch

from nanogpt_edu import quality
from nanogpt_edu.errors import NanogptEduError
from nanogpt_edu.model import GPT, GPTConfig
from nanogpt_edu.plots import FONT_SIZE, MAX_WIDTH

ROOT = Path(__file__).resolve().parent.parent


def uniform_gpt(vocab: int = 10) -> GPT:
    """A tiny GPT whose tied head is all zeros: every next token has probability 1 / vocab."""
    model = GPT(GPTConfig(block_size=16, vocab_size=vocab, n_layer=1, n_head=1, n_embd=8, dropout=0.0))
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
    return model.eval()


def test_perplexity_by_hand():
    assert quality.perplexity([0.5, 0.5]) == pytest.approx(2.0)
    assert quality.perplexity([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert quality.perplexity([0.25, 1.0]) == pytest.approx(2.0)  # exp(-(ln 0.25 + ln 1) / 2) = sqrt(4)
    assert quality.perplexity(torch.tensor([[0.1, 0.1], [0.1, 0.1]])) == pytest.approx(10.0)


@pytest.mark.parametrize("probs", [[], [float("nan")], [float("inf")], [0.0, 0.5], [1.5], [-0.2]])
def test_perplexity_refuses_what_is_not_a_probability_in_one_line(probs):
    with pytest.raises(NanogptEduError) as err:
        quality.perplexity(probs)
    assert "\n" not in str(err.value)


def test_a_uniform_model_has_the_vocabulary_size_as_perplexity():
    model = uniform_gpt(vocab=10)
    prompts, texts = torch.tensor([[1, 2], [3, 4]]), torch.tensor([[5, 6, 7], [8, 9, 0]])
    probs = quality.token_probs(model, prompts, texts)
    assert probs.shape == (2, 3)
    assert torch.allclose(probs, torch.full((2, 3), 0.1))
    assert quality.perplexity(probs) == pytest.approx(10.0, rel=1e-5)
    assert quality.repeat_probability(model, [1, 2, 3], 4) == pytest.approx(0.1, rel=1e-4)  # per token, any n


def test_token_probs_reads_the_logits_that_predict_each_token():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=12, n_layer=1, n_head=2, n_embd=8, dropout=0.0)).eval()
    prompt, text = torch.tensor([[3, 1, 4]]), torch.tensor([[1, 5, 9]])
    probs = quality.token_probs(model, prompt, text)
    whole = torch.cat([prompt, text], dim=1)
    for i in range(3):  # the model's own next-token distribution after each prefix
        with torch.no_grad():
            logits, _ = model(whole[:, : 3 + i])
        expected = torch.softmax(logits[0, -1], -1)[text[0, i]]
        assert torch.allclose(probs[0, i], expected, atol=1e-6)


def test_token_probs_refuses_bad_models_and_shapes():
    model = uniform_gpt()
    with pytest.raises(NanogptEduError, match="must be a nanogpt_edu GPT"):
        quality.token_probs(torch.nn.Linear(3, 3), torch.tensor([[1]]), torch.tensor([[2]]))
    with pytest.raises(NanogptEduError, match="rows"):
        quality.token_probs(model, torch.tensor([[1], [2]]), torch.tensor([[2]]))
    with pytest.raises(NanogptEduError, match="block_size"):
        quality.token_probs(model, torch.zeros(1, 10, dtype=torch.long), torch.zeros(1, 10, dtype=torch.long))
    with pytest.raises(NanogptEduError, match="2-D tensor of token ids"):
        quality.token_probs(model, [[1]], torch.tensor([[2]]))
    with pytest.raises(NanogptEduError, match="2-D tensor of token ids"):
        quality.token_probs(model, torch.tensor([[1.0]]), torch.tensor([[2]]))
    with pytest.raises(NanogptEduError, match="must be a nanogpt_edu GPT"):
        quality.generate_rows("pocket", torch.tensor([[1]]), 3)


@pytest.mark.parametrize("tokens, expected", [
    ([5, 1, 2, 1, 2, 1, 2], True),        # "1 2" three times at the end
    ([1, 2, 1, 2], False),                # only twice
    ([1, 2, 1, 2, 1, 2, 9], False),       # the loop is not at the end
    ([7] * 6, True),                      # "7 7" three times
    ([7] * 5, False),                     # a 1-token phrase is too short, and "7 7" fits only twice
    ([9, 3, 4, 5, 3, 4, 5, 3, 4, 5], True),
    ([1, 2, 3, 4, 5, 6], False),
    ([4], False),
])
def test_ends_in_repetition_by_the_papers_definition(tokens, expected):
    assert quality.ends_in_repetition(tokens) is expected


def test_repetition_settings_and_rate():
    assert quality.ends_in_repetition([1, 2, 1, 2], min_repeats=2)
    assert quality.ends_in_repetition([7] * 3, min_phrase=1)
    assert quality.repetition_rate([[1, 2, 1, 2, 1, 2], [1, 2, 3], [4, 4, 4, 4, 4, 4], [1]]) == 0.5
    assert quality.repetition_rate(torch.tensor([[1, 2, 1, 2, 1, 2]])) == 1.0


def test_distinct_n_by_hand():
    assert quality.distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)  # (1,2) (2,1) (1,2)
    assert quality.distinct_n([[1, 2], [1, 2]], 2) == pytest.approx(1 / 2)
    assert quality.distinct_n([[1, 2, 3]], 1) == 1.0


def test_repeated_ngrams_by_hand():
    # [1 2 3 1 2 3]: 3-grams 123 231 312 123, one of the four seen before; [4 5 6 7]: none
    assert quality.repeated_ngrams([[1, 2, 3, 1, 2, 3], [4, 5, 6, 7]]) == pytest.approx((1 / 4 + 0) / 2)
    with pytest.raises(NanogptEduError):
        quality.repeated_ngrams([[1, 2]])


def test_zipf_coefficient_of_an_exact_power_law():
    # counts 60, 30, 20, 15 = 60 / rank: frequency proportional to rank^-1
    text = [1] * 60 + [2] * 30 + [3] * 20 + [4] * 15
    assert quality.zipf_coefficient([text]) == pytest.approx(1.0)
    squares = [1] * 144 + [2] * 36 + [3] * 16 + [4] * 9  # 144 / rank^2
    assert quality.zipf_coefficient([squares[:100], squares[100:]]) == pytest.approx(2.0)


def test_self_bleu_by_hand():
    assert quality.self_bleu([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]]) == pytest.approx(1.0)
    # [1 2 3 4] against [1 2 3 5]: 1- to 4-gram precisions 3/4, 2/3, 1/2 and 0, which smoothing method 1 makes
    # 0.1 / 1; no brevity penalty. BLEU-4 = (0.75 * 2/3 * 0.5 * 0.1) ** (1/4), the same both ways round.
    assert quality.self_bleu([[1, 2, 3, 4], [1, 2, 3, 5]]) == pytest.approx(0.025 ** 0.25, rel=1e-6)
    assert quality.self_bleu([[1, 2, 3, 4], [5, 6, 7, 8]]) < 0.1


@pytest.mark.parametrize("call", [
    lambda: quality.self_bleu([[1, 2, 3, 4]]),            # nothing to compare with
    lambda: quality.self_bleu([[1, 2, 3], [1, 2, 3]]),     # shorter than the 4-gram
    lambda: quality.distinct_n([], 2),
    lambda: quality.distinct_n([[1]], 2),
    lambda: quality.zipf_coefficient([[3, 3, 3]]),         # one kind of token: no slope
    lambda: quality.zipf_coefficient("abc"),
    lambda: quality.repetition_rate([]),
    lambda: quality.ends_in_repetition([]),
    lambda: quality.repetition_rate([5, 6]),               # a list of ids, not a list of texts
    lambda: quality.repeat_probability(uniform_gpt(), [1, 2], 0),
    lambda: quality.repeat_probability(uniform_gpt(), [], 2),
    lambda: quality.passages(list(range(10)), 2, 3, 3),   # 12 tokens needed
    lambda: quality.passages(list(range(10)), 0, 3, 3),
    lambda: quality.speaker_names(None),
])
def test_bad_input_gets_one_line(call):
    with pytest.raises(NanogptEduError) as err:
        call()
    assert "\n" not in str(err.value)


def test_passages_are_spread_evenly_and_split_into_prompt_and_continuation():
    prompts, continuations = quality.passages(list(range(100)), n=2, prompt_len=3, continuation_len=2)
    assert prompts.tolist() == [[0, 1, 2], [50, 51, 52]]
    assert continuations.tolist() == [[3, 4], [53, 54]]


def test_speaker_names():
    text = "ROMEO:\nHi.\n\nFirst Citizen:\nYes:\nno\n\nAnd so:\nit goes\n\nKING RICHARD III:\nO!\n"
    assert quality.speaker_names(text) == ["ROMEO", "First Citizen", "KING RICHARD III"]


def test_generate_rows_is_seeded_and_returns_only_the_new_tokens():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=12, n_layer=1, n_head=1, n_embd=8, dropout=0.0)).eval()
    prompts = torch.tensor([[1, 2], [3, 4], [5, 6]])
    first = quality.generate_rows(model, prompts, 5, seed=3, top_p=0.9)
    assert first.shape == (3, 5)
    assert torch.equal(first, quality.generate_rows(model, prompts, 5, seed=3, top_p=0.9))


def test_the_held_out_excerpt_is_the_start_of_the_validation_split():
    text = quality.heldout_text()
    val = (ROOT / "tests" / "data" / "tinyshakespeare_val.txt").read_text(encoding="utf-8")
    assert len(text) == 40_424 and val.startswith(text)


def test_training_speakers_come_from_the_first_90_percent():
    speakers = quality.training_speakers()
    assert len(speakers) == 270 and {"ROMEO", "JULIET", "First Citizen"} <= speakers
    assert "PROSPERO" not in speakers  # The Tempest is in the validation split only
    full = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
    if not full.is_file():
        pytest.skip(f"the whole of tinyshakespeare is not beside this checkout ({full.name}); the list was made from it")
    text = full.read_text(encoding="utf-8")
    assert set(quality.speaker_names(text[: int(len(text) * 0.9)])) == speakers


def test_the_early_checkpoint_is_small_documented_and_worse_than_the_pocket_model():
    folder = ROOT / "nanogpt_edu" / "pocket_early"
    assert (folder / "model.safetensors").stat().st_size <= 16 * 2**20
    training = json.loads((folder / "training.json").read_text())
    card = (folder / "README.md").read_text()
    assert f"{training['final_val_loss']:.3f}" in card and f"--steps {training['train_config']['steps']}" in card
    early = quality.load_early_model()
    assert isinstance(early, GPT)
    from nanogpt_edu import load_model
    from nanogpt_edu.tokenizer import encode
    from nanogpt_edu.train_pocket import evaluate

    tokens = torch.tensor(encode(quality.heldout_text()[:3000]))
    assert evaluate(early, tokens, 128, max_windows=4) > evaluate(load_model("pocket"), tokens, 128, max_windows=4) + 0.5


FIGURES = {
    "scorecard": lambda: quality.plot_scorecard({
        name: {"perplexity": p, "repeated3": r, "self_bleu4": b, "zipf": z}
        for name, p, r, b, z in [("greedy", 7, 0.4, 0.9, 1.7), ("top-p 0.95", 40, 0, 0.2, 0.8),
                                 ("human", 100, 0, 0.3, 0.8)]}),
    "temperature sweep": lambda: quality.plot_temperature_sweep(
        [0.5, 1.0, 2.0], {"top-p": {"perplexity": [10, 50, 900], "distinct2": [0.4, 0.7, 0.9]}},
        human={"perplexity": 100, "distinct2": 0.7}),
    "repetition trap": lambda: quality.plot_repetition_trap([1, 2, 3], {"'a line'": [0.1, 0.5, 0.8]}),
}


@pytest.mark.parametrize("name", list(FIGURES))
def test_figures_fit_a_column_with_legible_text_titles_and_axis_labels(name):
    fig = FIGURES[name]()
    try:
        assert fig.get_size_inches()[0] <= MAX_WIDTH
        fig.canvas.draw()
        sizes = [t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_text().strip()]
        assert min(sizes) >= FONT_SIZE
        for ax in fig.axes:
            assert ax.get_title()
            assert any(a.get_xlabel() for a in ax.get_shared_x_axes().get_siblings(ax)), name
            assert ax.get_ylabel(), name
    finally:
        plt.close(fig)


def test_module_docstring_states_the_papers_definitions():
    doc = quality.__doc__
    assert "untruncated" in doc and re.search(r"at least 2 tokens repeated at least 3 times", doc)
    assert math.isclose(quality.perplexity([math.exp(-1)]), math.e)
