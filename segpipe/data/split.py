"""Deterministic train/val/test splits.

- `official`: test = the valid ids of test.txt; val is carved out of the valid
  ids of trainval.txt; train is the rest of trainval. Ids in neither list go to
  `unassigned` (kept out of every split, reported). An empty trainval.txt (a
  held-out set, or new data to score) gives empty train and val splits: scoring
  works, training refuses it (`require_train_split`).
- `random`: every valid id is shuffled into train/val/test.
- `breed`: test = every valid id of the `holdout_breeds` (breeds training never
  sees); val is carved out of the other breeds, train is the rest.

Ids are sorted before a `random.Random(seed)` shuffle, so the same seed gives
the same split whatever order the ids come in. Each split keeps the shuffled
order, so the shards written from it mix breeds.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from segpipe.fsutil import atomic_write_json, read_json

SPLITS: tuple[str, ...] = ("train", "val", "test")
MODES: tuple[str, ...] = ("official", "random", "breed")
SPLIT_FILE = "split.json"


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def _take(n: int, fraction: float, keep: int) -> int:
    """How many of `n` ids a `fraction` gets: at least 1 when fraction > 0, leaving `keep` behind."""
    if n == 0 or fraction == 0.0:
        return 0
    return max(0, min(n - keep, max(1, round(n * fraction))))


def _shuffled(ids: Iterable[str], seed: int) -> list[str]:
    out = sorted(ids)
    random.Random(seed).shuffle(out)
    return out


def make_split(
    examples_ids: list[str],
    lists: Mapping[str, frozenset[str]],
    *,
    mode: str,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    holdout_breeds: Iterable[str] = (),
) -> dict[str, list[str]]:
    """Split valid ids into {"train", "val", "test", "unassigned"}.

    `lists` maps an id to the list files naming it ("trainval", "test", "list");
    ids missing from it count as listed nowhere. `test_fraction` is used only
    in random mode, `holdout_breeds` only in breed mode.
    """
    _check_arguments(examples_ids, mode, val_fraction, test_fraction, seed)
    if mode == "official":
        return _official_split(examples_ids, lists, val_fraction, seed)
    if mode == "breed":
        return _breed_split(examples_ids, holdout_breeds, val_fraction, seed)
    return _random_split(examples_ids, val_fraction, test_fraction, seed)


def _check_arguments(examples_ids: list[str], mode: str, val_fraction: float, test_fraction: float, seed: int) -> None:
    if mode not in MODES:
        raise ValueError(f"split mode must be one of {', '.join(MODES)}, got {mode!r}")
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    dupes = sorted(i for i, n in Counter(examples_ids).items() if n > 1)
    if dupes:
        raise ValueError(f"duplicate example ids: {', '.join(dupes[:5])}")


def _official_split(
    examples_ids: list[str], lists: Mapping[str, frozenset[str]], val_fraction: float, seed: int
) -> dict[str, list[str]]:
    member = {i: lists.get(i, frozenset()) for i in examples_ids}
    test = _shuffled((i for i, m in member.items() if "test" in m), seed)
    trainval = _shuffled((i for i, m in member.items() if "trainval" in m and "test" not in m), seed)
    unassigned = sorted(i for i, m in member.items() if "test" not in m and "trainval" not in m)
    if not trainval and not test:
        raise ValueError(
            f"official split: none of the {len(member)} valid ids is listed in trainval.txt or test.txt, "
            "so every split would be empty; list them there, or use --split random"
        )
    # An empty trainval.txt is a held-out set (or new data) to score: train and val stay empty, and
    # only training refuses it (`require_train_split`).
    n_val = _take(len(trainval), val_fraction, keep=1)
    return {"train": trainval[n_val:], "val": trainval[:n_val], "test": test, "unassigned": unassigned}


def _random_split(examples_ids: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[str]]:
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 for a random split, got {val_fraction} + {test_fraction}"
        )
    ids = _shuffled(examples_ids, seed)
    n_test = _take(len(ids), test_fraction, keep=1)
    n_val = _take(len(ids), val_fraction, keep=n_test + 1)
    if len(ids) - n_test - n_val < 1:
        raise ValueError(f"random split: {len(ids)} valid ids are too few to leave a non-empty train split")
    return {
        "train": ids[n_test + n_val:],
        "val": ids[n_test:n_test + n_val],
        "test": ids[:n_test],
        "unassigned": [],
    }


def _breed_split(ids: list[str], holdout_breeds: Iterable[str], val_fraction: float, seed: int) -> dict[str, list[str]]:
    from segpipe.data.names import breed_of

    holdout = set(holdout_breeds)
    if not holdout:
        raise ValueError("breed split: holdout_breeds is empty; name at least one breed to hold out")
    present = {breed_of(i) for i in ids}
    unknown = sorted(holdout - present)
    if unknown:
        raise ValueError(f"breed split: no valid image of {', '.join(unknown)}; breeds present: {', '.join(sorted(present))}")
    test = _shuffled((i for i in ids if breed_of(i) in holdout), seed)
    rest = _shuffled((i for i in ids if breed_of(i) not in holdout), seed)
    if len(rest) < 2:
        raise ValueError("breed split: holding out these breeds leaves too few images to train on")
    n_val = _take(len(rest), val_fraction, keep=1)
    return {"train": rest[n_val:], "val": rest[:n_val], "test": test, "unassigned": []}


def require_train_split(num_examples: Mapping[str, int], dataset: str) -> None:
    """Raise ValueError, naming `dataset` and what to do, unless it has train and val examples.

    Preparing a dataset never requires a train split (a held-out set is prepared to be scored);
    training does, and says so here, before a model is built.
    """
    n_train, n_val = num_examples.get("train", 0), num_examples.get("val", 0)
    if n_train > 0 and n_val > 0:
        return
    counts = ", ".join(f"{name} {num_examples.get(name, 0)}" for name in SPLITS)
    if n_train == 0:
        raise ValueError(
            f"dataset {dataset} has no training examples ({counts}): with the official split, train and val "
            "come from the ids listed in trainval.txt, and these archives list none. It can be scored "
            "(segpipe evaluate/gallery --split test) but not trained on; train on archives whose trainval.txt "
            "lists images, or prepare these with --split random"
        )
    raise ValueError(
        f"dataset {dataset} has no validation examples ({counts}): training needs some to pick the best "
        "model; prepare it with a larger --val-fraction"
    )


def write_split(split: Mapping[str, list[str]], dataset_dir: str | Path, params: Mapping[str, Any]) -> Path:
    """Write `split.json` ({params, counts, ids}) into `dataset_dir`, atomically."""
    ids = {k: list(split.get(k, [])) for k in (*SPLITS, "unassigned")}
    doc = {"params": dict(params), "counts": {k: len(v) for k, v in ids.items()}, "ids": ids}
    return atomic_write_json(Path(dataset_dir) / SPLIT_FILE, doc)


def load_split(dataset_dir: str | Path) -> dict[str, list[str]]:
    """The ids per split from `split.json` (clear error when it is missing)."""
    path = Path(dataset_dir) / SPLIT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {SPLIT_FILE} in {dataset_dir}: the dataset has not been split")
    return read_json(path)["ids"]
