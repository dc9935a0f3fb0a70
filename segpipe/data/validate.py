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

import io
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from segpipe import cancel
from segpipe.data import CLASS_NAMES
from segpipe.fsutil import atomic_write_json, atomic_write_text

LIST_FILES: dict[str, str] = {"list": "list.txt", "trainval": "trainval.txt", "test": "test.txt"}
TRIMAP_VALUES = (1, 2, 3)
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass(frozen=True)
class ListEntry:
    """One id's row in the list files, and which of them name it."""

    class_id: int
    species: int
    breed_id: int
    lists: frozenset[str]


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


def breed_of(example_id: str) -> str:
    """`Abyssinian_82` -> `Abyssinian`; `american_bulldog_1` -> `american_bulldog`."""
    m = re.fullmatch(r"(.+)_\d+", example_id)
    return m.group(1) if m else example_id


def read_lists(annotations_dir: str | Path) -> dict[str, ListEntry]:
    """Parse list.txt, trainval.txt and test.txt (`Image CLASS-ID SPECIES BREED-ID`, `#` comments).

    Files that are absent are skipped; at least one must exist. An id whose
    rows disagree between files is an error.
    """
    annotations_dir = _subdir(Path(annotations_dir), "annotations")
    rows: dict[str, tuple[int, int, int]] = {}
    lists: dict[str, set[str]] = {}
    source: dict[str, str] = {}
    present = [(name, annotations_dir / fname) for name, fname in LIST_FILES.items()]
    present = [(name, p) for name, p in present if p.is_file()]
    if not present:
        raise FileNotFoundError(
            f"no list file in {annotations_dir}: expected one of {', '.join(LIST_FILES.values())}"
        )
    for name, path in present:
        for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            image_id, row = _parse_row(line, f"{path}:{lineno}")
            if image_id in rows and rows[image_id] != row:
                raise ValueError(
                    f"{path}:{lineno}: {image_id} has CLASS-ID/SPECIES/BREED-ID {row}, "
                    f"but {source[image_id]} says {rows[image_id]}"
                )
            rows.setdefault(image_id, row)
            source.setdefault(image_id, f"{path.name}:{lineno}")
            lists.setdefault(image_id, set()).add(name)
    return {i: ListEntry(*rows[i], lists=frozenset(lists[i])) for i in sorted(rows)}


def _parse_row(line: str, where: str) -> tuple[str, tuple[int, int, int]]:
    parts = line.split()
    try:
        if len(parts) < 4:
            raise ValueError
        class_id, species, breed_id = (int(p) for p in parts[1:4])
    except ValueError:
        raise ValueError(f"{where}: expected 'Image CLASS-ID SPECIES BREED-ID', got {line!r}") from None
    if not (1 <= class_id <= 37 and species in (1, 2) and breed_id >= 1):
        raise ValueError(f"{where}: expected CLASS-ID 1..37, SPECIES 1|2, BREED-ID >= 1, got {line!r}")
    return parts[0], (class_id, species, breed_id)


def _subdir(path: Path, name: str) -> Path:
    """Accept either `<root>/<name>` itself or its parent `<root>`."""
    if not path.is_dir():
        raise FileNotFoundError(f"{name} directory not found: {path}")
    return path / name if path.name != name and (path / name).is_dir() else path


# --------------------------------------------------------------------------- decoding


def _check_no_truncated_loading() -> None:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True somewhere in this process; "
            "validation would silently accept truncated images. Leave it False."
        )


def _open_image(path: Path, *, reduced_jpeg: bool = False) -> Image.Image:
    """Open by content and decode fully (raises on zero-byte, unknown or truncated files).

    With `reduced_jpeg`, a JPEG is decoded at 1/8 scale (libjpeg's DCT scaling):
    every byte of the file is still read and entropy-decoded, so truncated and
    unreadable files fail exactly as in a full decode, for about a third of the
    CPU; only the inverse DCT and colour conversion are cheaper. `img.size` is
    then the reduced size; the full size is in `img.info["full_size"]`. For
    validation, which needs to know the file decodes, not its pixels.
    """
    if path.stat().st_size == 0:
        raise ValueError("zero-byte file")
    try:
        img = Image.open(path)
    except UnidentifiedImageError:
        raise ValueError("not a recognisable image") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ValueError(f"unreadable header ({exc})") from None
    img.info["full_size"] = img.size
    try:
        if reduced_jpeg and img.format == "JPEG":
            img.draft(img.mode, (1, 1))
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        img.close()
        raise ValueError(f"undecodable {img.format} ({exc})") from None
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB conversion used for every non-JPEG image; 16-bit images are scaled, not clipped."""
    if img.mode in _SIXTEEN_BIT_MODES:
        gray = (np.clip(np.asarray(img, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    return img.convert("RGB")


def _describe_conversion(img: Image.Image, path: Path) -> str:
    named = "" if img.format == "JPEG" else f" named {path.suffix}"
    frames = getattr(img, "n_frames", 1)
    extra = f" (first of {frames} frames)" if frames > 1 else ""
    if img.mode in _SIXTEEN_BIT_MODES:
        extra += " (16-bit scaled to 8-bit)"
    return f"{img.format} {img.mode}{named} converted to RGB{extra}"


def _trimap_array(path: Path) -> np.ndarray:
    """The trimap as a 2-D uint8 array with values in {1, 2, 3}; ValueError with a reason otherwise."""
    return _trimap_counted(path)[0]


def _trimap_counted(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(trimap array, counts of each value 0..255); the counts also give the class pixel shares."""
    with _open_image(path) as img:
        return _trimap_values(img)


