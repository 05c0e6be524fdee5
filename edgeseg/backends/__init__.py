"""Host-side backends: each turns the shared ONNX into one target's model files.

One module per backend (``edgeseg/backends/<name>.py``), found by its name in
the runtime's registry (:data:`edgeseg_runtime.runners.REGISTRY`, which also
names the on-device runner). Every backend subclasses :class:`BaseBackend`:
it declares what it can do (:class:`Capabilities`), the ``[quantization.options]``
it takes (:class:`~edgeseg_runtime.runners.Option`, with defaults), and says a
toolchain's failure through :func:`translate_errors`. Modules import their
toolchain lazily, so ``import edgeseg`` works with none installed.
See ``docs/adding-a-backend.md``.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from edgeseg_runtime.runners import REGISTRY, Option, option_error, resolve, runner_class, tool_lines

from ..errors import ConfigError, ConversionError, EdgesegError, ToolchainError
from ..targets import Target

if TYPE_CHECKING:
    from .._progress import Step
    from ..calibration import CalibrationSet
    from ..spec import ModelSpec

__all__ = [
    "BACKENDS",
    "Backend",
    "BaseBackend",
    "Calibration",
    "Capabilities",
    "ModelFiles",
    "backend_class",
    "check_capabilities",
    "check_option_types",
    "get_backend",
    "log_errors",
    "static_input_shape",
    "translate_errors",
]


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


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; :func:`get_backend` checks a profile against it.

    Attributes:
        build_on: ``host`` (model files converted here) or ``device`` (TensorRT: the device builds its engine).
        precisions: what it builds (fp32 / fp16 / int8; int8 needs a :class:`Calibration`).
        calibration_methods: the ``[quantization] calibration_method`` values it understands.
        unavailable: precision -> why this backend cannot build it, said instead of the bare list.
        device_calibration: the build stores the calibration images as ``calibration/calibration.npz``
            for the device to calibrate with (TensorRT).
        wants_spec: ``convert`` reads its ``spec=`` (the model spec; CoreML image inputs). Every
            ``convert`` accepts it.
        static_shapes: it converts static-shape ONNX only: a model with dynamic axes (batch included) is
            exported with every axis fixed (batch 1, H/W from the spec's ``input.size``).
    """

    build_on: Literal["host", "device"] = "host"
    precisions: frozenset[str] = frozenset({"fp32"})
    calibration_methods: frozenset[str] = frozenset()
    unavailable: Mapping[str, str] = field(default_factory=dict, hash=False)
    device_calibration: bool = False
    wants_spec: bool = False
    static_shapes: bool = False


class BaseBackend:
    """Convert (and quantize) the shared ONNX for one target.

    Subclasses set :attr:`name`, :attr:`extra`, :attr:`capabilities` and
    :attr:`quant_options`, and write :meth:`versions` and :meth:`convert`.
    """

    name: ClassVar[str] = ""
    #: pip extra that installs the toolchain
    extra: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: accepted ``[quantization.options]`` keys, with their defaults
    quant_options: ClassVar[dict[str, Option]] = {}

    def versions(self) -> dict[str, str]:
        """Versions of the conversion toolchain. Raises ToolchainError when missing."""
        raise NotImplementedError

    def convert(self, onnx_path: Path, target: Target, out_dir: Path, calibration: Calibration | None = None, *,
                spec: ModelSpec | None = None) -> ModelFiles:
        """Write the target's model files into ``out_dir``. Raises ConversionError, ConfigError."""
        raise NotImplementedError

    def backend_options(self, target: Target) -> dict[str, Any]:
        """The profile's ``[backend_options]``, complete: every option the runner declares, defaults filled in."""
        return resolve(target.backend_options, runner_class(self.name).OPTIONS)

    def quantization_options(self, target: Target) -> dict[str, Any]:
        """The profile's ``[quantization.options]``, complete: every declared option, defaults filled in."""
        return resolve(target.quantization.options, self.quant_options)

    # ---- the old attribute names, thin aliases of :attr:`capabilities` until every caller reads it
    @property
    def build_on(self) -> str:
        return self.capabilities.build_on

    @property
    def precisions(self) -> frozenset[str]:
        return self.capabilities.precisions

    @property
    def calibration_methods(self) -> frozenset[str]:
        return self.capabilities.calibration_methods

    @property
    def unavailable(self) -> Mapping[str, str]:
        return self.capabilities.unavailable

    @property
    def device_calibration(self) -> bool:
        return self.capabilities.device_calibration

    @property
    def wants_spec(self) -> bool:
        return self.capabilities.wants_spec


#: the old name (a Protocol until the backends shared one base class)
Backend = BaseBackend
#: backend name -> "module:Class" of its host converter (derived from the runtime's registry)
BACKENDS: dict[str, str] = {name: f"{__name__}.{name}:{entry.host}" for name, entry in REGISTRY.items()}


