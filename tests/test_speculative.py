"""Self-speculative decoding gives the full model's tokens: greedy exactly, sampled in distribution."""

import pytest
import torch

from nanogpt_edu import NanogptEduError, load_model
from nanogpt_edu.model import GPT, GPTConfig
from nanogpt_edu.sampling import generate
from nanogpt_edu.speculative import (accept_or_resample, chi_square_test, forward_layers, speculative_generate,
                                     speculative_rounds, token_probs)
from nanogpt_edu.tokenizer import encode


def tiny_model(vocab_size=12) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=24, vocab_size=vocab_size, n_layer=3, n_head=2, n_embd=16)).eval()
    with torch.no_grad():  # blocks that matter and sharper logits: drafts are sometimes right, sometimes not
        for name, p in model.named_parameters():
            if name.endswith("c_proj.weight"):
                p.mul_(10)
        model.transformer.ln_f.weight.mul_(6)
    return model


@pytest.fixture(scope="module")
def pocket():
    return load_model("pocket")


@pytest.mark.parametrize("draft_layers,draft_tokens", [(1, 1), (2, 3), (5, 4), (3, 8)])
def test_greedy_is_plain_greedy_on_the_pocket_model(pocket, draft_layers, draft_tokens):
    x = torch.tensor([encode("ROMEO:")])
    expected = generate(pocket, x, 40, temperature=0, use_cache=False)  # nanoGPT's loop, greedy
    got = speculative_generate(pocket, x, 40, draft_layers=draft_layers, draft_tokens=draft_tokens, temperature=0)
    assert torch.equal(got, expected)


def test_greedy_is_plain_greedy_on_a_tiny_model_from_one_token_and_for_zero_tokens():
    model = tiny_model()
    x = torch.tensor([[3]])
    expected = generate(model, x, 20, temperature=0)
    for k in (1, 2, 5):
        assert torch.equal(speculative_generate(model, x, 20, draft_layers=1, draft_tokens=k, temperature=0),
                           expected)
    assert torch.equal(speculative_generate(model, x, 0, draft_layers=2, draft_tokens=2), x)


# the sampled rule on the tiny model; greedy's argmax branch on the pocket model (the tiny one's greedy text soon
# repeats itself, and its drafts are then always right)
@pytest.mark.parametrize("temperature", [1.0, 0.0])
@torch.no_grad()
def test_the_cache_is_cut_back_to_the_accepted_text_after_a_rejected_draft(temperature, request):
    model = tiny_model() if temperature else request.getfixturevalue("pocket")
    x = torch.tensor([[1, 5, 7]]) if temperature else torch.tensor([encode("ROMEO:")])
    idx, rejected = x, 0
    for r in speculative_rounds(model, x, 18, draft_layers=1, draft_tokens=4, temperature=temperature,
                                generator=torch.Generator().manual_seed(0)):
        idx = torch.cat((idx, r.tokens), dim=1)
        rejected += r.accepted < r.drafted
        assert r.cache.length == idx.size(1) - 1  # every token but the newest, whatever was drafted
        fresh = model.new_cache(1)
        forward_layers(model, idx[:, :-1], fresh, model.config.n_layer)  # a full recompute of the same text
        n = fresh.length
        assert torch.allclose(r.cache.k[:, :, :, :n], fresh.k[:, :, :, :n], atol=1e-5)
        assert torch.allclose(r.cache.v[:, :, :, :n], fresh.v[:, :, :, :n], atol=1e-5)
    assert rejected >= 2  # the check above ran across rounds that rejected drafts
    assert idx.size(1) == x.size(1) + 18


def test_forward_layers_with_every_layer_is_the_models_forward(pocket):
    x = torch.tensor([encode("Hello, my name is")])
    with torch.no_grad():
        all_logits = forward_layers(pocket, x, pocket.new_cache(1), pocket.config.n_layer)
        assert torch.allclose(all_logits[:, -1:], pocket(x)[0], atol=1e-4)
        assert torch.allclose(all_logits, pocket(x, targets=x)[0], atol=1e-4)


def test_the_rule_keeps_every_draft_when_the_draft_is_the_model_and_none_when_it_is_disjoint():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0]] * 4)
    accepted, token = accept_or_resample(p, p[:3], torch.tensor([0, 1, 0]), g)
    assert accepted == 3 and token in (0, 1)  # all three kept, then one from p's last row
    q = torch.tensor([[0.0, 0.0, 0.5, 0.5]] * 3)
    for _ in range(20):
        accepted, token = accept_or_resample(p, q, torch.tensor([2, 3, 2]), g)
        assert accepted == 0 and token in (0, 1)  # p gives the draft no chance: the leftover is p itself


