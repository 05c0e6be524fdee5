"""Pre/post-processing maths (edgeseg_runtime.pipeline) against hand-computed values and numpy references."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgeseg import SAMPLE_IMAGES
from edgeseg_runtime import ArchiveError
from edgeseg_runtime.pipeline import Postprocess, Preprocess, parse_pipeline

RNG = np.random.default_rng(3)


def test_normalize_matches_formula_and_layout() -> None:
    rgb = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    x = Preprocess(size=None, keep_ratio=False, mean=mean, std=std, to_rgb=True)(rgb)
    assert x.shape == (1, 3, 4, 6) and x.dtype == np.float32 and x.flags.c_contiguous
    expected = (rgb.astype(np.float64) - mean) / std
    np.testing.assert_allclose(x[0].transpose(1, 2, 0), expected, rtol=1e-5, atol=1e-5)


def test_bgr_network_gets_reversed_channels() -> None:
    rgb = np.zeros((1, 1, 3), np.uint8)
    rgb[0, 0] = [10, 20, 30]
    x = Preprocess(size=None, keep_ratio=False, mean=(0, 0, 0), std=(1, 1, 1), to_rgb=False)(rgb)
    assert x[0, :, 0, 0].tolist() == [30.0, 20.0, 10.0]


@pytest.mark.parametrize(
    ("size", "keep", "image", "expected"),
    [((256, 256), False, (640, 427), (256, 256)), ((2048, 1024), True, (1000, 500), (2048, 1024)), ((2048, 1024), True, (500, 500), (1024, 1024))],
)
def test_resize_rules(size, keep, image, expected) -> None:  # noqa: ANN001
    pre = Preprocess(size=size, keep_ratio=keep, mean=(0, 0, 0), std=(1, 1, 1), to_rgb=True)
    assert pre.target_size(*image) == expected
    x = pre(np.zeros((image[1], image[0], 3), np.uint8))
    assert x.shape == (1, 3, expected[1], expected[0])


def _torch_bilinear(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """mmseg's resize: ``F.interpolate(mode="bilinear", align_corners=False)`` of ``(N, C, h0, w0)`` float."""
    torch = pytest.importorskip("torch", reason="torch is not installed (extra 'torch')")
    t = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(x, np.float32)), size=(h, w),
                                        mode="bilinear", align_corners=False)
    return t.numpy()


