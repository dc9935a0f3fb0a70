"""Predict segmentation masks for image files with a saved model (or an ensemble).

    report = predict_paths([Path("model.keras")], [Path("photos/"), Path("cat.jpg")], Path("out"))

Outputs, for an input `<stem>.<ext>`:

    out/<stem>_mask.png      single-channel 8-bit PNG, same width and height as the input,
                             holding TRIMAP VALUES: 1 pet, 2 background, 3 border
                             (model labels + 1, as in the Oxford-IIIT Pet trimaps)
    out/<stem>_overlay.png   the predicted classes blended over the input (RGB; colours of
                             `segpipe.gallery.render.PALETTE`: pet orange, background blue, border yellow)
    out/predictions.json     what was written and what failed (with the reason), the models used

Inputs are files or directories. Directories are searched recursively for
.jpg .jpeg .png .gif .bmp .webp .tif .tiff (any case), skipping hidden files
and the `*_mask.png` / `*_overlay.png` files already in `out_dir`; their
relative sub-paths are kept under `out_dir`. Name clashes (`cat.jpg` and `cat.png`) get the extension appended
(`cat_png_mask.png`), then a number. Files are identified by content, not by
extension: anything Pillow decodes is used (GIF: first frame; alpha dropped;
grayscale, CMYK, palette and 16-bit images converted to 8-bit RGB exactly as
when the dataset was built). The EXIF orientation is applied, so masks line up
with the image as viewers display it. Unreadable files are listed under
`failed` and the rest are still predicted.

Each image is resized to the model's input size as in training, the
(ensemble-averaged) probabilities are resized back to the original size
(bilinear) and the argmax taken (with `flip`, the mirrored image's
probabilities, mirrored back, are averaged in first). Images are predicted `batch_size` at a time,
and written by two writer threads while the next batch is predicted: at most
two batches are held in memory. Every file is written atomically.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain, count
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segpipe.fsutil import atomic_path, atomic_write_json

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
MASK_VALUES = {1: "pet", 2: "background", 3: "border"}
SUMMARY = "predictions.json"
OVERLAY_ALPHA = 0.5
WRITER_THREADS = 2

PathLike = str | os.PathLike[str]


@dataclass
class PredictReport:
    """`written`: [{input, mask, overlay}]; `failed`: [{input, error}]; `summary`: predictions.json."""

    out_dir: Path
    written: list[dict[str, str | None]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    summary: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "written": self.written, "failed": self.failed,
                "n_written": len(self.written), "n_failed": len(self.failed)}


# --------------------------------------------------------------------------- inputs


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _is_our_output(path: Path, out_dir: Path) -> bool:
    """A mask or overlay written by an earlier run into `out_dir` (never read back as an input)."""
    return path.name.endswith(("_mask.png", "_overlay.png")) and _inside(path.resolve(), out_dir)


def _walk(folder: Path, out_dir: Path) -> list[Path]:
    """Image files under `folder` (recursive, sorted, no hidden entries, none of our outputs in `out_dir`)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [p for f in sorted(files) if _is_image_name(p := Path(root, f)) and not _is_our_output(p, out_dir)]
    return found


def require_an_input(inputs: Sequence[PathLike]) -> None:
    """Refuse inputs of which none exists (a typo), before any work; one missing among others is a per-input
    failure in the report (`find_inputs`)."""
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ValueError("no inputs given; expected image files or directories")
    if not any(p.exists() for p in paths):
        raise FileNotFoundError(f"none of the inputs exists: {', '.join(str(p) for p in paths)} "
                                "(expected image files or directories)")


def find_inputs(
    inputs: Sequence[PathLike], out_dir: PathLike
) -> tuple[list[tuple[Path, Path]], list[dict[str, str]]]:
    """(file, output stem relative to out_dir) for every input image, and failures for unusable paths.

    Raises FileNotFoundError when none of `inputs` exists.
    """
    paths = [Path(p) for p in inputs]
    require_an_input(paths)
    exclude = Path(out_dir).resolve()
    pairs: list[tuple[Path, Path]] = []
    failed: list[dict[str, str]] = []
    seen: set[Path] = set()
    used: set[str] = set()

    def add(file: Path, rel: Path) -> None:
        if (key := file.resolve()) in seen:
            return
        seen.add(key)
        pairs.append((file, _unique_stem(rel, used)))

    for p in paths:
        if not p.exists():
            failed.append({"input": str(p), "error": "no such file or directory"})
        elif p.is_dir():
            files = _walk(p, exclude)
            if not files:
                kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
                failed.append({"input": str(p), "error": f"no image files ({kinds}) in directory"})
            for f in files:
                add(f, f.relative_to(p))
        elif p.is_file():
            add(p, Path(p.name))
        else:
            failed.append({"input": str(p), "error": "not a regular file or directory"})
    return pairs, failed


