"""Code keys come from the import graph (`segpipe.codekeys`) and cover every module a stage can import.

Three kinds of check:
- the walker's rules on a tiny package written here (lazy, relative, `from package import module`,
  registries by name, parent packages);
- every stage's key against what the stage really imports: its entry modules imported in a fresh
  interpreter, the stage really run (evaluate + gallery, train) on tiny data, and the segpipe code the
  task function calls; `sys.modules` may hold no segpipe module the key does not cover;
- editing a file of a copy of the package moves exactly the keys whose stages can import it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import segpipe_app.tasks.caching as caching
from segpipe.codekeys import ROOT, code_key, module_closure
from segpipe.data import dataset as data_stages
from segpipe.runs.naming import TRAIN_ENTRY, run_id_for, train_code_key, train_run_dir

REPO = Path(__file__).resolve().parents[2]

# `<name>_CACHE` constant of tasks/caching.py -> the stage's task (module, function)
TASKS = {
    "DOWNLOAD_CACHE": ("tasks.data", "download_task"), "VERIFY_CACHE": ("tasks.data", "verify_task"),
    "EXTRACT_CACHE": ("tasks.data", "extract_task"), "VALIDATE_CACHE": ("tasks.data", "validate_task"),
    "SPLIT_CACHE": ("tasks.data", "split_task"), "WRITE_SHARDS_CACHE": ("tasks.data", "write_shards_task"),
    "WRITE_MANIFEST_CACHE": ("tasks.data", "write_manifest_task"), "TRAIN_CACHE": ("tasks.training", "train_task"),
    "EVALUATE_CACHE": ("tasks.evaluation", "evaluate_task"), "GALLERY_CACHE": ("tasks.evaluation", "gallery_task"),
}


def entries_of(policy) -> tuple[str, ...] | None:
    """The entry modules of the `LibrarySource` inside a (compound, derived, checked) cache policy."""
    if isinstance(policy, caching.LibrarySource):
        return policy.modules
    for child in (getattr(policy, "key", None), *getattr(policy, "policies", ())):
        if child is not None and (found := entries_of(child)) is not None:
            return found
    return None


def code_policies() -> dict[str, tuple[str, ...]]:
    """Every `*_CACHE` policy of tasks/caching.py that keys on library code, with its entry modules."""
    found = {name: entries_of(getattr(caching, name)) for name in dir(caching) if name.endswith("_CACHE")}
    return {name: entries for name, entries in found.items() if entries is not None}


def imported_in_fresh_interpreter(script: str) -> set[str]:
    """The segpipe modules in sys.modules after `script` ran in a fresh interpreter."""
    code = script + "\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'segpipe')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


# --------------------------------------------------------------------------- the walker's rules


def write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in {"segpipe/__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


def test_the_closure_follows_lazy_relative_submodule_and_by_name_imports_and_parent_packages(tmp_path):
    root = write_package(tmp_path, {
        "segpipe/entry.py": """
            import os
            from . import sibling
            def later():
                import segpipe.lazy.deep
                from segpipe.pkg import sub, NAME
            REGISTRY = {"x": ("segpipe.registered", "build")}
            if TYPE_CHECKING:
                import segpipe.unreached
            """,
        "segpipe/sibling.py": "from .pkg.sub import f\n",
        "segpipe/lazy/__init__.py": "",
        "segpipe/lazy/deep.py": "",
        "segpipe/pkg/__init__.py": "NAME = 1\n",
        "segpipe/pkg/sub.py": "def f(): return 'segpipe is a name, not a module: segpipe.nowhere'\n",
        "segpipe/registered.py": "",
        "segpipe/unreached.py": "",
    })
    assert module_closure(["segpipe.entry"], root) == (
        "segpipe", "segpipe.entry", "segpipe.lazy", "segpipe.lazy.deep", "segpipe.pkg", "segpipe.pkg.sub",
        "segpipe.registered", "segpipe.sibling",
    )
    assert module_closure(["segpipe.pkg.sub"], root) == ("segpipe", "segpipe.pkg", "segpipe.pkg.sub")


def test_the_key_is_content_only_and_a_missing_module_is_named(tmp_path):
    a = write_package(tmp_path / "a", {"segpipe/m.py": "import segpipe.n\n", "segpipe/n.py": "X = 1\n"})
    b = write_package(tmp_path / "b", {"segpipe/m.py": "import segpipe.n\n", "segpipe/n.py": "X = 1\n"})
    assert code_key(["segpipe.m"], a) == code_key(["segpipe.m"], b)  # another directory, same content
    (b / "segpipe/n.py").write_text("X = 2\n")
    assert code_key(["segpipe.m"], a) != code_key(["segpipe.m"], b)
    (b / "segpipe/n.py").unlink()
    with pytest.raises(ModuleNotFoundError, match=r"m\.py imports segpipe\.n, which has no source"):
        code_key(["segpipe.m"], b)
    with pytest.raises(ModuleNotFoundError, match="entry module 'segpipe.absent'"):
        code_key(["segpipe.absent"], a)


# --------------------------------------------------------------------------- keys against what stages import


def test_every_code_keyed_policy_is_a_known_stage():
    assert set(code_policies()) == set(TASKS)  # a new cached stage: add it to TASKS so the checks below cover it
    assert code_policies()["TRAIN_CACHE"] == TRAIN_ENTRY  # the run id and the train key cover the same code


def segpipe_names_used(fn) -> set[str]:
    """The segpipe modules that own the globals `fn` (and the functions nested in it) names."""
    import types

    def names(code: types.CodeType) -> set[str]:
        return set(code.co_names).union(*(names(c) for c in code.co_consts if isinstance(c, types.CodeType)))

    called: set[str] = set()
    for ref in names(fn.__code__):
        obj = fn.__globals__.get(ref)
        owner = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
        if isinstance(owner, str) and owner.split(".")[0] == "segpipe":
            called.add(owner)
    return called


def artifact_checks(policy) -> list:
    """The `outputs_ok` functions of the `ArtifactCheck`s inside a (compound, derived) cache policy."""
    found = [policy.outputs_ok] if isinstance(policy, caching.ArtifactCheck) else []
    for child in (getattr(policy, "key", None), *getattr(policy, "policies", ())):
        if child is not None:
            found += artifact_checks(child)
    return found


@pytest.mark.parametrize("policy", sorted(TASKS))
def test_the_key_covers_the_library_code_its_artifact_check_calls(policy):
    """An "is the artifact complete" check is library code (beside what writes the artifact): a change to it
    changes the key of the stage whose cache trusts it."""
    called = set().union(*(segpipe_names_used(check) for check in artifact_checks(getattr(caching, policy))))
    if policy in ("WRITE_SHARDS_CACHE", "WRITE_MANIFEST_CACHE", "TRAIN_CACHE"):
        assert called - {"segpipe.layout"}, f"{policy}'s check should call the library's completeness check"
    assert sorted(called - set(module_closure(code_policies()[policy]))) == []


@pytest.mark.parametrize("policy", sorted(TASKS))
def test_the_key_covers_every_segpipe_module_the_task_calls(policy):
    """What the task function references (names it uses, lazy imports in it) lies in its key's closure."""
    import ast
    import importlib
    import inspect

    module, name = TASKS[policy]
    fn = getattr(importlib.import_module(module), name).fn
    called = segpipe_names_used(fn)
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(fn)))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "segpipe":
            called.add(node.module)
        elif isinstance(node, ast.Import):
            called |= {a.name for a in node.names if a.name.split(".")[0] == "segpipe"}
    assert called, f"{name} calls no segpipe code: its policy should not key on library code"
    assert sorted(called - set(module_closure(code_policies()[policy]))) == []


