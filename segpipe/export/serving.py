"""The champion's serving layout: TF Serving's numbered versions, with every earlier version kept.

    WORK/models/serving/pets/1/   saved_model.pb, variables/, pets-*.tflite, pets.onnx, pets_runtime.py, export.json
    WORK/models/serving/pets/2/   ...

TF Serving (`--model_base_path=WORK/models/serving/pets`) serves the highest version; the LiteRT and ONNX
files of the same model sit beside its SavedModel. A version directory is copied from a verified export
under a temporary name and renamed when complete, under a lock, so two promotions never take one number.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from segpipe.fsutil import file_lock, tempdir_beside

MODEL_NAME = "pets"
PathLike = str | os.PathLike[str]


def serving_root(models_dir: PathLike) -> Path:
    """`<models_dir>/serving/pets`: TF Serving's model base path."""
    return Path(models_dir) / "serving" / MODEL_NAME


def versions(root: PathLike) -> list[int]:
    """The complete version numbers under `root`, ascending (temporary directories are not versions)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def latest_version(root: PathLike) -> Path:
    """The directory TF Serving would serve (the highest version); a clear error when there is none."""
    found = versions(root)
    if not found:
        raise FileNotFoundError(f"no serving version under {root}: `segpipe retrain` promotes a champion and "
                                "installs its export there")
    return Path(root) / str(found[-1])


def install_version(export_dir: PathLike, root: PathLike) -> Path:
    """Copy a verified export into the next version directory under `root`; return it.

    Refuses an export whose files differ from its manifest (`exporter.verify_files`).
    """
    from segpipe.export.exporter import verify_files

    problems = verify_files(export_dir)
    if problems:
        raise ValueError(f"export {export_dir} is not complete or was changed: {'; '.join(problems)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / ".versions.lock"):
        number = (versions(root) or [0])[-1] + 1
        target = root / str(number)
        tmp = tempdir_beside(target)
        try:
            shutil.copytree(export_dir, tmp, dirs_exist_ok=True)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target
