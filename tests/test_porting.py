import hashlib
import http.server
import json
import threading
import time

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from nanogpt_edu.model import GPT, GPTConfig
from nanogpt_edu.porting import (
    GPT2_DIMS, TRANSPOSED, ModelNotAvailableError, PortingError, from_pretrained, gpt2_config,
    load_hf_folder, port_hf_state_dict, save_hf_folder,
)
from helpers import run_python

TINY_HF = dict(n_layer=2, n_head=4, n_embd=64, n_positions=32, vocab_size=50257)


def random_hf_folder(tmp_path, seed=0, **dims):
    """Save a randomly initialised GPT2LMHeadModel with save_pretrained; return (model, folder)."""
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(**dims)).eval()
    # GPT-2's fresh init has zero biases and unit LayerNorm gains: randomise them too, so that a
    # wrongly copied bias or gain cannot hide
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() == 1:
                p.normal_(mean=1.0 if name.endswith("weight") else 0.0, std=0.1)
    folder = tmp_path / f"hf-{seed}"
    hf.save_pretrained(folder)
    return hf, folder


def assert_parity(hf, ours, block_size, vocab_size=50257):
    gen = torch.Generator().manual_seed(123)
    prompts = [torch.randint(0, vocab_size, (1, n), generator=gen) for n in (1, 5, 17)]
    prompts.append(torch.randint(0, vocab_size, (2, block_size), generator=gen))  # a full block, batch 2
    with torch.no_grad():
        for idx in prompts:
            expected = hf(idx).logits[:, -1, :]
            logits, _ = ours(idx)
            assert logits.shape == (idx.shape[0], 1, vocab_size)
            assert (logits[:, 0, :] - expected).abs().max().item() < 1e-4


def test_parity_with_hugging_face_tiny(tmp_path):
    hf, folder = random_hf_folder(tmp_path, **TINY_HF)
    ours = from_pretrained(folder)
    assert not ours.training
    assert_parity(hf, ours, block_size=32)


@pytest.mark.slow
def test_parity_with_hugging_face_gpt2_124m_dims(tmp_path):
    hf, folder = random_hf_folder(tmp_path, seed=1, n_layer=12, n_head=12, n_embd=768, n_positions=1024)
    ours = from_pretrained(folder)
    assert ours.get_num_params(non_embedding=False) == 124_439_808
    assert_parity(hf, ours, block_size=1024)


@pytest.mark.parametrize("name, count", [
    ("gpt2", 124_439_808), ("gpt2-medium", 354_823_168), ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200),
])
def test_gpt2_parameter_counts_without_allocating(name, count):
    with torch.device("meta"):
        model = GPT(gpt2_config(name))
    assert model.get_num_params(non_embedding=False) == count
    assert model.transformer.wte.weight.is_meta


def test_dims_table():
    assert GPT2_DIMS["gpt2-xl"] == dict(n_layer=48, n_head=25, n_embd=1600)
    config = gpt2_config("gpt2-medium")
    assert (config.vocab_size, config.block_size, config.bias) == (50257, 1024, True)


def test_exactly_four_weights_per_block_are_transposed(tmp_path):
    hf, _ = random_hf_folder(tmp_path, **TINY_HF)
    hf_sd = hf.state_dict()
    ported = port_hf_state_dict(hf_sd, GPTConfig(block_size=32, n_layer=2, n_head=4, n_embd=64))
    transposed = [k for k in ported if not torch.equal(ported[k], hf_sd[k])]
    assert len(transposed) == 4 * 2
    assert all(k.endswith(TRANSPOSED) for k in transposed)
    for k in transposed:
        assert torch.equal(ported[k], hf_sd[k].t())


