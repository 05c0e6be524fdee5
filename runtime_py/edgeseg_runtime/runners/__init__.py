"""Inference runners: one small module per backend, imported lazily.

Every runner follows Polygraphy's template (activate / infer / deactivate) as
a context manager::

    with open_runner(archive) as runner:
        outputs = runner.infer({"input": tensor})   # dict name -> ndarray

A new backend adds one module here and one line in :data:`RUNNERS`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Optional, Protocol, Tuple

import numpy as np

from ..errors import ArchiveError, ToolchainError

__all__ = ["Runner", "RUNNERS", "Option", "option_error", "runner_class", "open_runner", "import_backend"]


@dataclass(frozen=True)
class Option:
    """A declared runner option (a target profile's ``[backend_options]`` key).

    Attributes:
        type: ``int``, ``float``, ``str``, ``bool`` or ``list``.
        low, high: inclusive range of a number (None = open).
        choices: the allowed strings (None = any).
        items: the type of a list's items.
    """

    type: type
    low: Optional[float] = None
    high: Optional[float] = None
    choices: Optional[Tuple[str, ...]] = None
    items: type = str


def option_error(key: str, value: Any, allowed: Mapping[str, Any]) -> Optional[str]:
    """Why ``key = value`` is not a valid option among ``allowed`` (``{name: type | Option}``), or None."""
    if key not in allowed:
        return f"unknown option (known: {', '.join(sorted(allowed)) or 'none'})"
    spec = allowed[key] if isinstance(allowed[key], Option) else Option(allowed[key])
    kind = spec.type
    numeric_ok = kind is float and isinstance(value, int)
    if (not isinstance(value, kind) and not numeric_ok) or (isinstance(value, bool) and kind is not bool):
        return f"expected {kind.__name__}, got {repr(value)[:40]}"
    if spec.low is not None and value < spec.low or spec.high is not None and value > spec.high:
        return f"{value!r} is outside [{spec.low}, {spec.high}]"
    if spec.choices is not None and value not in spec.choices:
        return f"{str(value)[:40]!r} is not one of {', '.join(spec.choices)}"
    if kind is list and not all(isinstance(v, spec.items) and not isinstance(v, bool) for v in value):
        return f"expected a list of {spec.items.__name__}"
    return None


class Runner(Protocol):
    """What every backend runner provides."""

    backend: str  # backend name, as in target profiles
    requirement: str  # pip requirement of the backend library on the device
    OPTIONS: dict[str, type]  # accepted target-profile [backend_options] keys and their types

    def __init__(self, root: Path, model: Mapping[str, Any], options: Mapping[str, Any]) -> None: ...
    def __enter__(self) -> Runner: ...
    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...
    def __exit__(self, *exc: object) -> None: ...
    @staticmethod
    def version() -> str: ...

    # optional: ``plan(model, options) -> list[str]`` (``edgeseg info`` lines on what happens on the
    # device), ``system_requirement`` (the device's system provides the library: not pip-installed) and
    # ``constraints`` (extra pip requirements the backend needs on the device, e.g. ``numpy<2.4``)


#: backend name -> "module:Class" of its runner
RUNNERS: dict[str, str] = {
    "onnxruntime": "edgeseg_runtime.runners.onnxruntime:OnnxRuntimeRunner",
    "openvino": "edgeseg_runtime.runners.openvino:OpenVINORunner",
    "tensorrt": "edgeseg_runtime.runners.tensorrt:TensorRTRunner",
    "coreml": "edgeseg_runtime.runners.coreml:CoreMLRunner",
    "ncnn": "edgeseg_runtime.runners.ncnn:NcnnRunner",
    "tflite": "edgeseg_runtime.runners.tflite:TFLiteRunner",
}


def import_backend(module: str, extra: str) -> ModuleType:
    """Import a backend library lazily.

    Args:
        module: import name (``onnxruntime``, ``openvino``, ...).
        extra: the edgeseg extra that installs it on the host.

    Raises:
        ToolchainError: not installed; says what to pip install.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ToolchainError(
            f"{module} is not installed ({exc}); on a device: pip install {module}, on the host: "
            f"pip install 'edgeseg[{extra}]'"
        ) from None


def runner_class(backend: str) -> type[Runner]:
    """The runner class for a backend name (its module is imported, the backend library is not).

    Raises:
        ToolchainError: no runner exists for that backend in this runtime.
    """
    try:
        module, _, cls = RUNNERS[backend].partition(":")
    except KeyError:
        raise ToolchainError(
            f"this runtime has no runner for backend {backend!r} (known: {', '.join(sorted(RUNNERS))}); "
            "use the runtime shipped in the archive's runtime/ folder"
        ) from None
    return getattr(importlib.import_module(module), cls)


def _check_options(name: Any, options: Mapping[str, Any]) -> None:
    """Options reaching a runner from a manifest are untrusted: check names, types and ranges."""
    if not isinstance(options, Mapping):
        raise ArchiveError(f"manifest.json: {name} options are not an object")
    if not isinstance(name, str) or name not in RUNNERS:
        return  # runner_class says which backends exist
    allowed = runner_class(name).OPTIONS
    for key, value in options.items():
        why = option_error(key, value, allowed)
        if why is not None:
            raise ArchiveError(f"manifest.json: {name} option {str(key)[:40]}: {why}")


def open_runner(
    root: Path,
    backend: Mapping[str, Any],
    options: Mapping[str, Any] | None = None,
    report: Callable[[str], None] | None = None,
) -> Runner:
    """Build (not yet activate) the runner for an archive's ``backend`` manifest section.

    When the backend is not usable here and the section names a ``fallback``
    (the profile's ``fallback_backend``, e.g. ONNX Runtime for a TensorRT
    target), the fallback runner is returned instead and ``report`` (default:
    stderr) gets one line saying so: a fallback is never silent. The runner's
    ``backend`` attribute says which one runs.

    Args:
        root: the archive folder.
        backend: ``{"name": ..., "net": ..., "weights": ..., "fallback": {...}}`` from the manifest.
        options: backend options from the target profile, optionally overridden.
        report: where the fallback line goes.

    Raises:
        ToolchainError: the backend is missing here and there is no fallback (or it is missing too).
    """
    _check_options(backend.get("name"), options or {})
    fallback = backend.get("fallback")
    if fallback:
        _check_options(fallback.get("name"), fallback.get("options", {}))
        try:
            runner_class(backend["name"]).version()
        except ToolchainError as exc:
            cls = runner_class(fallback["name"])
            cls.version()  # raises when the fallback is missing too
            say = report or (lambda line: print(line, file=sys.stderr, flush=True))
            say(f"edgeseg: {exc}; running the profile's fallback_backend {fallback['name']} instead")
            return cls(root, fallback, dict(fallback.get("options", {})))
    return runner_class(backend["name"])(root, backend, dict(options or {}))
