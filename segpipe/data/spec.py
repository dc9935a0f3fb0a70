"""The TFRecord feature spec: one `tf.train.Example` per image.

| key              | type   | meaning                                                        |
|------------------|--------|----------------------------------------------------------------|
| image/encoded    | bytes  | the image, RGB: original JPEG bytes, or lossless PNG if it had |
|                  |        | to be converted (PNG/GIF/RGBA/grayscale/CMYK named .jpg)       |
| image/format     | bytes  | b"jpeg" or b"png"                                              |
| image/height     | int64  | original height in pixels                                      |
| image/width      | int64  | original width in pixels                                       |
| image/id         | bytes  | e.g. b"Abyssinian_5"                                           |
| image/class_id   | int64  | 1..37 from list.txt (0 when unknown)                           |
| image/species    | int64  | 1 cat, 2 dog (0 when unknown)                                  |
| image/breed_id   | int64  | id within species from list.txt (0 when unknown)               |
| image/breed      | bytes  | breed name, e.g. b"Abyssinian", b"american_bulldog"            |
| mask/encoded     | bytes  | the trimap as a single-channel 8-bit PNG, values 1 pet,         |
|                  |        | 2 background, 3 border; same height and width as the image     |

Shards hold original-size images (see docs/data.md, "TFRecord feature spec", for the trade-off);
the input pipeline resizes. Read with plain tf.data:

    ds = tf.data.TFRecordDataset(files).map(segpipe.data.spec.parse_example)
"""

from __future__ import annotations

from typing import Any

FEATURE_KEYS: dict[str, str] = {
    "image/encoded": "bytes",
    "image/format": "bytes",
    "image/height": "int64",
    "image/width": "int64",
    "image/id": "bytes",
    "image/class_id": "int64",
    "image/species": "int64",
    "image/breed_id": "int64",
    "image/breed": "bytes",
    "mask/encoded": "bytes",
}

SPEC_VERSION = 1


def feature_description() -> dict[str, Any]:
    """The `tf.io.parse_single_example` feature description for FEATURE_KEYS."""
    import tensorflow as tf

    kinds = {"bytes": tf.string, "int64": tf.int64}
    return {k: tf.io.FixedLenFeature([], kinds[v]) for k, v in FEATURE_KEYS.items()}


def serialize_example(
    *,
    image_bytes: bytes,
    image_format: str,
    mask_png: bytes,
    height: int,
    width: int,
    example_id: str,
    class_id: int,
    species: int,
    breed_id: int,
    breed: str,
) -> bytes:
    import tensorflow as tf

    def b(v: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

    feature = {
        "image/encoded": b(image_bytes),
        "image/format": b(image_format.encode()),
        "image/height": i(height),
        "image/width": i(width),
        "image/id": b(example_id.encode()),
        "image/class_id": i(class_id),
        "image/species": i(species),
        "image/breed_id": i(breed_id),
        "image/breed": b(breed.encode()),
        "mask/encoded": b(mask_png),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_example(serialized: Any) -> dict[str, Any]:
    """Parse one serialized example and decode it.

    Returns a dict with `image` (uint8 HxWx3), `mask` (uint8 HxWx1, values 1..3),
    `id`, `class_id`, `species`, `breed_id`, `breed`, `height`, `width`.
    """
    import tensorflow as tf

    f = tf.io.parse_single_example(serialized, feature_description())
    image = tf.io.decode_image(f["image/encoded"], channels=3, expand_animations=False)
    mask = tf.io.decode_png(f["mask/encoded"], channels=1)
    h, w = f["image/height"], f["image/width"]
    image = tf.ensure_shape(image, [None, None, 3])
    return {
        "image": image,
        "mask": mask,
        "id": f["image/id"],
        "class_id": f["image/class_id"],
        "species": f["image/species"],
        "breed_id": f["image/breed_id"],
        "breed": f["image/breed"],
        "height": h,
        "width": w,
    }
