"""Evaluate saved models (one, or an ensemble) on a split of a prepared dataset.

    result = evaluate([run / "model.keras"], dataset_dir, "test")
    write_metrics(result, run / "metrics.json")
    render_evaluation_gallery([run / "model.keras"], dataset_dir, "test", run / "gallery",
                              n_sample=8, n_worst=8, seed=0, per_image=result.per_image)

How images are predicted:

* each image is resized to a model's input size exactly as the training input
  pipeline does (bilinear with antialiasing, rounded to uint8, scaled to [0, 1]);
* an ensemble averages its members' softmax outputs; every member sees the
  image at its own input size and its output is resized (bilinear) to the
  size of the first member, the "model resolution";
* with `flip=True` (test-time augmentation) every member also predicts the
  left-right mirrored image, and its output, mirrored back, joins the average;
* for scores at the ORIGINAL resolution (the headline figures) the averaged
  probability map is resized (bilinear) back to the image's original height
  and width, then the argmax is compared with the original trimap;
* scores at MODEL resolution compare the argmax at the first member's input
  size with the trimap resized there (nearest neighbour), as during training.

Labels are 0 pet, 1 background, 2 border (= trimap - 1).

Evaluating a split and re-predicting the gallery's images share
one streaming prediction (`_predict_split`, over `ensemble.predict_split`); they stay beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segpipe.data import NUM_CLASSES
# input_size and predict_probs: importable from here too, as before ensemble.py held them
from segpipe.evaluation.ensemble import (  # noqa: F401
    PathLike,
    ensemble_probs,
    input_size,
    labels_at,
    load_models,
    model_records,
    model_sizes,
    models_band,
    predict_probs,
    predict_split,
    resize_image,
    scaled_inputs,
    tta_members,
)
from segpipe.fsutil import atomic_write_json
from segpipe.config import COLLAPSE_THRESHOLD, EvalConfig
from segpipe.evaluation.metrics import ConfusionAccumulator, markdown_table, per_image_iou
from segpipe.progress import Progress


# --------------------------------------------------------------------------- dataset predictions


def _predict_split(
    models: Sequence[Any], dataset_dir: PathLike, split: str, *, batch_size: int, ids: Sequence[str] | None = None,
    flip: bool = False,
) -> Iterator[dict[str, Any]]:
    """Per image: id, image (original uint8), truth/pred (original HxW), truth_model/pred_model (model size).
    `pred` is drawn with the models' border band, if any. Streams (`ensemble.predict_split`)."""
    band = models_band(models)
    for r in predict_split(models, dataset_dir, split, batch_size=batch_size, ids=ids, flip=flip):
        probs = r.pop("probs")
        yield {**r, "pred": labels_at(probs, r["truth"].shape, band), "pred_model": probs.argmax(axis=-1)}


def _split_size(dataset_dir: PathLike, split: str) -> tuple[dict[str, Any], int]:
    """(manifest, number of examples in `split`); clear errors for no manifest, unknown or empty split."""
    from segpipe.data.tfrecords import load_manifest

    manifest = load_manifest(dataset_dir)
    splits = manifest.get("splits", {})
    if split not in splits:
        raise ValueError(f"unknown split {split!r} in {dataset_dir}; it has {', '.join(sorted(splits)) or 'none'}")
    n = int(splits[split].get("num_examples", 0))
    if n == 0:
        raise ValueError(f"split {split!r} of {dataset_dir} is empty: nothing to evaluate")
    return manifest, n


