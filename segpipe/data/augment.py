"""Augmentation of image/label batches: one geometric warp (both alike) and colour jitter (image only).

Stateless random ops only: a batch's shape-[2] seed decides every draw, and each
example in it gets its own random transform. Image and mask always go through
the very same geometric transform (bilinear for the image, nearest for the mask,
so no new label values appear). Batches are augmented whole, in one XLA-compiled
warp (see benchmarks/input_pipeline.py). The knobs, their names, defaults and
ranges are in `segpipe.config.augment`.
"""

from __future__ import annotations

import math

import tensorflow as tf

from segpipe.config.augment import DEFAULTS, check_options


def _affine_transforms(
    u: tf.Tensor, height: int, width: int, *, flip: bool, max_scale: float, max_rotation_degrees: float
) -> tf.Tensor:
    """(B, 8) projective transforms from (B, >=4) uniforms in [0, 1): columns flip, scale, offset x, offset y, angle."""
    limit = max_rotation_degrees * math.pi / 180.0
    angle = (2.0 * u[:, 4] - 1.0) * limit
    scale = 1.0 + u[:, 1] * (max_scale - 1.0)
    # Crop offset in the enlarged image, so the crop stays inside it.
    ox, oy = u[:, 2] * (width - 1.0) * (scale - 1.0), u[:, 3] * (height - 1.0) * (scale - 1.0)
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    a = tf.stack([cos, -sin, cx - (cos * cx - sin * cy) + ox], axis=1) / scale[:, None]
    b = tf.stack([sin, cos, cy - (sin * cx + cos * cy) + oy], axis=1) / scale[:, None]
    if flip:
        mirror = (u[:, 0] < 0.5)[:, None]
        a = tf.where(mirror, tf.stack([-a[:, 0], -a[:, 1], (width - 1.0) - a[:, 2]], axis=1), a)
    return tf.concat([a, b, tf.zeros_like(a[:, :2])], axis=1)


def geometric_transform(
    seed: tf.Tensor, height: int, width: int, *, flip: bool, max_scale: float, max_rotation_degrees: float
) -> tf.Tensor:
    """A random (1, 8) projective transform: rotate, zoom in and crop, then maybe mirror, as ONE warp.

    It maps each output pixel (x, y) to the input point (a0 x + a1 y + a2, b0 x + b1 y + b2)
    (the `ImageProjectiveTransformV3` convention). Equivalent to: resize up by a
    scale in [1, max_scale], crop back to height x width at a random offset,
    rotate by an angle in +-max_rotation_degrees about the centre, and flip
    left-right with probability 1/2; composed so each pixel is interpolated once.
    """
    u = tf.random.stateless_uniform([1, 5], seed)
    return _affine_transforms(u, height, width, flip=flip, max_scale=max_scale,
                              max_rotation_degrees=max_rotation_degrees)


def _reflect(coord: tf.Tensor, size: int) -> tf.Tensor:
    """Fold a coordinate into [0, size - 1] by mirroring at the borders (dcba|abcd|dcba), as the TF kernel does."""
    coord = tf.math.floormod(coord, 2.0 * size)
    coord = tf.where(coord > size - 1.0, 2.0 * size - 1.0 - coord, coord)
    return tf.clip_by_value(coord, 0.0, size - 1.0)


