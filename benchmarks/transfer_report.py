"""The transfer-learning tables in README.md and BENCHMARKS.md, rendered from committed results.

    .venv/bin/python benchmarks/transfer_report.py            # print the tables
    .venv/bin/python benchmarks/render.py --write             # replace them (and every other block) in both files

Every figure in the blocks between `<!-- transfer:begin -->` and `<!-- transfer:end -->` comes from
the JSON files named in render_quality.py (written by `benchmarks/quality.py`, commands recorded inside them);
`benchmarks/render.py` renders this block with the others, and `tests/benchmarks/test_figures.py` fails when a
committed block differs from what renders.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.render_quality import transfer  # noqa: E402

BEGIN, END = "<!-- transfer:begin -->", "<!-- transfer:end -->"


def replace_block(text: str, block: str) -> str:
    if BEGIN not in text or END not in text:
        raise ValueError(f"markers {BEGIN} ... {END} not found")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help="replace the blocks in README.md and BENCHMARKS.md "
                                                        "(all blocks: benchmarks/render.py --write)")
    args = p.parse_args()
    if args.write:
        from benchmarks import render as render_all

        return render_all.main(["--write"])
    print(transfer())
    return 0


if __name__ == "__main__":
    sys.exit(main())
