"""Prediction galleries: colourised masks, overlays, contact sheets and a static HTML page.

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
import html
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from segpipe.data import CLASS_NAMES
from segpipe.fsutil import atomic_path, atomic_write_text, current_umask, tempdir_beside

PALETTE = np.array(
    [
        [230, 159, 0],  # pet: orange
        [0, 114, 178],  # background: blue
        [240, 228, 66],  # border: yellow
    ],
    dtype=np.uint8,
)
"""RGB colour of each label (row i = label i); Okabe-Ito colours, colour-blind safe."""

LEGEND: tuple[tuple[str, tuple[int, int, int]], ...] = tuple(
    (name, tuple(int(c) for c in PALETTE[i])) for i, name in enumerate(CLASS_NAMES)
)
"""(class name, RGB) per label, in label order."""

TAGS = ("worst", "sample")
PANELS = ("input", "ground truth", "prediction", "overlay")
MIN_PANEL = 128  # small images are upscaled (nearest neighbour) to at least this height
GAP = 4
ROWS_PER_SHEET = 16


# ---------------------------------------------------------------- pixels


def _labels(name: str, a: Any) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or arr.dtype.kind not in "iub":
        raise ValueError(f"{name} must be an HxW array of integer labels; got shape {arr.shape}, dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= len(PALETTE)):
        raise ValueError(f"{name} labels must lie in [0, {len(PALETTE)}); found {arr.min()}..{arr.max()}")
    return arr


def _rgb(name: str, a: Any) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(
            f"{name} must be an HxWx3 uint8 RGB image; got shape {arr.shape}, dtype {arr.dtype} "
            "(convert floats in [0, 1] with (np.clip(x, 0, 1) * 255).round().astype(np.uint8))"
        )
    return arr


def colorize(mask_labels: Any) -> np.ndarray:
    """HxW labels (0 pet, 1 background, 2 border) -> HxWx3 uint8 RGB using `PALETTE`."""
    return PALETTE[_labels("mask_labels", mask_labels)]


def overlay(image: Any, labels: Any, alpha: float = 0.5) -> np.ndarray:
    """Blend the label colours over `image`: round((1 - alpha) * image + alpha * colour)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha!r}")
    img = _rgb("image", image)
    colours = colorize(labels)
    if colours.shape != img.shape:
        raise ValueError(f"image {img.shape[:2]} and labels {colours.shape[:2]} must have the same height and width")
    blend = (1.0 - alpha) * img.astype(np.float64) + alpha * colours.astype(np.float64)
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def tile(image: Any, truth: Any, pred: Any, alpha: float = 0.5) -> np.ndarray:
    """One row: input | ground truth | prediction | prediction overlay, upscaled if small."""
    img = _rgb("image", image)
    panels = [img, colorize(truth), colorize(pred), overlay(img, pred, alpha)]
    if any(p.shape != img.shape for p in panels):
        raise ValueError(
            f"image {img.shape[:2]}, truth {np.shape(truth)[:2]} and pred {np.shape(pred)[:2]} must have the same size"
        )
    scale = max(1, math.ceil(MIN_PANEL / max(1, img.shape[0])))
    if scale > 1:
        panels = [p.repeat(scale, axis=0).repeat(scale, axis=1) for p in panels]
    h, w = panels[0].shape[:2]
    out = np.full((h, 4 * w + 3 * GAP, 3), 255, dtype=np.uint8)
    for i, p in enumerate(panels):
        out[:, i * (w + GAP): i * (w + GAP) + w] = p
    return out


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


def _contact_sheet(tiles: list[np.ndarray], captions: list[str]) -> np.ndarray:
    font = ImageFont.load_default()
    line = 16
    width = max(t.shape[1] for t in tiles)
    height = line + sum(line + t.shape[0] + GAP for t in tiles)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    panel_w = (tiles[0].shape[1] - 3 * GAP) // 4
    for i, label in enumerate(PANELS):
        draw.text((i * (panel_w + GAP) + 2, 2), label, fill="black", font=font)
    y = line
    for t, caption in zip(tiles, captions):
        draw.text((2, y + 2), caption, fill="black", font=font)
        sheet.paste(Image.fromarray(t), (0, y + line))
        y += line + t.shape[0] + GAP
    return np.asarray(sheet)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; } table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: middle; }
