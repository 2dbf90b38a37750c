"""A table of bad inputs, each with the error a user should see: one line, naming what they control."""

import math
import re
import subprocess
import sys

import pytest
import torch

from nanogpt_edu.config import ConfigError, SampleConfig, apply_overrides, resolve_start
from nanogpt_edu.devices import DeviceError, pick_device
from nanogpt_edu.model import GPT, GPTConfig
from nanogpt_edu.sample import main
from nanogpt_edu.sampling import generate, min_p_mask, sample_next_token, top_k_mask, top_p_mask

MODEL = GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=1, n_embd=8)).eval()
IDX = torch.zeros(1, 2, dtype=torch.long)
LOGITS = torch.zeros(2, 11)

# (name, call, exception type, message fragment)
API_CASES = [
    ("negative temperature", lambda: generate(MODEL, IDX, 3, temperature=-0.5), "temperature must be a finite"),
    ("infinite temperature", lambda: generate(MODEL, IDX, 3, temperature=math.inf), "temperature must be a finite"),
    ("NaN temperature", lambda: generate(MODEL, IDX, 3, temperature=math.nan), "temperature must be a finite"),
    ("top_k zero", lambda: generate(MODEL, IDX, 3, top_k=0), "top_k must be a whole number of at least 1"),
    ("top_k float", lambda: generate(MODEL, IDX, 3, top_k=2.5), "top_k must be a whole number"),
    ("top_p zero", lambda: generate(MODEL, IDX, 3, top_p=0.0), r"top_p must be a number in \(0, 1\]"),
    ("top_p above one", lambda: generate(MODEL, IDX, 3, top_p=1.5), r"top_p must be a number in \(0, 1\]"),
    ("min_p negative", lambda: generate(MODEL, IDX, 3, min_p=-0.1), r"min_p must be a number in \[0, 1\]"),
    ("min_p above one", lambda: generate(MODEL, IDX, 3, min_p=2), r"min_p must be a number in \[0, 1\]"),
    ("negative max_new_tokens", lambda: generate(MODEL, IDX, -1), "max_new_tokens must be a whole number >= 0"),
    ("idx 1-D", lambda: generate(MODEL, torch.zeros(3, dtype=torch.long), 2), "idx must be a 2-D integer tensor"),
    ("idx float", lambda: generate(MODEL, torch.zeros(1, 3), 2), "idx must be a 2-D integer tensor"),
    ("idx a list", lambda: generate(MODEL, [[1, 2]], 2), "idx must be a 2-D integer tensor"),
    ("NaN logits", lambda: sample_next_token(torch.full((1, 11), math.nan)), "the logits contain NaN"),
    ("logits 3-D", lambda: sample_next_token(torch.zeros(1, 1, 11)), r"logits must have shape \(batch, vocab_size\)"),
    ("top_k_mask zero", lambda: top_k_mask(LOGITS, 0), "top_k must be a whole number"),
    ("top_p_mask zero", lambda: top_p_mask(LOGITS, 0), "top_p must be a number"),
    ("min_p_mask 1.5", lambda: min_p_mask(LOGITS, 1.5), "min_p must be a number"),
    ("sequence over block_size", lambda: MODEL(torch.zeros(1, 9, dtype=torch.long)), "9 tokens: block_size is 8"),
    ("cuda without a GPU", lambda: pick_device("cuda"), "sees no CUDA GPU"),
    ("unknown device", lambda: pick_device("tpu"), "unknown device 'tpu'"),
]


@pytest.mark.parametrize("name, call, message", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input(name, call, message):
    if name == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match=message) as err:
        call()
    assert "\n" not in str(err.value)


def write(tmp_path, name, text, binary=False):
    path = tmp_path / name
    path.write_bytes(text) if binary else path.write_text(text)
    return str(path)


# (name, argv builder, message fragment); every one must exit 2 with a single "error: ..." line on stderr
CLI_CASES = [
    ("unknown key", lambda t: ["--temprature=0.5"], "unknown setting 'temprature'; valid settings: init_from"),
    ("wrong type", lambda t: ["--num_samples=three"], "num_samples must be int, got 'three'"),
    ("float for int", lambda t: ["--max_new_tokens=2.5"], "max_new_tokens must be int, got 2.5"),
    ("bool for int", lambda t: ["--top_k=True"], "top_k must be int or None, got True"),
    ("no value", lambda t: ["--temperature"], "settings are written --key=value"),
    ("single dash", lambda t: ["-temperature=1"], "settings are written --key=value"),
    ("negative temperature", lambda t: ["--temperature=-1"], "temperature must be a finite number >= 0"),
    ("top_p out of range", lambda t: ["--top_p=0"], r"top_p must be a number in \(0, 1\]"),
    ("zero samples", lambda t: ["--num_samples=0"], "num_samples must be at least 1"),
    ("bad dtype", lambda t: ["--dtype=float8"], "dtype must be one of float32, bfloat16, float16"),
    ("missing config file", lambda t: [str(t / "nope.py")], "config file not found"),
    ("config with import", lambda t: [write(t, "c1.py", "import os\n")], "line 1: only 'name = value' settings"),
    ("config with call", lambda t: [write(t, "c2.py", "seed = int('3')\n")], "line 1: the value of seed must be a literal"),
    ("config unknown key", lambda t: [write(t, "c3.py", "\nfoo = 1\n")], "line 2: unknown setting 'foo'"),
    ("config wrong type", lambda t: [write(t, "c4.py", "top_k = 'many'\n")], "line 1: top_k must be int or None"),
    ("config syntax error", lambda t: [write(t, "c5.py", "seed = = 3\n")], "line 1: not valid Python syntax"),
    ("config not UTF-8", lambda t: [write(t, "c6.py", b"seed = '\xff'\n", binary=True)], "is not UTF-8 text"),
    ("config tuple target", lambda t: [write(t, "c7.py", "a, b = 1, 2\n")], "line 1: only 'name = value' settings"),
    ("prompt file missing", lambda t: [f"--start=FILE:{t / 'nope.txt'}"], "prompt file not found"),
    ("prompt file not UTF-8", lambda t: ["--start=FILE:" + write(t, "p.txt", b"\xff\xfe", binary=True)],
     "is not UTF-8 text"),
    ("unknown model", lambda t: ["--init_from=gpt3"], "init_from='gpt3': not 'pocket', 'resume'"),
    ("resume without checkpoint", lambda t: ["--init_from=resume", f"--out_dir={t / 'empty'}"],
     "looks for .*ckpt.pt, which does not exist"),
    ("gpt2 offline", lambda t: ["--init_from=gpt2-medium"], "gpt2-medium is not in the Hugging Face cache"),
    ("cuda without a GPU", lambda t: ["--device=cuda"], "sees no CUDA GPU"),
]


@pytest.mark.parametrize("name, argv, message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_argument(name, argv, message, tmp_path, capsys):
    if name == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = main(["--max_new_tokens=1", "--num_samples=1"] + argv(tmp_path))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ")
    assert re.search(message, err[-1]), err[-1]
    assert "Traceback" not in "\n".join(err)


def test_enough_distinct_bad_inputs():
    assert len(API_CASES) + len(CLI_CASES) >= 25


def test_real_process_exits_2_without_traceback():
    result = subprocess.run([sys.executable, "-m", "nanogpt_edu.sample", "--top_k=-3"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: top_k must be a whole number of at least 1 (or None for no limit), got -3"]
