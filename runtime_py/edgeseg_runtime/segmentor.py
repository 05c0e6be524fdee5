"""Image in, label map out: pre-processing → backend runner → post-processing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .archive import Archive
from .errors import ImageError
from .pipeline import Postprocess, Preprocess, fits_input, parse_pipeline
from .runners import Runner, open_runner

__all__ = ["Segmentor", "Segmentation"]


@dataclass(frozen=True)
class Segmentation:
    """Result for one image.

    Attributes:
        labels: ``(H, W)`` uint8 (uint16 above 256 classes) class ids at the image's size.
        scores: ``(C, H, W)`` float32 per-class scores at the image's size, when asked for.
        output: the raw network output, ``(1, C, h, w)`` float32 or ``(1, 1, h, w)`` int.
    """

    labels: np.ndarray
    scores: np.ndarray | None
    output: np.ndarray


class Segmentor:
    """Runs an archive's model on images.

    Use as a context manager (it activates the backend runner)::

        with Segmentor(archive) as seg:
            result = seg.segment(rgb)

    Args:
        archive: an opened :class:`~edgeseg_runtime.archive.Archive`.
        options: backend options overriding the target profile's.
    """

    def __init__(self, archive: Archive, options: Mapping[str, Any] | None = None) -> None:
        m = archive.manifest
        self.archive = archive
        self.preprocess: Preprocess
        self.postprocess: Postprocess
        self.preprocess, self.postprocess = parse_pipeline(archive.pipeline)
        self.input_name: str = m["model"]["input"]["name"]
        self.output_name: str = m["model"]["output"]["name"]
        self.input_shape: list[Any] = m["model"]["input"]["shape"]
        self.classes: list[str] = m["model"]["classes"]
        self.palette: list[list[int]] = m["model"]["palette"]
        merged = {**m["target"].get("backend_options", {}), **dict(options or {})}
        self.runner: Runner = open_runner(archive.root, m["backend"], merged)

    def __enter__(self) -> Segmentor:
        self.runner.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner.__exit__(*exc)

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """Pre-process one image into the network input.

        Args:
            rgb: ``(H, W, 3)`` uint8 RGB image.

        Returns:
            ``(1, 3, h, w)`` float32 tensor.

        Raises:
            ImageError: not an ``(H, W, 3)`` uint8 array, or the network input
                size cannot be met (static model, other size).
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ImageError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.dtype} {rgb.shape}")
        tensor = self.preprocess(rgb)
        if not fits_input(tensor.shape, self.input_shape):
            raise ImageError(
                f"pre-processing gives {list(tensor.shape)} but the model takes {self.input_shape}; "
                "the archive's pipeline.json does not fit its model"
            )
        return tensor

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        """Run the backend on one pre-processed tensor; returns the raw output."""
        return self.runner.infer({self.input_name: tensor})[self.output_name]

    def segment(self, rgb: np.ndarray, *, scores: bool = False) -> Segmentation:
        """Segment one image.

        Args:
            rgb: ``(H, W, 3)`` uint8 RGB image (see :func:`~edgeseg_runtime.images.load_image`).
            scores: also return per-class scores resized to the image.

        Returns:
            A :class:`Segmentation` at the image's size.
        """
        output = self.infer(self.prepare(rgb))
        labels, score_maps = self.postprocess(output, rgb.shape[0], rgb.shape[1], want_scores=scores)
        return Segmentation(labels=labels, scores=score_maps, output=output)