def test_the_rule_draws_the_full_models_distribution_and_the_test_would_see_it_if_not():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(3, 8, generator=g) * 2, dim=-1)
    q = torch.softmax(torch.randn(2, 8, generator=g) * 2, dim=-1)
    n = 20000
    first = torch.zeros(8)
    naive = torch.zeros(8)
    for _ in range(n):
        drafts = torch.stack([torch.multinomial(q[i], 1, generator=g)[0] for i in range(2)])
        accepted, token = accept_or_resample(p, q, drafts, g)
        first[drafts[0] if accepted > 0 else token] += 1
        naive[drafts[0]] += 1  # "always accept": that samples the draft's distribution
    assert chi_square_test(first, p[0])[2] > 1e-3
    assert chi_square_test(naive, p[0])[2] < 1e-6


def test_sampled_text_follows_the_full_model_for_two_tokens_end_to_end():
    model = tiny_model(vocab_size=6)
    x = torch.tensor([[2, 4]])
    with torch.no_grad():  # the exact distributions of the first new token and of the second (summed over the first)
        p1 = token_probs(model(x)[0][0, -1], temperature=0.9)
        p2 = sum(p1[t] * token_probs(model(torch.cat((x, torch.tensor([[t]])), 1))[0][0, -1], temperature=0.9)
                 for t in range(6))
    g = torch.Generator().manual_seed(1)
    counts1, counts2 = torch.zeros(6), torch.zeros(6)
    for _ in range(2500):
        y = speculative_generate(model, x, 2, draft_layers=1, draft_tokens=3, temperature=0.9, generator=g)
        counts1[y[0, 2]] += 1
        counts2[y[0, 3]] += 1
    assert chi_square_test(counts1, p1)[2] > 1e-3
    assert chi_square_test(counts2, p2)[2] > 1e-3


def test_chi_square_test_pools_small_categories_and_gives_known_values():
    statistic, dof, p_value = chi_square_test(torch.tensor([50.0, 50.0]), torch.tensor([0.5, 0.5]))
    assert statistic == 0 and dof == 1 and p_value == pytest.approx(1.0)
    statistic, dof, p_value = chi_square_test(torch.tensor([60.0, 40.0]), torch.tensor([0.5, 0.5]))
    assert statistic == pytest.approx(4.0) and p_value == pytest.approx(0.0455, abs=1e-4)  # the textbook value
    _, dof, _ = chi_square_test(torch.tensor([90.0, 8.0, 1.0, 1.0]), torch.tensor([0.9, 0.08, 0.01, 0.01]))
    assert dof == 1  # the two rare tokens pooled, the pool too small alone, joined to the next


@pytest.mark.parametrize("kwargs,message", [
    (dict(draft_tokens=0), "draft_tokens must be a whole number >= 1"),
    (dict(draft_tokens=True), "draft_tokens must be a whole number >= 1"),
    (dict(draft_tokens=2.0), "draft_tokens must be a whole number >= 1"),
    (dict(draft_layers=0), "draft_layers must be a whole number from 1 to n_layer - 1 = 5"),
    (dict(draft_layers=6), "draft_layers must be a whole number from 1 to n_layer - 1 = 5"),
    (dict(draft_layers="2"), "draft_layers must be a whole number"),
    (dict(temperature=-1), "temperature must be a finite number >= 0"),
    (dict(top_k=0), "top_k must be a whole number of at least 1"),
    (dict(top_p=1.5), "top_p must be a number in (0, 1]"),
    (dict(min_p=-0.1), "min_p must be a number in [0, 1]"),
    (dict(max_new_tokens=-1), "max_new_tokens must be a whole number >= 0"),
    (dict(max_new_tokens=200), "must fit in block_size (128)"),
    (dict(idx=torch.tensor([[1, 2], [3, 4]])), "one sequence at a time; idx has 2 rows"),
    (dict(idx=[[1, 2]]), "idx must be a 2-D integer tensor"),
])
def test_bad_arguments_raise_one_line(pocket, kwargs, message):
    args = dict(idx=torch.tensor([[1, 2]]), max_new_tokens=5, draft_layers=2, draft_tokens=2) | kwargs
    idx, n = args.pop("idx"), args.pop("max_new_tokens")
    with pytest.raises(NanogptEduError) as err:
        speculative_generate(pocket, idx, n, **args)
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(NanogptEduError):
        next(speculative_rounds(pocket, idx, n, **args))
