"""OpenVINO runner (IR ``.xml`` + ``.bin``).

Source: OpenVINO Python API, ``openvino.Core.compile_model`` and
``InferRequest`` (https://docs.openvino.ai/2026/api/ie_python_api/api.html).

Options (target profile ``[backend_options]``):
    device (str, default ``"CPU"``)
    inference_precision (str, e.g. ``"f32"``; unset = the plugin's default,
        which is bf16 on CPUs with AMX/AVX512-BF16)
    num_threads (int, default 0 = plugin's choice)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ToolchainError
from . import Option, import_backend


def _import() -> Any:
    return import_backend("openvino", extra="openvino")


class OpenVINORunner:
    """Runs an OpenVINO IR with a synchronous infer request."""

    backend = "openvino"
    requirement = "openvino>=2024.0"
    #: accepted ``[backend_options]`` keys and their types
    OPTIONS = {"device": str, "inference_precision": Option(str, choices=("f32", "f16", "bf16")),
               "num_threads": Option(int, 0, 1024)}

    def __init__(self, root: Path, model: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        self.xml = Path(root) / model["net"]
        self.options = dict(options)
        self._request: Any = None
        self._names: list[str] = []

    @staticmethod
    def version() -> str:
        """Installed OpenVINO version. Raises ToolchainError when missing."""
        return str(_import().get_version()).split("-")[0]

    def __enter__(self) -> OpenVINORunner:
        ov = _import()
        config: dict[str, Any] = {}
        if self.options.get("inference_precision"):
            config["INFERENCE_PRECISION_HINT"] = str(self.options["inference_precision"])
        if self.options.get("num_threads"):
            config["INFERENCE_NUM_THREADS"] = int(self.options["num_threads"])
        try:
            core = ov.Core()
            compiled = core.compile_model(str(self.xml), str(self.options.get("device", "CPU")), config)
        except Exception as exc:  # openvino raises RuntimeError with multi-line text
            raise ToolchainError(f"OpenVINO cannot load {self.xml.name}: {str(exc).splitlines()[0]}") from None
        self._names = [o.get_any_name() for o in compiled.outputs]
        self._request = compiled.create_infer_request()
        return self

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once. Output arrays are copies (the request reuses its buffers)."""
        result = self._request.infer(dict(feed))
        return {name: np.array(result[i]) for i, name in enumerate(self._names)}

    def __exit__(self, *exc: object) -> None:
        self._request = None
