import pytest
import torch
import torch.nn.functional as F

from nanogpt_edu import load_model
import nanogpt_edu.fast.decode as decode_module
import nanogpt_edu.fast.kernel as kernel_module
from nanogpt_edu.fast import KernelDecodeOps, TorchDecodeOps, can_decode_flat, decode_step, pick_ops
from nanogpt_edu.model import GPT, GPTConfig
from nanogpt_edu.sampling import generate
from nanogpt_edu.tokenizer import encode


def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=32, vocab_size=101, n_layer=3, n_head=4, n_embd=32)).eval()


@torch.no_grad()
def test_prefill_then_decode_matches_full_forward():
    model = tiny_model()
    idx = torch.randint(0, 101, (2, 20), generator=torch.Generator().manual_seed(1))
    cache = model.new_cache(2)
    logits, _ = model(idx[:, :8], cache=cache)  # prefill 8 tokens
    assert torch.allclose(logits, model(idx[:, :8])[0], atol=1e-5)
    for t in range(8, 20):  # then one token at a time
        logits, _ = model(idx[:, t : t + 1], cache=cache)
        assert torch.allclose(logits, model(idx[:, : t + 1])[0], atol=1e-5), t
    assert cache.length == 20


@torch.no_grad()
def test_several_new_tokens_after_cached_ones_are_causal():
    model = tiny_model()
    idx = torch.randint(0, 101, (1, 15), generator=torch.Generator().manual_seed(2))
    cache = model.new_cache(1)
    model(idx[:, :6], cache=cache)
    logits, _ = model(idx[:, 6:15], cache=cache)  # a chunk of 9 after 6 cached
    assert torch.allclose(logits, model(idx)[0], atol=1e-5)


@torch.no_grad()
def test_cache_buffers_are_preallocated_not_grown():
    model = tiny_model()
    cache = model.new_cache(1)
    pointers = (cache.k.data_ptr(), cache.v.data_ptr())
    shape = tuple(cache.k.shape)
    idx = torch.zeros(1, 1, dtype=torch.long)
    for _ in range(10):
        model(idx, cache=cache)
    assert (cache.k.data_ptr(), cache.v.data_ptr()) == pointers and tuple(cache.k.shape) == shape
    assert shape == (3, 1, 4, 32, 8)  # (n_layer, B, n_head, block_size, head_size)


