"""What installing segpipe puts in site-packages: `segpipe` and `segpipe_app` (cli, deployments, flows, tasks),
and no generic top-level names."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("cli", "deployments", "flows", "tasks")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_on_disk_is_listed_for_the_wheel():
    setuptools = _pyproject()["tool"]["setuptools"]
    library = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "segpipe").rglob("__init__.py")}
    expected = library | {f"segpipe_app.{layer}" for layer in LAYERS}
    assert set(setuptools["packages"]) == expected
    assert setuptools["package-dir"] == {f"segpipe_app.{layer}": layer for layer in LAYERS}
    for layer in LAYERS:  # a mapped layer is one flat package: a subfolder would need its own entry
        assert not [p for p in (ROOT / layer).iterdir() if (p / "__init__.py").exists()], layer


def test_the_console_script_runs_from_the_installed_root():
    assert _pyproject()["project"]["scripts"] == {"segpipe": "segpipe_app.cli.main:main"}


def test_installed_environment_claims_no_generic_top_level_names(tmp_path):
    """Run from an unrelated directory, so the repository is not on sys.path: only the installed names resolve."""
    code = (
        "import importlib.util as u, json;"
        "print(json.dumps({n: u.find_spec(n) is not None for n in "
        "('segpipe', 'segpipe_app.cli.main', 'segpipe_app.tasks.data', 'segpipe_app.flows.pipeline',"
        " 'segpipe_app.deployments.serve', 'cli', 'tasks', 'flows', 'deployments')}))"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    import json

    found = json.loads(out)
    assert found == {"segpipe": True, "segpipe_app.cli.main": True, "segpipe_app.tasks.data": True,
                     "segpipe_app.flows.pipeline": True, "segpipe_app.deployments.serve": True,
                     "cli": False, "tasks": False, "flows": False, "deployments": False}


def test_no_code_runs_a_layer_by_its_bare_folder_name():
    """`python -m cli.main` or `from tasks.x import y` in a subprocess's code string works only with the
    repository as the working directory, and loads a second copy of the layer beside `segpipe_app.<layer>`."""
    import re

    bare = re.compile(r"""(["']-m["'],\s*["']|-m |\bfrom |\bimport )(cli|tasks|flows|deployments)\.\w""")
    planted = {"tests/benchmarks/test_benchmarks_layout.py", "tests/test_packaging.py"}  # planted examples, this docstring
    found = [f"{p.relative_to(ROOT)}:{i}" for p in ROOT.glob("*/**/*.py")
             if ".venv" not in p.parts and str(p.relative_to(ROOT)) not in planted
             for i, line in enumerate(p.read_text().splitlines(), 1) if bare.search(line)]
    assert not found, f"run the layers as segpipe_app.<layer>: {found}"
