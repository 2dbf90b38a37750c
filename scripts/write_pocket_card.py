"""Write nanogpt_edu/pocket/README.md (the model card) from training.json and fresh samples.

    .venv/bin/python scripts/write_pocket_card.py

Run after training the pocket model; every number in the card comes from the files, so the card cannot drift
(tests/test_pocket.py checks it too).
"""

import io
import json
from pathlib import Path

from nanogpt_edu.config import SampleConfig, apply_overrides
from nanogpt_edu.loading import load_model, pocket_dir
from nanogpt_edu.sample import run

SAMPLE_ARGS = ["--start=ROMEO:", "--num_samples=3", "--max_new_tokens=120", "--device=cpu"]


def samples() -> str:
    out = io.StringIO()
    run(apply_overrides(SampleConfig(), SAMPLE_ARGS, log=lambda line: None), out=out, err=io.StringIO())
    return out.getvalue()


def main() -> None:
    folder = pocket_dir()
    info = json.loads((folder / "training.json").read_text())
    tc, mc = info["train_config"], info["model_config"]
    model = load_model("pocket")
    size_mib = (folder / "model.safetensors").stat().st_size / 2**20
    tokens_seen = tc["steps"] * tc["batch_size"] * tc["block_size"]
    history = "\n".join(f"| {h['step']:,} | {h['train_loss']:.3f} | {h['val_loss']:.3f} | {h['minutes']:.1f} |"
                        for h in info["history"])
    command = ("python -m nanogpt_edu.train_pocket --data ../shared/data/tinyshakespeare.txt "
               "--out nanogpt_edu/pocket")
    card = f"""# The pocket model

A small GPT-2 trained by nanogpt-edu on Shakespeare, so that every notebook and the command line work offline on
a CPU. It is a real GPT-2 in everything but size: GPT-2's byte-pair encoding and 50,257-token vocabulary, learned
position embeddings, pre-norm blocks with biases, tanh GELU and a head tied to the token embeddings. It ships in
Hugging Face's format (`config.json` + `model.safetensors`), so it loads unchanged in
`transformers.GPT2LMHeadModel` and goes through the same porting code as OpenAI's `gpt2-xl`.

| | |
|---|---|
| architecture | GPT-2: {mc['n_layer']} layers, {mc['n_head']} heads, {mc['n_embd']} dimensions, block_size {mc['block_size']} |
| size | {model.get_num_params(non_embedding=False):,} parameters ({mc['vocab_size']:,} × {mc['n_embd']} of them are the tied token embeddings) |
| file | `model.safetensors`, float16, {size_mib:.1f} MiB |
| tokenizer | GPT-2 BPE (tiktoken `gpt2`), shipped in `nanogpt_edu/data/gpt2/` |
| data | tinyshakespeare (1,115,394 characters of Shakespeare's plays), split by characters: the first {tc['train_fraction']:.0%} for training ({info['train_tokens']:,} tokens), the rest for validation ({info['val_tokens']:,} tokens) |
| validation loss | **{info['final_val_loss']:.3f}** nats/token (mean next-token cross-entropy over the whole validation split in non-overlapping windows of {mc['block_size']} tokens) |
| training loss | {info['final_train_loss']:.3f} nats/token (same measure on the training split) |

`block_size` is {mc['block_size']} on purpose: sample.py's 200 new tokens after a 5-token prompt overflow it, so the
sampling loop visibly crops its context (notebook 05).

For scale: a model that knew nothing would score ln(50257) = 10.8; nanoGPT's character-level Shakespeare model
reaches 1.47 nats per character, about 4.9 nats per GPT-2 token on this text.

## Training

{tc['steps']:,} steps of batch {tc['batch_size']} × {tc['block_size']} tokens ({tokens_seen:,} tokens, about
{tokens_seen / info['train_tokens']:.1f} passes over the training split), random windows drawn by a seeded generator.
AdamW (β = 0.9, 0.95; weight decay {tc['weight_decay']} on matrices only), learning rate warmed up linearly for
{tc['warmup']} steps to {tc['lr']:g}, then cosine decay to {tc['min_lr']:g}; dropout {tc['dropout']}; gradients
clipped at norm {tc['grad_clip']}; seed {tc['seed']}. It took {info['minutes']:.1f} minutes on a 2-core CPU
(torch {info['torch_version']}, fp32), with the periodic evaluations.

| step | train loss | val loss | minutes |
|---:|---:|---:|---:|
{history}

(Rows before the last use the first {tc['eval_windows']} windows of each split; the last row uses all of them.)

Reproduce it from the repository root (every random draw is seeded; on the same kind of machine and torch
version it should land on the same losses, up to floating-point differences between CPUs):

```bash
{command}
```

## Samples

`python -m nanogpt_edu.sample {' '.join(SAMPLE_ARGS[:-1])}` (temperature 0.8, top-k 200, seed 1337):

```
{samples().rstrip()}
```

It has learned the look of a play: speaker names in capitals, line breaks, verse-like rhythm, old forms of address.
It has not learned much sense; a model 200 times larger trained on 10,000 times more text does much better.

## Licence

The weights are released under the MIT licence, like the rest of nanogpt-edu. The training text is Shakespeare
(public domain), as collected in Andrej Karpathy's char-rnn repository (MIT).
"""
    (folder / "README.md").write_text(card)
    print(f"wrote {folder / 'README.md'}")


if __name__ == "__main__":
    main()
