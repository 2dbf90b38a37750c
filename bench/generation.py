"""Generation speed on this machine: nanoGPT's loop vs our KV cache vs transformers, and the bandwidth bound.

    python bench/generation.py            # prints a table, writes bench/results/time_per_token.png and results.json

For the pocket model and for a model with GPT-2 124M's dims (random weights, same for every method): greedy
decoding, fp32, CPU, a 5-token prompt and 200 new tokens, one warm-up run excluded, the median of several runs.
Never run as a test: the numbers depend on the machine and on what else it is doing.
"""

from __future__ import annotations

import argparse
import json
import os
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
from nanogpt_edu.loading import pocket_dir
from nanogpt_edu.plots import plot_time_per_token
from nanogpt_edu.porting import from_pretrained
from nanogpt_edu.sampling import generate, generate_steps

RESULTS = Path(__file__).parent / "results"


def read_bandwidth(gib: float = 1.0, repeats: int = 7) -> float:
    """Return the machine's memory read bandwidth in GB/s: the median time to sum a tensor of ``gib`` GiB."""
    big = torch.ones(int(gib * 2**30 / 4), dtype=torch.float32)
    big.sum()  # touch every page once before timing
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        big.sum()
        times.append(time.perf_counter() - start)
    return big.numel() * 4 / statistics.median(times) / 1e9


def weight_bytes_per_token(model) -> int:
    """Return the bytes of weights one decode step must read: every parameter except the position table."""
    return (model.get_num_params(non_embedding=True)) * model.transformer.wte.weight.element_size()


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations and kernel selection are not what we measure
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_per_position(model, x: torch.Tensor, new: int, use_cache: bool) -> list[float]:
    """Return the seconds each generated token took, in order (so index i is context length len(x) + i)."""
    times, last = [], time.perf_counter()
    for _ in generate_steps(model, x, new, temperature=0, use_cache=use_cache):
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times


def bench_one(name: str, ours, hf, new: int, repeats: int) -> dict:
    x = torch.tensor([[15496, 11, 616, 1438, 318]])  # "Hello, my name is"
    # Hugging Face's GPT-2 cannot go past its position table (it does not crop), so stay inside it
    new = min(new, ours.config.block_size - x.size(1))
    mask = torch.ones_like(x)
    with torch.no_grad():
        naive = median_seconds(lambda: generate(ours, x, new, temperature=0, use_cache=False), repeats)
        cached = median_seconds(lambda: generate(ours, x, new, temperature=0, use_cache=True), repeats)
        hf_time = median_seconds(lambda: hf.generate(x, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                                      do_sample=False, pad_token_id=50256), repeats)
        same = torch.equal(generate(ours, x, new, temperature=0),
                           hf.generate(x, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                       do_sample=False, pad_token_id=50256))
    return {
        "model": name,
        "params": ours.get_num_params(non_embedding=False),
        "block_size": ours.config.block_size,
        "new_tokens": new,
        "naive_tok_s": new / naive,
        "cached_tok_s": new / cached,
        "hf_tok_s": new / hf_time,
        "cached_over_naive": naive / cached,
        "ours_over_hf": hf_time / cached,
        "same_tokens_as_hf": same,
        "weight_bytes_per_token": weight_bytes_per_token(ours),
    }


def gpt2_dims_pair(folder: Path):
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024)).eval()
    hf.save_pretrained(folder)
    return from_pretrained(folder), hf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    RESULTS.mkdir(exist_ok=True)
    bandwidth = read_bandwidth()
    rows = []
    pocket = load_model("pocket")
    pocket_hf = GPT2LMHeadModel.from_pretrained(pocket_dir(), dtype=torch.float32).eval()
    rows.append(bench_one("pocket", pocket, pocket_hf, args.new, args.repeats))
    with tempfile.TemporaryDirectory() as tmp:
        gpt2, gpt2_hf = gpt2_dims_pair(Path(tmp))
        rows.append(bench_one("gpt2-124M dims", gpt2, gpt2_hf, args.new, args.repeats))
        x = torch.tensor([[15496, 11, 616, 1438, 318]])
        with torch.no_grad():
            curves = {name: {"naive (nanoGPT loop)": time_per_position(m, x, args.new, False),
                             "KV cache": time_per_position(m, x, args.new, True)}
                      for name, m in (("pocket", pocket), ("gpt2-124M dims", gpt2))}
    print(f"memory read bandwidth: {bandwidth:.1f} GB/s")
    print(f"{'model':16} {'new':>4} {'naive':>8} {'cached':>8} {'HF':>8} {'cached/naive':>13} {'ours/HF':>8} "
          f"{'bound':>8} {'% bound':>8}  same tokens as HF")
    for r in rows:
        r["bound_tok_s"] = bandwidth * 1e9 / r["weight_bytes_per_token"]
        r["percent_of_bound"] = 100 * r["cached_tok_s"] / r["bound_tok_s"]
        print(f"{r['model']:16} {r['new_tokens']:4} {r['naive_tok_s']:8.1f} {r['cached_tok_s']:8.1f} {r['hf_tok_s']:8.1f} "
              f"{r['cached_over_naive']:12.1f}x {r['ours_over_hf']:7.2f}x {r['bound_tok_s']:8.1f} "
              f"{r['percent_of_bound']:7.0f}%  {r['same_tokens_as_hf']}")
    print("(tokens/s; greedy, fp32, CPU, 5-token prompt, "
          f"{args.new} new tokens or up to block_size, median of {args.repeats} after a warm-up)")
    for name, series in curves.items():
        positions = list(range(5, 5 + args.new))
        fig = plot_time_per_token(positions, series, title=f"Time per generated token, {name}")
        path = RESULTS / f"time_per_token_{name.split()[0]}.png"
        fig.savefig(path, dpi=100)
        print(f"wrote {path}")
    (RESULTS / "results.json").write_text(json.dumps(
        {"bandwidth_gb_s": bandwidth, "rows": rows, "curves": curves, "torch": torch.__version__,
         "threads": torch.get_num_threads()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
