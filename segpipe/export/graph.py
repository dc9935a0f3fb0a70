"""The graphs an export is made of: the serving model, and the SavedModel's signatures around it.

`serving_model(models, flip)` is a Keras model from uint8 RGB at the largest member's input size to softmax
probabilities at the first member's size: scaling to [0, 1], each smaller member's input resized from that image
(multi-scale TTA: the same model rebuilt at other sizes), every member (whose own preprocessing is inside it),
flip test-time augmentation and the ensemble average, computed exactly as `segpipe.evaluation.ensemble` computes
them.
LiteRT and ONNX are converted from it; the SavedModel wraps it with decoding and resizing
(`saved_model_archive`), so TF Serving takes encoded images and answers trimaps at their original size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from segpipe.export.runtime import MAX_PIXELS


def largest_input_size(models: Sequence[Any]) -> tuple[int, int]:
    """The input size of the serving model: the largest of the members' (each smaller member's input is
    resized from it inside the graph, as `segpipe.evaluation.ensemble.scaled_inputs` does)."""
    from segpipe.evaluation.ensemble import model_sizes

    return max(model_sizes(models), key=lambda s: (s[0] * s[1], s))


def serving_model(models: Sequence[Any], flip: bool) -> Any:
    """uint8 (B, H, W, 3) at the largest member's size -> float32 probabilities (B, h, w, 3) at the first
    member's size: the members averaged, each with flip TTA."""
    import keras
    from keras import layers, ops

    from segpipe.evaluation.ensemble import input_size, model_sizes

    size = largest_input_size(models)
    out_size = model_sizes(models)[0]
    image = keras.Input((*size, 3), dtype="uint8", name="image")
    pixels = layers.Activation("linear", dtype="float32", name="to_float")(image)
    inputs = {s: layers.Rescaling(1.0 / 255.0, name=f"to_unit_range_{s[0]}x{s[1]}")(
                  pixels if s == size else FixedResize(size, s, rounded=True, name=f"resize_to_{s[0]}x{s[1]}")(pixels))
              for s in model_sizes(models)}
    mirror = layers.Lambda(lambda t: ops.flip(t, axis=2), name="mirror")
    members = []
    for i, member in enumerate(models):
        model = keras.Model(member.input, member.output, name=f"member{i}")  # members may share a name
        x = inputs[input_size(member)]
        probs = _to_size(model(x), out_size, f"member{i}_resize")
        if flip:
            mirrored = mirror(_to_size(model(mirror(x)), out_size, f"member{i}_mirrored_resize"))
            probs = layers.Average(name=f"member{i}_flip_tta")([probs, mirrored])
        members.append(probs)
    out = members[0] if len(members) == 1 else layers.Average(name="ensemble")(members)
    out = layers.Activation("linear", dtype="float32", name="probabilities")(out)
    return keras.Model(image, out, name="pets_segmenter")


def _to_size(probs: Any, size: tuple[int, int], name: str) -> Any:
    if tuple(probs.shape[1:3]) == tuple(size):
        return probs
    return FixedResize(tuple(probs.shape[1:3]), size, name=name)(probs)


class FixedResize:
    """`tf.image.resize(x, out_size, "bilinear", antialias=True)` from a fixed `in_size`, as two matrix products
    with the resize's own weights (`runtime.resize_weights`): builtin operations in LiteRT and ONNX, which have
    no antialiased resize. `rounded`: then rounded and clipped to 0..255, as an image resized to uint8."""

    def __init__(self, in_size: tuple[int, int], out_size: tuple[int, int], *, name: str,
                 rounded: bool = False) -> None:
        from segpipe.export.runtime import resize_weights

        self.rows = resize_weights(in_size[0], out_size[0])             # (h, H)
        self.cols = resize_weights(in_size[1], out_size[1]).T.copy()    # (W, w)
        self.name, self.rounded = name, rounded

    def __call__(self, x: Any) -> Any:
        from keras import layers, ops

        rows, cols, rounded = self.rows, self.cols, self.rounded

        def resize(t: Any) -> Any:
            t = ops.transpose(t, (0, 3, 1, 2))                         # (B, C, H, W)
            t = ops.matmul(ops.matmul(ops.convert_to_tensor(rows), t), ops.convert_to_tensor(cols))
            t = ops.transpose(t, (0, 2, 3, 1))                         # (B, h, w, C)
            return ops.clip(ops.round(t), 0.0, 255.0) if rounded else t

        return layers.Lambda(resize, name=self.name)(x)


