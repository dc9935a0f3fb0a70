"""Tests for segpipe.predict: every odd image kind, directories, name clashes, failures, file outputs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import keras

from segpipe import predict  # noqa: E402
from segpipe.fsutil import read_json  # noqa: E402
from segpipe.gallery.render import overlay  # noqa: E402

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)  # pet, background, border for the colour model


def colour_model(path: Path, size: int = 32) -> Path:
    """1x1 conv + softmax: red -> pet, green -> background, blue -> border."""
    inputs = keras.Input((size, size, 3))
    conv = keras.layers.Conv2D(3, 1)
    model = keras.Model(inputs, keras.layers.Activation("softmax", dtype="float32")(conv(inputs)))
    conv.set_weights([20.0 * np.eye(3, dtype=np.float32).reshape(1, 1, 3, 3), np.zeros(3, np.float32)])
    model.save(path)
    return path


def halves(h: int, w: int, left=RED, right=GREEN) -> np.ndarray:
    """RGB image: `left` colour in the left half, `right` in the right half."""
    img = np.empty((h, w, 3), np.uint8)
    img[:, : w // 2], img[:, w // 2:] = left, right
    return img


def expected_halves(h: int, w: int, left: int = 1, right: int = 2) -> np.ndarray:
    m = np.full((h, w), right, np.uint8)
    m[:, : w // 2] = left
    return m


def mask_of(report: predict.PredictReport, name: str) -> np.ndarray:
    [entry] = [w for w in report.written if Path(w["input"]).name == name]
    with Image.open(entry["mask"]) as img:
        assert img.mode == "L" and img.format == "PNG"
        return np.asarray(img)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from segpipe.models import build_model

    d = tmp_path_factory.mktemp("models")
    unet = d / "unet.keras"
    build_model("unet", (32, 32, 3), 3, base_filters=4, depth=2).save(unet)
    return {"colour": colour_model(d / "colour.keras"), "unet": unet}


@pytest.fixture()
def inputs(tmp_path) -> Path:
    """A folder of odd images (names lie about formats on purpose) plus a corrupt file."""
    src = tmp_path / "in"
    (src / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(halves(40, 48)).save(src / "photo.jpg", quality=100, subsampling=0)
    rgba = np.dstack([halves(30, 20, BLUE, GREEN), np.full((30, 20), 7, np.uint8)])  # nearly transparent
    Image.fromarray(rgba).save(src / "rgba.png")
    Image.fromarray(halves(33, 50, RED, BLUE)).save(src / "sub" / "anim.gif")
    Image.fromarray(np.full((25, 35), 200, np.uint8)).save(src / "sub" / "gray.PNG")
    depth16 = np.arange(36 * 44, dtype=np.uint16).reshape(36, 44) * 40
    Image.fromarray(depth16).save(src / "sub" / "deeper" / "depth16.png")
    Image.fromarray(halves(900, 1200)).save(src / "big.jpeg", quality=95)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (src / "empty.png").write_bytes(b"")
    (src / "notes.txt").write_text("not an image, ignored by extension")
    (src / ".hidden.jpg").write_bytes(b"AppleDouble junk")
    png_named_jpg = io.BytesIO()
    Image.fromarray(halves(16, 24, GREEN, RED)).save(png_named_jpg, format="PNG")
    (src / "sub" / "actually_png.jpg").write_bytes(png_named_jpg.getvalue())
    return src


def test_directory_of_odd_images(models, inputs, tmp_path):
    out = tmp_path / "out"
    report = predict.predict_paths([models["colour"]], [inputs], out, batch_size=3)

    names = sorted(Path(w["input"]).name for w in report.written)
    assert names == ["actually_png.jpg", "anim.gif", "big.jpeg", "depth16.png", "gray.PNG", "photo.jpg", "rgba.png"]
    failed = {Path(f["input"]).name: f["error"] for f in report.failed}
    assert set(failed) == {"broken.jpg", "empty.png"}
    assert "cannot decode" in failed["broken.jpg"] or "not a recognisable image" in failed["broken.jpg"]
    assert "empty file" in failed["empty.png"]

    # Sub-paths kept; mask and overlay beside each other; mask size == input size; trimap values.
    assert (out / "sub" / "deeper" / "depth16_mask.png").is_file() and (out / "sub" / "anim_overlay.png").is_file()
    for w in report.written:
        with Image.open(w["input"]) as src:
            size = src.size
        with Image.open(w["mask"]) as mask, Image.open(w["overlay"]) as ov:
            assert mask.size == size and ov.size == size and ov.mode == "RGB"
            assert set(np.unique(np.asarray(mask)).tolist()) <= {1, 2, 3}

    # The colour model makes known masks: value = class + 1.
    np.testing.assert_array_equal(mask_of(report, "photo.jpg"), expected_halves(40, 48))
    np.testing.assert_array_equal(mask_of(report, "big.jpeg"), expected_halves(900, 1200))
    np.testing.assert_array_equal(mask_of(report, "rgba.png"), expected_halves(30, 20, 3, 2))  # alpha dropped
    np.testing.assert_array_equal(mask_of(report, "anim.gif"), expected_halves(33, 50, 1, 3))
    np.testing.assert_array_equal(mask_of(report, "actually_png.jpg"), expected_halves(16, 24, 2, 1))

    # The overlay is the gallery's blend of the prediction over the input.
    [photo] = [w for w in report.written if w["input"].endswith("photo.jpg")]
    with Image.open(photo["input"]) as src, Image.open(photo["overlay"]) as ov:
        expected = overlay(np.asarray(src.convert("RGB")), expected_halves(40, 48) - 1)
        np.testing.assert_array_equal(np.asarray(ov), expected)

    summary = read_json(out / "predictions.json")
    assert summary["n_written"] == 7 and summary["n_failed"] == 2
    assert summary["mask_values"] == {"1": "pet", "2": "background", "3": "border"}
    assert summary["img_size"] == [[32, 32]] and summary["models"][0]["sha256"]
    assert not [p for p in out.rglob(".*")]  # no temp files left behind


def test_single_files_name_clashes_and_no_overlay(models, inputs, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(halves(20, 20)).save(other / "photo.png")
    out = inputs / "predictions"  # inside an input directory: must not be re-read
    report = predict.predict_paths(
        [models["unet"], models["colour"]],
        [inputs / "photo.jpg", other / "photo.png", inputs / "photo.jpg", tmp_path / "missing.jpg"],
        out, overlay=False,
    )
    assert [Path(w["mask"]).name for w in report.written] == ["photo_mask.png", "photo_png_mask.png"]
    assert all(w["overlay"] is None for w in report.written)
    assert not list(out.glob("*_overlay.png"))
    assert report.failed == [{"input": str(tmp_path / "missing.jpg"), "error": "no such file or directory"}]
    with Image.open(out / "photo_png_mask.png") as m:
        assert m.size == (20, 20) and set(np.unique(np.asarray(m)).tolist()) <= {1, 2, 3}

    again = predict.predict_paths([models["colour"]], [inputs], out)
    assert not any("predictions" in Path(w["input"]).parts for w in again.written)
    for _ in range(2):  # out_dir == the input folder: earlier outputs are never read back as inputs
        beside = predict.predict_paths([models["colour"]], [other], other)
        assert [Path(w["input"]).name for w in beside.written] == ["photo.png"]


@pytest.mark.filterwarnings("ignore:Corrupt EXIF")
def test_load_image_conversions(tmp_path):
    Image.fromarray(np.full((5, 6), 60000, np.uint16)).save(tmp_path / "a.png")
    rgb = predict.load_image(tmp_path / "a.png")
    assert rgb.shape == (5, 6, 3) and rgb.dtype == np.uint8 and (rgb == 60000 >> 8).all()
    Image.fromarray(np.full((4, 3), 77, np.uint8)).save(tmp_path / "g.bmp")
    assert (predict.load_image(tmp_path / "g.bmp") == 77).all()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees for display
    Image.fromarray(halves(10, 20)).save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    assert predict.load_image(tmp_path / "rotated.jpg").shape == (20, 10, 3)  # upright, as displayed
    (tmp_path / "t.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(ValueError, match="cannot decode|not a recognisable"):
        predict.load_image(tmp_path / "t.tif")


def test_clear_errors(models, tmp_path):
    with pytest.raises(FileNotFoundError, match="none of the inputs exists"):
        predict.predict_paths([models["colour"]], [tmp_path / "nope.jpg", tmp_path / "nodir"], tmp_path / "out")
    with pytest.raises(ValueError, match="no inputs"):
        predict.predict_paths([models["colour"]], [], tmp_path / "out")
    img = tmp_path / "x.png"
    Image.fromarray(halves(8, 8)).save(img)
    with pytest.raises(FileNotFoundError, match="absent.keras"):
        predict.predict_paths([tmp_path / "absent.keras"], [img], tmp_path / "out")
    (tmp_path / "empty_dir").mkdir()
    report = predict.predict_paths([models["colour"]], [tmp_path / "empty_dir", img], tmp_path / "out2")
    assert [Path(w["input"]).name for w in report.written] == ["x.png"]
    assert "no image files" in report.failed[0]["error"]


def test_a_stop_request_stops_predicting_before_the_next_batch(models, inputs, tmp_path):
    """Ctrl-C requests a stop (`segpipe.cancel`) besides raising KeyboardInterrupt; when that exception is
    lost (raised inside a finalizer), the loop stops by itself at its next progress step (`Progress.advance`,
    after the first batch): that batch's mask is kept whole, nothing more is written, and no summary."""
    from segpipe import cancel

    cancel.request()
    try:
        with pytest.raises(cancel.Cancelled, match="predict: stopped on request"):
            predict.predict_paths([models["unet"]], [inputs], tmp_path / "out", batch_size=1)
    finally:
        cancel.clear()
    assert not (tmp_path / "out" / "predictions.json").exists()
    masks = list((tmp_path / "out").glob("*_mask.png"))
    assert len(masks) == 1 and Image.open(masks[0]).size  # the one batch before the stop, complete
    assert not list((tmp_path / "out").glob(".*"))  # no temporary file left
