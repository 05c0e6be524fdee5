"""Accuracy gate for fp16/int8 builds: measured against the fp32 reference, before anything ships.

The quantized model and the fp32 ONNX Runtime reference run over an
evaluation set held apart from the calibration set. Figures
(:mod:`edgeseg.metrics`, MMSegmentation ``IoUMetric`` rules, summed over the
whole set):

* **pixel agreement**: fraction of pixels whose label equals the reference's;
* **mIoU vs reference**: the reference labels standing in as ground truth;
* **mIoU vs ground truth** of fp32 and of the quantized model, when the set
  has masks (``--eval DIR`` with ``images/`` + ``masks/``).

The gated **mIoU drop** (in points, 0..100) is ``mIoU_fp32 - mIoU_quantized``
against ground truth when there are masks; without masks the reference is the
ground truth, where fp32 scores 100, so the drop is ``100 * (1 - mIoU vs
reference)`` (stricter: every disagreement counts, even where both are wrong).

The budget comes from the target profile (``[quantization]
max_miou_drop``, ``min_pixel_agreement``); a miss raises
:class:`~edgeseg.errors.AccuracyError` naming the figures and what to try.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg_runtime.images import load_image
from edgeseg_runtime.segmentor import Segmentor

from ._progress import Step
from .datasets import Dataset, load_dataset
from .errors import AccuracyError
from .metrics import SegmentationScores, confusion_matrix, scores_from_confusion

__all__ = ["load_eval_set", "AccuracyReport", "evaluate", "check_budget", "raise_if_failed"]


def load_eval_set(source: str | Path | None, default_images: list[Path]) -> Dataset:
    """Read an evaluation set.

    Args:
        source: a dataset folder (``images/`` + ``masks/`` or another layout of
            :mod:`edgeseg.datasets`) or a plain folder of images; None = ``default_images``.
        default_images: images used when ``source`` is None (the golden photos).

    Raises:
        ConfigError: an image without its mask.
        ImageError: no images found.
    """
    if source is None:
        return Dataset.of(list(default_images), source="golden images")
    return load_dataset(source)


@dataclass
class AccuracyReport:
    """Measured accuracy of one non-fp32 build against fp32 (see module doc).

    Attributes:
        precision: the build's precision.
        eval_source, eval_digest, images: the evaluation set.
        vs_reference: scores of the build's labels with the fp32 labels as ground truth.
        vs_ground_truth: ``{"fp32": scores, <precision>: scores}`` when the set has masks.
        miou_drop: the gated drop in mIoU points; ``drop_basis`` says against what.
        budget: ``max_miou_drop`` / ``min_pixel_agreement`` (None = not gated).
        failures: budget misses, one line each.
    """

    precision: str
    eval_source: str
    eval_digest: str
    images: int
    classes: list[str]
    vs_reference: SegmentationScores
    vs_ground_truth: dict[str, SegmentationScores] | None
    miou_drop: float
    drop_basis: str
    budget: dict[str, float | None]
    failures: list[str] = field(default_factory=list)

    @property
    def pixel_agreement(self) -> float:
        return self.vs_reference.pixel_accuracy

    @property
    def passed(self) -> bool:
        return not self.failures

    def verdict(self) -> str:
        """One line with the figures and the budget."""
        text = (
            f"{'PASS' if self.passed else 'FAIL'}: {self.precision} vs fp32 on {self.images} images ({self.eval_source}): "
            f"pixel agreement {self.pixel_agreement:.2%}, mIoU vs fp32 labels {100 * self.vs_reference.miou:.2f}"
        )
        if self.vs_ground_truth:
            gt = self.vs_ground_truth
            text += f", mIoU vs ground truth fp32 {100 * gt['fp32'].miou:.2f} / {self.precision} {100 * gt[self.precision].miou:.2f}"
        text += f", drop {self.miou_drop:.2f} points ({self.drop_basis})"
        return text + ("" if self.passed else "; " + "; ".join(self.failures))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures for the manifest and reports."""
        return {
            "precision": self.precision,
            "passed": self.passed,
            "verdict": self.verdict(),
            "evaluation_set": {"source": self.eval_source, "sha256": self.eval_digest, "images": self.images},
            "pixel_agreement": round(self.pixel_agreement, 6),
            "vs_reference": self.vs_reference.to_dict(self.classes),
            "vs_ground_truth": (
                {k: v.to_dict(self.classes) for k, v in self.vs_ground_truth.items()} if self.vs_ground_truth else None
            ),
            "miou_drop": round(self.miou_drop, 4),
            "drop_basis": self.drop_basis,
            "budget": self.budget,
            "failures": self.failures,
        }


