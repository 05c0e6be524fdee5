"""ONNX Runtime runner (CPU execution provider).

Source: ONNX Runtime Python API, ``onnxruntime.InferenceSession``
(https://onnxruntime.ai/docs/api/python/api_summary.html).

Options (target profile ``[backend_options]``): see :attr:`OnnxRuntimeRunner.OPTIONS`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ToolchainError
from . import BaseRunner, Option, error_text, import_backend

#: ONNX tensor element types -> numpy dtypes (the ones an input check needs; others are not checked)
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
           "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32, "tensor(int64)": np.int64}


def _import() -> Any:
    # onnxruntime's telemetry writes $TMPDIR/.ses and ~/.cache/Microsoft/... on import unless told not to;
    # the runtime writes nothing outside --out
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    return import_backend("onnxruntime", extra="onnxruntime")


class OnnxRuntimeRunner(BaseRunner):
    """Runs ``backend.net`` (an ``.onnx`` file) with ONNX Runtime."""

    backend = "onnxruntime"
    requirement = "onnxruntime>=1.17"
    THREADS: ClassVar[str] = "intra_op_num_threads"
    NO_SPIN: ClassVar[tuple[str, Any]] = ("allow_spinning", False)
    OPTIONS: ClassVar[dict[str, Option]] = {
        "intra_op_num_threads": Option(int, 0, 1024, default=0, doc="threads; 0 = ONNX Runtime's choice (one per core)"),
        "providers": Option(list, items=str, default=("CPUExecutionProvider",), doc="execution providers, in order"),
        "allow_spinning": Option(bool, default=True,
                                 doc="idle intra-op threads busy-wait for the next op (session.intra_op.allow_spinning)"),
    }

    def __init__(self, root: Path, model: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        super().__init__(root, model, options)
        self.path = self.root / model["net"]

    @staticmethod
    def version() -> str:
        """Installed onnxruntime version. Raises ToolchainError when missing."""
        return str(_import().__version__)

    def _activate_impl(self) -> None:
        ort = _import()
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(self.options["intra_op_num_threads"])
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.options["allow_spinning"] else "0")
        so.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=so, providers=list(self.options["providers"]))
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ToolchainError(f"onnxruntime cannot load {self.path.name}: {error_text(exc)}") from exc
        self._names = [o.name for o in self._session.get_outputs()]
        self.inputs = {i.name: (np.dtype(_DTYPES[i.type]) if i.type in _DTYPES else None) for i in self._session.get_inputs()}

    def _infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._names, self._session.run(self._names, dict(feed))))

    def _deactivate_impl(self) -> None:
        self._session = None
