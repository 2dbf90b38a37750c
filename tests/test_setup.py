"""`make setup` picks the torch build a machine needs (scripts/install_torch.py), decided without any network."""

import http.server
import os
import socket
import subprocess
import sys
import threading
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import install_torch  # noqa: E402
from install_torch import CPU_INDEX, Machine, choose  # noqa: E402


def test_linux_without_a_gpu_takes_the_cpu_build_from_the_cpu_index():
    plan = choose(Machine("Linux", has_nvidia_gpu=False, torch_installed=False, cpu_index_reachable=True))
    assert plan.pip_args == ("install", "torch==2.13.0", "--index-url", CPU_INDEX)
    assert "CPU build" in plan.reason


def test_an_unreachable_cpu_index_falls_back_to_the_plain_install_and_says_why():
    plan = choose(Machine("Linux", False, False, cpu_index_reachable=False))
    assert plan.pip_args == ("install", "torch==2.13.0")
    assert "could not be reached" in plan.reason and "CUDA" in plan.reason


@pytest.mark.parametrize("machine", [Machine("Linux", True, False, None), Machine("Darwin", False, False, None),
                                     Machine("Windows", False, False, None)], ids=["gpu", "macos", "windows"])
def test_a_gpu_or_another_system_keeps_the_default_build(machine):
    plan = choose(machine, spec="torch==2.6.0")
    assert plan.pip_args == ("install", "torch==2.6.0")


@pytest.mark.parametrize("gpu", [False, True])
def test_torch_already_installed_is_kept(gpu):
    plan = choose(Machine("Linux", gpu, torch_installed=True, cpu_index_reachable=None))
    assert plan.pip_args == () and "keeping" in plan.reason


@pytest.fixture()
def local_index():
    """An HTTP server on loopback standing in for the CPU wheel index."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    server.RequestHandlerClass.log_message = lambda *args: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/whl/cpu"
    server.shutdown()


def closed_port_url() -> str:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/whl/cpu"


def test_reachable_means_any_answer_and_unreachable_is_quick(local_index):
    assert install_torch.reachable(local_index)  # a 404 is still an answer
    assert not install_torch.reachable(closed_port_url(), timeout=2)
    assert not install_torch.reachable("not a url")


@pytest.fixture(scope="module")
def python_without_torch(tmp_path_factory) -> Path:
    """A fresh environment with no torch in it, as a newcomer's new .venv is (no pip needed for a dry run)."""
    folder = tmp_path_factory.mktemp("venv")
    venv.create(folder, with_pip=False)
    return folder / "bin" / "python"


def dry_run(python: Path, index: str, path: str = os.environ["PATH"]) -> str:
    env = {**os.environ, "TORCH_CPU_INDEX": index, "PATH": path, "TORCH_SPEC": ""}
    done = subprocess.run([str(python), str(ROOT / "scripts" / "install_torch.py"), "--dry-run"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(sys.platform != "linux" or Path("/proc/driver/nvidia/gpus").exists(),
                    reason="the CPU-index decision is Linux's, on a machine without an NVIDIA GPU")
def test_the_script_decides_end_to_end(python_without_torch, local_index, tmp_path):
    out = dry_run(python_without_torch, local_index)
    assert f"pip install torch==2.13.0 --index-url {local_index}" in out
    out = dry_run(python_without_torch, closed_port_url())
    assert "could not be reached" in out and out.rstrip().endswith("pip install torch==2.13.0")
    # a machine whose NVIDIA driver lists a GPU: the default (CUDA) build, and the CPU index is not even asked
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA A100 (UUID: GPU-0)'\n")
    fake.chmod(0o755)
    out = dry_run(python_without_torch, closed_port_url(), path=f"{tmp_path}:{os.environ['PATH']}")
    assert "an NVIDIA GPU was found" in out and out.rstrip().endswith("pip install torch==2.13.0")
    # and where torch is installed (this test's own environment), nothing is installed
    assert "nothing to install" in dry_run(Path(sys.executable), local_index)
