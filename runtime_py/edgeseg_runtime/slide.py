"""Sliding-window inference: a large image through a network with a smaller input, scores averaged where
windows overlap.

This is MMSegmentation's ``EncoderDecoder.slide_inference`` (mmseg 1.x ``mmseg/models/segmentors/
encoder_decoder.py``, ``test_cfg = dict(mode="slide", crop_size=(h, w), stride=(h, w))``):

* windows of ``crop`` start every ``stride`` pixels; the last window of a row or column is moved back so it
  ends at the image's edge (``h_grids = max(H - h_crop + h_stride - 1, 0) // h_stride + 1``);
* each window's scores are resized (bilinear) to the window's size when the network's output is smaller,
  added into a full-size sum, and the sum is divided by how many windows covered each pixel.

An image smaller than the window in a dimension is padded at the bottom/right with ``pad_value`` up to the
window (what a static-shape network needs) and the padding's scores are cropped off. The MMDeploy SDK has
"whole" inference only; its runtime ignores the ``mode`` key.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .pipeline import Postprocess

__all__ = ["windows", "slide_inference"]


def windows(height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]
            ) -> list[tuple[int, int, int, int]]:
    """The windows ``(y1, y2, x1, x2)`` (pixel rows/columns, end exclusive) over a ``height`` x ``width``
    image, in mmseg's order (row by row) and by its rule (module doc).

    Args:
        height, width: the (resized) image in pixels.
        crop: ``(H, W)`` window size.
        stride: ``(H, W)`` step between window starts, at most ``crop``.
    """
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    h_grids = max(height - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(width - w_crop + w_stride - 1, 0) // w_stride + 1
    out = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2, x2 = min(h_idx * h_stride + h_crop, height), min(w_idx * w_stride + w_crop, width)
            out.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    return out


def slide_inference(tensor: np.ndarray, crop: tuple[int, int], stride: tuple[int, int],
                    infer: Callable[[np.ndarray], np.ndarray], pad_value: float = 0.0) -> np.ndarray:
    """Overlap-averaged scores of a network run window by window over one image.

    Args:
        tensor: ``(1, C_in, H, W)`` float32 network input of the whole (resized, normalized) image.
        crop, stride: ``(H, W)`` window size and step (:func:`windows`).
        infer: the network: ``(1, C_in, crop_h, crop_w)`` float32 → ``(1, C, h, w)`` float scores.
        pad_value: value for padding a window where the image is smaller than ``crop``.

    Returns:
        ``(1, C, H, W)`` float32 scores.
    """
    _, c_in, height, width = tensor.shape
    total: np.ndarray | None = None
    count = np.zeros((height, width), dtype=np.float32)
    for y1, y2, x1, x2 in windows(height, width, crop, stride):
        h, w = y2 - y1, x2 - x1
        window = tensor[:, :, y1:y2, x1:x2]
        if (h, w) != tuple(crop):
            padded = np.full((1, c_in, crop[0], crop[1]), pad_value, dtype=np.float32)
            padded[:, :, :h, :w] = window
            window = padded
        scores = np.asarray(infer(np.ascontiguousarray(window)), dtype=np.float32)[0]
        if scores.shape[1:] != tuple(crop):  # bilinear, one plane at a time (mmseg's resize)
            scores = np.stack(list(Postprocess(scores.shape[0], False).planes(scores[None], crop[0], crop[1])))
        if total is None:
            total = np.zeros((scores.shape[0], height, width), dtype=np.float32)
        total[:, y1:y2, x1:x2] += scores[:, :h, :w]
        count[y1:y2, x1:x2] += 1
    assert total is not None
    total /= count
    return total[None]

