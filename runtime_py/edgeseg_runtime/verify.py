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
from pathlib import Path
from typing import Any

import numpy as np

from .archive import Archive
from .errors import ArchiveError
from .images import load_image, load_label_map
from .segmentor import Segmentor

__all__ = ["ImageCheck", "VerifyReport", "compare_outputs", "verify_archive", "load_npy"]


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
    tol = {"atol": t.atol, "rtol": t.rtol, "min_label_agreement": t.min_label_agreement}
    ran, planned = segmentor.runner.backend, m.backend.name
    report = VerifyReport(
        archive=label or archive.source.name, backend=ran if ran == planned else f"{ran}, fallback for {planned}",
        precision=m.target.precision, tolerance=tol,
    )
    if not m.golden:
        raise ArchiveError(f"{archive.source}: the manifest lists no golden images; nothing to verify")
    for entry in m.golden:
        result = segmentor.segment(load_image(archive.path(entry.image)))
        reference = load_npy(archive.path(entry.output), m.files[entry.output].size + 4096)
        reference_labels = load_label_map(archive.path(entry.labels))
        max_diff, mean_diff, agreement, ok = compare_outputs(
            result.output, reference, result.labels, reference_labels, tol
        )
        report.images.append(ImageCheck(entry.image, max_diff, mean_diff, agreement, ok))
    return report
