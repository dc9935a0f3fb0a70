"""Every library module is in the code key of the stages it affects, or named here as outside all keys.

A module split off another (as training, download and the gallery were) must join its stage's list in
`segpipe/data/dataset.py` or `tasks/caching.py`; otherwise a change to it would reuse stale caches.
"""

from pathlib import Path

import segpipe.data.dataset as data_stages
import tasks.caching as caching
from segpipe.fsutil import _source_files

ROOT = Path(__file__).resolve().parent.parent
# Outside every code key, and why: parameters enter the keys as values (config, presets); plumbing that
# decides no artifact's content (cancel, fsutil, layout, the package marker); NO_CACHE tasks (predict,
# promotion).
OUTSIDE_THE_KEYS = {
    "segpipe/__init__.py", "segpipe/config.py", "segpipe/presets.py", "segpipe/cancel.py", "segpipe/fsutil.py",
    "segpipe/layout.py", "segpipe/predict.py", "segpipe/promotion.py",
}


def test_every_library_module_is_in_a_code_key_or_named_outside():
    lists = [data_stages.DOWNLOAD_MODULES, data_stages.VALIDATE_MODULES, data_stages.DATASET_MODULES,
             caching.EXTRACT_MODULES, caching.TRAIN_MODULES, caching.EVAL_MODULES, caching.GALLERY_MODULES]
    covered = {str(path.resolve().relative_to(ROOT)) for modules in lists for m in modules for _, path in _source_files(m)}
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "segpipe").rglob("*.py")}
    assert sorted(modules - covered - OUTSIDE_THE_KEYS) == []
    assert sorted(OUTSIDE_THE_KEYS & covered) == []  # the list stays honest
