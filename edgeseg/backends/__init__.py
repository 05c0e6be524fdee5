"""Host-side backends: each turns the shared ONNX into one target's model files.

One module per backend, one line in :data:`BACKENDS`; modules import their
toolchain lazily, so ``import edgeseg`` works with none installed. The
matching on-device runner lives in ``edgeseg_runtime.runners``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, Protocol

from ..errors import ConfigError, ToolchainError
from ..targets import BACKENDS as PLANNED, Target

__all__ = ["Backend", "ModelFiles", "BACKENDS", "get_backend"]


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


class Backend(Protocol):
    """Convert the shared ONNX for one target."""

    name: ClassVar[str]
    extra: ClassVar[str]  # pip extra that installs the toolchain
    build_on: ClassVar[Literal["host", "device"]]
    precisions: ClassVar[frozenset[str]]

    def versions(self) -> dict[str, str]:
        """Versions of the conversion toolchain. Raises ToolchainError when missing."""
        ...

    def convert(self, onnx_path: Path, target: Target, out_dir: Path) -> ModelFiles:
        """Write the target's model files into ``out_dir``. Raises ConversionError."""
        ...


#: backend name -> "module:Class"
BACKENDS: dict[str, str] = {
    "onnxruntime": "edgeseg.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "edgeseg.backends.openvino:OpenVINOBackend",
}


def get_backend(target: Target) -> Backend:
    """The backend for a target, checked against its precision.

    Raises:
        ToolchainError: backend not implemented in this version.
        ConfigError: the backend does not build the profile's precision.
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
        raise ConfigError(
            f"target {target.name!r}: backend {name} builds {', '.join(sorted(backend.precisions))} in this "
            f"version, not {target.precision}; set precision in targets/{target.name}.toml"
        )
    return backend
