"""Labelled image sets on disk: images, ground-truth label maps, and the folder conventions of common datasets.

Layouts (``layout="auto"`` picks one from the folder and file names):

==============  ==================================================  ===============================================
layout          images                                              ground truth
==============  ==================================================  ===============================================
``plain``       ``ROOT/images/*`` (or ``--images DIR``)             ``ROOT/masks/<stem>.png`` (or ``--masks DIR``)
``cityscapes``  ``leftImg8bit/<split>/<city>/*_leftImg8bit.png``    ``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png``
``ade20k``      ``images/<split>/ADE_*.jpg``                        ``annotations/<split>/ADE_*.png``, reduce-zero-label
``voc``         ``JPEGImages/*.jpg`` (those that have a mask)        ``SegmentationClass/<stem>.png`` (palette PNG)
``images``      a folder of images                                  none
==============  ==================================================  ===============================================

Every mask is a single-channel PNG of class ids (decoded as PNG only: a file
in another format, whatever its name, is refused); 255 is the ignore index
(Cityscapes ``labelTrainIds``, VOC object boundaries). ADE20K annotations use
0 for "other" and 1..150 for the classes: as in MMSegmentation's
``reduce_zero_label`` (``LoadAnnotations``), 0 becomes 255 and every other id
drops by one. Sources: Cityscapes scripts ``createTrainIdLabelImgs.py``;
MMSegmentation 1.x ``docs/en/user_guides/2_dataset_prepare.md``; the PASCAL
VOC 2012 development kit.

A :class:`LabelMap` (the CLI's ``--label-map 15=1,*=0``, parsed by
:func:`parse_label_map`) then maps the set's ids to the model's: a person-only
model scored on VOC maps class 15 (person) to 1 and the rest to background.
``*`` sets every id not listed (255 stays ignored unless listed).
"""

from __future__ import annotations

import hashlib
import struct
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgeseg_runtime.archive import sha256_file
from edgeseg_runtime.images import IMAGE_SUFFIXES, iter_image_paths

from .errors import ConfigError
from .metrics import IGNORE_INDEX

__all__ = ["Dataset", "LAYOUTS", "LabelMap", "load_dataset", "parse_label_map", "read_mask"]

LAYOUTS = ("auto", "plain", "cityscapes", "ade20k", "voc", "images")
_CITYSCAPES_IMAGE = "_leftImg8bit"
_CITYSCAPES_MASK = "_gtFine_labelTrainIds.png"
_SPLITS = {"cityscapes": "val", "ade20k": "validation", "voc": "val"}


