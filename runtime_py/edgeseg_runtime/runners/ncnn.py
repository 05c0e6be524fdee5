"""ncnn runner (``.param`` + ``.bin`` written by pnnx).

Source: ncnn Python binding (https://github.com/Tencent/ncnn/tree/master/python):
``ncnn.Net``, ``Net.opt``, ``create_extractor``, ``Extractor.input/extract``,
``ncnn.Mat``.

``ncnn.Mat(array)`` reads the array's buffer ignoring its strides and does not
keep it alive (DESIGN.md §6): the input is made C-contiguous, held in a local
for the whole extraction and copied into the Mat with ``clone()``.

Options (target profile ``[backend_options]``, over the archive's
``ncnn_options`` that the build chose for its precision): see
:attr:`NcnnRunner.OPTIONS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ToolchainError
from . import BaseRunner, Option, import_backend

_BOOL_OPTIONS = {
    "use_fp16_storage": "fp16 storage of weights and activations (unset: the archive's ncnn_options, else ncnn's default)",
    "use_fp16_packed": "fp16 packed layouts (unset: the archive's ncnn_options, else ncnn's default)",
    "use_fp16_arithmetic": "fp16 arithmetic (unset: the archive's ncnn_options, else ncnn's default)",
    "use_vulkan_compute": "run on the GPU with Vulkan (needs a Vulkan-enabled ncnn; unset: off)",
}


def _import() -> Any:
    return import_backend("ncnn", extra="ncnn")


class NcnnRunner(BaseRunner):
    """Runs an ncnn model, one extractor per inference (batch 1, NCHW float32 in and out)."""

    backend = "ncnn"
    requirement = "ncnn>=1.0.20240410"
    THREADS: ClassVar[str] = "num_threads"
    NO_SPIN: ClassVar[tuple[str, Any]] = ("openmp_blocktime", 0)
    OPTIONS: ClassVar[dict[str, Option]] = {
        "num_threads": Option(int, 0, 1024, default=0, doc="0 = ncnn's choice (one per big core)"),
        "openmp_blocktime": Option(int, 0, 400, default=None, doc="ms an idle OpenMP thread spins (ncnn's default: 20)"),
        **{key: Option(bool, doc=doc) for key, doc in _BOOL_OPTIONS.items()},
    }

    def __init__(self, root: Path, model: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        super().__init__(root, model, {**dict(model.get("ncnn_options", {})), **dict(options)})
        self.param = self.root / model["net"]
        self.bin = self.root / model["weights"]
        self.in_blob = str(model.get("input_blob", "in0"))
        self.out_blob = str(model.get("output_blob", "out0"))
        self._net: Any = None

    @staticmethod
    def version() -> str:
        """Installed ncnn version. Raises ToolchainError when missing."""
        return str(getattr(_import(), "__version__", "unknown"))

    def _activate_impl(self) -> None:
        ncnn = _import()
        net = ncnn.Net()
        for key in _BOOL_OPTIONS:  # options must be set before load_param
            if self.options[key] is not None:
                setattr(net.opt, key, bool(self.options[key]))
        if self.options["num_threads"] > 0:
            net.opt.num_threads = int(self.options["num_threads"])
        if self.options["openmp_blocktime"] is not None:
            net.opt.openmp_blocktime = int(self.options["openmp_blocktime"])
        if net.load_param(str(self.param)) != 0 or net.load_model(str(self.bin)) != 0:
            net.clear()
            raise ToolchainError(f"ncnn cannot load {self.param.name}/{self.bin.name}; is the archive complete?")
        self._net = net

    def _infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
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

    def _deactivate_impl(self) -> None:
        if self._net is not None:
            self._net.clear()
        self._net = None
