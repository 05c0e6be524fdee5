"""Pre- and post-processing as described by an archive's ``pipeline.json``.

``pipeline.json`` follows the MMDeploy SDK schema (MMDeploy 1.x,
``mmdeploy/utils/export_info.py``): a ``Transform`` task (LoadImageFromFile,
Resize, Normalize, ImageToTensor, Collect), a ``Net`` task and an mmseg
``ResizeMask`` post-processing task. This module reads the parts that matter
and applies them with numpy and Pillow:

* ``Resize``: ``size`` is ``[W, H]``; ``keep_ratio = false`` stretches to it,
  ``keep_ratio = true`` rescales so the image fits inside it (mmcv
  ``imrescale`` rule). Without ``size``, ``min_side``/``max_side`` (edgeseg's
  extension for dynamic-shape models) keep the image's own size, scaled with
  its ratio so the short side is at least ``min_side`` and the long side at
  most ``max_side``. Resizing is bilinear with half-pixel centres and no
  anti-aliasing, as ``cv2.resize(..., INTER_LINEAR)`` does in mmcv's
  ``imresize`` and in the SDK (see :func:`bilinear`).
* ``Normalize``: ``(x - mean) / std`` per channel, in 0..255 pixel units;
  ``to_rgb = true`` means the network takes RGB (the SDK loads BGR), false
  means it takes BGR.
* ``Pad`` (after Normalize): the normalized tensor is padded at the bottom
  and right with ``pad_val`` (network-input units, as MMSegmentation's
  ``SegDataPreProcessor`` pads after normalizing) up to a multiple of
  ``size_divisor``, or up to a fixed ``size`` ``[W, H]`` (a keep-ratio
  resize into a static-shape model: letterboxing).
* ``ResizeMask``: scores ``[1, C, h, w]`` are resized back to the image size
  (bilinear) and arg-maxed over C, interpolating only near label boundaries
  (:func:`~edgeseg_runtime.resize.resized_argmax`, identical labels); labels ``[1, 1, h, w]`` (``with_argmax``)
  are resized with nearest neighbour. When the input was padded, only the
  part of the output that covers the image is resized (the padding is
  cropped, as mmseg ``BaseSegmentor.postprocess_result`` does; the
  MMDeploy SDK's ResizeMask does not crop).

The same code prepares inputs on the host (reference run, golden outputs,
calibration) and on the device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .contract import LIMITS, PipelineSpec
from .errors import ImageError
from .images import DEFAULT_MAX_PIXELS, READ_MODES, load_image
from .resize import argmax_first, resize_plane, resize_scores, resized_argmax

__all__ = ["Preprocess", "Postprocess", "parse_pipeline", "from_spec", "output_labels", "fits_input", "bilinear"]


@dataclass(frozen=True)
class Preprocess:
    """Image → network input tensor.

    Attributes:
        size: ``(W, H)`` target of the Resize transform, or None for no resize.
        keep_ratio: True to fit inside ``size`` keeping the aspect ratio (mmcv ``imrescale``: the long side
            within ``max(size)``, the short within ``min(size)``; with ``pad_size``, inside the W x H box).
        mean: per-channel mean, network channel order, in the image's units (0..255 for 8-bit images,
            0..65535 for 16-bit ones).
        std: per-channel standard deviation, network channel order.
        to_rgb: True when the network takes RGB, False for BGR (3-channel ``RGB`` images only).
        mode: how images are read (:data:`edgeseg_runtime.images.READ_MODES`): ``RGB``, ``L`` (grey),
            ``LA``, ``RGBA``, ``I;16`` (16-bit grey), ``F`` (float grey).
        pad_divisor: pad the bottom/right so H and W are multiples of it (mmseg ``Pad(size_divisor=...)``).
        pad_size: pad the bottom/right up to this ``(W, H)`` (letterboxing into a static input).
        pad_value: value of the padded elements, in network-input units (after Normalize).
        min_side, max_side: with ``size`` None, scale the image keeping its ratio so its short side is at
            least ``min_side`` and its long side at most ``max_side`` pixels (``max_side`` wins; PaddleOCR
            ``DetResizeForTest`` limit_type min/max); sides rounded to the nearest pixel.
    """

    size: tuple[int, int] | None
    keep_ratio: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    to_rgb: bool
    pad_divisor: int | None = None
    pad_size: tuple[int, int] | None = None
    pad_value: float = 0.0
    mode: str = "RGB"
    min_side: int | None = None
    max_side: int | None = None

    @property
    def channels(self) -> int:
        """Channels of the images and of the network input."""
        return READ_MODES[self.mode][0]

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype images are read as (uint8, uint16 or float32)."""
        return np.dtype(READ_MODES[self.mode][1])

    def load(self, path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """Read an image file the way this pipeline takes it (:func:`~edgeseg_runtime.images.load_image`).

        Returns:
            ``(H, W, C)`` array of :attr:`dtype`.

        Raises:
            ImageError: see :func:`~edgeseg_runtime.images.load_image`.
        """
        return load_image(path, max_pixels=max_pixels, mode=self.mode)

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """Network input ``(W, H)`` for an image of ``width`` x ``height`` pixels.

        Raises:
            ImageError: no Resize step and the image is over the network input
                limits (:attr:`~edgeseg_runtime.contract.Limits.net_pixels`, ``net_side``).
        """
        if self.size is None:
            w, h = width, height
            scale = 1.0
            if self.min_side and min(w, h) < self.min_side:
                scale = self.min_side / min(w, h)
            if self.max_side and max(w, h) * scale > self.max_side:
                scale = self.max_side / max(w, h)
            if scale != 1.0:
                w, h = max(1, int(width * scale + 0.5)), max(1, int(height * scale + 0.5))
        elif not self.keep_ratio:
            return self.size
        else:
            if self.pad_size is not None:  # letterbox: fit inside the W x H box itself, whatever the orientation
                scale = min(self.size[0] / width, self.size[1] / height)
            else:  # mmcv imrescale: the long side within max(size), the short side within min(size)
                long_edge, short_edge = max(self.size), min(self.size)
                scale = min(long_edge / max(width, height), short_edge / min(width, height))
            w, h = max(1, int(width * scale + 0.5)), max(1, int(height * scale + 0.5))
            if self.pad_size is not None:
                w, h = min(w, self.size[0]), min(h, self.size[1])
        pw, ph = self.padded_size(w, h)
        if pw * ph > LIMITS.net_pixels or max(pw, ph) > LIMITS.net_side:
            raise ImageError(f"a {width}x{height} image gives a {pw}x{ph} network input, over the runtime's limit of "
                             f"{LIMITS.net_pixels:,} pixels ({LIMITS.net_side} per side); this archive's pipeline "
                             "does not resize: shrink the image")
        return w, h

    def padded_size(self, w: int, h: int) -> tuple[int, int]:
        """The network input ``(W, H)`` after the Pad step for a resized image of ``w`` x ``h`` pixels.

        Raises:
            ImageError: the resized image is larger than a fixed pad size.
        """
        if self.pad_size is not None:
            if w > self.pad_size[0] or h > self.pad_size[1]:
                raise ImageError(f"a {w}x{h} resized image does not fit the {self.pad_size[0]}x{self.pad_size[1]} "
                                 "padded network input")
            return self.pad_size
        if self.pad_divisor:
            d = self.pad_divisor
            return -(-w // d) * d, -(-h // d) * d
        return w, h

    def valid_fraction(self, width: int, height: int) -> tuple[float, float]:
        """``(rows, columns)``: the fraction of the network input (and output) that covers an image of
        ``width`` x ``height`` pixels; ``(1.0, 1.0)`` without padding."""
        w, h = self.target_size(width, height)
        pw, ph = self.padded_size(w, h)
        return h / ph, w / pw

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """Resize and normalize one image (:meth:`resize` then :meth:`normalize`).

        Args:
            rgb: ``(H, W, C)`` image as :meth:`load` reads it (``RGB``: ``(H, W, 3)`` uint8).

        Returns:
            ``(1, C, h, w)`` float32 C-contiguous NCHW tensor.
        """
        return self.normalize(self.resize(rgb))

    def resize(self, rgb: np.ndarray) -> np.ndarray:
        """The Resize step alone: ``(H, W, C)`` → ``(h, w, C)`` of the same dtype at the network size.

        Pillow (:func:`bilinear`): 8-bit images through its ``RGB``/``L`` modes (within one grey level of
        OpenCV; identical to it for an exact halving), 16-bit and float ones one channel at a time in
        float32 (mode ``F``), 16-bit rounded back to the nearest integer, as OpenCV's ``resize`` rounds
        ``CV_16U``. The same code runs on the host (golden outputs) and on the device (``verify``): an
        fp32 golden check fails when the two resize differently (measured with OpenCV on one side: max
        score difference 0.195), so the runtime does not switch to OpenCV where it happens to be installed.
        """
        height, width = rgb.shape[:2]
        w, h = self.target_size(width, height)
        if (w, h) == (width, height):
            return rgb
        if rgb.dtype == np.uint8 and rgb.shape[2] == 3:
            return np.asarray(bilinear(Image.fromarray(rgb), w, h))
        out = np.empty((h, w, rgb.shape[2]), dtype=rgb.dtype)
        for c in range(rgb.shape[2]):
            plane = rgb[:, :, c]
            if rgb.dtype == np.uint8:
                out[:, :, c] = np.asarray(bilinear(Image.fromarray(np.ascontiguousarray(plane)), w, h))
                continue
            resized = np.asarray(bilinear(Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32)), w, h))
            out[:, :, c] = np.clip(np.rint(resized), 0, 65535) if rgb.dtype == np.uint16 else resized
        return out

    def normalize(self, rgb: np.ndarray) -> np.ndarray:
        """The Normalize/Pad/ImageToTensor steps: ``(h, w, C)`` → ``(1, C, H, W)`` float32 NCHW.

        Channels are reordered to the network's order (``to_rgb``, RGB images),
        then ``(x - mean) / std`` is applied as one fused multiply-add, written
        straight into the padded tensor (``H, W`` = :meth:`padded_size`).
        """
        h, w, c = rgb.shape
        chw = rgb.transpose(2, 0, 1)
        if not self.to_rgb and self.mode == "RGB":
            chw = chw[::-1]
        scale, bias = self._affine
        pw, ph = self.padded_size(w, h)
        if (pw, ph) == (w, h):
            out = np.empty((1, c, h, w), dtype=np.float32)
        else:
            out = np.full((1, c, ph, pw), self.pad_value, dtype=np.float32)
        body = out[0, :, :h, :w]
        np.multiply(chw, scale, out=body, dtype=np.float32)  # (x - mean) / std == x * (1/std) - mean/std
        if bias is not None:
            body += bias
        return out

    @cached_property
    def _affine(self) -> tuple[np.ndarray, np.ndarray | None]:
        scale = (1.0 / np.asarray(self.std, dtype=np.float64)).astype(np.float32).reshape(-1, 1, 1)
        bias = (-np.asarray(self.mean, dtype=np.float64) / np.asarray(self.std, dtype=np.float64)).astype(np.float32)
        return scale, (bias.reshape(-1, 1, 1) if bias.any() else None)