class LabelMap(Mapping[int | str, int]):
    """Dataset class id → model class id (read-only): ``{15: 1, "*": 0}``.

    Keys are ids in 0..65535, or ``"*"`` for every id not listed (the ignore
    index 255 stays ignored unless listed); values are ids in 0..65535.
    Build one from a mapping (``LabelMap({15: 1, "*": 0})``) or from the
    CLI's text with :func:`parse_label_map` (``"15=1,*=0"``).

    Raises:
        ConfigError: a key or value outside those ranges.
    """

    def __init__(self, pairs: Mapping[int | str, int]) -> None:
        table: dict[int | str, int] = {}
        for src, dst in pairs.items():
            ok_src = src == "*" or (isinstance(src, int) and not isinstance(src, bool) and 0 <= src <= 65535)
            ok_dst = isinstance(dst, int) and not isinstance(dst, bool) and 0 <= dst <= 65535
            if not (ok_src and ok_dst):
                raise ConfigError(f"label map: {src!r} -> {dst!r} is not a class id pair (ids 0..65535, '*' for the rest)")
            table[src] = dst
        self._table = table

    def __getitem__(self, key: int | str) -> int:
        return self._table[key]

    def __iter__(self) -> Iterator[int | str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"LabelMap({self._table!r})"

    def __str__(self) -> str:
        """The CLI form, ``15=1,*=0``."""
        return ",".join(f"{k}={v}" for k, v in self._table.items())

    @classmethod
    def of(cls, value: Mapping[int | str, int] | None) -> LabelMap | None:
        """``value`` as a LabelMap (None and an empty mapping stay None).

        Raises:
            TypeError: a string: parse the CLI syntax with :func:`parse_label_map` first.
            ConfigError: bad ids.
        """
        if isinstance(value, str):
            raise TypeError(f"label_map takes a mapping, not the text {value!r}: parse_label_map({value!r})")
        if not value:
            return None
        return value if isinstance(value, LabelMap) else cls(value)


def parse_label_map(text: str | None) -> LabelMap | None:
    """Parse the CLI's ``"SRC=DST,...,*=DST"`` into a :class:`LabelMap` (``{src: dst, "*": dst}``; None for "").

    Raises:
        ConfigError: not ``int=int`` pairs, or an id outside 0..65535.
    """
    if not text:
        return None
    out: dict[int | str, int] = {}
    for part in text.split(","):
        src, sep, dst = part.strip().partition("=")
        try:
            key: int | str = "*" if src.strip() == "*" else int(src)
            value = int(dst)
        except ValueError:
            key, value = "", -1
        if not sep or value < 0 or value > 65535 or (isinstance(key, int) and not 0 <= key <= 65535) or key == "":
            raise ConfigError(f"label map {text!r}: expected SRC=DST pairs of class ids, e.g. 15=1,*=0 (bad part {part!r})")
        out[key] = value
    return LabelMap(out)


def _lookup(label_map: Mapping[int | str, int] | None, reduce_zero_label: bool) -> np.ndarray | None:
    """A 65536-entry id → id table for the layout's conversion then the label map (None = identity)."""
    if label_map is None and not reduce_zero_label:
        return None
    ids = np.arange(65536, dtype=np.int64)
    if reduce_zero_label:
        ids = np.where(ids == 0, IGNORE_INDEX, ids - 1)
        ids[IGNORE_INDEX] = IGNORE_INDEX
    if label_map:
        table = np.full(65536, label_map["*"], np.int64) if "*" in label_map else np.arange(65536, dtype=np.int64)
        if "*" in label_map and IGNORE_INDEX not in label_map:
            table[IGNORE_INDEX] = IGNORE_INDEX
        for src, dst in label_map.items():
            if isinstance(src, int):
                table[src] = dst
        ids = table[ids]
    return ids


def read_mask(
    path: Path,
    num_classes: int,
    size: tuple[int, int],
    *,
    reduce_zero_label: bool = False,
    label_map: Mapping[int | str, int] | None = None,
) -> np.ndarray:
    """Read a ground-truth label map.

    Args:
        path: single-channel PNG (mode L, P, I or I;16): class ids, 255 = ignore.
        num_classes: valid ids (after conversion) are ``0..num_classes-1``.
        size: the image's ``(H, W)``; the mask must match it.
        reduce_zero_label: ADE20K convention (module doc).
        label_map: ``{src: dst, "*": dst}`` (a :class:`LabelMap` or any such mapping).

    Returns:
        ``(H, W)`` int64 label map, 255 = ignore.

    Raises:
        ConfigError: not a PNG (masks are decoded as PNG only, whatever the file
            holds: an SGI or TGA file is refused), colour mask, wrong size (checked
            before decoding), corrupt, or ids outside the classes.
    """
    mask = _decode_mask(path, size)
    lut = _lookup(label_map, reduce_zero_label)
    if lut is not None:
        mask = lut[np.clip(mask, 0, 65535)]
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        raise ConfigError(
            f"{path.name}: class id {int(mask[bad].max())} but the model has {num_classes} classes (ids 0..{num_classes - 1}, "
            "255 = ignore); map the set's ids to the model's with a label map, e.g. --label-map 15=1,*=0"
        )
    return mask


def _decode_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The mask's class ids as int64: PNG only, single-channel, the image's size (known before decoding)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: the size is checked below
        try:
            with Image.open(path, formats=("PNG",)) as img:
                if img.mode not in ("L", "P", "I", "I;16"):
                    raise ConfigError(f"{path.name}: mask mode {img.mode}; masks must be single-channel class-id PNGs "
                                      "(255 = ignore)")
                if (img.height, img.width) != tuple(size):
                    raise ConfigError(f"{path.name}: mask is {img.width}x{img.height} but its image is {size[1]}x{size[0]}")
                return np.asarray(img).astype(np.int64)
        except UnidentifiedImageError:
            raise ConfigError(f"{path.name}: not a PNG; masks must be single-channel class-id PNGs (255 = ignore)") from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError) as exc:
            raise ConfigError(f"{path.name}: not a readable mask PNG ({' '.join(str(exc).split())[:120]})") from None


