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

The gated **worst class** is the class with the lowest IoU against the
fp32 labels (:func:`edgeseg.metrics.worst_class`; classes under 0.1 % of the
pixels are reported, not gated): pixel agreement alone hides a small
foreground lost (a person mask gone in a kite-flying scene still agrees on 97 %
of the pixels). The **worst image** (lowest mIoU vs fp32 labels) is reported.

The budget comes from the target profile (``[quantization]
min_class_iou``, ``max_miou_drop``, ``min_pixel_agreement``; every shipped
profile that builds int8 sets the first two); a miss raises
:class:`~edgeseg.errors.AccuracyError` naming the figures and what to try.

The default evaluation set is :data:`DEFAULT_EVAL` (real photos shipped with
edgeseg, held apart from the calibration set; sources in its README.md);
``--eval DIR`` replaces it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg_runtime.images import iter_image_paths
from edgeseg_runtime.segmentor import Segmentor

from ._progress import Step
from .datasets import Dataset, load_dataset
from .errors import AccuracyError
from .metrics import SegmentationScores, confusion_matrix, miou_drop, scores_from_confusion, worst_class
from .spec import DATA

__all__ = ["DEFAULT_EVAL", "load_eval_set", "AccuracyReport", "evaluate", "score_labels", "check_budget",
           "raise_if_failed"]

#: the embedded default evaluation set (real photos from PyPI/Debian packages, see its README.md)
DEFAULT_EVAL = DATA / "eval"


