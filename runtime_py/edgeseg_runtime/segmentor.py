"""Image in, label map out: pre-processing → backend runner → post-processing."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .archive import Archive
from .contract import Model, PipelineSpec
from .errors import ArchiveError, EdgesegError, ImageError, ToolchainError
from .images import DEFAULT_MAX_PIXELS
from .pipeline import Postprocess, Preprocess, fits_input, from_spec
from .runners import Runner, open_runner, runner_class

__all__ = ["Segmentor", "Segmentation", "nearest_variant"]


@contextmanager
def _backend_errors(name: str) -> Iterator[None]:
    """A backend section the runner cannot read (wrong types, missing keys) is a bad archive, said in one line."""
    try:
        yield
    except EdgesegError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArchiveError(f"manifest.json: backend section does not fit the {name} runner ({type(exc).__name__}: "
                           f"{str(exc)[:120]})") from None


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
        output: the raw network output, ``(1, C, h, w)`` float32 or ``(1, 1, h, w)`` int (sliding-window
            inference: the overlap-averaged scores at the resized image's size).
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
        threads: CPU threads for the backend (its :attr:`~edgeseg_runtime.runners.BaseRunner.THREADS` option;
            None: the profile's; ignored by backends without a thread setting).
        spin: False stops the backend's idle threads from busy-waiting between runs
            (:attr:`~edgeseg_runtime.runners.BaseRunner.NO_SPIN`), for :meth:`segment_stream` and other
            pipelined use, where the other stages need the cores; None: the backend's default.

    Raises:
        ArchiveError: the manifest's backend section does not fit its runner.
        ToolchainError: the backend library is missing (and no fallback is named).
    """

    def __init__(self, archive: Archive, options: Mapping[str, Any] | None = None, *,
                 threads: int | None = None, spin: bool | None = None) -> None:
        m = archive.manifest
        merged = {**m.target.backend_options, **dict(options or {})}
        backend = m.backend
        if threads is not None or spin is False:
            cls = runner_class(backend.name)
            if threads is not None and cls.THREADS:
                merged[cls.THREADS] = int(threads)
            if spin is False and cls.NO_SPIN:
                merged[cls.NO_SPIN[0]] = cls.NO_SPIN[1]
        runners: dict[tuple[int, int] | None, Runner] = {}
        with _backend_errors(backend.name):
            runner = open_runner(archive.root, backend.details, merged)
            for i, variant in enumerate(backend.variants):
                runners[variant.shape] = runner if i == 0 else open_runner(
                    archive.root, {**backend.details, **variant.details}, merged)
        if not runners:
            runners[None] = runner
        self.archive: Archive | None = archive
        self._setup(m.model, archive.pipeline_spec, runners)

    @classmethod
    def from_parts(cls, model: Model, pipeline: PipelineSpec, runners: Mapping[tuple[int, int] | None, Runner]) -> Segmentor:
        """A segmentor from a model description, a pipeline and runners (no archive), e.g. the build's reference.

        Args:
            model: what the network takes and gives (:class:`~edgeseg_runtime.contract.Model`).
            pipeline: pre/post-processing settings.
            runners: ``{None: runner}`` for one model, or ``{(H, W): runner, ...}`` for static-shape variants.
        """
        seg = cls.__new__(cls)
        seg.archive = None
        seg._setup(model, pipeline, runners)
        return seg

    def _setup(self, model: Model, pipeline: PipelineSpec, runners: Mapping[tuple[int, int] | None, Runner]) -> None:
        self.model = model
        self.preprocess: Preprocess
        self.postprocess: Postprocess
        self.preprocess, self.postprocess = from_spec(pipeline)
        self.input_name: str = model.input.name
        self.output_name: str = model.output.name
        self.input_shape: list[Any] = list(model.input.shape)
        self.classes: list[str] = list(model.classes)
        self.palette: list[list[int]] = [list(rgb) for rgb in model.palette]
        # static-shape variants: one runner per (H, W), the first is self.runner
        self.variants: dict[tuple[int, int], Runner] = {s: r for s, r in runners.items() if s is not None}
        self.runner: Runner = next(iter(runners.values()))
        pre = self.preprocess
        # a variant stretches to its size, or letterboxes into it when the pipeline keeps the ratio into a fixed Pad
        self._pre = {s: replace(pre, size=(s[1], s[0]), keep_ratio=pre.keep_ratio and pre.pad_size is not None,
                                pad_size=(s[1], s[0]) if pre.pad_size is not None else None) for s in self.variants}
        #: sliding-window inference: ``((H, W) window, (H, W) stride)``, None for "whole"
        self.slide: tuple[tuple[int, int], tuple[int, int]] | None = (
            (pipeline.slide_crop, pipeline.slide_stride) if pipeline.slide_crop and pipeline.slide_stride else None)

    def __enter__(self) -> Segmentor:
        with _backend_errors(self.runner.backend):
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

    def load(self, path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """Read an image file as this archive's pipeline takes it (:meth:`Preprocess.load
        <edgeseg_runtime.pipeline.Preprocess.load>`: ``(H, W, 3)`` uint8 RGB for colour models).

        Raises:
            ImageError: see :func:`~edgeseg_runtime.images.load_image`.
        """
        return self.preprocess.load(path, max_pixels=max_pixels)

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """Pre-process one image into the network input.

        Args:
            rgb: ``(H, W, C)`` image as :meth:`load` gives it (colour models: ``(H, W, 3)`` uint8 RGB;
                a one-channel model also takes ``(H, W)``).

        Returns:
            ``(1, C, h, w)`` float32 tensor (with sliding-window inference, the whole image: larger than
            the network's window).

        Raises:
            ImageError: not an array of the pipeline's channels and dtype, or the network input
                size cannot be met (static model, other size).
        """
        pre = self.preprocess
        if rgb.ndim == 2 and pre.channels == 1:
            rgb = rgb[:, :, None]
        if rgb.ndim != 3 or rgb.shape[2] != pre.channels or rgb.dtype != pre.dtype:
            what = "RGB image" if pre.mode == "RGB" else f"{pre.mode} image"
            raise ImageError(f"expected an (H, W, {pre.channels}) {pre.dtype} {what}, got {rgb.dtype} {rgb.shape}")
        variant = self.variant_for(rgb.shape[0], rgb.shape[1])
        tensor = self.preprocess_for(rgb.shape[0], rgb.shape[1])(rgb)
        if self.slide is not None:
            return tensor  # windows of the network's size are cut from it (forward)
        if not fits_input(tensor.shape, [1, pre.channels, *variant] if variant else self.input_shape):
            raise ImageError(
                f"pre-processing gives {list(tensor.shape)} but the model takes {self.input_shape}; "
                "the archive's pipeline.json does not fit its model"
            )
        return tensor

    def preprocess_for(self, height: int, width: int) -> Preprocess:
        """The pre-processing an image of this size gets (its static-shape variant's, if any)."""
        variant = self.variant_for(height, width)
        return self._pre[variant] if variant else self.preprocess

    def finish(self, output: np.ndarray, height: int, width: int, *, scores: bool = False
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """Post-process one raw output for an image of ``height`` x ``width`` pixels (padding cropped).

        Returns:
            ``(labels, scores)`` as :class:`~edgeseg_runtime.pipeline.Postprocess` gives them.
        """
        valid = self.preprocess_for(height, width).valid_fraction(width, height)
        return self.postprocess(output, height, width, want_scores=scores, valid=valid)

    def forward(self, tensor: np.ndarray) -> np.ndarray:
        """The network over one pre-processed image: one :meth:`infer` ("whole" inference), or the
        overlap-averaged windows of :func:`~edgeseg_runtime.slide.slide_inference` ("slide").

        Returns:
            ``(1, C, h, w)`` scores or ``(1, 1, h, w)`` labels; with "slide", scores at the tensor's size.
        """
        if self.slide is None:
            return self.infer(tensor)
        from .slide import slide_inference

        return slide_inference(tensor, self.slide[0], self.slide[1], self.infer, self.preprocess.pad_value)

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        """Run the backend on one network input (the variant of its H, W); returns the raw output.

        Raises:
            ToolchainError: the backend failed, or its output is not the manifest's
                ``[1, C, h, w]`` scores / ``[1, 1, h, w]`` labels.
        """
        runner = self.variants.get((tensor.shape[2], tensor.shape[3]), self.runner) if self.variants else self.runner
        try:
            outputs = runner.infer({self.input_name: tensor})
        except EdgesegError:
            raise
        except Exception as exc:  # noqa: BLE001  backends raise their own untyped errors: one line at this boundary
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ToolchainError(f"{runner.backend} failed on a {list(tensor.shape)} input: {first}") from None
        output = outputs.get(self.output_name)
        channels = 1 if self.postprocess.with_argmax else len(self.classes)
        if not isinstance(output, np.ndarray) or output.ndim != 4 or output.shape[:2] != (1, channels):
            got = getattr(output, "shape", None if output is None else type(output).__name__)
            raise ToolchainError(f"the model's output {self.output_name!r} is {got}, not [1, {channels}, h, w] as the "
                                 "manifest says; the archive does not fit its model")
        return output

    def segment(self, rgb: np.ndarray, *, scores: bool = False) -> Segmentation:
        """Segment one image.

        Args:
            rgb: ``(H, W, C)`` image as :meth:`load` reads it (colour models: ``(H, W, 3)`` uint8 RGB).
            scores: also return per-class scores resized to the image.

        Returns:
            A :class:`Segmentation` at the image's size.
        """
        output = self.forward(self.prepare(rgb))
        labels, score_maps = self.finish(output, rgb.shape[0], rgb.shape[1], scores=scores)
        return Segmentation(labels=labels, scores=score_maps, output=output)

    def segment_stream(self, images: Iterable[np.ndarray], *, scores: bool = False, depth: int = 2
                       ) -> Iterator[Segmentation]:
        """Segment a stream of images with pre-processing, inference and post-processing overlapped
        (:func:`~edgeseg_runtime.pipelining.pipelined`): the results of :meth:`segment`, in order, faster.

        Args:
            images: ``(H, W, C)`` images as :meth:`load` reads them (consumed in a worker thread, so a
                generator that decodes files or video frames overlaps with inference too).
            scores: also return per-class scores resized to each image.
            depth: images waiting between two stages.

        Yields:
            One :class:`Segmentation` per image.

        Raises:
            ImageError: an image does not fit the model (the stream stops there).
            ToolchainError: the backend failed.
        """
        from .pipelining import pipelined

        for item in pipelined(self, images, lambda image: image, scores=scores, depth=depth):
            if item.error is not None:
                raise item.error
            yield Segmentation(labels=item.labels, scores=item.scores, output=item.output)
