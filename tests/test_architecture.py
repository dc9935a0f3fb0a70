"""The architecture's dependency direction: cli → deployments → flows → tasks → segpipe, never backwards.

The repository's folders cli/, deployments/, flows/ and tasks/ install as `segpipe_app.<folder>`
(pyproject.toml), so an import of `segpipe_app.tasks.data` is an import of the `tasks` layer."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APP = "segpipe_app"
LAYERS = ("cli", "deployments", "flows", "tasks", "segpipe")
FORBIDDEN = {
    "segpipe": {"prefect", "tasks", "flows", "deployments", "cli"},
    "tasks": {"flows", "deployments", "cli"},
    "flows": {"deployments", "cli"},
    "deployments": {"cli"},
}


def _root(module: str) -> str:
    """The layer (or top-level package) a module belongs to: `segpipe_app.tasks.data` -> `tasks`."""
    parts = module.split(".")
    return parts[1] if parts[0] == APP and len(parts) > 1 else parts[0]


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {_root(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(_root(node.module))
    return roots


def test_layers_import_the_layer_below_under_the_installed_root():
    """The check above sees the imports it judges: every layer but the library imports the one below it, and
    nothing imports a layer by its bare folder name (it would not be importable once installed)."""
    for upper, lower in zip(LAYERS, LAYERS[1:]):
        found = set().union(*(imported_roots(p) for p in (ROOT / upper).rglob("*.py")))
        assert lower in found, f"{upper}/ never imports {lower}: the layering check would see nothing"
    bare = {str(p.relative_to(ROOT)): name
            for layer in LAYERS[:-1] for p in (ROOT / layer).rglob("*.py")
            for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for name in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""])
            if getattr(node, "level", 0) == 0 and name.split(".")[0] in LAYERS[:-1]}
    assert not bare, f"import the layers as {APP}.<layer>: {bare}"


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
        "import sys, segpipe, segpipe.config, segpipe.data, segpipe.models, segpipe.layout, segpipe.stages;"
        "heavy = {'tensorflow', 'keras', 'prefect'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_importing_the_download_stage_does_not_import_requests():
    """`requests` is imported where a transfer starts (`segpipe.data.fetch.network_errors`): a cached
    command, which never downloads, does not pay for it."""
    import subprocess
    import sys

    code = (
        "import sys, segpipe.data.download, segpipe.data.checksums, segpipe.data.download_errors;"
        "from segpipe.data.download_errors import is_transient;"
        "assert not {'requests', 'urllib3'} & set(sys.modules), 'imported at import time';"
        "import requests; assert is_transient(requests.ConnectionError('x'));"
        "from segpipe.data.fetch import network_errors; assert issubclass(requests.Timeout, network_errors())"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
