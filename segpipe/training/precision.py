"""Mixed precision: the Keras dtype policy for `train.mixed_precision`, from the devices and the CPU's flags."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import keras
import tensorflow as tf

PRECISION_POLICIES = {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


def cpu_has_native_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512_BF16 or AMX-BF16 in /proc/cpuinfo's flags).

    Without them TensorFlow emulates bfloat16 and mixed_bfloat16 is slower than float32.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.partition(":")[2].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def precision_policy(setting: str) -> str:
    """The Keras dtype policy for `train.mixed_precision`; "auto" looks at the devices.

    auto: mixed_float16 on a GPU, mixed_bfloat16 on a CPU with native bfloat16, float32 otherwise
    (where bfloat16 is emulated). Both CPU presets set auto; BENCHMARKS.md sections 3 and 4 give the
    measurements behind it.
    """
    if setting != "auto":
        return PRECISION_POLICIES[setting]
    if tf.config.list_logical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_has_native_bfloat16() else "float32"


@contextlib.contextmanager
def global_policy(policy: str) -> Iterator[None]:
    """Keras' global dtype policy set to `policy` inside, and back to what it was on the way out."""
    previous_policy = keras.mixed_precision.global_policy()
    try:
        keras.mixed_precision.set_global_policy(policy)
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
