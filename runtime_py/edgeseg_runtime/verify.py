"""Golden check: re-run the archive's golden images and compare with the fp32 reference.

For each golden image the archive holds the fp32 ONNX Runtime output made at
build time (``*.output.npy``) and its label map (``*.labels.png``). An image
passes when

* raw outputs agree element-wise, ``|out - ref| <= atol + rtol * |ref|``
  (the ``numpy.allclose`` rule), for score outputs, and
* the fraction of pixels whose label equals the reference label is at least
  ``min_label_agreement``.

Tolerances come from the target profile (``[tolerance]``), stored in the manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .archive import Archive
from .images import load_image
from .segmentor import Segmentor

__all__ = ["ImageCheck", "VerifyReport", "compare_outputs", "verify_archive"]


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
    tolerance: dict[str, float]
    images: list[ImageCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.images) and all(c.passed for c in self.images)

    def verdict(self) -> str:
        """One line: PASS/FAIL, counts and the worst figures against the tolerances."""
        n_ok = sum(c.passed for c in self.images)
        worst_diff = max((c.max_abs_diff for c in self.images), default=0.0)
        worst_agree = min((c.label_agreement for c in self.images), default=0.0)
        tol = self.tolerance
        word = "PASS" if self.passed else "FAIL"
        return (
            f"{word}: {self.archive} ({self.backend} {self.precision}) {n_ok}/{len(self.images)} golden images "
            f"within tolerance; max abs diff {worst_diff:.2e} (atol {tol['atol']:.0e}, rtol {tol['rtol']:.0e}), "
            f"label agreement {worst_agree:.2%} (min {tol['min_label_agreement']:.2%})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "verdict": self.verdict()}


def compare_outputs(
    output: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray,
    reference_labels: np.ndarray,
    tolerance: dict[str, float],
) -> tuple[float, float, float, bool]:
    """Compare one output and label map with the reference.

    Args:
        output, reference: raw network outputs of equal shape.
        labels, reference_labels: ``(H, W)`` label maps of equal shape.
        tolerance: ``atol``, ``rtol``, ``min_label_agreement``.

    Returns:
        ``(max_abs_diff, mean_abs_diff, label_agreement, passed)``.
    """
    if output.shape != reference.shape or labels.shape != reference_labels.shape:
        return float("inf"), float("inf"), 0.0, False
    agreement = float(np.mean(labels == reference_labels))
    ok = agreement >= tolerance["min_label_agreement"]
    if np.issubdtype(reference.dtype, np.floating):
        diff = np.abs(output.astype(np.float64) - reference.astype(np.float64))
        max_diff, mean_diff = float(diff.max()), float(diff.mean())
        ok = ok and bool(np.all(diff <= tolerance["atol"] + tolerance["rtol"] * np.abs(reference)))
    else:
        max_diff = mean_diff = 0.0
    return max_diff, mean_diff, agreement, ok


def verify_archive(archive: Archive, segmentor: Segmentor | None = None) -> VerifyReport:
    """Run every golden image of an archive and compare with the reference.

    Args:
        archive: an opened archive (its files already checked against the manifest).
        segmentor: an active segmentor for it; one is opened when None.

    Returns:
        A :class:`VerifyReport`; ``report.passed`` says whether all images passed.

    Raises:
        ToolchainError: the archive's backend is not installed here.
        ImageError / ArchiveError: a golden file cannot be read.
    """
    m = archive.manifest
    if segmentor is None:
        with Segmentor(archive) as seg:
            return verify_archive(archive, seg)
    tol = {k: float(v) for k, v in m["target"]["tolerance"].items()}
    ran, planned = segmentor.runner.backend, m["backend"]["name"]
    report = VerifyReport(
        archive=archive.source.name, backend=ran if ran == planned else f"{ran}, fallback for {planned}",
        precision=m["target"]["precision"], tolerance=tol,
    )
    for entry in m["golden"]:
        result = segmentor.segment(load_image(archive.path(entry["image"])))
        reference = np.load(archive.path(entry["output"]), allow_pickle=False)
        with Image.open(archive.path(entry["labels"])) as img:
            reference_labels = np.asarray(img)
        max_diff, mean_diff, agreement, ok = compare_outputs(
            result.output, reference, result.labels, reference_labels, tol
        )
        report.images.append(ImageCheck(entry["image"], max_diff, mean_diff, agreement, ok))
    return report
