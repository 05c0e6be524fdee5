"""edgeseg.metrics against hand-computed cases (MMSegmentation IoUMetric rules)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeseg.metrics import IGNORE_INDEX, AbsDiff, confusion_matrix, latency_summary, scores_from_confusion


def test_hand_computed_two_by_three() -> None:
    truth = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    cm = confusion_matrix(pred, truth, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    s = scores_from_confusion(cm)
    # class 0: TP 1, FP 1 (truth 2 -> 0), FN 1 (0 -> 1): 1/3; class 1: TP 2, FP 1: 2/3; class 2: TP 1, FN 1: 1/2
    assert s.iou == pytest.approx((1 / 3, 2 / 3, 1 / 2))
    assert s.miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert s.pixel_accuracy == pytest.approx(4 / 6) and s.pixels == 6


def test_ignore_index_pixels_are_left_out() -> None:
    truth = np.array([[0, IGNORE_INDEX], [1, IGNORE_INDEX]])
    pred = np.array([[0, 1], [1, 0]])  # the ignored pixels are "wrong" but must not count
    s = scores_from_confusion(confusion_matrix(pred, truth, 2))
    assert s.iou == (1.0, 1.0) and s.pixel_accuracy == 1.0 and s.pixels == 2


def test_class_absent_from_both_is_excluded_from_miou() -> None:
    truth = np.array([[0, 0], [2, 2]])
    pred = np.array([[0, 2], [2, 2]])
    s = scores_from_confusion(confusion_matrix(pred, truth, 3))
    assert math.isnan(s.iou[1])  # class 1 in neither map
    assert s.iou[0] == pytest.approx(1 / 2) and s.iou[2] == pytest.approx(2 / 3)
    assert s.miou == pytest.approx((1 / 2 + 2 / 3) / 2)  # mean over the two present classes
    assert s.to_dict(["a", "b", "c"])["iou"]["b"] is None


def test_class_predicted_but_not_present_scores_zero() -> None:
    s = scores_from_confusion(confusion_matrix(np.array([[1, 1]]), np.array([[0, 0]]), 2))
    assert s.iou == (0.0, 0.0) and s.miou == 0.0 and s.pixel_accuracy == 0.0


def test_empty_and_fully_ignored_images() -> None:
    empty = scores_from_confusion(confusion_matrix(np.zeros((0, 0), int), np.zeros((0, 0), int), 2))
    ignored = scores_from_confusion(confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), IGNORE_INDEX), 2))
    for s in (empty, ignored):
        assert s.pixels == 0 and math.isnan(s.miou) and math.isnan(s.pixel_accuracy)
        assert s.to_dict()["miou"] is None


def test_sums_over_images_not_mean_of_images() -> None:
    a = confusion_matrix(np.array([[1, 1, 1, 1]]), np.array([[1, 1, 1, 1]]), 2)  # class 1 perfect, 4 px
    b = confusion_matrix(np.array([[0]]), np.array([[1]]), 2)  # class 1 missed, 1 px
    s = scores_from_confusion(a + b)
    assert s.iou[1] == pytest.approx(4 / 5)  # not (1.0 + 0.0) / 2


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 2)
    with pytest.raises(ValueError, match="ground truth has label 7 outside 0..1"):
        confusion_matrix(np.zeros((1, 1), int), np.full((1, 1), 7), 2)


def test_latency_percentiles_hand_computed() -> None:
    # 1..10 ms: numpy's linear method puts p50 at rank 4.5 -> 5.5, p90 at rank 8.1 -> 9.1, p99 at 8.91 -> 9.91
    s = latency_summary([float(v) for v in range(10, 0, -1)])
    assert (s.runs, s.mean, s.min, s.max) == (10, 5.5, 1.0, 10.0)
    assert s.p50 == pytest.approx(5.5) and s.p90 == pytest.approx(9.1) and s.p99 == pytest.approx(9.91)
    assert s.fps == pytest.approx(1000 / 5.5)
    empty = latency_summary([])
    assert empty.runs == 0 and math.isnan(empty.p50) and empty.to_dict()["p50"] is None


def test_abs_diff_accumulates_over_all_elements() -> None:
    d = AbsDiff()
    d.add(np.array([[0.0, 1.0]], np.float32), np.array([[0.5, 1.0]], np.float32))  # diffs 0.5, 0
    d.add(np.array([[2.0, 2.0, 2.0]]), np.array([[1.0, 2.0, 2.0]]))  # diffs 1, 0, 0
    assert d.max_abs == 1.0 and d.count == 5
    assert d.mean_abs == pytest.approx(1.5 / 5)  # over elements, not the mean of per-image means (0.25 + 1/3) / 2
    with pytest.raises(ValueError, match="differ in shape"):
        d.add(np.zeros((1, 2)), np.zeros((2, 1)))
    assert AbsDiff().to_dict()["max_abs"] is None