def check_batch_size(batch_size: int) -> None:
    """ValueError unless `batch_size` is a positive int."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")


# --------------------------------------------------------------------------- evaluate


@dataclass
class EvaluationResult:
    """`metrics` (see `evaluate`), `per_image` [{id, iou}] in dataset order, and `items` kept for a gallery
    ({id, image, truth, pred, iou}; add a `tag` before `render_gallery`)."""

    metrics: dict[str, Any]
    per_image: list[dict[str, Any]] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)


def collapse_warning(metrics: dict[str, Any]) -> str | None:
    """The warning for a collapsed prediction (one class takes nearly every pixel), else None."""
    if not metrics.get("collapsed"):
        return None
    share = {k: v for k, v in (metrics.get("predicted_class_share") or {}).items() if v is not None}
    name = max(share, key=share.__getitem__)
    return (
        f"predictions collapsed to one class: {name} {share[name] * 100:.1f}% of pixels — the model predicts a "
        "single class; BatchNormalization statistics may not have converged"
    )


def evaluate(
    model_paths: Sequence[PathLike],
    dataset_dir: PathLike,
    split: str,
    *,
    batch_size: int = 8,
    collapse_threshold: float = COLLAPSE_THRESHOLD,
    keep_for_gallery: Callable[[str], bool] | None = None,
    flip: bool = False,
    tta_sizes: Sequence[int] = (),
) -> EvaluationResult:
    """Score a model (or the ensemble of several) on `split` of the dataset in `dataset_dir`.

    `metrics` holds the ORIGINAL-resolution scores at the top level
    (`segpipe.evaluation.metrics.scores` keys plus n_images and resolution="original"),
    `at_model_resolution` (the same keys, resolution="model", img_size [h, w]),
    split, models [{path, sha256}], dataset_key and warnings.
    `keep_for_gallery(id)` selects the images whose pixels are kept in `items`.
    `flip` adds the mirrored image to every prediction and `tta_sizes` each model rebuilt at those input
    sizes (test-time augmentation; recorded as metrics["tta"] and metrics["tta_sizes"]). A model that carries
    a border band (`segpipe.evaluation.band`) is scored with it at the original resolution
    (metrics["border_band"]; the model-resolution figures stay the argmax's).
    """
    check_batch_size(batch_size)
    manifest, expected = _split_size(dataset_dir, split)
    models = load_models(model_paths)
    sizes = model_sizes(models)
    members = tta_members(models, tta_sizes)
    predictions = _predict_split(members, dataset_dir, split, batch_size=batch_size, flip=flip)
    with Progress("evaluate", expected) as progress:
        original, at_model, per_image, items = _accumulate(predictions, keep_for_gallery, progress)
    n = len(per_image)
    if n == 0:
        raise ValueError(f"split {split!r} of {dataset_dir} yielded no examples: nothing to evaluate")

    top = {**original.scores(collapse_threshold=collapse_threshold), "n_images": n, "resolution": "original"}
    model_res = {**at_model.scores(collapse_threshold=collapse_threshold), "n_images": n, "resolution": "model",
                 "img_size": list(sizes[0])}
    metrics = {
        **top,
        "at_model_resolution": model_res,
        "split": split,
        "tta": "flip" if flip else None,
        "tta_sizes": sorted(set(int(s) for s in tta_sizes)),
        "border_band": list(band) if (band := models_band(models)) else None,
        "models": model_records(model_paths),
        "dataset_key": manifest.get("dataset_key", Path(dataset_dir).name),
        "warnings": _warnings(top, split, expected, sizes),
    }
    return EvaluationResult(metrics=metrics, per_image=per_image, items=items)


def _accumulate(
    predictions: Iterable[dict[str, Any]], keep_for_gallery: Callable[[str], bool] | None,
    progress: Progress | None = None,
) -> tuple[ConfusionAccumulator, ConfusionAccumulator, list[dict[str, Any]], list[dict[str, Any]]]:
    """The confusion matrices at original and model resolution, each image's IoU, and the gallery's images;
    `progress` advances by one per image."""
    original, at_model = ConfusionAccumulator(NUM_CLASSES), ConfusionAccumulator(NUM_CLASSES)
    per_image: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    for r in predictions:
        original.update(r["truth"], r["pred"])
        at_model.update(r["truth_model"], r["pred_model"])
        per_image.append({"id": r["id"], "iou": per_image_iou(r["truth"], r["pred"])})
        if keep_for_gallery is not None and keep_for_gallery(r["id"]):
            items.append(_gallery_item(r, per_image[-1]["iou"]))
        if progress is not None:
            progress.advance()
    return original, at_model, per_image, items


def _gallery_item(r: dict[str, Any], iou: float) -> dict[str, Any]:
    return {k: r[k] for k in ("id", "image", "truth", "pred")} | {"iou": iou}


def _warnings(top: dict[str, Any], split: str, expected: int, sizes: Sequence[Any]) -> list[str]:
    """A collapsed prediction, a split shorter or longer than its manifest says, an ensemble of mixed sizes."""
    warnings = [w for w in [collapse_warning(top)] if w]
    if top["n_images"] != expected:
        warnings.append(f"the manifest lists {expected} examples in split {split!r} but {top['n_images']} were read")
    if len(sizes) > 1:
        warnings.append(
            f"ensemble members take different input sizes {[list(s) for s in sizes]}; model-resolution "
            f"scores are at the first member's size {list(sizes[0])}"
        )
    return warnings


def write_metrics(result_or_metrics: EvaluationResult | dict[str, Any], out_path: PathLike) -> Path:
    """Write the metrics dict as JSON, atomically; return the path."""
    metrics = result_or_metrics.metrics if isinstance(result_or_metrics, EvaluationResult) else result_or_metrics
    if not isinstance(metrics, dict):
        raise TypeError(f"write_metrics expects an EvaluationResult or a metrics dict; got {type(metrics).__name__}")
    return atomic_write_json(out_path, metrics)


def write_per_image(per_image: Sequence[dict[str, Any]], out_path: PathLike) -> Path:
    """Write the per-image [{id, iou}] list as JSON, atomically (input of `render_evaluation_gallery`)."""
    return atomic_write_json(out_path, list(per_image))


def metrics_markdown(metrics: dict[str, Any]) -> str:
    """A Markdown report: context, warnings, then tables at original (headline) and model resolution."""
    model_res = metrics.get("at_model_resolution")
    if not isinstance(model_res, dict):
        raise ValueError("metrics has no 'at_model_resolution' section; expected the dict returned by evaluate()")
    size = "x".join(str(v) for v in model_res.get("img_size", []))
    members = metrics.get("models", [])
    models = ", ".join(f"`{Path(m['path']).name}` ({m['sha256'][:12]})" for m in members)
    ensemble = " (ensemble: mean of softmax outputs)" if len(members) > 1 else ""
    lines = [
        f"## Evaluation: split `{metrics.get('split')}` of dataset `{metrics.get('dataset_key')}`",
        "",
        f"- images: {metrics.get('n_images')}",
        f"- models: {models or 'n/a'}{ensemble}",
        "- headline figures are at the ORIGINAL image resolution (probabilities resized back, then "
        + ("the argmax);" if not metrics.get("border_band") else
           "the border band {}/{} thousandths of the longer side, calibrated on validation);".format(
               *metrics["border_band"])),
        f"  the second table is at MODEL resolution ({size}, trimap resized nearest), as seen during training.",
        "",
    ]
    for w in metrics.get("warnings", []):
        lines.append(f"> **Warning:** {w}")
    if metrics.get("warnings"):
        lines.append("")
    lines.append(markdown_table(metrics, "At original resolution (headline)"))
    lines.append(markdown_table(model_res, f"At model resolution ({size})"))
    return "\n".join(lines)


# --------------------------------------------------------------------------- gallery


def collect_items(
    model_paths: Sequence[PathLike], dataset_dir: PathLike, split: str, ids: Sequence[str], *, batch_size: int = 8,
    flip: bool = False,
    tta_sizes: Sequence[int] = (),
) -> list[dict[str, Any]]:
    """{id, image, truth, pred, iou} at original resolution for `ids` (in that order), predicted afresh.

    Only those images are predicted. A clear error names ids not found in the split.
    """
    check_batch_size(batch_size)
    wanted = list(dict.fromkeys(str(i) for i in ids))
    if not wanted:
        return []
    _split_size(dataset_dir, split)
    models = tta_members(load_models(model_paths), tta_sizes)
    found: dict[str, dict[str, Any]] = {}
    with Progress("gallery", len(wanted)) as progress:
        for r in _predict_split(models, dataset_dir, split, batch_size=batch_size, ids=wanted, flip=flip):
            if r["id"] not in found:
                found[r["id"]] = _gallery_item(r, per_image_iou(r["truth"], r["pred"]))
                progress.advance()
    missing = [i for i in wanted if i not in found]
    if missing:
        raise ValueError(f"ids not found in split {split!r} of {dataset_dir}: {missing[:10]}")
    return [found[i] for i in wanted]


def render_evaluation_gallery(
    model_paths: Sequence[PathLike],
    dataset_dir: PathLike,
    split: str,
    out_dir: PathLike,
    *,
    n_sample: int,
    n_worst: int,
    seed: int,
    per_image: Sequence[dict[str, Any]],
    metrics: dict[str, Any] | None = None,
    title: str | None = None,
    batch_size: int = 8,
    flip: bool = False,
    tta_sizes: Sequence[int] = (),
) -> Path:
    """Pick the `n_worst` lowest-IoU and `n_sample` random images from `per_image`, predict just
    those and write a gallery to `out_dir` (see `segpipe.gallery.render.render_gallery`); return index.html."""
    from segpipe.gallery.render import render_gallery, select_items

    selected = select_items(per_image, n_sample, n_worst, seed)
    collected = collect_items(
        model_paths, dataset_dir, split, [s["id"] for s in selected], batch_size=batch_size, flip=flip,
        tta_sizes=tta_sizes,
    )
    items = [{**item, "tag": sel["tag"]} for sel, item in zip(selected, collected)]
    n_worst_shown = sum(it["tag"] == "worst" for it in items)
    title = title or f"{split} split: {n_worst_shown} worst and {len(items) - n_worst_shown} sampled predictions"
    return render_gallery(items, out_dir, title=title, metrics=metrics)


def evaluate_with(
    model_paths: Sequence[PathLike], dataset_dir: PathLike, eval_config: EvalConfig, split: str | None = None,
) -> EvaluationResult:
    """`evaluate` as the eval section says: its split (unless `split` is given), batch size, collapse
    threshold, flip TTA and TTA sizes. The `evaluate` task and `segpipe.stages.evaluate` both call this."""
    e = eval_config
    return evaluate([Path(p) for p in model_paths], dataset_dir, split or e.split, batch_size=e.batch_size,
                    collapse_threshold=e.collapse_threshold, flip=e.tta_flip, tta_sizes=e.tta_sizes)


def gallery_with(
    model_paths: Sequence[PathLike], dataset_dir: PathLike, eval_config: EvalConfig, out_dir: PathLike, *,
    per_image: Sequence[dict[str, Any]], metrics: dict[str, Any] | None = None,
) -> Path:
    """`render_evaluation_gallery` as the eval section says: its split, `gallery_samples` sampled and
    `gallery_worst` worst images, `gallery_seed`, batch size, flip TTA and TTA sizes. The `gallery` task and
    `segpipe.stages.gallery` both call this."""
    e = eval_config
    return render_evaluation_gallery(
        [Path(p) for p in model_paths], dataset_dir, e.split, out_dir, n_sample=e.gallery_samples,
        n_worst=e.gallery_worst, seed=e.gallery_seed, per_image=per_image, metrics=metrics,
        batch_size=e.batch_size, flip=e.tta_flip, tta_sizes=e.tta_sizes,
    )
