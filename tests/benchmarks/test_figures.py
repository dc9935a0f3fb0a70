"""Figures you can trust: every measured number in README.md and BENCHMARKS.md comes from a committed result.

How: measured figures live only inside rendered blocks (`<!-- NAME:begin -->` ... `<!-- NAME:end -->`),
and each block must equal what `benchmarks/render.py` renders from the JSON files in benchmarks/results/.
Strict provenance: every file there records the command that wrote it, a clean commit that resolves in
this repository, the machine, and the configurations it ran (the sha256 of each resolved PipelineConfig);
a rendered figure whose configuration differs from what its preset resolves to today fails unless the text
labels it an earlier recipe; quality claims are computed from paired results; recipe-selection.json is what
`benchmarks/recipe_selection.py` decides from validation figures now. The text outside the blocks
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

ROOT = Path(__file__).resolve().parents[2]
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
    r"within 0\.001 mean IoU of the Keras model and\s+≥ 99\.9% of pixels": "the export parity bounds of "
    "SavedModel, LiteRT float32 and ONNX (configuration: segpipe/export/parity.py)",
    r"within 0\.005 and ≥ 99\.5%": "LiteRT float16's export parity bound (configuration: segpipe/export/parity.py)",
    r"within 0\.01\s+and ≥ 99%": "LiteRT int8's export parity bound (configuration: segpipe/export/parity.py)",
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
    """benchmarks.render: the blocks (BLOCKS), and the documents rewritten or checked against them."""
    return importlib.import_module("benchmarks.render")


def _rules():
    """benchmarks.render_common, the module every block loads results through: the provenance rules, WITHDRAWN,
    EARLIER_RECIPES, and the files the blocks read (LOADED) or refused (REFUSED)."""
    return importlib.import_module("benchmarks.render_common")


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


RESULTS = ROOT / "benchmarks" / "results"


def test_every_result_file_has_full_provenance():
    """Each JSON in benchmarks/results/: its command, a commit that resolves here with no `+uncommitted`, the
    machine, and its configurations (or a note that it runs none). Nothing assembled by hand."""
    rules = _rules()
    files = sorted(RESULTS.glob("*.json"))
    assert files
    bad = {p.name: rules.provenance_problems(json.loads(p.read_text())) for p in files}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"withdraw (git rm) or re-measure: {bad}"
    for p in files:
        assert "how_made" not in json.loads(p.read_text()), f"{p.name}: assembled by hand"
    assert not [p.name for p in RESULTS.iterdir() if p.suffix not in (".json", ".png")]


def test_withdrawn_files_left_the_tree():
    rules = _rules()
    names = [n for n in rules.WITHDRAWN if n.endswith(".json")]
    assert names
    present = [n for n in names if (RESULTS / n).exists()]
    assert not present, (f"withdrawn but still there (re-measured? then drop them from render_common.WITHDRAWN): "
                         f"{present}")


def test_every_rendered_figure_comes_from_a_result_with_full_provenance():
    render, rules = _render(), _rules()
    for name in render.BLOCKS:
        render.BLOCKS[name]()
    assert rules.LOADED, "no block read a result"
    assert not rules.REFUSED, f"blocks tried to render results without full provenance: {rules.REFUSED}"
    for name in rules.LOADED:
        assert not rules.provenance_problems(json.loads((RESULTS / name).read_text())), name


def test_a_rendered_figure_runs_what_its_preset_resolves_to_today_or_is_labelled_an_earlier_recipe():
    render, rules = _render(), _rules()
    for name in render.BLOCKS:
        render.BLOCKS[name]()
    docs = "\n".join((ROOT / doc).read_text() for doc in DOCS)
    for name in sorted(rules.LOADED):
        result = json.loads((RESULTS / name).read_text())
        drift = rules.config_drift(result)
        if name in rules.EARLIER_RECIPES:
            assert drift, f"{name} is labelled an earlier recipe but runs today's presets: drop the label"
            line = rules.provenance(result, name)
            assert "an earlier recipe" in line and line in docs, f"{name}: the text does not label it: {line}"
        else:
            assert not drift, (f"{name} was measured with a configuration its preset no longer resolves to: "
                               f"re-measure it, or label it in render_common.EARLIER_RECIPES: {drift}")


def test_a_changed_preset_is_caught_and_a_broken_provenance_named(tmp_path):
    """The checks themselves: a recorded digest that today's resolution does not reproduce is drift; a dirty,
    unknown or missing commit, a missing command, machine or configuration are each named."""
    rules = _rules()
    common = _common()
    record = common.config_record("tiny", {"train.seed": 3})
    clean = {"command": "x", "commit": _head(), "machine": {"cpu_model": "cpu", "cpus": 2}, "configs": [record]}
    assert rules.provenance_problems(clean) == [] and rules.config_drift(clean) == []
    earlier = {**clean, "configs": [{**record, "digest": common.config_digest(
        common.resolve_config("tiny", {"train.seed": 3, "train.learning_rate": 0.5}))}]}
    assert rules.config_drift(earlier) and "tiny" in rules.config_drift(earlier)[0]
    changed = {**clean, "configs": [{**record, "digest": "0" * 64, "resolved": {
        **record["resolved"], "train": {**record["resolved"]["train"], "learning_rate": 0.5}}}]}
    assert "train.learning_rate: 0.5 -> " in rules.config_drift(changed)[0]
    assert rules.config_drift({**changed, "benchmark": "inference"}), "a model/train change is drift for inference"
    gate_only = {**clean, "configs": [{**record, "digest": "0" * 64, "resolved": {
        **record["resolved"], "promotion": {"min_mean_iou": -1.0}}}]}
    assert rules.config_drift(gate_only), "a benchmark not in MEASURED_SECTIONS counts every section"
    assert rules.config_drift({**gate_only, "benchmark": "inference"}) == [], (
        "inference never runs the promotion gate: a change there alone is not drift")
    model = record["resolved"]["model"]
    before_knob = {k: v for k, v in model.items() if k != "decoder_stride"}  # a run from before the knob existed
    added = {**clean, "configs": [{**record, "digest": "0" * 64, "resolved": {**record["resolved"], "model": before_knob}}]}
    assert rules.config_drift(added) == [], "a knob added since, at its default, builds what ran then: no drift"
    moved = {**added, "configs": [{**added["configs"][0], "resolved": {
        **record["resolved"], "model": {**before_knob, "bn_momentum": 0.5}}}]}
    assert "model.bn_momentum: 0.5 -> " in rules.config_drift(moved)[0] and "decoder_stride" not in rules.config_drift(moved)[0]
    for broken, words in (({"commit": _head() + "+uncommitted"}, "uncommitted"),
                          ({"commit": "0" * 40}, "does not resolve"), ({"commit": None}, "no commit"),
                          ({"command": ""}, "no command"), ({"machine": {}}, "no machine"),
                          ({"configs": []}, "no configuration")):
        problems = rules.provenance_problems({**clean, **broken})
        assert len(problems) == 1 and words in problems[0], (broken, problems)
    assert rules.provenance_problems({**clean, "configs": [], "config_note": "runs none"}) == []


def test_a_relative_path_is_checked_as_the_run_resolved_it_from_any_directory(tmp_path, monkeypatch):
    """A run given a relative path (`--set model.encoder_weights=../shared/...` from the repository root) is
    checked for drift from any directory, a fresh clone elsewhere included: the check takes the absolute path
    the run resolved it to, from the record, instead of resolving the relative one again where it stands; and
    the file need not exist where the check runs (tests must not depend on ../shared)."""
    rules, common = _rules(), _common()
    (tmp_path / "run" / "w").mkdir(parents=True)
    (tmp_path / "run" / "w" / "enc.weights.h5").write_bytes(b"a weights file, as far as the config checks")
    monkeypatch.chdir(tmp_path / "run")
    record = common.config_record("cpu-quick", {"model.encoder_weights": "w/enc.weights.h5"})
    assert record["resolved"]["model"]["encoder_weights"] == str(tmp_path / "run" / "w" / "enc.weights.h5")
    result = {"configs": [record]}
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # where w/enc.weights.h5 does not exist
    assert rules.config_drift(result) == []
    (tmp_path / "run" / "w" / "enc.weights.h5").unlink()  # a machine without the file (a clone without ../shared)
    assert rules.config_drift(result) == [], "the file is the run's input, not the preset: its absence is no drift"
    other = {"configs": [{**record, "resolved": {**record["resolved"], "model": {
        **record["resolved"]["model"], "encoder_weights": str(tmp_path / "other" / "enc.weights.h5")}}}]}
    assert "resolves to" in rules.config_drift(other)[0], "another file than the run's is drift"


def test_quality_claims_are_computed_from_the_paired_results():
    """"not lower" only when the candidate scored at least the baseline on every paired seed."""
    import importlib

    claims = importlib.import_module("benchmarks.claims")

    def report(scores):
        return {"results": [{"train_seed": s, "best_val_mean_iou": v, "held_out": {"mean_iou": h}}
                            for s, (v, h) in enumerate(scores)]}

    bf16 = report([(0.7463, 0.7542), (0.7560, 0.7590), (0.7520, 0.7585)])
    fp32 = report([(0.7378, 0.7533), (0.7532, 0.7554), (0.7457, 0.7510)])
    text = claims.paired_claim(bf16, fp32)
    assert "held-out lower on 3 of 3 seeds" in text and "validation lower on 3 of 3 seeds" in text
    assert "not lower" not in text
    assert claims.paired_claim(fp32, bf16).count("not lower on 3 of 3 seeds") == 2
    mixed = report([(0.7463, 0.7540), (0.7560, 0.7500), (0.7520, 0.7500)])
    assert "held-out lower on 1 of 3 seeds" in claims.paired_claim(mixed, fp32)
    assert "not measured" in claims.paired_claim(None, fp32, ("a.json", "b.json"))
    roofline = importlib.import_module("benchmarks.roofline_markdown")
    column = roofline.quality_text({"variant": "float32", "preset_change": "mixed_precision = 'off'",
                                    "quality": "float32 maths (the reference precision): not lower"})
    assert "not lower" not in column.partition(":")[0] and column.endswith(claims.paired_claim(
        *(importlib.import_module("benchmarks.render_common").load(n) for n in claims.CLAIM_PAIRS["float32"]),
        claims.CLAIM_PAIRS["float32"]))


def test_recipe_selection_is_what_its_command_decides_from_validation_figures_now():
    import importlib

    selection = importlib.import_module("benchmarks.recipe_selection")
    committed = json.loads((RESULTS / "recipe-selection.json").read_text())
    assert committed["decisions"] == json.loads(json.dumps(selection.decide_all())), (
        "run .venv/bin/python benchmarks/recipe_selection.py --out benchmarks/results/recipe-selection.json")
    assert "recipe_selection.py" in committed["command"]
    assert {d["id"] for d in committed["decisions"]} >= {"cpu-quick-hue-saturation", "cpu-quick-precision"}


def test_a_recipe_decision_reads_validation_figures_only(tmp_path, monkeypatch):
    """Two candidates whose held-out figures disagree with their validation figures: the decision follows
    validation; a candidate without validation figures withdraws the decision."""
    import importlib

    selection = importlib.import_module("benchmarks.recipe_selection")
    head = _head()
    base = {"command": "q", "commit": head, "machine": {"cpu_model": "cpu", "cpus": 2},
            "configs": [_common().config_record("tiny")]}

    def write(name, val, held):
        runs = [{"train_seed": s, "best_val_mean_iou": v, "held_out": {"mean_iou": h}}
                for s, (v, h) in enumerate(zip(val, held))]
        (tmp_path / name).write_text(json.dumps({**base, "results": runs}))

    write("a.json", [0.70, 0.71], [0.80, 0.81])
    write("b.json", [0.72, 0.73], [0.60, 0.61])
    monkeypatch.setattr(selection, "RESULTS", tmp_path)
    decision = {"id": "t", "question": "a or b", "preset_today": "a", "first_decided": "by hand",
                "candidates": {"a": "a.json", "b": "b.json"}}
    out = selection.decide(decision)
    assert out["status"] == "decided" and out["chosen"] == "b" and out["chosen_not_lower_on_seeds"] == {"a": 2}
    (tmp_path / "b.json").write_text(json.dumps({**base, "results": [{"train_seed": 0, "held_out": {"mean_iou": 1}}]}))
    out = selection.decide(decision)
    assert out["status"] == "withdrawn" and "validation" in out["missing"][0]


def test_quality_benchmark_has_no_held_out_stop():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--stop-at-held-out", "0.7"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and "unrecognized arguments: --stop-at-held-out" in done.stderr


@pytest.mark.slow
def test_quality_benchmark_scores_the_held_out_split_only_after_training_ends(tmp_path, monkeypatch):
    """A real tiny training run through quality.train_and_score: no evaluation of any split while
    segpipe.training.train runs; afterwards every curve point has its kept checkpoint's held-out score."""
    import importlib
    import types

    from segpipe import training
    from segpipe.evaluation import evaluate as evaluation
    from segpipe.config import build_config
    from tests.synthetic import write_tiny_dataset

    quality = importlib.import_module("benchmarks.quality")
    ds = write_tiny_dataset(tmp_path / "ds", {"train": 8, "val": 4, "test": 4}, height=32, width=32)
    cfg = build_config("tiny", {"train.budget_images": 24, "train.early_stopping_patience": 0})
    state = {"training": False, "calls": []}
    real_train, real_evaluate = training.train, evaluation.evaluate

    def train(*args, **kw):
        state["training"] = True
        try:
            return real_train(*args, **kw)
        finally:
            state["training"] = False

    def evaluate(models, dataset_dir, split, *args, **kw):
        state["calls"].append((split, state["training"]))
        return real_evaluate(models, dataset_dir, split, *args, **kw)

    monkeypatch.setattr(training, "train", train)
    monkeypatch.setattr(evaluation, "evaluate", evaluate)
    out = quality.train_and_score(cfg, types.SimpleNamespace(path=str(ds)), tmp_path / "runs" / "r")
    assert state["calls"] and all(not during for _, during in state["calls"]), state["calls"]
    assert {split for split, _ in state["calls"]} == {"test"}
    assert out["epochs_completed"] == len(out["curve"]) >= 2
    assert all(p["held_out_mean_iou"] is not None and p["best_val_mean_iou"] is not None for p in out["curve"])
    assert out["best_val_mean_iou"] == max(p["val_mean_iou"] for p in out["curve"])
    kept = sorted((tmp_path / "runs" / "r-checkpoints").glob("epoch-*.keras"))
    assert kept and len(kept) <= len(out["curve"])