@dataclass(frozen=True)
class Dataset:
    """Images, with ground-truth masks when the set has them.

    Attributes:
        images: image files.
        masks: the matching mask files (None where the set has no masks).
        source: where the set came from, for reports.
        digest: sha256 hex over the images' and masks' contents.
        layout: one of :data:`LAYOUTS` (not ``auto``).
        reduce_zero_label: masks use the ADE20K convention (module doc).
        label_map: set id → model id (:func:`parse_label_map`), applied after ``reduce_zero_label``.
    """

    images: tuple[Path, ...]
    masks: tuple[Path | None, ...]
    source: str
    digest: str
    layout: str = "images"
    reduce_zero_label: bool = False
    label_map: LabelMap | None = None

    @classmethod
    def of(cls, images: list[Path], masks: list[Path | None] | None = None, *, source: str, layout: str = "images",
           reduce_zero_label: bool = False, label_map: Mapping[int | str, int] | None = None) -> Dataset:
        """A dataset of these files, its digest computed."""
        label_map = LabelMap.of(label_map)
        masks = masks if masks is not None else [None] * len(images)
        h = hashlib.sha256()
        for img, mask in zip(images, masks, strict=True):
            h.update(f"{sha256_file(img)} {sha256_file(mask) if mask else '-'}\n".encode())
        if label_map:
            h.update(repr(sorted(label_map.items(), key=str)).encode())
        return cls(tuple(images), tuple(masks), source, h.hexdigest(), layout, reduce_zero_label, label_map)

    @property
    def has_masks(self) -> bool:
        return bool(self.masks) and all(m is not None for m in self.masks)

    def __len__(self) -> int:
        return len(self.images)

    def limit(self, count: int | None) -> Dataset:
        """The first ``count`` samples (None = all); the digest is recomputed."""
        if count is None or count >= len(self.images):
            return self
        return Dataset.of(list(self.images[:count]), list(self.masks[:count]), source=self.source, layout=self.layout,
                          reduce_zero_label=self.reduce_zero_label, label_map=self.label_map)

    def read_mask(self, index: int, num_classes: int, size: tuple[int, int]) -> np.ndarray | None:
        """Ground truth of sample ``index`` (converted and mapped), None when it has no mask."""
        mask = self.masks[index]
        if mask is None:
            return None
        return read_mask(mask, num_classes, size, reduce_zero_label=self.reduce_zero_label, label_map=self.label_map)


def _images_in(folder: Path, recursive: bool = False) -> list[Path]:
    if not recursive:
        return sorted(iter_image_paths([folder]), key=lambda p: p.as_posix())
    found = sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: p.as_posix())
    if not found:
        raise ConfigError(f"{folder}: no images found (searched sub-folders too)")
    return found


def _detect(images: Path, masks: Path | None) -> tuple[str, Path, Path | None]:
    """(layout, image folder, mask folder) from folder and file names."""
    if masks is None:
        for layout, img_sub, mask_sub in (
            ("cityscapes", "leftImg8bit", "gtFine"),
            ("ade20k", "images", "annotations"),
            ("voc", "JPEGImages", "SegmentationClass"),
            ("plain", "images", "masks"),
        ):
            if (images / img_sub).is_dir() and (images / mask_sub).is_dir():
                return layout, images / img_sub, images / mask_sub
        if (images / "images").is_dir():
            return "images", images / "images", None
        return "images", images, None
    if images.name == "JPEGImages" or masks.name == "SegmentationClass":
        return "voc", images, masks
    if any(p.name.startswith("ADE_") for p in images.iterdir()) and "annotations" in masks.parts:
        return "ade20k", images, masks
    if any(_CITYSCAPES_IMAGE in p.name for p in images.rglob(f"*{_CITYSCAPES_IMAGE}.png")):
        return "cityscapes", images, masks
    return "plain", images, masks


