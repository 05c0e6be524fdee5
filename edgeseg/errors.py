"""Exceptions edgeseg raises; every message is one line that says what to do.

::

    EdgesegError
    ├── ArchiveError        (runtime) corrupt, truncated, unsafe or tampered archive
    │   └── SignatureError  (runtime) unsigned, untrusted key, or signature not matching the manifest
    ├── ImageError          (runtime) an image that cannot be used
    ├── ToolchainError      (runtime) a backend or tool missing/failing; names the extra to install
    ├── VerifyError         (runtime) outputs outside the target's tolerance
    │   └── AccuracyError   a build's measured accuracy is outside its budget
    ├── InstallError        (runtime) an on-device install refused or failed; the device kept its version
    ├── ConfigError         a target profile, model spec, inventory or option that is invalid
    ├── ConversionError     export or backend conversion failed (carries the tool's last error lines)
    └── DeployError         a device could not be reached or updated (unknown host key, dead link, disk full)
"""

from __future__ import annotations

from edgeseg_runtime.errors import (
    ArchiveError,
    EdgesegError,
    ImageError,
    InstallError,
    SignatureError,
    ToolchainError,
    VerifyError,
)

__all__ = [
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


class ConfigError(EdgesegError):
    """A target profile, model spec or option is invalid or contradicts the model."""


class ConversionError(EdgesegError):
    """Exporting or converting the model failed."""


class AccuracyError(VerifyError):
    """The built model misses the accuracy budget of its target profile."""


class DeployError(EdgesegError):
    """A device could not be reached or updated; its installed version is unchanged."""
