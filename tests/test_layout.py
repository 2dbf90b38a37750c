"""The package's shape: the lesson is plain PyTorch in nanoGPT's form, and the engine sits above it, apart."""

import ast
import sys
import tomllib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nanogpt_edu"
LESSON = ("model", "tokenizer", "config", "porting", "loading", "devices", "plots", "sampling")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (inside functions too), as absolute dotted names."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            # "from . import fast" imports the submodule fast; "from .model import GPT", a name of .model
            submodules = {f"{module}.{alias.name}" for alias in node.names if _is_module(f"{module}.{alias.name}")}
            found |= submodules if len(submodules) == len(node.names) else submodules | {module}
    return found


def _is_module(dotted: str) -> bool:
    path = PACKAGE.parent / dotted.replace(".", "/")
    return path.is_dir() or path.with_suffix(".py").is_file()


def package_graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        graph[module_name(path)] = {m for m in imports_of(path) if m.startswith("nanogpt_edu")}
    return graph


def test_model_py_imports_torch_and_the_standard_library_only():
    imported = imports_of(PACKAGE / "model.py")
    outside = {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] != "torch"}
    assert not outside, outside
    source = (PACKAGE / "model.py").read_text(encoding="utf-8")
    assert "ctypes" not in imported and "torch.ops" not in source  # no compiled code, no private torch ops


def test_model_py_is_shaped_like_nanogpts():
    source = (PACKAGE / "model.py").read_text(encoding="utf-8")
    assert source.count("\n") <= 330
    tree = ast.parse(source)
    classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    assert classes == ["GPTConfig", "LayerNorm", "CausalSelfAttention", "MLP", "Block", "KVCache", "GPT"]
    gpt = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "GPT")
    methods = {node.name for node in gpt.body if isinstance(node, ast.FunctionDef)}
    assert {"forward", "get_num_params", "generate", "new_cache"} <= methods


def test_no_import_circles_in_the_package():
    graph = package_graph()

    def visit(module, path):
        for target in graph.get(module, ()):
            assert target not in path, " -> ".join([*path, target])
            visit(target, [*path, target])

    for module in graph:
        visit(module, [module])


def test_only_the_two_generation_loops_reach_the_engine():
    graph = package_graph()
    users = {module for module, targets in graph.items()
             if any(t.startswith("nanogpt_edu.fast") for t in targets) and not module.startswith("nanogpt_edu.fast")}
    assert users == {"nanogpt_edu.sampling", "nanogpt_edu.engine_loop"}  # generate, and nanochat's generate_samples
    for name in LESSON:
        module = f"nanogpt_edu.{name}"
        assert module in graph, module
    assert "nanogpt_edu.model" in graph["nanogpt_edu.fast.decode"]  # the wing reads the lesson's modules
    for loop in ("sampling.py", "engine_loop.py"):  # one call site each: the step is picked once per call
        assert (PACKAGE / loop).read_text(encoding="utf-8").count("fast.") == 1, loop


def test_the_kernel_source_ships_as_package_data():
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    assert "kernel.c" in project["tool"]["setuptools"]["package-data"]["nanogpt_edu.fast"]
    assert (PACKAGE / "fast" / "kernel.c").is_file()
    assert "C_SOURCE" not in (PACKAGE / "fast" / "kernel.py").read_text(encoding="utf-8")


def test_repository_tools_stay_out_of_the_package():
    # the HTML edition reads this checkout's notebooks/, so it is a script of the repository
    assert not (PACKAGE / "html_edition.py").exists()
    assert (PACKAGE.parent / "scripts" / "html_edition.py").is_file()