def _unique_stem(rel: Path, used: set[str]) -> Path:
    """`rel` without its extension; on a clash (case-insensitive) `<stem>_<ext>`, then `<stem>_2`, `_3`, ..."""
    stem = rel.with_suffix("")
    ext = rel.suffix.lstrip(".").lower()
    options = chain([stem], [stem.with_name(f"{stem.name}_{ext}")] if ext else [],
                    (stem.with_name(f"{stem.name}_{n}") for n in count(2)))
    for option in options:
        if (key := option.as_posix().lower()) not in used:
            used.add(key)
            return option
    raise AssertionError("unreachable")


def load_image(path: PathLike) -> np.ndarray:
    """RGB uint8 HxWx3 of an image file, identified by content; ValueError with the reason otherwise.

    The decoding is `segpipe.export.runtime.decode`, the one an exported model's runtime uses too, so a
    `.keras` model and its exports see the same pixels.
    """
    from segpipe.export.runtime import decode

    return decode(Path(path).read_bytes())


# --------------------------------------------------------------------------- outputs


def _save_png(path: Path, pixels: np.ndarray) -> None:
    with atomic_path(path) as tmp:  # zlib level 1: several times faster than the default, files barely larger
        Image.fromarray(pixels).save(tmp, format="PNG", compress_level=1)


def _overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    from segpipe.gallery.pixels import overlay

    return overlay(image, labels, alpha=OVERLAY_ALPHA)


def _write_outputs(
    out_dir: Path, rel: Path, image: np.ndarray, labels: np.ndarray, with_overlay: bool
) -> dict[str, str | None]:
    """Write `<rel>_mask.png` (trimap values = labels + 1) and, if asked, `<rel>_overlay.png`."""
    mask_path = out_dir / rel.with_name(f"{rel.name}_mask.png")
    _save_png(mask_path, (labels + 1).astype(np.uint8))
    overlay_path = None
    if with_overlay:
        overlay_path = out_dir / rel.with_name(f"{rel.name}_overlay.png")
        _save_png(overlay_path, _overlay(image, labels))
    return {"mask": str(mask_path), "overlay": None if overlay_path is None else str(overlay_path)}


# --------------------------------------------------------------------------- predict


def predict_paths(
    model_paths: Sequence[PathLike],
    inputs: Sequence[PathLike],
    out_dir: PathLike,
    *,
    batch_size: int = 8,
    overlay: bool = True,
    flip: bool = False,
    tta_sizes: Sequence[int] = (),
) -> PredictReport:
    """Predict a mask (and an overlay) for every image in `inputs`; see the module doc for the outputs.

    `model_paths` are `.keras` files (several: an ensemble) or one exported artifact (a SavedModel directory,
    a `.tflite` or an `.onnx` file from `segpipe export`), whose flip setting and TTA sizes are the ones it was
    exported with. `tta_sizes`: each `.keras` model also predicts rebuilt at these input sizes (multi-scale TTA).
    """
    from segpipe.evaluation.evaluate import check_batch_size

    check_batch_size(batch_size)
    out = Path(out_dir)
    pairs, failed = find_inputs(inputs, out)
    predict_labels, sizes, exported = _predictor(model_paths, flip, tta_sizes)
    report = PredictReport(out_dir=out, failed=failed)
    from segpipe.progress import Progress

    unreadable = len(report.failed)
    with _writers(out, overlay, batch_size, report.written) as write, Progress("predict", len(pairs)) as progress:
        for batch in _loaded_batches(pairs, batch_size, report.failed):
            write(batch, predict_labels([image for _, _, image in batch]))
            progress.advance(len(batch) + len(report.failed) - unreadable)  # unreadable files count as done
            unreadable = len(report.failed)
    report.summary = _write_summary(report, model_paths, sizes, exported, flip, tta_sizes)
    return report