@tf.function(jit_compile=True)
def warp_batch(images: tf.Tensor, labels: tf.Tensor, transforms: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Warp (B, H, W, C) images bilinear (to float32) and (B, H, W, 1) labels nearest by (B, 8) affine transforms.

    The same result as `tf.raw_ops.ImageProjectiveTransformV3` with fill_mode REFLECT
    (to float32 rounding), written as gathers and compiled with XLA: one fused pass
    over the batch, the source coordinates computed once for image and label, and
    uint8 pixels read as they are cached (about 5x less CPU than the kernel per image).
    """
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    ys, xs = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij")
    t = transforms[:, :, None, None]
    sx = _reflect(t[:, 0] * xs + t[:, 1] * ys + t[:, 2], width)
    sy = _reflect(t[:, 3] * xs + t[:, 4] * ys + t[:, 5], height)
    first = tf.reshape(tf.range(tf.shape(images)[0]) * (height * width), [-1, 1, 1])  # flat index of (b, 0, 0)
    pixels, label_pixels = tf.reshape(images, [-1, channels]), tf.reshape(labels, [-1])

    def at(y: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
        return tf.cast(tf.gather(pixels, first + y * width + x), tf.float32)

    def nearest(c: tf.Tensor) -> tf.Tensor:
        return tf.cast(tf.floor(c + 0.5), tf.int32)  # round half up, as the kernel does

    out_labels = tf.gather(label_pixels, first + nearest(sy) * width + nearest(sx))[..., None]
    x0, y0 = tf.floor(sx), tf.floor(sy)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    x1, y1 = tf.minimum(x0 + 1, width - 1), tf.minimum(y0 + 1, height - 1)
    top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx
    bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx
    return top * (1.0 - fy) + bottom * fy, out_labels


@tf.function(jit_compile=True)
def _color_jitter_batch(images: tf.Tensor, delta: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Per image: add `delta` (brightness), scale about the per-channel mean by `factor` (contrast), clip to [0, 1]."""
    images = images + delta[:, None, None, None]
    mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    return tf.clip_by_value((images - mean) * factor[:, None, None, None] + mean, 0.0, 1.0)


@tf.function(jit_compile=True)
def hue_saturation_batch(images: tf.Tensor, angle: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Per image: rotate the hue by `angle` (radians) and scale the saturation by `factor`, clip to [0, 1].

    Both act on the chroma plane (I, Q) of YIQ, which leaves the luma alone;
    a factor of 0 gives the grey image.
    """
    yiq = tf.image.rgb_to_yiq(images)
    y, i, q = yiq[..., 0], yiq[..., 1], yiq[..., 2]
    cos = (tf.cos(angle) * factor)[:, None, None]
    sin = (tf.sin(angle) * factor)[:, None, None]
    rotated = tf.stack([y, i * cos - q * sin, i * sin + q * cos], axis=-1)
    return tf.clip_by_value(tf.image.yiq_to_rgb(rotated), 0.0, 1.0)


def augment_batch(
    images: tf.Tensor,
    labels: tf.Tensor,
    seed: tf.Tensor,
    *,
    flip: bool = True,
    max_scale: float = DEFAULTS["max_scale"],
    max_rotation_degrees: float = DEFAULTS["max_rotation_degrees"],
    brightness: float = DEFAULTS["brightness"],
    contrast: float = DEFAULTS["contrast"],
    hue: float = DEFAULTS["hue"],
    saturation: float = DEFAULTS["saturation"],
) -> tuple[tf.Tensor, tf.Tensor]:
    """`augment` for a batch, with one shape-[2] `seed`; returns float32 images in [0, 1] and labels as given.

    `images` (B, H, W, 3) are float32 in [0, 1] or uint8 (0..255, scaled here);
    `labels` (B, H, W, 1) are any integer type. Every image gets its own random
    transform and colour jitter (drawn from `seed`); the whole batch is warped in
    one XLA-compiled call.
    """
    check_options({"max_scale": max_scale, "max_rotation_degrees": max_rotation_degrees, "brightness": brightness,
                   "contrast": contrast, "hue": hue, "saturation": saturation})
    if images.shape.rank != 4 or labels.shape.rank != 4 or images.shape[1:3] != labels.shape[1:3]:
        raise ValueError(
            f"augment expects image (H, W, 3) and label (H, W, 1) of one size; got {images.shape}, {labels.shape}"
        )
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        raise ValueError(f"augment needs a static image size, got {images.shape}")
    if images.dtype not in (tf.uint8, tf.float32):
        raise ValueError(f"augment expects float32 images in [0, 1] or uint8 images, got {images.dtype}")
    was_uint8 = images.dtype == tf.uint8
    # Columns: flip, scale, offset x, offset y, angle, brightness, contrast.
    u = tf.random.stateless_uniform([tf.shape(images)[0], 7], seed)
    if flip or max_scale > 1 or max_rotation_degrees > 0:
        transforms = _affine_transforms(u, height, width, flip=flip, max_scale=max_scale,
                                        max_rotation_degrees=max_rotation_degrees)
        images, labels = warp_batch(images, labels, transforms)  # float32, same scale as the input
    images = tf.cast(images, tf.float32) / 255.0 if was_uint8 else tf.cast(images, tf.float32)
    if brightness > 0 or contrast > 0:
        delta = (2.0 * u[:, 5] - 1.0) * brightness
        factor = 1.0 + (2.0 * u[:, 6] - 1.0) * contrast
        images = _color_jitter_batch(images, delta, factor)
    if hue > 0 or saturation > 0:
        # A stream of its own (seed + 1), so enabling this leaves the draws above as they were.
        v = tf.random.stateless_uniform([tf.shape(images)[0], 2], seed + tf.constant([0, 1], seed.dtype))
        angle = (2.0 * v[:, 0] - 1.0) * (hue * math.pi / 180.0)
        images = hue_saturation_batch(images, angle, 1.0 + (2.0 * v[:, 1] - 1.0) * saturation)
    return images, labels


def augment(
    image: tf.Tensor,
    label: tf.Tensor,
    seed: tf.Tensor,
    *,
    flip: bool = True,
    **options: float,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Random flip, scale-and-crop, rotation (image and label alike), brightness/contrast and hue/saturation
    (image only).

    `image` is float32 (H, W, 3) in [0, 1], `label` int32 (H, W, 1); `seed` is a
    shape-[2] int32/int64 tensor, and the same seed gives the same output. The
    geometric part is one warp applied to both: bilinear for the image, nearest
    for the label (no new label values), reflect fill at the borders.
    `hue` rotates the hue by up to +- that many degrees, `saturation` scales it
    within 1 +- that (1: down to grey). `flip=False`, `max_scale=1`,
    `max_rotation_degrees=0`, `brightness=0`, `contrast=0`, `hue=0`,
    `saturation=0` turn the respective step off. `options`: `augment_batch`'s keywords
    (`segpipe.config.augment`); each left out takes its default. (A batch of one for `augment_batch`.)
    """
    if image.shape.rank != 3 or label.shape.rank != 3:
        raise ValueError(
            f"augment expects image (H, W, 3) and label (H, W, 1) of one size; got {image.shape}, {label.shape}"
        )
    check_options(options)  # an unknown keyword is named with the known ones
    images, labels = augment_batch(image[tf.newaxis], label[tf.newaxis], seed, flip=flip, **options)
    return images[0], labels[0]
