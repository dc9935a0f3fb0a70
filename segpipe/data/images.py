"""Decoding images and trimaps with Pillow, by content, never by extension.

Used by validation (does a file decode, to what), the TFRecord writer (the bytes
to store) and prediction (`to_rgb`). Every failure to decode is a `ValueError`
whose message is the reason, ready for a validation report.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

# The one RGB conversion, shared with every export's runtime (re-exported here for validation and the writer).
from segpipe.export.runtime import SIXTEEN_BIT_MODES, to_rgb  # noqa: F401

if TYPE_CHECKING:
    from segpipe.data.validate import Example


TRIMAP_VALUES = (1, 2, 3)


def check_no_truncated_loading() -> None:
    """A RuntimeError when Pillow has been told to accept truncated images anywhere in this process."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True somewhere in this process; "
            "validation would silently accept truncated images. Leave it False."
        )


def open_image(path: Path, *, reduced_jpeg: bool = False) -> Image.Image:
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


def describe_conversion(img: Image.Image, path: Path) -> str:
    """How `img` (read from `path`) is converted to RGB, for the validation report."""
    named = "" if img.format == "JPEG" else f" named {path.suffix}"
    frames = getattr(img, "n_frames", 1)
    extra = f" (first of {frames} frames)" if frames > 1 else ""
    if img.mode in SIXTEEN_BIT_MODES:
        extra += " (16-bit scaled to 8-bit)"
    return f"{img.format} {img.mode}{named} converted to RGB{extra}"


def trimap_array(path: Path) -> np.ndarray:
    """The trimap as a 2-D uint8 array with values in {1, 2, 3}; ValueError with a reason otherwise."""
    return trimap_counted(path)[0]


def trimap_counted(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(trimap array, counts of each value 0..255); the counts also give the class pixel shares."""
    with open_image(path) as img:
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


def load_image_rgb(example: "Example") -> tuple[bytes, str]:
    """The image bytes to store: the original JPEG, or a lossless RGB PNG of the conversion."""
    if example.image_format == "jpeg":
        return example.image_path.read_bytes(), "jpeg"
    buf = io.BytesIO()
    with open_image(example.image_path) as img:
        to_rgb(img).save(buf, format="PNG")
    return buf.getvalue(), "png"


def load_trimap_png(example: "Example") -> bytes:
    """The trimap as a single-channel 8-bit PNG with values 1..3."""
    buf = io.BytesIO()
    Image.fromarray(trimap_array(example.trimap_path)).save(buf, format="PNG")
    return buf.getvalue()