@torch.no_grad()
def test_cache_cannot_pass_block_size():
    model = tiny_model()
    cache = model.new_cache(1)
    model(torch.zeros(1, 32, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="33 tokens: block_size is 32"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


@pytest.fixture(scope="module")
def pocket():
    return load_model("pocket")


PROMPTS = ["ROMEO:", "Hello, my name is", "First Citizen:\nBefore we proceed any further, hear me speak."]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_identical_with_and_without_cache_across_the_crop(pocket, prompt):
    x = torch.tensor([encode(prompt)])
    new = pocket.config.block_size + 20 - x.size(1)  # runs 20 steps past block_size
    assert torch.equal(generate(pocket, x, new, temperature=0, use_cache=True),
                       generate(pocket, x, new, temperature=0, use_cache=False))


def test_seeded_sampling_identical_with_and_without_cache_batch(pocket):
    x = torch.tensor([encode("KING RICHARD II:")] * 3)  # batch of 3
    new = pocket.config.block_size + 10
    runs = [generate(pocket, x, new, temperature=0.8, top_k=200, generator=torch.Generator().manual_seed(0),
                     use_cache=use_cache) for use_cache in (True, False)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0][0], runs[0][1])  # the rows really are different samples


def test_seeded_sampling_identical_with_global_seed(pocket):
    x = torch.tensor([encode(p)[:3] for p in ["JULIET:", "HAMLET:"]])  # rows of equal length
    torch.manual_seed(1337)
    cached = generate(pocket, x, 60, temperature=1.0, top_p=0.95)
    torch.manual_seed(1337)
    naive = generate(pocket, x, 60, temperature=1.0, top_p=0.95, use_cache=False)
    assert torch.equal(cached, naive)


# The lesson runs no compiled code: nn.Linear everywhere, and nanoGPT's loop never reaches the engine.

def count_calls(monkeypatch, module, name: str) -> list:
    """Wrap module.<name> so that each call is counted; return the list of calls."""
    calls, original = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def without_kernel(monkeypatch):
    monkeypatch.setattr(kernel_module, "load_kernel", lambda build=True: None)


needs_compiler = pytest.mark.skipif(kernel_module._compiler() is None, reason="no C compiler on this machine")


@torch.no_grad()
def test_the_lesson_model_never_calls_the_kernel(monkeypatch):
    monkeypatch.setattr(kernel_module, "linear", lambda *args: pytest.fail("kernel used by the lesson"))
    monkeypatch.setattr(kernel_module, "attend", lambda *args: pytest.fail("kernel used by the lesson"))
    model = tiny_model()
    assert {type(m) for m in model.modules() if isinstance(m, torch.nn.Linear)} == {torch.nn.Linear}
    h = torch.randn(2, 1, 32)
    assert torch.equal(model.lm_head(h), F.linear(h, model.lm_head.weight))  # one row: plain nn.Linear
    idx = torch.randint(0, 101, (1, 40), generator=torch.Generator().manual_seed(5))
    generate(model, idx[:, :4], 40, temperature=0, use_cache=False)  # nanoGPT's loop, across the crop
    torch.manual_seed(0)
    model.generate(idx[:, :4], 40)  # the seed's own line
    cache = model.new_cache(1)
    model(idx[:, :4], cache=cache)
    model(idx[:, 4:5], cache=cache)  # forward with a cache: the modules, in PyTorch


def test_the_seeds_generate_line_draws_what_the_library_draws(pocket):
    # sample.py's line, y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k), under
    # torch's global seed, against both of the library's paths, across the pocket model's block_size crop
    x = torch.tensor([encode("Hello, my name is")])
    max_new_tokens, temperature, top_k = 200, 0.8, 200
    runs = []
    for use_cache in (None, False, True):
        torch.manual_seed(1337)
        if use_cache is None:
            runs.append(pocket.generate(x, max_new_tokens, temperature=temperature, top_k=top_k))
        else:
            runs.append(generate(pocket, x, max_new_tokens, temperature=temperature, top_k=top_k,
                                 use_cache=use_cache))
    assert runs[0].shape == (1, 205)
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def test_the_seeds_loop_with_top_k_1_is_greedy(pocket):
    x = torch.tensor([encode("ROMEO:"), encode("JULIET:")[:3]])
    new = pocket.config.block_size + 5
    torch.manual_seed(0)
    assert torch.equal(pocket.generate(x, new, top_k=1), generate(pocket, x, new, temperature=0))


@pytest.mark.parametrize("bad", [dict(temperature=0), dict(temperature=-1.0), dict(top_k=0)])
def test_the_seeds_loop_refuses_settings_it_cannot_use(bad):
    with pytest.raises(ValueError, match="generate needs temperature > 0 and top_k >= 1 or None"):
        tiny_model().generate(torch.zeros(1, 1, dtype=torch.long), 3, **bad)


# fast.decode_step: the one-token step written flat, which generate uses; it must compute what the modules compute.

@torch.no_grad()
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("gelu", ["tanh", "exact"])
@pytest.mark.parametrize("kernel", [True, False], ids=["kernel built", "no kernel"])
def test_decode_step_gives_the_modules_logits(monkeypatch, kernel, gelu, bias):
    if not kernel:
        without_kernel(monkeypatch)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=101, n_layer=3, n_head=4, n_embd=32, gelu=gelu, bias=bias)).eval()
    idx = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(4))
    flat, modules = model.new_cache(2), model.new_cache(2)
    model(idx[:, :5], cache=flat)
    model(idx[:, :5], cache=modules)
    uses_kernel = kernel and kernel_module._compiler() is not None
    ops = pick_ops(flat)
    assert ops is (KernelDecodeOps if uses_kernel else TorchDecodeOps)
    for t in range(5, 12):
        expected, _ = model(idx[:, t : t + 1], cache=modules)
        logits = decode_step(model, idx[:, t : t + 1], flat, ops)
        if uses_kernel:  # the kernel's sums run in another order: the same up to float rounding
            assert torch.allclose(logits, expected, atol=1e-5, rtol=1e-5), t
        else:  # PyTorch's operations are the modules' very operations: the same numbers
            assert torch.equal(logits, expected), t
    assert flat.length == modules.length == 12
    assert torch.allclose(flat.k, modules.k, atol=1e-5) and torch.allclose(flat.v, modules.v, atol=1e-5)