@pytest.mark.parametrize("entries", sorted({*code_policies().values(), data_stages.CONTENT_ENTRY}))
def test_importing_a_stage_loads_no_segpipe_module_its_key_misses(entries):
    imported = imported_in_fresh_interpreter("".join(f"import {m}\n" for m in entries))
    assert set(entries) <= imported
    assert sorted(imported - set(module_closure(entries))) == []


def test_the_dataset_key_reaches_no_model_training_or_config_code():
    """A dataset's content is decided by the data code alone: editing a model, the training loop, evaluation or
    the config schema must not re-key (and so re-prepare) every dataset. `segpipe.progress` once pulled the
    whole config package (and through its schema, every model) into the key for a duration formatter."""
    closure = module_closure(data_stages.CONTENT_ENTRY)
    outside = {"models", "training", "evaluation", "config", "runs", "gallery", "predict", "model_host"}
    assert [m for m in closure if m.split(".")[1:2] and m.split(".")[1] in outside] == []
    # The one RGB conversion is shared with the exports' runtime on purpose: it stays in the key.
    assert "segpipe.export.runtime" in closure and "segpipe.data.images" in closure


@pytest.mark.slow
def test_evaluate_and_gallery_run_no_segpipe_module_their_keys_miss(tmp_path):
    """The stages run for real (lazy imports, model loading with segpipe's layers, the gallery)."""
    from segpipe.models import build_model
    from tests.synthetic import write_tiny_dataset

    dataset = write_tiny_dataset(tmp_path / "ds", {"val": 2}, height=32, width=32)
    model = tmp_path / "unet.keras"
    build_model("unet", (32, 32, 3), 3, base_filters=4, depth=2).save(model)
    imported = imported_in_fresh_interpreter(textwrap.dedent(f"""
        from segpipe.evaluation.evaluate import evaluate, render_evaluation_gallery
        result = evaluate([{str(model)!r}], {str(dataset)!r}, "val", batch_size=2)
        render_evaluation_gallery([{str(model)!r}], {str(dataset)!r}, "val", {str(tmp_path / "gallery")!r},
                                  n_sample=1, n_worst=1, seed=0, per_image=result.per_image)
    """))
    assert (tmp_path / "gallery" / "index.html").is_file()
    assert "segpipe.models.layers" in imported  # the custom layers run when the model loads
    assert sorted(imported - set(module_closure(caching.EVALUATE_ENTRY))) == []
    assert sorted(imported - set(module_closure(caching.GALLERY_ENTRY))) == []


