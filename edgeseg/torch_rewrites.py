"""Export-time rewrites of PyTorch functions whose ONNX form other converters cannot read, for static-shape exports.

Non-global adaptive average pooling (PSPNet's pyramid pooling, Fast-SCNN,
UPerNet, ANN, APCNet, DMNet, FastFCN, ICNet) is refused by the TorchScript
exporter whenever the input size does not divide the output size, and the
dynamo exporter's graph of it (``ReduceMean`` opset 18, reshape/unbind/where
decompositions) stops pnnx and onnx2torch. At a fixed input size it is an
ordinary average pooling: PyTorch's adaptive bins are
``[floor(i*n/m), ceil((i+1)*n/m))`` for output index ``i`` of ``m`` over an
axis of ``n`` (ATen ``AdaptiveAveragePooling.cpp``, ``start_index`` /
``end_index``), so

- ``n % m == 0``: one ``AveragePool`` with kernel = stride = ``n/m`` (the
  rewrite MMDeploy applies for static shapes,
  ``mmdeploy/pytorch/functions/adaptive_pool.py``);
- otherwise the bins have unequal starts: each bin is a ``Slice`` +
  ``ReduceMean`` over that axis, concatenated. Averaging a rectangle is
  separable (the mean over rows of the means over columns), so the two axes
  are pooled one after the other and the result equals PyTorch's up to float
  rounding.

:func:`static_rewrites` installs the rewrite around a TorchScript export; the
sizes it sees become constants, so it is only for static exports (a dynamic
export keeps PyTorch's op). :func:`edgeseg.export.export_shared` checks the
rewritten graph against the unchanged module with ONNX Runtime and records
what was rewritten in the ONNX metadata (``edgeseg.rewrites``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

__all__ = ["adaptive_bins", "static_rewrites"]


def adaptive_bins(n: int, m: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` input ranges of adaptive pooling's ``m`` output cells over an axis of ``n`` (ATen's rule)."""
    return [(i * n // m, -(-(i + 1) * n // m)) for i in range(m)]


def _pool_axis(x: Any, axis: int, m: int) -> Any:
    """Adaptive average pooling of ``x`` over one axis (-2 = H, -1 = W) to ``m`` cells with static slices."""
    import torch
    import torch.nn.functional as F

    n = int(x.shape[axis])
    if m == n:
        return x
    if n % m == 0:
        k = n // m
        kernel = (k, 1) if axis == -2 else (1, k)
        return F.avg_pool2d(x, kernel, kernel)
    parts = [x.narrow(axis, s, e - s).mean(axis, keepdim=True) for s, e in adaptive_bins(n, m)]
    return torch.cat(parts, axis)


@contextlib.contextmanager
def static_rewrites(done: Counter[str]) -> Iterator[None]:
    """Within the block, ``torch.nn.functional.adaptive_avg_pool2d`` with a non-global output is plain pooling.

    ``nn.AdaptiveAvgPool2d`` calls the function, so modules and direct calls
    are both covered. Global pooling (output 1x1) and identity sizes keep
    PyTorch's op (the exporters write ``GlobalAveragePool`` for it).

    Args:
        done: counts each rewrite made, by name (``adaptive_avg_pool2d``), for the caller to record.
    """
    import torch
    import torch.nn.functional as F

    original = F.adaptive_avg_pool2d

    def adaptive_avg_pool2d(input: Any, output_size: Any) -> Any:  # noqa: A002 - PyTorch's signature
        h, w = (int(v) for v in input.shape[-2:])
        sizes = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        oh, ow = (n if m is None else int(m) for m, n in zip(sizes, (h, w)))
        if (oh, ow) in ((1, 1), (h, w)):
            return original(input, output_size)
        done["adaptive_avg_pool2d"] += 1
        if h % oh == 0 and w % ow == 0:
            kernel = (h // oh, w // ow)
            return F.avg_pool2d(input, kernel, kernel)
        return _pool_axis(_pool_axis(input, -2, oh), -1, ow)

    F.adaptive_avg_pool2d = adaptive_avg_pool2d
    try:
        with warnings.catch_warnings():  # "converting a tensor to a Python integer": the sizes are meant to be constants
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            yield
    finally:
        F.adaptive_avg_pool2d = original
