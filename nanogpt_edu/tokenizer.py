"""GPT-2's byte-pair encoding through tiktoken, working offline.

``tiktoken.get_encoding("gpt2")`` normally downloads two files (``vocab.bpe`` and ``encoder.json``) the first time
it runs. This package ships both files, byte for byte, and offers two ways to use them without a network:

* ``get_encoding()`` builds the encoding straight from the shipped files (it never touches tiktoken's cache);
* ``install_tiktoken_cache()`` (run when ``nanogpt_edu`` is imported) makes the unchanged line from sample.py,
  ``tiktoken.get_encoding("gpt2")``, build the same encoding from the shipped files. It writes a file only into a
  cache folder the user chose (``TIKTOKEN_CACHE_DIR`` or ``DATA_GYM_CACHE_DIR``), never into tiktoken's default,
  ``/tmp/data-gym-cache``, which every user of a shared machine can write to.
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
import os
import stat
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
    return tiktoken.Encoding(**_gpt2_parameters())


@functools.lru_cache(maxsize=None)
def _gpt2_parameters() -> dict:
    # what tiktoken.Encoding takes; also what tiktoken's registry asks a constructor for (see install_tiktoken_cache)
    return dict(name="gpt2", explicit_n_vocab=N_VOCAB, pat_str=r50k_pat_str, mergeable_ranks=_mergeable_ranks(),
                special_tokens={EOT: EOT_ID})


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


def chosen_cache_dir() -> Path | None:
    """Return the tiktoken cache folder the user set (``TIKTOKEN_CACHE_DIR`` or ``DATA_GYM_CACHE_DIR``), else None."""
    chosen = any(var in os.environ for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"))
    return tiktoken_cache_dir() if chosen else None


def install_tiktoken_cache() -> bool:
    """Make ``tiktoken.get_encoding("gpt2")`` work offline; return True if the BPE files are in the user's cache.

    tiktoken is handed a constructor that builds the encoding from the shipped files (when first asked for, as
    ``get_encoding()`` does), so nothing has to be written. The files are copied only into a cache folder the user
    chose (``TIKTOKEN_CACHE_DIR``/``DATA_GYM_CACHE_DIR``), where other programs' tiktoken finds them too; tiktoken's
    default, ``/tmp/data-gym-cache``, is shared by every user of the machine, so nothing is written there. Each copy
    is written to a fresh file of its own (exclusive create, a random name) and renamed into place, so a link or
    file another user planted is never followed or written into. A cache that is off or cannot be written is not
    an error: this returns False.
    """
    _register_with_tiktoken()
    cache = chosen_cache_dir()
    if cache is None:
        return False
    try:
        for filename, (url, sha256) in GPT2_FILES.items():
            target = cache / hashlib.sha1(url.encode()).hexdigest()
            if not _holds(target, bpe_file(filename), sha256):
                cache.mkdir(mode=0o700, parents=True, exist_ok=True)
                _write_new(target, bpe_file(filename).read_bytes())
    except (OSError, ValueError):  # ValueError: a path tiktoken could not use either (e.g. a NUL byte)
        return False
    return True


def _register_with_tiktoken() -> None:
    # tiktoken looks in ENCODING_CONSTRUCTORS (filled once from its plugins) before any file: the gpt2 entry
    # builds from the shipped files instead of downloading into the cache
    try:
        tiktoken.registry._find_constructors()
        tiktoken.registry.ENCODING_CONSTRUCTORS["gpt2"] = _gpt2_parameters
    except (AttributeError, TypeError):  # another tiktoken's internals: hand it the built encoding instead
        tiktoken.registry.ENCODINGS.setdefault("gpt2", get_encoding())


def _write_new(target: Path, data: bytes) -> None:
    # mkstemp creates the file exclusively (O_EXCL: never a file or link that is already there), readable only by
    # this user (mode 0600); os.replace swaps the name in atomically, and replaces a link rather than following it
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _holds(path: Path, source: Path, sha256: str) -> bool:
    # a file left by an interrupted or corrupted download would make tiktoken fetch it again: check its contents.
    # Opened without following a link and without blocking (a FIFO planted there), and only if it is a regular
    # file of the right size, so that a huge file there is never read
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size != source.stat().st_size:
            return False
        try:
            return hashlib.sha256(f.read(info.st_size + 1)).hexdigest() == sha256
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
