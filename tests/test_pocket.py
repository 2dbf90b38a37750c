"""The pocket model that ships in nanogpt_edu/pocket: loads both ways, matches its model card, is the default."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel

from nanogpt_edu import load_model
from nanogpt_edu.loading import pocket_dir
from nanogpt_edu.porting import load_hf_folder
from nanogpt_edu.sampling import generate
from nanogpt_edu.tokenizer import encode, get_encoding
from nanogpt_edu.train_pocket import TrainConfig, evaluate, train

POCKET = pocket_dir()
CARD = (POCKET / "README.md").read_text()
TRAINING = json.loads((POCKET / "training.json").read_text())


@pytest.fixture(scope="module")
def models():
    hf = GPT2LMHeadModel.from_pretrained(POCKET, dtype=torch.float32).eval()
    return hf, load_model("pocket")


def test_loads_in_hugging_face_and_ours_with_equal_logits(models):
    hf, ours = models
    gen = torch.Generator().manual_seed(0)
    for idx in [torch.tensor([encode("ROMEO:")]), torch.randint(0, 50257, (2, 128), generator=gen)]:
        with torch.no_grad():
            expected = hf(idx).logits[:, -1, :]
            logits, _ = ours(idx)
        assert (logits[:, 0] - expected).abs().max().item() < 1e-4


def test_is_gpt2_architecture_with_a_window_the_seed_run_overflows(models):
    _, ours = models
    c = ours.config
    assert (c.vocab_size, c.bias, c.gelu) == (50257, True, "tanh")
    assert ours.lm_head.weight is ours.transformer.wte.weight
    assert c.block_size < 5 + 200  # the seed's 200 new tokens after a 5-token prompt must crop the context


def test_config_json_is_plain_gpt2(models):
    hf_config = json.loads((POCKET / "config.json").read_text())
    assert hf_config["model_type"] == "gpt2" and hf_config["architectures"] == ["GPT2LMHeadModel"]
    assert hf_config["activation_function"] == "gelu_new" and hf_config["tie_word_embeddings"] is True


def test_size_limit():
    size = (POCKET / "model.safetensors").stat().st_size
    assert size <= 16 * 2**20


def test_model_card_matches_the_files(models):
    _, ours = models
    n_params = ours.get_num_params(non_embedding=False)
    assert f"{n_params:,} parameters" in CARD
    size_mib = (POCKET / "model.safetensors").stat().st_size / 2**20
    assert f"{size_mib:.1f} MiB" in CARD
    c = ours.config
    assert f"{c.n_layer} layers, {c.n_head} heads, {c.n_embd} dimensions, block_size {c.block_size}" in CARD
    assert f"{TRAINING['final_val_loss']:.3f}" in CARD and f"{TRAINING['final_train_loss']:.3f}" in CARD
    assert f"{TRAINING['train_config']['steps']:,} steps" in CARD
    assert "python -m nanogpt_edu.train_pocket" in CARD
    assert TRAINING["num_params"] == n_params


def test_validation_loss_meets_the_bar():
    assert TRAINING["final_val_loss"] <= 5.1


def test_reported_validation_loss_is_reproduced(models):
    # Recompute the card's number from the shipped (fp16) weights over the whole val split (the last 10% of
    # tinyshakespeare, kept in tests/data), in non-overlapping block_size windows.
    text = (Path(__file__).parent / "data" / "tinyshakespeare_val.txt").read_text(encoding="utf-8")
    val = torch.tensor(get_encoding().encode_ordinary(text), dtype=torch.long)
    assert len(val) == TRAINING["val_tokens"]
    loss = evaluate(models[1], val, TRAINING["model_config"]["block_size"])
    assert abs(loss - TRAINING["final_val_loss"]) < 0.01  # fp16 storage moves it a little


def test_greedy_generation_equals_hugging_face_generate(models):
    hf, ours = models
    for prompt in ["ROMEO:", "Hello, my name is", "First Citizen:\nBefore we proceed"]:
        x = torch.tensor([encode(prompt)])
        theirs = hf.generate(x, max_new_tokens=40, do_sample=False, pad_token_id=50256, attention_mask=torch.ones_like(x))
        assert torch.equal(generate(ours, x, 40, temperature=0), theirs)


def test_default_everywhere():
    from nanogpt_edu.config import SampleConfig

    assert SampleConfig().init_from == "pocket"


def test_seeded_sampling_is_identical_across_processes():
    argv = [sys.executable, "-m", "nanogpt_edu.sample", "--start=ROMEO:", "--num_samples=2", "--max_new_tokens=40"]
    first = subprocess.run(argv, capture_output=True, timeout=300)
    second = subprocess.run(argv, capture_output=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert first.stdout.count(b"---------------\n") == 2
    other = subprocess.run(argv + ["--seed=1"], capture_output=True, timeout=300)
    assert other.stdout != first.stdout


def test_training_smoke(tmp_path):
    text = (Path(__file__).parent / "data" / "shakespeare_slice.txt").read_text()
    cfg = TrainConfig(data=str(Path(__file__).parent / "data" / "shakespeare_slice.txt"), out=str(tmp_path / "tiny"),
                      n_layer=1, n_head=2, n_embd=16, block_size=32, batch_size=4, steps=40, lr=1e-2, min_lr=1e-3,
                      warmup=5, eval_every=20, eval_windows=8, dropout=0.0)
    summary = train(cfg, quiet=True)
    history = summary["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.5
    assert history[-1]["train_loss"] < 10.0  # log(50257) = 10.8 is where a fresh model starts
    model = load_hf_folder(tmp_path / "tiny")
    assert model.config.n_layer == 1
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "tiny", dtype=torch.float32)
    assert hf.config.n_embd == 16
    assert summary["train_tokens"] > summary["val_tokens"] > 0 and len(text) > 0
