"""What each part of the fast decode path is worth: the kernel, the flat decode step, and the work around products.

    python bench/decode_parts.py   # prints a table

Generates 200 tokens greedily from a model with GPT-2 124M's dims (random weights, fp32, CPU) with parts of the
decode path switched off, the variants taking turns round by round:

- everything on (what ``generate`` does): ``GPT.decode_step`` with the kernel's operations (``KernelDecodeOps``);
- ``decode_step`` with PyTorch's operations (``TorchDecodeOps``; the products still go to the kernel);
- ``forward`` through the modules instead of ``decode_step`` (products still in the kernel);
- no kernel at all (PyTorch's products, oneDNN), with the flat step and with the modules;
- the products replaced by zeros (wrong tokens, on purpose): what is left is the time spent around them.

Parts are switched off by patching them for the duration of a run. Never run as a test.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import torch
from generation import gpt2_dims_pair, interleaved_medians, seconds

import nanogpt_edu.kernel as kernel_module
import nanogpt_edu.model as model_module
from nanogpt_edu.model import GPT, TorchDecodeOps
from nanogpt_edu.sampling import generate


def zeros_linear(x, weight, bias, gelu=None, add_to=None, norm=None):
    """kernel.linear without reading the weights: zeros, or the residual unchanged."""
    return add_to if add_to is not None else torch.zeros(x.size(0), weight.size(0))


@contextlib.contextmanager
def switched(kernel: bool = True, kernel_ops: bool = True, flat: bool = True, products: bool = True):
    """Run the body with the chosen parts of the decode path switched off."""
    saved = model_module.load_kernel, kernel_module.linear, GPT.decode_ops, GPT.uses_flat_decode
    if not kernel:
        model_module.load_kernel = lambda: None
    if not kernel_ops:
        GPT.decode_ops = lambda self, cache: TorchDecodeOps
    if not flat:
        GPT.uses_flat_decode = lambda self: False
    if not products:
        kernel_module.linear = zeros_linear
    try:
        yield
    finally:
        model_module.load_kernel, kernel_module.linear, GPT.decode_ops, GPT.uses_flat_decode = saved


VARIANTS = {
    "everything on": {},
    "flat step, PyTorch's operations": {"kernel_ops": False},
    "modules' forward": {"flat": False},
    "flat step, PyTorch's ops, oneDNN": {"kernel": False},
    "modules' forward, oneDNN": {"kernel": False, "flat": False},
    "products zeroed": {"products": False},
    "PyTorch's operations, products zeroed": {"kernel_ops": False, "products": False},
    "modules' forward, products zeroed": {"flat": False, "products": False},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new", type=int, default=200)
    args = parser.parse_args()
    if model_module.load_kernel() is None:
        print("(no compiled kernel on this machine: python -m nanogpt_edu.build_kernel says why)")
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
