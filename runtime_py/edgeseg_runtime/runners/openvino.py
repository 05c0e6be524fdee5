"""OpenVINO runner (IR ``.xml`` + ``.bin``).

Source: OpenVINO Python API, ``openvino.Core.compile_model`` and
``InferRequest`` (https://docs.openvino.ai/2026/api/ie_python_api/api.html).

Options (target profile ``[backend_options]``): see :attr:`OpenVINORunner.OPTIONS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ToolchainError
from . import BaseRunner, Option, error_text, import_backend


def _import() -> Any:
    return import_backend("openvino", extra="openvino")


class OpenVINORunner(BaseRunner):
    """Runs an OpenVINO IR with a synchronous infer request."""

    backend = "openvino"
    requirement = "openvino>=2024.0"
    THREADS: ClassVar[str] = "num_threads"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "device": Option(str, default="CPU", doc="OpenVINO device (CPU, GPU, ...)"),
        "inference_precision": Option(str, choices=("f32", "f16", "bf16", "auto"),
                                      doc="unset = the plugin's default, which is bf16 on CPUs with AMX/AVX512-BF16; "
                                      "auto = f16 where the device computes fp16 natively (its OPTIMIZATION_CAPABILITIES "
                                      "list FP16), else f32 (fp16 archives of the shipped intel profile)"),
        "num_threads": Option(int, 0, 1024, default=0, doc="0 = the plugin's choice"),
    }

    def __init__(self, root: Path, model: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        super().__init__(root, model, options)
        self.xml = self.root / model["net"]

    @staticmethod
    def version() -> str:
        """Installed OpenVINO version. Raises ToolchainError when missing."""
        return str(_import().get_version()).split("-")[0]

    def _activate_impl(self) -> None:
        ov = _import()
        config: dict[str, Any] = {}
        precision = self.options["inference_precision"]
        if precision == "auto":
            try:
                caps = ov.Core().get_property(str(self.options["device"]), "OPTIMIZATION_CAPABILITIES")
            except Exception:  # noqa: BLE001  a device without the property: no native fp16 claimed
                caps = []
            precision = "f16" if "FP16" in caps else "f32"
        #: what the device computes in (``f32``/``f16``/``bf16``; "" = the plugin's default)
        self.compute_precision = str(precision or "")
        if precision:
            config["INFERENCE_PRECISION_HINT"] = str(precision)
        if self.options["num_threads"]:
            config["INFERENCE_NUM_THREADS"] = int(self.options["num_threads"])
        try:
            compiled = ov.Core().compile_model(str(self.xml), str(self.options["device"]), config)
        except Exception as exc:  # openvino raises RuntimeError with multi-line text
            raise ToolchainError(f"OpenVINO cannot load {self.xml.name}: {error_text(exc)}") from exc
        self._names = [o.get_any_name() for o in compiled.outputs]
        self.inputs = {name: _dtype(port) for port in compiled.inputs for name in port.get_names()}  # every alias
        self.input_count = len(compiled.inputs)
        self._request = compiled.create_infer_request()

    def _infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self._request.infer(dict(feed))
        return {name: np.array(result[i]) for i, name in enumerate(self._names)}  # copies: the request reuses its buffers

    def _deactivate_impl(self) -> None:
        self._request = None


def _dtype(port: Any) -> Any:
    """The numpy dtype of a compiled model's input port (None when OpenVINO has no numpy equivalent)."""
    try:
        return np.dtype(port.get_element_type().to_dtype())
    except Exception:  # noqa: BLE001  dynamic or exotic element types: not checked
        return None
