"""edgeseg_runtime: the minimal on-device runtime shipped inside every edgeseg archive.

It depends only on the standard library, numpy, Pillow and the one inference
backend named by the archive (imported lazily inside its runner).

Public surface::

    from edgeseg_runtime import Archive, Segmentor, load_image, verify_archive

    with Archive.open("dist/selfie_segmentation-cpu.tar.gz") as archive, Segmentor(archive) as seg:
        result = seg.segment(load_image("photo.jpg"))
        result.labels        # (H, W) uint8 class ids at the photo's size
"""

from __future__ import annotations

__version__ = "0.1.0"

from .archive import Archive
from .errors import ArchiveError, EdgesegError, ImageError, ToolchainError, VerifyError
from .images import load_image
from .segmentor import Segmentation, Segmentor
from .verify import VerifyReport, verify_archive

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
