"""The export stage: `.keras` model(s) -> SavedModel, LiteRT and ONNX, parity-checked, with a manifest.

    result = export_models([run / "model.keras"], out_dir, dataset_dir=dataset, split="test", flip=True)

Everything is written into a temporary directory beside `out_dir`, every artifact is checked in a fresh
process (`segpipe.export.parity`), and only then is the directory renamed into place: a failed export
leaves what was at `out_dir` untouched. `out_dir` then holds:

    saved_model.pb, variables/    the SavedModel, so the directory is a TF Serving version directory
                                  (signatures: runtime.SAVED_MODEL_SIGNATURES)
    pets-float32.tflite, pets-float16.tflite, pets-int8.tflite     LiteRT
    pets.onnx                     ONNX Runtime
    pets_runtime.py               decoding, resizing and running any of them without segpipe
    border_band.json              the model's calibrated border band (only for a model that has one)
    export.json                   sources, dataset, contract, library versions, files and parity figures
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from segpipe.export.formats import FORMATS, WRITERS, Artifact, check_formats
from segpipe.export.parity import ParityError, ParityResult
from segpipe.fsutil import atomic_write_json, current_umask, read_json, sha256_file, tempdir_beside

PathLike = str | os.PathLike[str]
MANIFEST = "export.json"
RUNTIME_FILE = "pets_runtime.py"
LIBRARIES = ("tensorflow", "keras", "numpy", "pillow", "onnx", "onnxruntime", "tf2onnx", "ai-edge-litert")


@dataclass
class ExportResult:
    out_dir: Path
    artifacts: list[Artifact]
    parity: list[ParityResult] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    def path_of(self, name: str) -> Path:
        return next(a.path for a in self.artifacts if a.name == name)


def source_run(model_path: PathLike) -> dict[str, Any]:
    """What a model file's run directory says about it: lineage (dataset) and metrics, where present.

    A run directory holds lineage.json beside model.keras; a champion directory holds the run's lineage
    under its "lineage" key.
    """
    folder = Path(model_path).parent
    lineage = read_json(folder / "lineage.json") if (folder / "lineage.json").is_file() else {}
    lineage = lineage.get("lineage", lineage) if isinstance(lineage.get("lineage"), dict) else lineage
    metrics = read_json(folder / "metrics.json") if (folder / "metrics.json").is_file() else None
    return {"lineage": lineage, "metrics": metrics}


def check_out_dir(out_dir: PathLike) -> Path:
    """`out_dir`, after checking its parent can be written to (before any work starts)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"export output {out} exists and is not a directory; expected a directory")
    try:
        probe = tempdir_beside(out)
    except OSError as exc:
        raise PermissionError(f"cannot write the export output {out}: {exc.strerror or exc}") from None
    probe.rmdir()
    return out


def export_models(
    model_paths: Sequence[PathLike],
    out_dir: PathLike,
    *,
    dataset_dir: PathLike,
    split: str = "test",
    formats: Sequence[str] | str = FORMATS,
    flip: bool = False,
    tta_sizes: Sequence[int] = (),
) -> ExportResult:
    """Export the model (several: one ensemble artifact) in `formats`, check parity on `split` of
    `dataset_dir` (topped up with `val` below 30 images) and install the result at `out_dir`. `flip` and
    `tta_sizes` (each model also rebuilt at those input sizes) are built into the exported graph.

    Raises `ParityError` (nothing installed) when an artifact fails to load or is outside its bound.
    """
    from segpipe.evaluation.ensemble import load_models, model_records, models_band, tta_members
    from segpipe.export import parity
    from segpipe.export.graph import serving_model
    from segpipe.export.runtime import BAND_FILE

    wanted = check_formats(formats)
    out = check_out_dir(out_dir)
    models = tta_members(load_models(model_paths), tta_sizes)
    data = parity.parity_set(dataset_dir, split)
    served = serving_model(models, flip)
    band = models_band(models)
    tmp = tempdir_beside(out)
    try:
        artifacts = [a for f in wanted for a in WRITERS[f](served, tmp, band)]
        if band is not None:  # pets_runtime draws LiteRT's and ONNX's masks with it; the SavedModel has it inside
            atomic_write_json(tmp / BAND_FILE, {"band": list(band), "unit": "thousandths of the longer side"})
        runtime = Path(shutil.copy2(Path(__file__).with_name("runtime.py"), tmp / RUNTIME_FILE))
        reference = parity.reference_labels(models, data.blobs, flip)
        reference_score = parity.score(reference, data.truths)
        results = [parity.check_artifact(a, data, reference, reference_score, runtime) for a in artifacts]
        failed = [r for r in results if not r.passed]
        if failed:
            raise ParityError("export outside its parity bound: " + "; ".join(r.describe() for r in failed))
        manifest = _manifest(model_records(model_paths), served, artifacts, results, reference_score, data,
                             dataset_dir, flip, sorted(set(int(s) for s in tta_sizes)), band, tmp)
        atomic_write_json(tmp / MANIFEST, manifest)
        tmp.chmod(0o777 & ~current_umask())  # a temporary directory is private; the export is not
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    moved = [Artifact(a.name, a.format, out / a.path.relative_to(tmp)) for a in artifacts]
    return ExportResult(out, moved, results, manifest)


