"""GPT-2's byte-pair encoding through tiktoken, working offline.

``tiktoken.get_encoding("gpt2")`` normally downloads two files (``vocab.bpe`` and ``encoder.json``) the first time
it runs. This package ships both files, byte for byte, and offers two ways to use them without a network:

* ``get_encoding()`` builds the encoding straight from the shipped files;
* ``install_tiktoken_cache()`` (run when ``nanogpt_edu`` is imported) copies them into tiktoken's cache folder
  under the names tiktoken looks for, so the unchanged line from sample.py, ``tiktoken.get_encoding("gpt2")``,
  works too.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

EOT = "<|endoftext|>"
N_VOCAB = 50257  # 256 byte tokens + 50,000 merges + <|endoftext|>
EOT_ID = N_VOCAB - 1  # <|endoftext|> is the last id

# Where tiktoken downloads the files from, and their sha256 (the same values tiktoken checks). tiktoken caches a
# download under the sha1 of its URL, which is how install_tiktoken_cache() knows what to name the copies.
GPT2_FILES = {
    "vocab.bpe": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
    "encoder.json": (
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
}


def bpe_file(filename: str) -> Path:
    """Return the path of one of the shipped GPT-2 BPE files (``vocab.bpe`` or ``encoder.json``)."""
    return Path(str(resources.files("nanogpt_edu") / "data" / "gpt2" / filename))


@functools.lru_cache(maxsize=None)
def get_encoding(name: str = "gpt2") -> tiktoken.Encoding:
    """Return GPT-2's tiktoken ``Encoding``, built from the files shipped in this package (no network).

    It is the same encoding ``tiktoken.get_encoding("gpt2")`` returns: the same 50,256 mergeable ranks, the
    ``r50k`` split pattern and ``<|endoftext|>`` = 50256, so ``n_vocab`` is 50257.
    """
    if name != "gpt2":
        raise ValueError(f"only the 'gpt2' encoding ships with nanogpt_edu, not {name!r}")
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(bpe_file("vocab.bpe")),
        encoder_json_file=str(bpe_file("encoder.json")),
        vocab_bpe_hash=GPT2_FILES["vocab.bpe"][1],
        encoder_json_hash=GPT2_FILES["encoder.json"][1],
    )
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=N_VOCAB,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={EOT: EOT_ID},
    )


def tiktoken_cache_dir() -> Path:
    """Return the folder tiktoken reads its downloads from (the same rule tiktoken itself follows)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return Path(os.environ[var])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def install_tiktoken_cache() -> bool:
    """Copy the shipped BPE files into tiktoken's cache so ``tiktoken.get_encoding("gpt2")`` works offline.

    Returns True when both files are in place afterwards. A cache folder that cannot be written is not an error
    (``get_encoding()`` still works); it just returns False.
    """
    cache = tiktoken_cache_dir()
    try:
        for filename, (url, _sha256) in GPT2_FILES.items():
            target = cache / hashlib.sha1(url.encode()).hexdigest()
            if not target.exists():
                cache.mkdir(parents=True, exist_ok=True)
                # copy to a temporary name first so a concurrent reader never sees half a file
                tmp = target.with_suffix(f".{os.getpid()}.tmp")
                shutil.copyfile(bpe_file(filename), tmp)
                os.replace(tmp, target)
    except OSError:
        return False
    return True


def encode(text: str, enc: tiktoken.Encoding | None = None) -> list[int]:
    """Return the token ids of ``text``, as sample.py encodes: ``<|endoftext|>`` in the text becomes id 50256."""
    return (enc or get_encoding()).encode(text, allowed_special={EOT})


def decode(ids: list[int], enc: tiktoken.Encoding | None = None) -> str:
    """Return the text of token ids (bytes that do not form valid UTF-8 become U+FFFD, as in tiktoken)."""
    return (enc or get_encoding()).decode(list(ids))
