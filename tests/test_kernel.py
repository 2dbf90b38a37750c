"""The compiled decode kernel: right results, built once per machine, and a clean way out where it can't be built."""

import pytest
import torch
import torch.nn.functional as F

import nanogpt_edu.fast.kernel as mv
from nanogpt_edu.fast import TorchDecodeOps
from nanogpt_edu.model import GPT, GPTConfig
from nanogpt_edu.sampling import generate

needs_compiler = pytest.mark.skipif(mv._compiler() is None, reason="no C compiler on this machine")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A process state in which the kernel was never loaded, with an empty cache folder."""
    monkeypatch.setattr(mv, "_kernel", None)
    monkeypatch.setattr(mv, "_tried", False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("NANOGPT_EDU_KERNEL", raising=False)
    return tmp_path


def reference(x, weight, bias):
    # float64 sums: the ground truth both float32 routes are compared with
    return F.linear(x.double(), weight.double(), None if bias is None else bias.double()).float()


@needs_compiler
@pytest.mark.parametrize(
    "batch, out_features, in_features, bias",
    [(1, 2304, 768, True), (3, 999, 1001, False), (1, 7, 5, True), (2, 3, 16, True), (2, 1, 9, False),
     (2, 300, 256, True), (1, 50257, 2, True), (0, 64, 32, True)],
    ids=["gpt2 c_attn", "odd sizes", "tiny", "fewer rows than groups", "one row", "just above the two-core size",
         "a head's shape, two cores", "empty batch"],
)
def test_kernel_gives_f_linear_product(batch, out_features, in_features, bias):
    assert mv.load_kernel() is not None  # this machine has a compiler, so the kernel must build
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_features, generator=g)
    weight = torch.randn(out_features, in_features, generator=g)
    b = torch.randn(out_features, generator=g) if bias else None
    assert mv.can_use(x, weight, b)
    y = mv.linear(x, weight, b)
    assert y.shape == (batch, out_features)
    expected = reference(x, weight, b)
    assert torch.allclose(y, expected, atol=1e-4, rtol=1e-5)
    # and F.linear's float32 result is no closer to the truth: the kernel is as accurate, not just near
    if batch:
        assert (y - expected).abs().max() <= 2 * (F.linear(x, weight, b) - expected).abs().max() + 1e-6


@needs_compiler
@pytest.mark.parametrize("gelu", [None, "none", "tanh"])
@pytest.mark.parametrize("batch", [1, 3])
def test_kernel_linear_with_layer_norm_and_gelu_matches_pytorch(gelu, batch):
    assert mv.load_kernel() is not None
    g = torch.Generator().manual_seed(1)
    x = 3 * torch.randn(batch, 96, generator=g) + 1  # off-centre and wide, so the layer norm has work to do
    weight, bias = torch.randn(200, 96, generator=g) / 10, torch.randn(200, generator=g)
    norm_weight, norm_bias = torch.randn(96, generator=g), torch.randn(96, generator=g)
    y = mv.linear(x, weight, bias, gelu=gelu, norm=(norm_weight, norm_bias, 1e-5))
    expected = F.linear(F.layer_norm(x.double(), (96,), norm_weight.double(), norm_bias.double(), 1e-5),
                        weight.double(), bias.double())
    if gelu is not None:
        expected = F.gelu(expected, approximate=gelu)
        assert (expected < 0).any() and (expected > 1).any()  # both bends of GELU are exercised
    assert torch.allclose(y.double(), expected, atol=2e-5, rtol=1e-5)
    assert torch.allclose(mv.linear(x, weight, None, norm=(norm_weight, None, 1e-5)),
                          F.linear(F.layer_norm(x, (96,), norm_weight, None, 1e-5), weight), atol=2e-5)


@needs_compiler
def test_kernel_linear_adds_into_the_residual_in_place():
    assert mv.load_kernel() is not None
    g = torch.Generator().manual_seed(2)
    x, weight, bias = torch.randn(2, 64, generator=g), torch.randn(48, 64, generator=g), torch.randn(48, generator=g)
    residual = torch.randn(2, 48, generator=g)
    expected = residual + F.linear(x, weight, bias)
    out = mv.linear(x, weight, bias, add_to=residual)
    assert out is residual  # updated in place, no new tensor
    assert torch.allclose(out, expected, atol=1e-5)


@needs_compiler
@pytest.mark.parametrize("batch, n_head, head_size", [(1, 12, 64), (3, 4, 8), (2, 1, 5)])
def test_kernel_attend_stores_the_new_position_and_matches_sdpa(batch, n_head, head_size):
    assert mv.load_kernel() is not None
    g = torch.Generator().manual_seed(3)
    capacity, C = 40, n_head * head_size
    k_ours, v_ours = torch.zeros(batch, n_head, capacity, head_size), torch.zeros(batch, n_head, capacity, head_size)
    k_ref, v_ref = k_ours.clone(), v_ours.clone()
    ours_error = sdpa_error = 0.0
    for position in range(capacity):  # from one cached position to a full cache, the first one parallel or not
        qkv = 4 * torch.randn(batch, 3 * C, generator=g)  # large scores: the softmax's running maximum moves
        y = mv.attend(qkv, k_ours, v_ours, position)
        expected = TorchDecodeOps.attend(qkv, k_ref, v_ref, position)
        assert y.shape == (batch, C)
        assert torch.equal(k_ours, k_ref) and torch.equal(v_ours, v_ref)  # exactly the same cache, nothing else written
        # float64 attention over the same cache: the ground truth both float32 results are compared with
        q = qkv.double().view(batch, 3, n_head, 1, head_size)[:, 0]
        keys, values = k_ref[:, :, : position + 1].double(), v_ref[:, :, : position + 1].double()
        truth = ((q @ keys.transpose(-1, -2)) / head_size**0.5).softmax(-1) @ values
        ours_error = max(ours_error, (y.double() - truth.view(batch, C)).abs().max().item())
        sdpa_error = max(sdpa_error, (expected.double() - truth.view(batch, C)).abs().max().item())
    assert ours_error < 1e-4
    assert ours_error <= 2 * sdpa_error + 1e-6  # as accurate as PyTorch's own attention


@needs_compiler
def test_kernel_refuses_sizes_that_would_read_past_a_tensor():
    assert mv.load_kernel() is not None
    x, weight, bias = torch.randn(2, 8), torch.randn(4, 8), torch.randn(4)
    bad_linear = [
        dict(x=torch.randn(2, 9), weight=weight, bias=bias),
        dict(x=x, weight=weight, bias=torch.randn(5)),
        dict(x=x, weight=weight, bias=bias, add_to=torch.randn(2, 5)),
        dict(x=x, weight=weight, bias=bias, norm=(torch.ones(7), None, 1e-5)),
        dict(x=x, weight=weight, bias=bias, norm=(torch.ones(8), torch.zeros(9), 1e-5)),
        dict(x=x, weight=weight, bias=bias, gelu="tanh", add_to=torch.randn(2, 4)),
    ]
    for kwargs in bad_linear:
        with pytest.raises(ValueError, match="kernel.linear: "):
            mv.linear(**kwargs)
    k, v = torch.zeros(1, 2, 6, 4), torch.zeros(1, 2, 6, 4)
    for qkv, position in ((torch.randn(1, 24), 6), (torch.randn(1, 24), -1), (torch.randn(1, 23), 0)):
        with pytest.raises(ValueError, match="kernel.attend: "):
            mv.attend(qkv, k, v, position)
    assert not k.any() and not v.any()  # nothing written


@pytest.mark.parametrize("case", ["transposed weight", "strided x", "float64", "meta device", "int bias"])
def test_can_use_refuses_what_the_kernel_cannot_read(case):
    x, weight, bias = torch.randn(1, 8), torch.randn(4, 8), torch.randn(4)
    assert mv.can_use(x, weight, bias, None)
    if case == "transposed weight":
        weight = torch.randn(8, 4).t()
    elif case == "strided x":
        x = torch.randn(1, 16)[:, ::2]
    elif case == "float64":
        x, weight, bias = x.double(), weight.double(), bias.double()
    elif case == "meta device":
        x = x.to("meta")
    else:
        bias = torch.ones(4, dtype=torch.int32)
    assert not mv.can_use(x, weight, bias)


@needs_compiler
def test_kernel_is_built_once_per_machine_and_cached(fresh):
    first = mv.build_kernel()
    assert first.startswith("decode kernel: built ")
    libraries = list((fresh / "nanogpt-edu").glob("kernel-*.so"))
    assert len(libraries) == 1
    built_at = libraries[0].stat().st_mtime_ns
    assert mv.build_kernel().startswith("decode kernel: already built")
    assert libraries[0].stat().st_mtime_ns == built_at  # not compiled again
    # the library and the digest recorded when it was built; no temporary files left behind
    assert sorted((fresh / "nanogpt-edu").iterdir()) == [libraries[0], mv._digest_file(libraries[0])]


@needs_compiler
def test_cache_file_is_per_cpu(fresh, monkeypatch):
    path = mv._cache_path()
    monkeypatch.setattr(mv, "_cpu_flags", lambda: "flags : sse2")  # another CPU sharing this home folder
    assert mv._cache_path() != path


@needs_compiler
def test_damaged_library_is_rebuilt(fresh):
    path = mv._cache_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a shared library")  # as an interrupted copy could leave it
    assert mv.load_kernel() is not None  # its bytes match no recorded digest: built again, then loaded
    assert path.read_bytes() != b"not a shared library"


def test_without_a_compiler_generation_still_works(fresh, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    report = mv.build_kernel()
    assert report == ("decode kernel: not built (no C compiler found (set CC to one)); "
                      "PyTorch's own operations will be used")
    assert mv.load_kernel() is None
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16)).eval()
    out = generate(model, torch.zeros(1, 1, dtype=torch.long), 20, temperature=0)
    assert torch.equal(out, generate(model, torch.zeros(1, 1, dtype=torch.long), 20, temperature=0, use_cache=False))


def test_environment_switch_turns_the_kernel_off(fresh, monkeypatch):
    monkeypatch.setenv("NANOGPT_EDU_KERNEL", "0")
    assert mv.load_kernel() is None
    assert mv.build_kernel() == "decode kernel: turned off by NANOGPT_EDU_KERNEL"
    assert not (fresh / "nanogpt-edu").exists()


def test_command_line_build_reports_in_one_line(fresh, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("CC", "no-such-compiler-here")
    result = subprocess.run([sys.executable, "-m", "nanogpt_edu.fast.build_kernel"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.count("\n") == 1 and result.stdout.startswith("decode kernel: not built")


def test_a_failed_build_is_not_retried_by_every_process(fresh, monkeypatch):
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    assert mv.build_kernel().startswith("decode kernel: not built (false failed: ")
    path = mv._cache_path()
    assert mv._failure_note(path).exists() and not path.exists()
    monkeypatch.setattr(mv, "_try_compile", lambda path: pytest.fail("compiled again"))
    assert mv.load_kernel() is None  # a later process reads the note instead of compiling
    cache_path = mv._cache_path
    monkeypatch.setattr(mv, "_cache_path", lambda: pytest.fail("cache folder looked at again"))
    assert mv.load_kernel() is None  # and decides once, not before every product
    monkeypatch.setattr(mv, "_cache_path", cache_path)
    monkeypatch.setattr(mv, "_try_compile", lambda path: "still failing")
    assert mv.build_kernel() == "decode kernel: not built (still failing); PyTorch's own operations will be used"


def unsafe_linear_calls():
    """Calls of kernel.linear whose tensors the C code cannot read or write safely, by name."""
    x, w, b = torch.randn(2, 8), torch.randn(4, 8), torch.randn(4)
    return {
        "expanded (stride 0) weight": dict(x=x, weight=torch.randn(1, 8).expand(4, 8), bias=b),
        "float16 add_to": dict(x=x, weight=w, bias=b, add_to=torch.zeros(2, 4, dtype=torch.float16)),
        "meta x": dict(x=x.to("meta"), weight=w, bias=b),
        "non-contiguous x": dict(x=torch.randn(8, 2).t(), weight=w, bias=b),
        "float64 weight": dict(x=x, weight=w.double(), bias=b),
        "int bias": dict(x=x, weight=w, bias=torch.ones(4, dtype=torch.int32)),
        "3-D x": dict(x=x[None], weight=w, bias=b),
        "add_to is x": dict(x=torch.randn(2, 8), weight=torch.randn(8, 8), bias=None, add_to=None),
        "add_to overlaps the weight": dict(x=x, weight=w, bias=b, add_to=w[:2]),
        "unknown gelu": dict(x=x, weight=w, bias=b, gelu="relu"),
        "not a tensor": dict(x=[[1.0] * 8] * 2, weight=w, bias=b),
        "bad eps": dict(x=x, weight=w, bias=b, norm=(torch.ones(8), None, -1.0)),
        "gradient needed": dict(x=x, weight=w.clone().requires_grad_(), bias=b),
    }


@pytest.mark.parametrize("case", list(unsafe_linear_calls()))
def test_kernel_linear_refuses_what_it_cannot_read_safely(case, monkeypatch):
    kwargs = unsafe_linear_calls()[case]
    if case == "add_to is x":
        kwargs["add_to"] = kwargs["x"]  # written while it is read
    # the refusal comes before the C code, which therefore need not even be built
    monkeypatch.setattr(mv, "_library", lambda: pytest.fail("the C code was reached"))
    with pytest.raises(ValueError, match="^kernel.linear: ") as err:
        mv.linear(**kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("case", ["float16 cache", "non-contiguous qkv", "caches share memory", "qkv inside the cache",
                                  "position a float", "position a bool", "meta cache"])
def test_kernel_attend_refuses_what_it_cannot_read_safely(case, monkeypatch):
    k, v, qkv, position = torch.zeros(1, 2, 6, 4), torch.zeros(1, 2, 6, 4), torch.randn(1, 24), 0
    if case == "float16 cache":
        k = k.half()
    elif case == "non-contiguous qkv":
        qkv = torch.randn(1, 48)[:, ::2]
        assert not qkv.is_contiguous()
    elif case == "caches share memory":
        v = k
    elif case == "qkv inside the cache":
        qkv = k.view(-1)[:24].view(1, 24)
    elif case == "position a float":
        position = 1.0
    elif case == "position a bool":
        position = True
    else:
        v = v.to("meta")
    monkeypatch.setattr(mv, "_library", lambda: pytest.fail("the C code was reached"))
    with pytest.raises(ValueError, match="^kernel.attend: "):
        mv.attend(qkv, k, v, position)


def test_kernel_without_a_build_says_so_in_one_line(monkeypatch):
    monkeypatch.setattr(mv, "_kernel", None)
    monkeypatch.setattr(mv, "load_kernel", lambda build=True: None)
    with pytest.raises(RuntimeError, match="the decode kernel is not available here; `python -m nanogpt_edu.fast"):
        mv.linear(torch.randn(1, 4), torch.randn(2, 4), None)
