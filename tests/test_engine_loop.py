"""nanochat's loop pieces: top-k by gather, one prefill for many samples, forced tokens with a consistent cache."""

import pytest
import torch

from nanogpt_edu import NanogptEduError, fast, load_model
from nanogpt_edu.engine_loop import generate_samples, generate_with_tool, nanochat_sample_next_token, repeat_cache
from nanogpt_edu.sampling import generate, top_k_mask
from nanogpt_edu.tokenizer import decode, encode


@pytest.fixture(scope="module")
def pocket():
    return load_model("pocket")


def test_top_k_by_gather_keeps_exactly_k_where_the_mask_keeps_the_ties():
    logits = torch.tensor([[4.0, 3.0, 3.0, 3.0, 1.0, 0.0]])  # three tokens tie for second place
    assert int(torch.isfinite(top_k_mask(logits, 2)).sum()) == 4
    g = torch.Generator().manual_seed(0)
    drawn = {int(nanochat_sample_next_token(logits, 1.0, 2, g)) for _ in range(300)}
    assert len(drawn) == 2 and 0 in drawn


def test_top_k_by_gather_draws_the_masks_distribution_when_there_are_no_ties():
    logits = torch.tensor([[2.0, 0.5, 1.5, -1.0, 1.0]])
    mask_probs = torch.softmax(top_k_mask(logits / 0.7, 3), dim=-1)[0]
    g = torch.Generator().manual_seed(1)
    counts = torch.bincount(torch.cat([nanochat_sample_next_token(logits, 0.7, 3, g) for _ in range(6000)]).view(-1),
                            minlength=5).double()
    assert counts[[1, 3]].sum() == 0
    assert torch.allclose(counts / counts.sum(), mask_probs.double(), atol=0.02)


def test_temperature_zero_is_the_argmax_and_bad_settings_raise_one_line():
    logits = torch.tensor([[0.1, 2.0, 0.3], [5.0, 1.0, 0.0]])
    assert nanochat_sample_next_token(logits, 0).view(-1).tolist() == [1, 0]
    for kwargs in (dict(temperature=-1), dict(top_k=0), dict(top_k=2.5)):
        with pytest.raises(NanogptEduError):
            nanochat_sample_next_token(logits, **kwargs)
    with pytest.raises(NanogptEduError, match="logits must have shape"):
        nanochat_sample_next_token(logits[0])


# the engine's rows against separate runs through the same engine; the modules' rows against nanoGPT's own loop
@pytest.mark.parametrize("settings, engine, reference", [
    (dict(temperature=0.8, top_k=200), True, dict(engine=True)),
    (dict(temperature=1.0, top_p=0.9), False, dict(use_cache=False)),
])
def test_one_prefill_for_three_samples_gives_three_separate_runs_tokens_across_the_window(pocket, settings, engine,
                                                                                         reference):
    x = torch.tensor([encode("Hello, my name is")])
    seeds = (1337, 7, 2024)
    rows = generate_samples(pocket, x, 3, 140, generators=[torch.Generator().manual_seed(s) for s in seeds],
                            engine=engine, **settings)  # 5 + 140 > block_size 128: the window slides
    separate = [generate(pocket, x, 140, generator=torch.Generator().manual_seed(s), **reference, **settings)
                for s in seeds]
    assert torch.equal(rows, torch.cat(separate))
    assert not torch.equal(rows[0], rows[1])


def test_generate_samples_hands_one_token_steps_to_the_engine_only_when_asked(pocket, monkeypatch):
    calls = []
    real = fast.decode_step_for

    def counting(model, cache):
        step = real(model, cache)
        return lambda idx: calls.append(idx.shape) or step(idx)

    monkeypatch.setattr(fast, "decode_step_for", counting)
    x = torch.tensor([encode("ROMEO:")])
    for engine in (False, True):
        generate_samples(pocket, x, 2, 6, generators=[torch.Generator().manual_seed(s) for s in (1, 2)],
                         engine=engine)
    assert calls == [(2, 1)] * 5  # with the engine only: the 5 steps after the prefill, both rows in each


def test_repeat_cache_copies_the_prompt_into_every_row(pocket):
    cache = pocket.new_cache(1, capacity=10)
    with torch.no_grad():
        pocket(torch.tensor([encode("To be, or not")]), cache=cache)
    rows = repeat_cache(cache, 4, capacity=30)
    assert rows.length == cache.length and rows.capacity == 30 and rows.k.shape[1] == 4
    for r in range(4):
        assert torch.equal(rows.k[:, r, :, : cache.length], cache.k[:, 0, :, : cache.length])
        assert torch.equal(rows.v[:, r, :, : cache.length], cache.v[:, 0, :, : cache.length])
    with pytest.raises(NanogptEduError, match="capacity"):
        repeat_cache(cache, 2, capacity=2)


def test_forced_tokens_follow_the_trigger_and_the_cache_is_a_full_recompute(pocket):
    calls = []

    def tool(text):
        calls.append(text)
        return "JULIET:\n"

    prompt = torch.tensor([encode("ROMEO:\n")])
    tokens, sampled, cache = generate_with_tool(pocket, prompt, 80, trigger="\n\n",
                                                tool=tool, encode=encode, decode=decode, temperature=0.8, top_k=200,
                                                generator=torch.Generator().manual_seed(0))
    new = tokens[0, prompt.size(1):].tolist()
    assert sampled.shape == (1, 80)
    forced = [t for t, s in zip(new, sampled[0].tolist()) if not s]
    assert calls and all(text.endswith("\n\n") for text in calls)
    assert forced and len(forced) % len(encode("JULIET:\n")) in (0, len(forced))
    assert decode(forced).startswith("JULIET:\n")
    first = sampled[0].tolist().index(False)
    assert decode(new[:first]).endswith("\n\n")  # forced right after the trigger
    assert cache.length == tokens.size(1) - 1
    fresh = pocket.new_cache(1)
    with torch.no_grad():
        pocket(tokens[:, :-1], cache=fresh)
    n = cache.length
    assert torch.allclose(cache.k[:, :, :, :n], fresh.k[:, :, :, :n], atol=1e-4)
    assert torch.allclose(cache.v[:, :, :, :n], fresh.v[:, :, :, :n], atol=1e-4)


def test_bad_arguments_raise_one_line(pocket):
    x = torch.tensor([encode("ROMEO:")])
    g = [torch.Generator()]
    cases = [
        lambda: generate_samples(pocket, x, 0, 5, generators=[]),
        lambda: generate_samples(pocket, x, 2, 5, generators=g),
        lambda: generate_samples(pocket, x, 1, 5, generators=g, top_k=-3),
        lambda: generate_samples(pocket, torch.cat((x, x)), 1, 5, generators=g),
        lambda: generate_with_tool(pocket, x, 5, trigger="", tool=str, encode=encode, decode=decode),
        lambda: generate_with_tool(pocket, x, 500, trigger="\n", tool=str, encode=encode, decode=decode),
        lambda: generate_with_tool(pocket, x, 5, trigger="\n", tool=str, encode=encode, decode=decode, temperature=-1),
    ]
    for case in cases:
        with pytest.raises(NanogptEduError) as err:
            case()
        assert "\n" not in str(err.value)