def _trimap_values(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    if img.mode in ("L", "P", "I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img)  # palette images: the indices are the labels
    elif img.mode in ("LA", "PA"):
        arr = np.asarray(img)[..., 0]
    elif img.mode in ("RGB", "RGBA"):
        rgb = np.asarray(img)[..., :3]
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
            raise ValueError(f"{img.mode} with differing channels (expected one channel)")
        arr = rgb[..., 0]
    else:
        raise ValueError(f"unsupported mode {img.mode}")
    if arr.dtype != np.uint8:  # 16/32-bit: range-check before narrowing
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 1 or hi > 3:
            bad = sorted({lo, hi} - set(TRIMAP_VALUES))
            raise ValueError(f"values {bad} outside {{1, 2, 3}}")
        arr = arr.astype(np.uint8)
    # One linear pass (np.unique sorts every pixel: ~4x slower, and this runs once per trimap).
    counts = np.bincount(arr.ravel(), minlength=256)
    bad = [v for v in np.flatnonzero(counts).tolist() if v not in TRIMAP_VALUES]
    if bad:
        raise ValueError(f"values {bad[:5]} outside {{1, 2, 3}}")
    return arr, counts


def load_image_rgb(example: Example) -> tuple[bytes, str]:
    """The image bytes to store: the original JPEG, or a lossless RGB PNG of the conversion."""
    if example.image_format == "jpeg":
        return example.image_path.read_bytes(), "jpeg"
    buf = io.BytesIO()
    with _open_image(example.image_path) as img:
        to_rgb(img).save(buf, format="PNG")
    return buf.getvalue(), "png"


def load_trimap_png(example: Example) -> bytes:
    """The trimap as a single-channel 8-bit PNG with values 1..3."""
    buf = io.BytesIO()
    Image.fromarray(_trimap_array(example.trimap_path)).save(buf, format="PNG")
    return buf.getvalue()


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
                out.image_format, out.conversion = "png", _describe_conversion(img, image_path)
    except ValueError as exc:
        out.skip_file, out.skip_reason = f"images/{image_path.name}", str(exc)
        return out
    trimap_file = f"annotations/trimaps/{trimap_path.name}"
    if not trimap_path.is_file():
        out.skip_file, out.skip_reason = trimap_file, "missing trimap"
        return out
    try:
        arr, counts = _trimap_counted(trimap_path)
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
    _check_no_truncated_loading()
    images_dir = _subdir(Path(images_dir), "images")
    annotations_dir = _subdir(Path(annotations_dir), "annotations")
    trimaps_dir = annotations_dir / "trimaps"
    if not trimaps_dir.is_dir():
        raise FileNotFoundError(f"trimaps directory not found: {trimaps_dir}")
    lists = read_lists(annotations_dir)

    all_files = sorted(images_dir.iterdir())
    ignored = [p.name for p in all_files if _is_ignorable(p)]
    images = {p.stem: p for p in all_files if not _is_ignorable(p)}
    ids = sorted(images)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        checked = list(pool.map(lambda i: _check_pair(i, images[i], trimaps_dir / f"{i}.png"), ids))

    by_breed: dict[str, ListEntry | None] = {}
    for image_id, entry in lists.items():
        b = breed_of(image_id)
        prev = by_breed.get(b, entry)
        same = prev is not None and (prev.class_id, prev.species, prev.breed_id) == (
            entry.class_id, entry.species, entry.breed_id)
        by_breed[b] = entry if same else None  # None: the breed's rows disagree, infer nothing

    report = ValidationReport(examples=[], ignored=ignored)
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
    for image_id, entry in lists.items():
        if image_id not in images:
            names = ", ".join(LIST_FILES[n] for n in sorted(entry.lists))
            report.missing.append({"id": image_id, "file": f"images/{image_id}.jpg",
                                   "reason": f"listed in {names} but the image file is missing"})

    total = int(pixels.sum())
    report.class_pixel_shares = {n: (float(p) / total if total else 0.0) for n, p in zip(CLASS_NAMES, pixels)}
    report.per_breed = dict(sorted(breeds.items(), key=lambda kv: kv[0].lower()))
    report.counts = {
        "images_found": len(ids),
        "valid": len(report.examples),
        "skipped": len(report.skipped),
        "converted": len(report.converted),
        "class_inferred": sum(1 for r in report.inferred if "inferred from breed" in r["reason"]),
        "not_in_any_list": len(report.inferred),
        "listed_but_missing": len(report.missing),
        "non_image_files_ignored": len(ignored),
    }
    return report


def write_validation(report: ValidationReport, dataset_dir: str | Path) -> tuple[Path, Path]:
    """Write `validation.json` and `validation.md` into `dataset_dir`, atomically."""
    dataset_dir = Path(dataset_dir)
    json_path = atomic_write_json(dataset_dir / "validation.json", report.to_dict())
    md_path = atomic_write_text(dataset_dir / "validation.md", report.to_markdown())
    return json_path, md_path
