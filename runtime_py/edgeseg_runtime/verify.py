"""Golden check: re-run the archive's golden images and compare with the fp32 reference.

For each golden image the archive holds the fp32 ONNX Runtime output made at
build time (``*.output.npy``: the whole output, or :data:`~edgeseg_runtime.contract.GOLDEN_SAMPLES`
samples of it at fixed positions when it is larger, :class:`~edgeseg_runtime.contract.GoldenSample`)
and its label map at the image's size (``*.labels.png``). An image passes when

* raw outputs agree element-wise, ``|out - ref| <= atol * R + rtol * |ref|``
  (the ``numpy.allclose`` rule with ``atol`` relative to the output's range
  ``R = max(1, max(ref) - min(ref))``: probabilities keep ``atol`` as it is,
  logits spanning 30 units get 30 times it), for score outputs: every element
  for fp32 archives, at least :data:`SCORE_SHARE` of them for fp16/int8,
  whose few largest differences sit on label boundaries where a steep
  sigmoid or soft-max turns a small shift into a large one (the labels there
  are judged by the next rule), and
* the fraction of pixels whose label equals the reference label is at least
  ``min_label_agreement``;

and, when the tolerance sets ``min_class_iou`` (int8 profiles, whose scores may
move far while the labels hold), the worst class's IoU against the reference
labels, summed over the golden set (:func:`worst_class`), is at least it: an
int8 model with a broken layer loses a class long before pixel agreement
notices.

Tolerances come from the target profile (``[tolerance]``), stored in the manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .archive import Archive
from .errors import ArchiveError
from .images import load_label_map
from .segmentor import Segmentor

__all__ = ["Agreement", "ImageCheck", "VerifyReport", "compare_arrays", "compare_outputs", "verify_archive", "load_npy",
           "worst_class", "MIN_CLASS_SUPPORT", "SCORE_SHARE", "output_range"]

#: fp16/int8 golden check: the share of score elements that must lie within the tolerance (fp32: all of them)
SCORE_SHARE = 0.99

#: classes holding less than this share of the reference's pixels are reported but not gated by ``min_class_iou``
#: (a class seen in a few pixels has an IoU that one pixel swings)
MIN_CLASS_SUPPORT = 0.001


def worst_class(cm: np.ndarray, classes: list[str], min_support: float = MIN_CLASS_SUPPORT) -> tuple[str | None, float]:
    """The class with the lowest IoU among those holding at least ``min_support`` of the reference's pixels.

    IoU = TP / (TP + FP + FN) per class (MMSegmentation ``IoUMetric``).

    Args:
        cm: ``(C, C)`` confusion matrix, rows = reference (ground truth or fp32 labels), columns = prediction.
        classes: the C class names.
        min_support: smallest share of the reference's pixels a class needs to be considered.

    Returns:
        ``(class name, IoU)``, or ``(None, nan)`` when no class qualifies.
    """
    cm = np.asarray(cm, dtype=np.int64)
    total = cm.sum()
    if total == 0:
        return None, float("nan")
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(axis=0) + cm.sum(axis=1) - np.diag(cm)
    support = cm.sum(axis=1) / total
    best: tuple[str | None, float] = (None, float("nan"))
    for name, t, u, share in zip(classes, tp, union, support):
        if share >= min_support and u > 0 and (best[0] is None or t / u < best[1]):
            best = (name, float(t / u))
    return best


@dataclass(frozen=True)
class ImageCheck:
    """Figures for one golden image.

    Attributes:
        image: path inside the archive.
        max_abs_diff: largest ``|out - ref|`` (0.0 for label outputs).
        mean_abs_diff: mean ``|out - ref|``.
        label_agreement: fraction of pixels with the reference label, in [0, 1].
        passed: both criteria met.
    """

    image: str
    max_abs_diff: float
    mean_abs_diff: float
    label_agreement: float
    passed: bool


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_archive`."""

    archive: str
    backend: str
    precision: str
    tolerance: dict[str, Any]
    images: list[ImageCheck] = field(default_factory=list)
    worst_class: Optional[str] = None
    worst_class_iou: float = float("nan")

    @property
    def class_iou_ok(self) -> bool:
        """The worst class's IoU holds ``min_class_iou`` (True when the tolerance sets none)."""
        floor = self.tolerance.get("min_class_iou")
        return floor is None or self.worst_class is None or self.worst_class_iou >= floor

    @property
    def passed(self) -> bool:
        return bool(self.images) and all(c.passed for c in self.images) and self.class_iou_ok

    def verdict(self) -> str:
        """One line: PASS/FAIL, counts and the worst figures against the tolerances."""
        n_ok = sum(c.passed for c in self.images)
        worst_diff = max((c.max_abs_diff for c in self.images), default=0.0)
        worst_agree = min((c.label_agreement for c in self.images), default=0.0)
        tol = self.tolerance
        word = "PASS" if self.passed else "FAIL"
        share = "" if self.precision == "fp32" else f" for {SCORE_SHARE:.0%} of scores"
        return (
            f"{word}: {self.archive} ({self.backend} {self.precision}) {n_ok}/{len(self.images)} golden images "
            f"within tolerance; max abs diff {worst_diff:.2e} (atol {tol['atol']:.0e} x output range, rtol "
            f"{tol['rtol']:.0e}{share}), "
            f"label agreement {worst_agree:.2%} (min {tol['min_label_agreement']:.2%})"
            + (f", worst class {self.worst_class} IoU {self.worst_class_iou:.3f} (min {tol['min_class_iou']:.2f})"
               if tol.get("min_class_iou") is not None and self.worst_class is not None else "")
        )

    def to_dict(self) -> dict[str, Any]:
        """``verify --json``. The worst class's keys only when the tolerance gates it (int8): the answer of an
        fp32/fp16 archive keeps the form an older installer's health check reads."""
        doc = {**asdict(self), "passed": self.passed, "verdict": self.verdict()}
        if self.tolerance.get("min_class_iou") is None:
            doc.pop("worst_class")
            doc.pop("worst_class_iou")
        return doc


