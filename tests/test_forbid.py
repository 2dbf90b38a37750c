"""exercises.forbid: a check cannot be passed by handing the work to the function the exercise asks for."""

import functools
import sys

import pytest
import torch

from nanogpt_edu import sampling
from nanogpt_edu.exercises import NotRightYet, call_answer, forbid
from nanogpt_edu.model import GPT, GPTConfig


def tiny_model() -> GPT:
    return GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=16, dropout=0.0)).eval()


def run(answer):
    with forbid(sampling.generate, GPT.generate, hint="write the loop yourself"):
        return call_answer(answer)


def delegations():
    model, x = tiny_model(), torch.zeros(1, 2, dtype=torch.long)
    from nanogpt_edu.sampling import generate as g

    def own_helper():
        return g(model, x, 3, temperature=0)

    return {
        "alias": lambda: g(model, x, 3, temperature=0),
        "getattr": lambda: getattr(sampling, "gen" + "erate")(model, x, 3, temperature=0),
        "bound method": lambda: model.generate(x, 3, top_k=1),
        "partial": functools.partial(sampling.generate, model, x, 3, temperature=0),
        "own helper": own_helper,
        "via the module dict": lambda: vars(sampling)["generate"](model, x, 3, temperature=0),
    }


@pytest.mark.parametrize("route", list(delegations()))
def test_a_delegating_answer_is_not_right_yet_whatever_the_name(route):
    with pytest.raises(NotRightYet, match="write the loop yourself"):
        run(delegations()[route])


def test_an_answer_that_does_the_work_itself_passes_and_may_use_the_other_steps():
    model, x = tiny_model(), torch.zeros(1, 2, dtype=torch.long)

    def honest():
        idx = x
        for _ in range(3):
            logits, _ = model(idx)
            nxt = sampling.sample_next_token(logits[:, -1, :], temperature=0)  # allowed: a step, not the loop
            idx = torch.cat([idx, nxt], dim=1)
        return idx

    assert run(honest).shape == (1, 5)


def test_delegation_is_reported_even_if_the_answer_also_fails():
    def broken():
        sampling.generate(tiny_model(), torch.zeros(1, 2, dtype=torch.long), 2, temperature=0)
        raise RuntimeError("and then something else")

    with pytest.raises(NotRightYet, match="write the loop yourself"):
        run(broken)


def test_a_profiler_already_running_is_kept_and_restored():
    seen = []

    def profiler(frame, event, arg):
        if event == "call":
            seen.append(frame.f_code.co_name)

    sys.setprofile(profiler)
    try:
        with forbid(sampling.generate, hint="x"):
            sampling.check_sampling_args  # noqa: B018 (an attribute, no call)
            (lambda: None)()
        assert sys.getprofile() is profiler
    finally:
        sys.setprofile(None)
    assert "<lambda>" in seen


def test_functions_written_in_c_are_seen_as_functions_and_as_methods():
    scores = torch.tensor([[1.0, 3.0, 2.0]])
    for route in (lambda: torch.topk(scores, 1), lambda: scores.topk(1), lambda: getattr(torch, "topk")(scores, 1)):
        with pytest.raises(NotRightYet, match="no topk"):
            with forbid(torch.topk, torch.Tensor.topk, hint="no topk"):
                route()
    with forbid(torch.topk, torch.Tensor.topk, hint="no topk"):  # other C functions are fine
        torch.sort(scores, descending=True)


def test_only_functions_can_be_watched():
    with pytest.raises(TypeError, match="is not one"):
        with forbid(42, hint="x"):
            pass
