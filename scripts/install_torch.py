"""Install PyTorch into the environment that runs this script, choosing the build the machine needs.

    .venv/bin/python scripts/install_torch.py            # what `make setup` runs (scripts/setup.sh)
    .venv/bin/python scripts/install_torch.py --dry-run  # say what it would do, install nothing

Why a script of its own: on Linux, the package index's torch wheels are CUDA builds that pull several GB of
NVIDIA libraries, even onto a laptop without a GPU. So on Linux without an NVIDIA GPU this installs the CPU build
from PyTorch's own CPU wheel index (about a quarter of the size). When that index cannot be reached (an offline
mirror, a firewall) it falls back to the plain install and says so in one line. With an NVIDIA GPU, on macOS and on
Windows (whose index wheels are the right build already), or when torch is already installed, it does what a plain
`pip install` would. It ends by printing the torch build the environment has.

Environment: TORCH_SPEC (default torch==2.13.0) is the requirement to install; TORCH_CPU_INDEX the CPU wheel index.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass

DEFAULT_SPEC = "torch==2.13.0"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True)
class Machine:
    """What the choice depends on."""

    system: str  # platform.system(): "Linux", "Darwin", "Windows"
    has_nvidia_gpu: bool
    torch_installed: bool
    cpu_index_reachable: bool | None  # None: not asked (the choice did not need it)


@dataclass(frozen=True)
class Plan:
    """What to run: ``pip_args`` (empty when nothing is to be installed) and the one line that says why."""

    pip_args: tuple[str, ...]
    reason: str


def needs_cpu_index(system: str, has_nvidia_gpu: bool, torch_installed: bool) -> bool:
    """True where the plain install would bring a CUDA build nobody can use: Linux, no NVIDIA GPU, no torch yet."""
    return system == "Linux" and not has_nvidia_gpu and not torch_installed


def choose(machine: Machine, spec: str = DEFAULT_SPEC, cpu_index: str = CPU_INDEX) -> Plan:
    """Return the install plan for ``machine``."""
    if machine.torch_installed:
        return Plan((), "torch is already installed: keeping it")
    if not needs_cpu_index(machine.system, machine.has_nvidia_gpu, machine.torch_installed):
        why = "an NVIDIA GPU was found" if machine.has_nvidia_gpu else f"on {machine.system} the default build fits"
        return Plan(("install", spec), f"installing {spec}, the default build ({why})")
    if machine.cpu_index_reachable:
        return Plan(("install", spec, "--index-url", cpu_index),
                    f"installing {spec}, the CPU build (Linux without an NVIDIA GPU), from {cpu_index}")
    return Plan(("install", spec), f"installing {spec} from the default index: the CPU wheel index {cpu_index} "
                "could not be reached, so this may be a CUDA build of several GB (see the README's Installing)")


def has_nvidia_gpu() -> bool:
    """True if the NVIDIA driver reports a GPU (its /proc entries, else `nvidia-smi -L`)."""
    if glob.glob("/proc/driver/nvidia/gpus/*"):
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def reachable(url: str, timeout: float = 5.0) -> bool:
    """True if ``url`` answers at all within ``timeout`` seconds (any HTTP status counts as an answer)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # it answered; an index may refuse HEAD on its root
    except (OSError, ValueError):
        return False


def torch_build() -> str:
    """One line naming the torch this environment has, in a fresh process (the install may have just happened)."""
    code = ("import torch; cuda = torch.version.cuda; "
            "print(f'torch {torch.__version__}: ' + (f'CUDA {cuda} build' if cuda else 'CPU build'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "torch does not import: " + done.stderr.strip()[-200:]


def pip(args: tuple[str, ...]) -> int:
    """Run pip in this environment; return its exit status (its own error lines are left on stderr)."""
    return subprocess.run([sys.executable, "-m", "pip", *args, "--quiet", "--progress-bar", "off"]).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install the torch build this machine needs.")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, install nothing")
    args = parser.parse_args(argv)
    spec = os.environ.get("TORCH_SPEC") or DEFAULT_SPEC
    cpu_index = os.environ.get("TORCH_CPU_INDEX") or CPU_INDEX
    system, gpu = platform.system(), has_nvidia_gpu()
    installed = importlib.util.find_spec("torch") is not None
    ask = needs_cpu_index(system, gpu, installed)
    plan = choose(Machine(system, gpu, installed, reachable(cpu_index) if ask else None), spec, cpu_index)
    print(plan.reason, flush=True)
    if args.dry_run:
        print("dry run: pip " + " ".join(plan.pip_args) if plan.pip_args else "dry run: nothing to install")
        return 0
    if plan.pip_args:
        status = pip(plan.pip_args)
        if status != 0 and "--index-url" in plan.pip_args:
            # the index answered but the install failed (a proxy letting only some files through): the plain install
            plan = choose(Machine(system, gpu, installed, False), spec, cpu_index)
            print(f"the CPU build could not be installed; {plan.reason}", flush=True)
            status = pip(plan.pip_args)
        if status != 0:
            print(f"error: pip {' '.join(plan.pip_args)} failed (exit {status})", file=sys.stderr)
            return 1
    print(torch_build())
    return 0


if __name__ == "__main__":
    sys.exit(main())