@dataclass(frozen=True)
class Agreement:
    """How far one output and label map are from a reference (:func:`compare_arrays`).

    Attributes:
        max_abs_diff: largest ``|out - ref|`` of the raw outputs (float64); 0.0
            for label outputs, inf when the shapes differ, NaN without outputs.
        mean_abs_diff: mean ``|out - ref|`` over every element (same special values).
        label_agreement: fraction of pixels whose label equals the reference's, in
            [0, 1]; 0.0 when the label maps differ in shape, NaN without label maps.
        elements: output elements compared (0 when the scores were not compared).
        sum_abs_diff: sum of ``|out - ref|`` (to pool several images exactly).
        within_tolerance: at least ``share`` of the elements (every element by default) within
            ``atol + rtol * |ref|`` (None when no ``atol`` was given or the scores were not compared).
        note: why the scores were not compared ("" when they were).
    """

    max_abs_diff: float
    mean_abs_diff: float
    label_agreement: float
    elements: int = 0
    sum_abs_diff: float = 0.0
    within_tolerance: bool | None = None
    note: str = ""

    @property
    def scores_compared(self) -> bool:
        """True when both raw outputs were float scores of one shape."""
        return not self.note


def compare_arrays(
    output: np.ndarray | None,
    reference: np.ndarray | None,
    labels: np.ndarray | None = None,
    reference_labels: np.ndarray | None = None,
    *,
    atol: float | None = None,
    rtol: float = 0.0,
    share: float = 1.0,
) -> Agreement:
    """Compare a raw output and label map with the reference: the one comparison every check and report uses.

    The raw outputs are compared when both are floating-point scores of one
    shape, in float64: max and mean absolute difference and, given ``atol``,
    the ``numpy.allclose`` rule ``|out - ref| <= atol + rtol * |ref|``.

    Args:
        output, reference: raw network outputs (``(1, C, h, w)`` scores or
            ``(1, 1, h, w)`` labels); None when not available.
        labels, reference_labels: label maps (any equal shape, e.g. ``(H, W)``);
            None to skip the label agreement.
        atol, rtol: tolerance for ``within_tolerance`` (None: not checked).
        share: fraction of the elements in [0, 1] that must be within it (1.0: all, the ``allclose`` rule).

    Returns:
        An :class:`Agreement`.
    """
    if labels is None or reference_labels is None:
        agreement = float("nan")
    elif labels.shape != reference_labels.shape:
        agreement = 0.0
    else:
        agreement = float(np.mean(labels == reference_labels))
    if output is None or reference is None:
        nan = float("nan")
        return Agreement(nan, nan, agreement, note="no raw outputs")
    if output.dtype.kind != "f" or reference.dtype.kind != "f":
        return Agreement(0.0, 0.0, agreement, note="labels output (argmax folded in): no scores")
    if output.shape != reference.shape:
        inf = float("inf")
        return Agreement(inf, inf, agreement,
                         note=f"output shapes differ ({list(output.shape)} vs {list(reference.shape)})")
    ref = reference.astype(np.float64)
    diff = np.abs(output.astype(np.float64) - ref)
    if not diff.size:
        return Agreement(0.0, float("nan"), agreement)
    total = float(diff.sum())
    if atol is None:
        within = None
    else:
        inside = diff <= atol + rtol * np.abs(ref)
        within = bool(np.all(inside)) if share >= 1.0 else bool(np.count_nonzero(inside) >= share * inside.size)
    return Agreement(float(diff.max()), total / diff.size, agreement, int(diff.size), total, within)