def test_bare_keys_and_mask_buffers_as_in_openai_upload(tmp_path):
    # OpenAI's own upload is a GPT2Model: no "transformer." prefix, no lm_head, and the causal mask as a buffer
    hf, _ = random_hf_folder(tmp_path, **TINY_HF)
    bare = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    for i in range(2):
        bare[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
        bare[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    config = GPTConfig(block_size=32, n_layer=2, n_head=4, n_embd=64)
    ported = port_hf_state_dict(bare, config)
    model = GPT(config).eval()
    model.load_state_dict(ported)
    assert torch.equal(model.lm_head.weight, hf.lm_head.weight)


def tiny_state_dict(tmp_path):
    hf, _ = random_hf_folder(tmp_path, **TINY_HF)
    return dict(hf.state_dict()), GPTConfig(block_size=32, n_layer=2, n_head=4, n_embd=64)


def test_missing_key_is_named(tmp_path):
    sd, config = tiny_state_dict(tmp_path)
    del sd["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(PortingError, match=r"missing key 'transformer\.h\.1\.mlp\.c_fc\.bias'"):
        port_hf_state_dict(sd, config)


def test_wrong_shape_names_key_and_both_shapes(tmp_path):
    sd, config = tiny_state_dict(tmp_path)
    sd["transformer.h.0.attn.c_attn.weight"] = torch.zeros(192, 64)  # already transposed: wrong for Conv1D
    with pytest.raises(PortingError) as err:
        port_hf_state_dict(sd, config)
    message = str(err.value)
    assert "'transformer.h.0.attn.c_attn.weight'" in message
    assert "(192, 64)" in message and "(64, 192)" in message


def test_wrong_shape_of_plain_tensor(tmp_path):
    sd, config = tiny_state_dict(tmp_path)
    sd["transformer.wpe.weight"] = torch.zeros(16, 64)
    with pytest.raises(PortingError, match=r"'transformer\.wpe\.weight': Hugging Face has \(16, 64\), our GPT expects \(32, 64\)"):
        port_hf_state_dict(sd, config)


def test_unexpected_key_is_named(tmp_path):
    sd, config = tiny_state_dict(tmp_path)
    sd["transformer.h.2.ln_1.weight"] = torch.ones(64)
    with pytest.raises(PortingError, match=r"unexpected key 'transformer\.h\.2\.ln_1\.weight'"):
        port_hf_state_dict(sd, config)


def test_export_round_trip_loads_in_hugging_face(tmp_path):
    torch.manual_seed(3)
    ours = GPT(GPTConfig(block_size=32, n_layer=2, n_head=4, n_embd=64)).eval()
    folder = save_hf_folder(ours, tmp_path / "exported")
    hf = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    assert_parity(hf, ours, block_size=32)
    again = load_hf_folder(folder)
    for key, tensor in ours.state_dict().items():
        assert torch.equal(again.state_dict()[key], tensor), key
    assert again.lm_head.weight is again.transformer.wte.weight


def test_exact_gelu_round_trips_through_config(tmp_path):
    ours = GPT(GPTConfig(block_size=8, n_layer=1, n_head=2, n_embd=16, gelu="exact"))
    folder = save_hf_folder(ours, tmp_path / "exact")
    assert json.loads((folder / "config.json").read_text())["activation_function"] == "gelu"
    assert load_hf_folder(folder).config.gelu == "exact"


def test_folder_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(PortingError, match="has no model.safetensors"):
        from_pretrained(tmp_path)


def test_unknown_name_is_a_clear_error():
    with pytest.raises(PortingError, match="neither a GPT-2 size"):
        from_pretrained("gpt3")


def test_gpt2_offline_and_not_cached_fails_fast_with_instructions():
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError) as err:
        from_pretrained("gpt2-xl")
    assert time.monotonic() - start < 15  # no minute of retries (sockets are blocked here, so this is immediate)
    message = str(err.value)
    assert "gpt2-xl is not in the Hugging Face cache" in message
    assert "hf download openai-community/gpt2-xl" in message
    assert "\n" not in message


def test_gpt2_from_the_hugging_face_cache(tmp_path):
    # Lay out a Hugging Face cache by hand, as a download would, and check from_pretrained("gpt2") finds it offline.
    hf, folder = random_hf_folder(tmp_path, **TINY_HF)
    cache = tmp_path / "hub"
    snapshot = cache / "models--openai-community--gpt2" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((folder / name).read_bytes())
    (cache / "models--openai-community--gpt2" / "refs").mkdir()
    (cache / "models--openai-community--gpt2" / "refs" / "main").write_text("0" * 40)
    code = (
        "import torch\n"
        "from nanogpt_edu.porting import from_pretrained\n"
        "m = from_pretrained('gpt2')\n"
        "print(m.config.n_layer, m.config.n_embd)\n"
    )
    result = run_python(code, env={"HF_HUB_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "64"]


def test_ported_conv1d_weights_are_stored_in_linear_order(tmp_path):
    # porting copies each Conv1D weight into nn.Linear's (out, in) row order, which the decode kernel reads
    hf, _ = random_hf_folder(tmp_path, **TINY_HF)
    sd = dict(hf.state_dict())
    ported = port_hf_state_dict(sd, GPTConfig(block_size=32, n_layer=2, n_head=4, n_embd=64))
    key = "transformer.h.0.mlp.c_fc.weight"
    assert ported[key].is_contiguous() and ported[key].shape == (256, 64)
    assert torch.equal(ported[key], sd[key].t())
    assert ported[key].data_ptr() != sd[key].data_ptr()  # a copy: the Hugging Face tensor is left as it was


def test_loading_a_folder_equals_porting_its_state_dict(tmp_path):
    hf, folder = random_hf_folder(tmp_path, **TINY_HF)
    config = GPTConfig(block_size=32, n_layer=2, n_head=4, n_embd=64)
    from_file = load_hf_folder(folder).state_dict()
    from_dict = port_hf_state_dict(dict(hf.state_dict()), config)
    assert from_file.keys() == from_dict.keys()
    for key in from_dict:
        assert from_file[key].is_contiguous() and torch.equal(from_file[key], from_dict[key]), key


def test_a_float16_folder_loads_as_float32_or_as_stored(tmp_path):
    torch.manual_seed(4)
    ours = GPT(GPTConfig(block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()
    folder = save_hf_folder(ours, tmp_path / "half", dtype=torch.float16)
    as_fp32, as_fp16 = load_hf_folder(folder), load_hf_folder(folder, dtype=torch.float16)
    for key, tensor in ours.state_dict().items():
        assert as_fp32.state_dict()[key].dtype == torch.float32
        assert torch.equal(as_fp32.state_dict()[key], tensor.half().float()), key
        assert torch.equal(as_fp16.state_dict()[key], tensor.half()), key
    assert as_fp32.lm_head.weight is as_fp32.transformer.wte.weight


def test_loading_copies_the_biggest_tensors_first_one_at_a_time(tmp_path, monkeypatch):
    # the order that keeps peak memory near the weights' size: a big tensor is read while little is filled yet
    from safetensors import safe_open

    hf, folder = random_hf_folder(tmp_path, **TINY_HF)
    read = []
    original = safe_open.get_tensor

    class Recording:
        def __init__(self, *args, **kwargs):
            self.file = safe_open(*args, **kwargs)

        def __enter__(self):
            self.file.__enter__()
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

        def keys(self):
            return self.file.keys()

        def get_slice(self, key):
            return self.file.get_slice(key)

        def get_tensor(self, key):
            read.append(key)
            return self.file.get_tensor(key)

    import nanogpt_edu.porting as porting

    monkeypatch.setattr(porting, "safe_open", Recording)
    load_hf_folder(folder)
    sizes = [hf.state_dict()[key].numel() for key in read]
    assert read[0] == "transformer.wte.weight" and sizes == sorted(sizes, reverse=True)
    assert len(read) == len(set(read))  # each tensor read once
    assert original is safe_open.get_tensor


def write_safetensors_bytes(path, header, data=b""):
    """Write a safetensors file by hand: 8-byte header length, the header, then the data bytes."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)


MALFORMED_SAFETENSORS = {
    "empty file": lambda p: p.write_bytes(b""),
    "header length only": lambda p: p.write_bytes((100).to_bytes(8, "little")),
    "header longer than the file": lambda p: p.write_bytes((10**6).to_bytes(8, "little") + b"{}"),
    "header length near 2**64": lambda p: p.write_bytes((2**64 - 9).to_bytes(8, "little") + b"{}"),
    "header not JSON": lambda p: write_safetensors_bytes(p, b"not json at all!"),
    "header a JSON list": lambda p: write_safetensors_bytes(p, [1, 2, 3]),
    "entry without dtype": lambda p: write_safetensors_bytes(
        p, {"transformer.wte.weight": {"shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
    "unknown dtype": lambda p: write_safetensors_bytes(
        p, {"transformer.wte.weight": {"dtype": "X99", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
    "reversed offsets": lambda p: write_safetensors_bytes(
        p, {"transformer.wte.weight": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8),
    "negative offset": lambda p: write_safetensors_bytes(
        p, {"transformer.wte.weight": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, b"\0" * 8),
    "offsets past the data": lambda p: write_safetensors_bytes(
        p, {"transformer.wte.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4),
    "overlapping tensors": lambda p: write_safetensors_bytes(
        p, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
    "shape bigger than its bytes": lambda p: write_safetensors_bytes(
        p, {"transformer.wte.weight": {"dtype": "F32", "shape": [1 << 40, 1 << 20], "data_offsets": [0, 8]}},
        b"\0" * 8),
    "a terabyte claimed": lambda p: write_safetensors_bytes(
        p, {"transformer.wte.weight": {"dtype": "F32", "shape": [1 << 38], "data_offsets": [0, 1 << 40]}}),
    "shape of the wrong type": lambda p: write_safetensors_bytes(
        p, {"transformer.wte.weight": {"dtype": "F32", "shape": "two", "data_offsets": [0, 8]}}, b"\0" * 8),
}


@pytest.mark.parametrize("case", MALFORMED_SAFETENSORS)
def test_malformed_safetensors_files_are_one_line_errors(tmp_path, case):
    hf, folder = random_hf_folder(tmp_path, **TINY_HF)
    MALFORMED_SAFETENSORS[case](folder / "model.safetensors")
    with pytest.raises(PortingError) as err:
        from_pretrained(folder)
    message = str(err.value)
    assert "model.safetensors" in message and "\n" not in message


def test_truncated_weights_file_is_a_clear_error(tmp_path):
    hf, folder = random_hf_folder(tmp_path, **TINY_HF)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(PortingError, match="model.safetensors is not a readable safetensors file"):
        from_pretrained(folder)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_weights_holding_nan_or_infinity_are_refused_by_name(tmp_path, bad):
    from safetensors.torch import load_file, save_file

    hf, folder = random_hf_folder(tmp_path, **TINY_HF)
    tensors = load_file(folder / "model.safetensors")
    tensors["transformer.h.1.mlp.c_fc.bias"][7] = bad
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(PortingError, match=r"tensor 'transformer\.h\.1\.mlp\.c_fc\.bias' holds NaN or infinite"):
        from_pretrained(folder)


def test_huge_but_finite_weights_are_not_mistaken_for_infinity(tmp_path):
    # their sum overflows float32, which is how the fast check first sees them; every element is still finite
    from safetensors.torch import load_file, save_file

    hf, folder = random_hf_folder(tmp_path, **TINY_HF)
    tensors = load_file(folder / "model.safetensors")
    tensors["transformer.h.0.ln_1.bias"][:2] = 3e38
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    assert from_pretrained(folder).transformer.h[0].ln_1.bias[1].item() == pytest.approx(3e38)


@pytest.mark.parametrize("change, message", [
    ({"n_layer": 2000}, r"config\.json: n_layer=2,000 is more than the limit of 256 layers"),
    ({"n_embd": 65, "n_head": 4}, r"n_embd \(65\) must be divisible by n_head \(4\)"),
    ({"n_positions": "32"}, "block_size must be a whole number >= 1, got '32'"),
    ({"vocab_size": 10**12}, r"vocab_size=1,000,000,000,000 needs about .* of memory, and .* is available"),
    ({"activation_function": ["gelu"]}, r"activation_function=\['gelu'\]; supported"),
])
def test_config_json_is_checked_before_anything_is_built(tmp_path, change, message):
    hf, folder = random_hf_folder(tmp_path, **TINY_HF)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(PortingError, match=message) as err:
        from_pretrained(folder)
    assert str(folder / "config.json") in str(err.value)


def test_weights_that_overflow_float32_on_conversion_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    hf, folder = random_hf_folder(tmp_path, **TINY_HF)
    tensors = load_file(folder / "model.safetensors")
    tensors["transformer.ln_f.bias"] = torch.full((64,), 1e300, dtype=torch.float64)  # finite in the file
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(PortingError, match=r"'transformer\.ln_f\.bias' holds NaN or infinite values"):
        from_pretrained(folder)


def test_gpt2_unavailable_is_the_one_documented_error():
    from nanogpt_edu import NanogptEduError

    assert issubclass(ModelNotAvailableError, NanogptEduError) and issubclass(PortingError, NanogptEduError)


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """Just enough of the Hub's API for one repository: its commit, and its two files (or 404 for the weights)."""

    files: dict[str, bytes] = {}
    commit = "c" * 40

    def _file(self, send_body: bool) -> None:
        name = self.path.split("?")[0].rsplit("/", 1)[-1]
        if f"/resolve/{self.commit}/" not in self.path or name not in self.files:
            return self.send_error(404)
        body = self.files[name]
        self.send_response(200)
        self.send_header("X-Repo-Commit", self.commit)
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def do_HEAD(self):
        self._file(send_body=False)

    def do_GET(self):
        if self.path.startswith("/api/models/openai-community/gpt2"):
            body = json.dumps({"id": "openai-community/gpt2", "sha": self.commit}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self._file(send_body=True)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("serves_weights", [True, False])
def test_gpt2_downloads_from_the_hub_or_says_why_in_one_line(tmp_path, monkeypatch, serves_weights):
    from huggingface_hub import constants

    hf, folder = random_hf_folder(tmp_path, **TINY_HF)
    names = ["config.json", "model.safetensors"] if serves_weights else ["config.json"]
    monkeypatch.setattr(_FakeHub, "files", {name: (folder / name).read_bytes() for name in names})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    # what HF_ENDPOINT sets when huggingface_hub starts
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    try:
        if serves_weights:
            assert from_pretrained("gpt2").config.n_layer == 2
            assert (tmp_path / "hub" / "models--openai-community--gpt2").is_dir()
        else:
            with pytest.raises(ModelNotAvailableError, match=r"downloading it from .* failed \(\w+Error: ") as err:
                from_pretrained("gpt2")
            assert "\n" not in str(err.value)
    finally:
        server.shutdown()


def test_gpt2_availability_offline_and_with_a_cached_copy(tmp_path):
    from nanogpt_edu.porting import gpt2_availability

    assert gpt2_availability() == {name: "not available" for name in GPT2_DIMS}  # sockets are blocked here
    hf, folder = random_hf_folder(tmp_path, **TINY_HF)  # lay out a cache holding "gpt2", as a download would
    snapshot = tmp_path / "hub" / "models--openai-community--gpt2" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((folder / name).read_bytes())
    (tmp_path / "hub" / "models--openai-community--gpt2" / "refs").mkdir()
    (tmp_path / "hub" / "models--openai-community--gpt2" / "refs" / "main").write_text("0" * 40)
    code = "from nanogpt_edu.porting import gpt2_availability\nprint(gpt2_availability()['gpt2'])\n"
    result = run_python(code, env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert result.stdout.strip() == "in the Hugging Face cache", result.stderr


def test_building_on_the_meta_device_skips_only_the_meta_init_and_loads_no_dynamo():
    # torch's meta version of the random init imports torch._dynamo (about 1.5 s per process); porting skips it
    code = """
import sys
import torch
from nanogpt_edu import load_model
from nanogpt_edu.porting import _NoInitOnMeta
model = load_model("pocket")
print("dynamo" if "torch._dynamo" in sys.modules else "no dynamo")
with _NoInitOnMeta():
    cpu = torch.nn.Linear(64, 64)  # a real tensor: its init still runs
print(round(cpu.weight.std().item(), 2) > 0, torch.equal(model(torch.tensor([[0, 1]]))[0], model(torch.tensor([[0, 1]]))[0]))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["no", "dynamo", "True", "True"]
