"""The compiled one-row kernel: right products, built once per machine, and a clean way out where it can't be built."""

import pytest
import torch
import torch.nn.functional as F

import nanogpt_edu.matvec as mv
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
    [(1, 2304, 768, True), (3, 999, 1001, False), (1, 7, 5, True), (2, 300, 256, True), (0, 64, 32, True)],
    ids=["gpt2 c_attn", "odd sizes", "tiny", "just above the two-core size", "empty batch"],
)
def test_kernel_gives_f_linear_product(batch, out_features, in_features, bias):
    assert mv.load_kernel() is not None  # this machine has a compiler, so the kernel must build
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, in_features, generator=g)
    weight = torch.randn(out_features, in_features, generator=g)
    b = torch.randn(out_features, generator=g) if bias else None
    assert mv.can_use(x, weight, b)
    y = mv.matvec(x, weight, b)
    assert y.shape == (batch, out_features)
    expected = reference(x, weight, b)
    assert torch.allclose(y, expected, atol=1e-4, rtol=1e-5)
    # and F.linear's float32 result is no closer to the truth: the kernel is as accurate, not just near
    if batch:
        assert (y - expected).abs().max() <= 2 * (F.linear(x, weight, b) - expected).abs().max() + 1e-6


@pytest.mark.parametrize("case", ["transposed weight", "strided x", "float64", "1-D x", "int bias"])
def test_can_use_refuses_what_the_kernel_cannot_read(case):
    x, weight, bias = torch.randn(1, 8), torch.randn(4, 8), torch.randn(4)
    if case == "transposed weight":
        weight = torch.randn(8, 4).t()
    elif case == "strided x":
        x = torch.randn(1, 16)[:, ::2]
    elif case == "float64":
        x, weight, bias = x.double(), weight.double(), bias.double()
    elif case == "1-D x":
        x = x[0]
    else:
        bias = torch.ones(4, dtype=torch.int32)
    assert not mv.can_use(x, weight, bias)


@needs_compiler
def test_kernel_is_built_once_per_machine_and_cached(fresh):
    first = mv.build_kernel()
    assert first.startswith("matvec kernel: built ")
    libraries = list((fresh / "nanogpt-edu").glob("matvec-*"))
    assert len(libraries) == 1
    built_at = libraries[0].stat().st_mtime_ns
    assert mv.build_kernel().startswith("matvec kernel: already built")
    assert libraries[0].stat().st_mtime_ns == built_at  # not compiled again
    assert list((fresh / "nanogpt-edu").iterdir()) == libraries  # no temporary files left behind


@needs_compiler
def test_cache_file_is_per_cpu(fresh, monkeypatch):
    path = mv._cache_path()
    monkeypatch.setattr(mv, "_cpu_flags", lambda: "flags : sse2")  # another CPU sharing this home folder
    assert mv._cache_path() != path


@needs_compiler
def test_damaged_library_is_removed_and_rebuilt(fresh):
    path = mv._cache_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a shared library")  # as an interrupted copy could leave it
    assert mv.load_kernel() is None
    assert not path.exists()
    mv._tried = False  # the next process
    assert mv.load_kernel() is not None


def test_without_a_compiler_generation_still_works(fresh, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    report = mv.build_kernel()
    assert report == ("matvec kernel: not built (no C compiler found (set CC to one)); "
                      "PyTorch's own matrix products will be used")
    assert mv.load_kernel() is None
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16)).eval()
    out = generate(model, torch.zeros(1, 1, dtype=torch.long), 20, temperature=0)
    assert torch.equal(out, generate(model, torch.zeros(1, 1, dtype=torch.long), 20, temperature=0, use_cache=False))


def test_environment_switch_turns_the_kernel_off(fresh, monkeypatch):
    monkeypatch.setenv("NANOGPT_EDU_KERNEL", "0")
    assert mv.load_kernel() is None
    assert mv.build_kernel() == "matvec kernel: turned off by NANOGPT_EDU_KERNEL"
    assert not (fresh / "nanogpt-edu").exists()


def test_command_line_build_reports_in_one_line(fresh, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("CC", "no-such-compiler-here")
    result = subprocess.run([sys.executable, "-m", "nanogpt_edu.build_kernel"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.count("\n") == 1 and result.stdout.startswith("matvec kernel: not built")


def test_a_failed_build_is_not_retried_by_every_process(fresh, monkeypatch):
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    assert mv.build_kernel().startswith("matvec kernel: not built (false failed: ")
    path = mv._cache_path()
    assert mv._failure_note(path).exists() and not path.exists()
    monkeypatch.setattr(mv, "_try_compile", lambda path: pytest.fail("compiled again"))
    assert mv.load_kernel() is None  # a later process reads the note instead of compiling
    cache_path = mv._cache_path
    monkeypatch.setattr(mv, "_cache_path", lambda: pytest.fail("cache folder looked at again"))
    assert mv.load_kernel() is None  # and decides once, not before every product
    monkeypatch.setattr(mv, "_cache_path", cache_path)
    monkeypatch.setattr(mv, "_try_compile", lambda path: "still failing")
    assert mv.build_kernel() == "matvec kernel: not built (still failing); PyTorch's own matrix products will be used"