th { background: #eee; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.legend span.swatch { display: inline-block; width: 1em; height: 1em; border: 1px solid #555;
  vertical-align: middle; margin: 0 0.3em 0 1em; }
img.tile { max-width: 720px; image-rendering: pixelated; }
.tag-worst { color: #b00; font-weight: bold; } .tag-sample { color: #555; }
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4f}"
    return str(value)


def _metrics_html(metrics: dict[str, Any]) -> str:
    rows = [
        f"<tr><th>{html.escape(str(k))}</th><td class='num'>{html.escape(_fmt(v))}</td></tr>"
        for k, v in metrics.items()
        if not isinstance(v, (dict, list))
    ]
    per_class = metrics.get("iou")
    if isinstance(per_class, dict):
        dice = metrics.get("dice_per_class") or {}
        rows += [
            f"<tr><th>IoU / Dice: {html.escape(str(name))}</th>"
            f"<td class='num'>{html.escape(_fmt(iou))} / {html.escape(_fmt(dice.get(name)))}</td></tr>"
            for name, iou in per_class.items()
        ]
    return "<h2>Metrics</h2>\n<table class='metrics'>\n" + "\n".join(rows) + "\n</table>"


def _href(name: str) -> str:
    return html.escape(quote(name), quote=True)


def _index_html(title: str, metrics: dict[str, Any] | None, records: list[dict[str, Any]], sheets: list[str]) -> str:
    esc = html.escape
    legend = "".join(
        f"<span class='swatch' style='background: rgb{rgb}'></span>{esc(name)}" for name, rgb in LEGEND
    )
    rows = "\n".join(
        f"<tr><td class='num'>{i + 1}</td><td>{esc(str(r['id']))}</td><td class='num'>{r['iou']:.4f}</td>"
        f"<td class='tag-{esc(r['tag'])}'>{esc(r['tag'])}</td>"
        f"<td><a href='{_href(r['tile'])}'><img class='tile' src='{_href(r['tile'])}' "
        f"alt='{esc(str(r['id']), quote=True)}'></a></td></tr>"
        for i, r in enumerate(records)
    )
    sheet_links = " ".join(f"<a href='{_href(s)}'>{esc(s)}</a>" for s in sheets) or "none"
    body = [
        f"<h1>{esc(title)}</h1>",
        f"<p class='legend'>Colours:{legend}</p>",
        f"<p>Panels: {esc(' | '.join(PANELS))} (prediction over input). Contact sheets: {sheet_links}</p>",
        _metrics_html(metrics) if metrics else "",
        f"<h2>Items ({len(records)})</h2>",
        "<table class='items'><tr><th>#</th><th>id</th><th>IoU</th><th>tag</th><th>images</th></tr>",
        rows if rows else "<tr><td colspan='5'>No items.</td></tr>",
        "</table>",
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(b for b in body if b)
        + "\n</body></html>\n"
    )


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
        records, tiles = [], []
        for i, item in enumerate(items):
            pixels = tile(item["image"], item["truth"], item["pred"])
            name = f"tiles/{i:03d}-{safe_filename(str(item['id']))}.png"
            _save_png(work / name, pixels)
            tiles.append(pixels)
            records.append({"id": item["id"], "iou": float(item["iou"]), "tag": item["tag"], "tile": name})
        sheets = []
        for s, start in enumerate(range(0, len(tiles), ROWS_PER_SHEET)):
            chunk = slice(start, start + ROWS_PER_SHEET)
            sheets.append(f"contact-sheet-{s:03d}.png")
            _save_png(work / sheets[-1], _contact_sheet(tiles[chunk], [_caption(it) for it in items[chunk]]))
        manifest = [{**r, "id": str(r["id"])} for r in records]
        atomic_write_text(work / "items.json", json.dumps({"title": title, "items": manifest, "sheets": sheets}, indent=2))
        atomic_write_text(work / "index.html", _index_html(title, metrics, records, sheets))
        work.chmod(0o777 & ~current_umask())  # mkdtemp makes it 0700; honour the user's umask
        _replace_dir(work, target)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
        raise
    return target / "index.html"
