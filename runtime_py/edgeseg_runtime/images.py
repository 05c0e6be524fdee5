"""Reading input images and writing label maps, with Pillow.

Images are returned as ``(H, W, C)`` arrays in display orientation (the EXIF
orientation tag is applied), in one of the read modes a model's pipeline
asks for (:data:`READ_MODES`, Pillow's mode names):

=========  =====================  ==============================================================
mode       array                  from other files
=========  =====================  ==============================================================
``RGB``    ``(H, W, 3)`` uint8    L, 1, P, LA, PA, RGBA, CMYK converted (alpha dropped, not
                                  blended); 16-bit grey scaled to 8 bits (value >> 8)
``L``      ``(H, W, 1)`` uint8    colour converted to luma (ITU-R 601-2, Pillow ``L``); 16-bit >> 8
``LA``     ``(H, W, 2)`` uint8    converted by Pillow (opaque alpha where the file has none)
``RGBA``   ``(H, W, 4)`` uint8    converted by Pillow (opaque alpha where the file has none)
``I;16``   ``(H, W, 1)`` uint16   16-bit grey as stored, never shifted to 8 bits (32-bit integer
                                  files within 0..65535 too); 8-bit files scaled by 257
                                  (0..255 → 0..65535, the same brightness), colour via luma
``F``      ``(H, W, 1)`` float32  32-bit float TIFFs as stored; integer files as their values
=========  =====================  ==============================================================

Other Pillow modes, and 32-bit integer files outside 0..65535, are refused
with :class:`ImageError`.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .contract import READ_MODE_CHANNELS
from .errors import ImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "READ_MODES",
    "save_image",
    "FORMATS",
    "IMAGE_SUFFIXES",
    "load_label_map",
    "save_scores",
    "load_image",
    "iter_image_paths",
    "save_label_map",
    "overlay",
]

#: Largest image accepted by default, in pixels (width x height): 64 MP.
#: A guard against decompression bombs; raise it with ``max_pixels``.
DEFAULT_MAX_PIXELS = 64_000_000

#: The only formats decoded, whatever a file's name or content says (Pillow format ids; "JPEG" also
#: opens multi-picture JPEGs, as phones write). Everything else (EPS, which runs Ghostscript, PSD,
#: ICO, ...) is refused without reaching its decoder.
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "PPM", "GIF")

#: rows converted at a time when decoding and blending (bounds the temporary memory)
BAND_ROWS = 256

#: File suffixes picked up when a folder is given.
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm", ".gif"}
)

_CONVERTIBLE = frozenset({"L", "1", "P", "LA", "PA", "La", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "RGB"})
_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})

#: read mode -> (channels, numpy dtype) of the arrays :func:`load_image` returns
READ_MODES = {mode: (channels, {"I;16": "uint16", "F": "float32"}.get(mode, "uint8"))
              for mode, channels in READ_MODE_CHANNELS.items()}


def load_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, mode: str = "RGB") -> np.ndarray:
    """Decode an image file into an array (module doc for the modes and conversions).

    Args:
        path: any file Pillow can decode (PNG, JPEG, BMP, TIFF, WebP, ...).
        max_pixels: refuse images with more than this many pixels, checked
            from the header before decoding.
        mode: read mode, one of :data:`READ_MODES` (a model's pipeline says which).

    Returns:
        ``(H, W, C)`` C-contiguous array of the mode's channels and dtype
        (``RGB``: ``(H, W, 3)`` uint8), EXIF orientation applied.

    Raises:
        ImageError: missing file, not an image, truncated or corrupt data,
            too many pixels, or a pixel format that cannot be converted.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    try:
        with warnings.catch_warnings():
            # our own limit below replaces Pillow's bomb warning (its hard limit, 2 x 89 MP, still applies), and
            # decoder warnings ("Corrupt EXIF data") are not errors: they must not add lines to the output
            warnings.simplefilter("ignore")
            with Image.open(path, formats=FORMATS) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageError(
                        f"{path}: {width}x{height} is {width * height / 1e6:.1f} MP, over the limit of "
                        f"{max_pixels / 1e6:.1f} MP (decompression-bomb guard); raise --max-pixels if you trust it"
                    )
                img.load()
                rgb = _to_rgb_array(img, path) if mode == "RGB" else _to_array(img, path, mode)
                orientation = img.getexif().get(_ORIENTATION, 1)
            return _orient(rgb, orientation)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: refused as a possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file in a format the runtime reads ({', '.join(FORMATS)})") from None
    except MemoryError:
        raise ImageError(f"{path}: not enough memory to decode it; lower --max-pixels or free memory") from None
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, struct.error, EOFError, ZeroDivisionError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise ImageError(f"{path}: cannot decode image ({first}); the file is truncated or corrupt") from None


def _to_rgb_array(img: Image.Image, path: Path) -> np.ndarray:
    """The decoded image as ``(H, W, 3)`` uint8 RGB, converted a band of rows at a time.

    Converting in bands keeps the peak at Pillow's image plus the output
    array (``np.asarray`` of a whole image would add one or two more copies).
    """
    mode = img.mode
    if mode != "RGB" and mode not in _CONVERTIBLE and mode not in _SIXTEEN_BIT:
        raise ImageError(f"{path}: pixel format {mode!r} is not supported; convert the image to 8-bit RGB")
    width, height = img.size
    out = np.empty((height, width, 3), dtype=np.uint8)
    for y in range(0, height, BAND_ROWS):
        band = img.crop((0, y, width, min(height, y + BAND_ROWS)))
        if mode == "RGB":
            out[y:y + BAND_ROWS] = np.asarray(band)
        elif mode in _CONVERTIBLE:
            out[y:y + BAND_ROWS] = np.asarray(band.convert("RGB"))
        else:
            grey = np.asarray(band)
            if grey.min() < 0 or grey.max() > 65535:
                raise ImageError(f"{path}: 32-bit integer image with values outside 0..65535; convert it to 8-bit RGB")
            out[y:y + BAND_ROWS] = (grey.astype(np.uint32) >> 8).astype(np.uint8)[:, :, None]
    return out


def _to_array(img: Image.Image, path: Path, mode: str) -> np.ndarray:
    """The decoded image in a read mode other than RGB (module doc), as ``(H, W, C)``."""
    if mode not in READ_MODES:
        raise ImageError(f"{path}: read mode {mode!r} is not one of {', '.join(READ_MODES)}")
    src = img.mode
    if src not in _CONVERTIBLE and src not in _SIXTEEN_BIT and src != "F":
        raise ImageError(f"{path}: pixel format {src!r} is not supported")
    if mode in ("L", "LA", "RGBA"):
        if src in _SIXTEEN_BIT or src == "F":
            if mode != "L" or src == "F":
                raise ImageError(f"{path}: a {src} (one channel, more than 8 bits) image cannot be read as {mode}")
            wide = _checked_ints(np.asarray(img), path).astype(np.uint32)
            return np.ascontiguousarray((wide >> 8).astype(np.uint8))[:, :, None]
        arr = np.asarray(img if src == mode else img.convert(mode))
        return np.ascontiguousarray(arr.reshape(arr.shape[0], arr.shape[1], -1))
    if src == "F":
        values = np.asarray(img, dtype=np.float32)
    elif src in _SIXTEEN_BIT:
        values = _checked_ints(np.asarray(img), path)
    else:  # 8-bit: colour to luma first; to 16 bits by 257 (the same brightness)
        values = np.asarray(img if src == "L" else img.convert("L")).astype(np.uint16) * (257 if mode == "I;16" else 1)
    if mode == "I;16":
        if values.dtype.kind == "f":
            raise ImageError(f"{path}: a 32-bit float image cannot be read as 16-bit integers")
        return np.ascontiguousarray(values.astype(np.uint16))[:, :, None]
    return np.ascontiguousarray(values.astype(np.float32))[:, :, None]


def _checked_ints(values: np.ndarray, path: Path) -> np.ndarray:
    if values.dtype.kind in "iu" and values.size and (values.min() < 0 or values.max() > 65535):
        raise ImageError(f"{path}: 32-bit integer image with values outside 0..65535")
    return values


def save_image(image: np.ndarray, path: str | Path) -> Path:
    """Write an array that :func:`load_image` gave back losslessly, so that reading it in the same mode
    returns the same array: PNG for uint8 (1-4 channels) and one-channel uint16, TIFF for float32.

    Returns:
        The file written: ``path`` with the suffix the format needs (``.png`` or ``.tiff``).
    """
    path = Path(path)
    arr = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
    if arr.dtype == np.float32:
        path = path.with_suffix(".tiff")
        Image.fromarray(arr).save(path, format="TIFF")  # 2-D float32: mode F
    else:
        path = path.with_suffix(".png")
        img = Image.fromarray(arr)
        if arr.dtype == np.uint16:  # Pillow's fromarray gives I;16 for native-endian 2-D uint16
            img = Image.frombytes("I;16", (arr.shape[1], arr.shape[0]), arr.astype("<u2").tobytes())
        img.save(path, format="PNG", compress_level=6)
    return path


#: EXIF tag 0x0112 and the numpy view that shows each orientation upright (as Pillow's ``exif_transpose``)
_ORIENTATION = 0x0112
_UPRIGHT = {
    2: lambda a: a[:, ::-1],                      # mirrored
    3: lambda a: a[::-1, ::-1],                   # rotated 180
    4: lambda a: a[::-1],                         # mirrored vertically
    5: lambda a: a.transpose(1, 0, 2),            # transposed
    6: lambda a: np.rot90(a, -1),                 # rotated 90 clockwise to be upright
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],  # transversed
    8: lambda a: np.rot90(a, 1),                  # rotated 90 counter-clockwise to be upright
}


