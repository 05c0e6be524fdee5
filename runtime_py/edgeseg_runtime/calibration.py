"""On-device calibration tensors (for backends that calibrate where they run, e.g. TensorRT int8).

The host writes ``calibration.npz`` (:meth:`edgeseg.calibration.CalibrationSet.
save_compact`): the calibration images after the Resize step, uint8 RGB. Here
the Normalize step of the archive's ``pipeline.json`` turns them back into the
exact float32 tensors the host calibrated with.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import ArchiveError
from .pipeline import Preprocess

__all__ = ["load_compact"]


def load_compact(path: Path, preprocess: Preprocess) -> Iterator[np.ndarray]:
    """Yield the calibration inputs stored in ``path``.

    Args:
        path: a ``calibration.npz`` (``images`` ``(N, h, w, 3)`` uint8, or ``image_0000``... arrays).
        preprocess: the archive's pre-processing (its ``normalize`` is applied).

    Yields:
        ``(1, C, h, w)`` float32 NCHW tensors, in the stored order.

    Raises:
        ArchiveError: the file is missing or not a calibration file.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = list(data["images"]) if "images" in data.files else [data[k] for k in sorted(data.files)]
    except (OSError, ValueError, KeyError) as exc:
        raise ArchiveError(f"cannot read calibration tensors {path.name}: {exc}") from None
    for rgb in arrays:
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ArchiveError(f"{path.name}: expected (h, w, 3) uint8 images, got {rgb.dtype} {rgb.shape}")
        yield preprocess.normalize(rgb)
