"""Figures you can trust: every measured number in README.md and BENCHMARKS.md comes from a committed result.

How: measured figures live only inside rendered blocks (`<!-- NAME:begin -->` ... `<!-- NAME:end -->`),
and each block must equal what `benchmarks/render.py` renders from the JSON files in benchmarks/results/
(each of which records the command that wrote it, the commit and the machine). The text outside the blocks
must not quote a measured-looking number: a ratio ("3.7x"), a share ("2.7%"), a rate ("images/s"), a
duration ("814 s", "16 minutes"), a size ("27 MB") or a decimal ("0.720"). Numbers that are not
measurements (configuration values, targets that the rendered tables repeat, version numbers) are either
in code (fenced blocks, `inline code`) or on the short ALLOWED list below, each with its reason.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "BENCHMARKS.md")

# Numbers outside the rendered blocks that are not measurements. Keep this short and honest: a measured
# figure belongs in a block, rendered from a committed JSON file.
ALLOWED: dict[str, str] = {
    r"Python 3\.\d+": "the Python version",
    r"BN momentum 0\.9": "cpu-scratch's batch-norm momentum (configuration)",
    r"\(2, 4, 8, 16 s\)": "the download retry backoff schedule (configuration)",
    r"0\.1x the learning rate": "cpu-quick's encoder learning-rate multiplier (configuration)",
    r"zoom 1\.5x": "cpu-quick's augmentation zoom range (configuration)",
    r"EMA weights \(0\.99\)": "cpu-quick's EMA momentum (configuration)",
    r", 0\.1x;": "the full preset's encoder learning-rate multiplier (configuration)",
    r"\(default 0\.5\)": "the promotion gate's default minimum mean IoU (configuration)",
}

MEASURED = re.compile(
    r"""
      \d[\d,]*(?:\.\d+)?\s?[x×](?![\w-])                        # a ratio: 3.7x, 45×
    | \d[\d,]*(?:\.\d+)?\s?%                                    # a share: 2.7%
    | \d[\d,]*(?:\.\d+)?\s?(?:images|img|steps)\s?/\s?s\b       # a rate: 1,400 images/s
    | \d[\d,]*(?:\.\d+)?\s?GFLOP                                # a compute rate
    | \d[\d,]*(?:\.\d+)?\s?(?:ms|s|sec|seconds?|min|minutes?|h|hours?|CPU-s|CPU-seconds)\b  # a duration
    | \d[\d,]*(?:\.\d+)?\s?(?:[KMGT]i?B)\b                      # a size: 27 MB
    | (?<![\w.])\d+\.\d+(?![\w.])                              # a decimal (0.720) that is not a version (2.21.0)
    """,
    re.X,
)
BLOCK = re.compile(r"<!-- ([a-z0-9-]+):begin -->\n.*?<!-- \1:end -->", re.S)
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`]+`")  # may wrap onto the next line
LINK_TARGET = re.compile(r"\]\([^)]*\)|https?://\S+")


def _render():
    spec = importlib.util.spec_from_file_location("render", ROOT / "benchmarks" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stray_figures(text: str) -> list[str]:
    """Measured-looking numbers in `text` outside the rendered blocks, code and the allowed phrases."""
    prose = BLOCK.sub(" ", text)
    prose = FENCE.sub(" ", prose)
    prose = INLINE_CODE.sub(" ", prose)
    prose = LINK_TARGET.sub(" ", prose)
    for phrase in ALLOWED:
        prose = re.sub(phrase, " ", prose)
    found = []
    for m in MEASURED.finditer(prose):
        line = prose[: m.start()].count("\n") + 1
        context = prose[max(0, m.start() - 40): m.end() + 20].replace("\n", " ")
        found.append(f"line ~{line}: {m.group(0)!r} in '...{context}...'")
    return found


# --------------------------------------------------------------------------- the real files


@pytest.mark.parametrize("name", DOCS)
def test_no_measured_figure_outside_the_rendered_blocks(name):
    stray = stray_figures((ROOT / name).read_text())
    assert not stray, (f"{name} quotes figures outside a rendered block (put them in a block rendered by "
                       "benchmarks/render.py from a committed JSON, or remove them):\n" + "\n".join(stray))


def test_every_block_is_what_render_produces():
    render = _render()
    diffs = render.differences([ROOT / name for name in DOCS])
    assert not diffs, "run .venv/bin/python benchmarks/render.py --write:\n" + "\n\n".join(diffs)


def test_every_rendered_block_is_used_and_every_used_block_is_known():
    render = _render()
    used = {name for doc in DOCS for name in render.blocks_in((ROOT / doc).read_text())}
    assert used <= set(render.BLOCKS), f"blocks nothing renders: {sorted(used - set(render.BLOCKS))}"
    assert set(render.BLOCKS) <= used, f"rendered blocks no document shows: {sorted(set(render.BLOCKS) - used)}"
    assert {"transfer", "roofline"} <= used


def test_every_result_a_block_quotes_records_its_command_or_how_it_was_made():
    """Each JSON in benchmarks/results/ says how it was made: the command (with commit and machine), or, for a
    file assembled by hand, that it was (`how_made`), or it is labelled as recorded before that was kept."""
    render = _render()
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        data = json.loads(path.read_text())
        if "how_made" in data:
            assert "command" not in data, f"{path.name}: a hand-made file must not carry a command"
            continue
        line = render.provenance(data, path.name)
        assert ("written by" in line and data.get("commit")) or "recorded before machine info was kept" in line, (
            f"{path.name}: {line}")


def test_the_machine_record_has_the_matmul_probe():
    spec = importlib.util.spec_from_file_location("common", ROOT / "benchmarks" / "common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    info = common.machine(probe=True, seconds=0.05)
    assert info["cpu_model"] and info["cpus"] >= 1 and len(info["load_average"]) == 3
    assert info["peak_matmul_gflops_float32"] > 0


# --------------------------------------------------------------------------- the check itself


def test_a_planted_stray_figure_fails(tmp_path):
    for name in DOCS:
        shutil.copy(ROOT / name, tmp_path / name)
    readme = tmp_path / "README.md"
    assert not stray_figures(readme.read_text())
    for planted in ("A cached rerun took 2.7% of the first run.", "Later epochs deliver about 1,400 images/s.",
                    "bfloat16 was 1.3-1.5x cheaper.", "It reached 0.678 / 0.781 in 814 s.",
                    "cpu-quick takes about 16 minutes.", "The shards take 27 MB."):
        readme.write_text((ROOT / "README.md").read_text() + "\n" + planted + "\n")
        assert stray_figures(readme.read_text()), planted


def test_an_edited_block_fails_the_render_check(tmp_path):
    render = _render()
    for name in DOCS:
        shutil.copy(ROOT / name, tmp_path / name)
    bench = tmp_path / "BENCHMARKS.md"
    text = bench.read_text()
    head, sep, tail = text.partition("<!-- transfer:begin -->\n")
    assert sep
    bench.write_text(head + sep + "Held-out mean IoU 0.990 (made up).\n" + tail)
    diffs = render.differences([tmp_path / name for name in DOCS])
    assert diffs and "transfer" in diffs[0]
    assert render.main(["--check", "--root", str(tmp_path)]) == 1
    assert render.main(["--write", "--root", str(tmp_path)]) == 0
    assert render.main(["--check", "--root", str(tmp_path)]) == 0
    assert "0.990 (made up)" not in bench.read_text()


def test_every_allowed_phrase_is_still_needed():
    """An allow-list entry that no document uses any more is removed, so the list stays short."""
    text = "\n".join(INLINE_CODE.sub(" ", FENCE.sub(" ", BLOCK.sub(" ", (ROOT / n).read_text()))) for n in DOCS)
    unused = [phrase for phrase in ALLOWED if not re.search(phrase, text)]
    assert not unused, f"remove these from ALLOWED: {unused}"