def static_input_shape(model: Any) -> list[int] | None:
    """The first graph input's ``[N, C, H, W]`` when every dim is a fixed positive int; None when any is dynamic."""
    from ..export import tensor_dims

    dims = tensor_dims(model.graph.input[0])
    return [int(d) for d in dims] if all(isinstance(d, int) and d > 0 for d in dims) else None


def check_option_types(options: Mapping[str, Any], allowed: Mapping[str, Any], where: str) -> None:
    """Check option names, types, ranges and choices against ``allowed`` (``{name: type | Option}``).

    Raises:
        ConfigError: names the key (``<where>.<key>: why``).
    """
    for key, value in options.items():
        why = option_error(key, value, allowed)
        if why is not None:
            raise ConfigError(f"{where}.{key}: {why}")


_LOG_ERROR = re.compile(r"^E\d{4}|\berror\b|\bfail|not supported|unknown", re.IGNORECASE)


def log_errors(text: str) -> list[str]:
    """The lines of a tool's log that report an error (glog ``E0123``, "error", "fail", "not supported", "unknown")."""
    return [line.strip() for line in text.splitlines() if _LOG_ERROR.search(line)]


@contextlib.contextmanager
def translate_errors(tool: str, *, log: Path | None = None, error: type[EdgesegError] = ConversionError) -> Iterator[None]:
    """Say a toolchain's own exception as one :class:`ConversionError` (or ``error``) line, cause kept.

    The message is ``"<tool>: <the exception's first and last lines>"``, plus
    ``" (log: <last error lines>)"`` when ``log`` (a captured console log) has
    error lines; ``raise ... from exc`` keeps the original for a debugger. An
    :class:`EdgesegError` raised inside (a calibration image, an option) passes
    through as it is.

    Args:
        tool: what failed, as the user should read it (``"OpenVINO conversion failed"``).
        log: the tool's captured console output (:func:`edgeseg._capture.captured_output`), or None.
        error: ConversionError (default) or ToolchainError.
    """
    try:
        yield
    except EdgesegError:
        raise
    except Exception as exc:  # toolchains raise assorted errors
        text = tool_lines(str(exc)) or type(exc).__name__
        logged = log_errors(log.read_text(errors="replace")) if log is not None and log.is_file() else []
        if logged:
            text += f" (log: {tool_lines(chr(10).join(logged[-2:]), keep=2)})"
        raise error(f"{tool}: {text}") from exc


def backend_class(name: str) -> type[BaseBackend]:
    """The host converter class registered for a backend name (its module is imported, its toolchain is not).

    Raises:
        ToolchainError: no backend of that name in this version.
    """
    entry = REGISTRY.get(name)
    if entry is None:
        raise ToolchainError(f"backend {name!r} is not implemented in this edgeseg version; available: "
                             f"{', '.join(sorted(REGISTRY))}")
    cls: type[BaseBackend] = getattr(importlib.import_module(f"{__name__}.{name}"), entry.host)
    return cls


def check_capabilities(caps: Capabilities, target: Target) -> None:
    """Refuse a profile that asks a backend for what it cannot do.

    Raises:
        ConfigError: ``build_on`` other than the backend's (names both), a precision it does not build,
            or an int8 calibration method it does not have.
    """
    name, where = target.backend, f"targets/{target.name}.toml"
    if target.build_on != caps.build_on:
        raise ConfigError(
            f"target {target.name!r}: build_on = {target.build_on!r} but backend {name} builds on the {caps.build_on}; "
            f"set build_on = {caps.build_on!r} in {where}"
        )
    if target.precision not in caps.precisions:
        why = caps.unavailable.get(target.precision)
        if why:
            raise ConfigError(f"target {target.name!r}: no {target.precision} for {name}: {why}")
        raise ConfigError(
            f"target {target.name!r}: backend {name} builds {', '.join(sorted(caps.precisions))} in this "
            f"version, not {target.precision}; set precision in {where}"
        )
    method = target.quantization.calibration_method
    if target.precision == "int8" and method not in caps.calibration_methods:
        raise ConfigError(
            f"target {target.name!r}: {name} has no {method!r} calibration; use one of "
            f"{', '.join(sorted(caps.calibration_methods))} ([quantization] calibration_method)"
        )


def get_backend(target: Target) -> BaseBackend:
    """The backend for a target, checked against its capabilities and quantization options.

    Raises:
        ToolchainError: backend not implemented in this version.
        ConfigError: ``build_on`` other than the backend's, a precision it does not build, or a
            ``[quantization]`` method/option it does not have.
    """
    backend = backend_class(target.backend)()
    check_capabilities(backend.capabilities, target)
    check_option_types(target.quantization.options, backend.quant_options, f"target {target.name!r}: quantization.options")
    return backend
