#!/usr/bin/env bash
# Create .venv with everything nanogpt-edu needs (safe to run again). Used by `make setup` and CI.
#
#   PYTHON=python3.11 bash scripts/setup.sh     # pick the interpreter
#   TORCH_SPEC="torch==2.13.0" (default)       # the torch to install when .venv has none yet
#
# torch is installed first, on its own, by scripts/install_torch.py: on Linux without an NVIDIA GPU it takes the
# CPU build from PyTorch's CPU wheel index (the package index's Linux wheels are CUDA builds of several GB), and
# falls back to the plain install, saying so, when that index cannot be reached. With a torch already present,
# the project's loose requirement (torch>=2.6) is satisfied and pip downloads nothing more: a GPU user may install
# the CUDA build of their choice into .venv before running this script (see the README), and it is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
export TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" scripts/install_torch.py
echo "installing nanogpt-edu and its dependencies into $VENV"
"$VENV/bin/pip" install --quiet --progress-bar off -e ".[test]"
# A named Jupyter kernel inside .venv: the notebooks ask for "nanogpt-edu", so JupyterLab started from .venv runs
# them with this environment's Python, never with some other Python that lacks the package.
# GOMP_SPINCOUNT=1000: OpenMP threads spin only briefly before they sleep (nanogpt_edu/__init__.py says why); it must
# be set before torch is imported, which a notebook may do before it imports nanogpt_edu, so the kernel sets it.
"$VENV/bin/python" -m ipykernel install --sys-prefix --name nanogpt-edu --display-name "Python (nanogpt-edu)" \
  --env GOMP_SPINCOUNT 1000 >/dev/null
# The decode kernel (nanogpt_edu/fast/kernel.c): compiled now, once, so the first generation does not wait for it.
# Without a C compiler this prints why and generation uses PyTorch's own operations.
"$VENV/bin/python" -m nanogpt_edu.fast.build_kernel
"$VENV/bin/python" -c "import torch, nanogpt_edu; print(f'ready: torch {torch.__version__}, nanogpt_edu {nanogpt_edu.__version__}')"
