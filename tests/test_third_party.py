"""Real third-party models that PyPI packages ship, through every host-runnable target, against the model's
own documented pre/post-processing.

PP-OCRv4 text detection (``ch_PP-OCRv4_det_infer.onnx``, DBNet, from the ``rapidocr-onnxruntime`` wheel):
NCHW BGR input with dynamic batch and H/W that must be multiples of 32, a 1-channel sigmoid text probability
thresholded at 0.3. Its own pipeline (``rapidocr_onnxruntime.ch_ppocr_det.utils.DetPreProcess``, config
``limit_type: min``, ``limit_side_len: 736``) scales a short side under 736 up to 736 and rounds each side to a
multiple of 32; the archive does the same with ``min_side = 736`` and pads to a multiple of 32 (dynamic
targets), or letterboxes into a fixed 736x1920 input (static targets: the same scale on the small images, a
smaller one on ``hubble_deep_field``). Images: scikit-image's ``page`` and ``text`` (real text) and three photos
without text (``astronaut``, ``coffee``, and ``hubble_deep_field``, 1000x872, which the min-side rule leaves at
its own size: false positives count).
"""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import edgeseg_cli
from edgeseg_runtime.archive import Archive
from edgeseg_runtime.images import load_image
from edgeseg_runtime.segmentor import Segmentor
from PIL import Image

import edgeseg
from edgeseg import ConfigError, build

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
min_side = 736
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
    for name in ("page", "text", "astronaut", "coffee", "hubble_deep_field"):
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
        resize = next(t for t in transforms if t["type"] == "Resize")
        assert resize == {"type": "Resize", "keep_ratio": True, "min_side": 736}  # the image's own size, >= 736
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


# ------------------------------------------------------------------ a grey-scale 16-bit nucleus U-Net (NHWC)

NUCLEI = Path(__file__).parent / "data" / "nuclei"
#: the model's documented pre-processing (tests/data/nuclei/README.md): (x - 32) / 24 of the raw 16-bit values
NUCLEI_MEAN, NUCLEI_STD = 32.0, 24.0
#: no name, layout or colour: the file's stem and the graph's NHWC one-channel input give them
NUCLEI_SPEC = f"""
[input]
dtype = "uint16"
mean = {NUCLEI_MEAN}
std = {NUCLEI_STD}

[inference]
mode = "slide"
stride = [192, 192]

[output]
kind = "probability"
classes = ["background", "nucleus"]
"""


def _nuclei_reference(image: np.ndarray) -> np.ndarray:
    """The U-Net in plain ONNX Runtime with its own pre-processing on the raw 16-bit values, window by window
    over the image at its own resolution (mmseg's rule, as in test_slide), soft-max averaged, arg-max."""
    import onnxruntime as ort
    from test_slide import _mmseg_windows

    sess = ort.InferenceSession(str(NUCLEI / "nuclei_unet.onnx"), providers=["CPUExecutionProvider"])
    h, w = image.shape
    total, count = np.zeros((h, w, 2)), np.zeros((h, w, 1))
    for y1, y2, x1, x2 in _mmseg_windows(h, w, (256, 256), (192, 192)):
        x = ((image[y1:y2, x1:x2].astype(np.float32) - NUCLEI_MEAN) / NUCLEI_STD)[None, :, :, None]
        total[y1:y2, x1:x2] += sess.run(None, {"image": x})[0][0]
        count[y1:y2, x1:x2] += 1
    return np.argmax(total / count, axis=-1).astype(bool)


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("nuclei")
    (folder / "spec.toml").write_text(NUCLEI_SPEC)
    return {"spec": folder / "spec.toml", "out": folder / "dist"}


def test_sixteen_bit_images_are_read_as_stored() -> None:
    """The stardist image's values lie in 0..235: shifted to 8 bits it would be all black."""
    from edgeseg_runtime.images import load_image

    raw = np.asarray(Image.open(NUCLEI / "img2d.png"))
    assert raw.dtype.kind in "iu" and raw.max() == 235
    image = load_image(NUCLEI / "img2d.png", mode="I;16")
    assert image.shape == (512, 512, 1) and image.dtype == np.uint16
    np.testing.assert_array_equal(image[:, :, 0], raw)
    assert load_image(NUCLEI / "img2d.png").max() == 0  # the RGB read: 235 >> 8
    grey8 = load_image(edgeseg.SAMPLE_IMAGES / "astronaut.png", mode="I;16")  # 8-bit files: the same brightness
    grey = load_image(edgeseg.SAMPLE_IMAGES / "astronaut.png", mode="L")
    assert grey8.dtype == np.uint16
    np.testing.assert_array_equal(grey8, grey.astype(np.uint16) * 257)