def _split_dir(folder: Path, layout: str, split: str | None) -> Path:
    """``folder/<split>`` for Cityscapes/ADE20K roots that hold split sub-folders."""
    want = split or _SPLITS.get(layout)
    if want and (folder / want).is_dir():
        return folder / want
    if split:
        raise ConfigError(f"{folder}: no split folder {split!r}")
    return folder


def load_dataset(
    images: str | Path,
    masks: str | Path | None = None,
    *,
    layout: str = "auto",
    split: str | None = None,
    label_map: Mapping[int | str, int] | None = None,
) -> Dataset:
    """Find the images and their masks.

    Args:
        images: a dataset root (``plain``: ``images/`` + ``masks/``; Cityscapes,
            ADE20K or VOC root folders), or a folder of images.
        masks: the mask folder when ``images`` is an image folder.
        layout: one of :data:`LAYOUTS`; ``auto`` detects it (module doc).
        split: Cityscapes/ADE20K split sub-folder, VOC ``ImageSets/Segmentation/<split>.txt``
            (defaults ``val``/``validation``/``val`` where present).
        label_map: set id → model id (:class:`LabelMap` or a mapping; the CLI parses ``"15=1,*=0"``
            with :func:`parse_label_map`).

    Returns:
        A :class:`Dataset` (images sorted by path).

    Raises:
        ConfigError: unknown layout, a folder that does not exist, an image
            without its mask (layouts other than VOC), a bad label map.
        ImageError: no images found.
        TypeError: ``label_map`` given as text (parse it first).
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown dataset layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    root = Path(images)
    mask_root = Path(masks) if masks is not None else None
    for folder in (root, mask_root):
        if folder is not None and not folder.is_dir():
            raise ConfigError(f"{folder}: no such folder")
    detected, img_dir, mask_dir = _detect(root, mask_root)
    if layout == "auto":
        layout = detected
    elif layout != "images" and mask_dir is None:
        raise ConfigError(f"layout {layout!r} needs masks: give the dataset root or --masks DIR")
    lmap = LabelMap.of(label_map)
    if layout == "images":
        return Dataset.of(_images_in(img_dir), source=str(root), layout=layout)
    assert mask_dir is not None
    reduce_zero = layout == "ade20k"
    if layout in ("cityscapes", "ade20k"):
        img_dir, mask_dir = _split_dir(img_dir, layout, split), _split_dir(mask_dir, layout, split)
    if layout == "cityscapes":
        found = _images_in(img_dir, recursive=True)
        by_name = {p.name: p for p in mask_dir.rglob(f"*{_CITYSCAPES_MASK}")}
        pairs = [(p, by_name.get(p.name.replace(f"{_CITYSCAPES_IMAGE}{p.suffix}", _CITYSCAPES_MASK))) for p in found]
        hint = "Cityscapes *_gtFine_labelTrainIds.png are made by cityscapesscripts' createTrainIdLabelImgs.py"
    elif layout == "voc":
        found = _images_in(img_dir)
        stems = None
        sets = mask_dir.parent / "ImageSets" / "Segmentation" / f"{split or _SPLITS['voc']}.txt"
        if sets.is_file():
            stems = set(sets.read_text(encoding="utf-8").split())
        elif split:
            raise ConfigError(f"{sets}: no such split list")
        # JPEGImages holds every VOC image; only the segmentation subset has masks
        pairs = [(p, mask_dir / f"{p.stem}.png") for p in found if (mask_dir / f"{p.stem}.png").is_file()
                 and (stems is None or p.stem in stems)]
        if not pairs:
            raise ConfigError(f"{mask_dir}: no SegmentationClass/<stem>.png matches an image in {img_dir}")
        hint = ""
    else:
        found = _images_in(img_dir)
        pairs = [(p, mask_dir / f"{p.stem}.png") for p in found]
        hint = "every image needs <stem>.png in the mask folder"
    missing = [p.name for p, m in pairs if m is None or not m.is_file()]
    if missing:
        raise ConfigError(f"{mask_dir}: no mask for {len(missing)} image(s), e.g. {missing[0]} ({layout} layout); {hint}")
    return Dataset.of([p for p, _ in pairs], [m for _, m in pairs], source=str(root), layout=layout,
                      reduce_zero_label=reduce_zero, label_map=lmap)
