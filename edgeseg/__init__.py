"""edgeseg: take a trained semantic-segmentation model to edge devices and prove it still works there.

Public API::

    import edgeseg

    result = edgeseg.build(target="intel")              # embedded default model
    result = edgeseg.build("model.onnx", target="cpu", spec="model.toml")
    print(result.archive)                               # dist/<model>-<target>.tar.gz

No inference backend is imported until a build or run needs it; a missing
one raises :class:`~edgeseg.errors.ToolchainError` naming the extra to install.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .build import DEFAULT_MODEL, SAMPLE_IMAGES, BuildResult, build
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

__all__ = [
    "__version__",
    "build",
    "BuildResult",
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
