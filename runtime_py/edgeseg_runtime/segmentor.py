"""Image in, label map out: pre-processing → backend runner → post-processing."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .archive import Archive
from .errors import ImageError
from .pipeline import Postprocess, Preprocess, fits_input, parse_pipeline
from .runners import Runner, open_runner

__all__ = ["Segmentor", "Segmentation", "nearest_variant"]


def nearest_variant(shapes: list[tuple[int, int]], height: int, width: int) -> tuple[int, int]:
    """The static-shape variant ``(H, W)`` for an image of ``height`` x ``width`` pixels.

    Nearest aspect ratio first (``|log(image aspect / variant aspect)|``), and
    among variants within 5% of that best aspect the nearest size
    (``|log(image area / variant area)|``); ties go to the earlier variant.
    The image is then stretched to the chosen size (the least distortion and
    the least resampling among the archive's sizes).
    """
    def aspect_gap(s: tuple[int, int]) -> float:
        return abs(math.log((width / height) / (s[1] / s[0])))

    best = min(aspect_gap(s) for s in shapes)
    close = [s for s in shapes if aspect_gap(s) <= best + math.log(1.05)]
    return min(close, key=lambda s: abs(math.log((width * height) / (s[0] * s[1]))))


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
        # static-shape variants (backend.variants): one runner per (H, W), the first is self.runner
        self.variants: dict[tuple[int, int], Runner] = {}
        for i, variant in enumerate(m["backend"].get("variants", [])):
            shape = (int(variant["shape"][0]), int(variant["shape"][1]))
            self.variants[shape] = self.runner if i == 0 else open_runner(archive.root, {**m["backend"], **variant}, merged)
        self._pre = {s: replace(self.preprocess, size=(s[1], s[0]), keep_ratio=False) for s in self.variants}

    def __enter__(self) -> Segmentor:
        for runner in self._runners():
            runner.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for runner in self._runners():
            runner.__exit__(*exc)

    def _runners(self) -> list[Runner]:
        return list(self.variants.values()) or [self.runner]

    def variant_for(self, height: int, width: int) -> tuple[int, int] | None:
        """The static-shape variant an image of this size runs at (None: the archive has no variants)."""
        return nearest_variant(list(self.variants), height, width) if self.variants else None

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
        variant = self.variant_for(rgb.shape[0], rgb.shape[1])
        tensor = self._pre[variant](rgb) if variant else self.preprocess(rgb)
        if not fits_input(tensor.shape, [1, 3, *variant] if variant else self.input_shape):
            raise ImageError(
                f"pre-processing gives {list(tensor.shape)} but the model takes {self.input_shape}; "
                "the archive's pipeline.json does not fit its model"
            )
        return tensor

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        """Run the backend on one pre-processed tensor (the variant of its H, W); returns the raw output."""
        runner = self.variants.get((tensor.shape[2], tensor.shape[3]), self.runner) if self.variants else self.runner
        return runner.infer({self.input_name: tensor})[self.output_name]

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
