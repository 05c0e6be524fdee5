"""ONNX Runtime runner (CPU execution provider).

Source: ONNX Runtime Python API, ``onnxruntime.InferenceSession``
(https://onnxruntime.ai/docs/api/python/api_summary.html).

Options (target profile ``[backend_options]``):
    intra_op_num_threads (int, default 0 = ONNX Runtime's choice)
    providers (list of str, default ``["CPUExecutionProvider"]``)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ToolchainError
from . import Option, import_backend


def _import() -> Any:
    # onnxruntime's telemetry writes $TMPDIR/.ses and ~/.cache/Microsoft/... on import unless told not to;
    # the runtime writes nothing outside --out
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    return import_backend("onnxruntime", extra="onnxruntime")


class OnnxRuntimeRunner:
    """Runs ``backend.net`` (an ``.onnx`` file) with ONNX Runtime."""

    backend = "onnxruntime"
    requirement = "onnxruntime>=1.17"
    #: accepted ``[backend_options]`` keys and their types
    OPTIONS = {"intra_op_num_threads": Option(int, 0, 1024), "providers": list}

    def __init__(self, root: Path, model: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        self.path = Path(root) / model["net"]
        self.options = dict(options)
        self._session: Any = None
        self._names: list[str] = []

    @staticmethod
    def version() -> str:
        """Installed onnxruntime version. Raises ToolchainError when missing."""
        return str(_import().__version__)

    def __enter__(self) -> OnnxRuntimeRunner:
        ort = _import()
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(self.options.get("intra_op_num_threads", 0))
        so.log_severity_level = 3
        providers = list(self.options.get("providers", ["CPUExecutionProvider"]))
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=so, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ToolchainError(f"onnxruntime cannot load {self.path.name}: {str(exc).splitlines()[0]}") from None
        self._names = [o.name for o in self._session.get_outputs()]
        return self

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once. ``feed`` maps input names to arrays; returns output name -> array."""
        return dict(zip(self._names, self._session.run(self._names, dict(feed))))

    def __exit__(self, *exc: object) -> None:
        self._session = None
