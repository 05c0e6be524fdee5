"""Real third-party models that PyPI packages ship, through every host-runnable target, against the model's
own documented pre/post-processing.

PP-OCRv4 text detection (``ch_PP-OCRv4_det_infer.onnx``, DBNet, from the ``rapidocr-onnxruntime`` wheel):
NCHW BGR input with dynamic batch and H/W that must be multiples of 32, a 1-channel sigmoid text probability
thresholded at 0.3. Its own pipeline (``rapidocr_onnxruntime.ch_ppocr_det.utils.DetPreProcess``, config
``limit_type: min``, ``limit_side_len: 736``) scales the short side to 736 and rounds each side to a multiple
of 32; the archive keeps the ratio and pads to a multiple of 32 (dynamic targets) or letterboxes into a fixed
736x1920 input (static targets), which gives the same scale on these images. Images: scikit-image's ``page``
and ``text`` (real text) and two photos without text (``astronaut``, ``coffee``: false positives count).
"""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edgeseg
from conftest import edgeseg_cli
from edgeseg import ConfigError, build
from edgeseg_runtime.archive import Archive
from edgeseg_runtime.images import load_image
from edgeseg_runtime.segmentor import Segmentor

pytestmark = pytest.mark.slow

#: the model's own post-processing threshold (rapidocr config ``Det.thresh``)
THRESHOLD = 0.3
#: no name and no layouts: the file's stem names the archive and the graph gives NCHW
SPEC = f"""
[input]
size = [736, 1920]
color = "BGR"
mean = [127.5, 127.5, 127.5]
std = [127.5, 127.5, 127.5]
keep_ratio = true
size_divisor = 32

[output]
kind = "probability"
threshold = {THRESHOLD}
classes = ["background", "text"]
"""
NAME = "ch_PP-OCRv4_det_infer"


