"""Validate and catalog the extracted Oxford-IIIT Pet files.

Every `images/<id>.jpg` is paired with `annotations/trimaps/<id>.png` and both
are fully decoded. Images are identified by their content, never by their
extension (the real dataset has PNGs, GIFs, CMYK and corrupt files named .jpg):

- a clean RGB JPEG that decodes completely is kept byte for byte (format "jpeg");
- anything else Pillow can decode is converted to RGB and stored as PNG ("png");
- zero-byte, truncated or undecodable files are skipped, with the reason.

A trimap must decode to one channel with values in {1, 2, 3} and the image's
size. Ids missing from every list file still count as examples; their class
is inferred from the breed (the id without its trailing `_<n>`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segpipe import cancel
from segpipe.data import CLASS_NAMES
from segpipe.data.images import check_no_truncated_loading, describe_conversion, trimap_counted
from segpipe.data.images import open_image as _open_image  # by this name: tests stop validation mid-way through it
from segpipe.data.lists import LIST_FILES, ListEntry, find_subdir, read_lists
from segpipe.data.names import breed_of
from segpipe.fsutil import atomic_write_json, atomic_write_text
from segpipe.progress import Progress


@dataclass(frozen=True)
class Example:
    """A validated image/trimap pair, ready to be written to a TFRecord."""

    id: str
    image_path: Path
    trimap_path: Path
    image_format: str  # "jpeg": store the original bytes; "png": convert to RGB PNG
    height: int
    width: int
    class_id: int  # 1..37, 0 when unknown
    species: int  # 1 cat, 2 dog, 0 when unknown
    breed_id: int  # within species, 0 when unknown
    breed: str
    lists: frozenset[str]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_path"], d["trimap_path"] = self.image_path.name, self.trimap_path.name
        d["lists"] = sorted(self.lists)
        return d


@dataclass
class ValidationReport:
    """What validation found; `examples` are the valid pairs, sorted by id."""

    examples: list[Example]
    skipped: list[dict[str, str]] = field(default_factory=list)
    converted: list[dict[str, str]] = field(default_factory=list)
    inferred: list[dict[str, str]] = field(default_factory=list)
    missing: list[dict[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    class_pixel_shares: dict[str, float] = field(default_factory=dict)
    per_breed: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Everything but the per-example catalog (for the dataset manifest)."""
        d = self.to_dict()
        d.pop("examples")
        return d

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "class_pixel_shares": dict(self.class_pixel_shares),
            "skipped": list(self.skipped),
            "converted": list(self.converted),
            "inferred": list(self.inferred),
            "missing": list(self.missing),
            "ignored": list(self.ignored),
            "per_breed": dict(self.per_breed),
            "examples": [e.to_dict() for e in self.examples],
        }

    def to_markdown(self) -> str:
        lines = ["# Dataset validation", "", "| count | value |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in self.counts.items()]
        for title, rows in (
            ("Skipped", self.skipped),
            ("Converted to RGB", self.converted),
            ("Class inferred / not in any list", self.inferred),
            ("Listed but missing", self.missing),
        ):
            lines += ["", f"## {title} ({len(rows)})", ""]
            if rows:
                lines += ["| id | file | reason |", "|---|---|---|"]
                lines += [f"| {r['id']} | {r['file']} | {r['reason']} |" for r in rows]
            else:
                lines.append("none")
        lines += ["", "## Class pixel shares (valid trimaps)", "", "| class | share |", "|---|---:|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in self.class_pixel_shares.items()]
        lines += ["", "## Per breed", "", "| breed | class_id | species | valid | skipped |",
                  "|---|---:|---:|---:|---:|"]
        lines += [
            f"| {b} | {c['class_id']} | {c['species']} | {c['valid']} | {c['skipped']} |"
            for b, c in self.per_breed.items()
        ]
        if self.ignored:
            lines += ["", f"Ignored non-image files: {', '.join(self.ignored)}"]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- validation


@dataclass
class _Checked:
    id: str
    image_format: str = ""
    size: tuple[int, int] = (0, 0)  # (height, width)
    conversion: str = ""
    skip_file: str = ""
    skip_reason: str = ""
    pixels: tuple[int, int, int] = (0, 0, 0)  # counts of trimap values 1, 2, 3


def _check_pair(image_id: str, image_path: Path, trimap_path: Path) -> _Checked:
    cancel.check(f"validating {image_id}")
    out = _Checked(image_id)
    try:
        with _open_image(image_path, reduced_jpeg=True) as img:
            width, height = img.info["full_size"]
            out.size = (height, width)
            if img.format == "JPEG" and img.mode == "RGB":
                out.image_format = "jpeg"
            else:
                out.image_format, out.conversion = "png", describe_conversion(img, image_path)
    except ValueError as exc:
        out.skip_file, out.skip_reason = f"images/{image_path.name}", str(exc)
        return out
    trimap_file = f"annotations/trimaps/{trimap_path.name}"
    if not trimap_path.is_file():
        out.skip_file, out.skip_reason = trimap_file, "missing trimap"
        return out
    try:
        arr, counts = trimap_counted(trimap_path)
    except ValueError as exc:
        out.skip_file, out.skip_reason = trimap_file, f"trimap: {exc}"
        return out
    if arr.shape != out.size:
        out.skip_file = trimap_file
        out.skip_reason = f"trimap size {arr.shape[1]}x{arr.shape[0]} != image size {out.size[1]}x{out.size[0]}"
        return out
    # Plain ints, not a numpy array: results outlive the worker thread, and a small malloc'd
    # block kept from each one pins that thread's heap (RSS grew ~100 KB per image).
    out.pixels = tuple(int(n) for n in counts[1:4])
    return out


def _is_ignorable(path: Path) -> bool:
    return path.name.startswith(".") or path.suffix != ".jpg" or not path.is_file()


def _class_info(
    image_id: str, lists: dict[str, ListEntry], by_breed: dict[str, ListEntry | None]
) -> tuple[int, int, int, str]:
    """(class_id, species, breed_id, note); note is empty when the id is listed."""
    if image_id in lists:
        e = lists[image_id]
        return e.class_id, e.species, e.breed_id, ""
    breed = breed_of(image_id)
    known = by_breed.get(breed)
    if known is not None:
        return known.class_id, known.species, known.breed_id, "in no list file; class inferred from breed"
    species = 1 if breed[:1].isupper() else 2
    return 0, species, 0, "in no list file; breed unknown: class 0, species guessed from capitalisation"


def validate_dataset(images_dir: Path, annotations_dir: Path, workers: int = 2) -> ValidationReport:
    """Decode and check every image/trimap pair; see the module docstring for the policy."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    check_no_truncated_loading()
    images_dir, annotations_dir, trimaps_dir = _locate_dirs(images_dir, annotations_dir)
    lists = read_lists(annotations_dir)
    images, ignored = _scan_images(images_dir)
    checked = _check_pairs(images, trimaps_dir, workers)
    report = ValidationReport(examples=[], ignored=ignored)
    pixels, breeds = _catalog(report, checked, images, trimaps_dir, lists)
    report.missing = _listed_but_missing(lists, images)
    _summarise(report, pixels, breeds, images_found=len(images))
    return report


def _locate_dirs(images_dir: Path, annotations_dir: Path) -> tuple[Path, Path, Path]:
    """(images, annotations, trimaps) directories; a FileNotFoundError naming any that is missing."""
    images_dir = find_subdir(Path(images_dir), "images")
    annotations_dir = find_subdir(Path(annotations_dir), "annotations")
    trimaps_dir = annotations_dir / "trimaps"
    if not trimaps_dir.is_dir():
        raise FileNotFoundError(f"trimaps directory not found: {trimaps_dir}")
    return images_dir, annotations_dir, trimaps_dir


def _scan_images(images_dir: Path) -> tuple[dict[str, Path], list[str]]:
    """({id: image path} of every `.jpg`, sorted by id; names of the files ignored)."""
    all_files = sorted(images_dir.iterdir())
    ignored = [p.name for p in all_files if _is_ignorable(p)]
    images = {p.stem: p for p in all_files if not _is_ignorable(p)}
    return dict(sorted(images.items())), ignored


def _check_pairs(images: dict[str, Path], trimaps_dir: Path, workers: int) -> list[_Checked]:
    """Decode every image and its trimap, `workers` at a time; results in id order, with progress."""
    checked: list[_Checked] = []
    with ThreadPoolExecutor(max_workers=workers) as pool, Progress("validate", len(images)) as progress:
        for result in pool.map(lambda i: _check_pair(i, images[i], trimaps_dir / f"{i}.png"), images):
            checked.append(result)
            progress.advance()
    return checked


def _entries_by_breed(lists: dict[str, ListEntry]) -> dict[str, ListEntry | None]:
    """Each breed's list row; None where the breed's rows disagree (infer nothing from it)."""
    by_breed: dict[str, ListEntry | None] = {}
    for image_id, entry in lists.items():
        b = breed_of(image_id)
        prev = by_breed.get(b, entry)
        same = prev is not None and (prev.class_id, prev.species, prev.breed_id) == (
            entry.class_id, entry.species, entry.breed_id)
        by_breed[b] = entry if same else None
    return by_breed


def _catalog(
    report: ValidationReport, checked: list[_Checked], images: dict[str, Path], trimaps_dir: Path,
    lists: dict[str, ListEntry],
) -> tuple[np.ndarray, dict[str, dict[str, int]]]:
    """Fill `report`'s examples, skipped, converted and inferred rows; returns (trimap value counts, per breed)."""
    by_breed = _entries_by_breed(lists)
    pixels = np.zeros(3, dtype=np.int64)
    breeds: dict[str, dict[str, int]] = {}
    for c in checked:
        class_id, species, breed_id, note = _class_info(c.id, lists, by_breed)
        breed = breed_of(c.id)
        row = breeds.setdefault(breed, {"class_id": class_id, "species": species, "valid": 0, "skipped": 0})
        if c.skip_reason:
            report.skipped.append({"id": c.id, "file": c.skip_file, "reason": c.skip_reason})
            row["skipped"] += 1
            continue
        row["valid"] += 1
        image_file = f"images/{images[c.id].name}"
        if c.conversion:
            report.converted.append({"id": c.id, "file": image_file, "reason": c.conversion})
        if note:
            report.inferred.append({"id": c.id, "file": image_file, "reason": note})
        pixels += np.asarray(c.pixels, dtype=np.int64)
        report.examples.append(Example(
            id=c.id, image_path=images[c.id], trimap_path=trimaps_dir / f"{c.id}.png",
            image_format=c.image_format, height=c.size[0], width=c.size[1],
            class_id=class_id, species=species, breed_id=breed_id, breed=breed,
            lists=lists[c.id].lists if c.id in lists else frozenset(),
        ))
    return pixels, breeds


def _listed_but_missing(lists: dict[str, ListEntry], images: dict[str, Path]) -> list[dict[str, str]]:
    missing = []
    for image_id, entry in lists.items():
        if image_id not in images:
            names = ", ".join(LIST_FILES[n] for n in sorted(entry.lists))
            missing.append({"id": image_id, "file": f"images/{image_id}.jpg",
                            "reason": f"listed in {names} but the image file is missing"})
    return missing


def _summarise(report: ValidationReport, pixels: np.ndarray, breeds: dict[str, dict[str, int]],
               images_found: int) -> None:
    """Set the report's class pixel shares, per-breed table and counts."""
    total = int(pixels.sum())
    report.class_pixel_shares = {n: (float(p) / total if total else 0.0) for n, p in zip(CLASS_NAMES, pixels)}
    report.per_breed = dict(sorted(breeds.items(), key=lambda kv: kv[0].lower()))
    report.counts = {
        "images_found": images_found,
        "valid": len(report.examples),
        "skipped": len(report.skipped),
        "converted": len(report.converted),
        "class_inferred": sum(1 for r in report.inferred if "inferred from breed" in r["reason"]),
        "not_in_any_list": len(report.inferred),
        "listed_but_missing": len(report.missing),
        "non_image_files_ignored": len(report.ignored),
    }


def write_validation(report: ValidationReport, dataset_dir: str | Path) -> tuple[Path, Path]:
    """Write `validation.json` and `validation.md` into `dataset_dir`, atomically."""
    dataset_dir = Path(dataset_dir)
    json_path = atomic_write_json(dataset_dir / "validation.json", report.to_dict())
    md_path = atomic_write_text(dataset_dir / "validation.md", report.to_markdown())
    return json_path, md_path