def _install(tmp: Path, out: Path) -> None:
    """Replace `out` by `tmp`: the old directory is moved aside first and removed only once `tmp` is in place."""
    old = None
    if out.exists():
        old = tempdir_beside(out)
        old.rmdir()
        out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _manifest(sources: list[dict[str, str]], served: Any, artifacts: list[Artifact], results: list[ParityResult],
              reference_score: dict[str, Any], data: Any, dataset_dir: PathLike, flip: bool, tta_sizes: list[int],
              band: tuple[int, int] | None, root: Path) -> dict[str, Any]:
    from segpipe.data.tfrecords import load_manifest
    from segpipe.export.runtime import MASK_VALUES, MAX_PIXELS, SAVED_MODEL_SIGNATURES

    runs = [source_run(s["path"]) for s in sources]
    size = [int(d) for d in served.input_shape[1:3]]
    out_size = [int(d) for d in served.output_shape[1:3]]
    return {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sources": [{**s, "metrics": r["metrics"], "run_id": r["lineage"].get("run_id")} for s, r in zip(sources, runs)],
        "ensemble": len(sources) > 1,
        "dataset_key": load_manifest(dataset_dir).get("dataset_key"),
        "contract": {
            "input_size": size,
            "tta_flip": flip,
            "tta_sizes": tta_sizes,
            "border_band": list(band) if band else None,
            "mask_values": {str(k): v for k, v in MASK_VALUES.items()},
            "max_pixels": MAX_PIXELS,
            "saved_model_signatures": SAVED_MODEL_SIGNATURES,
            "litert_onnx": {"input": f"image uint8[B,{size[0]},{size[1]},3] RGB",
                            "output": f"probabilities float32[B,{out_size[0]},{out_size[1]},3] (pet, background, border)",
                            "around_it": f"{RUNTIME_FILE}: decode, resize (antialiased bilinear), "
                                         + ("the border band of border_band.json" if band else "argmax") + " + 1"},
        },
        "artifacts": {a.name: {"format": a.format, "path": str(a.path.relative_to(root))} for a in artifacts},
        "parity": {
            "images": len(data),
            "splits": sorted(set(data.splits)),
            "reference": {"runtime": "keras", "mean_iou": reference_score["mean_iou"],
                          "foreground_iou": reference_score["foreground_iou"]},
            "results": {r.artifact: r.to_dict() for r in results},
        },
        "libraries": {name: _version(name) for name in LIBRARIES},
        "files": _files(root),
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _files(root: Path) -> dict[str, dict[str, Any]]:
    return {str(p.relative_to(root)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}


FILE_FORMATS: dict[str, str] = {".tflite": "litert", ".onnx": "onnx"}
"""Exported model files by suffix: each runs on its own runtime, without TensorFlow (a SavedModel needs it)."""


def runs_without_tensorflow(path: PathLike) -> bool:
    """True for an exported LiteRT or ONNX file: predicting with it never loads TensorFlow."""
    return Path(path).suffix in FILE_FORMATS


def exported_artifact(path: PathLike) -> dict[str, Any] | None:
    """{path, format, tta_flip, tta_sizes, export sha256} when `path` is an exported model (a SavedModel
    directory, a `.tflite` or `.onnx` file), else None. The TTA settings come from the export's manifest."""
    path = Path(path)
    if path.is_dir() and not (path / "saved_model.pb").is_file():
        inside = ", ".join(sorted(p.name for p in path.glob("pets*.*"))) or "no exported model"
        raise ValueError(f"model {path} is a directory without saved_model.pb ({inside} in it); expected a .keras "
                         "file, a SavedModel directory, or a .tflite or .onnx file")
    if path.is_dir():
        kind, folder = "saved_model", path
    elif path.suffix in FILE_FORMATS:
        kind, folder = FILE_FORMATS[path.suffix], path.parent
    else:
        return None
    manifest = read_json(folder / MANIFEST) if (folder / MANIFEST).is_file() else {}
    digest = sha256_file(path) if path.is_file() else (manifest.get("files", {}).get("saved_model.pb", {}).get("sha256"))
    return {"path": str(path.resolve()), "format": kind, "sha256": digest,
            "tta_flip": manifest.get("contract", {}).get("tta_flip"),
            "tta_sizes": manifest.get("contract", {}).get("tta_sizes", [])}


def verify_files(out_dir: PathLike) -> list[str]:
    """Problems with an installed export: a file missing or changed since its manifest was written."""
    out = Path(out_dir)
    if not (out / MANIFEST).is_file():
        return [f"{out} has no {MANIFEST}: not a complete export"]
    listed = read_json(out / MANIFEST).get("files", {})
    problems = []
    for name, meta in listed.items():
        path = out / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif sha256_file(path) != meta["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest")
    return problems


__all__ = ["ExportResult", "ParityError", "export_models", "source_run", "verify_files", "check_out_dir", "MANIFEST"]
