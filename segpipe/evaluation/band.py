"""The border band: the trimap's border drawn as geometry around the predicted pet outline, its width
calibrated on the validation split and saved inside the model file.

    result = calibrate_band(models, dataset_dir, flip=True)        # on "val", at original resolution
    save_with_band(model_path, result.band)                        # model.keras now carries it
    band_of(load_models([model_path])[0])                          # -> (inner, outer) or None

The trimap's border is a band about 3% of the image's longer side wide around the pet's outline; the model
predicts it at its input size, where it is a few pixels wide, and the argmax of the upsampled probabilities
draws it blurred. With a band, the outline is where p(pet) > p(background) at the ORIGINAL resolution, and
every pixel within `inner` (inside) or `outer` (outside) thousandths of the longer side of it is border
(`segpipe.export.runtime.band_labels`: numpy, integers only; the SavedModel draws the same pixels in its
graph). The widths are chosen on validation from `GRID` by mean IoU, with the plain argmax among the
candidates: a band is saved only when it beats the argmax there.

The band travels inside the `.keras` file as the model's last layer, `BorderBand` (the identity on the
probabilities, carrying the two widths), so evaluate, predict, the gallery and every export draw the same
masks from the same file.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segpipe.data import NUM_CLASSES
from segpipe.evaluation.metrics import ConfusionAccumulator

PathLike = str | os.PathLike[str]
Band = tuple[int, int]
GRID: tuple[int, ...] = (0, 8, 16, 24, 32, 40)  # band widths tried, in thousandths of the longer side
MAX_IMAGES = 200  # validation images a calibration reads at most (the split's first, in its seeded order)
LAYER_NAME = "border_band"


@dataclass(frozen=True)
class BandCalibration:
    """The chosen band (None: the argmax won) and every candidate's validation figures."""

    band: Band | None
    split: str
    n_images: int
    argmax: dict[str, float]
    chosen: dict[str, float]
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"band": list(self.band) if self.band else None, "unit": "thousandths of the longer side",
                "split": self.split, "n_images": self.n_images, "argmax": self.argmax, "chosen": self.chosen,
                "candidates": self.candidates}


def describe_calibration(record: dict[str, Any]) -> str:
    """One line for a calibration's record (`BandCalibration.to_dict()`, as train_summary.json keeps it)."""
    band, chosen, argmax = record["band"], record["chosen"], record["argmax"]
    what = ("the argmax kept (no band beat it)" if band is None else
            f"band {band[0]}/{band[1]} thousandths of the longer side inside/outside the pet's outline")
    return (f"border band calibrated on {record['n_images']} {record['split']} images: {what}; mean IoU "
            f"{chosen['mean_iou']:.4f} (argmax {argmax['mean_iou']:.4f}), border IoU {chosen['border_iou']:.4f} "
            f"(argmax {argmax['border_iou']:.4f})")


def check_band(band: Any) -> Band:
    """(inner, outer) as two ints in 0..250 (thousandths of the longer side), not both 0; a clear error else."""
    try:
        inner, outer = (int(b) for b in band)
        ok = all(float(b) == int(b) for b in band)
    except (TypeError, ValueError):
        ok = False
    if not ok or not (0 <= inner <= 250 and 0 <= outer <= 250) or inner + outer == 0:
        raise ValueError(f"border band must be two whole widths (inner, outer) in 0..250 thousandths of the "
                         f"image's longer side, not both 0; got {band!r}")
    return inner, outer


# --------------------------------------------------------------------------- the band inside the model


def band_of(model: Any) -> Band | None:
    """The band a loaded model carries (its last layer a `BorderBand`), or None."""
    from segpipe.models.layers import BorderBand

    last = model.layers[-1] if model.layers else None
    return (last.inner, last.outer) if isinstance(last, BorderBand) else None


def with_band(model: Any, band: Band | None) -> Any:
    """`model` ending in a `BorderBand` carrying `band` (any band it carried replaced; None: removed)."""
    import keras

    from segpipe.models.layers import BorderBand

    output = model.layers[-1].input if band_of(model) is not None else model.output
    if band is not None:
        output = BorderBand(*check_band(band), name=LAYER_NAME)(output)
    return keras.Model(model.input, output, name=model.name)


