"""edgeseg_runtime: the minimal on-device runtime shipped inside every edgeseg archive.

It depends only on the standard library, numpy, Pillow and the one inference
backend named by the archive (imported lazily inside its runner).

Public surface::

    from edgeseg_runtime import Archive, Segmentor, load_image, verify_archive

    with Archive.open("dist/selfie_segmentation-cpu-fp32.tar.gz") as archive, Segmentor(archive) as seg:
        result = seg.segment(load_image("photo.jpg"))
        result.labels        # (H, W) uint8 class ids at the photo's size
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

from .archive import Archive
from .errors import ArchiveError, EdgesegError, ImageError, ToolchainError, VerifyError

if TYPE_CHECKING:
    from .images import load_image
    from .segmentor import Segmentation, Segmentor
    from .verify import VerifyReport, verify_archive

#: names imported on first use (PEP 562): they need numpy/Pillow, which the installer
#: (``python -m edgeseg_runtime.agent`` on a fresh device) must not, since it installs them
_LAZY = {"load_image": "images", "Segmentation": "segmentor", "Segmentor": "segmentor",
         "VerifyReport": "verify", "verify_archive": "verify"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "__version__",
    "Archive",
    "Segmentor",
    "Segmentation",
    "load_image",
    "verify_archive",
    "VerifyReport",
    "EdgesegError",
    "ArchiveError",
    "ImageError",
    "ToolchainError",
    "VerifyError",
]