def _common():
    spec = importlib.util.spec_from_file_location("common", ROOT / "benchmarks" / "common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    return common


def _head() -> str:
    import subprocess

    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def test_the_config_digest_is_the_sha256_of_the_resolved_configs_json():
    import hashlib

    from segpipe.config import build_config

    common = _common()
    cfg = build_config("cpu-quick", {"train.seed": 1})
    dumped = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    record = common.config_record("cpu-quick", {"train.seed": 1}, cfg=cfg)
    assert record["digest"] == hashlib.sha256(dumped.encode()).hexdigest() == common.config_digest(cfg)
    assert record["resolved"] == cfg.model_dump(mode="json") and record["overrides"] == {"train.seed": 1}
    assert common.config_record("cpu-quick", {"train.seed": 2})["digest"] != record["digest"]
    with pytest.raises(ValueError):
        common.config_record("cpu-quick", {"train.seed": 2}, cfg=cfg)


def test_the_machine_record_has_the_matmul_probe():
    common = _common()
    info = common.machine(probe=True, seconds=0.05)
    assert info["cpu_model"] and info["cpus"] >= 1 and len(info["load_average"]) == 3
    assert info["peak_matmul_gflops_float32"] > 0


# --------------------------------------------------------------------------- the results table

README_MAX_LINES = 200
FIGURE = re.compile(r"(?<![\w.])(\d[\d,]*(?:\.\d+)?)(?=x?(?!\w))")  # 0.753, 1,003, 2.61x; not int8, 500x375
RESULT_FILE = re.compile(r"`([\w.-]+\.json)`")
SECTION_LINK = re.compile(r"\]\(BENCHMARKS\.md#([\w-]+)\)")


def _numbers(value) -> list[float]:
    """Every number in a loaded result (booleans are not figures)."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return [float(value)] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def untraceable_figures(cell: str, results: list[dict]) -> list[str]:
    """The numbers in a table cell that no number in `results` shows when printed to the same decimals (as a
    value, or as a percentage of a share): a figure that does not come from the files its row names."""
    values = [x for r in results for x in _numbers(r)]
    out = []
    for figure in FIGURE.findall(INLINE_CODE.sub(" ", cell)):
        text = figure.replace(",", "")
        decimals = len(text.partition(".")[2])
        if not any(f"{v:.{decimals}f}" == text or f"{100 * v:.{decimals}f}" == text for v in values):
            out.append(figure)
    return out


def _summary_rows(text: str) -> list[list[str]]:
    m = re.search(r"<!-- results-summary:begin -->\n(.*?)<!-- results-summary:end -->", text, re.S)
    assert m, "no results-summary block"
    lines = [line for line in m.group(1).splitlines() if line.startswith("|")]
    assert lines[0].startswith("| what | measured | machine | details |") and set(lines[1]) <= set("|-: ")
    return [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in lines[2:]]


def test_the_readme_results_table_has_five_rows_each_traceable_to_its_results():
    """README.md (at most README_MAX_LINES lines, what it is and the two commands first) shows the five-row
    results table; each row names the BENCHMARKS.md section behind it and result files with full provenance,
    the machine those files recorded, and no figure those files do not hold. BENCHMARKS.md opens with it."""
    rules, summary = _rules(), importlib.import_module("benchmarks.render_summary")
    readme = (ROOT / "README.md").read_text()
    bench = (ROOT / "BENCHMARKS.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    first_screen = readme.split("\n## ", 2)
    assert first_screen[1].startswith("Set up and run"), "what it is, then how to set it up and run it"
    assert "make run" in first_screen[1] and "make test" in first_screen[1]
    assert bench.index("<!-- results-summary:begin -->") < bench.index("\n## "), "BENCHMARKS.md opens with it"
    anchors = {summary.anchor(h) for h in re.findall(r"^#+ (.+)$", bench, re.M)}
    rows = _summary_rows(readme)
    assert rows == _summary_rows(bench)
    assert [r[0] for r in rows] == ["quality", "training speed", "data preparation", "serving", "local start-up"]
    for what, measured, where, details in rows:
        links, names = SECTION_LINK.findall(details), RESULT_FILE.findall(details)
        assert links and set(links) <= anchors, f"{what}: links to no BENCHMARKS.md section: {links}"
        assert names and not set(names) & set(rules.WITHDRAWN), f"{what}: {names}"
        results = [json.loads((RESULTS / n).read_text()) for n in names]
        for name, result in zip(names, results):
            assert not rules.provenance_problems(result), name
            if name in rules.EARLIER_RECIPES:  # an earlier recipe's figure: the row must say so
                assert rules.config_drift(result) and "earlier `cpu-quick`" in measured and name in measured, name
            else:
                assert not rules.config_drift(result), name
        assert all(summary.machine(r["machine"]) in where for r in results), f"{what}: machine {where!r}"
        assert not (stray := untraceable_figures(measured, results)), f"{what}: figures not in {names}: {stray}"
        assert re.search(r"\d", measured), f"{what}: measured nothing"


def test_an_untraceable_figure_in_the_results_table_is_caught():
    summary = importlib.import_module("benchmarks.render_summary")
    result = json.loads((RESULTS / "export_inference.json").read_text())
    row = summary.serving_row(result)
    assert not untraceable_figures(row, [result])
    assert untraceable_figures(row + "; ONNX 12.3 ms", [result]) == ["12.3"]
    assert untraceable_figures(row.replace("2.61x", "2.71x"), [result]) == ["2.71"]
    assert not untraceable_figures("LiteRT int8, a 500x375 JPEG, `tiny 9.99`", [result])


def test_local_start_renders_one_image_predict_when_measured_and_skips_it_when_not():
    summary = importlib.import_module("benchmarks.render_summary")
    result = json.loads((RESULTS / "local_start.json").read_text())
    without = {k: v for k, v in result.items() if k != "predict_one_image_s"}
    assert "predict" not in summary.start_row(without)
    with_predict = {**without, "predict_one_image_s": {"keras_background": {"median": 4.21},
                                                       "litert_background": {"median": 6.5}, "target": 5.0}}
    row = summary.start_row(with_predict)
    assert "`.keras` **4.2 s**" in row and "LiteRT **6.5 s**" in row and "target 5 s: met, not met" in row
    assert not untraceable_figures(row, [with_predict])


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


def test_a_merged_result_renders_each_runs_load_average():
    """A merged file's own machine record is the merging process's; the load each training ran under is in
    merged_from, one record per run, and the provenance line gives those."""
    from benchmarks.render_common import load_text

    def run(start: float, end: float) -> dict:
        return {"machine": {"load_average": [start, 0, 0], "load_average_after": [end, 0, 0]}}

    merged = {"machine": {"load_average": [9.0, 0, 0], "note": "the machine that merged"},
              "merged_from": [run(0.3, 1.4), run(1.55, 1.83)]}
    assert load_text(merged) == "load average of each merged run, at its start and end: 0.3 and 1.4, 1.6 and 1.8"
    assert load_text(run(0.3, 1.4)) == "load average 0.3 at the start, 1.4 at the end"
    merged["merged_from"].append({"machine": {}})
    assert load_text(merged) == "load average not recorded"
