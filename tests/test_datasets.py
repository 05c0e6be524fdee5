"""edgeseg.datasets: folder conventions (plain, Cityscapes, ADE20K, VOC), ignore index, label maps."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeseg.datasets import Dataset, LabelMap, load_dataset, parse_label_map, read_mask
from edgeseg.errors import ConfigError


def _image(path: Path, size: tuple[int, int] = (6, 4)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).save(path)
    return path


def _mask(path: Path, ids: np.ndarray, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(ids.astype(np.uint8))
    if mode == "P":
        img.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
    img.save(path)
    return path


IDS = np.array([[0, 1, 2, 255, 0, 1]] * 4)


def test_plain_root_and_separate_folders(tmp_path: Path) -> None:
    for stem in ("b", "a"):
        _image(tmp_path / "images" / f"{stem}.jpg")
        _mask(tmp_path / "masks" / f"{stem}.png", IDS)
    ds = load_dataset(tmp_path)
    assert ds.layout == "plain" and [p.name for p in ds.images] == ["a.jpg", "b.jpg"] and ds.has_masks
    assert (ds.read_mask(0, 3, (4, 6)) == IDS).all()
    same = load_dataset(tmp_path / "images", tmp_path / "masks")
    assert same.layout == "plain" and same.digest == ds.digest
    assert ds.limit(1).images == ds.images[:1] and ds.limit(1).digest != ds.digest
    (tmp_path / "masks" / "b.png").unlink()
    with pytest.raises(ConfigError, match=r"no mask for 1 image\(s\), e.g. b.jpg"):
        load_dataset(tmp_path)


def test_images_only(tmp_path: Path) -> None:
    _image(tmp_path / "x.png")
    ds = load_dataset(tmp_path)
    assert ds.layout == "images" and not ds.has_masks and ds.read_mask(0, 2, (4, 6)) is None


def test_cityscapes_layout_pairs_train_id_masks_across_cities(tmp_path: Path) -> None:
    for split, city, name in (("val", "frankfurt", "frankfurt_000000_000294"), ("val", "lindau", "lindau_000001_000019"),
                              ("train", "aachen", "aachen_000000_000019")):
        _image(tmp_path / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png")
        _mask(tmp_path / "gtFine" / split / city / f"{name}_gtFine_labelTrainIds.png", IDS)
        _mask(tmp_path / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", IDS + 7)  # not the train ids
    ds = load_dataset(tmp_path)
    assert ds.layout == "cityscapes"
    assert [m.name for m in ds.masks] == ["frankfurt_000000_000294_gtFine_labelTrainIds.png",
                                          "lindau_000001_000019_gtFine_labelTrainIds.png"]  # val split only
    assert len(load_dataset(tmp_path, split="train")) == 1
    assert (ds.read_mask(1, 19, (4, 6)) == IDS).all()  # 255 stays ignore
    (tmp_path / "gtFine" / "val" / "lindau" / "lindau_000001_000019_gtFine_labelTrainIds.png").unlink()
    with pytest.raises(ConfigError, match="createTrainIdLabelImgs"):
        load_dataset(tmp_path)


def test_ade20k_reduces_the_zero_label(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "validation" / "ADE_val_00000001.jpg")
    _mask(tmp_path / "annotations" / "validation" / "ADE_val_00000001.png", np.array([[0, 1, 2, 150, 0, 3]] * 4))
    ds = load_dataset(tmp_path)
    assert ds.layout == "ade20k" and ds.reduce_zero_label
    # 0 ("other") -> 255 ignore, k -> k - 1 (MMSegmentation reduce_zero_label)
    assert ds.read_mask(0, 150, (4, 6))[0].tolist() == [255, 0, 1, 149, 255, 2]


def test_voc_uses_the_images_that_have_masks_and_the_split_list(tmp_path: Path) -> None:
    voc = tmp_path / "VOC2012"
    for stem in ("2007_000032", "2007_000033", "2008_000001"):
        _image(voc / "JPEGImages" / f"{stem}.jpg")
    for stem in ("2007_000032", "2007_000033"):
        _mask(voc / "SegmentationClass" / f"{stem}.png", IDS, mode="P")  # palette PNG of class indices
    ds = load_dataset(voc)
    assert ds.layout == "voc" and [p.stem for p in ds.images] == ["2007_000032", "2007_000033"]
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n")
    assert [p.stem for p in load_dataset(voc).images] == ["2007_000033"]
    assert (load_dataset(voc).read_mask(0, 21, (4, 6)) == IDS).all()  # palette indices, not colours


def test_label_map_maps_ids_and_keeps_ignore() -> None:
    assert parse_label_map("15=1, *=0") == {15: 1, "*": 0}
    for bad in ("15", "a=1", "1=-1", "70000=1"):
        with pytest.raises(ConfigError, match="SRC=DST"):
            parse_label_map(bad)


def test_label_map_is_a_typed_value(tmp_path: Path) -> None:
    lmap = parse_label_map("15=1,*=0")
    assert isinstance(lmap, LabelMap) and str(lmap) == "15=1,*=0" and LabelMap({15: 1, "*": 0}) == lmap
    with pytest.raises(ConfigError, match="not a class id pair"):
        LabelMap({15: -1})
    _image(tmp_path / "x.png")
    with pytest.raises(TypeError, match=r"parse_label_map\('15=1'\)"):
        load_dataset(tmp_path, label_map="15=1")  # type: ignore[arg-type]  # the CLI's text is parsed by the CLI
    ds = Dataset.of([tmp_path / "x.png"], source="x", label_map={15: 1, "*": 0})  # any mapping becomes a LabelMap
    assert isinstance(ds.label_map, LabelMap) and ds.label_map == lmap


def test_read_mask_applies_the_map_and_refuses_unmapped_ids(tmp_path: Path) -> None:
    path = _mask(tmp_path / "m.png", np.array([[0, 15, 9, 255]]))
    assert read_mask(path, 2, (1, 4), label_map={15: 1, "*": 0}).tolist() == [[0, 1, 0, 255]]
    assert read_mask(path, 2, (1, 4), label_map={15: 1, "*": 0, 255: 0}).tolist() == [[0, 1, 0, 0]]
    with pytest.raises(ConfigError, match="class id 15 but the model has 2 classes.*--label-map"):
        read_mask(path, 2, (1, 4))
    with pytest.raises(ConfigError, match="mask is 4x1 but its image is 5x1"):
        read_mask(path, 2, (1, 5), label_map={15: 1, "*": 0})
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (4, 1)).save(rgb)
    with pytest.raises(ConfigError, match="mask mode RGB"):
        read_mask(rgb, 2, (1, 4))


def test_bad_layout_and_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown dataset layout 'coco'"):
        load_dataset(tmp_path, layout="coco")
    with pytest.raises(ConfigError, match="no such folder"):
        load_dataset(tmp_path / "nope")
    _image(tmp_path / "x.png")
    with pytest.raises(ConfigError, match="layout 'plain' needs masks"):
        load_dataset(tmp_path, layout="plain")


@pytest.mark.parametrize("fmt", ["SGI", "TGA", "BMP"])
def test_masks_are_decoded_as_png_only(tmp_path: Path, fmt: str) -> None:
    """A mask in another format (named .png, or not) is refused in one line, never decoded and scored."""
    ids = np.array([[0, 1, 1, 0]] * 3, np.uint8)
    for name in ("m.png", f"m.{fmt.lower()}"):
        path = tmp_path / name
        Image.fromarray(ids).save(path, format=fmt)
        assert Image.open(path).format == fmt  # Pillow itself would decode it
        with pytest.raises(ConfigError, match=rf"^{re.escape(name)}: not a PNG; masks must be single-channel class-id PNGs"):
            read_mask(path, 2, (3, 4))
    # through a dataset, as 'edgeseg compare' and 'build --eval' read masks
    _image(tmp_path / "set" / "images" / "a.jpg", (4, 3))
    (tmp_path / "set" / "masks").mkdir()
    Image.fromarray(ids).save(tmp_path / "set" / "masks" / "a.png", format=fmt)
    ds = load_dataset(tmp_path / "set")
    with pytest.raises(ConfigError, match="a.png: not a PNG"):
        ds.read_mask(0, 2, (3, 4))
    png = _mask(tmp_path / "ok.png", ids)
    assert (read_mask(png, 2, (3, 4)) == ids).all()


def test_mask_size_is_checked_before_decoding(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.new("L", (12000, 10000)).save(big)  # 120 MP of zeros: a small PNG
    with pytest.raises(ConfigError, match="mask is 12000x10000 but its image is 4x3"):
        read_mask(big, 2, (3, 4))
    cut = tmp_path / "cut.png"
    cut.write_bytes(_mask(tmp_path / "whole.png", IDS).read_bytes()[:45])
    with pytest.raises(ConfigError, match=r"cut.png: not a readable mask PNG"):
        read_mask(cut, 3, (4, 6))