@pytest.mark.slow
def test_train_runs_no_segpipe_module_its_key_misses(tmp_path):
    from tests.synthetic import write_tiny_dataset

    dataset = write_tiny_dataset(tmp_path / "ds", {"train": 4, "val": 2}, height=32, width=32)
    imported = imported_in_fresh_interpreter(textwrap.dedent(f"""
        from segpipe.config import build_config
        from segpipe.training import train
        cfg = build_config("tiny", {{"train": {{"epochs": 1, "batch_size": 2}}}})
        train(cfg, {str(dataset)!r}, {str(tmp_path / "run")!r}, verbose=0)
    """))
    assert (tmp_path / "run" / "train_summary.json").is_file()
    assert {"segpipe.training.losses", "segpipe.models.layers"} <= imported
    assert sorted(imported - set(module_closure(TRAIN_ENTRY))) == []


def test_the_run_id_covers_the_train_closure():
    from segpipe.config import build_config

    cfg = build_config("tiny", {})
    assert train_code_key() == code_key(TRAIN_ENTRY)
    assert run_id_for(cfg, "ds") == run_id_for(cfg, "ds", code_key(TRAIN_ENTRY))
    assert train_run_dir("/w", "ds", cfg.model, cfg.train).name == run_id_for(cfg, "ds")


# --------------------------------------------------------------------------- an edit moves exactly the keys it should


@pytest.fixture
def package_copy(tmp_path) -> Path:
    shutil.copytree(ROOT / "segpipe", tmp_path / "segpipe", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def stage_keys(root: Path) -> dict[str, str]:
    stages = {**code_policies(), "DATASET_KEY": data_stages.CONTENT_ENTRY}
    return {name: code_key(entries, root) for name, entries in stages.items()}


def edited(root: Path, rel: str) -> dict[str, str]:
    path = root / rel
    path.write_text(path.read_text() + "\n# edited\n")
    return stage_keys(root)


def test_editing_the_models_layers_changes_the_evaluate_gallery_and_train_keys(package_copy):
    before = stage_keys(package_copy)
    assert before == stage_keys(ROOT)  # a copy elsewhere: the same keys
    after = edited(package_copy, "segpipe/models/layers.py")
    changed = {name for name in before if before[name] != after[name]}
    assert {"EVALUATE_CACHE", "GALLERY_CACHE", "TRAIN_CACHE"} <= changed
    assert "DOWNLOAD_CACHE" not in changed


def test_editing_the_gallery_html_leaves_the_train_key(package_copy):
    before = stage_keys(package_copy)
    after = edited(package_copy, "segpipe/gallery/html.py")
    changed = {name for name in before if before[name] != after[name]}
    assert "GALLERY_CACHE" in changed
    assert "TRAIN_CACHE" not in changed and "DATASET_KEY" not in changed and "DOWNLOAD_CACHE" not in changed