# --------------------------------------------------------------------------- the border band, in the graph


def band_labels_graph(full: Any, band: tuple[int, int]) -> Any:
    """`runtime.band_labels` inside the graph: int64 (H, W) labels of (H, W, 3) probabilities, in the same
    integer arithmetic (band radii, disk counts), so the SavedModel draws exactly the pixels numpy draws."""
    import tensorflow as tf

    pet = full[..., 0] > full[..., 1]
    side = tf.reduce_max(tf.shape(pet))
    border = tf.zeros_like(pet)
    inner, outer = (int(b) for b in band)
    if inner > 0:
        border = border | (pet & (_disk_counts(tf.logical_not(pet), (inner * side + 500) // 1000) > 0))
    if outer > 0:
        border = border | (tf.logical_not(pet) & (_disk_counts(pet, (outer * side + 500) // 1000) > 0))
    return tf.where(border, tf.constant(2, tf.int64), tf.where(pet, tf.constant(0, tf.int64), tf.constant(1, tf.int64)))


def _disk_counts(mask: Any, radius: Any) -> Any:
    """`runtime.disk_counts` with a radius known only when the graph runs (it scales with the image)."""
    import tensorflow as tf

    h, w = tf.shape(mask)[0], tf.shape(mask)[1]
    padded = tf.pad(tf.cast(mask, tf.int32), [[radius, radius], [radius, radius]])
    prefix = tf.pad(tf.cumsum(padded, axis=1), [[0, 0], [1, 0]])

    def step(dy: Any, out: Any) -> tuple[Any, Any]:
        rest = radius * radius - dy * dy
        half = tf.cast(tf.floor(tf.sqrt(tf.cast(rest, tf.float64))), tf.int32)
        half = half - tf.cast(half * half > rest, tf.int32) + tf.cast((half + 1) * (half + 1) <= rest, tf.int32)
        rows = prefix[radius + dy:radius + dy + h]
        return dy + 1, out + rows[:, radius + half + 1:radius + half + 1 + w] - rows[:, radius - half:radius - half + w]

    _, counts = tf.while_loop(lambda dy, _: dy <= radius, step, (-radius, tf.zeros([h, w], tf.int32)))
    return counts


# --------------------------------------------------------------------------- the SavedModel around it


def saved_model_archive(model: Any, band: tuple[int, int] | None = None) -> Any:
    """A `keras.export.ExportArchive` with the four signatures of `runtime.SAVED_MODEL_SIGNATURES`; its masks
    are drawn with `band` (the model's calibrated border band) when it has one, as `runtime` draws them."""
    import keras
    import tensorflow as tf

    size = tuple(int(d) for d in model.input_shape[1:3])

    def core(batch: Any) -> Any:
        return model(batch, training=False)

    def to_input(image: Any) -> Any:
        x = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)

    def trimap(full: Any) -> Any:
        labels = tf.argmax(full, axis=-1) if band is None else band_labels_graph(full, band)
        return tf.cast(labels + 1, tf.uint8)

    def labels(probs: Any, height: Any, width: Any) -> tuple[Any, Any]:
        full = tf.image.resize(probs, tf.stack([height, width]), method="bilinear", antialias=True)
        return trimap(full), full

    def from_bytes(images: Any) -> dict[str, Any]:
        decoded = tf.map_fn(
            _decode_one, images,
            fn_output_signature=(tf.TensorSpec([*size, 3], tf.uint8), tf.TensorSpec([2], tf.int32)),
        )
        inputs, shapes = decoded
        probs = core(inputs)
        heights, widths = shapes[:, 0], shapes[:, 1]
        max_h, max_w = tf.reduce_max(heights), tf.reduce_max(widths)

        def one(args: Any) -> tuple[Any, Any]:
            p, h, w = args
            mask, full = labels(p, h, w)
            return (tf.pad(mask, [[0, max_h - h], [0, max_w - w]]),
                    tf.pad(full, [[0, max_h - h], [0, max_w - w], [0, 0]]))

        masks, full = tf.map_fn(
            one, (probs, heights, widths),
            fn_output_signature=(tf.TensorSpec([None, None], tf.uint8), tf.TensorSpec([None, None, 3], tf.float32)),
        )
        return {"masks": masks, "probabilities": full, "heights": heights, "widths": widths}

    def _decode_one(data: Any) -> tuple[Any, Any]:
        image = decode_image(data)
        return to_input(image), tf.shape(image)[:2]

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        lambda images: {k: v for k, v in from_bytes(images).items() if k != "probabilities"},
        input_signature=[tf.TensorSpec([None], tf.string, name="images")],
    )
    archive.add_endpoint(
        "serving_probabilities", from_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="images")],
    )

    def from_float(images: Any) -> dict[str, Any]:
        image_size = tf.shape(images)[1:3]
        x = to_input(tf.clip_by_value(images, 0.0, 1.0) * 255.0)
        full = tf.image.resize(core(x), image_size, method="bilinear", antialias=True)
        masks = tf.map_fn(trimap, full, fn_output_signature=tf.TensorSpec([None, None], tf.uint8))
        return {"masks": masks, "probabilities": full}

    archive.add_endpoint(
        "serving_float", from_float, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")],
    )
    archive.add_endpoint(
        "model_input", lambda image: {"probabilities": core(image)},
        input_signature=[tf.TensorSpec([None, *size, 3], tf.uint8, name="image")],
    )
    return archive


def decode_image(data: Any) -> Any:
    """uint8 (H, W, 3) of encoded bytes inside the graph, matching Pillow (what `segpipe predict` uses).

    JPEG with the accurate integer DCT (TensorFlow's default, the fast DCT, differs from libjpeg's default in
    about 1% of pixels); PNG, GIF (first frame) and BMP through `decode_image`, 16-bit reduced to its high
    byte, alpha dropped, grey replicated. Images over `MAX_PIXELS` are refused from their JPEG or PNG header
    before decoding. EXIF orientation is not applied (callers with rotated photos decode themselves and use
    `serving_float`).
    """
    import tensorflow as tf

    is_jpeg = tf.io.is_jpeg(data)
    shape = tf.cond(is_jpeg, lambda: tf.io.extract_jpeg_shape(data)[:2], lambda: _png_shape(data))
    pixels = tf.cast(shape[0], tf.int64) * tf.cast(shape[1], tf.int64)
    checked = tf.debugging.assert_less_equal(
        pixels, tf.constant(MAX_PIXELS, tf.int64),
        message=f"image too large: over {MAX_PIXELS / 1e6:.0f} megapixels",
    )
    with tf.control_dependencies([checked]):
        image = tf.cond(
            is_jpeg,
            lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False),
        )
    image.set_shape([None, None, 3])
    return image


def _png_shape(data: Any) -> Any:
    """(height, width) from a PNG's IHDR; (0, 0) for other formats (checked when decoded instead)."""
    import tensorflow as tf

    is_png = tf.equal(tf.strings.substr(data, 0, 8), b"\x89PNG\r\n\x1a\n")

    def read() -> Any:
        header = tf.io.decode_raw(tf.strings.substr(data, 16, 8), tf.uint8)
        b = tf.cast(header, tf.int32)
        width = b[0] * 16777216 + b[1] * 65536 + b[2] * 256 + b[3]
        height = b[4] * 16777216 + b[5] * 65536 + b[6] * 256 + b[7]
        return tf.stack([height, width])

    return tf.cond(is_png & (tf.strings.length(data) >= 24), read, lambda: tf.zeros([2], tf.int32))