def output_range(reference: np.ndarray) -> float:
    """``max(1, max - min)`` of a float score tensor: the unit ``atol`` is counted in (1 for probabilities)."""
    if reference.dtype.kind != "f" or not reference.size:
        return 1.0
    return max(1.0, float(np.max(reference)) - float(np.min(reference)))


def compare_outputs(
    output: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray,
    reference_labels: np.ndarray,
    tolerance: dict[str, float],
    precision: str = "fp32",
) -> tuple[float, float, float, bool]:
    """The golden check of one image: :func:`compare_arrays` against the target's tolerance (module doc).

    Args:
        output, reference: raw network outputs of equal shape.
        labels, reference_labels: ``(H, W)`` label maps of equal shape.
        tolerance: ``atol`` (in units of :func:`output_range`), ``rtol``, ``min_label_agreement``.
        precision: the archive's precision: ``fp32`` holds every score element to the tolerance, fp16/int8
            :data:`SCORE_SHARE` of them.

    Returns:
        ``(max_abs_diff, mean_abs_diff, label_agreement, passed)``; a shape
        mismatch is ``(inf, inf, 0.0, False)``, and score references that the
        output does not match in kind fail.
    """
    if output.shape != reference.shape or labels.shape != reference_labels.shape:
        return float("inf"), float("inf"), 0.0, False
    a = compare_arrays(output, reference, labels, reference_labels, atol=tolerance["atol"] * output_range(reference),
                       rtol=tolerance["rtol"], share=1.0 if precision == "fp32" else SCORE_SHARE)
    ok = a.label_agreement >= tolerance["min_label_agreement"]
    if reference.dtype.kind == "f":  # scores: within the tolerance too (a labels output cannot be)
        ok = ok and a.within_tolerance is True
    return a.max_abs_diff, a.mean_abs_diff, a.label_agreement, ok


