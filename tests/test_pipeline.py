"""Pre/post-processing maths (edgeseg_runtime.pipeline) against hand-computed values and numpy references."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

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


def _reference_post(scores: np.ndarray, h: int, w: int) -> np.ndarray:
    planes = [np.asarray(Image.fromarray(c, mode="F").resize((w, h), Image.BILINEAR)) for c in scores[0]]
    return np.argmax(np.stack(planes), axis=0)


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
