"""Train the pocket model: a small GPT-2 on tinyshakespeare, exported in Hugging Face format.

    python -m nanogpt_edu.train_pocket --data ../shared/data/tinyshakespeare.txt --out nanogpt_edu/pocket

The result uses GPT-2's real tokenizer and vocabulary, biases, tied embeddings and tanh GELU, so it loads through
exactly the same porting code as a real GPT-2 (and in ``transformers.GPT2LMHeadModel``). Every random draw comes
from seeded generators, so the same command on the same machine reproduces the same weights.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .model import GPT, GPTConfig
from .porting import save_hf_folder
from .tokenizer import N_VOCAB, get_encoding


@dataclass
class TrainConfig:
    """Everything that decides a training run; its defaults made the committed pocket model."""

    data: str = "../shared/data/tinyshakespeare.txt"
    out: str = "nanogpt_edu/pocket"
    n_layer: int = 6
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    dropout: float = 0.1
    batch_size: int = 8
    steps: int = 1600
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 200
    eval_windows: int = 64  # windows of the val split used for the periodic estimate; the final number uses all
    train_fraction: float = 0.9
    seed: int = 1337
    threads: int = 0  # 0 keeps torch's default


def split_tokens(text: str, train_fraction: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (train, val) GPT-2 token tensors: the text is split by characters, the first part for training."""
    enc = get_encoding()
    cut = int(len(text) * train_fraction)
    # encode_ordinary: "<|endoftext|>" typed inside the text would be plain characters, not the special token
    train = torch.tensor(enc.encode_ordinary(text[:cut]), dtype=torch.long)
    val = torch.tensor(enc.encode_ordinary(text[cut:]), dtype=torch.long)
    return train, val


def get_batch(tokens: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator):
    """Return (x, y) of shape (batch_size, block_size): random windows and the same windows shifted by one."""
    starts = torch.randint(len(tokens) - block_size, (batch_size,), generator=generator)
    x = torch.stack([tokens[s : s + block_size] for s in starts.tolist()])
    y = torch.stack([tokens[s + 1 : s + 1 + block_size] for s in starts.tolist()])
    return x, y


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Return the learning rate at ``step``: linear warmup, then cosine decay from lr down to min_lr."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


@torch.no_grad()
def evaluate(model: GPT, tokens: torch.Tensor, block_size: int, max_windows: int | None = None,
             batch_size: int = 16) -> float:
    """Return the mean next-token cross-entropy (nats) over non-overlapping ``block_size`` windows of ``tokens``."""
    was_training = model.training
    model.eval()
    n_windows = (len(tokens) - 1) // block_size
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    total, count = 0.0, 0
    for first in range(0, n_windows, batch_size):
        rows = range(first, min(first + batch_size, n_windows))
        x = torch.stack([tokens[r * block_size : (r + 1) * block_size] for r in rows])
        y = torch.stack([tokens[r * block_size + 1 : (r + 1) * block_size + 1] for r in rows])
        _, loss = model(x, y)
        total += loss.item() * y.numel()
        count += y.numel()
    model.train(was_training)
    return total / count


def make_optimizer(model: GPT, cfg: TrainConfig) -> torch.optim.AdamW:
    """Return AdamW with weight decay on matrices only (biases and LayerNorm gains are not decayed)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def train(cfg: TrainConfig, quiet: bool = False) -> dict:
    """Train a model as ``cfg`` says, export it to ``cfg.out`` and return a summary (losses, time, sizes)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # weight init draws from the global generator
    batches = torch.Generator().manual_seed(cfg.seed)
    text = Path(cfg.data).read_text(encoding="utf-8")
    train_tokens, val_tokens = split_tokens(text, cfg.train_fraction)
    model_config = GPTConfig(block_size=cfg.block_size, vocab_size=N_VOCAB, n_layer=cfg.n_layer,
                             n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=True, gelu="tanh")
    model = GPT(model_config)
    optimizer = make_optimizer(model, cfg)
    history = []
    start = time.time()
    bar = tqdm(range(cfg.steps), desc="training", disable=quiet)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        x, y = get_batch(train_tokens, cfg.batch_size, cfg.block_size, batches)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        last = step == cfg.steps - 1
        if (step + 1) % cfg.eval_every == 0 or last:
            windows = None if last else cfg.eval_windows
            record = {"step": step + 1, "train_loss": round(evaluate(model, train_tokens, cfg.block_size, windows), 4),
                      "val_loss": round(evaluate(model, val_tokens, cfg.block_size, windows), 4),
                      "minutes": round((time.time() - start) / 60, 2)}
            history.append(record)
            if not quiet:
                tqdm.write(f"step {record['step']}: train {record['train_loss']:.4f}, val {record['val_loss']:.4f}")
    minutes = (time.time() - start) / 60
    model.eval()
    out = save_hf_folder(model, cfg.out, dtype=torch.float16)
    summary = {
        "train_config": asdict(cfg),
        "model_config": asdict(model_config),
        "num_params": model.get_num_params(non_embedding=False),
        "train_tokens": len(train_tokens),
        "val_tokens": len(val_tokens),
        "final_train_loss": history[-1]["train_loss"],
        "final_val_loss": history[-1]["val_loss"],
        "minutes": round(minutes, 1),
        "torch_version": torch.__version__,
        "history": history,
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command line: every ``TrainConfig`` field is a flag (``--n-layer 4``, ``--steps 100`` ...)."""
    parser = argparse.ArgumentParser(prog="python -m nanogpt_edu.train_pocket", description=__doc__.splitlines()[0])
    for name, default in asdict(TrainConfig()).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    args = parser.parse_args(argv)
    cfg = TrainConfig(**vars(args))
    if not Path(cfg.data).is_file():
        parser.error(f"--data: no such file: {cfg.data}")
    summary = train(cfg)
    print(f"val loss {summary['final_val_loss']:.4f} nats/token, {summary['minutes']} min; wrote {cfg.out}")


if __name__ == "__main__":
    main()
