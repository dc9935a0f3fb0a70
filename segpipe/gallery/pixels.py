"""The gallery's pictures: colourised masks, overlays, one tile per image and contact sheets (numpy + Pillow).

Pure numpy + Pillow (no TensorFlow); `segpipe.gallery.render` writes them to disk.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from segpipe.data import CLASS_NAMES

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

PANELS = ("input", "ground truth", "prediction", "overlay")
MIN_PANEL = 128  # small images are upscaled (nearest neighbour) to at least this height
GAP = 4


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



def contact_sheet(tiles: list[np.ndarray], captions: list[str]) -> np.ndarray:
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

