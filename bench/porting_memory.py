"""Peak memory of porting: how much memory loading a Hugging Face folder into our GPT needs.

    python bench/porting_memory.py [--size gpt2-medium]

Writes a folder of random weights with the chosen GPT-2 size's dims (as save_pretrained would), then, in a fresh
Python process, loads it with ``from_pretrained(folder)`` and reports two growths over the process's memory just
before loading, each as a ratio to the fp32 weight bytes:

* peak **anonymous** memory (``RssAnon`` in /proc/self/status, sampled every millisecond by a thread): memory the
  machine must really hold, the number that decides whether a model fits;
* peak **resident** memory (``VmHWM``), which also counts the pages of the memory-mapped weights file that were
  read; the operating system drops those clean, file-backed pages whenever memory is short.

nanoGPT's own path builds the Hugging Face model and its own model side by side: about 2x the weights.
Linux only (it reads /proc). Never run as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# `make bench` writes here (untracked); `make bench-update` passes --out bench/results, the committed copy
RESULTS = Path(__file__).resolve().parent.parent / "build" / "bench"

CHILD = """
import json
import sys
import threading
import time

import torch
from nanogpt_edu.porting import from_pretrained

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024

peak_anon, done = 0, threading.Event()

def sample():
    global peak_anon
    while not done.is_set():
        peak_anon = max(peak_anon, status("RssAnon:"))
        time.sleep(0.001)

anon_before, rss_before = status("RssAnon:"), status("VmRSS:")
sampler = threading.Thread(target=sample)
sampler.start()
model = from_pretrained(sys.argv[1])
done.set()
sampler.join()
peak_anon = max(peak_anon, status("RssAnon:"))
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"anon_growth": peak_anon - anon_before, "rss_growth": status("VmHWM:") - rss_before,
                  "weights": weights}))
"""


def write_random_folder(size: str, folder: Path) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from nanogpt_edu.porting import GPT2_DIMS

    torch.manual_seed(0)
    dims = GPT2_DIMS[size]
    GPT2LMHeadModel(GPT2Config(n_layer=dims["n_layer"], n_head=dims["n_head"], n_embd=dims["n_embd"])).save_pretrained(folder)


def measure(folder: Path) -> dict:
    """Return the peak anonymous and resident growth and the fp32 weight bytes of porting ``folder``."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="gpt2-medium")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results (default build/bench)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_random_folder(args.size, Path(tmp))
        m = measure(Path(tmp))
    mib, weights = 2**20, m["weights"]
    print(f"{args.size} dims: weights {weights / mib:,.0f} MiB fp32; while porting, peak anonymous memory grew "
          f"{m['anon_growth'] / mib:,.0f} MiB = {m['anon_growth'] / weights:.2f}x the weights, peak resident "
          f"memory {m['rss_growth'] / mib:,.0f} MiB = {m['rss_growth'] / weights:.2f}x (file pages included)")
    results = args.out
    results.mkdir(parents=True, exist_ok=True)
    (results / "porting_memory.json").write_text(json.dumps(
        {"size": args.size, **m, "anon_ratio": m["anon_growth"] / weights, "rss_ratio": m["rss_growth"] / weights},
        indent=2) + "\n")


if __name__ == "__main__":
    main()
