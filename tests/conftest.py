"""Test set-up: no network, quiet and isolated caches, so the suite means the same on every machine."""

import os
import socket
import sys
import tempfile
from pathlib import Path

import pytest

# `make test` runs a worker per core; each worker's torch, and every kernel it starts, would otherwise take a thread
# per core as well, and threads that outnumber the cores spend their time waiting on each other (the suite took
# 8 min 53 s that way and 8 min 8 s with a thread each). A user's own OMP_NUM_THREADS stays.
ONE_THREAD_PER_WORKER = bool(os.environ.get("PYTEST_XDIST_WORKER")) and "OMP_NUM_THREADS" not in os.environ
if ONE_THREAD_PER_WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"
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


# ---- the static HTML editions, built once per worker for every test that reads them ----

@pytest.fixture(scope="session")
def edition_notebooks(tmp_path_factory):
    """A copy of the notebooks whose 05 stores the sampling explorer as the code draws it now (see
    ``test_html_edition.notebooks_with_explorer``)."""
    from test_html_edition import notebooks_with_explorer

    return notebooks_with_explorer(tmp_path_factory.mktemp("explorer") / "notebooks")


@pytest.fixture(scope="session")
def built_editions(edition_notebooks, tmp_path_factory):
    """Both static editions of ``edition_notebooks``, as ``scripts/html_edition.py`` writes them: (the folder
    holding ``teacher/`` and ``student/``, the pages ``build_editions`` returned for each)."""
    scripts = str(Path(__file__).resolve().parent.parent / "scripts")  # the HTML edition is a repository tool
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    from html_edition import build_editions

    out = tmp_path_factory.mktemp("editions")
    return out, build_editions(edition_notebooks, out)


@pytest.fixture
def editions(built_editions):
    """The folder holding both editions, for the tests that only read their pages."""
    return built_editions[0]


# ---- how `make test` shares the suite between its workers (pytest-xdist, --dist loadscope) ----
# A work unit runs whole in one worker. A notebook's nbval cells must run in order in one kernel, so a notebook is
# one unit; so is every test file, except where its tests are independent and long: there each test (or each
# listed test function) is a unit of its own, so that two workers can share the file.
EACH_TEST_ALONE = {"tests/test_exercises.py", "tests/test_jupyterlab_browser.py"}
FUNCTIONS_ALONE = {"tests/test_hostile.py": {"test_hostile_input_gets_one_line",
                                             "test_fuzzed_files_load_or_raise_the_one_error"}}
# The longest units first (measured with --durations), so no long one is left to run alone at the end.
LONGEST_FIRST = ["tests/test_jupyterlab_browser.py::test_notebook_runs_in_jupyterlab",
                 "tests/test_exercises.py::test_student_edition", "notebooks/", "tests/test_nbgrader.py",
                 "tests/test_hostile.py", "tests/test_jupyterlab_browser.py", "tests/test_html_edition.py",
                 "tests/test_pocket.py", "tests/test_engine_loop.py", "tests/test_speculative.py"]


def work_unit(nodeid: str) -> str:
    path, _, test = nodeid.partition("::")
    if path.endswith(".ipynb"):
        return path
    if path in EACH_TEST_ALONE:
        return nodeid
    function = test.split("[")[0]  # the test function, without its parameters
    if function in FUNCTIONS_ALONE.get(path, ()):
        return f"{path}::{function}"
    return path


XDIST_PARTS = ("workqueue", "registered_collections", "_check_nodes_have_same_collection", "_assign_work_unit",
               "_reschedule")


def unit_rank(unit: str) -> int:
    return next((i for i, prefix in enumerate(LONGEST_FIRST) if unit.startswith(prefix)), len(LONGEST_FIRST))


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # optional: the suite also runs without xdist
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadscope":
        return None  # any other --dist: xdist's own way
    from xdist.scheduler import LoadScopeScheduling

    class SeriesScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

        def schedule(self) -> None:
            # xdist queues the units by their number of tests; here they are queued by rank (collection order
            # within a rank), then handed out as xdist does: one each, and more whenever a worker runs low
            # (it uses xdist's own queue and hand-out; an xdist without them keeps its own order)
            if (self.collection is not None or not all(hasattr(self, name) for name in XDIST_PARTS)
                    or not self._check_nodes_have_same_collection()):
                return super().schedule()
            self.collection = list(next(iter(self.registered_collections.values())))
            units: dict[str, dict[str, bool]] = {}
            for nodeid in self.collection:
                units.setdefault(work_unit(nodeid), {})[nodeid] = False
            for unit in sorted(units, key=unit_rank):
                self.workqueue[unit] = units[unit]
            for node in self.nodes:
                if self.workqueue:
                    self._assign_work_unit(node)
            for node in self.nodes:
                self._reschedule(node)

    return SeriesScheduling(config, log)
