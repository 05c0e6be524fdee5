"""ncnn runner (``.param`` + ``.bin`` written by pnnx).

Source: ncnn Python binding (https://github.com/Tencent/ncnn/tree/master/python):
``ncnn.Net``, ``Net.opt``, ``create_extractor``, ``Extractor.input/extract``,
``ncnn.Mat``.

``ncnn.Mat(array)`` reads the array's buffer ignoring its strides and does not
keep it alive (DESIGN.md §6): the input is made C-contiguous, held in a local
for the whole extraction and copied into the Mat with ``clone()``.

Options (target profile ``[backend_options]``, over the archive's
``ncnn_options`` that the build chose for its precision):
    num_threads (int, default 0 = ncnn's choice, one per big core)
    use_fp16_storage, use_fp16_packed, use_fp16_arithmetic (bool)
    use_vulkan_compute (bool, default false; needs a Vulkan-enabled ncnn)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ToolchainError
from . import Option, import_backend

_BOOL_OPTIONS = ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_vulkan_compute")


def _import() -> Any:
    return import_backend("ncnn", extra="ncnn")


class NcnnRunner:
    """Runs an ncnn model, one extractor per inference (batch 1, NCHW float32 in and out)."""

    backend = "ncnn"
    requirement = "ncnn>=1.0.20240410"
    OPTIONS: dict[str, Any] = {"num_threads": Option(int, 0, 1024), **{key: bool for key in _BOOL_OPTIONS}}

    def __init__(self, root: Path, model: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        self.param = Path(root) / model["net"]
        self.bin = Path(root) / model["weights"]
        self.in_blob = str(model.get("input_blob", "in0"))
        self.out_blob = str(model.get("output_blob", "out0"))
        self.options = {**dict(model.get("ncnn_options", {})), **dict(options)}
        self._net: Any = None

    @staticmethod
    def version() -> str:
        """Installed ncnn version. Raises ToolchainError when missing."""
        return str(getattr(_import(), "__version__", "unknown"))

    def __enter__(self) -> NcnnRunner:
        ncnn = _import()
        net = ncnn.Net()
        for key in _BOOL_OPTIONS:  # options must be set before load_param
            if key in self.options:
                setattr(net.opt, key, bool(self.options[key]))
        if int(self.options.get("num_threads", 0)) > 0:
            net.opt.num_threads = int(self.options["num_threads"])
        if net.load_param(str(self.param)) != 0 or net.load_model(str(self.bin)) != 0:
            net.clear()
            raise ToolchainError(f"ncnn cannot load {self.param.name}/{self.bin.name}; is the archive complete?")
        self._net = net
        return self

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on ``{"input": (1, C, H, W) float32}``; returns ``{"output": (1, C', H', W') float32}``.

        Raises:
            ToolchainError: ncnn's extractor failed (non-zero return).
        """
        (tensor,) = feed.values()
        if tensor.shape[0] != 1:
            raise ToolchainError(f"the ncnn runner takes batch 1, got input shape {tensor.shape}")
        chw = np.ascontiguousarray(tensor[0], dtype=np.float32)  # held until extract returns
        ncnn = _import()
        with self._net.create_extractor() as ex:
            ex.input(self.in_blob, ncnn.Mat(chw).clone())
            ret, out = ex.extract(self.out_blob)
            if ret != 0:
                raise ToolchainError(f"ncnn extract({self.out_blob!r}) returned {ret}")
            result = np.array(out, dtype=np.float32, copy=True)
        del chw
        return {"output": result[None]}

    def __exit__(self, *exc: object) -> None:
        if self._net is not None:
            self._net.clear()
        self._net = None
