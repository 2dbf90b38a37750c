"""Generation speed on this machine: nanoGPT's loop vs our KV cache vs transformers, and the bandwidth bound.

    python bench/generation.py [--out DIR]  # prints a table; writes DIR (build/bench)/time_per_token_*.png, results.json

For the pocket model and for a model with GPT-2 124M's dims (random weights, same for every method): greedy
decoding, fp32, CPU, a 5-token prompt and 200 new tokens, one warm-up run excluded, the median of several rounds
in which every method, and the 1 GiB memory reads that give the bandwidth bound, run once in turn.

* nanoGPT's loop is the lesson's ``GPT.generate`` itself, greedy as ``top_k=1``: a full forward pass per token;
* the KV cache is ``nanogpt_edu.sampling.generate`` (``temperature=0``): the prompt once, then the engine's
  one-token step (``nanogpt_edu.fast``);
* transformers is ``GPT2LMHeadModel.generate`` on the same weights.

The time-per-token figures (and ``results.json``'s curves) time one run token by token: nanoGPT's loop, the KV
cache through the lesson's modules (``engine=False``) and the KV cache through the engine.

Every run checks that the three give the same tokens. The memory is read two ways, by PyTorch's sum and by the
decode kernel's product, and the bound uses the faster: the kernel's four streams per core can read faster than
the sum's one. Never run as a test: the numbers depend on the machine and on what else it is doing.
"""

from __future__ import annotations

import os

if "OMP_WAIT_POLICY" not in os.environ:  # as nanogpt_edu sets it for its users, before torch loads
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import matplotlib

matplotlib.use("Agg")
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from nanogpt_edu import load_model
from nanogpt_edu.fast.kernel import linear, load_kernel
from nanogpt_edu.loading import pocket_dir
from nanogpt_edu.plots import plot_time_per_token
from nanogpt_edu.porting import from_pretrained
from nanogpt_edu.sampling import generate, generate_steps

# `make bench` writes here (untracked); `make bench-update` passes --out bench/results, the committed copy
RESULTS = Path(__file__).resolve().parent.parent / "build" / "bench"


def read_bandwidth(big: torch.Tensor, repeats: int = 3) -> float:
    """Return memory read bandwidth in GB/s: the median time to sum ``big``, a tensor far beyond the CPU caches."""
    return _median_gb_s(big.sum, big, repeats)


def kernel_read_bandwidth(big: torch.Tensor, repeats: int = 3) -> float:
    """Return memory read bandwidth in GB/s as the decode kernel reads: ``big`` cut into matrices of GPT-2's
    c_fc shape, each multiplied by one row (four streams per core; PyTorch's sum reads one)."""
    out_features, in_features = 4 * 768, 768
    n = big.numel() // (out_features * in_features)
    matrices = big[: n * out_features * in_features].view(n, out_features, in_features)
    row = torch.ones(1, in_features)
    return _median_gb_s(lambda: [linear(row, w, None) for w in matrices], matrices, repeats)


