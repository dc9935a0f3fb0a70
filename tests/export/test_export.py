"""Exports (SavedModel, LiteRT float32/float16/int8, ONNX) of a tiny trained model: parity with the Keras model
measured in fresh processes where segpipe cannot be imported, the SavedModel's bytes signature against
`segpipe predict` on odd inputs, a planted mismatch, bad inputs, `predict` on exported artifacts, the serving
layout, and the README's LiteRT and ONNX snippets."""

from __future__ import annotations

import io
import json
import re
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.compiling import compile_as_training
from tests.synthetic import split_as_pngs, synthetic_example, write_tiny_dataset

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[2] / "README.md"


def _train_tiny_model(path: Path, seed: int = 0, name: str = "unet", **params) -> Path:
    """A tiny model (default a U-Net) trained for a few steps on synthetic pets, so its masks are neither constant
    nor random."""
    import keras

    from segpipe.models import build_model

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    pairs = [synthetic_example(rng, 32, 32) for _ in range(64)]
    x = np.stack([p[0] for p in pairs]).astype("float32") / 255.0
    y = np.stack([p[1] for p in pairs]).astype("int32") - 1
    params = params or {"base_filters": 4, "depth": 2}
    model = build_model(name, (32, 32, 3), bn_momentum=0.5, **params)  # statistics settle fast
    compile_as_training(model, keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=8, epochs=8, verbose=0)
    model.save(path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from segpipe.export.exporter import export_models

    root = tmp_path_factory.mktemp("export")
    dataset = write_tiny_dataset(root / "ds", {"train": 2, "val": 12, "test": 6}, height=45, width=61,
                                 image_format="jpeg")
    model = _train_tiny_model(root / "model.keras")
    result = export_models([model], root / "out", dataset_dir=dataset, split="test", flip=True)
    return {"root": root, "model": model, "dataset": dataset, "result": result}


def _keras_masks(model: Path, images: list[Path], out: Path, flip: bool = True) -> list[np.ndarray]:
    from segpipe.predict import predict_paths

    predict_paths([model], images, out, overlay=False, flip=flip)
    return [np.asarray(Image.open(out / f"{p.stem}_mask.png")) for p in images]


# --------------------------------------------------------------------------- parity


def test_every_format_keeps_parity_in_a_fresh_process_without_segpipe(exported):
    from segpipe.export.exporter import verify_files
    from segpipe.fsutil import sha256_file

    result, out = exported["result"], exported["result"].out_dir
    manifest = json.loads((out / "export.json").read_text())
    parity = manifest["parity"]
    # the test split has 6 images (< 30): the validation split tops it up
    assert parity["images"] == 18 and parity["splits"] == ["test", "val"]
    assert set(parity["results"]) == {"saved_model", "litert-float32", "litert-float16", "litert-int8", "onnx"}
    assert 0.6 < parity["reference"]["mean_iou"] < 1.0  # a trained model, not a constant one
    for name, r in parity["results"].items():
        assert r["passed"], r
        assert r["mean_iou_delta"] <= r["bound"]["max_mean_iou_delta"]
        assert r["pixel_agreement"] >= r["bound"]["min_pixel_agreement"]
        assert r["worker"]["n_images"] == 18 and "segpipe" not in r["worker"]["imported"]
    for name in ("litert-float32", "onnx"):  # TensorFlow-free runtimes: neither keras nor segpipe imported
        assert parity["results"][name]["worker"]["imported"] == []
    # the manifest: source, dataset, contract, libraries, every file's digest
    assert manifest["sources"][0]["sha256"] == sha256_file(exported["model"])
    assert manifest["dataset_key"] == "tiny-ds" and manifest["contract"]["tta_flip"] is True
    assert manifest["contract"]["input_size"] == [32, 32]
    assert all(manifest["libraries"][k] for k in ("tensorflow", "keras", "onnxruntime", "ai-edge-litert"))
    assert {"saved_model.pb", "pets-float32.tflite", "pets-float16.tflite", "pets-int8.tflite", "pets.onnx",
            "pets_runtime.py"} <= set(manifest["files"])
    assert verify_files(out) == []
    assert sorted(a.name for a in result.artifacts) == sorted(parity["results"])
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out.tmp")]


def test_each_litert_file_stores_its_weights_in_the_type_its_name_says(exported):
    """One converter makes the three LiteRT files (segpipe.export.formats.write_litert): no variant's quantization
    settings may carry over into the next. float32 keeps float32 weights; float16 stores them as float16 (dequantized
    when loaded); int8 (dynamic range) stores the convolutions' kernels as int8."""
    from ai_edge_litert.interpreter import Interpreter  # LiteRT's own runtime, as pets_runtime.py loads them

    def tensor_types(variant: str) -> set[str]:
        interpreter = Interpreter(model_path=str(exported["result"].out_dir / f"pets-{variant}.tflite"))
        return {np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}

    float32, float16, int8 = (tensor_types(v) for v in ("float32", "float16", "int8"))
    assert "float32" in float32 and not {"float16", "int8"} & float32
    assert "float16" in float16 and "int8" not in float16
    assert "int8" in int8 and "float16" not in int8


def test_the_worker_really_cannot_import_segpipe(exported, tmp_path):
    runtime = exported["result"].out_dir / "pets_runtime.py"
    code = f"import runpy; g = runpy.run_path({str(runtime)!r}); g['block_imports'](['segpipe']); import segpipe"
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "segpipe is blocked in this process" in done.stderr


def test_a_planted_mismatch_fails_the_check_and_installs_nothing(exported, tmp_path, monkeypatch):
    """An export with the preprocessing left out (0..255 fed where the model expects 0..1) fails, names the
    format and both figures, and leaves what was at the output directory untouched."""
    import keras

    from segpipe.export import graph
    from segpipe.export.exporter import export_models
    from segpipe.export.parity import ParityError

    def without_preprocessing(models, flip):
        image = keras.Input((32, 32, 3), dtype="uint8", name="image")
        x = keras.layers.Lambda(lambda t: keras.ops.cast(t, "float32"))(image)
        return keras.Model(image, models[0](x))

    monkeypatch.setattr(graph, "serving_model", without_preprocessing)
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier-export.txt").write_text("kept")
    with pytest.raises(ParityError) as err:
        export_models([exported["model"]], out, dataset_dir=exported["dataset"], split="test", formats="onnx")
    message = str(err.value)
    assert re.search(r"onnx: mean IoU \d\.\d{4} vs Keras \d\.\d{4}", message), message
    assert re.search(r"\d+\.\d{3}% of pixels agree \(bound 99\.9%\)", message), message
    assert [p.name for p in out.iterdir()] == ["earlier-export.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary directory left behind


def test_an_ensemble_exports_as_one_artifact_with_parity(exported, tmp_path):
    from segpipe.export.exporter import export_models

    other = _train_tiny_model(tmp_path / "other.keras", seed=1)
    result = export_models([exported["model"], other], tmp_path / "ensemble", dataset_dir=exported["dataset"],
                           split="test", formats=["onnx"], flip=False)
    manifest = result.manifest
    assert manifest["ensemble"] is True and len(manifest["sources"]) == 2
    assert [a.name for a in result.artifacts] == ["onnx"] and result.parity[0].passed
    single = export_models([other], tmp_path / "single", dataset_dir=exported["dataset"], split="test",
                           formats=["onnx"], flip=False)
    # the ensemble's reference is the averaged Keras models: not either member's
    assert manifest["parity"]["reference"]["mean_iou"] != single.manifest["parity"]["reference"]["mean_iou"]


def test_deeplabv3plus_on_the_dilated_encoder_trained_in_bfloat16_keeps_parity_in_every_format(exported, tmp_path):
    """Dilated depthwise convolutions (`model.encoder_tail=dilated`) through every converter: the LiteRT
    converter (its three files) and tf2onnx. The SavedModel runs TensorFlow's own ops, the Keras model's, so
    dilation cannot convert differently there; it is left out to keep the test short.

    The model is trained under mixed_bfloat16 (`train.mixed_precision`, cpu-quick's `auto` on a CPU with native
    bfloat16), whose layers save that policy; LiteRT has no builtin bfloat16 kernels, so loading for export sets
    every layer to float32 (`segpipe.models.rebuild.in_float32`), and the exports keep parity with the Keras model
    as evaluate and predict load it."""
    from segpipe.export.exporter import export_models
    from segpipe.training.precision import global_policy

    with global_policy("mixed_bfloat16"):
        model = _train_tiny_model(tmp_path / "dilated.keras", name="deeplabv3plus", encoder="mobilenetv2",
                                  encoder_alpha=0.35, aspp_filters=8, aspp_rates=(1, 2), encoder_tail="dilated")
    with zipfile.ZipFile(model) as saved:
        assert "mixed_bfloat16" in saved.read("config.json").decode()  # the file keeps the training precision
    result = export_models([model], tmp_path / "out", dataset_dir=exported["dataset"], split="test", flip=False,
                           formats=["litert", "onnx"])
    assert [a.name for a in result.artifacts] == [a.name for a in exported["result"].artifacts
                                                  if a.format != "saved_model"]
    assert result.parity and all(check.passed for check in result.parity), result.parity


def test_multi_scale_tta_exports_in_every_format_and_agrees_with_evaluate_and_predict(exported, tmp_path):
    """`tta_sizes` inside the graph: the served model takes the image at the largest size and resizes it to the
    others itself; evaluate, `segpipe predict` and each exported format give the same masks for the same image."""
    from segpipe.evaluation.evaluate import collect_items
    from segpipe.export.exporter import export_models
    from segpipe.predict import predict_paths

    model, dataset = exported["model"], exported["dataset"]
    result = export_models([model], tmp_path / "multi", dataset_dir=dataset, split="test", flip=True, tta_sizes=[64])
    contract = result.manifest["contract"]
    assert (contract["tta_sizes"], contract["input_size"], contract["tta_flip"]) == ([64], [64, 64], True)
    assert "float32[B,32,32,3]" in contract["litert_onnx"]["output"]  # averaged at the model's own size
    assert all(r.passed for r in result.parity) and len(result.parity) == 5
    single = exported["result"].manifest["parity"]["reference"]["mean_iou"]
    assert result.manifest["parity"]["reference"]["mean_iou"] != single  # the sizes changed the reference

    pngs = tmp_path / "pngs"
    ids = split_as_pngs(dataset, "test", pngs)
    evaluated = {it["id"]: it["pred"] + 1 for it in collect_items([model], dataset, "test", ids, flip=True,
                                                                   tta_sizes=[64])}
    predict_paths([model], [pngs], tmp_path / "keras", overlay=False, flip=True, tta_sizes=[64])
    for artifact in ("", "pets-float32.tflite", "pets.onnx"):
        report = predict_paths([result.out_dir / artifact if artifact else result.out_dir], [pngs],
                               tmp_path / f"served{artifact}", overlay=False)
        summary = json.loads(report.summary.read_text())
        assert summary["tta"] == {"flip": True, "sizes": [64]}
        agree = []
        for i in ids:
            keras_mask = np.asarray(Image.open(tmp_path / "keras" / f"{i}_mask.png"))
            np.testing.assert_array_equal(keras_mask, evaluated[i])
            agree.append((np.asarray(Image.open(tmp_path / f"served{artifact}" / f"{i}_mask.png")) == keras_mask).mean())
        assert min(agree) >= 0.999, (artifact, agree)


def test_a_calibrated_border_band_gives_the_same_masks_in_evaluate_predict_and_every_export(tmp_path):
    """The band calibrated on validation and saved with the model: what evaluate scores, `segpipe predict`, the
    SavedModel (its bytes signature, the band inside its graph) and pets_runtime on LiteRT and ONNX (the band
    from border_band.json) draw the same mask on the same images."""
    from segpipe.evaluation.band import calibrate_saved_model
    from segpipe.evaluation.evaluate import collect_items, evaluate
    from segpipe.export.exporter import export_models
    from segpipe.export.runtime import load
    from segpipe.predict import predict_paths
    from tests.evaluation.test_band import SIZE, colour_model, ring_example

    dataset = write_tiny_dataset(tmp_path / "ds", {"train": 2, "val": 6, "test": 4}, height=SIZE, width=SIZE,
                                 draw=ring_example)
    model = tmp_path / "model.keras"
    colour_model().save(model)
    calibration = calibrate_saved_model(model, dataset)
    assert calibration.band is not None and calibration.band[1] > 0  # the ring outside the disc
    scored = evaluate([model], dataset, "test")
    assert scored.metrics["iou"]["border"] > 0.5                       # evaluate draws the band: argmax gives 0
    assert scored.metrics["border_band"] == list(calibration.band)
    assert scored.metrics["at_model_resolution"]["iou"]["border"] == 0.0  # there, the argmax

    result = export_models([model], tmp_path / "out", dataset_dir=dataset, split="test")
    assert result.manifest["contract"]["border_band"] == list(calibration.band)
    assert all(r.passed for r in result.parity) and len(result.parity) == 5
    assert load(result.out_dir / "pets.onnx").band == calibration.band

    pngs = tmp_path / "pngs"
    ids = split_as_pngs(dataset, "test", pngs)
    evaluated = {it["id"]: it["pred"] + 1 for it in collect_items([model], dataset, "test", ids)}
    predict_paths([model], [pngs], tmp_path / "keras", overlay=False)
    served = load(result.out_dir).predict_encoded([(pngs / f"{i}.png").read_bytes() for i in ids])
    for artifact in ("", "pets-float32.tflite", "pets.onnx"):
        predict_paths([result.out_dir / artifact if artifact else result.out_dir], [pngs],
                      tmp_path / f"served{artifact}", overlay=False)
        for n, i in enumerate(ids):
            keras_mask = np.asarray(Image.open(tmp_path / "keras" / f"{i}_mask.png"))
            assert (keras_mask == 3).any()
            np.testing.assert_array_equal(keras_mask, evaluated[i])
            np.testing.assert_array_equal(served[n], keras_mask)
            np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"served{artifact}" / f"{i}_mask.png")),
                                          keras_mask)


