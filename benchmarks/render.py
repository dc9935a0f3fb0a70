"""Every figure in README.md and BENCHMARKS.md, rendered from the committed results in benchmarks/results/.

    .venv/bin/python benchmarks/render.py            # print every block
    .venv/bin/python benchmarks/render.py --write    # rewrite the blocks in README.md and BENCHMARKS.md
    .venv/bin/python benchmarks/render.py --check    # exit 1, naming each block that differs

A block is the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->`; BLOCKS maps each NAME to the
function that renders it from JSON files written by the benchmark scripts. Measured figures appear only
inside blocks: `tests/benchmarks/test_figures.py` fails when a block differs from what this renders, or when the text
outside the blocks quotes a measured-looking number.

The provenance rules every rendered result must pass: render_common.py's docstring.

Where the code is: the provenance rules, WITHDRAWN, EARLIER_RECIPES and `load` in render_common.py; the
blocks in render_quality.py, render_border.py, render_interleaved.py, render_remade.py, render_levers.py,
render_throughput.py, render_training.py and render_serving.py, and the five-row results table
README.md and BENCHMARKS.md open their results with (`results-summary`) in render_summary.py; this file maps
block names to them and rewrites or checks the documents.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "BENCHMARKS.md")
MARKER = re.compile(r"<!-- ([a-z0-9-]+):begin -->\n(.*?)<!-- \1:end -->", re.S)

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.render_border import alone_and_breeds, border_levers, border_weight  # noqa: E402
from benchmarks.render_interleaved import (aspp_rates, boundary_loss, edge_head, encoder_dilated,  # noqa: E402
                                           equal_cpu, hue_saturation, input_288, input_size, lovasz,
                                           training_budget)
from benchmarks.render_levers import border_band, cpu_share, multiscale_tta, test_time_levers  # noqa: E402
from benchmarks.render_throughput import (  # noqa: E402
    dilated_cost, frozen_prefix, frozen_prefix_cost, input_size_throughput, presets_quality, progressive,
    replicas_lever, steps_lever, throughput_recipe, train_levers, xla_lever)
from benchmarks.render_quality import quality_summary, recipe_selection, transfer, withdrawn  # noqa: E402
from benchmarks.render_remade import frozen_phase_precision  # noqa: E402
from benchmarks.render_serving import (export_inference, export_portability, inference, local_start,  # noqa: E402
                                       orchestration)
from benchmarks.render_summary import results_summary  # noqa: E402
from benchmarks.render_training import (bfloat16_summary, input_pipeline, roofline, storage_summary,  # noqa: E402
                                        tfrecord_conversion, train_throughput, warp_check)


BLOCKS: dict[str, Callable[[], str]] = {
    "results-summary": results_summary,
    "transfer": transfer,
    "quality-summary": quality_summary,
    "border-levers": border_levers,
    "border-weight": border_weight,
    "boundary-loss": boundary_loss,
    "edge-head": edge_head,
    "hue-saturation": hue_saturation,
    "lovasz": lovasz,
    "frozen-phase-precision": frozen_phase_precision,
    "training-budget": training_budget,
    "aspp-rates": aspp_rates,
    "input-288": input_288,
    "encoder-dilated": encoder_dilated,
    "equal-cpu": equal_cpu,
    "input-size": input_size,
    "alone-and-breeds": alone_and_breeds,
    "cpu-share": cpu_share,
    "test-time-levers": test_time_levers,
    "train-levers": train_levers,
    "xla-lever": xla_lever,
    "steps-lever": steps_lever,
    "replicas-lever": replicas_lever,
    "dilated-cost": dilated_cost,
    "input-size-throughput": input_size_throughput,
    "progressive": progressive,
    "frozen-prefix-cost": frozen_prefix_cost,
    "frozen-prefix": frozen_prefix,
    "throughput-recipe": throughput_recipe,
    "presets-quality": presets_quality,
    "multiscale-tta": multiscale_tta,
    "border-band": border_band,
    "input-pipeline": input_pipeline,
    "warp-check": warp_check,
    "tfrecord-conversion": tfrecord_conversion,
    "train-throughput": train_throughput,
    "bfloat16": bfloat16_summary,
    "orchestration": orchestration,
    "inference": inference,
    "export-inference": export_inference,
    "export-portability": export_portability,
    "local-start": local_start,
    "recipe-selection": recipe_selection,
    "roofline": roofline,
    "storage": storage_summary,
    "withdrawn": withdrawn,
}


# --------------------------------------------------------------------------- documents


def blocks_in(text: str) -> list[str]:
    return [m.group(1) for m in MARKER.finditer(text)]


def rendered(text: str, cache: dict[str, str] | None = None) -> str:
    """`text` with every block replaced by what BLOCKS renders (KeyError for a block nobody renders)."""
    cache = {} if cache is None else cache

    def fill(m: re.Match) -> str:
        name = m.group(1)
        if name not in cache:
            cache[name] = BLOCKS[name]().rstrip("\n")
        return f"<!-- {name}:begin -->\n{cache[name]}\n<!-- {name}:end -->"

    return MARKER.sub(fill, text)


def differences(paths: list[Path]) -> list[str]:
    """One entry per block whose committed text differs from what renders now (a short diff each)."""
    out, cache = [], {}
    for path in paths:
        text = path.read_text()
        for m in MARKER.finditer(text):
            name = m.group(1)
            if name not in BLOCKS:
                out.append(f"{path.name}: block {name!r}: nothing renders it (BLOCKS in benchmarks/render.py)")
                continue
            if name not in cache:
                cache[name] = BLOCKS[name]().rstrip("\n")
            if m.group(2).rstrip("\n") != cache[name]:
                diff = difflib.unified_diff(m.group(2).rstrip("\n").splitlines(), cache[name].splitlines(),
                                            "committed", "rendered", lineterm="", n=0)
                out.append(f"{path.name}: block {name!r} differs:\n" + "\n".join(list(diff)[:20]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the blocks in README.md and BENCHMARKS.md")
    mode.add_argument("--check", action="store_true", help="exit 1 when a block differs from what renders")
    p.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    paths = [args.root / name for name in DOCS]
    if args.check:
        diffs = differences(paths)
        for d in diffs:
            print(d)
        return 1 if diffs else 0
    if args.write:
        cache: dict[str, str] = {}
        for path in paths:
            text = path.read_text()
            new = rendered(text, cache)
            if new != text:
                path.write_text(new)
                print(f"rewrote {path.name}: {', '.join(blocks_in(text))}")
        return 0
    for name, fn in BLOCKS.items():
        print(f"<!-- {name} -->\n{fn()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
