import math

import pytest
import torch
from torch.nn import functional as F
from transformers import MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from nanogpt_edu.model import GPT, GPTConfig
from nanogpt_edu.sampling import (
    apply_temperature, generate, min_p_mask, sample_next_token, stream_text, top_k_mask, top_p_mask,
)
from nanogpt_edu.tokenizer import EOT_ID, get_encoding

VOCAB = 97


def tiny_model(block_size=16, vocab_size=VOCAB, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32)).eval()


def random_logits(rows=6, vocab=VOCAB, seed=0, ties=False):
    gen = torch.Generator().manual_seed(seed)
    if ties:  # few distinct values, so the k-th largest value is shared by several tokens
        return torch.randint(-4, 5, (rows, vocab), generator=gen).float()
    return torch.randn(rows, vocab, generator=gen) * 3


@torch.no_grad()
def nanogpt_generate(model, idx, max_new_tokens, temperature=1.0, top_k=None):
    """nanoGPT's GPT.generate loop, written out independently, as the reference for faithfulness."""
    for _ in range(max_new_tokens):
        bs = model.config.block_size
        idx_cond = idx if idx.size(1) <= bs else idx[:, -bs:]
        logits, _ = model(idx_cond)
        logits = logits[:, -1, :] / temperature
        if top_k is not None:
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits[logits < v[:, [-1]]] = -float("Inf")
        probs = F.softmax(logits, dim=-1)
        idx_next = torch.multinomial(probs, num_samples=1)
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


# --- the steps agree with Hugging Face's logits processors -------------------------------------------------------

@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k", [1, 5, 50, VOCAB])
def test_top_k_equals_hugging_face(k, ties):
    logits = random_logits(ties=ties)
    ours = top_k_mask(logits, k)
    theirs = TopKLogitsWarper(top_k=k)(None, logits.clone())
    assert torch.equal(ours, theirs)


def test_top_k_keeps_ties_at_the_threshold():
    logits = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0]])
    kept = torch.isfinite(top_k_mask(logits, 2))
    assert kept.tolist() == [[True, True, True, True, False]]  # k=2 keeps 4 tokens: three tie for 2nd place


def test_top_k_larger_than_vocabulary_is_clamped():
    logits = random_logits()
    assert torch.equal(top_k_mask(logits, 10 * VOCAB), logits)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9, 0.999, 1.0])
def test_top_p_equals_hugging_face(p):
    logits = random_logits(seed=1)
    ours = top_p_mask(logits, p)
    theirs = TopPLogitsWarper(top_p=p)(None, logits.clone())
    assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
    assert torch.equal(ours[torch.isfinite(ours)], logits[torch.isfinite(ours)])


