"""Boundary-only arg-max (edgeseg_runtime.resize): labels identical to "resize every score plane, then arg-max".

Equality is checked bit for bit on real networks' outputs for real photos (the trained default model,
PP-OCRv4's text detector from the rapidocr wheel, MMSegmentation's Fast-SCNN logits at 1/8 resolution
with 19 classes), on outputs made to tie (quantized steps, duplicated classes, constant planes), with
NaN and inf, and on random shapes, scales and crops (hypothesis). The full path itself is checked
against PyTorch's ``F.interpolate(mode="bilinear", align_corners=False)``, which mmseg uses.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("hypothesis", reason="hypothesis is not installed (extra 'dev')")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edgeseg import SAMPLE_IMAGES
from edgeseg_runtime import Archive, Segmentor, load_image
from edgeseg_runtime.resize import argmax_first, linear_taps, resize_scores, resized_argmax

RNG = np.random.default_rng(11)

#: (height, width) of the label maps: enlarging 8x, odd factors, a halving, identity on one axis, shrinking
SIZES = [(2048, 1024), (1024, 2048), (517, 333), (128, 128), (256, 700), (90, 60)]


def _full(scores: np.ndarray, h: int, w: int, extent: tuple[float, float] | None = None) -> np.ndarray:
    return argmax_first(resize_scores(scores, h, w, extent), np.uint8)


def _torch_labels(scores: np.ndarray, h: int, w: int) -> np.ndarray:
    torch = pytest.importorskip("torch", reason="torch is not installed (extra 'torch')")
    t = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(scores[None])), size=(h, w),
                                        mode="bilinear", align_corners=False)
    return t[0].argmax(0).numpy()


def _assert_same_labels(scores: np.ndarray, sizes: list[tuple[int, int]] = SIZES) -> None:
    for h, w in sizes:
        fast = resized_argmax(scores, h, w)
        full = _full(scores, h, w)
        assert fast.dtype == np.uint8 and fast.shape == (h, w)
        np.testing.assert_array_equal(fast, full, err_msg=f"{scores.shape} -> {h}x{w}")


@pytest.fixture(scope="module")
def default_outputs(archives: dict[str, object], photos: dict[str, object]) -> list[np.ndarray]:
    """The trained default model's raw scores (2, 256, 256) on real photos."""
    with Archive.open(archives["cpu"]) as archive, Segmentor(archive) as seg:
        images = [*photos.values(), *sorted(SAMPLE_IMAGES.glob("*.png"))]
        return [seg.forward(seg.prepare(seg.load(p)))[0] for p in images]


def test_default_model_labels_identical_to_resize_then_argmax(default_outputs: list[np.ndarray]) -> None:
    for scores in default_outputs:
        _assert_same_labels(scores)
        for h, w in SIZES[:3]:  # and the full path is mmseg's resize (PyTorch) up to float rounding at ties
            assert (_full(scores, h, w) == _torch_labels(scores, h, w)).mean() > 0.9999


def test_ties_from_quantized_scores_give_the_same_labels(default_outputs: list[np.ndarray]) -> None:
    """int8-like outputs: scores on a coarse grid tie often, in low-res pixels and after interpolation."""
    for scores in default_outputs:
        for step in (0.5, 1 / 16):
            quantized = np.round(scores / step) * step
            quantized[1, ::7] = quantized[0, ::7]  # and exact ties along every 7th row
            _assert_same_labels(quantized.astype(np.float32), SIZES[:4])


def test_duplicate_and_constant_classes(default_outputs: list[np.ndarray]) -> None:
    scores = default_outputs[0]
    stacked = np.stack([scores[0], scores[1], scores[1], np.full_like(scores[0], scores.max()), scores[0]])
    labels = resized_argmax(stacked, 517, 333)
    np.testing.assert_array_equal(labels, _full(stacked, 517, 333))
    assert not np.isin(labels, [2, 4]).any()  # a duplicate never wins over its first copy
    flat = np.zeros((4, 16, 16), np.float32)
    assert not resized_argmax(flat, 100, 100).any()  # all tied: class 0


