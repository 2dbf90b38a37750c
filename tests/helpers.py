"""Helpers shared by the tests."""

import os
import subprocess
import sys

# Run first in a child process: the same socket guard as conftest.py, so the child cannot reach the network.
NO_NETWORK_PRELUDE = """
import socket
_real = socket.socket.connect
def _guard(self, address):
    if self.family == socket.AF_UNIX or (isinstance(address, tuple) and address[0] in ("127.0.0.1", "::1", "localhost")):
        return _real(self, address)
    raise OSError(f"network access is blocked (tried to connect to {address!r})")
socket.socket.connect = _guard
"""


def run_python(code: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python process without network; return the finished process (text output)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", NO_NETWORK_PRELUDE + code],
        capture_output=True, text=True, env=full_env, timeout=timeout,
    )
