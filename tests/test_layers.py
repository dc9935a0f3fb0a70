"""Dependency direction: cli → deployments → flows → tasks → segpipe, never backwards."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "segpipe": {"prefect", "tasks", "flows", "deployments", "cli"},
    "tasks": {"flows", "deployments", "cli"},
    "flows": {"deployments", "cli"},
    "deployments": {"cli"},
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_downwards(layer):
    bad = {
        str(p.relative_to(ROOT)): sorted(imported_roots(p) & FORBIDDEN[layer])
        for p in (ROOT / layer).rglob("*.py")
    }
    assert not {k: v for k, v in bad.items() if v}


def test_importing_segpipe_loads_neither_tensorflow_nor_prefect():
    import subprocess
    import sys

    code = (
        "import sys, segpipe, segpipe.config, segpipe.data, segpipe.models, segpipe.layout;"
        "heavy = {'tensorflow', 'keras', 'prefect'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
