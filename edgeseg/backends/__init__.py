"""Host-side backends: each turns the shared ONNX into one target's model files.

One module per backend, one line in :data:`BACKENDS`; modules import their
toolchain lazily, so ``import edgeseg`` works with none installed. The
matching on-device runner lives in ``edgeseg_runtime.runners``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np

from ..errors import ConfigError, ToolchainError
from ..targets import BACKENDS as PLANNED, Target

if TYPE_CHECKING:
    from .._progress import Step
    from ..calibration import CalibrationSet

__all__ = ["Backend", "ModelFiles", "Calibration", "BACKENDS", "get_backend", "check_option_types", "static_input_shape"]


@dataclass(frozen=True)
class ModelFiles:
    """What a conversion wrote, relative to the archive root.

    Attributes:
        net: the file the runner loads (``end2end.onnx``, ``end2end.xml``, ...).
        weights: separate weights file, or "" (MMDeploy deploy.json convention).
        files: every file written.
        details: backend facts recorded in the manifest (options used, versions).
    """

    net: str
    weights: str = ""
    files: tuple[str, ...] = ()
    details: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Calibration:
    """What an int8 quantizer gets from the build.

    Attributes:
        images: the calibration set (pre-processing included).
        validation: ``(input, reference_labels)`` pairs from the evaluation set:
            ``(1, 3, H, W)`` float32 inputs and the fp32 reference's ``(h, w)``
            labels at the network's output size, for accuracy-controlled quantizers.
        num_classes: C.
        step: progress step (calibration passes advance it), or None.
    """

    images: CalibrationSet
    validation: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
    num_classes: int = 2
    step: Step | None = None

    def tensors(self) -> Iterator[np.ndarray]:
        """The calibration inputs, advancing the progress bar."""
        items = self.images.tensors()
        return self.step.track(items, len(self.images), "calibration images") if self.step else items


class Backend(Protocol):
    """Convert (and quantize) the shared ONNX for one target.

    ``precisions`` lists what the backend builds; ``int8`` needs a
    :class:`Calibration`. ``calibration_methods`` and ``quant_options`` (name →
    type) say which ``[quantization]`` settings it understands.

    Optional class attributes: ``unavailable`` (precision → why this backend
    cannot build it here, said instead of the bare list), ``device_calibration = True`` (the build stores
    the calibration images as ``calibration/calibration.npz`` for the device to
    calibrate with: TensorRT) and ``wants_spec = True`` (``convert`` also takes
    ``spec=``, the model spec: CoreML image inputs).
    """

    name: ClassVar[str]
    extra: ClassVar[str]  # pip extra that installs the toolchain
    build_on: ClassVar[Literal["host", "device"]]
    precisions: ClassVar[frozenset[str]]
    calibration_methods: ClassVar[frozenset[str]]
    quant_options: ClassVar[dict[str, type]]

    def versions(self) -> dict[str, str]:
        """Versions of the conversion toolchain. Raises ToolchainError when missing."""
        ...

    def convert(self, onnx_path: Path, target: Target, out_dir: Path, calibration: Calibration | None = None) -> ModelFiles:
        """Write the target's model files into ``out_dir``. Raises ConversionError, ConfigError."""
        ...


def static_input_shape(model: Any) -> list[int] | None:
    """The first graph input's ``[N, C, H, W]`` when every dim is a fixed positive int; None when any is dynamic."""
    from ..export import tensor_dims

    dims = tensor_dims(model.graph.input[0])
    return [int(d) for d in dims] if all(isinstance(d, int) and d > 0 for d in dims) else None


def check_option_types(options: dict[str, Any], allowed: dict[str, Any], where: str) -> None:
    """Check option names, types and ranges against ``allowed`` (``{name: type | Option}``); ConfigError names the key."""
    from edgeseg_runtime.runners import option_error

    for key, value in options.items():
        why = option_error(key, value, allowed)
        if why is not None:
            raise ConfigError(f"{where}.{key}: {why}")


#: backend name -> "module:Class"
BACKENDS: dict[str, str] = {
    "onnxruntime": "edgeseg.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "edgeseg.backends.openvino:OpenVINOBackend",
    "tensorrt": "edgeseg.backends.tensorrt:TensorRTBackend",
    "coreml": "edgeseg.backends.coreml:CoreMLBackend",
    "ncnn": "edgeseg.backends.ncnn:NcnnBackend",
    "tflite": "edgeseg.backends.tflite:TFLiteBackend",
}


def get_backend(target: Target) -> Backend:
    """The backend for a target, checked against its precision and quantization settings.

    Raises:
        ToolchainError: backend not implemented in this version.
        ConfigError: the backend does not build the profile's precision, or a
            ``[quantization]`` method/option it does not have.
    """
    name = target.backend
    if name not in BACKENDS:
        planned = " (planned)" if name in PLANNED else ""
        raise ToolchainError(
            f"backend {name!r}{planned} is not implemented in this edgeseg version; "
            f"available: {', '.join(sorted(BACKENDS))}"
        )
    module, _, cls = BACKENDS[name].partition(":")
    backend: Backend = getattr(importlib.import_module(module), cls)()
    if target.precision not in backend.precisions:
        why = getattr(backend, "unavailable", {}).get(target.precision)
        if why:
            raise ConfigError(f"target {target.name!r}: no {target.precision} for {name}: {why}")
        raise ConfigError(
            f"target {target.name!r}: backend {name} builds {', '.join(sorted(backend.precisions))} in this "
            f"version, not {target.precision}; set precision in targets/{target.name}.toml"
        )
    q = target.quantization
    if target.precision == "int8" and q.calibration_method not in backend.calibration_methods:
        raise ConfigError(
            f"target {target.name!r}: {name} has no {q.calibration_method!r} calibration; use one of "
            f"{', '.join(sorted(backend.calibration_methods))} ([quantization] calibration_method)"
        )
    check_option_types(q.options, backend.quant_options, f"target {target.name!r}: quantization.options")
    return backend
