"""Deterministic official and random splits."""

from __future__ import annotations

import json
import random

import pytest

from segpipe.data.split import load_split, make_split, require_train_split, write_split
from segpipe.data.validate import read_lists, validate_dataset
from tests.synthetic import make_pets_tree

TRAINVAL = [f"cat_{i}" for i in range(100)]
TEST = [f"dog_{i}" for i in range(30)]
NOWHERE = ["cat_900", "dog_901"]
LISTS = {
    **{i: frozenset({"list", "trainval"}) for i in TRAINVAL},
    **{i: frozenset({"list", "test"}) for i in TEST},
    "dog_999": frozenset({"list", "test"}),  # listed, but its image was skipped
}
IDS = TRAINVAL + TEST + NOWHERE


def split(ids=IDS, **kw):
    args = {"mode": "official", "val_fraction": 0.1, "test_fraction": 0.2, "seed": 7} | kw
    return make_split(list(ids), LISTS, **args)


def test_official_semantics():
    s = split()
    assert sorted(s["test"]) == sorted(TEST)  # valid ids of test.txt only: dog_999 is not there
    assert len(s["val"]) == 10 and len(s["train"]) == 90
    assert sorted(s["train"] + s["val"]) == sorted(TRAINVAL)
    assert not set(s["train"]) & set(s["val"])
    assert s["unassigned"] == sorted(NOWHERE)


@pytest.mark.parametrize("mode", ["official", "random"])
def test_deterministic(mode):
    a = split(mode=mode)
    shuffled = list(IDS)
    random.Random(123).shuffle(shuffled)
    assert split(shuffled, mode=mode) == a
    assert split(list(reversed(IDS)), mode=mode) == a
    b = split(mode=mode, seed=8)
    assert b["val"] != a["val"]
    if mode == "official":  # the seed moves ids between train and val, never into test
        assert sorted(b["val"] + b["train"]) == sorted(a["val"] + a["train"]) and sorted(b["test"]) == sorted(a["test"])


def test_random_is_disjoint_and_complete():
    s = split(mode="random", val_fraction=0.15, test_fraction=0.25)
    sizes = {k: len(v) for k, v in s.items()}
    assert sizes == {"train": 79, "val": 20, "test": 33, "unassigned": 0}  # fractions of all 132 ids
    every = s["train"] + s["val"] + s["test"]
    assert len(every) == len(set(every)) and sorted(every) == sorted(IDS)


def test_small_fractions_still_get_one_and_train_is_kept():
    s = split(["cat_1", "cat_2", "dog_1"], mode="official", val_fraction=0.01)
    assert (len(s["train"]), len(s["val"]), s["test"]) == (1, 1, ["dog_1"])
    s = split(["cat_1", "dog_1"], mode="official", val_fraction=0.5)
    assert (s["train"], s["val"]) == (["cat_1"], [])
    s = split(IDS, mode="official", val_fraction=0.0)
    assert s["val"] == [] and len(s["train"]) == 100


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
        ({"val_fraction": -0.1}, r"val_fraction must be in \[0, 1\)"),
        ({"test_fraction": 1.5}, r"test_fraction must be in \[0, 1\)"),
        ({"mode": "random", "val_fraction": 0.5, "test_fraction": 0.5}, "must be < 1 for a random split"),
        ({"mode": "kfold"}, "split mode must be one of official, random"),
        ({"seed": -1}, "seed must be a non-negative int"),
        ({"ids": ["cat_1", "cat_1"]}, "duplicate example ids: cat_1"),
        ({"ids": NOWHERE}, "none of the 2 valid ids is listed in trainval.txt or test.txt"),
        ({"ids": [], "mode": "random"}, "too few"),
    ],
)
def test_bad_arguments(kw, message):
    with pytest.raises(ValueError, match=message):
        split(**kw)


