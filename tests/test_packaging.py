"""The project's own files agree with each other: dependencies, package data, CI and README."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_asks_for_the_same_packages_as_pyproject():
    project = pyproject()["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {p for p in pip_section if not p.startswith("-e")}
    assert listed == wanted
    assert "-e ." in pip_section
    assert "pip" in env["dependencies"] and any(str(d).startswith("python") for d in env["dependencies"])


def test_torch_requirement_is_satisfied_by_the_local_cpu_wheel():
    # the set-up installs torch==2.13.0 first; the package's requirement must accept it so pip fetches nothing more
    spec = next(d for d in pyproject()["project"]["dependencies"] if d.startswith("torch"))
    low = re.fullmatch(r"torch>=(\d+)\.(\d+)", spec)
    assert low, spec
    assert (int(low[1]), int(low[2])) <= (2, 13)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci
    test_command = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\n(.+?)\n```", readme, re.S)[1].strip()
    assert test_command in ci.splitlines()


def test_bpe_files_are_package_data():
    data = pyproject()["tool"]["setuptools"]["package-data"]["nanogpt_edu"]
    assert "data/gpt2/*" in data
    for name in ("vocab.bpe", "encoder.json"):
        assert (ROOT / "nanogpt_edu" / "data" / "gpt2" / name).is_file()


def test_notebooks_ask_for_the_kernel_that_setup_installs():
    import json

    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "ipykernel install --sys-prefix --name nanogpt-edu" in setup
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert json.loads(path.read_text())["metadata"]["kernelspec"]["name"] == "nanogpt-edu", path.name


def test_openmp_threads_spin_briefly_unless_the_user_says_otherwise():
    # set before torch loads OpenMP: by the package for scripts, by the Jupyter kernel for notebooks
    import os
    import subprocess
    import sys

    code = "import os, nanogpt_edu, torch; print(os.environ.get('GOMP_SPINCOUNT'))"
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def spincount(**env):
        return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True,
                              text=True).stdout.strip()

    assert spincount() == "1000"
    assert spincount(GOMP_SPINCOUNT="50") == "50"  # the user's own value stays
    assert spincount(OMP_WAIT_POLICY="ACTIVE") == "None"  # and a wait policy of theirs is not overridden
    assert "--env GOMP_SPINCOUNT 1000" in (ROOT / "scripts" / "setup.sh").read_text()
