"""The project's own files agree with each other: dependencies, package data, CI and README."""

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_asks_for_the_same_packages_as_pyproject():
    project = pyproject()["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    listed = {p for p in pip_section if not p.startswith("-e")}
    torch = next(d for d in wanted if d.startswith("torch"))
    # torch comes from conda-forge, as its CPU build (pip's Linux wheels are CUDA builds); the rest from pip
    assert listed == wanted - {torch}
    assert f"pytorch[version='{torch.removeprefix('torch')}',build='cpu*']" in conda
    assert "-e ." in pip_section and "pip" in conda
    assert f"python{project['requires-python']}" in conda  # the same Python range as the package
    assert env["variables"]["GOMP_SPINCOUNT"] == "1000"  # as the Jupyter kernel make setup installs sets it
    assert "ipykernel install --sys-prefix --name nanogpt-edu" in (ROOT / "environment.yml").read_text()


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


def test_a_worker_of_make_test_and_what_it_starts_use_one_thread():
    # conftest.py gives each xdist worker one torch thread, so two workers on two cores do not oversubscribe them
    import sys

    import torch
    from conftest import ONE_THREAD_PER_WORKER

    if not ONE_THREAD_PER_WORKER:
        pytest.skip("not an xdist worker, or OMP_NUM_THREADS was set by the user: their thread count stays")
    child = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert (torch.get_num_threads(), child) == (1, "1")


def test_every_readme_command_exists_as_written():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    for target in re.findall(r"`make ([\w-]+)", readme):
        assert target in targets, f"README mentions `make {target}`, which the Makefile lacks"
    # Python commands name the project's environment (plain `python` from the root finds the package's folder but
    # not its dependencies), except inside the conda block, which runs in the activated conda environment
    outside_conda = readme.replace(readme[readme.index("conda env create -f"):readme.index("jupyter lab notebooks/   #")], "")
    for module in re.findall(r"(?<![\w/.])python -m ([\w.]+)", outside_conda):
        pytest.fail(f"`python -m {module}` in the README: write `.venv/bin/python -m {module}`")
    for module in re.findall(r"\.venv/bin/python -m ([\w.]+)", readme):
        top = module.split(".")[0]
        assert top != "nanogpt_edu" or (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
    for script in re.findall(r"\.venv/bin/python (scripts/[\w/]+\.py|bench/[\w/]+\.py)", readme):
        assert (ROOT / script).is_file(), script


def test_make_lab_allows_root_only_as_root():
    # Jupyter exits at once as root without --allow-root; a normal user never needs it
    out = subprocess.run(["make", "-n", "-o", ".venv/.installed", "lab"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if "jupyter lab notebooks/" in line)
    assert ("--allow-root" in line) == (os.geteuid() == 0)