def save_with_band(model_path: PathLike, band: Band | None) -> Path:
    """Rewrite the `.keras` file at `model_path` to carry `band` (atomically: a temporary file renamed); a file
    that already carries it is left as it is, byte for byte."""
    import keras

    from segpipe.evaluation.ensemble import load_models

    path = Path(model_path)
    loaded = load_models([path])[0]
    if band_of(loaded) == (None if band is None else check_band(band)):
        return path
    model = with_band(loaded, band)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.keras")  # Keras saves only to a name ending .keras
    try:
        keras.saving.save_model(model, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------- calibration on validation


def calibrate_saved_model(model_path: PathLike, dataset_dir: PathLike) -> BandCalibration:
    """Calibrate the band of the `.keras` file at `model_path` on the validation split (the model's own
    predictions, no test-time augmentation) and save the result inside it: the chosen band, or no band when
    the argmax wins. Running it again on the same file chooses the same band."""
    from segpipe.evaluation.ensemble import load_models

    result = calibrate_band(load_models([model_path]), dataset_dir, split="val")
    save_with_band(model_path, result.band)
    return result



def calibrate_band(models: Sequence[Any], dataset_dir: PathLike, *, split: str = "val", flip: bool = False,
                   grid: Sequence[int] = GRID, max_images: int = MAX_IMAGES) -> BandCalibration:
    """Choose the band (or none) with the best mean IoU on `split` (its first `max_images` images), every image
    at its original resolution."""
    from segpipe.export.runtime import band_side

    grid = sorted({int(g) for g in grid})
    confusions: dict[Band, ConfusionAccumulator] = {}
    n = 0
    for truth, probs in itertools.islice(_split_probs(models, dataset_dir, split, flip), max_images):
        n += 1
        _add(confusions, (0, 0), truth, probs.argmax(axis=-1))
        pet = probs[..., 0] > probs[..., 1]
        inside = {g: band_side(pet, g, inside=True) for g in grid}
        outside = {g: band_side(pet, g, inside=False) for g in grid}
        for inner in grid:
            for outer in grid:
                if inner + outer == 0:
                    continue
                border = inside[inner] | outside[outer]
                _add(confusions, (inner, outer), truth, np.where(border, 2, np.where(pet, 0, 1)))
    if n == 0:
        raise ValueError(f"split {split!r} of {dataset_dir} has no images: cannot calibrate the border band")
    scores = {band: _figures(c) for band, c in confusions.items()}
    # the argmax first, then narrower bands: a band must beat the argmax, ties go to the simpler choice
    order = sorted(scores, key=lambda b: (-scores[b]["mean_iou"], b != (0, 0), b[0] + b[1], b))
    best = order[0]
    return BandCalibration(
        band=None if best == (0, 0) else best, split=split, n_images=n, argmax=scores[(0, 0)], chosen=scores[best],
        candidates=[{"band": list(b), **scores[b]} for b in sorted(scores) if b != (0, 0)],
    )


def _split_probs(models: Sequence[Any], dataset_dir: PathLike, split: str, flip: bool) -> Any:
    """(truth labels, probabilities (H, W, C)) of each image of `split`, both at the image's original size,
    predicted as evaluate predicts (`segpipe.evaluation.ensemble.predict_split`, one image at a time)."""
    from segpipe.evaluation.ensemble import predict_split, resize_probs

    for r in predict_split(models, dataset_dir, split, batch_size=1, flip=flip):
        yield r["truth"], resize_probs(r["probs"], r["truth"].shape)


def _add(confusions: dict[Band, ConfusionAccumulator], band: Band, truth: np.ndarray, pred: np.ndarray) -> None:
    confusions.setdefault(band, ConfusionAccumulator(NUM_CLASSES)).update(truth, pred)


def _figures(confusion: ConfusionAccumulator) -> dict[str, float]:
    top = confusion.scores()
    return {"mean_iou": round(top["mean_iou"], 6), "foreground_iou": round(top["foreground_iou"], 6),
            **{f"{name}_iou": round(value, 6) for name, value in top["iou"].items()}}
