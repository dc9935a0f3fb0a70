"""Tests for segpipe.evaluation.metrics: hand-computed values, Keras agreement, edge cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segpipe.evaluation.metrics import (
    ConfusionAccumulator,
    confusion_matrix,
    markdown_table,
    per_image_iou,
    scores,
)

# 12 pixels; labels 0 pet, 1 background, 2 border.
HAND_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2]).reshape(3, 4)
HAND_PRED = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 0, 2]).reshape(3, 4)
# rows = true, cols = predicted:
#   pet:        3 -> pet, 1 -> background            [3, 1, 0]
#   background: 5 -> background, 1 -> border        [0, 5, 1]
#   border:     1 -> pet, 1 -> border                [1, 0, 1]
HAND_CM = [[3, 1, 0], [0, 5, 1], [1, 0, 1]]


def test_confusion_matrix_hand_case():
    cm = confusion_matrix(HAND_TRUE, HAND_PRED)
    assert cm.dtype == np.int64
    assert cm.tolist() == HAND_CM


def test_scores_hand_case_exact_values():
    s = scores(confusion_matrix(HAND_TRUE, HAND_PRED))
    # pixel accuracy = trace / total = (3 + 5 + 1) / 12
    assert s["pixel_accuracy"] == pytest.approx(9 / 12)
    # pet:        TP 3, FP = col 0 (3+0+1) - 3 = 1, FN = row 0 (4) - 3 = 1 -> IoU 3/5, Dice 6/8
    # background: TP 5, FP = col 1 (1+5+0) - 5 = 1, FN = row 1 (6) - 5 = 1 -> IoU 5/7, Dice 10/12
    # border:     TP 1, FP = col 2 (0+1+1) - 1 = 1, FN = row 2 (2) - 1 = 1 -> IoU 1/3, Dice 2/4
    assert s["iou"] == pytest.approx({"pet": 3 / 5, "background": 5 / 7, "border": 1 / 3})
    assert s["dice_per_class"] == pytest.approx({"pet": 6 / 8, "background": 10 / 12, "border": 2 / 4})
    assert s["mean_iou"] == pytest.approx((3 / 5 + 5 / 7 + 1 / 3) / 3)
    assert s["dice"] == pytest.approx((6 / 8 + 10 / 12 + 2 / 4) / 3)
    assert s["mean_iou_no_border"] == pytest.approx((3 / 5 + 5 / 7) / 2)
    # foreground = pet + border. Background-background cell = 5, so union = 12 - 5 = 7;
    # TP = fg predicted as any fg = cm[0,0] + cm[0,2] + cm[2,0] + cm[2,2] = 3 + 0 + 1 + 1 = 5 -> 5/7
    assert s["foreground_iou"] == pytest.approx(5 / 7)
    # predicted column sums 4, 6, 2 of 12
    assert s["predicted_class_share"] == pytest.approx({"pet": 4 / 12, "background": 6 / 12, "border": 2 / 12})
    assert s["confusion_matrix"] == HAND_CM
    assert s["n_pixels"] == 12
    assert s["collapsed"] is False
    assert set(s) == {
        "pixel_accuracy", "mean_iou", "iou", "dice", "dice_per_class", "foreground_iou",
        "mean_iou_no_border", "confusion_matrix", "n_pixels", "predicted_class_share", "collapsed",
    }


def test_scores_are_json_serialisable_python_types():
    s = scores(confusion_matrix(HAND_TRUE, HAND_PRED))
    text = json.dumps(s, allow_nan=False)
    assert json.loads(text) == s
    assert type(s["mean_iou"]) is float and type(s["n_pixels"]) is int
    assert all(type(v) is int for row in s["confusion_matrix"] for v in row)


def test_foreground_iou_hand_case():
    # pet predicted as border still counts as a foreground hit; background <-> foreground errors do not.
    y_true = np.array([0, 0, 2, 2, 1, 1, 1, 1])
    y_pred = np.array([2, 0, 0, 1, 1, 1, 1, 0])
    # fg TP = true in {0,2} and pred in {0,2}: pixels 0, 1, 2 -> 3
    # FN = true fg predicted bg: pixel 3 -> 1;  FP = true bg predicted fg: pixel 7 -> 1
    # foreground IoU = 3 / (3 + 1 + 1) = 0.6
    assert scores(confusion_matrix(y_true, y_pred))["foreground_iou"] == pytest.approx(0.6)


def test_class_absent_from_truth_and_prediction_is_null_and_excluded():
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 1, 1, 1])
    s = scores(confusion_matrix(y_true, y_pred))
    # pet: TP 1, FP 0, FN 1 -> 1/2;  background: TP 2, FP 1, FN 0 -> 2/3;  border: 0/0 -> None
    assert s["iou"] == {"pet": pytest.approx(1 / 2), "background": pytest.approx(2 / 3), "border": None}
    assert s["dice_per_class"]["border"] is None
    assert s["mean_iou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert s["dice"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert "null" in json.dumps(s)


def test_class_present_in_only_one_side_counts_as_zero():
    # border only predicted, never true: IoU 0 and included in the mean
    s = scores(confusion_matrix(np.array([0, 1]), np.array([0, 2])))
    assert s["iou"] == {"pet": 1.0, "background": 0.0, "border": 0.0}
    assert s["mean_iou"] == pytest.approx(1 / 3)


def test_empty_matrix_gives_nulls_not_errors():
    s = scores(np.zeros((3, 3), dtype=np.int64))
    assert s["n_pixels"] == 0
    assert s["mean_iou"] is None and s["pixel_accuracy"] is None and s["foreground_iou"] is None
    assert s["collapsed"] is False


def test_collapse_detection_all_background_prediction():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, size=(4, 16, 16))
    y_pred = np.ones_like(y_true)
    s = scores(confusion_matrix(y_true, y_pred))
    assert s["collapsed"] is True
    assert s["predicted_class_share"] == {"pet": 0.0, "background": 1.0, "border": 0.0}
    assert s["foreground_iou"] == 0.0
    assert s["iou"]["pet"] == 0.0 and s["iou"]["border"] == 0.0


def test_collapse_threshold_boundary():
    y_true = np.zeros(100, dtype=np.int64)
    y_pred = np.ones(100, dtype=np.int64)
    y_pred[:2] = 0  # background takes 98 of 100 predictions
    cm = confusion_matrix(y_true, y_pred)
    assert scores(cm)["collapsed"] is True  # 0.98 >= default 0.98
    assert scores(cm, collapse_threshold=0.99)["collapsed"] is False
    with pytest.raises(ValueError, match="collapse_threshold"):
        scores(cm, collapse_threshold=0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_iou_agrees_with_keras(seed):
    import keras
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 3, size=(2, 24, 24))
    y_pred = np.where(rng.random(y_true.shape) < 0.6, y_true, rng.integers(0, 3, size=y_true.shape))
    if seed == 2:  # drop border from both sides: Keras also leaves a 0/0 class out of the mean
        y_true, y_pred = np.minimum(y_true, 1), np.minimum(y_pred, 1)
    ref = keras.metrics.MeanIoU(num_classes=3)
    ref.update_state(y_true, y_pred)
    ours = scores(confusion_matrix(y_true, y_pred))["mean_iou"]
    assert ours == pytest.approx(float(ref.result()), abs=1e-6)
    assert confusion_matrix(y_true, y_pred).tolist() == np.asarray(ref.total_cm).astype(np.int64).tolist()


def test_accumulator_over_batches_equals_one_shot():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 3, size=(6, 8, 8))
    y_pred = rng.integers(0, 3, size=(6, 8, 8))
    acc = ConfusionAccumulator()
    for i in range(0, 6, 2):
        acc.update(y_true[i:i + 2], y_pred[i:i + 2])
    one_shot = confusion_matrix(y_true, y_pred)
    np.testing.assert_array_equal(acc.matrix, one_shot)
    assert acc.scores() == scores(one_shot)
    # merging two halves gives the same
    a = ConfusionAccumulator().update(y_true[:3], y_pred[:3])
    b = ConfusionAccumulator().update(y_true[3:], y_pred[3:])
    np.testing.assert_array_equal((a + b).matrix, one_shot)
    np.testing.assert_array_equal(a.matrix, confusion_matrix(y_true[:3], y_pred[:3]))  # operands untouched
    with pytest.raises(ValueError, match="cannot merge"):
        a + ConfusionAccumulator(num_classes=4)


def test_accumulator_matrix_is_a_copy():
    acc = ConfusionAccumulator().update(HAND_TRUE, HAND_PRED)
    acc.matrix[0, 0] = 999
    assert acc.matrix.tolist() == HAND_CM


def test_bad_shapes_raise_value_error_naming_shapes():
    with pytest.raises(ValueError, match=r"y_true \(4, 4\).*y_pred \(4, 5\)"):
        confusion_matrix(np.zeros((4, 4), int), np.zeros((4, 5), int))


def test_labels_out_of_range_raise():
    with pytest.raises(ValueError, match=r"y_pred labels must lie in \[0, 3\).*3"):
        confusion_matrix(np.array([0, 1]), np.array([0, 3]))
    with pytest.raises(ValueError, match=r"y_true labels must lie in \[0, 3\).*-1"):
        confusion_matrix(np.array([-1, 1]), np.array([0, 1]))


def test_float_labels_rejected():
    with pytest.raises(TypeError, match="y_pred must hold integer class labels; got dtype float32"):
        confusion_matrix(np.array([0, 1]), np.array([0.0, 1.0], dtype=np.float32))


def test_any_int_dtype_without_overflow():
    # uint8 labels with 20 classes: 19 * 20 + 19 = 399 would overflow uint8 arithmetic
    y = np.array([19, 19, 0], dtype=np.uint8)
    p = np.array([19, 0, 0], dtype=np.uint8)
    cm = confusion_matrix(y, p, num_classes=20)
    assert cm[19, 19] == 1 and cm[19, 0] == 1 and cm[0, 0] == 1 and cm.sum() == 3
    assert confusion_matrix(np.array([True, False]), np.array([True, True]), num_classes=2).tolist() == [[0, 1], [0, 1]]


def test_ignore_index_drops_true_pixels():
    y_true = np.array([0, 255, 1, 255])
    y_pred = np.array([0, 2, 1, 0])
    cm = confusion_matrix(y_true, y_pred, ignore_index=255)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    acc = ConfusionAccumulator(ignore_index=255).update(y_true, y_pred)
    assert acc.scores()["n_pixels"] == 2


def test_bad_num_classes_and_matrix():
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(np.array([0]), np.array([0]), num_classes=0)
    with pytest.raises(ValueError, match="square"):
        scores(np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="class_names has 3 names"):
        scores(np.zeros((2, 2), dtype=np.int64))


def test_per_image_iou():
    assert per_image_iou(HAND_TRUE, HAND_PRED) == pytest.approx((3 / 5 + 5 / 7 + 1 / 3) / 3)
    assert per_image_iou(np.array([[0, 1]]), np.array([[0, 1]])) == 1.0  # border absent: not counted
    assert isinstance(per_image_iou(HAND_TRUE, HAND_PRED), float)
    with pytest.raises(ValueError, match="non-empty"):
        per_image_iou(np.zeros((0,), int), np.zeros((0,), int))


def test_markdown_table():
    s = scores(confusion_matrix(HAND_TRUE, HAND_PRED))
    md = markdown_table(s, "test split")
    lines = md.splitlines()
    assert lines[0] == "### test split"
    assert f"| mean IoU | {(3 / 5 + 5 / 7 + 1 / 3) / 3:.4f} |" in lines
    assert "| pixel accuracy | 0.7500 |" in lines
    assert "| pet | 0.6000 | 0.7500 | 0.3333 |" in lines
    assert "| border | 0.3333 | 0.5000 | 0.1667 |" in lines
    assert "| collapsed (one class dominates predictions) | no |" in lines
    s_absent = scores(confusion_matrix(np.array([0, 1]), np.array([0, 1])))
    assert "| border | n/a | n/a | 0.0000 |" in markdown_table(s_absent, "t")
    with pytest.raises(ValueError, match="missing keys"):
        markdown_table({"mean_iou": 0.5}, "t")
