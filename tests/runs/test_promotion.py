"""The promotion gate: decisions and the atomic champion swap."""

import json

import pytest

from segpipe.runs.promotion import champion_info, decide, promote


def metrics(miou, split="test", key="k1", collapsed=False):
    return {"mean_iou": miou, "split": split, "dataset_key": key, "collapsed": collapsed}


@pytest.mark.parametrize(
    "cand, champ, floor, promoted, words",
    [
        (0.7, None, 0.5, True, "no champion yet"),
        (0.4, None, 0.5, False, "below the floor"),
        (0.7, 0.6, 0.5, True, ">= champion"),
        (0.6, 0.6, 0.5, True, ">= champion"),
        (0.55, 0.6, 0.5, False, "< champion"),
        (0.45, 0.3, 0.5, False, "below the floor"),
    ],
)
def test_decide(cand, champ, floor, promoted, words):
    d = decide(metrics(cand), None if champ is None else metrics(champ), floor=floor)
    assert d.promote is promoted and words in d.reason
    assert (d.candidate_mean_iou, d.champion_mean_iou, d.floor) == (cand, champ, floor)
    verdict = "PROMOTED" if promoted else "KEPT CHAMPION" if champ is not None else "NOT PROMOTED (no champion yet)"
    assert f"# Promotion decision: {verdict}\n" in d.to_markdown()
    assert ("champion kept" in d.reason) is (not promoted and champ is not None)  # never "kept" of no champion


def test_what_retrain_prints_of_each_decision():
    from segpipe_app.cli.commands import decision_lines

    where = "/w/models/champion"
    first = decide(metrics(0.4), None, floor=0.5)
    assert decision_lines({"promoted": False, "reason": first.reason, "champion": where, "has_champion": False}) == [
        "NOT PROMOTED: candidate mean IoU 0.4000 is below the floor 0.5000: not promoted, and there is no champion yet",
        f"champion: none yet (a promoted model is installed in {where})"]
    kept = decide(metrics(0.55), metrics(0.6), floor=0.5)
    assert decision_lines({"promoted": False, "reason": kept.reason, "champion": where, "has_champion": True}) == [
        "CHAMPION KEPT: candidate mean IoU 0.5500 < champion's 0.6000: champion kept", f"champion: {where}"]
    won = decide(metrics(0.7), None, floor=0.5)
    assert decision_lines({"promoted": True, "reason": won.reason, "champion": where, "has_champion": True,
                           "serving_dir": "/w/models/serving/pets/1"}) == [
        f"PROMOTED: {won.reason}", f"champion: {where}",
        "serving:  /w/models/serving/pets/1 (SavedModel for TF Serving, LiteRT and ONNX, parity-checked)"]
    assert [d.leaves_a_champion for d in (first, kept, won)] == [False, True, True]


def test_collapsed_candidate_is_never_promoted():
    assert not decide(metrics(0.9, collapsed=True), None, floor=0.1).promote


def test_champion_scored_elsewhere_is_an_error_not_an_unfair_comparison():
    with pytest.raises(ValueError, match="same split"):
        decide(metrics(0.7), metrics(0.6, key="other"), floor=0.5)


def test_promote_swaps_atomically_and_keeps_history(tmp_path):
    champion = tmp_path / "models" / "champion"
    for i, miou in enumerate([0.6, 0.7]):
        model = tmp_path / f"m{i}.keras"
        model.write_bytes(f"model {i}".encode())
        d = decide(metrics(miou), None if i == 0 else metrics(0.6), floor=0.5)
        promote(model, metrics(miou), {"run_id": f"run{i}"}, d, champion)
        assert (champion / "model.keras").read_bytes() == f"model {i}".encode()
        assert json.loads((champion / "metrics.json").read_text())["mean_iou"] == miou
    info = champion_info(champion)
    assert info["run_id"] == "run1" and info["model_path"].endswith("model.keras")
    history = list((tmp_path / "models" / "history").iterdir())
    assert len(history) == 1 and history[0].name.endswith("run0")
    assert (history[0] / "model.keras").read_bytes() == b"model 0"
    assert not [p for p in champion.parent.iterdir() if p.name.startswith(".champion.tmp")]


def test_failed_promotion_leaves_the_champion(tmp_path):
    champion = tmp_path / "champion"
    model = tmp_path / "m.keras"
    model.write_bytes(b"good")
    promote(model, metrics(0.6), {"run_id": "good"}, decide(metrics(0.6), None, floor=0.5), champion)
    with pytest.raises(FileNotFoundError):
        promote(tmp_path / "missing.keras", metrics(0.9), {"run_id": "bad"},
                decide(metrics(0.9), metrics(0.6), floor=0.5), champion)
    assert (champion / "model.keras").read_bytes() == b"good"
    assert champion_info(champion)["run_id"] == "good"
    assert champion_info(tmp_path / "nothing") is None
