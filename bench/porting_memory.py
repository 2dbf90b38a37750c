"""Peak memory of porting: how much resident memory loading a Hugging Face folder into our GPT adds.

    python bench/porting_memory.py [--size gpt2-medium]

Writes a folder of random weights with the chosen GPT-2 size's dims (as save_pretrained would), then, in a fresh
Python process, loads it with ``from_pretrained(folder)`` and reports the growth of peak resident memory (VmHWM)
over the process's memory before loading, as a ratio to the fp32 weight bytes. nanoGPT's own path builds the
Hugging Face model and its own model side by side, about 2x.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CHILD = """
import sys
import torch
from nanogpt_edu.porting import from_pretrained

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

before = status("VmRSS:")
model = from_pretrained(sys.argv[1])
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(status("VmHWM:") - before, weights)
"""


def write_random_folder(size: str, folder: Path) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from nanogpt_edu.porting import GPT2_DIMS

    torch.manual_seed(0)
    dims = GPT2_DIMS[size]
    GPT2LMHeadModel(GPT2Config(n_layer=dims["n_layer"], n_head=dims["n_head"], n_embd=dims["n_embd"])).save_pretrained(folder)


def measure(folder: Path) -> tuple[int, int]:
    """Return (peak resident growth, fp32 weight bytes) of porting ``folder`` in a fresh process."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder)], capture_output=True, text=True, check=True)
    growth, weights = map(int, out.stdout.split())
    return growth, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="gpt2-medium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_random_folder(args.size, Path(tmp))
        growth, weights = measure(Path(tmp))
    print(f"{args.size} dims: weights {weights / 2**20:.0f} MiB fp32, peak resident growth while porting "
          f"{growth / 2**20:.0f} MiB = {growth / weights:.2f}x the weights")


if __name__ == "__main__":
    main()
