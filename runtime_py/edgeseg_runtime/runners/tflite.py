"""TFLite / LiteRT runner (``.tflite``).

Source: LiteRT Python API (https://ai.google.dev/edge/litert/inference),
``ai_edge_litert.interpreter.Interpreter``: ``allocate_tensors``,
``get_input_details`` / ``get_output_details`` (``quantization`` =
(scale, zero_point)), ``set_tensor``, ``invoke``, ``get_tensor``. Devices that
only have the older ``tflite-runtime`` package are served by its
``tflite_runtime.interpreter.Interpreter`` (same API).

Full-integer models (int8/int16 input and output) are run as the TFLite
quantization spec says: ``q = clip(round(x / scale) + zero_point)`` in,
``x = scale * (q - zero_point)`` out, so callers always see float32.

Options (target profile ``[backend_options]``): see :attr:`TFLiteRunner.OPTIONS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ToolchainError
from . import BaseRunner, Option, error_text


def _interpreter_class() -> Any:
    for module in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            return importlib.import_module(module).Interpreter
        except ImportError:
            continue
    raise ToolchainError(
        "LiteRT is not installed (neither ai_edge_litert nor tflite_runtime); on a device: pip install ai-edge-litert, "
        "on the host: pip install 'edgeseg[tflite]'"
    )


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    """Float → integer tensor by the TFLite quantization spec (round half to even, clipped to the dtype)."""
    info = np.iinfo(dtype)
    return np.clip(np.rint(x / scale) + zero_point, info.min, info.max).astype(dtype)


class TFLiteRunner(BaseRunner):
    """Runs a ``.tflite`` model with one interpreter (batch 1, NCHW float32 in and out)."""

    backend = "tflite"
    requirement = "ai-edge-litert>=1.2"
    THREADS: ClassVar[str] = "num_threads"
    OPTIONS: ClassVar[dict[str, Option]] = {"num_threads": Option(int, 0, 1024, default=0, doc="0 = the interpreter's choice")}

    def __init__(self, root: Path, model: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        super().__init__(root, model, options)
        self.path = self.root / model["net"]
        self._it: Any = None

    @staticmethod
    def version() -> str:
        """Installed LiteRT (or tflite-runtime) version. Raises ToolchainError when missing."""
        from importlib.metadata import PackageNotFoundError, version

        _interpreter_class()
        for dist in ("ai-edge-litert", "tflite-runtime"):
            try:
                return version(dist)
            except PackageNotFoundError:
                continue
        return "unknown"

    def _activate_impl(self) -> None:
        cls = _interpreter_class()
        threads = int(self.options["num_threads"])
        try:
            self._it = cls(model_path=str(self.path), num_threads=threads if threads > 0 else None)
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ToolchainError(f"LiteRT cannot load {self.path.name}: {error_text(exc)}") from exc
        self._in = self._it.get_input_details()[0]
        self._out = self._it.get_output_details()[0]

    def _infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on ``{"input": (1, C, H, W) float32}``; returns ``{"output": float32 array}``."""
        (tensor,) = feed.values()
        dtype = np.dtype(self._in["dtype"])
        if dtype.kind in "iu":
            scale, zero = self._in["quantization"]
            tensor = quantize(tensor, scale, zero, dtype)
        self._it.set_tensor(self._in["index"], np.ascontiguousarray(tensor, dtype=dtype))
        self._it.invoke()
        out = self._it.get_tensor(self._out["index"])
        if out.dtype.kind in "iu" and self._out["quantization"][0] != 0:
            scale, zero = self._out["quantization"]
            out = (out.astype(np.float32) - np.float32(zero)) * np.float32(scale)
        return {"output": np.array(out, dtype=np.float32 if out.dtype.kind == "f" else out.dtype, copy=True)}

    def _deactivate_impl(self) -> None:
        self._it = None