def load_eval_set(source: str | Path | None, default_images: list[Path]) -> Dataset:
    """Read an evaluation set.

    Args:
        source: a dataset folder (``images/`` + ``masks/`` or another layout of
            :mod:`edgeseg.datasets`) or a plain folder of images; None = :data:`DEFAULT_EVAL`.
        default_images: images used when ``source`` is None and the default set is missing (the golden photos).

    Raises:
        ConfigError: an image without its mask.
        ImageError: no images found.
    """
    if source is None:
        shipped = sorted(iter_image_paths([DEFAULT_EVAL])) if DEFAULT_EVAL.is_dir() else []
        if shipped:
            return Dataset.of(shipped, source="edgeseg default eval set")
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
        worst_class, worst_class_iou: the gated class (lowest IoU vs fp32 labels) and its IoU.
        worst_image, worst_image_miou: the image with the lowest mIoU vs fp32 labels.
        budget: ``min_class_iou`` / ``max_miou_drop`` / ``min_pixel_agreement`` (None = not gated).
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
    worst_class: str | None = None
    worst_class_iou: float = float("nan")
    worst_image: str = ""
    worst_image_miou: float = float("nan")
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
            f"worst class {self.worst_class} IoU {self.worst_class_iou:.3f}, "
            f"pixel agreement {self.pixel_agreement:.2%}, mIoU vs fp32 labels {100 * self.vs_reference.miou:.2f}"
        )
        if self.vs_ground_truth:
            gt = self.vs_ground_truth
            text += f", mIoU vs ground truth fp32 {100 * gt['fp32'].miou:.2f} / {self.precision} {100 * gt[self.precision].miou:.2f}"
        text += f", drop {self.miou_drop:.2f} points ({self.drop_basis})"
        if self.worst_image:
            text += f", worst image {self.worst_image} (mIoU {100 * self.worst_image_miou:.2f})"
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
            "worst_class": {"class": self.worst_class, "iou": _rounded(self.worst_class_iou)},
            "worst_image": {"image": self.worst_image, "miou": _rounded(self.worst_image_miou)},
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
        budget: ``{"min_class_iou": IoU, "max_miou_drop": points, "min_pixel_agreement": fraction}``, None = not gated.
        step: progress step to advance per image.

    Raises:
        ImageError: an image cannot be read. ConfigError: a bad mask.
    """
    ref_maps: list[np.ndarray] = []
    maps: list[np.ndarray] = []
    indices = range(len(evalset))
    for i in step.track(indices, len(evalset), "images") if step else indices:
        rgb = reference.load(evalset.images[i])
        ref_maps.append(reference.segment(rgb).labels)
        maps.append(candidate.segment(rgb).labels)
    return score_labels(ref_maps, maps, evalset, precision=precision, classes=classes, budget=budget)


def score_labels(ref_maps: list[np.ndarray], maps: list[np.ndarray], evalset: Dataset, *, precision: str,
                 classes: list[str], budget: dict[str, float | None]) -> AccuracyReport:
    """The :class:`AccuracyReport` of a candidate's label maps against the fp32 ones (and masks when the set has them).

    Args:
        ref_maps, maps: fp32 and candidate label maps, one ``(H, W)`` integer array per image of ``evalset``.
        evalset, precision, classes, budget: as :func:`evaluate`.

    Raises:
        ConfigError: a bad mask.
    """
    n = len(classes)
    agree = np.zeros((n, n), np.int64)
    gt_ref = np.zeros((n, n), np.int64)
    gt_q = np.zeros((n, n), np.int64)
    worst_image, worst_image_miou = "", float("inf")
    for i, (ref_labels, labels) in enumerate(zip(ref_maps, maps, strict=True)):
        cm = confusion_matrix(labels, ref_labels, n)
        agree += cm
        image_miou = scores_from_confusion(cm).miou
        if image_miou < worst_image_miou:
            worst_image, worst_image_miou = evalset.images[i].name, image_miou
        truth = evalset.read_mask(i, n, ref_labels.shape)
        if truth is not None:
            gt_ref += confusion_matrix(ref_labels, truth, n)
            gt_q += confusion_matrix(labels, truth, n)
    vs_ref = scores_from_confusion(agree)
    gt = None
    if evalset.has_masks:
        gt = {"fp32": scores_from_confusion(gt_ref), precision: scores_from_confusion(gt_q)}
    drop, basis = miou_drop(vs_ref, gt["fp32"] if gt else None, gt[precision] if gt else None)
    if not gt:
        basis += ", no masks"
    wc, wc_iou = worst_class(agree, list(classes))
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
        worst_class=wc,
        worst_class_iou=wc_iou,
        worst_image=worst_image,
        worst_image_miou=float(worst_image_miou) if worst_image else float("nan"),
    )
    report.failures = check_budget(report.pixel_agreement, report.miou_drop, budget, wc, wc_iou)
    return report


def check_budget(pixel_agreement: float, miou_drop: float, budget: dict[str, float | None],
                 worst: str | None = None, worst_iou: float = float("nan")) -> list[str]:
    """Budget misses as one line each (empty = within budget)."""
    failures = []
    min_agree, max_drop, min_iou = budget.get("min_pixel_agreement"), budget.get("max_miou_drop"), budget.get("min_class_iou")
    if min_iou is not None and worst is not None and not worst_iou >= min_iou:
        failures.append(f"class {worst} IoU {worst_iou:.3f} < {min_iou:.2f} (vs fp32 labels)")
    if min_agree is not None and not pixel_agreement >= min_agree:
        failures.append(f"pixel agreement {pixel_agreement:.2%} < {min_agree:.2%}")
    if max_drop is not None and not miou_drop <= max_drop:
        failures.append(f"mIoU drop {miou_drop:.2f} > {max_drop:.2f} points")
    return failures


#: backends whose fp16 conversion honours ``keep_float`` (ONNX Runtime's float16 converter ``node_block_list``);
#: the others' fp16 is all or nothing (OpenVINO and pnnx fp16 weights, LiteRT fp16 weights, CoreML FLOAT16)
FP16_KEEP_FLOAT = frozenset({"onnxruntime"})


def raise_if_failed(report: AccuracyReport, target_name: str, prefix: str = "", backend: str = "") -> None:
    """Raise :class:`AccuracyError` with the figures and what to try when the report failed.

    The advice is what applies to the backend and precision: calibration only
    for int8, ``keep_float`` where the backend honours it at that precision,
    and the next precision up.

    ``prefix`` goes before the verdict (a search says what it tried: "best of 7 float sets: ").
    """
    if report.passed:
        return
    if report.precision == "int8":
        hints = ("more or other calibration images (--calib DIR, --calib-count N), keep sensitive ops in float "
                 "([quantization.keep_float] in the model spec), or --precision fp16")
    elif backend in FP16_KEEP_FLOAT:
        hints = "keeping sensitive ops in float ([quantization.keep_float] in the model spec), or --precision fp32"
    else:
        hints = (f"--precision fp32 ({backend or 'this backend'}'s fp16 cannot keep single layers in float)")
    raise AccuracyError(f"build stopped, no archive written: {prefix}{report.verdict()}. Try {hints} (target {target_name}).")


def _rounded(value: float) -> float | None:
    return None if value != value else round(float(value), 6)  # NaN -> None
