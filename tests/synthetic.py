"""A tiny synthetic Oxford-IIIT Pet, in the official layout, with every known oddity.

    info = make_pets_tree(tmp_path)            # tmp_path/images, tmp_path/annotations
    digests = make_pets_archives(tmp_path)     # images.tar.gz, annotations.tar.gz, SHA256SUMS

Each "pet" is a coloured ellipse on a striped, noisy background; its trimap is
1 inside the ellipse, 3 on a thin ring around its edge and 2 outside, so a
model can learn it. Content depends only on the arguments (and `seed`), so the
same call always writes the same bytes and the same archive digests.

Besides `n_per_breed` normal images per breed (ids `<breed>_1..n`; every 4th
one in test.txt, the rest in trainval.txt), `include_odd=True` adds one image
of each odd kind in `ODD_KINDS`; `SyntheticInfo` says which ids are expected
to be valid, converted or skipped, so tests can assert exact counts.

    ds = write_tiny_dataset(tmp_path / "ds", {"train": 12, "val": 4})   # a prepared dataset, TFRecords
    ds = write_tiny_dataset(tmp_path / "ds", {"test": [(64, 48), (32, 32)]}, draw=my_draw)  # sizes, content

`write_tiny_dataset` writes a dataset directory straight away (no archives, no
validation): for the input pipeline, training, evaluation and export tests. It is the one
writer of prepared datasets in the tests; tests/conftest.py shares one (`tiny_dataset`), and
cached archives (`pets_archives`), across the session.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_BREEDS = ("Abyssinian", "Bengal", "american_bulldog", "beagle")
UNKNOWN_BREED = "Mystery"

# kind -> (breed index into `breeds` or None for UNKNOWN_BREED, number, list files, outcome)
# outcome: "converted" (valid, stored as PNG), "skipped", "valid" (stored as JPEG), "missing" (listed, no file)
ODD_KINDS: dict[str, tuple[int | None, int, tuple[str, ...], str]] = {
    "png_rgba": (0, 101, ("list", "test"), "converted"),  # like Abyssinian_5
    "gif": (0, 102, (), "converted"),  # like Abyssinian_34: GIF named .jpg, in no list
    "truncated_jpeg": (1, 103, ("list", "trainval"), "skipped"),
    "zero_byte": (1, 104, ("list", "trainval"), "skipped"),
    "cmyk_jpeg": (2, 105, ("list", "trainval"), "converted"),
    "grayscale_jpeg": (2, 106, ("list", "test"), "converted"),
    "png16": (3, 107, ("list", "trainval"), "converted"),  # 16-bit grayscale PNG named .jpg
    "no_trimap": (3, 108, ("list", "trainval"), "skipped"),
    "trimap_value_7": (0, 109, ("list", "trainval"), "skipped"),
    "trimap_wrong_size": (1, 110, ("list", "test"), "skipped"),
    "unlisted": (0, 111, (), "valid"),  # like Abyssinian_82: in no list, class inferred from breed
    "listed_missing": (1, 112, ("list", "trainval"), "missing"),
    "rgb_trimap": (2, 113, ("list", "trainval"), "skipped"),  # RGB trimap with differing channels
    "palette_trimap": (3, 114, ("list", "trainval"), "valid"),  # P-mode trimap, indices 1..3
    "unknown_breed": (None, 1, (), "valid"),  # in no list, breed listed nowhere: class 0
}
STRAY_FILES = ("{b0}_100.mat", "{b0}_101.mat", "._{b0}_1.jpg")  # in images/, to be ignored


@dataclass
class SyntheticInfo:
    """What `make_pets_tree` wrote and what validation should conclude about it."""

    root: Path
    images_dir: Path
    annotations_dir: Path
    breeds: dict[str, tuple[int, int, int]]  # breed -> (class_id, species, breed_id), as in list.txt
    lists: dict[str, frozenset[str]]  # id -> list files naming it ("list", "trainval", "test")
    valid: list[str]  # sorted ids validation should keep
    formats: dict[str, str]  # valid id -> "jpeg" (original bytes) or "png" (converted)
    converted: dict[str, str]  # id -> odd kind
    skipped: dict[str, str]  # id -> odd kind
    unlisted: list[str]  # valid ids in no list file
    missing: list[str]  # ids listed but without an image file
    ignored: list[str]  # file names in images/ that are not images
    kinds: dict[str, str] = field(default_factory=dict)  # odd kind -> id

    @property
    def images_found(self) -> int:
        return len(self.valid) + len(self.skipped)


def breed_table(breeds: tuple[str, ...]) -> dict[str, tuple[int, int, int]]:
    """Class ids like the official list: breeds sorted case-insensitively; cats are Capitalised."""
    table, per_species = {}, {1: 0, 2: 0}
    for class_id, breed in enumerate(sorted(breeds, key=str.lower), 1):
        species = 1 if breed[:1].isupper() else 2
        per_species[species] += 1
        table[breed] = (class_id, species, per_species[species])
    return table


def draw_pet(
    rng: np.random.Generator, size: tuple[int, int], colour: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 HxWx3 image, uint8 HxW trimap) of an ellipse 'pet' on a textured background."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = rng.uniform(0.4, 0.6) * w, rng.uniform(0.4, 0.6) * h
    rx, ry = rng.uniform(0.22, 0.35) * w, rng.uniform(0.22, 0.35) * h
    d = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    ring = 1.5 / min(rx, ry)
    trimap = np.where(d < 1 - ring, 1, np.where(d < 1 + ring, 3, 2)).astype(np.uint8)

    freq = rng.uniform(0.2, 0.6, size=2)
    stripes = 40 * np.sin(xx * freq[0] + yy * freq[1])
    background = np.stack([110 + stripes, 120 + stripes * 0.5, 130 - stripes], axis=-1)
    pet = np.broadcast_to(np.asarray(colour, np.float32), background.shape)
    image = np.where((trimap == 1)[..., None], pet, background)
    image = np.where((trimap == 3)[..., None], (pet + background) / 2, image)
    image = image + rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), trimap


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _odd_image(kind: str, rgb: np.ndarray) -> bytes:
    """The bytes written to `<id>.jpg` for an odd kind."""
    img = Image.fromarray(rgb)
    if kind == "png_rgba":
        alpha = np.full(rgb.shape[:2], 255, np.uint8)
        alpha[: rgb.shape[0] // 4] = 128
        return _png(Image.fromarray(np.dstack([rgb, alpha])))
    if kind == "gif":
        buf = io.BytesIO()
        img.save(buf, format="GIF")
        return buf.getvalue()
    if kind == "truncated_jpeg":
        data = _jpeg(img)
        scan = data.find(b"\xff\xda")
        return data[: scan + (len(data) - scan) // 2]
    if kind == "zero_byte":
        return b""
    if kind == "cmyk_jpeg":
        return _jpeg(img.convert("CMYK"))
    if kind == "grayscale_jpeg":
        return _jpeg(img.convert("L"))
    if kind == "png16":
        return _png(Image.fromarray(np.asarray(img.convert("L"), np.uint16) * 257))
    return _jpeg(img)


def _odd_trimap(kind: str, trimap: np.ndarray) -> bytes | None:
    """The bytes written to `trimaps/<id>.png` for an odd kind (None: no trimap)."""
    if kind == "no_trimap":
        return None
    if kind == "trimap_value_7":
        bad = trimap.copy()
        bad[0, :3] = 7
        return _png(Image.fromarray(bad))
    if kind == "trimap_wrong_size":
        return _png(Image.fromarray(np.pad(trimap, ((0, 0), (0, 2)), constant_values=2)))
    if kind == "rgb_trimap":
        rgb = np.dstack([trimap, np.full_like(trimap, 2), trimap])
        return _png(Image.fromarray(rgb))
    if kind == "palette_trimap":
        p = Image.frombytes("P", (trimap.shape[1], trimap.shape[0]), trimap.tobytes())
        p.putpalette([0, 0, 0, 200, 40, 40, 0, 0, 0, 255, 255, 255])
        return _png(p)
    return _png(Image.fromarray(trimap))


def _list_line(image_id: str, row: tuple[int, int, int]) -> str:
    return f"{image_id} {row[0]} {row[1]} {row[2]}\n"


def make_pets_tree(
    root: str | Path,
    *,
    n_per_breed: int = 4,
    size: tuple[int, int] = (48, 40),
    breeds: tuple[str, ...] = DEFAULT_BREEDS,
    include_odd: bool = True,
    seed: int = 0,
    test_only: bool = False,
) -> SyntheticInfo:
    """Write `root/images/*.jpg` and `root/annotations/...` (official layout); `size` is (width, height).

    `test_only=True` lists every image in test.txt and leaves trainval.txt empty: a held-out set, or
    new data to score.
    """
    if n_per_breed < 1 or not breeds or len(set(breeds)) != len(breeds) or UNKNOWN_BREED in breeds:
        raise ValueError(f"need n_per_breed >= 1 and distinct breeds other than {UNKNOWN_BREED!r}")
    root = Path(root)
    images, annotations = root / "images", root / "annotations"
    (annotations / "trimaps").mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    table = breed_table(breeds)
    colours = {b: tuple(int(c) for c in rng.integers(30, 230, 3)) for b in (*breeds, UNKNOWN_BREED)}

    # (id, breed, kind or "", list files)
    plan = [(f"{b}_{n}", b, "", ("list", "test" if n % 4 == 0 or test_only else "trainval"))
            for b in breeds for n in range(1, n_per_breed + 1)]
    if include_odd:
        for kind, (bi, number, in_lists, _) in ODD_KINDS.items():
            breed = UNKNOWN_BREED if bi is None else breeds[bi % len(breeds)]
            if test_only:
                in_lists = tuple("test" if name == "trainval" else name for name in in_lists)
            plan.append((f"{breed}_{number}", breed, kind, in_lists))

    info = SyntheticInfo(root, images, annotations, table, {}, [], {}, {}, {}, [], [], [])
    for image_id, breed, kind, in_lists in plan:
        rgb, trimap = draw_pet(rng, size, colours[breed])
        if in_lists:
            info.lists[image_id] = frozenset(in_lists)
        outcome = ODD_KINDS[kind][3] if kind else "valid"
        if kind:
            info.kinds[kind] = image_id
        if outcome == "missing":
            info.missing.append(image_id)
        else:
            (images / f"{image_id}.jpg").write_bytes(_odd_image(kind, rgb))
        trimap_png = _odd_trimap(kind, trimap)
        if trimap_png is not None:
            (annotations / "trimaps" / f"{image_id}.png").write_bytes(trimap_png)
        if outcome in ("valid", "converted"):
            info.valid.append(image_id)
            info.formats[image_id] = "png" if outcome == "converted" else "jpeg"
            if not in_lists:
                info.unlisted.append(image_id)
        if outcome == "converted":
            info.converted[image_id] = kind
        elif outcome == "skipped":
            info.skipped[image_id] = kind

    if include_odd:
        b0 = breeds[0]
        for name in STRAY_FILES:
            name = name.format(b0=b0)
            data = b"MATLAB 5.0 MAT-file\x00" if name.endswith(".mat") else b"\x00\x05\x16\x07AppleDouble"
            (images / name).write_bytes(data)
            info.ignored.append(name)
        (annotations / "trimaps" / f"._{b0}_1.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    info.valid.sort()
    info.ignored.sort()

    header = ("#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n"
              "#SPECIES: 1:Cat 2:Dog\n#BREED ID: 1-25:Cat 1:12:Dog\n")
    listed = sorted(info.lists)
    for name, fname in (("list", "list.txt"), ("trainval", "trainval.txt"), ("test", "test.txt")):
        rows = "".join(_list_line(i, table[i.rsplit("_", 1)[0]]) for i in listed if name in info.lists[i])
        (annotations / fname).write_text((header if name == "list" else "") + rows)
    (annotations / "README").write_text(
        "Synthetic Oxford-IIIT Pet for segpipe tests. Trimaps: 1 pet, 2 background, 3 border.\n")
    return info


def _tar_dir(src: Path, dest: Path, *, compress: bool) -> None:
    """Deterministic tar of `src` with top-level dir `src.name` (fixed mtimes and owners)."""
    with open(dest, "wb") as raw:
        gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if compress else None
        with tarfile.open(fileobj=gz or raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in [src, *sorted(src.rglob("*"))]:
                ti = tar.gettarinfo(str(path), arcname=str(path.relative_to(src.parent)))
                ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "", ""
                ti.mode = 0o755 if path.is_dir() else 0o644
                if path.is_file():
                    with open(path, "rb") as f:
                        tar.addfile(ti, f)
                else:
                    tar.addfile(ti)
        if gz is not None:
            gz.close()


def make_pets_archives(out_dir: str | Path, *, plain_tar_for_images: bool = False, **kw) -> dict[str, str]:
    """Write `images.tar.gz`, `annotations.tar.gz` and `SHA256SUMS` into `out_dir`; return {name: sha256}.

    `kw` goes to `make_pets_tree`. `plain_tar_for_images=True` writes an
    uncompressed tar under the .tar.gz name (as reported for the official archive).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    digests = {}
    with tempfile.TemporaryDirectory() as tmp:
        make_pets_tree(Path(tmp), **kw)
        for name, compress in (("images", not plain_tar_for_images), ("annotations", True)):
            dest = out_dir / f"{name}.tar.gz"
            _tar_dir(Path(tmp) / name, dest, compress=compress)
            digests[dest.name] = hashlib.sha256(dest.read_bytes()).hexdigest()
    (out_dir / "SHA256SUMS").write_text("".join(f"{d}  {n}\n" for n, d in digests.items()))
    return digests


