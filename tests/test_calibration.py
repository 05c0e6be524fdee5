"""Calibration sets: deterministic sampling, the device's pre-processing, held apart from evaluation, compact form."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeseg.calibration import DEFAULT_CALIBRATION, load_calibration, select_images
from edgeseg.errors import ConfigError
from edgeseg_runtime.archive import Archive
from edgeseg_runtime.calibration import load_compact
from edgeseg_runtime.images import load_image
from edgeseg_runtime.segmentor import Segmentor


def test_default_set_is_real_photos_apart_from_the_golden_images() -> None:
    from edgeseg.build import SAMPLE_IMAGES

    calib = select_images([DEFAULT_CALIBRATION], 1000)
    assert len(calib) == 32
    golden = {p.read_bytes() for p in SAMPLE_IMAGES.iterdir()}
    assert not any(p.read_bytes() in golden for p in calib)
    # real photos, not flat fills: every image has texture
    assert all(np.asarray(Image.open(p).convert("L"), dtype=float).std() > 10 for p in calib)


def test_sampling_is_deterministic_and_seeded() -> None:
    a = select_images([DEFAULT_CALIBRATION], 8, seed=0)
    assert a == select_images([DEFAULT_CALIBRATION], 8, seed=0) and len(a) == 8 and a == sorted(a)
    assert a != select_images([DEFAULT_CALIBRATION], 8, seed=1)
    with pytest.raises(ConfigError, match="at least 1"):
        select_images([DEFAULT_CALIBRATION], 0)


def test_tensors_are_what_the_device_feeds_the_network(archives: dict[str, Path], photos: dict[str, Path]) -> None:
    with Archive.open(archives["cpu"]) as archive, Segmentor(archive) as seg:
        shape = archive.manifest["model"]["input"]["shape"]
        cset = load_calibration([photos["astronaut"], photos["camera"]], archive.pipeline, shape, count=4)
        tensors = list(cset.tensors())
        assert [p.name for p in cset.images] == ["astronaut.png", "camera.png"]
        for path, tensor in zip(cset.images, tensors, strict=True):
            assert tensor.dtype == np.float32 and list(tensor.shape) == shape
            np.testing.assert_array_equal(tensor, seg.prepare(load_image(path)))  # one code path, bit-identical


def test_compact_form_gives_back_the_exact_tensors(archives: dict[str, Path], tmp_path: Path) -> None:
    with Archive.open(archives["cpu"]) as archive:
        shape = archive.manifest["model"]["input"]["shape"]
        cset = load_calibration(None, archive.pipeline, shape, count=6)
        entry = cset.save_compact(tmp_path / "calibration.npz")
        back = list(load_compact(tmp_path / "calibration.npz", cset.preprocess))
    want = list(cset.tensors())
    assert entry["count"] == 6 and entry["shapes"] == [[256, 256, 3]] and len(back) == 6
    for a, b in zip(back, want, strict=True):
        np.testing.assert_array_equal(a, b)
    raw = sum(t.nbytes for t in want)
    assert (tmp_path / "calibration.npz").stat().st_size < raw / 4  # uint8 + deflate vs float32


def test_digest_follows_images_and_preprocessing(archives: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "calib"
    shutil.copytree(DEFAULT_CALIBRATION, folder)
    with Archive.open(archives["cpu"]) as archive:
        pipe, shape = archive.pipeline, archive.manifest["model"]["input"]["shape"]
    base = load_calibration([folder], pipe, shape, count=32).digest
    assert load_calibration([folder], pipe, shape, count=32).digest == base
    other = next(folder.glob("*.jpg"))
    Image.open(other).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(other)
    assert load_calibration([folder], pipe, shape, count=32).digest != base
    import copy

    pipe2 = copy.deepcopy(pipe)
    for t in pipe2["pipeline"]["tasks"][0]["transforms"]:
        if t["type"] == "Normalize":
            t["std"] = [127.0, 127.0, 127.0]
    assert load_calibration([folder], pipe2, shape, count=32).digest != load_calibration([folder], pipe, shape, count=32).digest


def test_calibration_and_evaluation_must_be_held_apart(archives: dict[str, Path], photos: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "same_content.png"
    shutil.copyfile(photos["camera"], copy)
    with Archive.open(archives["cpu"]) as archive:
        with pytest.raises(ConfigError, match=r"also evaluation images \(e.g. same_content.png = camera.png\); hold them apart"):
            load_calibration([copy, photos["rocket"]], archive.pipeline, archive.manifest["model"]["input"]["shape"],
                             count=4, exclude=[photos["camera"]])
