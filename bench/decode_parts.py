"""What each part of the fast decode path is worth: the kernel's operations, the flat step, the work around products.

    python bench/decode_parts.py   # prints a table

Generates 200 tokens greedily from a model with GPT-2 124M's dims (random weights, fp32, CPU) with parts of the
engine switched off, the variants taking turns round by round:

- everything on (what ``generate`` does): ``fast.decode_step`` with the kernel's operations (``KernelDecodeOps``);
- ``decode_step`` with PyTorch's operations (``TorchDecodeOps``: plain PyTorch, no compiled code at all);
- the modules' ``forward`` instead of ``decode_step``: the lesson's model as it is, with the KV cache;
- each of the three with the products replaced by zeros (wrong tokens, on purpose): what is left is the time a
  step spends around its products.

Parts are switched off by patching them for the duration of a run. Never run as a test.
"""

from __future__ import annotations

import os

if "OMP_WAIT_POLICY" not in os.environ:  # as nanogpt_edu sets it for its users, before torch loads
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

import argparse
import contextlib
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from generation import gpt2_dims_pair, interleaved_medians, seconds

import nanogpt_edu.fast.decode as decode_module
import nanogpt_edu.fast.kernel as kernel_module
from nanogpt_edu.fast import TorchDecodeOps
from nanogpt_edu.sampling import generate


def zeros_linear(x, weight, bias=None, gelu=None, add_to=None, norm=None):
    """A matrix product that does not read the weights: zeros, or the residual unchanged."""
    return add_to if add_to is not None else x.new_zeros(*x.shape[:-1], weight.size(0))


@contextlib.contextmanager
def switched(kernel_ops: bool = True, flat: bool = True, products: bool = True):
    """Run the body with the chosen parts of the decode path switched off."""
    saved = decode_module.pick_ops, decode_module.can_decode_flat, kernel_module.linear, F.linear
    if not kernel_ops:
        decode_module.pick_ops = lambda cache: TorchDecodeOps
    if not flat:
        decode_module.can_decode_flat = lambda model: False
    if not products:
        kernel_module.linear = zeros_linear
        F.linear = zeros_linear  # nn.Linear and TorchDecodeOps look it up at every call
    try:
        yield
    finally:
        decode_module.pick_ops, decode_module.can_decode_flat, kernel_module.linear, F.linear = saved


VARIANTS = {
    "everything on: the kernel's operations": {},
    "flat step, PyTorch's operations": {"kernel_ops": False},
    "modules' forward (the lesson's model)": {"flat": False},
    "products zeroed: the kernel's operations": {"products": False},
    "products zeroed: PyTorch's operations": {"kernel_ops": False, "products": False},
    "products zeroed: modules' forward": {"flat": False, "products": False},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new", type=int, default=200)
    args = parser.parse_args()
    if kernel_module.load_kernel() is None:
        print("(no compiled kernel on this machine: python -m nanogpt_edu.fast.build_kernel says why)")
    x = torch.tensor([[15496, 11, 616, 1438, 318]])

    def run(parts: dict):
        def once():
            with switched(**parts):
                generate(model, x, args.new, temperature=0)
        return seconds(once)

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        model, _ = gpt2_dims_pair(Path(tmp))
        medians = interleaved_medians({name: run(parts) for name, parts in VARIANTS.items()}, args.repeats)
    print(f"GPT-2 124M dims, {args.new} new tokens, greedy, fp32, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}:")
    for name, s in medians.items():
        print(f"  {name:40} {s / args.new * 1e3:6.2f} ms/token  {args.new / s:6.1f} tok/s")


if __name__ == "__main__":
    main()
