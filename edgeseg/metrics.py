"""Segmentation metrics: confusion matrix, per-class IoU, mIoU, pixel accuracy.

Definitions follow MMSegmentation's ``IoUMetric`` (``mmseg/evaluation/metrics/
iou_metric.py``: ``intersect_and_union`` summed over the dataset, then
``total_area_intersect / total_area_union``), which follows Long et al.,
"Fully Convolutional Networks for Semantic Segmentation", CVPR 2015, §5:

* pixels whose ground-truth label is ``ignore_index`` (255) are left out;
* per-class IoU = TP / (TP + FP + FN), from counts summed over all images
  (not a mean of per-image IoUs);
* a class absent from both prediction and ground truth (union 0) has IoU NaN
  and is excluded from mIoU (``nanmean``);
* pixel accuracy = correctly labelled pixels / labelled pixels.

"Agreement" of two label maps is the same computation with one of them (the
fp32 reference) standing in as ground truth.

Also here, for comparison reports: latency percentiles (linear interpolation
between closest ranks, numpy's default ``percentile`` method, warm-up runs
left out by the caller) and the absolute difference of two score tensors
accumulated over images (Polygraphy's ``max/mean absdiff``), pooled from the
runtime's one comparison function (:func:`edgeseg_runtime.verify.compare_arrays`),
and a difference's share of the reference logits' range (:func:`range_share`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from edgeseg_runtime.verify import MIN_CLASS_SUPPORT, Agreement, compare_arrays, worst_class

__all__ = [
    "IGNORE_INDEX",
    "confusion_matrix",
    "SegmentationScores",
    "scores_from_confusion",
    "LatencySummary",
    "latency_summary",
    "AbsDiff",
    "miou_drop",
    "worst_class",
    "MIN_CLASS_SUPPORT",
    "range_share",
]

#: label value excluded from every metric (MMSegmentation, Cityscapes, ADE20K and VOC convention)
IGNORE_INDEX = 255


def range_share(diff: float, ref: np.ndarray) -> float:
    """``diff`` (a max abs difference from ``ref``, in its units) as a share of ``ref``'s range, ``max - min``.

    The scale-free size of a logits difference used by the support matrix, the export and LiteRT checks: a
    constant ``ref`` counts as a range of 1e-12, so any difference from it is huge, not a division by zero.
    """
    return diff / max(float(ref.max() - ref.min()), 1e-12)


def confusion_matrix(pred: np.ndarray, truth: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Count pixels per (true class, predicted class).

    Args:
        pred: ``(H, W)`` integer predicted labels.
        truth: ``(H, W)`` integer ground-truth labels; ``ignore_index`` pixels are skipped.
        num_classes: number of classes C.
        ignore_index: label value to skip.

    Returns:
        ``(C, C)`` int64 matrix, rows = truth, columns = prediction.

    Raises:
        ValueError: shapes differ, or a label outside ``[0, C)`` (other than
            ``ignore_index``) appears.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {truth.shape} differ in shape")
    t = truth.reshape(-1).astype(np.int64)
    p = pred.reshape(-1).astype(np.int64)
    keep = t != ignore_index
    t, p = t[keep], p[keep]
    for name, arr in (("ground truth", t), ("prediction", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} has label {int(arr.max())} outside 0..{num_classes - 1} (ignore index {ignore_index})")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass(frozen=True)
class SegmentationScores:
    """Scores from one confusion matrix.

    Attributes:
        iou: per-class IoU in [0, 1], NaN for classes absent from both maps.
        miou: mean of the non-NaN IoUs (NaN when every class is absent).
        pixel_accuracy: correct / labelled pixels in [0, 1] (NaN when no pixel is labelled).
        pixels: labelled pixel count.
    """

    iou: tuple[float, ...]
    miou: float
    pixel_accuracy: float
    pixels: int

    def to_dict(self, classes: list[str] | None = None) -> dict[str, object]:
        """JSON-ready dict; NaN becomes None. IoUs keyed by class name when ``classes`` is given."""
        names = classes or [str(i) for i in range(len(self.iou))]
        return {
            "miou": _json_float(self.miou),
            "pixel_accuracy": _json_float(self.pixel_accuracy),
            "iou": {n: _json_float(v) for n, v in zip(names, self.iou, strict=True)},
            "pixels": self.pixels,
        }


def scores_from_confusion(cm: np.ndarray) -> SegmentationScores:
    """IoU per class, mIoU and pixel accuracy of a ``(C, C)`` confusion matrix (see module doc)."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(axis=0) + cm.sum(axis=1) - np.diag(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    total = int(cm.sum())
    present = iou[~np.isnan(iou)]
    return SegmentationScores(
        iou=tuple(float(v) for v in iou),
        miou=float(present.mean()) if present.size else float("nan"),
        pixel_accuracy=float(tp.sum() / total) if total else float("nan"),
        pixels=total,
    )