# --------------------------------------------------------------------------- a tiny prepared dataset


Draw = Callable[[np.random.Generator, int, int], tuple[np.ndarray, np.ndarray]]


def synthetic_example(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB image, uint8 trimap 1..3): an ellipse 'pet' with a border ring on a noisy background.

    The pet is reddish and the background bluish, so a tiny model can learn it.
    """
    yy, xx = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0.35, 0.65) * height, rng.uniform(0.35, 0.65) * width
    ry, rx = rng.uniform(0.2, 0.35) * height, rng.uniform(0.2, 0.35) * width
    r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    trimap = np.where(r < 0.8, 1, np.where(r < 1.2, 3, 2)).astype(np.uint8)
    colours = np.array([[0, 0, 0], [200, 60, 40], [40, 80, 200], [120, 70, 120]], np.float32)
    image = colours[trimap] + rng.normal(0, 12, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8), trimap


def write_tiny_dataset(
    root: Path, splits: Mapping[str, int | Sequence[tuple[int, int]]], *, height: int = 40, width: int = 48,
    seed: int = 0, key: str = "tiny-ds", image_format: str = "png", draw: Draw = synthetic_example,
) -> Path:
    """A dataset directory with one TFRecord shard per non-empty split and a manifest.json, as `prepare` writes.

    A split is a number of `height` x `width` examples or a list of (height, width) sizes, one per example;
    an empty split gets no shard (as `prepare` writes it). `draw(rng, height, width)` gives each example's
    (uint8 RGB image, uint8 trimap 1..3); images are stored PNG- or JPEG-encoded (`image_format`).
    """
    import tensorflow as tf

    from segpipe.data.spec import serialize_example
    from segpipe.fsutil import atomic_write_json, sha256_file

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    manifest_splits = {}
    for split, wanted in splits.items():
        sizes = [(height, width)] * wanted if isinstance(wanted, int) else [tuple(s) for s in wanted]
        manifest_splits[split] = {"num_examples": len(sizes), "shards": []}
        if not sizes:
            continue
        path = root / f"{split}-00000-of-00001.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as writer:
            for i, (h, w) in enumerate(sizes):
                image, trimap = draw(rng, h, w)
                encoded = _jpeg(Image.fromarray(image)) if image_format == "jpeg" else tf.io.encode_png(image).numpy()
                writer.write(serialize_example(
                    image_bytes=encoded, image_format=image_format,
                    mask_png=tf.io.encode_png(trimap[..., None]).numpy(), height=h, width=w,
                    example_id=f"{split}_{i}", class_id=1, species=1, breed_id=1, breed="Abyssinian",
                ))
        shard = {"file": path.name, "num_examples": len(sizes), "sha256": sha256_file(path),
                 "bytes": path.stat().st_size}
        manifest_splits[split]["shards"] = [shard]
    atomic_write_json(root / "manifest.json", {
        "dataset_key": key, "splits": manifest_splits,
        "num_examples": sum(s["num_examples"] for s in manifest_splits.values()),
    })
    return root


def split_as_pngs(dataset_dir: Path, split: str, folder: Path) -> list[str]:
    """Write every image of `split` of a dataset directory as `<id>.png` into `folder` (the pixels exactly as
    the TFRecords hold them, for `segpipe predict`); return the ids in file order."""
    from segpipe.data.tfrecords import read_examples

    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for ex in read_examples(dataset_dir, split).as_numpy_iterator():
        ids.append(ex["id"].decode())
        Image.fromarray(ex["image"]).save(folder / f"{ids[-1]}.png")
    return ids