@torch.no_grad()
def test_kernel_ops_leave_what_the_kernel_cannot_read_to_pytorch(monkeypatch):
    # the kernel's functions refuse float64 before reaching the C code, and KernelDecodeOps hands the work over
    monkeypatch.setattr(kernel_module, "_library", lambda: pytest.fail("the C code was reached"))
    model = tiny_model().double()  # float64 weights: the kernel reads float32 only
    block = model.transformer.h[0]
    x = torch.randn(2, 32, dtype=torch.float64)
    expected = TorchDecodeOps.linear(x, block.mlp.c_fc, norm=block.ln_2, gelu="tanh")
    assert torch.equal(KernelDecodeOps.linear(x, block.mlp.c_fc, norm=block.ln_2, gelu="tanh"), expected)
    cache = model.new_cache(2)
    assert pick_ops(cache) is TorchDecodeOps  # a float64 cache: PyTorch's operations for the whole step
    qkv = torch.randn(2, 96, dtype=torch.float64)
    assert torch.equal(KernelDecodeOps.attend(qkv, cache.k[0], cache.v[0], 0),
                       TorchDecodeOps.attend(qkv, cache.k[0].clone(), cache.v[0].clone(), 0))


@torch.no_grad()
def test_decode_step_leaves_other_shapes_and_overflow_to_forward():
    model = tiny_model()
    cache = model.new_cache(1)
    model(torch.zeros(1, 4, dtype=torch.long), cache=cache)
    chunk = torch.tensor([[5, 6, 7]])  # three tokens: not a one-token step
    reference = model.new_cache(1)
    model(torch.zeros(1, 4, dtype=torch.long), cache=reference)
    assert torch.equal(decode_step(model, chunk, cache), model(chunk, cache=reference)[0])
    model(torch.zeros(1, 32 - 7, dtype=torch.long), cache=cache)  # now full
    with pytest.raises(ValueError, match="33 tokens: block_size is 32"):
        decode_step(model, torch.zeros(1, 1, dtype=torch.long), cache)


def test_generate_runs_forward_hooks_and_dropout_through_the_modules(monkeypatch):
    model = tiny_model()
    assert can_decode_flat(model)
    calls = []
    monkeypatch.setattr(decode_module, "decode_step", lambda *a, **k: pytest.fail("decode_step used"))
    handle = model.transformer.h[1].mlp.register_forward_hook(lambda *args: calls.append(1))
    assert not can_decode_flat(model)
    generate(model, torch.zeros(1, 3, dtype=torch.long), 6, temperature=0)
    assert len(calls) == 6  # the prefill and every one of the five one-token steps ran the hooked module
    handle.remove()
    dropout_model = GPT(GPTConfig(block_size=32, vocab_size=101, n_layer=1, n_head=2, n_embd=8, dropout=0.1))
    assert dropout_model.training and not can_decode_flat(dropout_model)
    generate(dropout_model, torch.zeros(1, 3, dtype=torch.long), 3)