def _orient(rgb: np.ndarray, orientation: object) -> np.ndarray:
    """Apply the EXIF orientation (Exif 2.3, tag 0x0112) with numpy; C-contiguous result."""
    turn = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return rgb if turn is None else np.ascontiguousarray(turn(rgb))


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
        try:
            is_dir, exists = p.is_dir(), p.exists()
        except OSError as exc:  # a name over 255 bytes, a path through a file, ...
            raise ImageError(f"{p}: cannot use this path ({exc.strerror or exc})") from None
        if is_dir:
            found = sorted(c for c in p.iterdir() if c.is_file() and c.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ImageError(f"{p}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            yield from found
        elif exists:
            yield p
        else:
            raise ImageError(f"{p}: no such file or folder")


def save_label_map(labels: np.ndarray, path: str | Path, palette: Sequence[Sequence[int]] | None, *,
                   compress_level: int = 6) -> None:
    """Write a label map as a single-channel PNG.

    Args:
        labels: ``(H, W)`` uint8 (palette attached, mode ``P``) or uint16
            (16-bit grey, for more than 256 classes) class ids.
        path: destination ``.png``.
        palette: RGB triples indexed by class id; unused entries are black.
        compress_level: zlib level 0-9. ``edgeseg run`` writes 3: on photos' label maps 3x faster
            than 6 (1.8 vs 5.5 ms a map) for 1.7x the bytes (7.4 vs 4.3 kB); archives keep 6.
    """
    if labels.dtype == np.uint8:
        img = Image.fromarray(labels)  # mode L; putpalette turns it into P
        if palette:
            flat = [int(v) for rgb in palette[:256] for v in rgb]
            img.putpalette(flat + [0] * (768 - len(flat)))
    else:
        img = Image.fromarray(labels.astype(np.uint16))  # 16-bit grey
    img.save(path, format="PNG", compress_level=compress_level)


def load_label_map(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a label map PNG (as :func:`save_label_map` writes it).

    Returns:
        ``(H, W)`` uint8 (palette / grey PNG) or uint16 (16-bit PNG) class ids.

    Raises:
        ImageError: not a PNG, over ``max_pixels``, not single-channel, or corrupt.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings(), Image.open(path, formats=("PNG",)) as img:
            warnings.simplefilter("ignore")
            if img.width * img.height > max_pixels:
                raise ImageError(f"{path}: {img.width}x{img.height} label map is over {max_pixels:,} pixels")
            if img.mode not in ("P", "L", "I;16", "I;16B", "I;16L", "I"):
                raise ImageError(f"{path}: a label map is a single-channel PNG, this one is {img.mode}")
            img.load()
            labels = np.asarray(img)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, TypeError, struct.error, EOFError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path}: not a readable label map PNG ({str(exc)[:120]})") from None
    return labels.astype(np.uint16) if labels.dtype.itemsize > 1 else labels


def save_scores(planes: Iterable[np.ndarray], count: int, height: int, width: int, path: str | Path) -> None:
    """Write per-class score planes as one ``(count, height, width)`` float32 ``.npy`` file.

    Planes are written as they come, so memory stays at one plane whatever
    ``count`` is (``np.save`` of the stacked scores would hold all of them).

    Args:
        planes: ``count`` arrays of ``(height, width)`` float scores, class 0 first.

    Raises:
        ValueError: a plane is not ``(height, width)`` or there are not ``count`` of them.

    Source: NumPy NEP 1 (``.npy`` format 1.0 header, then the C-order data).
    """
    from numpy.lib import format as npy

    written = 0
    with open(path, "wb") as fh:
        npy.write_array_header_1_0(fh, {"descr": npy.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                                        "shape": (count, height, width)})
        for plane in planes:
            if plane.shape != (height, width) or written == count:
                raise ValueError(f"score plane {written} is {plane.shape}, not ({height}, {width}) of {count}")
            np.ascontiguousarray(plane, dtype="<f4").tofile(fh)
            written += 1
            del plane  # before the generator makes the next one: one plane in memory at a time
    if written != count:
        raise ValueError(f"{written} score planes, expected {count}")


def overlay(rgb: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5,
            *, copy: bool = True) -> np.ndarray:
    """Blend class colours over an image.

    Works on bands of :data:`BAND_ROWS` rows, so its temporary memory is a few
    bytes per pixel of one band, not of the image.

    Args:
        rgb: ``(H, W, 3)`` uint8 image.
        labels: ``(H, W)`` integer class ids of the same size.
        palette: ``(C, 3)`` RGB colours; class 0 is left unblended (background).
        alpha: colour weight in [0, 1].
        copy: False to blend into ``rgb`` itself (saves one image of memory).

    Returns:
        ``(H, W, 3)`` uint8 blended image: ``round((1 - alpha) * pixel + alpha * colour)``.
    """
    colours = np.asarray(palette, dtype=np.float32).reshape(-1, 3)
    out = rgb.copy() if copy else rgb
    if len(colours) == 0:
        return out
    for y in range(0, rgb.shape[0], BAND_ROWS):
        band = labels[y:y + BAND_ROWS]
        mask = band > 0
        if not mask.any():
            continue
        lab = np.clip(band[mask], 0, len(colours) - 1)
        pixels = out[y:y + BAND_ROWS][mask].astype(np.float32)
        out[y:y + BAND_ROWS][mask] = np.clip((1.0 - alpha) * pixels + alpha * colours[lab] + 0.5, 0, 255).astype(np.uint8)
    return out