def test_non_finite_scores_follow_the_full_path(default_outputs: list[np.ndarray]) -> None:
    scores = default_outputs[0].copy()
    scores[1, 100:104, 30:40] = np.nan
    scores[0, 10, 10] = np.inf
    scores[1, 200, 200] = -np.inf
    scores[0, 50:52, 60] = np.nan
    scores[1, 50:52, 60] = np.nan  # all classes NaN: class 0
    _assert_same_labels(scores, SIZES[:4])


def test_padded_output_crop_same_labels(default_outputs: list[np.ndarray]) -> None:
    """A fractional crop (letterboxed input): the part of the output that covers the image."""
    scores = default_outputs[1]
    for extent in ((200.5, 256.0), (256.0, 97.25), (31.0, 63.5)):
        rows, cols = int(np.ceil(extent[0])), int(np.ceil(extent[1]))
        part = np.ascontiguousarray(scores[:, :rows, :cols])
        for h, w in ((480, 640), (1000, 400)):
            np.testing.assert_array_equal(resized_argmax(part, h, w, extent=extent), _full(part, h, w, extent))


def test_nineteen_class_logits_of_a_real_network() -> None:
    """MMSegmentation's Fast-SCNN (19 Cityscapes classes, seeded weights): its decode head's 1/8-resolution
    logits on real photos, resized to the photo as mmseg's segmentor does."""
    torch = pytest.importorskip("torch", reason="torch is not installed (extra 'torch')")
    pytest.importorskip("mmseg", reason="mmseg is not installed (extra 'mmseg')")
    skdata = pytest.importorskip("skimage.data", reason="skimage.data is not installed (extra 'dev')")
    from edgeseg.mmseg import load_mmseg

    torch.manual_seed(0)
    module, _ = load_mmseg("fast_scnn_8xb4-160k_cityscapes-512x1024", input_size=(256, 512))
    for photo in (skdata.coffee(), skdata.chelsea()):
        rgb = np.asarray(Image.fromarray(photo).resize((512, 256), Image.Resampling.BILINEAR), dtype=np.float32)
        x = torch.from_numpy(((rgb - 123.675) / 58.395).transpose(2, 0, 1)[None].copy())
        with torch.no_grad():
            logits = module.model.decode_head.forward(module.model.extract_feat(x))[0].numpy()
        assert logits.shape == (19, 32, 64)
        _assert_same_labels(np.ascontiguousarray(logits, dtype=np.float32), [(1024, 2048), (256, 512), (300, 500)])


def test_text_detector_probabilities_thresholded() -> None:
    """PP-OCRv4's detector (a trained third-party DBNet) on a real page: its probability map as the
    two scores ``[2t - p, p]`` edgeseg gives a thresholded 1-channel model."""
    import importlib.util
    from pathlib import Path

    ort = pytest.importorskip("onnxruntime")
    skdata = pytest.importorskip("skimage.data", reason="skimage.data is not installed (extra 'dev')")
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or spec.origin is None:
        pytest.skip("rapidocr-onnxruntime is not installed (extra 'dev')")
    model = Path(spec.origin).parent / "models" / "ch_PP-OCRv4_det_infer.onnx"
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    page = np.asarray(Image.fromarray(skdata.page()).convert("RGB").resize((384, 192), Image.Resampling.BILINEAR))
    x = ((page[..., ::-1] / 255.0 - 0.5) / 0.5).astype(np.float32).transpose(2, 0, 1)[None]
    p = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x)})[0][0, 0]
    scores = np.stack([0.6 - p, p]).astype(np.float32)
    assert 0.01 < (p > 0.3).mean() < 0.9  # text and background both present
    _assert_same_labels(scores, [(582, 1164), (191, 383), (1000, 500)])


