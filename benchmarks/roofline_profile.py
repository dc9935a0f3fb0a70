"""Roofline (benchmarks/roofline.py), the profile: a train step under the TensorFlow profiler, its XPlane
trace's op events summed by op type into groups (depthwise, conv, batch norm, casts, optimizer/EMA, ...)."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.common import r
from benchmarks.roofline_measure import measured


OP_GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("depthwise conv (fwd+bwd)", ("Depthwise",)),
    ("conv (fwd+bwd)", ("Conv2D", "Conv2DBackprop", "_FusedConv2D", "MklNativeConv", "_MklConv", "MatMul",
                        "BatchMatMul", "_MklMatMul", "_FusedMatMul")),
    ("batch norm", ("FusedBatchNorm",)),
    ("casts (bfloat16)", ("Cast",)),
    ("resize / upsampling", ("Resize",)),
    ("input (iterator)", ("IteratorGetNext", "Iterator", "OptionalGetValue")),
]
ELEMENTWISE = ("Relu", "Relu6", "ReluGrad", "Relu6Grad", "Mul", "AddV2", "Add", "Sub", "RealDiv", "Maximum",
               "Minimum", "Select", "SelectV2", "Square", "Sqrt", "Rsqrt", "Exp", "Log", "Neg", "Softmax",
               "Pow", "BiasAdd", "BiasAddGrad", "AddN", "Tile", "ConcatV2", "Slice", "Pad", "Transpose",
               "Sum", "Mean", "Max", "Prod", "Reshape", "StridedSlice", "StridedSliceGrad", "OneHot", "Pack",
               "Fill", "BroadcastTo", "ZerosLike", "OnesLike", "SquaredDifference", "DivNoNan", "Reciprocal",
               "_MklFusedMish", "_FusedBatchNormEx", "Mean", "Equal", "ArgMax", "Identity")


def op_group(op_name: str, op_type: str) -> str:
    lname = op_name.lower()
    if any(k in lname for k in ("/ema", "ema_", "exponential_moving")):
        return "optimizer: EMA"
    if any(k in lname for k in ("adam", "optimizer", "assignaddvariableop", "assignsubvariableop")) or op_type in (
            "AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp", "ResourceApplyAdam",
            "ReadVariableOp"):
        return "optimizer: Adam + variables"
    if "mean_iou" in lname or "pixel_accuracy" in lname or "confusion" in lname or "bincount" in lname.replace(
            "_", ""):
        return "metrics"
    for group, keys in OP_GROUPS:
        if any(k in op_type for k in keys):
            return group
    if op_type in ELEMENTWISE or op_type.endswith("Grad"):
        return "element-wise, reshapes, reductions"
    return "other ops"


def parse_xplane(logdir: str) -> dict[str, Any]:
    """Per-op time from a TensorFlow profiler trace: op events (name:type) on the executor threads."""
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError:  # older / newer layouts
        from tsl.profiler.protobuf import xplane_pb2  # type: ignore[no-redef]

    files = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))
    if not files:
        return {"error": "no xplane.pb written"}
    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(files[-1]).read_bytes())
    by_type: dict[str, float] = defaultdict(float)
    by_group: dict[str, float] = defaultdict(float)
    examples: dict[str, str] = {}
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        meta = plane.event_metadata
        for line in plane.lines:
            if not line.name.startswith("tf_"):  # executor / inter-op threads only (not python, not tf.data)
                continue
            for ev in line.events:
                name = meta[ev.metadata_id].name
                if ":" not in name or name.startswith("ExecutorState") or "::" in name:
                    continue
                op_name, _, op_type = name.rpartition(":")
                if op_type in ("PartitionedCall", "StatefulPartitionedCall", "__inference", "While", "If"):
                    continue
                ms = ev.duration_ps / 1e9
                by_type[op_type] += ms
                group = op_group(op_name, op_type)
                by_group[group] += ms
                examples.setdefault(group, name)
    return {"by_type_ms": dict(sorted(by_type.items(), key=lambda kv: -kv[1])),
            "by_group_ms": dict(sorted(by_group.items(), key=lambda kv: -kv[1])), "group_examples": examples}


def profile_step(model: Any, ds: Any, steps: int) -> dict[str, Any]:
    import tensorflow as tf

    logdir = tempfile.mkdtemp(prefix="roofline-prof-")
    try:
        with measured() as m:
            tf.profiler.experimental.start(logdir)
            try:
                model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
            finally:
                tf.profiler.experimental.stop()
        parsed = parse_xplane(logdir)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    if "error" in parsed:
        return parsed
    cpu_ms = m["cpu_s"] * 1000.0
    op_ms = sum(parsed["by_group_ms"].values())
    shares = {g: r(v / op_ms, 4) for g, v in parsed["by_group_ms"].items()}
    return {"steps": steps, "wall_s": r(m["wall_s"], 2), "cpu_s": r(m["cpu_s"], 2),
            "load": [m["load_before"], m["load_after"]], "op_ms_total": r(op_ms, 1),
            "op_time_over_cpu_time": r(op_ms / cpu_ms, 3),
            "share_of_op_time": shares,
            "per_step_ms_by_group": {g: r(v / steps, 1) for g, v in parsed["by_group_ms"].items()},
            "top_op_types_ms_per_step": {k: r(v / steps, 1) for k, v in list(parsed["by_type_ms"].items())[:15]},
            "group_examples": parsed["group_examples"],
            "note": "op event durations summed over the executor threads, as shares of their sum; an event's "
                    "duration is wall time on its thread (on a loaded machine it includes time descheduled, so "
                    "op_time_over_cpu_time can exceed 1); fit's Python work is outside the op events"}