@dataclass(frozen=True)
class Postprocess:
    """Network output → label map at the image's size (mmseg ``ResizeMask``).

    Attributes:
        num_classes: number of classes C.
        with_argmax: True when the network already outputs labels.
    """

    num_classes: int
    with_argmax: bool

    @property
    def label_dtype(self) -> type[np.unsignedinteger]:
        return np.uint8 if self.num_classes <= 256 else np.uint16

    def __call__(
        self, output: np.ndarray, height: int, width: int, *, want_scores: bool = False,
        valid: tuple[float, float] = (1.0, 1.0),
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Turn one network output into a label map.

        Args:
            output: ``(1, C, h, w)`` float scores, or ``(1, 1, h, w)`` integer
                labels when ``with_argmax``.
            height, width: the original image size in pixels.
            want_scores: also return the resized per-class scores.
            valid: ``(rows, columns)`` fraction of the output that covers the
                image (:meth:`Preprocess.valid_fraction`); the rest is padding, cropped.

        Returns:
            ``labels`` ``(height, width)`` uint8 (uint16 above 256 classes) and
            ``scores`` ``(C, height, width)`` float32 or None.
        """
        output, box = _crop_valid(output, valid)
        if self.with_argmax:
            labels = output.reshape(output.shape[-2:]).astype(self.label_dtype, copy=False)
            if labels.shape != (height, width) or box is not None:
                labels = np.asarray(Image.fromarray(labels).resize((width, height), Image.NEAREST, box=box))
            return labels, None
        extent = None if box is None else (box[3], box[2])
        labels = resized_argmax(output[0], height, width, self.label_dtype, extent)
        if not want_scores:
            return labels, None
        return labels, resize_scores(output[0], height, width, extent)

    def planes(self, output: np.ndarray, height: int, width: int,
               valid: tuple[float, float] = (1.0, 1.0)) -> Iterator[np.ndarray]:
        """The class score planes resized to the image (:func:`~edgeseg_runtime.resize.resize_plane`), one at
        a time (memory: one full-size plane whatever C is).

        Args:
            output: ``(1, C, h, w)`` float scores.
            height, width: the image size in pixels.
            valid: ``(rows, columns)`` fraction of the output that covers the image (the rest is padding).

        Yields:
            C ``(height, width)`` float32 arrays, class 0 first; their arg-max is the labels of :meth:`__call__`.
        """
        cropped, box = _crop_valid(output, valid)
        extent = None if box is None else (box[3], box[2])
        for plane in cropped[0]:
            yield resize_plane(plane, height, width, extent)


def _crop_valid(output: np.ndarray, valid: tuple[float, float]
                ) -> tuple[np.ndarray, tuple[float, float, float, float] | None]:
    """The part of ``output`` that covers the image: the rows/columns it reaches into, and Pillow's ``box``
    (left, top, right, bottom in output pixels) when its edge falls inside a pixel (None when it falls on a
    pixel edge: the crop is exact, and resampling clamps at the crop's edge as mmseg's crop-then-resize does)."""
    if valid == (1.0, 1.0):
        return output, None
    oh, ow = output.shape[-2:]
    bottom, right = oh * valid[0], ow * valid[1]
    rows, cols = math.ceil(bottom - 1e-6), math.ceil(right - 1e-6)
    exact = abs(bottom - rows) < 1e-6 and abs(right - cols) < 1e-6
    return output[..., :rows, :cols], (None if exact else (0.0, 0.0, right, bottom))


def bilinear(img: Image.Image, width: int, height: int,
             box: tuple[float, float, float, float] | None = None) -> Image.Image:
    """Bilinear resize the way OpenCV and PyTorch do it, with Pillow.

    Output pixel ``(x, y)`` samples the input at
    ``((x + 0.5) * W / width - 0.5, (y + 0.5) * H / height - 0.5)`` with
    bilinear weights and edge clamping, with no anti-aliasing filter when
    shrinking. This is ``cv2.resize(..., interpolation=INTER_LINEAR)``
    (mmcv ``imresize``, the MMDeploy SDK's Resize and ResizeMask) and
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``
    (mmseg ``resize``). Pillow's own ``Image.resize`` widens its filter when
    shrinking (anti-aliasing), which moves label boundaries away from what
    the model was trained and exported with. Measured on photos: uint8
    results within 1 grey level of OpenCV (OpenCV rounds an 11-bit
    fixed-point sum, Pillow truncates a float one: 72 % of pixels equal,
    mean -0.28 grey level), float32 (mode F) within 2e-7 of OpenCV and
    PyTorch.

    Args:
        img: Pillow image, any mode Pillow's affine transform takes
            (``RGB``, ``L``, ``F``).
        width, height: output size in pixels.
        box: ``(0, 0, right, bottom)``: resize only this top-left region of
            ``img`` (input pixel units, may be fractional), e.g. the part of a
            network output that covers the image when the input was padded;
            None = the whole image.

    Returns:
        The resized image, same mode.

    Source: Pillow ``Image.transform`` (``Transform.AFFINE`` maps output pixel
    centres to input coordinates) and ``Image.resize(box=...)``; OpenCV
    ``resize`` INTER_LINEAR docs.
    """
    bw, bh = (img.width, img.height) if box is None else (box[2] - box[0], box[3] - box[1])
    if box is None and (bw, bh) == (2 * width, 2 * height):
        # an exact halving samples every 2x2 block's centre, weights 1/4: Pillow's 2x2 box reduction, which
        # rounds like OpenCV (cv2 runs its INTER_AREA fast path here; bit-identical on 8-bit photos), 3x faster
        return img.reduce(2)
    if width >= bw and height >= bh:
        # enlarging: Image.resize's filter keeps its unit support, so it is the same bilinear (within 3e-7), 4x faster
        return img.resize((width, height), Image.Resampling.BILINEAR, box=box)
    sx, sy = bw / width, bh / height
    x0, y0 = (0.0, 0.0) if box is None else (box[0], box[1])
    return img.transform((width, height), Image.Transform.AFFINE, (sx, 0, x0, 0, sy, y0),
                         resample=Image.Resampling.BILINEAR)


def output_labels(output: np.ndarray) -> np.ndarray:
    """Labels at the network's output size: ``(1, 1, h, w)`` labels as they are, ``(1, C, h, w)`` scores arg-maxed.

    Returns:
        ``(h, w)`` labels (the output's integer dtype, or uint16 after arg-max; first index on ties).
    """
    if output.shape[1] == 1:
        return output.reshape(output.shape[-2:])
    return argmax_first(output[0], np.uint16)


def fits_input(shape: tuple[int, ...], input_shape: list[Any] | tuple[Any, ...]) -> bool:
    """Whether a tensor shape fits a network input shape (str entries are dynamic axes)."""
    return len(shape) == len(input_shape) and all(
        not isinstance(want, int) or got == want for got, want in zip(shape, input_shape)
    )


def parse_pipeline(pipeline: Any) -> tuple[Preprocess, Postprocess]:
    """Read the pre/post-processing settings from a ``pipeline.json`` document.

    Validation is :meth:`edgeseg_runtime.contract.PipelineSpec.from_doc`.

    Raises:
        ArchiveError: the document lacks the Transform or ResizeMask task, or
            a field has the wrong type or range.
    """
    return from_spec(PipelineSpec.from_doc(pipeline))


def from_spec(spec: PipelineSpec) -> tuple[Preprocess, Postprocess]:
    """The :class:`Preprocess` and :class:`Postprocess` of a validated pipeline."""
    return (
        Preprocess(size=spec.size, keep_ratio=spec.keep_ratio, mean=spec.mean, std=spec.std, to_rgb=spec.to_rgb,
                   pad_divisor=spec.pad_divisor, pad_size=spec.pad_size, pad_value=spec.pad_value,
                   mode=spec.image_mode, min_side=spec.min_side, max_side=spec.max_side),
        Postprocess(num_classes=spec.num_classes, with_argmax=spec.with_argmax),
    )