def test_write_and_load(tmp_path):
    s = split()
    params = {"mode": "official", "val_fraction": 0.1, "seed": 7}
    path = write_split(s, tmp_path, params)
    doc = json.loads(path.read_text())
    assert doc["params"] == params
    assert doc["counts"] == {"train": 90, "val": 10, "test": 30, "unassigned": 2}
    assert load_split(tmp_path) == s
    assert [p.name for p in tmp_path.iterdir()] == ["split.json"]
    with pytest.raises(FileNotFoundError, match="no split.json"):
        load_split(tmp_path / "nope")


def test_on_synthetic_tree(tmp_path):
    tree = make_pets_tree(tmp_path)
    report = validate_dataset(tree.images_dir, tree.annotations_dir)
    lists = {i: e.lists for i, e in read_lists(tree.annotations_dir).items()}
    s = make_split([e.id for e in report.examples], lists, mode="official",
                   val_fraction=0.2, test_fraction=0.1, seed=0)
    expected_test = sorted(i for i in tree.valid if "test" in tree.lists.get(i, ()))
    assert sorted(s["test"]) == expected_test
    assert s["unassigned"] == sorted(tree.unlisted)
    assert len(s["val"]) == 3 and len(s["train"]) == 12  # 15 valid trainval ids


def test_breed_split_holds_whole_breeds_out():
    ids = [f"{b}_{n}" for b in ("Abyssinian", "Bengal", "american_bulldog") for n in range(1, 11)]
    split = make_split(ids, {}, mode="breed", val_fraction=0.2, test_fraction=0.1, seed=3, holdout_breeds=["Bengal"])
    assert sorted(split["test"]) == sorted(i for i in ids if i.startswith("Bengal_"))
    assert not any(i.startswith("Bengal_") for i in split["train"] + split["val"])
    assert len(split["val"]) == 4 and len(split["train"]) == 16
    assert split == make_split(list(reversed(ids)), {}, mode="breed", val_fraction=0.2, test_fraction=0.1, seed=3,
                               holdout_breeds=["Bengal"])
    with pytest.raises(ValueError, match="no valid image of beagle"):
        make_split(ids, {}, mode="breed", val_fraction=0.2, test_fraction=0.1, seed=3, holdout_breeds=["beagle"])
    with pytest.raises(ValueError, match="holdout_breeds is empty"):
        make_split(ids, {}, mode="breed", val_fraction=0.2, test_fraction=0.1, seed=3)


def test_an_empty_trainval_is_a_set_to_score_not_an_error():
    """A held-out set (test.txt lists the images, trainval.txt is empty) is prepared for scoring: before,
    the split refused it ("train would be empty"), so `segpipe evaluate --source` could not score it."""
    s = split(TEST + NOWHERE)
    assert s["train"] == [] and s["val"] == [] and sorted(s["test"]) == sorted(TEST)
    assert s["unassigned"] == sorted(NOWHERE)


def test_on_a_synthetic_test_only_tree(tmp_path):
    tree = make_pets_tree(tmp_path, n_per_breed=3, test_only=True)
    assert (tree.annotations_dir / "trainval.txt").read_text() == ""
    report = validate_dataset(tree.images_dir, tree.annotations_dir)
    lists = {i: e.lists for i, e in read_lists(tree.annotations_dir).items()}
    s = make_split([e.id for e in report.examples], lists, mode="official", val_fraction=0.2, test_fraction=0.1,
                   seed=0)
    assert s["train"] == s["val"] == []
    assert sorted(s["test"]) == sorted(i for i in tree.valid if i not in tree.unlisted)


@pytest.mark.parametrize(
    "counts, message",
    [
        ({"train": 0, "val": 0, "test": 30}, r"dataset k1 has no training examples \(train 0, val 0, test 30\): .*"
                                             r"trainval\.txt.*can be scored \(segpipe evaluate/gallery --split test\)"),
        ({"train": 5, "val": 0, "test": 3}, r"dataset k1 has no validation examples \(train 5, val 0, test 3\): .*"
                                            r"--val-fraction"),
    ],
)
def test_only_training_requires_a_train_split(counts, message):
    with pytest.raises(ValueError, match=message):
        require_train_split(counts, "k1")
    require_train_split({"train": 5, "val": 1, "test": 0}, "k1")  # a test split is not needed to train
