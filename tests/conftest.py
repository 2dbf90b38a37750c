"""Test set-up: no network, quiet and isolated caches, so the suite means the same on every machine."""

import os
import socket
import tempfile

import pytest

if "OMP_WAIT_POLICY" not in os.environ:  # as nanogpt_edu and its Jupyter kernel set it for users
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

# Before anything imports huggingface_hub or tiktoken (they read these once): an empty, private Hugging Face cache,
# a fresh tiktoken cache, and no progress bars.
_scratch = tempfile.mkdtemp(prefix="nanogpt-edu-tests-")
os.environ["HF_HOME"] = os.path.join(_scratch, "hf")
os.environ["TIKTOKEN_CACHE_DIR"] = os.path.join(_scratch, "tiktoken")
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"

_LOCAL = ("127.0.0.1", "::1", "localhost")
_real_connect = socket.socket.connect


def _guarded_connect(self, address):
    # Unix sockets and loopback are fine (Jupyter kernels use them); anything else is a network call.
    if self.family == socket.AF_UNIX or (isinstance(address, tuple) and address[0] in _LOCAL):
        return _real_connect(self, address)
    raise OSError(f"network access is blocked in the test suite (tried to connect to {address!r})")


socket.socket.connect = _guarded_connect


@pytest.fixture(scope="session")
def scratch_dir() -> str:
    """A temporary folder shared by the whole test session."""
    return _scratch