@pytest.mark.parametrize(("target", "module"), [("cpu", None), ("intel", "openvino"), ("arm", "ncnn"),
                                                ("tflite", "litert_torch")])
def test_nucleus_unet_builds_and_agrees_with_its_own_pipeline(nuclei: dict[str, Path], target: str,
                                                                module: str | None) -> None:
    if module:
        pytest.importorskip(module, reason=f"{module} is not installed (its extra)")
    result = build(NUCLEI / "nuclei_unet.onnx", target=target, spec=nuclei["spec"], out_dir=nuclei["out"],
                   golden=[NUCLEI / "img2d.png"], report=lambda _line: None)
    assert result.archive.name.startswith("nuclei_unet-")
    assert result.check is not None and result.check.passed
    assert result.manifest["model"]["input"]["shape"] == [1, 1, 256, 256]  # NHWC 1-channel, read from the graph
    with tarfile.open(result.archive) as tar:
        assert "golden/img2d.png" in tar.getnames()  # the golden image stays 16-bit
        load = json.load(tar.extractfile("pipeline.json"))["pipeline"]["tasks"][0]["transforms"][0]
    assert load["mode"] == "I;16" and load["color_type"] == "unchanged"
    raw = np.asarray(Image.open(NUCLEI / "img2d.png"))
    truth = np.asarray(Image.open(NUCLEI / "mask2d.png")) > 0
    with Archive.open(result.archive) as archive, Segmentor(archive) as seg:
        got = seg.segment(seg.load(NUCLEI / "img2d.png")).labels.astype(bool)
    want = _nuclei_reference(raw)
    assert np.mean(got == want) >= 0.99, (target, np.mean(got == want))
    iou = np.sum(got & truth) / np.sum(got | truth)
    assert iou > 0.6, iou  # the annotated nuclei are found (a real model on real data)


def test_nucleus_slide_beats_squashing_the_frame(nuclei: dict[str, Path], tmp_path: Path) -> None:
    """The 512x512 frame squashed into the 256x256 input ("whole", the default) against the windows at the
    image's own resolution ("slide"): the annotated nuclei are found far better with the windows."""
    whole = tmp_path / "whole.toml"
    whole.write_text(NUCLEI_SPEC.replace('mode = "slide"\nstride = [192, 192]', 'mode = "whole"'))
    truth = np.asarray(Image.open(NUCLEI / "mask2d.png")) > 0
    ious = {}
    for name, spec in (("whole", whole), ("slide", nuclei["spec"])):
        result = build(NUCLEI / "nuclei_unet.onnx", target="cpu", spec=spec, out_dir=tmp_path / name,
                       golden=[NUCLEI / "img2d.png"], report=lambda _line: None)
        with Archive.open(result.archive) as archive, Segmentor(archive) as seg:
            got = seg.segment(seg.load(NUCLEI / "img2d.png")).labels.astype(bool)
        ious[name] = np.sum(got & truth) / np.sum(got | truth)
    assert ious["slide"] > ious["whole"] + 0.05, ious


def test_spec_init_drafts_a_spec_that_builds(ocr: dict[str, Path], tmp_path: Path) -> None:
    """``edgeseg spec init`` reads what the graph says and marks the rest; the draft loads and exports as is,
    and an existing file is never replaced without --force."""
    from edgeseg.export import export_shared
    from edgeseg.spec import load_spec

    out = tmp_path / "ocr.toml"
    proc = edgeseg_cli("spec", "init", "--model", ocr["model"], "--out", out)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    spec = load_spec(out)
    assert spec.name == NAME and spec.input.layout == "NCHW" and spec.input.size_divisor == 32
    assert spec.output.kind == "probability" and len(spec.output.classes) == 2
    assert 'kind = "probability"   # from the graph' in text and 'color = "RGB"   # GUESS' in text
    export_shared(ocr["model"], spec, tmp_path / "export")  # the graph accepts it
    before = out.read_bytes()
    again = edgeseg_cli("spec", "init", "--model", ocr["model"], "--out", out)
    assert again.returncode == 2 and "exists" in again.stderr and out.read_bytes() == before
    grey = load_spec(tmp_path / "n.toml") if edgeseg_cli(
        "spec", "init", "-m", NUCLEI / "nuclei_unet.onnx", "-o", tmp_path / "n.toml").returncode == 0 else None
    assert grey is not None and grey.input.color == "GRAY" and grey.input.layout == "NHWC"
    assert grey.output.layout == "NHWC" and grey.output.kind == "probability"  # it ends in Softmax (+ Transpose)
    assert list(grey.input.size) == [256, 256]
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    proc = edgeseg_cli("spec", "init", "--model", bad, "--out", tmp_path / "bad.toml")
    assert proc.returncode == 2 and "not a valid ONNX model" in proc.stderr and not (tmp_path / "bad.toml").exists()
