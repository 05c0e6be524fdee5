"""Image loading: conversions, refusals, limits (edgeseg_runtime.images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeseg import SAMPLE_IMAGES
from edgeseg_runtime import ImageError, load_image
from edgeseg_runtime.images import iter_image_paths, overlay, save_label_map

RNG = np.random.default_rng(7)


def _save(img: Image.Image, path: Path) -> Path:
    img.save(path)
    return path


def test_rgb_roundtrip(tmp_path: Path) -> None:
    arr = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = load_image(_save(Image.fromarray(arr), tmp_path / "a.png"))
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3) and np.array_equal(out, arr)


def test_grey_becomes_rgb(tmp_path: Path) -> None:
    grey = RNG.integers(0, 256, (10, 12), dtype=np.uint8)
    out = load_image(_save(Image.fromarray(grey, mode="L"), tmp_path / "g.png"))
    assert out.shape == (10, 12, 3) and all(np.array_equal(out[..., c], grey) for c in range(3))


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = RNG.integers(0, 256, (8, 9, 4), dtype=np.uint8)
    out = load_image(_save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "a.png"))
    assert np.array_equal(out, rgba[..., :3])


def test_16bit_grey_scaled_to_8bit(tmp_path: Path) -> None:
    grey16 = np.array([[0, 256, 65535], [1000, 40000, 255]], dtype=np.uint16)
    path = _save(Image.fromarray(grey16), tmp_path / "g16.png")
    with Image.open(path) as img:
        assert img.mode.startswith("I")
    out = load_image(path)
    assert np.array_equal(out[..., 0], (grey16 >> 8).astype(np.uint8))


def test_float_image_refused(tmp_path: Path) -> None:
    path = _save(Image.fromarray(RNG.random((5, 5), dtype=np.float32), mode="F"), tmp_path / "f.tif")
    with pytest.raises(ImageError, match="pixel format 'F' is not supported"):
        load_image(path)


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("hello, not a PNG")
    with pytest.raises(ImageError, match="not an image file"):
        load_image(path)


def test_truncated_image(tmp_path: Path) -> None:
    full = _save(Image.fromarray(RNG.integers(0, 256, (200, 200, 3), dtype=np.uint8)), tmp_path / "full.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[:3000])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(cut)


def test_pixel_limit_checked_before_decoding(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (300, 200)), tmp_path / "big.png")
    with pytest.raises(ImageError, match="over the limit"):
        load_image(path, max_pixels=300 * 200 - 1)
    assert load_image(path, max_pixels=300 * 200).shape == (200, 300, 3)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "o.jpg", exif=exif)
    assert load_image(tmp_path / "o.jpg").shape == (40, 20, 3)


def test_missing_file_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such image file"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="holds no images"):
        list(iter_image_paths([tmp_path / "empty"]))


def test_label_map_png_keeps_ids_and_palette(tmp_path: Path) -> None:
    labels = RNG.integers(0, 3, (7, 5), dtype=np.uint8)
    save_label_map(labels, tmp_path / "l.png", [[0, 0, 0], [10, 20, 30], [40, 50, 60]])
    with Image.open(tmp_path / "l.png") as img:
        assert img.mode == "P" and img.getpalette()[:9] == [0, 0, 0, 10, 20, 30, 40, 50, 60]
        assert np.array_equal(np.asarray(img), labels)
    many = RNG.integers(0, 300, (4, 4)).astype(np.uint16)
    save_label_map(many, tmp_path / "m.png", None)
    with Image.open(tmp_path / "m.png") as img:
        assert np.array_equal(np.asarray(img).astype(np.uint16), many)


def test_overlay_blends_only_foreground() -> None:
    rgb = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[0, 1], [1, 0]], np.uint8)
    out = overlay(rgb, labels, [[0, 0, 0], [200, 0, 0]], alpha=0.5)
    assert out[0, 0].tolist() == [100, 100, 100] and out[0, 1].tolist() == [150, 50, 50]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(orientation: int, tmp_path: Path) -> None:
    """The runtime turns the decoded array upright with numpy: the same pixels as Pillow's exif_transpose."""
    from PIL import ImageOps

    arr = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    Image.fromarray(arr).save(path, exif=exif)
    with Image.open(path) as img:
        expected = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    out = load_image(path)
    assert out.flags["C_CONTIGUOUS"] and np.array_equal(out, expected)