@pytest.mark.parametrize("p", [0.0, 0.01, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("ties", [False, True])
def test_min_p_equals_hugging_face(p, ties):
    logits = random_logits(seed=2, ties=ties)
    ours = min_p_mask(logits, p)
    theirs = MinPLogitsWarper(min_p=p)(None, logits.clone())
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("t", [0.1, 0.8, 1.0, 2.5])
def test_temperature_equals_hugging_face(t):
    logits = random_logits(seed=3)
    assert torch.allclose(apply_temperature(logits, t), TemperatureLogitsWarper(t)(None, logits.clone()))


def test_top_p_always_keeps_the_most_likely_token():
    logits = torch.tensor([[10.0, 0.0, 0.0]])
    assert torch.isfinite(top_p_mask(logits, 0.01)).tolist() == [[True, False, False]]


# --- sampling draws from the right distribution ------------------------------------------------------------------

def test_masked_tokens_are_never_sampled_and_frequencies_match():
    logits = random_logits(rows=1, vocab=12, seed=4)
    n = 40_000
    gen = torch.Generator().manual_seed(0)
    draws = sample_next_token(logits.expand(n, -1), temperature=0.8, top_k=5, generator=gen).flatten()
    allowed = torch.isfinite(top_k_mask(logits / 0.8, 5))[0]
    assert allowed[draws].all()  # nothing outside the top 5, ever
    probs = F.softmax(top_k_mask(logits / 0.8, 5), dim=-1)[0]
    counts = torch.bincount(draws, minlength=12).double()
    expected = probs.double() * n
    kept = expected > 0
    chi2 = (((counts - expected) ** 2)[kept] / expected[kept]).sum().item()
    # 4 degrees of freedom; P(chi2 > 23.5) < 1e-4
    assert chi2 < 23.5, (counts, expected)


def test_greedy_is_argmax_not_a_crash():
    logits = random_logits()
    assert torch.equal(sample_next_token(logits, temperature=0), logits.argmax(-1, keepdim=True))


def test_same_generator_state_same_tokens():
    logits = random_logits()
    a = sample_next_token(logits, generator=torch.Generator().manual_seed(5))
    b = sample_next_token(logits, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


# --- generate is nanoGPT's loop ----------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt_length, new", [(3, 20), (14, 10), (16, 5)])  # the last two cross block_size 16
@pytest.mark.parametrize("top_k", [None, 10])
@pytest.mark.parametrize("use_cache", [False, True])
def test_generate_draws_what_nanogpt_draws(prompt_length, new, top_k, use_cache):
    model = tiny_model()
    idx = torch.randint(0, VOCAB, (2, prompt_length), generator=torch.Generator().manual_seed(6))
    torch.manual_seed(1337)
    expected = nanogpt_generate(model, idx, new, temperature=0.8, top_k=top_k)
    torch.manual_seed(1337)
    ours = generate(model, idx, new, temperature=0.8, top_k=top_k, use_cache=use_cache)
    assert ours.shape == (2, prompt_length + new)
    assert torch.equal(ours, expected)


def test_generate_with_explicit_generator_ignores_global_state():
    model = tiny_model()
    idx = torch.zeros(1, 1, dtype=torch.long)
    torch.manual_seed(0)
    a = generate(model, idx, 12, generator=torch.Generator().manual_seed(9))
    torch.manual_seed(1)
    b = generate(model, idx, 12, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_greedy_generation():
    model = tiny_model()
    idx = torch.tensor([[1, 2, 3]])
    out = generate(model, idx, 6, temperature=0)
    expected = idx
    for _ in range(6):
        logits, _ = model(expected[:, -16:])
        expected = torch.cat([expected, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, expected)


def test_empty_prompt_starts_from_end_of_text():
    model = tiny_model(vocab_size=50257)
    out = generate(model, torch.zeros(2, 0, dtype=torch.long), 4, temperature=0)
    assert out.shape == (2, 5)
    assert out[:, 0].tolist() == [EOT_ID, EOT_ID]


def test_zero_new_tokens_returns_the_prompt():
    idx = torch.tensor([[4, 5]])
    assert torch.equal(generate(tiny_model(), idx, 0), idx)


class ScriptedModel(torch.nn.Module):
    """A stand-in model whose next token is always the next one of a script (for stop and streaming tests).

    It counts steps by the length of its input, so it runs without a KV cache (use_cache=False)."""

    def __init__(self, script: list[list[int]], vocab_size: int = 50257, block_size: int = 1024):
        super().__init__()
        self.script = script
        self.config = GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=1, n_head=1, n_embd=1)
        self.start = None

    def forward(self, idx):
        if self.start is None:
            self.start = idx.size(1)
        step = idx.size(1) - self.start
        logits = torch.full((idx.size(0), 1, self.config.vocab_size), -1e9)
        for row, tokens in enumerate(self.script):
            logits[row, 0, tokens[min(step, len(tokens) - 1)]] = 0.0
        return logits, None


def test_stop_token_ends_rows_and_pads_them():
    model = ScriptedModel([[5, EOT_ID, 7, 8], [5, 6, 7, EOT_ID]])
    out = generate(model, torch.zeros(2, 1, dtype=torch.long), 10, temperature=0, stop_token=EOT_ID, use_cache=False)
    assert out.tolist() == [[0, 5, EOT_ID, EOT_ID, EOT_ID], [0, 5, 6, 7, EOT_ID]]  # stopped after 4, not 10


def test_stop_token_off_by_default():
    model = ScriptedModel([[EOT_ID, 3]])
    out = generate(model, torch.zeros(1, 1, dtype=torch.long), 3, temperature=0, use_cache=False)
    assert out.tolist() == [[0, EOT_ID, 3, 3]]


def test_streaming_never_splits_a_utf8_character():
    enc = get_encoding()
    text = "Ciao 🙂! 日本語 — naïve 🚀🚀"
    script = enc.encode(text)
    assert any("\ufffd" in enc.decode([t]) for t in script)  # some tokens really end mid-character
    model = ScriptedModel([script])
    pieces = list(stream_text(model, torch.tensor([[EOT_ID]]), len(script), temperature=0, use_cache=False))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert len(pieces) > 5  # it really streamed


def test_streaming_stops_at_stop_token():
    enc = get_encoding()
    script = enc.encode("to be") + [EOT_ID] + enc.encode(" more")
    model = ScriptedModel([script])
    pieces = list(stream_text(model, torch.tensor([[EOT_ID]]), 20, temperature=0, stop_token=EOT_ID,
                              use_cache=False))
    assert "".join(pieces) == "to be"