@pytest.fixture(scope="module")
def ocr(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The detector, its spec and the images."""
    found = importlib.util.find_spec("rapidocr_onnxruntime")
    if found is None:
        pytest.skip("rapidocr-onnxruntime is not installed (extra 'dev')")
    skdata = pytest.importorskip("skimage.data", reason="skimage.data is not installed (extra 'dev')")
    folder = tmp_path_factory.mktemp("ocr")
    images = folder / "images"
    images.mkdir()
    for name in ("page", "text", "astronaut", "coffee"):
        Image.fromarray(getattr(skdata, name)()).convert("RGB").save(images / f"{name}.png")
    (folder / "spec.toml").write_text(SPEC)
    model = Path(next(iter(found.submodule_search_locations))) / "models" / f"{NAME}.onnx"
    return {"model": model, "spec": folder / "spec.toml", "images": images, "out": folder / "dist"}


def _own_labels(rgb: np.ndarray, model: Path) -> np.ndarray:
    """The model run in plain ONNX Runtime with rapidocr's own pre-processing; the probability map resized
    to the image (OpenCV bilinear) and thresholded at :data:`THRESHOLD`."""
    import cv2
    import onnxruntime as ort
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess

    bgr = np.ascontiguousarray(rgb[..., ::-1])  # rapidocr loads images with OpenCV (BGR)
    x = DetPreProcess(limit_side_len=736, limit_type="min", mean=[0.5] * 3, std=[0.5] * 3)(bgr)
    p = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0][0, 0]
    return cv2.resize(p, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR) > THRESHOLD


@pytest.mark.parametrize(("target", "precision", "static"),
                         [("cpu", None, False), ("intel", None, False), ("arm", "fp32", True), ("tflite", None, True)])
def test_ocr_detector_builds_and_agrees_with_its_own_pipeline(ocr: dict[str, Path], target: str,
                                                                precision: str | None, static: bool) -> None:
    if target == "arm":
        pytest.importorskip("ncnn", reason="ncnn is not installed (extra 'ncnn')")
    if target == "tflite":
        pytest.importorskip("litert_torch", reason="litert-torch is not installed (extra 'tflite')")
    if target == "intel":
        pytest.importorskip("openvino", reason="openvino is not installed (extra 'openvino')")
    result = build(ocr["model"], target=target, spec=ocr["spec"], precision=precision, out_dir=ocr["out"],
                   golden=[ocr["images"]], report=lambda _line: None)
    assert result.archive.name.startswith(f"{NAME}-{target}-")  # named after the file
    assert result.check is not None and result.check.passed  # the golden check ran here and held
    m = result.manifest
    shape = m["model"]["input"]["shape"]
    with tarfile.open(result.archive) as tar:
        transforms = json.load(tar.extractfile("pipeline.json"))["pipeline"]["tasks"][0]["transforms"]
    pad = next(t for t in transforms if t["type"] == "Pad")
    if static:  # every axis fixed, batch included (pnnx and LiteRT refuse dynamic ones); letterboxed input
        assert shape == [1, 3, 736, 1920]
        assert pad["size"] == [1920, 736] and "size_divisor" not in pad
    else:  # dynamic batch and H/W kept, padded to multiples of 32
        assert all(isinstance(d, str) for d in (shape[0], shape[2], shape[3])), shape
        assert pad["size_divisor"] == 32
    agreements = {}
    with Archive.open(result.archive) as archive, Segmentor(archive) as seg:
        for path in sorted(ocr["images"].iterdir()):
            rgb = load_image(path)
            ours = seg.segment(rgb).labels.astype(bool)
            own = _own_labels(rgb, ocr["model"])
            agreements[path.stem] = float(np.mean(ours == own))
            if path.stem in ("page", "text"):  # real text found where the model's own pipeline finds it
                assert own.mean() > 0.03
                iou = np.sum(ours & own) / np.sum(ours | own)
                assert iou > 0.9, (path.stem, iou)
    assert min(agreements.values()) >= 0.99, agreements


def test_ocr_detector_fp16_failure_says_what_applies(ocr: dict[str, Path], tmp_path: Path) -> None:
    """pnnx's fp16 weights lose this model's text (a BatchNormalization variance of 9.8e7 does not fit fp16):
    the gate stops the build, and the advice is the one that applies to ncnn fp16 (fp32), not calibration."""
    pytest.importorskip("ncnn", reason="ncnn is not installed (extra 'ncnn')")
    proc = edgeseg_cli("build", "-m", ocr["model"], "-s", ocr["spec"], "-t", "arm", "-o", tmp_path,
                       "--golden", ocr["images"])
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "class text IoU" in line and "--precision fp32" in line and "calib" not in line, line
    assert not list(tmp_path.glob("*.tar.gz"))


def test_spec_defaults_come_from_the_model_file(ocr: dict[str, Path], tmp_path: Path) -> None:
    from edgeseg.export import spec_defaults

    assert spec_defaults(ocr["model"]) == {"name": NAME, "input": {"layout": "NCHW"}, "output": {"layout": "NCHW"}}
    nhwc = spec_defaults(edgeseg.DEFAULT_MODEL)  # the selfie model: [1, 256, 256, 3] -> [1, 256, 256, 1]
    assert nhwc["input"] == {"layout": "NHWC"} and nhwc["output"] == {"layout": "NHWC"}
    odd = tmp_path / "my model (v2).onnx"
    odd.write_bytes(edgeseg.DEFAULT_MODEL.read_bytes())
    assert spec_defaults(odd)["name"] == "my_model_v2_"
    with pytest.raises(ConfigError, match="does not exist"):
        spec_defaults(tmp_path / "nope.onnx")
    # a missing model is said before a missing spec
    proc = edgeseg_cli("build", "--target", "cpu", "--model", tmp_path / "nope.onnx")
    assert proc.returncode == 2 and "nope.onnx does not exist" in proc.stderr
