"""What bounds a decode step: how fast each available kernel multiplies one row by GPT-2 small's 48 layer matrices.

    python bench/matvec.py

Generating one token multiplies a single row by every weight matrix, so a decode step can go no faster than
memory delivers the weights. This measures, side by side and taking turns, the ways this machine can do those
products, against a plain reduction over the same matrices (the speed at which memory delivers them at all):

- the compiled kernel of ``nanogpt_edu.fast.kernel``, weights stored (out, in): what the engine's decode step
  uses where the machine could build it;
- ``F.linear``, (out, in) and (in, out): what ``nn.Linear`` does, and the engine's PyTorch operations (the
  (in, out) storage is GPT-2's Conv1D layout, seen transposed);
- NumPy's BLAS (OpenBLAS in the PyPI wheels), ``x @ W`` on the (in, out) storage, shared without a copy. Its
  threads keep spinning for a while after each call and slow down whatever PyTorch runs next (measured: the
  reduction twice as slow when taking turns with it, and a GPT-2 decode step 3x slower with it inside), so it
  is timed in a round of its own, after the others.

Never run as a test: the numbers depend on the machine and on what else it is doing.
"""

from __future__ import annotations

import os

if "OMP_WAIT_POLICY" not in os.environ:  # as nanogpt_edu sets it for its users, before torch loads
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from generation import interleaved_medians, seconds

from nanogpt_edu.fast.kernel import linear, load_kernel

SHAPES = [(3 * 768, 768), (768, 768), (4 * 768, 768), (768, 4 * 768)] * 12  # (out, in): attn, proj, fc, proj


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = [torch.randn(1, n_in) for n_in in (768, 4 * 768)]
    row = {r.size(1): r for r in rows}
    out_in = [torch.randn(n_out, n_in) for n_out, n_in in SHAPES]
    in_out = [w.t().contiguous().t() for w in out_in]  # same numbers, Conv1D storage, seen as (out, in)
    methods = {
        "F.linear, (out, in)": lambda: [F.linear(row[w.size(1)], w) for w in out_in],
        "F.linear, (in, out)": lambda: [F.linear(row[w.size(1)], w) for w in in_out],
        "plain reduction (sum)": lambda: [w.sum(-1) for w in out_in],
    }
    if load_kernel() is not None:
        methods["kernel, (out, in)"] = lambda: [linear(row[w.size(1)], w, None) for w in out_in]
        assert all(torch.allclose(linear(row[w.size(1)], w, None), F.linear(row[w.size(1)], w), atol=1e-3)
                   for w in out_in)
    else:
        print("(no compiled kernel on this machine: python -m nanogpt_edu.fast.build_kernel says why)")
    for w in in_out:  # every way computes the same product
        x = row[w.size(1)]
        assert np.allclose(x.numpy() @ w.t().numpy(), F.linear(x, w).numpy(), atol=1e-3)
    medians = interleaved_medians({name: seconds(fn) for name, fn in methods.items()}, args.repeats)
    numpy_blas = lambda: [row[w.size(1)].numpy() @ w.t().numpy() for w in in_out]  # noqa: E731
    medians |= interleaved_medians({"NumPy BLAS, (in, out)": seconds(numpy_blas)}, args.repeats)
    total = sum(w.numel() * w.element_size() for w in out_in)
    print(f"one row times GPT-2 small's 48 layer matrices ({total / 1e6:.0f} MB of fp32), "
          f"{torch.get_num_threads()} threads, median of {args.repeats}:")
    for name, s in sorted(medians.items(), key=lambda item: item[1]):
        print(f"  {name:24} {s * 1e3:6.2f} ms  {total / s / 1e9:5.1f} GB/s")


if __name__ == "__main__":
    main()
