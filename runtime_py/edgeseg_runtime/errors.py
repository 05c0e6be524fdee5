"""Exceptions raised by the on-device runtime (and reused by the host package).

Every message is one line that says what went wrong and what to do::

    EdgesegError                 base of everything edgeseg raises on purpose
    ├── ArchiveError             archive missing, corrupt, truncated, unsafe or tampered
    ├── ImageError               an input image that cannot be used as it is
    ├── ToolchainError           a backend library (or tool) missing or failing
    └── VerifyError              golden outputs not reproduced within tolerance

The host package (``edgeseg.errors``) adds ConfigError, ConversionError and
AccuracyError under the same base.
"""

from __future__ import annotations

__all__ = ["EdgesegError", "ArchiveError", "ImageError", "ToolchainError", "VerifyError"]


class EdgesegError(Exception):
    """Base class; ``str(err)`` is a one-line, user-facing message."""


class ArchiveError(EdgesegError):
    """The archive cannot be used: corrupt, truncated, unsafe member, checksum mismatch."""


class ImageError(EdgesegError):
    """An input image cannot be read or is outside what the runtime accepts."""


class ToolchainError(EdgesegError):
    """A backend library or conversion tool is missing or failed."""


class VerifyError(EdgesegError):
    """Outputs do not match the golden reference within the target's tolerance."""
