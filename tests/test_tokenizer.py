import hashlib
import os
import subprocess
import sys

import pytest
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from nanogpt_edu.tokenizer import EOT, EOT_ID, GPT2_FILES, bpe_file, decode, encode, get_encoding
from helpers import NO_NETWORK_PRELUDE, run_python


def test_seed_prompt_ids():
    assert encode("Hello, my name is") == [15496, 11, 616, 1438, 318]


def test_vocabulary_size_and_end_of_text():
    enc = get_encoding()
    assert enc.n_vocab == 50257
    assert enc.eot_token == EOT_ID == 50256
    assert enc.decode([EOT_ID]) == EOT


@pytest.mark.parametrize("filename", sorted(GPT2_FILES))
def test_shipped_files_are_the_gpt2_release(filename):
    digest = hashlib.sha256(bpe_file(filename).read_bytes()).hexdigest()
    assert digest == GPT2_FILES[filename][1]


def test_same_encoding_as_tiktoken_builds_from_the_same_files():
    ours = get_encoding()
    ranks = data_gym_to_mergeable_bpe_ranks(str(bpe_file("vocab.bpe")), str(bpe_file("encoder.json")))
    theirs = tiktoken.Encoding(
        name="gpt2", pat_str=r50k_pat_str,
        mergeable_ranks=ranks, special_tokens={EOT: EOT_ID},
    )
    assert ours._mergeable_ranks == ranks
    assert ours._pat_str == r50k_pat_str
    assert ours._special_tokens == {EOT: EOT_ID}
    text = "Some text, with numbers 12345 and 'quotes' -- and\nnewlines\t\ttabs."
    assert ours.encode(text) == theirs.encode(text)


def test_seed_line_works_offline_with_an_empty_cache(tmp_path):
    # A fresh process, sockets blocked, an empty tiktoken cache: importing nanogpt_edu must be enough.
    code = (
        "import nanogpt_edu, tiktoken\n"
        "from nanogpt_edu.tokenizer import get_encoding\n"
        "enc = tiktoken.get_encoding('gpt2')\n"
        "ours = get_encoding()\n"
        "assert enc._mergeable_ranks == ours._mergeable_ranks\n"
        "assert enc._pat_str == ours._pat_str and enc._special_tokens == ours._special_tokens\n"
        "print(enc.encode('Hello, my name is'), enc.n_vocab)\n"
    )
    result = run_python(code, env={"TIKTOKEN_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[15496, 11, 616, 1438, 318] 50257"


def test_without_our_cache_tiktoken_needs_the_network(tmp_path):
    # The control for the test above: the same line without importing nanogpt_edu fails offline.
    result = run_python("import tiktoken; tiktoken.get_encoding('gpt2')",
                        env={"TIKTOKEN_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode != 0
    assert "openaipublic.blob.core.windows.net" in result.stderr  # it tried to download the files


@pytest.mark.parametrize("text", [
    "Hello, world!",
    "naïve café — déjà vu",
    "日本語のテキスト",
    "emoji 🙂🚀 and combining e\u0301",
    "  leading spaces and trailing  ",
    "",
])
def test_unicode_round_trip(text):
    ids = encode(text)
    assert decode(ids) == text


def test_leading_space_is_part_of_the_token():
    enc = get_encoding()
    assert enc.decode_single_token_bytes(encode(" my")[0]) == b" my"
    assert encode(" my") != encode("my")


def test_special_token_is_allowed_as_in_sample_py():
    assert encode("a<|endoftext|>b") == encode("a") + [EOT_ID] + encode("b")
    # tiktoken's default refuses special tokens written in text; encode_ordinary treats them as characters
    enc = get_encoding()
    with pytest.raises(ValueError):
        enc.encode(EOT)
    assert EOT_ID not in enc.encode_ordinary(EOT)


def test_token_ending_mid_character_decodes_to_replacement():
    ids = encode("🙂")
    assert len(ids) > 1  # the emoji's four bytes span several tokens
    assert "\ufffd" in decode(ids[:1])
    assert decode(ids) == "🙂"


def test_only_gpt2_is_shipped():
    with pytest.raises(ValueError, match="only the 'gpt2' encoding"):
        get_encoding("cl100k_base")


def test_a_damaged_cached_file_is_replaced(tmp_path, monkeypatch):
    from nanogpt_edu.tokenizer import install_tiktoken_cache

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    url = GPT2_FILES["vocab.bpe"][0]
    cached = tmp_path / hashlib.sha1(url.encode()).hexdigest()
    cached.write_text("half a download")
    assert install_tiktoken_cache()
    assert cached.read_bytes() == bpe_file("vocab.bpe").read_bytes()


def test_a_cache_turned_off_writes_nothing_and_tiktoken_still_works_offline(tmp_path):
    code = ("import os, nanogpt_edu, tiktoken\n"
            "print(os.listdir('.'), tiktoken.get_encoding('gpt2').encode('Hello'))\n")
    result = subprocess.run([sys.executable, "-c", NO_NETWORK_PRELUDE + code], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "TIKTOKEN_CACHE_DIR": ""}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] [15496]"  # nothing copied into the working folder


def test_decode_names_an_id_outside_the_vocabulary():
    from nanogpt_edu import NanogptEduError

    with pytest.raises(NanogptEduError, match=r"token id 50257 is not in the vocabulary \(0 to 50256\)"):
        decode([15496, 50257])