def load_npy(path: Path, max_bytes: int) -> np.ndarray:
    """Read a ``.npy`` file of a plain numeric dtype, checking its header against its size before reading.

    Raises:
        ArchiveError: not a ``.npy`` file, an object or structured dtype, or a
            header whose shape does not match the bytes present (or over ``max_bytes``).

    Source: NumPy NEP 1 (the ``.npy`` format).
    """
    from numpy.lib import format as npy

    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            version = npy.read_magic(fh)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"version {version}")
            read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, fortran, dtype = read(fh, max_header_size=4096)
            if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
                raise ValueError(f"dtype {dtype}")
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if count * dtype.itemsize != size - fh.tell() or size > max_bytes:
                raise ValueError(f"shape {shape} does not match the file's {size} bytes")
            data = np.fromfile(fh, dtype=dtype, count=count)
    except (OSError, ValueError, SyntaxError, TypeError) as exc:
        raise ArchiveError(f"{path.name}: not a readable .npy array ({str(exc)[:100]})") from None
    return data.reshape(shape, order="F" if fortran else "C")


def verify_archive(archive: Archive, segmentor: Segmentor | None = None, *, label: str | None = None) -> VerifyReport:
    """Run every golden image of an archive and compare with the reference.

    Args:
        archive: an opened archive (its files already checked against the manifest).
        segmentor: an active segmentor for it; one is opened when None.
        label: the archive's name in the report (default: the file or folder opened).

    Returns:
        A :class:`VerifyReport`; ``report.passed`` says whether all images passed.

    Raises:
        ToolchainError: the archive's backend is not installed here.
        ImageError / ArchiveError: a golden file cannot be read.
    """
    m = archive.manifest
    if segmentor is None:
        with Segmentor(archive) as seg:
            return verify_archive(archive, seg, label=label)
    t = m.target.tolerance
    tol: dict[str, Any] = {"atol": t.atol, "rtol": t.rtol, "min_label_agreement": t.min_label_agreement}
    if t.min_class_iou is not None:
        tol["min_class_iou"] = t.min_class_iou
    n = len(m.model.classes)
    cm = np.zeros((n, n), np.int64)
    ran, planned = segmentor.runner.backend, m.backend.name
    report = VerifyReport(
        archive=label or archive.source.resolve().name, backend=ran if ran == planned else f"{ran}, fallback for {planned}",
        precision=m.target.precision, tolerance=tol,
    )
    if not m.golden:
        raise ArchiveError(f"{archive.source}: the manifest lists no golden images; nothing to verify")
    for entry in m.golden:
        result = segmentor.segment(segmentor.load(archive.path(entry.image)))
        reference = load_npy(archive.path(entry.output), m.files[entry.output].size + 4096)
        reference_labels = load_label_map(archive.path(entry.labels))
        output = result.output
        if entry.sample is not None:  # the archive holds samples of the reference: compare the same elements
            if tuple(output.shape) != entry.sample.shape or reference.shape != (entry.sample.count,):
                output = np.full((1,), np.inf, dtype=np.float32)  # a shape mismatch: fails below, as inf
            else:
                output = output.reshape(-1)[entry.sample.indices()]
        max_diff, mean_diff, agreement, ok = compare_outputs(
            output, reference, result.labels, reference_labels, tol, m.target.precision
        )
        report.images.append(ImageCheck(entry.image, max_diff, mean_diff, agreement, ok))
        if result.labels.shape == reference_labels.shape:
            ref_flat = reference_labels.reshape(-1).astype(np.int64)
            got_flat = result.labels.reshape(-1).astype(np.int64)
            inside = (ref_flat >= 0) & (ref_flat < n) & (got_flat >= 0) & (got_flat < n)
            # bincount takes intp: int32 on a 32-bit device (armv7l), where int64 indices are refused
            cell = (ref_flat[inside] * n + got_flat[inside]).astype(np.intp)
            cm += np.bincount(cell, minlength=n * n).reshape(n, n)
    report.worst_class, report.worst_class_iou = worst_class(cm, list(m.model.classes))
    return report
