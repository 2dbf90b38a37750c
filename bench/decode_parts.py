"""What each part of the fast decode path is worth: the kernel, the flat decode step, and the Python around them.

    python bench/decode_parts.py   # prints a table

Generates 200 tokens greedily from a model with GPT-2 124M's dims (random weights, fp32, CPU) with parts of the
decode path switched off, the variants taking turns round by round:

- everything on (what ``generate`` does);
- ``forward`` through the modules instead of ``GPT.decode_step``;
- PyTorch's own products (oneDNN) instead of the compiled kernel, and both switched off;
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

import nanogpt_edu.model as model_module
from nanogpt_edu.model import GPT
from nanogpt_edu.sampling import generate


@contextlib.contextmanager
def switched(kernel: bool = True, flat: bool = True, products: bool = True):
    """Run the body with the chosen parts of the decode path switched off."""
    saved = model_module.load_kernel, model_module.matvec, GPT.uses_flat_decode
    if not kernel:
        model_module.load_kernel = lambda: None
    if not flat:
        GPT.uses_flat_decode = lambda self: False
    if not products:
        model_module.matvec = lambda x, weight, bias: torch.zeros(x.size(0), weight.size(0))
    try:
        yield
    finally:
        model_module.load_kernel, model_module.matvec, GPT.uses_flat_decode = saved


VARIANTS = {
    "everything on": {},
    "modules' forward, kernel": {"flat": False},
    "flat step, oneDNN": {"kernel": False},
    "modules' forward, oneDNN": {"kernel": False, "flat": False},
    "flat step, products zeroed": {"products": False},
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
        print(f"  {name:36} {s / args.new * 1e3:6.2f} ms/token  {args.new / s:6.1f} tok/s")


if __name__ == "__main__":
    main()