# --------------------------------------------------------------------------- the SavedModel's signatures


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def _odd_images(folder: Path) -> list[Path]:
    """PNG-named JPEG, RGBA, grey, 16-bit grey and palette PNGs, and a plain JPEG, of synthetic pets."""
    rng = np.random.default_rng(3)
    rgb = [synthetic_example(rng, h, w)[0] for h, w in ((50, 70), (33, 41), (64, 48), (40, 40), (37, 52), (80, 60))]
    folder.mkdir()
    jpeg = io.BytesIO()
    Image.fromarray(rgb[0]).save(jpeg, format="JPEG", quality=85)
    alpha = np.dstack([rgb[1], rng.integers(0, 256, rgb[1].shape[:2], dtype=np.uint8)])
    grey = np.asarray(Image.fromarray(rgb[2]).convert("L"))
    grey16 = grey.astype(np.uint16) * 257 + rng.integers(0, 200, grey.shape).astype(np.uint16)
    plain = io.BytesIO()
    Image.fromarray(rgb[5]).save(plain, format="JPEG", quality=92)
    files = {
        "jpeg-named.png": jpeg.getvalue(),
        "rgba.png": _png(alpha),
        "grey.png": _png(grey),
        "grey16.png": _png(grey16),
        "palette.png": (lambda b: (Image.fromarray(rgb[4]).convert("P").save(b, format="PNG"), b.getvalue())[1])(io.BytesIO()),
        "plain.jpg": plain.getvalue(),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    assert Image.open(folder / "grey16.png").mode.startswith("I")
    return [folder / n for n in files]


def test_bytes_signature_gives_the_masks_of_segpipe_predict_on_odd_inputs(exported, tmp_path):
    import tensorflow as tf

    images = _odd_images(tmp_path / "odd")
    expected = _keras_masks(exported["model"], images, tmp_path / "pred")
    serving = tf.saved_model.load(str(exported["result"].out_dir)).signatures["serving_default"]
    out = serving(images=tf.constant([p.read_bytes() for p in images]))
    masks, heights, widths = out["masks"].numpy(), out["heights"].numpy(), out["widths"].numpy()
    assert masks.dtype == np.uint8 and masks.shape == (6, 80, 70)
    for i, (path, want) in enumerate(zip(images, expected)):
        got = masks[i, :heights[i], :widths[i]]
        assert got.shape == want.shape, path.name
        assert set(np.unique(got)) <= {1, 2, 3}
        assert (got == want).mean() >= 0.999, (path.name, (got == want).mean())
        assert not masks[i, heights[i]:, :].any() and not masks[i, :, widths[i]:].any()  # padding is 0


def test_probability_and_float_signatures_agree_with_the_masks(exported, tmp_path):
    import tensorflow as tf

    signatures = tf.saved_model.load(str(exported["result"].out_dir)).signatures
    image = synthetic_example(np.random.default_rng(5), 45, 61)[0]
    probs = signatures["serving_probabilities"](images=tf.constant([_png(image)]))
    assert probs["probabilities"].shape == (1, 45, 61, 3)
    np.testing.assert_allclose(probs["probabilities"].numpy().sum(-1), 1.0, atol=1e-4)
    assert (probs["probabilities"].numpy().argmax(-1) + 1 == probs["masks"].numpy()).all()
    floats = signatures["serving_float"](images=tf.constant(image[None].astype("float32") / 255.0))
    assert (floats["masks"].numpy() == probs["masks"].numpy()).mean() >= 0.999


# --------------------------------------------------------------------------- predict with an export


@pytest.mark.parametrize("artifact", ["", "pets-float32.tflite", "pets.onnx"])
def test_predict_takes_an_exported_model_and_writes_the_same_masks(exported, tmp_path, artifact):
    from segpipe.predict import predict_paths

    images = _odd_images(tmp_path / "odd")
    expected = _keras_masks(exported["model"], images, tmp_path / "keras")
    path = exported["result"].out_dir / artifact if artifact else exported["result"].out_dir
    report = predict_paths([path], images, tmp_path / "exported", overlay=False, flip=True)
    assert len(report.written) == 6 and not report.failed
    summary = json.loads(report.summary.read_text())
    assert summary["models"][0]["format"] == ("saved_model" if not artifact else Path(artifact).suffix[1:].replace("tflite", "litert"))
    assert summary["models"][0]["tta_flip"] is True
    for p, want in zip(images, expected):
        got = np.asarray(Image.open(tmp_path / "exported" / f"{p.stem}_mask.png"))
        assert (got == want).mean() >= 0.999, p.name


def test_predict_refuses_an_export_mixed_with_keras_models(exported, tmp_path):
    from segpipe.predict import predict_paths

    image = _odd_images(tmp_path / "odd")[0]
    with pytest.raises(ValueError, match="exported model, which holds its whole ensemble"):
        predict_paths([exported["result"].out_dir / "pets.onnx", exported["model"]], [image], tmp_path / "p")


# --------------------------------------------------------------------------- bad input


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height`, with no pixel data (the size is read from the header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(synthetic_example(np.random.default_rng(1), 64, 64)[0]).save(buf, format="JPEG")
    return buf.getvalue()[:300]


@pytest.mark.parametrize("data, words", [
    (b"", "empty file (0 bytes)"),
    (b"not an image at all", "not a recognisable image"),
    (_truncated_jpeg(), "cannot decode image"),
    (_png_header(10_000, 8_000), "10000 x 8000 = 80.0 megapixels; the limit is 50 megapixels"),
])
def test_bad_image_bytes_get_a_clear_error(data, words):
    from segpipe.export.runtime import ImageError, decode

    with pytest.raises(ImageError, match=re.escape(words)):
        decode(data)


def test_saved_model_refuses_a_huge_image_from_its_header(exported):
    import tensorflow as tf

    serving = tf.saved_model.load(str(exported["result"].out_dir)).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="image too large"):
        serving(images=tf.constant([_png_header(10_000, 8_000)]))


def test_predict_lists_bad_files_and_still_predicts_the_rest(exported, tmp_path):
    from segpipe.predict import predict_paths

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "huge.png").write_bytes(_png_header(10_000, 8_000))
    good = _odd_images(tmp_path / "odd")[-1]
    report = predict_paths([exported["result"].out_dir / "pets.onnx"], [folder, good], tmp_path / "out")
    errors = {Path(f["input"]).name: f["error"] for f in report.failed}
    assert "empty file" in errors["empty.jpg"] and "megapixels" in errors["huge.png"]
    assert [Path(w["input"]).name for w in report.written] == ["plain.jpg"]


def test_export_bad_inputs_fail_before_any_work(exported, tmp_path):
    import keras

    from segpipe.export.exporter import export_models

    kw = {"dataset_dir": exported["dataset"], "split": "test"}
    (tmp_path / "notes.keras").write_text("not a model")
    with pytest.raises(ValueError, match=r"cannot load model .*notes\.keras \(expected a \.keras file\)"):
        export_models([tmp_path / "notes.keras"], tmp_path / "o1", **kw)
    classifier = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    classifier.save(tmp_path / "classifier.keras")
    with pytest.raises(ValueError, match=r"classifier\.keras must take one RGB image input"):
        export_models([tmp_path / "classifier.keras"], tmp_path / "o2", **kw)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(PermissionError, match=r"cannot write the export output .*a-file/out"):
        export_models([exported["model"]], tmp_path / "a-file" / "out", **kw)
    with pytest.raises(ValueError, match="unknown \\['tensorrt'\\]; expected some of saved_model, litert, onnx"):
        export_models([exported["model"]], tmp_path / "o3", formats="onnx,tensorrt", **kw)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


# --------------------------------------------------------------------------- serving layout


def test_serving_versions_accumulate_and_a_changed_export_is_refused(exported, tmp_path):
    from segpipe.export import serving

    root = serving.serving_root(tmp_path / "models")
    with pytest.raises(FileNotFoundError, match="no serving version under .*: `segpipe retrain` promotes"):
        serving.latest_version(root)
    first = serving.install_version(exported["result"].out_dir, root)
    second = serving.install_version(exported["result"].out_dir, root)
    assert (first.name, second.name) == ("1", "2") and serving.versions(root) == [1, 2]
    assert serving.latest_version(root) == second
    assert (first / "saved_model.pb").is_file() and (second / "pets.onnx").is_file()
    (second / "pets.onnx").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="pets.onnx: sha256 differs from the manifest"):
        serving.install_version(second, root)
    assert serving.versions(root) == [1, 2]


# --------------------------------------------------------------------------- README snippets


def _readme_snippet(title: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- snippet: {title} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README has no snippet {title!r}"
    return match.group(1)


@pytest.mark.parametrize("title", ["litert", "onnx"])
def test_readme_serving_snippets_run_without_segpipe(exported, tmp_path, title):
    out = exported["result"].out_dir
    image = _odd_images(tmp_path / "odd")[-1]
    (want,) = _keras_masks(exported["model"], [image], tmp_path / "keras")
    work = tmp_path / "snippet"
    work.mkdir()
    for name in ("pets_runtime.py", "pets-float32.tflite", "pets.onnx"):
        (work / name).write_bytes((out / name).read_bytes())
    (work / "cat.jpg").write_bytes(image.read_bytes())
    (work / "snippet.py").write_text(_readme_snippet(title) + "\nimport numpy\nnumpy.save('mask.npy', mask)\n")
    runner = ("import runpy, sys; sys.path.insert(0, '.'); from pets_runtime import block_imports; "
              "block_imports(['segpipe']); runpy.run_path('snippet.py')")
    done = subprocess.run([sys.executable, "-I", "-c", runner], cwd=work, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = np.load(work / "mask.npy")
    assert got.shape == want.shape and (got == want).mean() >= 0.999