@settings(max_examples=60, deadline=None)
@given(classes=st.integers(2, 7), rows=st.integers(1, 12), cols=st.integers(1, 12), height=st.integers(1, 80),
       width=st.integers(1, 80), levels=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_random_shapes_and_ties(classes: int, rows: int, cols: int, height: int, width: int, levels: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = (rng.integers(0, levels, (classes, rows, cols)) / (levels - 1)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(resized_argmax(scores, height, width), _full(scores, height, width))


def test_taps_are_opencv_half_pixel_sampling() -> None:
    """Output sample x reads input (x + 0.5) * in / out - 0.5, clamped: enlarging 2 -> 4 and halving 4 -> 2."""
    up = linear_taps(2, 4)
    assert up.i0.tolist() == [0, 0, 0, 1] and up.i1.tolist() == [1, 1, 1, 1]
    np.testing.assert_allclose(up.w1, [0.0, 0.25, 0.75, 0.0])
    down = linear_taps(4, 2)
    assert down.i0.tolist() == [0, 2] and np.allclose(down.w1, [0.5, 0.5])
    assert linear_taps(5, 5).identity and not linear_taps(5, 5, extent=4.5).identity


def test_probs_planes_match_the_labels(archives: dict[str, object]) -> None:
    """``--probs`` (the full path) and the labels agree: the labels are the arg-max of the saved scores."""
    with Archive.open(archives["cpu"]) as archive, Segmentor(archive) as seg:
        rgb = load_image(SAMPLE_IMAGES / "astronaut.png")
        big = np.asarray(Image.fromarray(rgb).resize((900, 700), Image.Resampling.BILINEAR))
        result = seg.segment(big, scores=True)
        assert result.scores is not None and result.scores.shape == (2, 700, 900)
        np.testing.assert_array_equal(result.labels, argmax_first(result.scores, np.uint8))


def test_bands_in_threads_give_the_same_labels(default_outputs: list[np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    """Large outputs are analysed in bands of rows, one thread each: same labels as in one piece."""
    from edgeseg_runtime import resize

    monkeypatch.setattr(resize, "BAND_WORK", 1)
    monkeypatch.setattr(resize.os, "cpu_count", lambda: 3)
    scores = default_outputs[0]
    quantized = (np.round(scores * 4) / 4).astype(np.float32)
    for s in (scores, quantized):
        for h, w in [(2048, 1024), (517, 333), (256, 700), (3, 900)]:
            np.testing.assert_array_equal(resize.resized_argmax(s, h, w), _full(s, h, w), err_msg=f"{h}x{w}")
        part = np.ascontiguousarray(s[:, :201, :])
        np.testing.assert_array_equal(resize.resized_argmax(part, 700, 640, extent=(200.5, 256.0)),
                                      _full(part, 700, 640, (200.5, 256.0)))


@pytest.mark.parametrize(("size", "out"), [((64, 128), (32, 64)), ((64, 128), (16, 32)), ((64, 128), (64, 64)),
                                           ((60, 90), (23, 31)), ((20, 30), (80, 90))])
def test_scores_resize_is_torch_bilinear(size: tuple[int, int], out: tuple[int, int]) -> None:
    """Integer shrink factors (strided views instead of gathers), an identity axis, odd factors, enlarging."""
    torch = pytest.importorskip("torch", reason="torch is not installed (extra 'torch')")
    scores = RNG.standard_normal((5, *size)).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(scores[None]), size=out, mode="bilinear",
                                               align_corners=False)[0].numpy()
    # PyTorch computes source coordinates in float32 (in / out rounded), numpy here in float64: odd factors
    # differ by up to 3e-5; a wrong tap or weight would differ by tenths
    np.testing.assert_allclose(resize_scores(scores, *out), expected, atol=1e-4)
    np.testing.assert_array_equal(resized_argmax(scores, *out), _full(scores, *out))