def evaluate(
    reference: Segmentor,
    candidate: Segmentor,
    evalset: Dataset,
    *,
    precision: str,
    classes: list[str],
    budget: dict[str, float | None],
    step: Step | None = None,
) -> AccuracyReport:
    """Run both models over the evaluation set and fill an :class:`AccuracyReport`.

    Args:
        reference: the fp32 ONNX Runtime segmentor (active).
        candidate: the quantized archive's segmentor (active).
        evalset: images (and masks).
        precision: the candidate's precision, for the report.
        classes: class names (C of them).
        budget: ``{"max_miou_drop": points or None, "min_pixel_agreement": fraction or None}``.
        step: progress step to advance per image.

    Raises:
        ImageError: an image cannot be read. ConfigError: a bad mask.
    """
    n = len(classes)
    agree = np.zeros((n, n), np.int64)
    gt_ref = np.zeros((n, n), np.int64)
    gt_q = np.zeros((n, n), np.int64)
    indices = range(len(evalset))
    for i in step.track(indices, len(evalset), "images") if step else indices:
        rgb = load_image(evalset.images[i])
        ref_labels = reference.segment(rgb).labels
        labels = candidate.segment(rgb).labels
        agree += confusion_matrix(labels, ref_labels, n)
        truth = evalset.read_mask(i, n, rgb.shape[:2])
        if truth is not None:
            gt_ref += confusion_matrix(ref_labels, truth, n)
            gt_q += confusion_matrix(labels, truth, n)
    vs_ref = scores_from_confusion(agree)
    gt = None
    if evalset.has_masks:
        gt = {"fp32": scores_from_confusion(gt_ref), precision: scores_from_confusion(gt_q)}
        drop, basis = 100 * (gt["fp32"].miou - gt[precision].miou), "vs ground truth"
    else:
        drop, basis = 100 * (1 - vs_ref.miou), "vs fp32 labels, no masks"
    report = AccuracyReport(
        precision=precision,
        eval_source=evalset.source,
        eval_digest=evalset.digest,
        images=len(evalset),
        classes=list(classes),
        vs_reference=vs_ref,
        vs_ground_truth=gt,
        miou_drop=float(drop),
        drop_basis=basis,
        budget=dict(budget),
    )
    report.failures = check_budget(report.pixel_agreement, report.miou_drop, budget)
    return report


def check_budget(pixel_agreement: float, miou_drop: float, budget: dict[str, float | None]) -> list[str]:
    """Budget misses as one line each (empty = within budget)."""
    failures = []
    min_agree, max_drop = budget.get("min_pixel_agreement"), budget.get("max_miou_drop")
    if min_agree is not None and not pixel_agreement >= min_agree:
        failures.append(f"pixel agreement {pixel_agreement:.2%} < {min_agree:.2%}")
    if max_drop is not None and not miou_drop <= max_drop:
        failures.append(f"mIoU drop {miou_drop:.2f} > {max_drop:.2f} points")
    return failures


def raise_if_failed(report: AccuracyReport, target_name: str) -> None:
    """Raise :class:`AccuracyError` with the figures and what to try when the report failed."""
    if report.passed:
        return
    hints = "more or other calibration images (--calib DIR, --calib-count N), keep sensitive ops in float ([quantization] keep_float)"
    if report.precision == "int8":
        hints += ", or --precision fp16"
    raise AccuracyError(f"build stopped, no archive written: {report.verdict()}. Try {hints} (target {target_name}).")
