"""edgeseg: take a trained semantic-segmentation model to edge devices and prove it still works there.

Public API::

    import edgeseg

    result = edgeseg.build(target="intel")              # embedded default model
    result = edgeseg.build("model.onnx", target="cpu", spec="model.toml")
    print(result.archive)                               # dist/<model>-<target>-<precision>.tar.gz
    edgeseg.build_for_device(target="jetson", device="jet-01", inventory="devices.toml")  # + its TensorRT engine

``import edgeseg`` imports nothing but :mod:`edgeseg._version`: every name
below is imported on first use (PEP 562, as :mod:`edgeseg_runtime`). No
inference backend is imported until a build or run needs it; a missing one
raises :class:`~edgeseg.errors.ToolchainError` naming the extra to install.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .build import DEFAULT_MODEL, SAMPLE_IMAGES, BuildResult, build
    from .deploy.engine import DeviceBuild, build_for_device
    from .errors import (
        AccuracyError,
        ArchiveError,
        ConfigError,
        ConversionError,
        DeployError,
        EdgesegError,
        ImageError,
        InstallError,
        SignatureError,
        ToolchainError,
        VerifyError,
    )
    from .spec import DEFAULT_SPEC, ModelSpec, load_spec
    from .targets import Target, list_targets, load_target

#: public name -> the submodule that defines it (imported on first use)
_LAZY = {
    **dict.fromkeys(("build", "BuildResult", "DEFAULT_MODEL", "SAMPLE_IMAGES"), "build"),
    **dict.fromkeys(("build_for_device", "DeviceBuild"), "deploy.engine"),
    **dict.fromkeys(("DEFAULT_SPEC", "ModelSpec", "load_spec"), "spec"),
    **dict.fromkeys(("Target", "load_target", "list_targets"), "targets"),
    **dict.fromkeys(
        ("EdgesegError", "ArchiveError", "ImageError", "ToolchainError", "VerifyError", "AccuracyError", "ConfigError",
         "ConversionError", "DeployError", "InstallError", "SignatureError"),
        "errors",
    ),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # once imported, a plain attribute
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    """The package object: importing the submodule ``edgeseg.build`` leaves ``edgeseg.build`` the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        # the import system sets a package attribute per imported submodule; for a submodule named like the
        # function it defines (edgeseg.build), the attribute is the function, as when __init__ imported it
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == name and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "__version__",
    "build",
    "BuildResult",
    "build_for_device",
    "DeviceBuild",
    "DEFAULT_MODEL",
    "DEFAULT_SPEC",
    "SAMPLE_IMAGES",
    "ModelSpec",
    "load_spec",
    "Target",
    "load_target",
    "list_targets",
    "EdgesegError",
    "ArchiveError",
    "ImageError",
    "ToolchainError",
    "VerifyError",
    "AccuracyError",
    "ConfigError",
    "ConversionError",
    "DeployError",
    "InstallError",
    "SignatureError",
]
