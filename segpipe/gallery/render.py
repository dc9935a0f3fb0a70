"""Prediction galleries: colourised masks, overlays, contact sheets and a static HTML page.

The pictures are drawn in `segpipe.gallery.pixels`, the page in `segpipe.gallery.html`; this module picks
the images (`select_items`) and writes the gallery (`render_gallery`).

Pure numpy + Pillow (no TensorFlow). `render_gallery` writes:

    out_dir/index.html               self-contained page (inline CSS, relative links only)
    out_dir/items.json               id, iou, tag and tile file of every item
    out_dir/tiles/NNN-<id>.png       input | ground truth | prediction | overlay
    out_dir/contact-sheet-NNN.png    rows of tiles with "id  IoU 0.73" captions

The gallery is built in a temporary directory beside `out_dir` and renamed into
place once complete, so a reader never sees half a gallery.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from segpipe.fsutil import atomic_path, atomic_write_text, current_umask, tempdir_beside
from segpipe.gallery.html import index_html
from segpipe.progress import Progress
# the pictures: importable from here too, as before gallery_pixels.py held them
from segpipe.gallery.pixels import (  # noqa: F401
    GAP,
    LEGEND,
    MIN_PANEL,
    PALETTE,
    PANELS,
    colorize,
    contact_sheet,
    overlay,
    tile,
)

TAGS = ("worst", "sample")
ROWS_PER_SHEET = 16
INDEX = "index.html"


def gallery_complete(out_dir: str | os.PathLike[str]) -> bool:
    """True when `out_dir` holds a whole gallery: it is built in a temporary directory and renamed into place
    with its index.html, so the page exists only once everything it links to does."""
    return (Path(out_dir) / INDEX).is_file()


# ---------------------------------------------------------------- selection


def select_items(per_image: Sequence[dict[str, Any]], n_sample: int, n_worst: int, seed: int) -> list[dict[str, Any]]:
    """The `n_worst` lowest-IoU items, then `n_sample` seeded random others; copies with a `tag` key.

    Worst items are ordered by IoU ascending (ties keep input order); sampled
    items keep input order. No item appears twice; the result depends only on
    the inputs and `seed`.
    """
    for name, n in (("n_sample", n_sample), ("n_worst", n_worst)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"{name} must be a non-negative integer; got {n!r}")
    seen: set[Any] = set()
    for i, item in enumerate(per_image):
        if "id" not in item or "iou" not in item:
            raise ValueError(f"per_image[{i}] must have 'id' and 'iou' keys; got keys {sorted(item)}")
        if not isinstance(item["iou"], (int, float, np.floating, np.integer)) or not math.isfinite(item["iou"]):
            raise ValueError(f"per_image[{i}] (id {item['id']!r}) needs a finite 'iou'; got {item['iou']!r}")
        if item["id"] in seen:
            raise ValueError(f"per_image has duplicate id {item['id']!r}")
        seen.add(item["id"])
    order = sorted(range(len(per_image)), key=lambda i: float(per_image[i]["iou"]))
    worst = order[:n_worst]
    rest = sorted(set(range(len(per_image))) - set(worst))
    k = min(n_sample, len(rest))
    sample = sorted(np.random.default_rng(seed).choice(rest, size=k, replace=False).tolist()) if k else []
    return [{**per_image[i], "tag": "worst"} for i in worst] + [{**per_image[i], "tag": "sample"} for i in sample]


# ---------------------------------------------------------------- rendering


def safe_filename(text: str, max_len: int = 80) -> str:
    """`text` reduced to [A-Za-z0-9._-] (others become '_'), no leading dot, at most `max_len` chars."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", str(text)).lstrip(".")[:max_len]
    return name or "item"


def _check_item(i: int, item: dict[str, Any]) -> None:
    missing = [k for k in ("id", "image", "truth", "pred", "iou", "tag") if k not in item]
    if missing:
        raise ValueError(f"items[{i}] is missing keys {missing}")
    if item["tag"] not in TAGS:
        raise ValueError(f"items[{i}] tag must be one of {TAGS}; got {item['tag']!r}")
    if not isinstance(item["iou"], (int, float, np.floating, np.integer)) or not math.isfinite(item["iou"]):
        raise ValueError(f"items[{i}] iou must be a finite number; got {item['iou']!r}")


def _caption(item: dict[str, Any]) -> str:
    ident = str(item["id"]).encode("ascii", "replace").decode()  # the default font may lack other glyphs
    ident = ident if len(ident) <= 60 else ident[:57] + "..."
    return f"{ident}  IoU {float(item['iou']):.2f}  [{item['tag']}]"


def _save_png(path: Path, pixels: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


def _replace_dir(new: Path, target: Path) -> None:
    """Move the complete directory `new` to `target`, removing any previous `target` afterwards."""
    if target.exists() and not target.is_dir():
        raise ValueError(f"out_dir {target} exists and is not a directory")
    old = None
    if target.exists():
        old = tempdir_beside(target.with_name(target.name + ".old"))
        os.replace(target, old / "gallery")
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def render_gallery(
    items: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str], *, title: str, metrics: dict[str, Any] | None = None
) -> Path:
    """Write tiles, contact sheets, items.json and index.html to `out_dir`; return the index.html path.

    Each item needs id, image (HxWx3 uint8), truth and pred (HxW labels 0..2),
    iou (float) and tag ("worst" or "sample"). An existing gallery at `out_dir`
    is replaced only after the new one is complete.
    """
    items = list(items)
    for i, item in enumerate(items):
        _check_item(i, item)
    target = Path(out_dir)
    work = tempdir_beside(target)
    try:
        records, tiles = _write_tiles(items, work)
        sheets = _write_contact_sheets(items, tiles, work)
        manifest = [{**r, "id": str(r["id"])} for r in records]
        atomic_write_text(work / "items.json", json.dumps({"title": title, "items": manifest, "sheets": sheets}, indent=2))
        atomic_write_text(work / INDEX, index_html(title, metrics, records, sheets))
        work.chmod(0o777 & ~current_umask())  # mkdtemp makes it 0700; honour the user's umask
        _replace_dir(work, target)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
        raise
    return target / INDEX


def _write_tiles(items: list[dict[str, Any]], work: Path) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """tiles/NNN-<id>.png for every item; its record (id, iou, tag, tile) and pixels."""
    records, tiles = [], []
    with Progress("gallery tiles", len(items)) as progress:
        for i, item in enumerate(items):
            pixels = tile(item["image"], item["truth"], item["pred"])
            name = f"tiles/{i:03d}-{safe_filename(str(item['id']))}.png"
            _save_png(work / name, pixels)
            tiles.append(pixels)
            records.append({"id": item["id"], "iou": float(item["iou"]), "tag": item["tag"], "tile": name})
            progress.advance()
    return records, tiles


def _write_contact_sheets(items: list[dict[str, Any]], tiles: list[np.ndarray], work: Path) -> list[str]:
    """contact-sheet-NNN.png, `ROWS_PER_SHEET` captioned tiles each; their names."""
    sheets = []
    for s, start in enumerate(range(0, len(tiles), ROWS_PER_SHEET)):
        chunk = slice(start, start + ROWS_PER_SHEET)
        sheets.append(f"contact-sheet-{s:03d}.png")
        _save_png(work / sheets[-1], contact_sheet(tiles[chunk], [_caption(it) for it in items[chunk]]))
    return sheets
