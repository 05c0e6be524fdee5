"""Calibration sets: image files → pre-processed network inputs for int8 quantizers.

Images go through the archive's own pre-processing (:class:`edgeseg_runtime.
pipeline.Preprocess`, parsed from the ``pipeline.json`` the build writes), the
same code path the device runs, so calibration sees exactly the tensors the
deployed model will see.

Sampling is deterministic: the image files are listed in sorted order; when
there are more than ``count`` of them, ``random.Random(seed).sample`` picks
``count`` and the pick is sorted again. The set's ``digest`` (sha256 over the
pre-processing settings and every chosen file's name and sha256) keys the
quantization cache (:mod:`edgeseg.cache`).

For backends that calibrate on the device (TensorRT's ``IInt8Calibrator``)
:meth:`CalibrationSet.save_compact` writes the resized uint8 images
(``calibration.npz``, 1 byte per element, lossless); the device applies the
Normalize step of ``pipeline.json`` to get the exact float32 tensors
(:func:`edgeseg_runtime.calibration.load_compact`).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg_runtime.archive import sha256_file
from edgeseg_runtime.images import iter_image_paths
from edgeseg_runtime.pipeline import Preprocess, fits_input, parse_pipeline

from .errors import ConfigError
from .spec import DATA

__all__ = ["DEFAULT_CALIBRATION", "DEFAULT_SEED", "CalibrationSet", "select_images", "load_calibration"]

#: the embedded default calibration set (real photos, see its README.md)
DEFAULT_CALIBRATION = DATA / "calibration"
#: seed of the deterministic sample when a folder holds more images than asked for
DEFAULT_SEED = 0


def select_images(sources: Sequence[str | Path], count: int, seed: int = DEFAULT_SEED) -> list[Path]:
    """Deterministically choose up to ``count`` image files from files/folders.

    Args:
        sources: image files and/or folders (searched recursively).
        count: how many images to keep (all when there are fewer).
        seed: seed of the sample.

    Returns:
        The chosen paths, sorted.

    Raises:
        ConfigError: ``count`` < 1.
        ImageError: no image found, or a path that does not exist.
    """
    if count < 1:
        raise ConfigError(f"calibration count must be at least 1, got {count}")
    paths = sorted(iter_image_paths(list(sources)), key=lambda p: p.as_posix())
    if len(paths) > count:
        paths = sorted(random.Random(seed).sample(paths, count), key=lambda p: p.as_posix())
    return paths


@dataclass(frozen=True)
class CalibrationSet:
    """Calibration images and the pre-processing that turns them into network inputs.

    Attributes:
        images: chosen image files, sorted.
        preprocess: the archive's pre-processing.
        input_shape: the network input ``[1, C, H, W]`` (str entries = dynamic axes).
        digest: sha256 hex of the pre-processing and the images' names and contents.
        requested: the count asked for (``len(images)`` may be smaller).
    """

    images: tuple[Path, ...]
    preprocess: Preprocess
    input_shape: tuple[Any, ...]
    digest: str
    requested: int

    def __len__(self) -> int:
        return len(self.images)

    def resized(self) -> Iterator[np.ndarray]:
        """Yield each image after the Resize step: ``(h, w, C)`` as read (``(h, w, 3)`` uint8 RGB for colour)."""
        for path in self.images:
            yield self.preprocess.resize(self.preprocess.load(path))

    def tensors(self) -> Iterator[np.ndarray]:
        """Yield each image as the network input: ``(1, C, H, W)`` float32 NCHW.

        Raises:
            ImageError: an image cannot be read.
            ConfigError: the pre-processed size does not fit a static model input.
        """
        for path, rgb in zip(self.images, self.resized(), strict=True):
            tensor = self.preprocess.normalize(rgb)
            if not fits_input(tensor.shape, self.input_shape):
                raise ConfigError(
                    f"calibration image {path.name} pre-processes to {list(tensor.shape)} but the model takes "
                    f"{list(self.input_shape)}; use a fixed Resize size (no keep_ratio) for a static model"
                )
            yield tensor

    def save_compact(self, path: Path) -> dict[str, Any]:
        """Write the resized uint8 images to ``path`` (``.npz``) for on-device calibration.

        Layout: ``images`` ``(N, h, w, 3)`` uint8 RGB when all share one size;
        otherwise one array per image, ``image_0000`` ... Returns the manifest
        entry (count, digest, shape).
        """
        arrays = list(self.resized())
        shapes = {a.shape for a in arrays}
        if len(shapes) == 1:
            np.savez_compressed(path, images=np.stack(arrays))
        else:
            np.savez_compressed(path, **{f"image_{i:04d}": a for i, a in enumerate(arrays)})
        return {"file": path.name, "count": len(arrays), "digest": self.digest, "shapes": sorted(list(s) for s in shapes)}


def load_calibration(
    sources: Sequence[str | Path] | None,
    pipeline: dict[str, Any],
    input_shape: Sequence[Any],
    *,
    count: int,
    seed: int = DEFAULT_SEED,
    exclude: Iterable[Path] = (),
) -> CalibrationSet:
    """Build a :class:`CalibrationSet` for one model.

    Args:
        sources: image files/folders; None = :data:`DEFAULT_CALIBRATION`.
        pipeline: the model's ``pipeline.json`` document (its pre-processing is used).
        input_shape: the network input shape ``[1, C, H, W]``.
        count: images to use (``--calib-count``; the profile's ``calib_count`` by default).
        seed: sample seed.
        exclude: evaluation images; a calibration image with the same content
            is an error (calibration and evaluation must be held apart).

    Raises:
        ConfigError: an evaluation image is also a calibration image; bad count.
        ImageError: no images found.
    """
    chosen = select_images([DEFAULT_CALIBRATION] if sources is None else sources, count, seed)
    hashes = {p: sha256_file(p) for p in chosen}
    held_out = {sha256_file(p): p for p in exclude}
    both = [p for p, h in hashes.items() if h in held_out]
    if both:
        raise ConfigError(
            f"{len(both)} calibration image(s) are also evaluation images (e.g. {both[0].name} = "
            f"{held_out[hashes[both[0]]].name}); hold them apart: remove them from --calib or give other --eval images"
        )
    preprocess, _ = parse_pipeline(pipeline)
    h = hashlib.sha256()
    h.update(json.dumps(_preprocess_dict(preprocess), sort_keys=True).encode())
    for p in chosen:
        h.update(f"{p.name}\0{hashes[p]}\n".encode())
    return CalibrationSet(
        images=tuple(chosen), preprocess=preprocess, input_shape=tuple(input_shape), digest=h.hexdigest(), requested=count
    )


def _preprocess_dict(pre: Preprocess) -> dict[str, Any]:
    doc = {"size": pre.size, "keep_ratio": pre.keep_ratio, "mean": pre.mean, "std": pre.std, "to_rgb": pre.to_rgb}
    # the keys added since (padding, read mode) only when used: the cache keys of plain RGB models stay the same
    extra = {"pad_divisor": pre.pad_divisor, "pad_size": pre.pad_size, "pad_value": pre.pad_value, "mode": pre.mode,
             "min_side": pre.min_side, "max_side": pre.max_side}
    return {**doc, **{k: v for k, v in extra.items() if v != {"pad_value": 0.0, "mode": "RGB"}.get(k)}}
