import pickle

import pytest
import torch

from nanogpt_edu.loading import LoadError, load, load_codec, load_model
from nanogpt_edu.model import GPT, GPTConfig
from nanogpt_edu.sample import main


def write_nanogpt_run(out_dir, chars="\n !abcdefghijklmnopqrstuvwxyz", compiled=True):
    """Write ckpt.pt and meta.pkl as nanoGPT's train.py and prepare.py would (char-level Shakespeare style)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model_args = dict(n_layer=2, n_head=2, n_embd=16, block_size=32, bias=False, vocab_size=len(chars), dropout=0.0)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**model_args, gelu="exact"))
    prefix = "_orig_mod." if compiled else ""
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({"model": state, "model_args": model_args, "iter_num": 5000, "best_val_loss": torch.tensor(1.47),
                "config": {"dataset": "shakespeare_char"}}, out_dir / "ckpt.pt")
    stoi = {c: i for i, c in enumerate(chars)}
    with open(out_dir / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": {i: c for c, i in stoi.items()}, "stoi": stoi}, f)
    return model


@pytest.mark.parametrize("compiled", [True, False])
def test_resume_loads_nanogpt_checkpoint(tmp_path, compiled):
    original = write_nanogpt_run(tmp_path / "out", compiled=compiled)
    model = load_model("resume", out_dir=tmp_path / "out")
    assert model.config.gelu == "exact" and model.config.bias is False
    for key, tensor in original.state_dict().items():
        assert torch.equal(model.state_dict()[key], tensor)
    assert not model.training


def test_resume_uses_char_vocabulary(tmp_path):
    write_nanogpt_run(tmp_path / "out")
    codec = load_codec("resume", out_dir=tmp_path / "out")
    assert codec.eot is None
    ids = codec.encode("to be!")
    assert codec.decode(ids) == "to be!"
    with pytest.raises(LoadError, match="outside this model's vocabulary: 'Q'"):
        codec.encode("Q")


def test_checkpoint_folder_as_init_from(tmp_path):
    write_nanogpt_run(tmp_path / "run")
    assert load_model(str(tmp_path / "run")).config.n_layer == 2


def test_meta_pickle_with_code_is_refused(tmp_path):
    write_nanogpt_run(tmp_path / "out")

    class Sneaky:
        def __reduce__(self):
            return (print, ("this must never run",))

    with open(tmp_path / "out" / "meta.pkl", "wb") as f:
        pickle.dump({"stoi": Sneaky(), "itos": {}}, f)
    with pytest.raises(LoadError, match="only plain data is accepted"):
        load_codec("resume", out_dir=tmp_path / "out")


def test_cli_samples_from_a_nanogpt_run(tmp_path, capsys):
    write_nanogpt_run(tmp_path / "out")
    code = main(["--init_from=resume", f"--out_dir={tmp_path / 'out'}", "--start=to be", "--num_samples=2",
                 "--max_new_tokens=20", "--device=cpu"])
    out = capsys.readouterr().out
    assert code == 0
    samples = out.split("---------------\n")
    assert len(samples) == 3 and samples[-1] == ""
    assert all(s.split("Overriding")[-1].count("to be") >= 1 for s in samples[:2])


def test_cli_compile_gives_the_same_samples_and_a_cpu_note(tmp_path, capsys):
    # nanoGPT's compile flag: torch.compile must trace the model (with its KV cache) and change no token
    write_nanogpt_run(tmp_path / "out")
    args = ["--init_from=resume", f"--out_dir={tmp_path / 'out'}", "--start=to be", "--max_new_tokens=12",
            "--device=cpu", "--num_samples=1"]
    assert main(args) == 0
    plain = capsys.readouterr()
    assert main(args + ["--compile=True"]) == 0
    compiled = capsys.readouterr()
    def samples(out: str) -> list[str]:
        return [line for line in out.splitlines() if not line.startswith("Overriding:")]

    assert samples(compiled.out) == samples(plain.out) and "to be" in plain.out
    assert "note: compile=True on a CPU" in compiled.err and "note:" not in plain.err


def test_gpt2_bpe_codec_by_default():
    codec = load_codec("pocket")
    assert codec.encode("Hello, my name is") == [15496, 11, 616, 1438, 318]
    assert codec.eot == 50256


def test_a_bpe_checkpoint_padded_to_50304_tokens_decodes_the_padding_as_replacement(tmp_path):
    # nanoGPT trains GPT-2-vocabulary models with vocab_size=50304 and writes no meta.pkl
    out = tmp_path / "out"
    out.mkdir()
    args = dict(n_layer=1, n_head=2, n_embd=8, block_size=16, bias=True, vocab_size=50304, dropout=0.0)
    torch.save({"model": GPT(GPTConfig(**args)).state_dict(), "model_args": args}, out / "ckpt.pt")
    model, codec = load("resume", out)
    assert model.config.vocab_size == 50304 and codec.eot == 50256
    assert codec.decode(codec.encode("Hello") + [50300]) == "Hello\ufffd"
    assert codec.decode_bytes(50300) == "\ufffd".encode()


def test_a_char_checkpoint_without_its_vocabulary_is_refused_not_read_as_bpe(tmp_path):
    write_nanogpt_run(tmp_path / "out")
    (tmp_path / "out" / "meta.pkl").unlink()
    with pytest.raises(LoadError, match=r"the model has 29 tokens, fewer than GPT-2's 50257, so it needs its own "
                                        r"vocabulary, and there is no meta\.pkl beside it"):
        load("resume", tmp_path / "out")


def test_the_causal_mask_buffer_of_old_nanogpt_checkpoints_is_ignored(tmp_path):
    # nanoGPT on torch < 2.0 kept the mask as a buffer named like a bias: ".attn.bias"
    original = write_nanogpt_run(tmp_path / "out")
    checkpoint = torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)
    for i in range(2):
        checkpoint["model"][f"_orig_mod.transformer.h.{i}.attn.bias"] = torch.ones(1, 1, 32, 32).tril()
    torch.save(checkpoint, tmp_path / "out" / "ckpt.pt")
    model = load_model("resume", out_dir=tmp_path / "out")
    assert torch.equal(model.transformer.wte.weight, original.transformer.wte.weight)


def test_every_loading_error_is_the_one_documented_error():
    from nanogpt_edu import NanogptEduError
    from nanogpt_edu.config import ConfigError
    from nanogpt_edu.devices import DeviceError
    from nanogpt_edu.porting import ModelNotAvailableError, PortingError

    for error in (ConfigError, DeviceError, LoadError, PortingError, ModelNotAvailableError):
        assert issubclass(error, NanogptEduError) and issubclass(error, ValueError)
    assert str(LoadError("a\nb")) == "a\\nb"  # one line, whatever a file name holds
