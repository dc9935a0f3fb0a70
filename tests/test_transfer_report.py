"""The transfer-learning figures in README.md and BENCHMARKS.md are exactly what the committed results render."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _report():
    spec = importlib.util.spec_from_file_location("transfer_report", ROOT / "benchmarks" / "transfer_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_tables_match_the_committed_results():
    report = _report()
    block = report.render()
    assert "no results yet" not in block
    for name in ("BENCHMARKS.md",):  # README.md shows its one-paragraph summary (render.quality_summary)
        text = (ROOT / name).read_text()
        assert report.replace_block(text, block) == text, f"{name}: run benchmarks/render.py --write"


def test_every_result_file_records_its_command_commit_and_machine():
    report = _report()
    names = [report.RANDOM, report.KERAS, report.SCRATCH, report.OFFICIAL, report.QUIET,
             *(report.BREED.format(b) for b in report.BREEDS)]
    from benchmarks.render import WITHDRAWN

    block = report.render()
    for name in names:
        if not (ROOT / "benchmarks" / "results" / name).is_file():
            # withdrawn by issue 19 (git history keeps it, WITHDRAWN says why) or not measured yet: the block
            # must not pretend otherwise
            assert name in WITHDRAWN or name not in block, f"benchmarks/results/{name} is missing"
            continue
        data = report.load(name)
        assert data is not None, f"benchmarks/results/{name} lacks its provenance"
        assert "benchmarks/" in data["command"] and data["commit"]
        assert data["machine"]["cpus"] and data["machine"]["cpu_model"] and "load_average_after" in data["machine"]
