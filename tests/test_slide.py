"""Sliding-window inference (``[inference] mode = "slide"``): mmseg's window rule, and a real model through
every host-runnable target against a tiled reference computed here with plain ONNX Runtime."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from edgeseg_runtime import ArchiveError
from edgeseg_runtime.archive import Archive
from edgeseg_runtime.images import load_image
from edgeseg_runtime.pipeline import parse_pipeline
from edgeseg_runtime.segmentor import Segmentor
from edgeseg_runtime.slide import slide_inference, windows
from PIL import Image

import edgeseg
from edgeseg import ConfigError, build

WINDOW, STRIDE = (256, 256), (170, 170)


def _mmseg_windows(h_img: int, w_img: int, crop: tuple[int, int], stride: tuple[int, int]) -> list[tuple[int, ...]]:
    """mmseg 1.x ``EncoderDecoder.slide_inference``'s loop, written out as it is there."""
    h_stride, w_stride = stride
    h_crop, w_crop = crop
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    out = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * h_stride
            x1 = w_idx * w_stride
            y2 = min(y1 + h_crop, h_img)
            x2 = min(x1 + w_crop, w_img)
            y1 = max(y2 - h_crop, 0)
            x1 = max(x2 - w_crop, 0)
            out.append((y1, y2, x1, x2))
    return out


@pytest.mark.parametrize(("h", "w", "crop", "stride"), [(512, 512, (256, 256), (170, 170)), (1024, 2048, (512, 1024), (341, 683)),
                                                        (100, 700, (256, 256), (256, 200)), (256, 256, (256, 256), (1, 1))])
def test_windows_are_mmsegs_and_cover_every_pixel(h: int, w: int, crop: tuple[int, int], stride: tuple[int, int]) -> None:
    got = windows(h, w, crop, stride)
    assert got == _mmseg_windows(h, w, crop, stride)
    count = np.zeros((h, w), np.int32)
    for y1, y2, x1, x2 in got:
        assert 0 <= y1 < y2 <= h and 0 <= x1 < x2 <= w
        assert (y2 - y1, x2 - x1) == (min(crop[0], h), min(crop[1], w))
        count[y1:y2, x1:x2] += 1
    assert count.min() >= 1


