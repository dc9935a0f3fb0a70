"""Validation and cataloguing of the extracted files, on the synthetic tree with every oddity."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image, ImageFile

from segpipe.data.images import load_image_rgb, load_trimap_png
from segpipe.data.names import breed_of
from segpipe.data.validate import (
    ListEntry,
    read_lists,
    validate_dataset,
    write_validation,
)
from tests.synthetic import make_pets_archives, make_pets_tree

CONVERTED_REASONS = {
    "png_rgba": "PNG RGBA named .jpg converted to RGB",
    "gif": "GIF P named .jpg converted to RGB",
    "cmyk_jpeg": "JPEG CMYK converted to RGB",
    "grayscale_jpeg": "JPEG L converted to RGB",
    "png16": "PNG I;16 named .jpg converted to RGB (16-bit scaled to 8-bit)",
}
SKIPPED = {  # kind -> (file that is wrong, words its reason must contain)
    "truncated_jpeg": ("images", "truncated"),
    "zero_byte": ("images", "zero-byte"),
    "no_trimap": ("trimaps", "missing trimap"),
    "trimap_value_7": ("trimaps", "[7] outside {1, 2, 3}"),
    "trimap_wrong_size": ("trimaps", "50x40 != image size 48x40"),
    "rgb_trimap": ("trimaps", "RGB with differing channels"),
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_pets_tree(tmp_path_factory.mktemp("pets"))


@pytest.fixture(scope="module")
def report(tree):
    return validate_dataset(tree.images_dir, tree.annotations_dir, workers=2)


def by_id(report):
    return {e.id: e for e in report.examples}


def test_exact_counts(tree, report):
    assert report.counts == {
        "images_found": 30,
        "valid": 24,
        "skipped": 6,
        "converted": 5,
        "class_inferred": 2,
        "not_in_any_list": 3,
        "listed_but_missing": 1,
        "non_image_files_ignored": 3,
    }
    assert [e.id for e in report.examples] == tree.valid == sorted(tree.valid)
    assert {e.id: e.image_format for e in report.examples} == tree.formats
    assert report.ignored == ["._Abyssinian_1.jpg", "Abyssinian_100.mat", "Abyssinian_101.mat"]


def test_each_converted_kind_has_its_reason(tree, report):
    got = {r["id"]: r["reason"] for r in report.converted}
    assert got == {tree.kinds[k]: reason for k, reason in CONVERTED_REASONS.items()}


@pytest.mark.parametrize("kind", sorted(SKIPPED))
def test_each_skipped_kind_has_its_reason(tree, report, kind):
    where, words = SKIPPED[kind]
    image_id = tree.kinds[kind]
    (row,) = [r for r in report.skipped if r["id"] == image_id]
    assert words in row["reason"]
    expected_file = f"images/{image_id}.jpg" if where == "images" else f"annotations/trimaps/{image_id}.png"
    assert row["file"] == expected_file


def test_ids_in_no_list(tree, report):
    ex = by_id(report)
    aby = tree.breeds["Abyssinian"]
    for image_id in (tree.kinds["unlisted"], tree.kinds["gif"]):
        e = ex[image_id]
        assert (e.class_id, e.species, e.breed_id, e.breed, e.lists) == (*aby, "Abyssinian", frozenset())
    mystery = ex[tree.kinds["unknown_breed"]]
    assert (mystery.class_id, mystery.species, mystery.breed_id, mystery.breed) == (0, 1, 0, "Mystery")
    reasons = {r["id"]: r["reason"] for r in report.inferred}
    assert sorted(reasons) == sorted(tree.unlisted)
    assert reasons[tree.kinds["unlisted"]] == "in no list file; class inferred from breed"
    assert "class 0" in reasons[tree.kinds["unknown_breed"]]


def test_listed_examples_carry_list_rows(tree, report):
    e = by_id(report)["beagle_4"]
    assert (e.class_id, e.species, e.breed_id) == tree.breeds["beagle"] == (3, 2, 2)
    assert e.lists == frozenset({"list", "test"}) and (e.height, e.width) == (40, 48)
    assert [m["id"] for m in report.missing] == tree.missing == ["Bengal_112"]
    assert report.per_breed["Bengal"] == {"class_id": 4, "species": 1, "valid": 4, "skipped": 3}


def test_class_pixel_shares_match_trimaps(tree, report):
    counts = np.zeros(4)
    for e in report.examples:
        counts += np.bincount(np.asarray(Image.open(e.trimap_path)).ravel(), minlength=4)[:4]
    shares = report.class_pixel_shares
    assert list(shares) == ["pet", "background", "border"]
    assert sum(shares.values()) == pytest.approx(1.0)
    assert [shares[k] for k in shares] == pytest.approx(list(counts[1:] / counts[1:].sum()))
    assert shares["background"] > shares["pet"] > 0 and shares["border"] > 0


def test_decoding_is_by_content_not_extension(tree, report):
    e = by_id(report)[tree.kinds["png_rgba"]]
    assert e.image_path.suffix == ".jpg" and e.image_format == "png"
    data, fmt = load_image_rgb(e)
    assert fmt == "png" and data.startswith(b"\x89PNG")
    stored = np.asarray(Image.open(io.BytesIO(data)))
    assert stored.shape == (40, 48, 3)
    np.testing.assert_array_equal(stored, np.asarray(Image.open(e.image_path).convert("RGB")))

    clean = by_id(report)["Bengal_1"]
    assert load_image_rgb(clean) == (clean.image_path.read_bytes(), "jpeg")


def test_sixteen_bit_is_scaled_not_clipped(tree, report):
    e = by_id(report)[tree.kinds["png16"]]
    src16 = np.asarray(Image.open(e.image_path)).astype(np.int64)
    assert src16.max() > 255
    stored = np.asarray(Image.open(io.BytesIO(load_image_rgb(e)[0])))
    for c in range(3):
        np.testing.assert_array_equal(stored[..., c], src16 >> 8)


def test_trimap_png_is_single_channel_and_equal(tree, report):
    for kind_id in ("Abyssinian_1", tree.kinds["palette_trimap"]):
        e = by_id(report)[kind_id]
        mask = Image.open(io.BytesIO(load_trimap_png(e)))
        assert mask.mode == "L" and mask.size == (e.width, e.height)
        np.testing.assert_array_equal(np.asarray(mask), np.asarray(Image.open(e.trimap_path)))
        assert set(np.unique(np.asarray(mask))) <= {1, 2, 3}


def test_markdown_and_written_files(tree, report, tmp_path):
    md = report.to_markdown()
    for row in report.skipped:
        assert f"| {row['id']} | {row['file']} | {row['reason']} |" in md
    assert "| valid | 24 |" in md and "| Bengal | 4 | 1 | 4 | 3 |" in md
    json_path, md_path = write_validation(report, tmp_path / "ds")
    doc = json.loads(json_path.read_text())
    assert doc["counts"]["valid"] == 24 and len(doc["examples"]) == 24
    assert doc["examples"][0]["id"] == tree.valid[0]
    assert md_path.read_text() == md
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["validation.json", "validation.md"]


def test_read_lists(tree):
    lists = read_lists(tree.annotations_dir)
    assert len(lists) == len(tree.lists)
    assert {i: e.lists for i, e in lists.items()} == tree.lists
    assert lists["Abyssinian_101"].lists == frozenset({"list", "test"})
    assert breed_of("american_bulldog_12") == "american_bulldog" and breed_of("odd") == "odd"


def test_read_lists_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no list file"):
        read_lists(tmp_path)
    (tmp_path / "list.txt").write_text("# header\nAbyssinian_1 1 1\n")
    with pytest.raises(ValueError, match=r"list.txt:2: expected 'Image CLASS-ID SPECIES BREED-ID'"):
        read_lists(tmp_path)
    (tmp_path / "list.txt").write_text("Abyssinian_1 1 1 1\n")
    (tmp_path / "test.txt").write_text("Abyssinian_1 2 1 1\n")
    with pytest.raises(ValueError, match=r"test.txt:1: Abyssinian_1 .* but list.txt:1 says"):
        read_lists(tmp_path)


def test_truncated_loading_must_stay_off(tree, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        validate_dataset(tree.images_dir, tree.annotations_dir)


def test_bad_inputs(tree, tmp_path):
    with pytest.raises(FileNotFoundError, match="images directory not found"):
        validate_dataset(tmp_path / "nope", tree.annotations_dir)
    with pytest.raises(FileNotFoundError, match="trimaps directory not found"):
        validate_dataset(tree.images_dir, tmp_path)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        validate_dataset(tree.images_dir, tree.annotations_dir, workers=0)


def test_synthetic_archives_are_official_layout_and_reproducible(tmp_path):
    a = make_pets_archives(tmp_path / "a", n_per_breed=1)
    b = make_pets_archives(tmp_path / "b", n_per_breed=1, plain_tar_for_images=True)
    assert a == make_pets_archives(tmp_path / "c", n_per_breed=1)  # same arguments, same bytes
    assert a["annotations.tar.gz"] == b["annotations.tar.gz"] and a["images.tar.gz"] != b["images.tar.gz"]
    sums = (tmp_path / "a" / "SHA256SUMS").read_text().splitlines()
    assert sums == [f"{a[n]}  {n}" for n in ("images.tar.gz", "annotations.tar.gz")]
    assert hashlib.sha256((tmp_path / "a" / "images.tar.gz").read_bytes()).hexdigest() == a["images.tar.gz"]
    assert (tmp_path / "a" / "images.tar.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert (tmp_path / "b" / "images.tar.gz").read_bytes()[:2] != b"\x1f\x8b"
    with tarfile.open(tmp_path / "b" / "images.tar.gz") as tar:
        names = tar.getnames()
    assert names[0] == "images" and "images/Abyssinian_1.jpg" in names and "images/._Abyssinian_1.jpg" in names
    with tarfile.open(tmp_path / "a" / "annotations.tar.gz") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    lists = read_lists(tmp_path / "x" / "annotations")
    assert lists["beagle_1"] == ListEntry(3, 2, 2, frozenset({"list", "trainval"}))
    assert (tmp_path / "x" / "annotations" / "trimaps" / "Bengal_1.png").is_file()