def test_large_image_decodes_in_bands(tmp_path: Path) -> None:
    """Band-wise conversion (palette and 16-bit grey included) gives the same pixels as converting at once."""
    from edgeseg_runtime.images import BAND_ROWS

    h = BAND_ROWS * 2 + 37
    pal = Image.fromarray(RNG.integers(0, 256, (h, 50), dtype=np.uint8), mode="L").convert("P")
    pal.save(tmp_path / "p.png")
    assert np.array_equal(load_image(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))
    grey16 = RNG.integers(0, 65536, (h, 40), dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g.png")
    assert np.array_equal(load_image(tmp_path / "g.png")[..., 1], (grey16 >> 8).astype(np.uint8))


# ---------------------------------------------------------------- read modes other than RGB


def test_read_modes_and_lossless_save(tmp_path: Path) -> None:
    """Each read mode gives its channels and dtype; save_image writes what load_image reads back exactly."""
    from edgeseg_runtime.images import READ_MODES, load_image, save_image

    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    grey16 = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    Image.frombytes("I;16", (30, 20), grey16.astype("<u2").tobytes()).save(tmp_path / "g16.png")
    floats = rng.standard_normal((20, 30)).astype(np.float32)
    Image.fromarray(floats).save(tmp_path / "f.tiff")
    for mode, (channels, dtype) in READ_MODES.items():
        got = load_image(tmp_path / "rgba.png", mode=mode) if mode != "F" else load_image(tmp_path / "f.tiff", mode=mode)
        assert got.shape == (20, 30, channels) and got.dtype == dtype, mode
        again = load_image(save_image(got, tmp_path / f"again_{mode.replace(';', '')}.png"), mode=mode)
        np.testing.assert_array_equal(again, got)
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png", mode="RGBA"), rgba)
    np.testing.assert_array_equal(load_image(tmp_path / "g16.png", mode="I;16")[:, :, 0], grey16)
    np.testing.assert_array_equal(load_image(tmp_path / "g16.png", mode="L")[:, :, 0], (grey16 >> 8).astype(np.uint8))
    np.testing.assert_array_equal(load_image(tmp_path / "f.tiff", mode="F")[:, :, 0], floats)
    for path, mode, message in ((tmp_path / "f.tiff", "L", "cannot be read as L"),
                                (tmp_path / "f.tiff", "I;16", "float image cannot be read as 16-bit"),
                                (tmp_path / "g16.png", "RGBA", "cannot be read as RGBA"),
                                (tmp_path / "rgba.png", "CMYK", "read mode 'CMYK' is not one of")):
        with pytest.raises(ImageError, match=message):
            load_image(path, mode=mode)


def test_grey_and_sixteen_bit_images_resize_like_opencv() -> None:
    """One-channel 8-bit (Pillow L) and 16-bit (float32, rounded back) resizing: within one level of
    OpenCV INTER_LINEAR (Pillow truncates 8-bit sums where OpenCV rounds; numpy rint on 16 bits)."""
    cv2 = pytest.importorskip("cv2", reason="cv2 is not installed (extra 'dev')")
    from edgeseg_runtime.images import load_image
    from edgeseg_runtime.pipeline import Preprocess

    grey = load_image(SAMPLE_IMAGES / "astronaut.png", mode="L")
    wide = load_image(SAMPLE_IMAGES / "astronaut.png", mode="I;16")
    for size in ((200, 150), (700, 600)):
        for image, mode in ((grey, "L"), (wide, "I;16")):
            pre = Preprocess(size=size, keep_ratio=False, mean=(0.0,), std=(1.0,), to_rgb=True, mode=mode)
            got = pre.resize(image)
            want = cv2.resize(image[:, :, 0], size, interpolation=cv2.INTER_LINEAR)
            assert got.shape == (size[1], size[0], 1) and got.dtype == image.dtype
            assert np.abs(got[:, :, 0].astype(np.int32) - want).max() <= 1, (mode, size)
            x = pre(image)
            assert x.shape == (1, 1, size[1], size[0])
