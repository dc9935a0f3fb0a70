"""Tests for segpipe.gallery.render: palette, overlay arithmetic, selection, files and HTML safety."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segpipe.gallery import render as gallery
from segpipe.gallery.render import LEGEND, PALETTE, colorize, overlay, render_gallery, safe_filename, select_items, tile
from segpipe.evaluation.metrics import confusion_matrix, per_image_iou, scores

MALICIOUS = "<script>alert(1)</script>"


@pytest.fixture
def chromium() -> Path:
    """The headless Chromium the render check drives. Missing: a skip on a developer's machine, a failure
    under CI (`CI` set, as .ci/run does), which installs it."""
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but the 'chromium' command is missing: CI must install it (.ci/run)")
        pytest.skip("needs the 'chromium' command (headless Chromium)")
    return Path(found)


def make_item(ident: str, seed: int, tag: str = "sample", size: int = 32) -> dict:
    rng = np.random.default_rng(seed)
    truth = np.ones((size, size), dtype=np.int64)
    truth[8:24, 8:24] = 0
    truth[8, 8:24] = 2
    pred = np.where(rng.random(truth.shape) < 0.8, truth, rng.integers(0, 3, truth.shape))
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return {"id": ident, "image": image, "truth": truth, "pred": pred, "iou": per_image_iou(truth, pred), "tag": tag}


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [v for k, v in attrs if k in ("src", "href") and v]


# ---------------------------------------------------------------- pixels


def test_colorize_uses_palette_at_known_pixels():
    labels = np.array([[0, 1], [2, 1]])
    rgb = colorize(labels)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 0].tolist() == [230, 159, 0]  # pet
    assert rgb[0, 1].tolist() == [0, 114, 178]  # background
    assert rgb[1, 0].tolist() == [240, 228, 66]  # border
    assert [name for name, _ in LEGEND] == ["pet", "background", "border"]
    assert [list(c) for _, c in LEGEND] == PALETTE.tolist()
    assert len({tuple(c) for c in PALETTE.tolist()}) == 3


def test_colorize_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        colorize(np.array([[0, 3]]))
    with pytest.raises(ValueError, match="HxW array of integer labels"):
        colorize(np.zeros((2, 2), dtype=np.float32))


def test_overlay_blend_arithmetic():
    image = np.array([[[120, 61, 200], [40, 22, 2]]], dtype=np.uint8)
    labels = np.array([[0, 1]])
    # alpha 0.5, pet (230, 159, 0):  (120+230)/2 = 175, (61+159)/2 = 110, (200+0)/2 = 100
    assert overlay(image, labels, alpha=0.5)[0, 0].tolist() == [175, 110, 100]
    # alpha 0.25, background (0, 114, 178): .75*40 + 0 = 30, .75*22 + .25*114 = 45, .75*2 + .25*178 = 46
    assert overlay(image, labels, alpha=0.25)[0, 1].tolist() == [30, 45, 46]
    np.testing.assert_array_equal(overlay(image, labels, alpha=0.0), image)
    np.testing.assert_array_equal(overlay(image, labels, alpha=1.0), colorize(labels))


def test_overlay_rejects_bad_inputs():
    with pytest.raises(ValueError, match="uint8 RGB"):
        overlay(np.zeros((2, 2, 3), dtype=np.float32), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="same height and width"):
        overlay(np.zeros((2, 2, 3), dtype=np.uint8), np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="alpha"):
        overlay(np.zeros((2, 2, 3), dtype=np.uint8), np.zeros((2, 2), int), alpha=1.5)


def test_tile_layout_and_upscaling():
    item = make_item("a", 0)
    t = tile(item["image"], item["truth"], item["pred"])
    scale = 4  # 32 px upscaled to >= 128
    w = 32 * scale
    assert t.shape == (128, 4 * w + 3 * gallery.GAP, 3)
    assert t[0, 0].tolist() == item["image"][0, 0].tolist()  # input panel
    assert t[12 * scale, w + gallery.GAP + 12 * scale].tolist() == PALETTE[0].tolist()  # truth pet centre
    assert t[0, w + gallery.GAP].tolist() == PALETTE[1].tolist()  # truth background corner
    assert t[0, w].tolist() == [255, 255, 255]  # gap


# ---------------------------------------------------------------- selection


PER_IMAGE = [{"id": f"img{i}", "iou": iou} for i, iou in enumerate([0.9, 0.2, 0.5, 0.1, 0.7, 0.3, 0.95, 0.6])]


def test_select_items_worst_first_then_sample():
    sel = select_items(PER_IMAGE, n_sample=3, n_worst=2, seed=0)
    assert [s["id"] for s in sel[:2]] == ["img3", "img1"]  # IoU 0.1 then 0.2
    assert [s["tag"] for s in sel] == ["worst", "worst", "sample", "sample", "sample"]
    ids = [s["id"] for s in sel]
    assert len(set(ids)) == len(ids)
    sample_pos = [int(i[3:]) for i in ids[2:]]
    assert sample_pos == sorted(sample_pos) and not {3, 1} & set(sample_pos)
    assert "tag" not in PER_IMAGE[0]  # inputs untouched


def test_select_items_is_deterministic_and_seeded():
    a = select_items(PER_IMAGE, 3, 2, seed=7)
    assert a == select_items(PER_IMAGE, 3, 2, seed=7)
    samples = {tuple(s["id"] for s in select_items(PER_IMAGE, 3, 0, seed=s)) for s in range(10)}
    assert len(samples) > 1  # the seed matters


def test_select_items_caps_and_ties():
    everything = select_items(PER_IMAGE, n_sample=100, n_worst=100, seed=0)
    assert [s["iou"] for s in everything] == sorted(p["iou"] for p in PER_IMAGE)
    assert select_items(PER_IMAGE, 0, 0, 0) == []
    ties = [{"id": "b", "iou": 0.5}, {"id": "a", "iou": 0.5}, {"id": "c", "iou": 0.1}]
    assert [s["id"] for s in select_items(ties, 0, 3, 0)] == ["c", "b", "a"]  # ties keep input order


def test_select_items_rejects_bad_input():
    with pytest.raises(ValueError, match="duplicate id 'x'"):
        select_items([{"id": "x", "iou": 0.1}, {"id": "x", "iou": 0.2}], 1, 1, 0)
    with pytest.raises(ValueError, match=r"per_image\[0\] must have 'id' and 'iou'"):
        select_items([{"id": "x"}], 1, 1, 0)
    with pytest.raises(ValueError, match="finite 'iou'"):
        select_items([{"id": "x", "iou": float("nan")}], 1, 1, 0)
    with pytest.raises(ValueError, match="n_worst"):
        select_items(PER_IMAGE, 1, -1, 0)


# ---------------------------------------------------------------- rendering


def _render(tmp_path: Path, items: list[dict], **kw) -> Path:
    return render_gallery(items, tmp_path / "gallery", title=kw.pop("title", "Test gallery"), **kw)


def test_render_gallery_writes_files_and_links(tmp_path):
    items = [make_item("Abyssinian_1", 1, "worst"), make_item("beagle_2", 2), make_item("cat 3/x", 3)]
    cm = confusion_matrix(np.stack([i["truth"] for i in items]), np.stack([i["pred"] for i in items]))
    index = _render(tmp_path, items, metrics=scores(cm))
    assert index == tmp_path / "gallery" / "index.html" and index.is_file()
    out = index.parent
    assert sorted(p.name for p in (out / "tiles").iterdir()) == [
        "000-Abyssinian_1.png", "001-beagle_2.png", "002-cat_3_x.png",
    ]
    assert (out / "contact-sheet-000.png").is_file()
    text = index.read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(text)
    assert parser.links, "index.html references no files"
    for link in parser.links:
        assert "://" not in link and not link.startswith("/"), link  # relative only
        assert (out / link).is_file(), link
    assert "contact-sheet-000.png" in parser.links and "tiles/002-cat_3_x.png" in parser.links
    for name, rgb in LEGEND:  # colour legend
        assert f"rgb{rgb}" in text and f"</span>{name}" in text
    assert f"{items[0]['iou']:.4f}" in text and "worst" in text
    assert f"{scores(cm)['mean_iou']:.4f}" in text  # metrics table
    assert "<style>" in text and "<link" not in text  # self-contained
    manifest = json.loads((out / "items.json").read_text())
    assert [m["id"] for m in manifest["items"]] == ["Abyssinian_1", "beagle_2", "cat 3/x"]
    assert not [p for p in tmp_path.iterdir() if p.name != "gallery"]  # no temp dirs left


def test_tile_png_pixels_match_inputs(tmp_path):
    item = make_item("x", 4)
    out = _render(tmp_path, [item]).parent
    png = np.asarray(Image.open(out / "tiles" / "000-x.png").convert("RGB"))
    np.testing.assert_array_equal(png, tile(item["image"], item["truth"], item["pred"]))


def test_html_escapes_malicious_id(tmp_path):
    items = [make_item(MALICIOUS, 5, "worst"), make_item("ok'\"&", 6)]
    index = _render(tmp_path, items, title=f"title {MALICIOUS}")
    text = index.read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "ok&#x27;&quot;&amp;" in text
    parser = _Links()
    parser.feed(text)
    assert "script" not in parser.tags
    names = [p.name for p in index.parent.rglob("*")]
    assert not [n for n in names if set(n) & set("<>/'\"&()")]  # file names sanitised
    for link in parser.links:
        assert (index.parent / link).is_file()


def test_contact_sheets_split_and_have_captions(tmp_path, monkeypatch):
    monkeypatch.setattr(gallery, "ROWS_PER_SHEET", 2)
    items = [make_item(f"id{i}", i) for i in range(3)]
    out = _render(tmp_path, items).parent
    sheets = sorted(p.name for p in out.glob("contact-sheet-*.png"))
    assert sheets == ["contact-sheet-000.png", "contact-sheet-001.png"]
    sheet = np.asarray(Image.open(out / sheets[0]).convert("RGB"))
    t = tile(items[0]["image"], items[0]["truth"], items[0]["pred"])
    assert sheet.shape[1] == t.shape[1]
    assert sheet.shape[0] == 16 + 2 * (16 + t.shape[0] + gallery.GAP)
    caption_band = sheet[16:32]
    assert (caption_band < 128).any()  # dark caption text drawn on white
    np.testing.assert_array_equal(sheet[32:32 + t.shape[0]], t)  # first tile below its caption


def test_caption_format():
    assert gallery._caption({"id": "Bengal_12", "iou": 0.7312, "tag": "worst"}) == "Bengal_12  IoU 0.73  [worst]"


def test_render_replaces_existing_gallery_only_when_complete(tmp_path):
    _render(tmp_path, [make_item("first", 1), make_item("second", 2)])
    out = tmp_path / "gallery"
    assert (out / "tiles" / "001-second.png").is_file()
    bad = make_item("broken", 3)
    bad["pred"] = bad["pred"][:10]  # wrong size: fails half-way through rendering
    with pytest.raises(ValueError, match="must have the same"):
        _render(tmp_path, [make_item("new", 4), bad])
    assert (out / "tiles" / "001-second.png").is_file()  # old gallery intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery"]  # temp dir cleaned up
    _render(tmp_path, [make_item("third", 5)])
    assert sorted(p.name for p in (out / "tiles").iterdir()) == ["000-third.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery"]


def test_render_empty_and_bad_items(tmp_path):
    index = _render(tmp_path, [])
    assert "No items." in index.read_text()
    assert not list(index.parent.glob("contact-sheet-*.png"))
    with pytest.raises(ValueError, match=r"items\[0\] is missing keys \['pred'\]"):
        _render(tmp_path, [{k: v for k, v in make_item("a", 0).items() if k != "pred"}])
    with pytest.raises(ValueError, match="tag must be one of"):
        _render(tmp_path, [{**make_item("a", 0), "tag": "best"}])


def test_safe_filename():
    assert safe_filename("../../etc/passwd") == "_.._etc_passwd"
    assert safe_filename(MALICIOUS) == "_script_alert_1___script_"
    assert safe_filename("") == "item" and len(safe_filename("x" * 500)) == 80


PROBE = """<!doctype html><html><body><pre id="result">pending</pre>
<iframe id="page" src="%s" width="1200" height="900"></iframe>
<script>
document.getElementById("page").addEventListener("load", function () {
  var doc = this.contentDocument;
  var images = Array.from(doc.images).map(function (i) {
    return {src: i.getAttribute("src"), complete: i.complete, width: i.naturalWidth, height: i.naturalHeight};
  });
  document.getElementById("result").textContent = "RESULT " + JSON.stringify({title: doc.title, images: images});
});
</script></body></html>"""


def _images_as_chromium_loaded_them(chromium: Path, index: Path, tmp_path: Path) -> dict:
    """Open `index` in headless Chromium (inside a probe page's iframe) and report every <img> of it: its
    src, whether it finished loading and its decoded size (0 x 0 when the image failed to load)."""
    probe = tmp_path / "probe.html"
    probe.write_text(PROBE % index.resolve().as_uri())
    cmd = [
        str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri(),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)
    found = [line for line in proc.stdout.splitlines() if "RESULT {" in line]
    assert found, f"the probe page reported nothing (rc {proc.returncode}): {proc.stderr[-2000:]}"
    text = found[0].split("RESULT ", 1)[1]
    return json.loads(text[: text.rindex("}") + 1])


@pytest.mark.slow
def test_index_renders_in_headless_chromium_with_every_image_loaded(chromium, tmp_path):
    items = [make_item(MALICIOUS, 1, "worst"), make_item("beagle_2", 2)]
    index = _render(tmp_path, items)
    tiles = sorted((index.parent / "tiles").iterdir())
    page = _images_as_chromium_loaded_them(chromium, index, tmp_path)
    assert page["title"] == "Test gallery"
    loaded = {img["src"]: (img["complete"], img["width"], img["height"]) for img in page["images"]}
    # every tile is shown, and each decoded at its size on disk (a missing or broken image decodes to 0 x 0)
    assert loaded == {f"tiles/{t.name}": (True, *Image.open(t).size) for t in tiles}, page
    assert all(w > 0 and h > 0 for _, w, h in loaded.values())
    assert not any(MALICIOUS in img["src"] for img in page["images"])  # the file name is sanitised

    tiles[0].unlink()  # the check can fail: an image that does not load is reported as such
    broken = {img["src"]: img["width"] for img in _images_as_chromium_loaded_them(chromium, index, tmp_path)["images"]}
    assert broken[f"tiles/{tiles[0].name}"] == 0 and broken[f"tiles/{tiles[1].name}"] > 0
