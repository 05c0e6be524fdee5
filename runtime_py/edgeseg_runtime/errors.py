"""Exceptions raised by the on-device runtime (and reused by the host package).

Every message is one line that says what went wrong and what to do::

    EdgesegError                 base of everything edgeseg raises on purpose
    ├── ArchiveError             archive missing, corrupt, truncated, unsafe or tampered
    │   └── SignatureError       unsigned, untrusted or non-matching signature
    ├── ImageError               an input image that cannot be used as it is
    ├── ToolchainError           a backend library (or tool) missing or failing
    ├── VerifyError              golden outputs not reproduced within tolerance
    └── InstallError             an on-device install refused or failed (device kept its version)

The host package (``edgeseg.errors``) adds ConfigError, ConversionError and
AccuracyError under the same base.
"""

from __future__ import annotations

__all__ = ["EdgesegError", "ArchiveError", "SignatureError", "ImageError", "ToolchainError", "VerifyError", "InstallError",
           "exit_code"]


class EdgesegError(Exception):
    """Base class; ``str(err)`` is a one-line, user-facing message."""


class ArchiveError(EdgesegError):
    """The archive cannot be used: corrupt, truncated, unsafe member, checksum mismatch."""


class SignatureError(ArchiveError):
    """The archive's signature is missing, made by an untrusted key, or does not match its manifest."""


class ImageError(EdgesegError):
    """An input image cannot be read or is outside what the runtime accepts."""


class ToolchainError(EdgesegError):
    """A backend library or conversion tool is missing or failed."""


class VerifyError(EdgesegError):
    """Outputs do not match the golden reference within the target's tolerance."""


class InstallError(EdgesegError):
    """An on-device install was refused or failed; the device still runs its previous version."""


def exit_code(exc: BaseException) -> int:
    """The exit code of a command that stopped on ``exc``: 1 when a measured check failed
    (:class:`VerifyError` and its subclasses, e.g. a build's accuracy gate), 2 when it could not run."""
    return 1 if isinstance(exc, VerifyError) else 2