def _reference_post(scores: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.argmax(_torch_bilinear(scores, h, w)[0], axis=0)


@pytest.mark.parametrize(("src", "dst"), [((512, 512), (256, 256)), ((427, 640), (256, 512)), ((300, 200), (512, 384)), ((9, 7), (64, 3))])
def test_resize_is_opencv_and_torch_bilinear_without_antialiasing(src, dst) -> None:  # noqa: ANN001
    """Shrinking and enlarging: within one grey level of OpenCV INTER_LINEAR (what mmcv and the SDK use)."""
    rgb = np.asarray(Image.open(SAMPLE_IMAGES / "astronaut.png").convert("RGB").resize(src[::-1], Image.Resampling.LANCZOS))
    pre = Preprocess(size=dst[::-1], keep_ratio=False, mean=(0, 0, 0), std=(1, 1, 1), to_rgb=True)
    ours = pre.resize(rgb).astype(np.int16)
    exact = _torch_bilinear(rgb.transpose(2, 0, 1)[None].astype(np.float32), *dst)[0].transpose(1, 2, 0)
    assert np.abs(ours - exact).max() < 1.01  # one grey level: Pillow makes uint8 by truncating
    cv2 = pytest.importorskip("cv2", reason="cv2 is not installed (extra 'mmseg')")
    assert np.abs(ours - cv2.resize(rgb, dst[::-1], interpolation=cv2.INTER_LINEAR)).max() <= 1
    if dst[0] < src[0]:  # an anti-aliased shrink (Pillow's Image.resize) is far from it
        aa = np.asarray(Image.fromarray(rgb).resize(dst[::-1], Image.Resampling.BILINEAR)).astype(np.int16)
        assert np.abs(aa - exact).max() > 10


def test_score_planes_resize_like_mmseg() -> None:
    scores = RNG.standard_normal((1, 3, 40, 30)).astype(np.float32)
    for h, w in ((160, 120), (17, 11)):
        _, resized = Postprocess(3, False)(scores, h, w, want_scores=True)
        np.testing.assert_allclose(resized, _torch_bilinear(scores, h, w)[0], atol=2e-5)


def test_two_class_fast_path_equals_argmax_of_resized_scores() -> None:
    p = RNG.random((1, 1, 32, 32), dtype=np.float32)
    scores = np.concatenate([1 - p, p], axis=1)
    labels, resized = Postprocess(2, False)(scores, 77, 51, want_scores=True)
    ref = _reference_post(scores, 77, 51)
    assert labels.shape == (77, 51) and labels.dtype == np.uint8
    assert np.mean(labels == ref) > 0.999  # equal up to float rounding at exact ties
    assert resized.shape == (2, 77, 51)


def test_many_classes_argmax_with_ties() -> None:
    scores = RNG.integers(0, 4, (1, 7, 9, 11)).astype(np.float32)  # many ties: first index wins
    labels, _ = Postprocess(7, False)(scores, 9, 11)
    assert np.array_equal(labels, np.argmax(scores[0], axis=0))
    big = RNG.random((1, 5, 8, 8), dtype=np.float32)
    labels, _ = Postprocess(5, False)(big, 20, 24)
    assert np.array_equal(labels, _reference_post(big, 20, 24))


def test_argmax_output_resized_nearest() -> None:
    labels_in = np.array([[[[0, 1], [2, 3]]]], dtype=np.int64)
    labels, scores = Postprocess(4, True)(labels_in, 4, 4)
    assert scores is None
    assert labels.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


def test_parse_pipeline_rejects_garbage() -> None:
    with pytest.raises(ArchiveError, match="not a valid MMDeploy segmentation pipeline"):
        parse_pipeline({"pipeline": {"tasks": []}})


# ---------------------------------------------------------------- Pad: size divisor and letterboxing


@pytest.mark.parametrize(("divisor", "image", "resized", "padded"),
                         [(32, (500, 375), (683, 512), (704, 512)), (32, (640, 640), (512, 512), (512, 512)),
                          (7, (100, 300), (512, 1536), (518, 1540))])
def test_pad_to_size_divisor(divisor, image, resized, padded) -> None:  # noqa: ANN001
    """mmseg Pad(size_divisor): bottom/right padding with pad_val in network units; the image part is untouched."""
    pre = Preprocess(size=(2048, 512), keep_ratio=True, mean=(100, 100, 100), std=(2, 2, 2), to_rgb=True,
                     pad_divisor=divisor, pad_value=-7.0)
    rgb = RNG.integers(0, 256, (image[1], image[0], 3), dtype=np.uint8)
    assert pre.target_size(*image) == resized and pre.padded_size(*resized) == padded
    x = pre(rgb)
    assert x.shape == (1, 3, padded[1], padded[0]) and padded[0] % divisor == 0 == padded[1] % divisor
    plain = Preprocess(size=(2048, 512), keep_ratio=True, mean=(100, 100, 100), std=(2, 2, 2), to_rgb=True)(rgb)
    np.testing.assert_array_equal(x[..., :resized[1], :resized[0]], plain)
    assert np.all(x[..., resized[1]:, :] == -7.0) and np.all(x[..., :, resized[0]:] == -7.0)
    assert pre.valid_fraction(*image) == (resized[1] / padded[1], resized[0] / padded[0])


def test_letterbox_fits_the_box_whatever_the_orientation() -> None:
    pre = Preprocess(size=(320, 192), keep_ratio=True, mean=(0, 0, 0), std=(1, 1, 1), to_rgb=True,
                     pad_size=(320, 192))
    for image, resized in (((1000, 500), (320, 160)), ((500, 1000), (96, 192)), ((320, 192), (320, 192))):
        assert pre.target_size(*image) == resized
        assert pre(np.zeros((image[1], image[0], 3), np.uint8)).shape == (1, 3, 192, 320)


@pytest.mark.parametrize(("stride", "valid"), [(1, (0.75, 0.5)), (4, (0.75, 0.5)), (4, (1.0, 0.8125)), (8, (0.6, 1.0))])
def test_padded_output_is_cropped_like_mmseg(stride, valid) -> None:  # noqa: ANN001
    """The padding is cropped before the resize to the image: mmseg upsamples the logits to the padded input,
    crops the padding, then resizes to the original image (BaseSegmentor.postprocess_result); cropping the
    same region of the output directly gives the same labels (exactly at stride 1; at stride > 1 within the
    few pixels where the two resamplings round apart)."""
    ph, pw = 320, 256
    scores = RNG.standard_normal((1, 4, ph // stride, pw // stride)).astype(np.float32)
    # smooth the scores (real logits are smooth) so the comparison measures the crop, not noise
    scores = _torch_bilinear(_torch_bilinear(scores, ph // stride // 4, pw // stride // 4), ph // stride, pw // stride)
    vh, vw = round(ph * valid[0]), round(pw * valid[1])
    full = _torch_bilinear(scores, ph, pw)[..., :vh, :vw]
    image_h, image_w = 301, 517
    expected = np.argmax(_torch_bilinear(full, image_h, image_w)[0], axis=0)
    labels, _ = Postprocess(4, False)(scores, image_h, image_w, valid=valid)
    agreement = np.mean(labels == expected)
    assert agreement == 1.0 if stride == 1 else agreement > 0.99, agreement
    uncropped, _ = Postprocess(4, False)(scores, image_h, image_w)
    if valid != (1.0, 1.0):
        assert np.mean(uncropped == expected) < 0.9  # without the crop the labels are displaced
    two = np.concatenate([scores[:, :1], scores[:, 1:2]], axis=1)
    fast, _ = Postprocess(2, False)(two, image_h, image_w, valid=valid)
    exact = np.argmax(_torch_bilinear(_torch_bilinear(two, ph, pw)[..., :vh, :vw], image_h, image_w)[0], axis=0)
    assert np.mean(fast == exact) == 1.0 if stride == 1 else np.mean(fast == exact) > 0.99
    labels_out = np.argmax(scores, axis=1)[:, None].astype(np.int64)  # with_argmax: nearest, same crop
    nearest, _ = Postprocess(4, True)(labels_out, ph // stride, pw // stride, valid=(1.0, 1.0))
    np.testing.assert_array_equal(nearest, labels_out[0, 0])
    cropped, _ = Postprocess(4, True)(labels_out, vh // stride, vw // stride, valid=valid)
    if vh % stride == 0 and vw % stride == 0:
        np.testing.assert_array_equal(cropped, labels_out[0, 0, :vh // stride, :vw // stride])


def test_pad_in_pipeline_json_round_trips_and_is_checked() -> None:
    def doc(*transforms: dict) -> dict:
        return {"pipeline": {"tasks": [
            {"type": "Task", "module": "Transform", "transforms": list(transforms)},
            {"type": "Task", "module": "mmseg", "component": "ResizeMask", "params": {"num_classes": 2, "with_argmax": False}},
        ]}}

    resize = {"type": "Resize", "keep_ratio": True, "size": [1024, 512]}
    norm = {"type": "Normalize", "mean": [1, 2, 3], "std": [4, 5, 6], "to_rgb": True}
    pre, _ = parse_pipeline(doc(resize, norm, {"type": "Pad", "size_divisor": 32, "pad_val": {"img": 0.5, "seg": 255}}))
    assert (pre.pad_divisor, pre.pad_size, pre.pad_value) == (32, None, 0.5)
    pre, _ = parse_pipeline(doc(resize, norm, {"type": "Pad", "size": [1024, 512]}))
    assert (pre.pad_divisor, pre.pad_size, pre.pad_value) == (None, (1024, 512), 0.0)
    for bad, message in (((resize, {"type": "Pad", "size_divisor": 32}, norm), "Pad before Normalize"),
                         ((resize, norm, {"type": "Pad"}), "needs size_divisor or size"),
                         ((resize, norm, {"type": "Pad", "size_divisor": 0}), "size_divisor"),
                         ((resize, norm, {"type": "Pad", "size": [1, 1e9]}), "size"),
                         ((resize, norm, {"type": "Pad", "size_divisor": 32, "pad_val": float("nan")}), "pad_val")):
        with pytest.raises(ArchiveError, match=message):
            parse_pipeline(doc(*bad))


def test_score_planes_of_a_padded_output_are_the_cropped_ones() -> None:
    """``plane_images``/``planes`` (``edgeseg run --probs``) crop the padding like the labels do."""
    scores = RNG.standard_normal((1, 3, 40, 60)).astype(np.float32)
    labels, stacked = Postprocess(3, False)(scores, 90, 100, want_scores=True, valid=(0.5, 0.75))
    planes = np.stack(list(Postprocess(3, False).planes(scores, 90, 100, valid=(0.5, 0.75))))
    np.testing.assert_array_equal(planes, stacked)
    np.testing.assert_allclose(planes, _torch_bilinear(scores[..., :20, :45], 90, 100)[0], atol=2e-5)
    np.testing.assert_array_equal(labels, np.argmax(planes, axis=0))


@pytest.mark.parametrize(("sides", "image", "resized"),
                         [((736, None), (384, 191), (1480, 736)), ((736, None), (1411, 1411), (1411, 1411)),
                          ((736, 2048), (4000, 3000), (2048, 1536)), ((736, 1000), (100, 50), (1000, 500)),
                          ((None, 960), (640, 480), (640, 480))])
def test_dynamic_size_within_min_and_max_side(sides, image, resized) -> None:  # noqa: ANN001
    """Resize without a size: the image's own size, scaled with its ratio so the short side is >= min_side and
    the long side <= max_side, max_side winning (PaddleOCR DetResizeForTest limit_type min/max, without its
    rounding to 32: the Pad step pads instead)."""
    transforms = [{"type": "Resize", "keep_ratio": True, **{k: v for k, v in zip(("min_side", "max_side"), sides) if v}},
                  {"type": "Normalize", "mean": [0, 0, 0], "std": [1, 1, 1], "to_rgb": True},
                  {"type": "Pad", "size_divisor": 32}]
    doc = {"pipeline": {"tasks": [
        {"type": "Task", "module": "Transform", "transforms": transforms},
        {"type": "Task", "module": "mmseg", "component": "ResizeMask", "params": {"num_classes": 2, "with_argmax": False}},
    ]}}
    pre, _ = parse_pipeline(doc)
    assert (pre.min_side, pre.max_side, pre.size) == (*sides, None)
    assert pre.target_size(*image) == resized
    x = pre(np.zeros((image[1], image[0], 3), np.uint8))
    assert x.shape == (1, 3, -(-resized[1] // 32) * 32, -(-resized[0] // 32) * 32)
    for bad, message in (({"size": [512, 512]}, "take no size"), ({"keep_ratio": False}, "keep the ratio"),
                         ({"min_side": 900, "max_side": 800}, "larger than max_side"), ({"min_side": 0}, "min_side")):
        broken = {**doc, "pipeline": {"tasks": [{**doc["pipeline"]["tasks"][0], "transforms": [
            {**transforms[0], "min_side": 736, **bad}, *transforms[1:]]}, doc["pipeline"]["tasks"][1]]}}
        with pytest.raises(ArchiveError, match=message):
            parse_pipeline(broken)