def test_scores_are_overlap_averaged_and_small_images_padded() -> None:
    """A network whose output is its input's first channel, at half resolution: the average of identical
    overlapping copies is the input itself (bilinear up-sampling of a 2x down-sampled ramp is exact inside)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 300, 420)).astype(np.float32)
    calls = []

    def identity(t: np.ndarray) -> np.ndarray:
        calls.append(t.shape)
        return np.concatenate([t[:, :1], -t[:, :1]], axis=1)

    out = slide_inference(x, (128, 160), (100, 120), identity)
    assert out.shape == (1, 2, 300, 420) and len(calls) == len(windows(300, 420, (128, 160), (100, 120)))
    np.testing.assert_allclose(out[0, 0], x[0, 0], atol=1e-6)
    small = slide_inference(x[:, :, :50, :70], (128, 160), (100, 120), identity, pad_value=9.0)
    assert calls[-1] == (1, 3, 128, 160) and small.shape == (1, 2, 50, 70)  # padded window, scores cropped
    np.testing.assert_allclose(small[0, 1], -x[0, 0, :50, :70], atol=1e-6)


def test_a_smaller_output_is_resized_bilinearly_to_the_window() -> None:
    """A network whose output is half its input's resolution (2x2 mean pooling): each window's scores are
    resized bilinearly (half-pixel centres) back to the window, which is exact for a linear ramp away from the
    window edges (there edge clamping is off by at most half a pixel's slope)."""
    slope = 1e-3
    yy, xx = np.mgrid[0:300, 0:420].astype(np.float32)
    x = np.broadcast_to(slope * (yy + 2 * xx), (1, 3, 300, 420)).astype(np.float32)

    def pooled(t: np.ndarray) -> np.ndarray:
        n, _, h, w = t.shape
        half = t[:, :1].reshape(n, 1, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
        return np.concatenate([half, -half], axis=1)

    out = slide_inference(x, (128, 160), (100, 120), pooled)
    err = np.abs(out[0, 0] - x[0, 0])
    assert out.shape == (1, 2, 300, 420) and float(np.median(err)) < 1e-5, float(np.median(err))
    assert float(err.max()) <= 1.5 * slope * 1.01, float(err.max())  # half a pixel of the 3*slope-per-pixel ramp


def _slide_spec(tmp_path: Path, **inference: object) -> Path:
    text = edgeseg.DEFAULT_SPEC.read_text().replace('name = "selfie_segmentation"', 'name = "selfie_slide"')
    body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in {"mode": "slide", "stride": list(STRIDE), **inference}.items())
    path = tmp_path / "slide.toml"
    path.write_text(f"{text}\n[inference]\n{body}\n")
    return path


def _tiled_reference(rgb: np.ndarray) -> np.ndarray:
    """The embedded model (NHWC, x / 255, sigmoid person probability) run window by window with plain ONNX
    Runtime over the image at its own resolution, probabilities averaged where windows overlap, > 0.5."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(edgeseg.DEFAULT_MODEL), providers=["CPUExecutionProvider"])
    h, w = rgb.shape[:2]
    total = np.zeros((h, w)), np.zeros((h, w))
    for y1, y2, x1, x2 in _mmseg_windows(h, w, WINDOW, STRIDE):
        crop = rgb[y1:y2, x1:x2].astype(np.float32)[None] / 255
        total[0][y1:y2, x1:x2] += sess.run(None, {"input_1": crop})[0][0, ..., 0]
        total[1][y1:y2, x1:x2] += 1
    return total[0] / total[1] > 0.5


@pytest.mark.slow
@pytest.mark.parametrize(("target", "module"), [("cpu", None), ("intel", "openvino"), ("arm", "ncnn"), ("tflite", "litert_torch")])
def test_slide_on_every_backend_agrees_with_a_tiled_reference(target: str, module: str | None, tmp_path: Path,
                                                                photos: dict[str, Path]) -> None:
    if module:
        pytest.importorskip(module, reason=f"{module} is not installed (its extra)")
    golden = tmp_path / "golden"
    golden.mkdir()
    big = golden / "astronaut_big.png"  # larger than the 256x256 window in both directions: 4x5 windows
    Image.open(photos["astronaut"]).resize((760, 600), Image.Resampling.LANCZOS).save(big)
    result = build(edgeseg.DEFAULT_MODEL, target=target, spec=_slide_spec(tmp_path), out_dir=tmp_path / "dist",
                   golden=[golden, photos["astronaut"]], report=lambda _line: None)
    assert result.check is not None and result.check.passed  # golden-checked: the stitched scores, per image
    with tarfile.open(result.archive) as tar:
        params = json.load(tar.extractfile("pipeline.json"))["pipeline"]["tasks"][2]["params"]
    assert params["mode"] == "slide" and params["crop_size"] == [256, 256] and params["stride"] == [170, 170]
    with Archive.open(result.archive) as archive, Segmentor(archive) as seg:
        for path in (big, photos["astronaut"], photos["rocket"]):
            rgb = load_image(path)
            got = seg.segment(rgb)
            assert got.output.shape[2:] == rgb.shape[:2]  # at the image's own resolution (no scale given)
            want = _tiled_reference(rgb)
            assert 0.02 < want.mean() < 0.98 or path == photos["rocket"]  # a person in the astronaut photos
            assert np.mean(got.labels.astype(bool) == want) >= 0.99, (target, path.name)


def test_slide_spec_and_pipeline_are_checked(tmp_path: Path) -> None:
    from edgeseg.spec import load_spec

    for extra, message in (({"stride": [300, 100]}, "larger than the window"),
                           ({"mode": "whole", "stride": [1, 1]}, "apply to mode = 'slide'")):
        with pytest.raises(ConfigError, match=message):
            load_spec(_slide_spec(tmp_path, **extra))
    with pytest.raises(ConfigError, match="needs stride"):
        load_spec(None, {"name": "m", "output": {"kind": "logits", "classes": ["a", "b"]}, "inference": {"mode": "slide"}})
    with pytest.raises(ConfigError, match="builds fp32 or fp16"):
        edgeseg.build(target="cpu", spec=_slide_spec(tmp_path), precision="int8", out_dir=tmp_path / "d")

    def doc(params: dict) -> dict:
        return {"pipeline": {"tasks": [
            {"type": "Task", "module": "Transform", "transforms": [{"type": "Normalize", "mean": [0, 0, 0], "std": [1, 1, 1]}]},
            {"type": "Task", "module": "mmseg", "component": "ResizeMask",
             "params": {"num_classes": 2, "with_argmax": False, **params}}]}}

    parse_pipeline(doc({"mode": "slide", "crop_size": [256, 256], "stride": [170, 170]}))
    for params, message in (({"mode": "slide", "crop_size": [256, 256], "stride": [300, 170]}, "stride larger"),
                            ({"mode": "slide", "crop_size": [256, 256]}, "stride"),
                            ({"mode": "tiles"}, "not one of whole, slide"),
                            ({"mode": "slide", "crop_size": [256, 256], "stride": [1, 1], "with_argmax": True}, "labels")):
        with pytest.raises(ArchiveError, match=message):
            parse_pipeline(doc(params))
