"""GPT-2's byte-pair encoding through tiktoken, working offline.

``tiktoken.get_encoding("gpt2")`` normally downloads two files (``vocab.bpe`` and ``encoder.json``) the first time
it runs. This package ships both files, byte for byte, and offers two ways to use them without a network:

* ``get_encoding()`` builds the encoding straight from the shipped files (it never touches tiktoken's cache);
* ``install_tiktoken_cache()`` (run when ``nanogpt_edu`` is imported) copies them into tiktoken's cache folder
  under the names tiktoken looks for, so the unchanged line from sample.py, ``tiktoken.get_encoding("gpt2")``,
  works too. Where that folder cannot be written, it hands tiktoken the encoding built here instead.
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import tiktoken
import tiktoken.registry
from tiktoken_ext.openai_public import r50k_pat_str

from .errors import NanogptEduError, shown

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
        raise NanogptEduError(f"only the 'gpt2' encoding ships with nanogpt_edu, not {shown(name)}")
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=N_VOCAB,
        pat_str=r50k_pat_str,
        mergeable_ranks=_mergeable_ranks(),
        special_tokens={EOT: EOT_ID},
    )


def _mergeable_ranks() -> dict[bytes, int]:
    # encoder.json maps each token, spelled in "data gym" characters, to its id. That spelling writes each of
    # the 188 printable bytes as itself and the other 68 as the characters from chr(256) on, in byte order.
    # (tiktoken's data_gym_to_mergeable_bpe_ranks gives the same ranks, but goes through its download cache.)
    data = bpe_file("encoder.json").read_bytes()
    if hashlib.sha256(data).hexdigest() != GPT2_FILES["encoder.json"][1]:
        raise RuntimeError(f"{bpe_file('encoder.json')} is damaged (wrong sha256): reinstall nanogpt_edu")
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    byte_of = {chr(b): b for b in printable}
    byte_of.update({chr(256 + n): b for n, b in enumerate(b for b in range(256) if b not in printable)})
    return {bytes(byte_of[c] for c in token): rank for token, rank in json.loads(data).items() if token != EOT}


def tiktoken_cache_dir() -> Path | None:
    """Return the folder tiktoken reads its downloads from (the same rule tiktoken itself follows).

    None when ``TIKTOKEN_CACHE_DIR`` (or ``DATA_GYM_CACHE_DIR``) is set to the empty string: tiktoken's way to
    turn its cache off.
    """
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return Path(os.environ[var]) if os.environ[var] else None
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def install_tiktoken_cache() -> bool:
    """Copy the shipped BPE files into tiktoken's cache so ``tiktoken.get_encoding("gpt2")`` works offline.

    Returns True when both files are in place afterwards (a copy whose contents are wrong is replaced). A cache
    that is turned off or cannot be written is not an error: tiktoken is handed the encoding ``get_encoding()``
    builds, so its ``get_encoding("gpt2")`` still works offline, and this returns False.
    """
    cache = tiktoken_cache_dir()
    try:
        if cache is None:
            raise PermissionError("tiktoken's cache is turned off")
        for filename, (url, sha256) in GPT2_FILES.items():
            target = cache / hashlib.sha1(url.encode()).hexdigest()
            if not _holds(target, bpe_file(filename), sha256):
                cache.mkdir(parents=True, exist_ok=True)
                # copy to a temporary name first so a concurrent reader never sees half a file
                tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
                shutil.copyfile(bpe_file(filename), tmp)
                os.replace(tmp, target)
    except (OSError, ValueError):  # ValueError: a path tiktoken could not use either (e.g. a NUL byte)
        # tiktoken looks in this dict before it looks for files: the encoding built here answers offline
        tiktoken.registry.ENCODINGS.setdefault("gpt2", get_encoding())
        return False
    return True


def _holds(path: Path, source: Path, sha256: str) -> bool:
    # a file left by an interrupted or corrupted download would make tiktoken fetch it again: check its contents
    # (the size first, so that a huge file there is never read)
    try:
        return (path.is_file() and path.stat().st_size == source.stat().st_size
                and hashlib.sha256(path.read_bytes()).hexdigest() == sha256)
    except OSError:
        return False


def encode(text: str, enc: tiktoken.Encoding | None = None) -> list[int]:
    """Return the token ids of ``text``, as sample.py encodes: ``<|endoftext|>`` in the text becomes id 50256."""
    if not isinstance(text, str):
        raise NanogptEduError(f"encode takes text (a str), got {shown(text)}")
    return (enc or get_encoding()).encode(text, allowed_special={EOT})


def decode(ids: list[int], enc: tiktoken.Encoding | None = None) -> str:
    """Return the text of token ids (bytes that do not form valid UTF-8 become U+FFFD, as in tiktoken).

    Every id must be a whole number below the encoding's ``n_vocab``; otherwise ``NanogptEduError`` names it.
    """
    enc = enc or get_encoding()
    try:
        ids = [operator.index(i) for i in ids]  # ints, numpy ints and integer tensors alike
    except TypeError:
        raise NanogptEduError(f"decode takes token ids (whole numbers), got {shown(ids)}") from None
    for i in ids:
        if not 0 <= i < enc.n_vocab:
            raise NanogptEduError(f"token id {shown(i)} is not in the vocabulary (0 to {enc.n_vocab - 1})")
    return enc.decode(ids)