def miou_drop(vs_reference: SegmentationScores, gt_reference: SegmentationScores | None = None,
              gt_candidate: SegmentationScores | None = None) -> tuple[float, str]:
    """The mIoU drop of a converted model in points (0..100), and its basis: the one figure gate and compare report.

    Against ground truth when both ground-truth scores are given
    (``mIoU_fp32 - mIoU_candidate``); else against the fp32 labels standing in
    as ground truth, where fp32 scores 100, so ``100 * (1 - mIoU vs fp32 labels)``.

    Returns:
        ``(drop, "vs ground truth" | "vs fp32 labels")``; a negative drop is a gain.
    """
    if gt_reference is not None and gt_candidate is not None:
        return 100 * (gt_reference.miou - gt_candidate.miou), "vs ground truth"
    return 100 * (1 - vs_reference.miou), "vs fp32 labels"


def _json_float(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 6)


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of latency samples, in milliseconds.

    Attributes:
        runs: number of samples.
        mean, p50, p90, p99, min, max: milliseconds (NaN without samples).
    """

    runs: int
    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float

    @property
    def fps(self) -> float:
        """Frames per second at the median latency (1000 / p50)."""
        return 1000.0 / self.p50 if self.p50 > 0 else float("nan")

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {k: _json_float(getattr(self, k)) for k in ("mean", "p50", "p90", "p99", "min", "max")}
        return {"runs": self.runs, **out, "fps": _json_float(self.fps)}


def latency_summary(samples_ms: list[float] | np.ndarray) -> LatencySummary:
    """Mean and p50/p90/p99 of latency samples (ms); NaN everywhere for no samples."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        nan = float("nan")
        return LatencySummary(0, nan, nan, nan, nan, nan, nan)
    p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
    return LatencySummary(int(a.size), float(a.mean()), p50, p90, p99, float(a.min()), float(a.max()))


class AbsDiff:
    """Max and mean absolute difference of score tensors, accumulated over images.

    ``add(a, b)`` for each image (same shape, any float dtype, computed in
    float64); ``max_abs`` is over every element seen, ``mean_abs`` is the mean
    over all elements (not a mean of per-image means).
    """

    def __init__(self) -> None:
        self.max_abs = 0.0
        self._sum = 0.0
        self.count = 0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        """Accumulate ``|a - b|`` of two float score tensors (:func:`~edgeseg_runtime.verify.compare_arrays`).

        Raises:
            ValueError: the shapes differ, or they are not float scores.
        """
        if a.shape != b.shape:
            raise ValueError(f"score tensors differ in shape: {a.shape} vs {b.shape}")
        self.include(compare_arrays(a, b))

    def include(self, agreement: Agreement) -> None:
        """Pool one image's :class:`~edgeseg_runtime.verify.Agreement` (its elements, sum and max of ``|a - b|``).

        Raises:
            ValueError: its scores were not compared (``agreement.note`` says why).
        """
        if not agreement.scores_compared:
            raise ValueError(f"score tensors not compared: {agreement.note}")
        if agreement.elements:
            self.max_abs = max(self.max_abs, agreement.max_abs_diff)
            self._sum += agreement.sum_abs_diff
            self.count += agreement.elements

    @property
    def mean_abs(self) -> float:
        return self._sum / self.count if self.count else float("nan")

    def to_dict(self) -> dict[str, object]:
        return {"max_abs": _json_float(self.max_abs) if self.count else None, "mean_abs": _json_float(self.mean_abs),
                "elements": self.count}