def test_generate_uses_decode_step_for_one_token_steps(monkeypatch):
    model = tiny_model()
    steps = []
    original = decode_module.decode_step
    monkeypatch.setattr(decode_module, "decode_step",
                        lambda model, idx, **kw: steps.append(idx.shape) or original(model, idx, **kw))
    generate(model, torch.zeros(2, 3, dtype=torch.long), 6, temperature=0)
    assert steps == [(2, 1)] * 5  # the prompt went through forward; every later step is flat
    generate(model, torch.zeros(2, 3, dtype=torch.long), 6, temperature=0, use_cache=False)
    assert len(steps) == 5  # nanoGPT's loop never uses it


def test_engine_off_runs_every_cached_step_through_the_modules(monkeypatch):
    model = tiny_model()
    x = torch.randint(0, 101, (2, 3), generator=torch.Generator().manual_seed(3))
    with_engine = generate(model, x, 6, temperature=0)
    monkeypatch.setattr(decode_module, "decode_step", lambda *a, **k: pytest.fail("decode_step used"))
    widths = []  # positions per forward pass, seen by the modules
    model.transformer.wte.forward = lambda idx, embed=model.transformer.wte.forward: widths.append(idx.size(1)) \
        or embed(idx)  # an attribute, not a hook: hooks would switch the engine off by themselves
    assert can_decode_flat(model)
    lesson = generate(model, x, 6, temperature=0, engine=False)
    assert widths == [3, 1, 1, 1, 1, 1]  # the prompt once, then one token per step, all through forward
    assert torch.equal(lesson, with_engine)
    assert torch.equal(lesson, generate(model, x, 6, temperature=0, use_cache=False))


@torch.no_grad()
def test_cache_capacity_is_what_generate_needs():
    model = tiny_model()
    cache = model.new_cache(2, capacity=10)
    assert tuple(cache.k.shape) == (3, 2, 4, 10, 8) and cache.capacity == 10
    model(torch.zeros(2, 9, dtype=torch.long), cache=cache)
    decode_step(model, torch.zeros(2, 1, dtype=torch.long), cache)  # the tenth position fits
    with pytest.raises(ValueError, match=r"the cache holds 10 positions, 11 asked: make it with new_cache\("
                                         r"batch_size, capacity=11\) or more"):
        decode_step(model, torch.zeros(2, 1, dtype=torch.long), cache)
    for bad in (0, 33):
        with pytest.raises(ValueError, match=f"capacity must be between 1 and block_size \\(32\\), got {bad}"):
            model.new_cache(1, capacity=bad)


def test_generate_sizes_its_cache_to_the_generation(monkeypatch):
    model = tiny_model()
    sizes = []
    original = GPT.new_cache
    monkeypatch.setattr(GPT, "new_cache", lambda self, b, c=None: sizes.append((b, c)) or original(self, b, c))
    generate(model, torch.zeros(2, 5, dtype=torch.long), 7, temperature=0)
    generate(model, torch.zeros(1, 5, dtype=torch.long), 40, temperature=0)  # slides past block_size 32
    assert sizes == [(2, 12), (1, 32)]


@needs_compiler
@pytest.mark.parametrize("temperature", [0, 0.8], ids=["greedy", "seeded sampling"])
def test_kernel_and_pytorch_operations_give_the_same_pocket_tokens(pocket, monkeypatch, temperature):
    x = torch.tensor([encode("KING RICHARD II:")[:3], encode("First Citizen:")])  # two rows of 3 tokens
    new = 100

    def run():
        return generate(pocket, x, new, temperature=temperature, top_k=200,
                        generator=torch.Generator().manual_seed(1))

    calls = count_calls(monkeypatch, kernel_module, "attend")
    with_kernel = run()
    assert len(calls) == (new - 1) * pocket.config.n_layer  # every one-token step's attention ran in the kernel
    monkeypatch.setattr(decode_module, "pick_ops", lambda cache: TorchDecodeOps)
    assert torch.equal(run(), with_kernel)
    assert len(calls) == (new - 1) * pocket.config.n_layer  # and now none did