def _predictor(
    model_paths: Sequence[PathLike], flip: bool, tta_sizes: Sequence[int] = ()
) -> tuple[Callable[[list[np.ndarray]], list[np.ndarray]], list[tuple[int, int]], dict[str, Any] | None]:
    """`labels(images)` (HxW 0..2 at each image's size) for `.keras` models or one exported artifact, the
    models' input sizes, and the export's record (`exported_artifact`, read once) or None for `.keras` models.

    `.keras` models already loading in a child process (`segpipe.preload`, started by `segpipe predict`)
    are used from there when their files match; otherwise they are loaded here."""
    from segpipe.export.exporter import exported_artifact

    records = [(p, record) for p in model_paths if (record := exported_artifact(p)) is not None]
    if records:
        if len(model_paths) != 1:
            raise ValueError(
                f"--model {records[0][0]} is an exported model, which holds its whole ensemble: give it alone, "
                "or give .keras files"
            )
        from segpipe.export import runtime

        artifact = runtime.load(records[0][0])

        def exported_labels(images: list[np.ndarray]) -> list[np.ndarray]:
            return [m.astype(np.int64) - 1 for m in runtime.predict_masks(artifact, images)]

        return exported_labels, [tuple(artifact.input_size)], records[0][1]
    from segpipe.preload import take

    if (child := take(model_paths, flip, tta_sizes)) is not None:
        return child.labels, child.sizes, None
    from segpipe.evaluation.ensemble import load_models, model_sizes, predict_labels, tta_members

    models = tta_members(load_models(model_paths), tta_sizes)
    return (lambda images: predict_labels(models, images, flip)), model_sizes(models), None


def _loaded_batches(
    pairs: Sequence[tuple[Path, Path]], batch_size: int, failed: list[dict[str, str]]
) -> Iterator[list[tuple[Path, Path, np.ndarray]]]:
    """(input, relative output name, image) in batches of `batch_size`; an unreadable image joins `failed`."""
    batch: list[tuple[Path, Path, np.ndarray]] = []
    for src, rel in pairs:
        try:
            batch.append((src, rel, load_image(src)))
        except (ValueError, OSError) as exc:
            failed.append({"input": str(src), "error": str(exc)})
            continue
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


@contextlib.contextmanager
def _writers(out: Path, overlay: bool, keep: int, written: list[dict[str, Any]]) -> Iterator[Callable[..., None]]:
    """`write(batch, labels)`: PNG encoding and writing (~40% of the time, mostly the overlay) run in writer
    threads (Pillow releases the GIL) while the next batch is read and predicted; results join `written`
    in input order, and at most one batch (`keep` images) waits to be written."""
    writing: deque[tuple[Path, Future[dict[str, str | None]]]] = deque()

    def collect(keep: int) -> None:
        while len(writing) > keep:
            src, result = writing.popleft()
            written.append({"input": str(src), **result.result()})

    with ThreadPoolExecutor(max_workers=WRITER_THREADS) as pool:

        def write(batch: list[tuple[Path, Path, np.ndarray]], labels: Sequence[np.ndarray]) -> None:
            for (src, rel, image), lab in zip(batch, labels):
                writing.append((src, pool.submit(_write_outputs, out, rel, image, lab, overlay)))
            collect(keep)

        yield write
        collect(keep=0)


def _write_summary(report: PredictReport, model_paths: Sequence[PathLike], sizes: list[tuple[int, int]],
                   exported: dict[str, Any] | None, flip: bool, tta_sizes: Sequence[int]) -> Path:
    from segpipe.evaluation.ensemble import model_records

    summary = {
        **report.to_dict(),
        "models": [exported] if exported else model_records(model_paths),
        "tta": ({"flip": exported.get("tta_flip"), "sizes": exported.get("tta_sizes", [])} if exported
                else {"flip": flip, "sizes": sorted(set(int(s) for s in tta_sizes))}),
        "img_size": [list(s) for s in sizes],
        "mask_values": {str(k): v for k, v in MASK_VALUES.items()},
    }
    return atomic_write_json(report.out_dir / SUMMARY, summary)
