"""Reading input images and writing label maps, with Pillow.

Images are returned as ``(H, W, 3)`` uint8 RGB arrays in display orientation
(the EXIF orientation tag is applied). Conversions made on load:

===========================  ===============================================
Pillow mode                  what happens
===========================  ===============================================
RGB                          used as is
L, 1, P, LA, PA, RGBA, CMYK  converted to RGB (alpha is dropped, not blended)
I;16 / I;16B / I;16L / I     16-bit grey scaled to 8 bits (value >> 8), then RGB
F (32-bit float) and others  refused with :class:`ImageError`
===========================  ===============================================
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "load_image",
    "iter_image_paths",
    "save_label_map",
    "overlay",
]

#: Largest image accepted by default, in pixels (width x height): 64 MP.
#: A guard against decompression bombs; raise it with ``max_pixels``.
DEFAULT_MAX_PIXELS = 64_000_000

#: File suffixes picked up when a folder is given.
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm", ".gif"}
)

_CONVERTIBLE = frozenset({"L", "1", "P", "LA", "PA", "La", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


def load_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file into an RGB array.

    Args:
        path: any file Pillow can decode (PNG, JPEG, BMP, TIFF, WebP, ...).
        max_pixels: refuse images with more than this many pixels, checked
            from the header before decoding.

    Returns:
        ``(H, W, 3)`` uint8 C-contiguous array, RGB, EXIF orientation applied.

    Raises:
        ImageError: missing file, not an image, truncated or corrupt data,
            too many pixels, or a pixel format that cannot be converted.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    try:
        with warnings.catch_warnings():
            # our own limit below replaces Pillow's warning (its hard limit, 2 x 89 MP, still applies)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageError(
                        f"{path}: {width}x{height} is {width * height / 1e6:.1f} MP, over the limit of "
                        f"{max_pixels / 1e6:.1f} MP (decompression-bomb guard); raise --max-pixels if you trust it"
                    )
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb_array(img, path)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: refused as a possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: cannot decode image ({exc}); the file is truncated or corrupt") from None


def _to_rgb_array(img: Image.Image, path: Path) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img)
    if mode in _CONVERTIBLE:
        return np.asarray(img.convert("RGB"))
    if mode in _SIXTEEN_BIT:
        grey = np.asarray(img)
        if grey.min() < 0 or grey.max() > 65535:
            raise ImageError(f"{path}: 32-bit integer image with values outside 0..65535; convert it to 8-bit RGB")
        grey8 = (grey.astype(np.uint32) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey8[:, :, None], 3, axis=2))
    raise ImageError(f"{path}: pixel format {mode!r} is not supported; convert the image to 8-bit RGB")


def iter_image_paths(inputs: Iterable[str | Path]) -> Iterator[Path]:
    """Expand files and folders into image paths.

    Folders are listed (not recursively) in sorted order, keeping files whose
    suffix is in :data:`IMAGE_SUFFIXES`; files given directly are always kept,
    so that a bad one is reported rather than skipped.

    Raises:
        ImageError: an input that does not exist, or a folder with no images.
    """
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(c for c in p.iterdir() if c.is_file() and c.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ImageError(f"{p}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            yield from found
        elif p.exists():
            yield p
        else:
            raise ImageError(f"{p}: no such file or folder")


def save_label_map(labels: np.ndarray, path: str | Path, palette: Sequence[Sequence[int]] | None) -> None:
    """Write a label map as a single-channel PNG.

    Args:
        labels: ``(H, W)`` uint8 (palette attached, mode ``P``) or uint16
            (16-bit grey, for more than 256 classes) class ids.
        path: destination ``.png``.
        palette: RGB triples indexed by class id; unused entries are black.
    """
    if labels.dtype == np.uint8:
        img = Image.fromarray(labels)  # mode L; putpalette turns it into P
        if palette:
            flat = [int(v) for rgb in palette[:256] for v in rgb]
            img.putpalette(flat + [0] * (768 - len(flat)))
    else:
        img = Image.fromarray(labels.astype(np.uint16))  # 16-bit grey
    img.save(path, format="PNG", compress_level=6)


def overlay(rgb: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5) -> np.ndarray:
    """Blend class colours over an image.

    Args:
        rgb: ``(H, W, 3)`` uint8 image.
        labels: ``(H, W)`` integer class ids of the same size.
        palette: ``(C, 3)`` RGB colours; class 0 is left unblended (background).
        alpha: colour weight in [0, 1].

    Returns:
        ``(H, W, 3)`` uint8 blended image.
    """
    colours = np.asarray(palette, dtype=np.float32)
    out = rgb.astype(np.float32)
    mask = labels > 0
    if mask.any():
        lab = np.clip(labels[mask], 0, len(colours) - 1)
        out[mask] = (1.0 - alpha) * out[mask] + alpha * colours[lab]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
