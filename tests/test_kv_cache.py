import pytest
import torch
import torch.nn.functional as F

from nanogpt_edu import load_model
import nanogpt_edu.kernel as kernel_module
import nanogpt_edu.model as model_module
from nanogpt_edu.model import GPT, GPTConfig, KernelDecodeOps, TorchDecodeOps
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


# DecodeLinear: the decode step's matrix-vector products go through the compiled kernel (or, without it, oneDNN);
# everything else stays F.linear.

def decode_linear(bias: bool = True, in_features: int = 1024, out_features: int = 1536):
    torch.manual_seed(3)
    return model_module.DecodeLinear(in_features, out_features, bias=bias)


def count_calls(monkeypatch, module, name: str) -> list:
    """Wrap module.<name> so that each call is counted; return the list of calls."""
    calls, original = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def without_kernel(monkeypatch):
    monkeypatch.setattr(model_module, "load_kernel", lambda: None)


needs_compiler = pytest.mark.skipif(kernel_module._compiler() is None, reason="no C compiler on this machine")


@needs_compiler
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [1, 3])
def test_decode_linear_uses_the_kernel_for_one_row_and_gives_the_same_product(monkeypatch, bias, batch):
    layer = decode_linear(bias)
    calls = count_calls(monkeypatch, kernel_module, "linear")
    x = torch.randn(batch, 1, 1024)
    with torch.no_grad():
        y = layer(x)
    assert calls == [1]
    assert y.shape == (batch, 1, 1536)
    assert torch.allclose(y, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(model_module._ONEDNN_LINEAR is None, reason="this PyTorch build has no oneDNN")
@pytest.mark.parametrize("bias", [True, False])
def test_decode_linear_without_the_kernel_uses_onednn(monkeypatch, bias):
    without_kernel(monkeypatch)
    layer = decode_linear(bias)
    calls = count_calls(monkeypatch, model_module, "_ONEDNN_LINEAR")
    x = torch.randn(2, 1, 1024)
    with torch.no_grad():
        y = layer(x)
    assert calls == [1]
    assert torch.allclose(y, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel built", "no kernel"])
def test_decode_linear_reads_transposed_weights_and_odd_inputs(monkeypatch, kernel):
    if not kernel:
        without_kernel(monkeypatch)
    layer = decode_linear()
    with torch.no_grad():
        layer.weight = torch.nn.Parameter(torch.randn(1024, 1536).t())  # the (in, out) storage of a Conv1D
        assert not layer.weight.is_contiguous()
        strided = torch.randn(1, 1024, 2)[..., 0].unsqueeze(1)
        broadcast = torch.randn(1, 1, 1024).expand(3, 1, 1024)  # three rows sharing one storage
        for x in (strided, broadcast, torch.randn(0, 1, 1024)):  # the last: an empty batch
            assert torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
            assert layer(x).shape == (x.size(0), 1, 1536)


@pytest.mark.parametrize("case", ["grad", "several rows", "small weight without kernel", "float64", "no onednn"])
def test_decode_linear_falls_back_to_f_linear(monkeypatch, case):
    layer = decode_linear(in_features=64) if case.startswith("small") else decode_linear()
    x = torch.randn(2, 5 if case == "several rows" else 1, layer.in_features)
    if case == "float64":
        layer, x = layer.double(), x.double()
    if case in ("small weight without kernel", "no onednn"):
        without_kernel(monkeypatch)
    # stand-ins that fail if called: these cases must reach neither fast route, even where the machine has them
    monkeypatch.setattr(kernel_module, "linear", lambda *args: pytest.fail("kernel used"))
    onednn = None if case == "no onednn" else (lambda *args: pytest.fail("oneDNN used"))
    monkeypatch.setattr(model_module, "_ONEDNN_LINEAR", onednn)
    with torch.set_grad_enabled(case == "grad"):
        y = layer(x)
    assert torch.equal(y, F.linear(x, layer.weight, layer.bias))
    if case == "grad":
        y.sum().backward()  # training still gets gradients
        assert layer.weight.grad is not None


def test_decode_linear_leaves_kernel_choice_to_torch_compile(monkeypatch):
    # neither fast route can be traced (the kernel reads raw data pointers); traced oneDNN broke compile=True
    layer = decode_linear()
    monkeypatch.setattr(kernel_module, "linear", lambda *args: pytest.fail("kernel used while compiling"))
    monkeypatch.setattr(model_module, "_ONEDNN_LINEAR", lambda *args: pytest.fail("oneDNN used while compiling"))
    x = torch.randn(1, 1, layer.in_features)
    with torch.no_grad():
        y = torch.compile(layer, backend="eager")(x)  # dynamo traces it; the "eager" backend skips code generation
    assert torch.equal(y, F.linear(x, layer.weight, layer.bias))


# GPT.decode_step: the one-token step written flat, which generate uses; it must compute what the modules compute.

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
    assert model.decode_ops(flat) is (KernelDecodeOps if uses_kernel else TorchDecodeOps)
    for t in range(5, 12):
        expected, _ = model(idx[:, t : t + 1], cache=modules)
        logits = model.decode_step(idx[:, t : t + 1], flat)
        if uses_kernel:  # the kernel's sums run in another order: the same up to float rounding
            assert torch.allclose(logits, expected, atol=1e-5, rtol=1e-5), t
        else:  # PyTorch's operations are the modules' very operations: the same numbers
            assert torch.equal(logits, expected), t
    assert flat.length == modules.length == 12
    assert torch.allclose(flat.k, modules.k, atol=1e-5) and torch.allclose(flat.v, modules.v, atol=1e-5)


@torch.no_grad()
def test_kernel_ops_leave_what_the_kernel_cannot_read_to_pytorch(monkeypatch):
    monkeypatch.setattr(kernel_module, "linear", lambda *args: pytest.fail("kernel used"))
    monkeypatch.setattr(kernel_module, "attend", lambda *args: pytest.fail("kernel used"))
    model = tiny_model().double()  # float64 weights: the kernel reads float32 only
    block = model.transformer.h[0]
    x = torch.randn(2, 32, dtype=torch.float64)
    expected = TorchDecodeOps.linear(x, block.mlp.c_fc, norm=block.ln_2, gelu="tanh")
    assert torch.equal(KernelDecodeOps.linear(x, block.mlp.c_fc, norm=block.ln_2, gelu="tanh"), expected)
    cache = model.new_cache(2)
    assert model.decode_ops(cache) is TorchDecodeOps  # a float64 cache: PyTorch's operations for the whole step
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
    assert torch.equal(model.decode_step(chunk, cache), model(chunk, cache=reference)[0])
    model(torch.zeros(1, 32 - 7, dtype=torch.long), cache=cache)  # now full
    with pytest.raises(ValueError, match="33 tokens: block_size is 32"):
        model.decode_step(torch.zeros(1, 1, dtype=torch.long), cache)


def test_generate_runs_forward_hooks_and_dropout_through_the_modules(monkeypatch):
    model = tiny_model()
    assert model.uses_flat_decode()
    calls = []
    monkeypatch.setattr(type(model), "decode_step", lambda *a: pytest.fail("decode_step used"))
    handle = model.transformer.h[1].mlp.register_forward_hook(lambda *args: calls.append(1))
    assert not model.uses_flat_decode()
    generate(model, torch.zeros(1, 3, dtype=torch.long), 6, temperature=0)
    assert len(calls) == 6  # the prefill and every one of the five one-token steps ran the hooked module
    handle.remove()
    dropout_model = GPT(GPTConfig(block_size=32, vocab_size=101, n_layer=1, n_head=2, n_embd=8, dropout=0.1))
    assert dropout_model.training and not dropout_model.uses_flat_decode()
    generate(dropout_model, torch.zeros(1, 3, dtype=torch.long), 3)


def test_generate_uses_decode_step_for_one_token_steps(monkeypatch):
    model = tiny_model()
    steps = []
    original = GPT.decode_step
    monkeypatch.setattr(GPT, "decode_step",
                        lambda self, idx, cache: steps.append(idx.shape) or original(self, idx, cache))
    generate(model, torch.zeros(2, 3, dtype=torch.long), 6, temperature=0)
    assert steps == [(2, 1)] * 5  # the prompt went through forward; every later step is flat
    generate(model, torch.zeros(2, 3, dtype=torch.long), 6, temperature=0, use_cache=False)
    assert len(steps) == 5  # nanoGPT's loop never uses it


@torch.no_grad()
def test_cache_capacity_is_what_generate_needs():
    model = tiny_model()
    cache = model.new_cache(2, capacity=10)
    assert tuple(cache.k.shape) == (3, 2, 4, 10, 8) and cache.capacity == 10
    model(torch.zeros(2, 9, dtype=torch.long), cache=cache)
    model.decode_step(torch.zeros(2, 1, dtype=torch.long), cache)  # the tenth position fits
    with pytest.raises(ValueError, match=r"the cache holds 10 positions, 11 asked: make it with new_cache\("
                                         r"batch_size, capacity=11\) or more"):
        model.decode_step(torch.zeros(2, 1, dtype=torch.long), cache)
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
    monkeypatch.setattr(GPT, "decode_ops", lambda self, cache: TorchDecodeOps)
    assert torch.equal(run(), with_kernel)
    assert len(calls) == (new - 1) * pocket.config.n_layer  # and now none did
