"""The benchmarks' layout (issue #21 item 5): no file in benchmarks/ over MAX_LINES lines, no import cycle
between benchmark modules (imports inside functions count too), and no private name (`_x`) of the library,
the CLI, the tasks, the flows or the deployments imported or reached as `module._x`: a benchmark uses their
public API only. Read with `ast`, without importing anything."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
MAX_LINES = 400
# the packages a benchmark measures: their underscore names are theirs alone
PACKAGES = {"segpipe", "segpipe_app", "cli", "tasks", "flows", "deployments"}


def benchmark_files(root: Path = BENCHMARKS) -> dict[str, Path]:
    """Module name (relative to benchmarks/, dotted; a package by its own name) -> file."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if "__pycache__" in rel.parts or rel.parts[0] == "results":
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts:
            out[".".join(parts)] = path
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def sibling_imports(module: str, tree: ast.AST, modules: set[str], is_package: bool = False) -> set[str]:
    """The benchmark modules `module` imports, anywhere in the file: `benchmarks.X`, `from benchmarks import X`,
    a sibling imported by its own name (`from common import log`, as the scripts do) and relative imports."""

    def known(dotted: str) -> str | None:  # the longest benchmark module that `dotted` names or lies in
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in modules:
                return ".".join(parts[:n])
        return None

    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name.removeprefix("benchmarks.")
                if (hit := known(name)) is not None:
                    found.add(hit)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module == "benchmarks":
                target = ""
            elif node.module and node.module.startswith("benchmarks."):
                target = node.module.removeprefix("benchmarks.")
            else:
                target = node.module or ""
            for alias in node.names:  # `from benchmarks import render`, `from . import machine`
                if (hit := known(f"{target}.{alias.name}".strip("."))) is not None and hit != known(target or "-"):
                    found.add(hit)
            if target and (hit := known(target)) is not None:
                found.add(hit)
    found.discard(module)
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle found by a depth-first search, as the modules along it (first repeated at the end)."""
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def private_uses(tree: ast.AST) -> list[str]:
    """`from segpipe.x import _y`, `import segpipe._x`, and `m._y` where `m` was bound by importing one of
    PACKAGES (a module or a name from it), with the line of each."""
    out, bound = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            parts = node.module.split(".")
            if parts[0] not in PACKAGES:
                continue
            if any(_private(p) for p in parts):
                out.append(f"line {node.lineno}: from {node.module} import ...")
            for alias in node.names:
                if _private(alias.name):
                    out.append(f"line {node.lineno}: from {node.module} import {alias.name}")
                bound.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] not in PACKAGES:
                    continue
                if any(_private(p) for p in parts):
                    out.append(f"line {node.lineno}: import {alias.name}")
                bound.add(alias.asname or parts[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                out.append(f"line {node.lineno}: {ast.unparse(node)}")
    return sorted(set(out))


def _graph(files: dict[str, Path]) -> dict[str, set[str]]:
    modules = set(files)
    return {name: sibling_imports(name, ast.parse(path.read_text()), modules, path.name == "__init__.py")
            for name, path in files.items()}


# --------------------------------------------------------------------------- the real benchmarks


def test_no_benchmark_file_is_over_the_line_limit():
    files = benchmark_files()
    assert "render" in files and "roofline" in files and "common" in files
    long = {str(p.relative_to(ROOT)): n for p in files.values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by role (at most {MAX_LINES} lines each): {long}"


def test_benchmark_modules_import_no_cycle():
    graph = _graph(benchmark_files())
    assert "render_common" in graph["render"] or any("render_common" in graph[m] for m in graph["render"])
    assert "common" in graph["roofline"]
    cycles = import_cycles(graph)
    assert not cycles, "benchmark modules importing each other: " + "; ".join(" -> ".join(c) for c in cycles)


def test_benchmarks_use_no_private_name_of_the_library_or_the_app():
    bad = {str(p.relative_to(ROOT)): uses for p in benchmark_files().values()
           if (uses := private_uses(ast.parse(p.read_text())))}
    assert not bad, f"use (or add) a public name instead: {bad}"


# --------------------------------------------------------------------------- the checks themselves


def test_the_checks_catch_a_planted_cycle_private_import_and_long_file(tmp_path):
    bench = tmp_path / "benchmarks"
    (bench / "common").mkdir(parents=True)
    (bench / "common" / "__init__.py").write_text("from .machine import cpu_model\n")
    (bench / "common" / "machine.py").write_text("def cpu_model():\n    return 'x'\n")
    (bench / "a.py").write_text("from common import cpu_model\n\ndef f():\n    from benchmarks import b\n")
    (bench / "b.py").write_text("import benchmarks.c\n")
    (bench / "c.py").write_text("def g():\n    from benchmarks.a import f\n")
    (bench / "long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    files = benchmark_files(bench)
    assert set(files) == {"common", "common.machine", "a", "b", "c", "long"}
    graph = _graph(files)
    assert graph["a"] == {"common", "b"} and graph["common"] == {"common.machine"}
    assert import_cycles(graph) == [["a", "b", "c", "a"]]
    (bench / "c.py").write_text("from benchmarks import common\n")
    assert import_cycles(_graph(benchmark_files(bench))) == []
    assert len((bench / "long.py").read_text().splitlines()) > MAX_LINES

    planted = ast.parse(
        "from cli.options import _parse_value\n"
        "import segpipe.data.augment as aug\n"
        "from segpipe.data import input as inp\n"
        "from segpipe.config import build_config\n"
        "import numpy as np\n"
        "def f(x):\n"
        "    aug._warp_batch(x)\n"
        "    inp._helper.y\n"
        "    np._private\n"
        "    x._also_fine\n"
        "    build_config.__name__\n")
    assert private_uses(planted) == ["line 1: from cli.options import _parse_value", "line 7: aug._warp_batch",
                                     "line 8: inp._helper"]
