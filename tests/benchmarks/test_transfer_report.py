"""The transfer-learning figures in README.md and BENCHMARKS.md are exactly what the committed results render."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_tables_match_the_committed_results():
    from benchmarks import render_quality, transfer_report

    block = render_quality.transfer()
    assert "no results yet" not in block
    for name in ("BENCHMARKS.md",):  # README.md shows its one-paragraph summary (render_quality.quality_summary)
        text = (ROOT / name).read_text()
        assert transfer_report.replace_block(text, block) == text, f"{name}: run benchmarks/render.py --write"


def test_every_result_file_records_its_command_commit_and_machine():
    from benchmarks import render_quality as report
    from benchmarks.render_common import WITHDRAWN, load

    names = [report.RANDOM, report.KERAS, report.SCRATCH, report.OFFICIAL, report.QUIET,
             *(report.BREED.format(b) for b in report.BREEDS)]
    block = report.transfer()
    for name in names:
        if not (ROOT / "benchmarks" / "results" / name).is_file():
            # withdrawn by issue 19 (git history keeps it, WITHDRAWN says why) or not measured yet: the block
            # must not pretend otherwise
            assert name in WITHDRAWN or name not in block, f"benchmarks/results/{name} is missing"
            continue
        data = load(name)
        assert data is not None, f"benchmarks/results/{name} lacks its provenance"
        assert "benchmarks/" in data["command"] and data["commit"]
        assert data["machine"]["cpus"] and data["machine"]["cpu_model"] and "load_average_after" in data["machine"]


def test_the_command_prints_the_block():
    import subprocess
    import sys

    from benchmarks import render_quality

    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "transfer_report.py")], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == render_quality.transfer() + "\n"