def _median_gb_s(read, tensor: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        read()
        times.append(time.perf_counter() - start)
    return tensor.numel() * tensor.element_size() / statistics.median(times) / 1e9


def weight_bytes_per_token(model) -> int:
    """Return the bytes of weights one decode step must read: every parameter except the position table."""
    return (model.get_num_params(non_embedding=True)) * model.transformer.wte.weight.element_size()


def interleaved_medians(methods: dict, repeats: int) -> dict:
    """Return the median of each method's results over ``repeats`` rounds in which every method runs once.

    A method returns its own measurement (seconds, or GB/s for the bandwidth probe). Taking turns, rather than
    all repeats of one method and then the next, lets every method see the same state of a shared machine.
    """
    for method in methods.values():
        method()  # warm-up: first-call allocations and kernel selection are not what we measure
    results = {name: [] for name in methods}
    for _ in range(repeats):
        for name, method in methods.items():
            results[name].append(method())
    return {name: statistics.median(values) for name, values in results.items()}


def seconds(fn):
    """Return a method for ``interleaved_medians`` that runs ``fn`` and returns how many seconds it took."""

    def timed() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    return timed


def time_per_position(model, x: torch.Tensor, new: int, use_cache: bool, engine: bool = True) -> list[float]:
    """Return the seconds each generated token took, in order (so index i is context length len(x) + i)."""
    times, last = [], time.perf_counter()
    for _ in generate_steps(model, x, new, temperature=0, use_cache=use_cache, engine=engine):
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times


def bench_one(name: str, ours, hf, new: int, repeats: int, big: torch.Tensor) -> dict:
    x = torch.tensor([[15496, 11, 616, 1438, 318]])  # "Hello, my name is"
    # Hugging Face's GPT-2 cannot go past its position table (it does not crop), so stay inside it
    new = min(new, ours.config.block_size - x.size(1))
    mask = torch.ones_like(x)

    def hf_generate():
        return hf.generate(x, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                           pad_token_id=50256)

    def nanogpt_loop():
        return ours.generate(x, new, top_k=1)  # nanoGPT's own loop; top_k=1 leaves one token to draw: greedy

    methods = {
        "naive": seconds(nanogpt_loop),
        "cached": seconds(lambda: generate(ours, x, new, temperature=0, use_cache=True)),
        "hf": seconds(hf_generate),
        "bandwidth_sum": lambda: read_bandwidth(big),
    }
    if load_kernel() is not None:
        methods["bandwidth_kernel"] = lambda: kernel_read_bandwidth(big)
    with torch.no_grad():
        m = interleaved_medians(methods, repeats)
        cached = generate(ours, x, new, temperature=0)
        same_as_hf, same_as_loop = torch.equal(cached, hf_generate()), torch.equal(cached, nanogpt_loop())
    # the bound is what memory delivers: the faster of the two ways of reading it
    bandwidth = max(m["bandwidth_sum"], m.get("bandwidth_kernel", 0.0))
    bound = bandwidth * 1e9 / weight_bytes_per_token(ours)
    return {
        "model": name,
        "params": ours.get_num_params(non_embedding=False),
        "block_size": ours.config.block_size,
        "new_tokens": new,
        "naive_tok_s": new / m["naive"],
        "cached_tok_s": new / m["cached"],
        "hf_tok_s": new / m["hf"],
        "cached_over_naive": m["naive"] / m["cached"],
        "ours_over_hf": m["hf"] / m["cached"],
        "same_tokens_as_hf": same_as_hf,
        "same_tokens_as_nanogpt_loop": same_as_loop,
        "weight_bytes_per_token": weight_bytes_per_token(ours),
        "bandwidth_sum_gb_s": m["bandwidth_sum"],
        "bandwidth_kernel_gb_s": m.get("bandwidth_kernel"),
        "bandwidth_gb_s": bandwidth,
        "bound_tok_s": bound,
        "percent_of_bound": 100 * new / m["cached"] / bound,
    }


def gpt2_dims_pair(folder: Path):
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024)).eval()
    hf.save_pretrained(folder)
    return from_pretrained(folder), hf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results (default build/bench)")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = args.out
    results.mkdir(parents=True, exist_ok=True)
    big = torch.ones(2**28)  # 1 GiB of fp32, far beyond any cache
    big.sum()  # touch every page before anything is timed
    rows = []
    pocket = load_model("pocket")
    pocket_hf = GPT2LMHeadModel.from_pretrained(pocket_dir(), dtype=torch.float32).eval()
    rows.append(bench_one("pocket", pocket, pocket_hf, args.new, args.repeats, big))
    with tempfile.TemporaryDirectory() as tmp:
        gpt2, gpt2_hf = gpt2_dims_pair(Path(tmp))
        rows.append(bench_one("gpt2-124M dims", gpt2, gpt2_hf, args.new, args.repeats, big))
        x = torch.tensor([[15496, 11, 616, 1438, 318]])
        with torch.no_grad():
            # the cached step twice: through the lesson's modules, and through the engine (generate's default)
            curves = {name: {"naive (nanoGPT's loop)": time_per_position(m, x, args.new, False),
                             "KV cache, the lesson's model": time_per_position(m, x, args.new, True, engine=False),
                             "KV cache": time_per_position(m, x, args.new, True)}
                      for name, m in (("pocket", pocket), ("gpt2-124M dims", gpt2))}
    print(f"{'model':16} {'new':>4} {'naive':>8} {'cached':>8} {'HF':>8} {'cached/naive':>13} {'ours/HF':>8} "
          f"{'GB/s sum':>9} {'kernel':>7} {'bound':>8} {'% bound':>8}  same tokens as HF, as the loop")
    for r in rows:
        kernel_gb_s = "-" if r["bandwidth_kernel_gb_s"] is None else f"{r['bandwidth_kernel_gb_s']:.1f}"
        print(f"{r['model']:16} {r['new_tokens']:4} {r['naive_tok_s']:8.1f} {r['cached_tok_s']:8.1f} {r['hf_tok_s']:8.1f} "
              f"{r['cached_over_naive']:12.1f}x {r['ours_over_hf']:7.2f}x {r['bandwidth_sum_gb_s']:9.1f} "
              f"{kernel_gb_s:>7} {r['bound_tok_s']:8.1f} {r['percent_of_bound']:7.0f}%  {r['same_tokens_as_hf']}, "
              f"{r['same_tokens_as_nanogpt_loop']}")
    print("(tokens/s; greedy, fp32, CPU, 5-token prompt, "
          f"{args.new} new tokens or up to block_size, median of {args.repeats} after a warm-up. GB/s: reading "
          "1 GiB by PyTorch's sum and by the decode kernel, measured in turn with the runs; bound: the faster of "
          "the two over the weight bytes one decode step reads)")
    for name, series in curves.items():
        positions = list(range(5, 5 + args.new))
        fig = plot_time_per_token(positions, series, title=f"Time per generated token, {name}")
        path = results / f"time_per_token_{name.split()[0]}.png"
        fig.savefig(path, dpi=100)
        print(f"wrote {path}")
    (results / "results.json").write_text(json.dumps(
        {"rows": rows, "curves": curves, "torch": torch.__version__,
         "threads": torch.get_num_threads()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
