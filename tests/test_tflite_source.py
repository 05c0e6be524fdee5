"""A TensorFlow Lite file as the build source: MediaPipe's landscape selfie model (``tests/data/mediapipe``, a
real third-party ``.tflite`` with MediaPipe's custom ``Convolution2DTransposeBias`` op and HARD_SWISH), converted
with tf2onnx in its own venv (:mod:`edgeseg.tflite_import`), through every host-runnable target, against the
``.tflite`` run as it is in LiteRT with MediaPipe's own pre/post-processing.

The converter venv is made once (~1 min from the local PyPI mirror, 1.3 GB) under ``~/.cache/edgeseg-tests/tools``
and reused by later runs (its folder is named by a hash of its recipe).
"""

from __future__ import annotations

import hashlib
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

from edgeseg import build
from edgeseg.export import source_kind, spec_defaults

pytestmark = pytest.mark.slow

MODEL = Path(__file__).parent / "data" / "mediapipe" / "selfie_segmentation_landscape.tflite"
#: no name, size or layouts: the file's stem, and the converted graph's fixed NHWC [1, 144, 256, 3]
SPEC = """
[input]
mean = 0.0
std = 255.0

[output]
kind = "probability"
classes = ["background", "person"]
"""


@pytest.fixture(scope="module")
def landscape(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    skdata = pytest.importorskip("skimage.data", reason="skimage.data is not installed (extra 'dev')")
    folder = tmp_path_factory.mktemp("tflite-source")
    images = folder / "images"
    images.mkdir()
    for name in ("astronaut", "camera", "coffee", "chelsea"):
        Image.fromarray(getattr(skdata, name)()).convert("RGB").save(images / f"{name}.png")
    (folder / "spec.toml").write_text(SPEC)
    return {"spec": folder / "spec.toml", "images": images, "out": folder / "dist"}


def _own_labels(rgb: np.ndarray) -> np.ndarray:
    """The ``.tflite`` as it is, in LiteRT, with MediaPipe's pre/post-processing: RGB / 255 stretched to 256x144
    (bilinear, OpenCV), the person probability resized back to the image (bilinear) and thresholded at 0.5."""
    import cv2
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(MODEL))
    it.allocate_tensors()
    x = cv2.resize(rgb, (256, 144), interpolation=cv2.INTER_LINEAR).astype(np.float32)[None] / 255.0
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    p = it.get_tensor(it.get_output_details()[0]["index"])[0, :, :, 0]
    return cv2.resize(p, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR) > 0.5


def test_a_tflite_file_is_known_by_its_bytes(tmp_path: Path) -> None:
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(MODEL.read_bytes())
    assert source_kind(MODEL) == source_kind(renamed) == "tflite"
    assert spec_defaults(renamed) == {"name": "model", "input": {"layout": "NHWC"}, "output": {"layout": "NHWC"}}


@pytest.mark.parametrize("target", ["cpu", "intel", "arm", "tflite"])
def test_tflite_source_builds_and_agrees_with_litert(landscape: dict[str, Path], target: str) -> None:
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed (extra 'tflite')")
    pytest.importorskip("cv2", reason="OpenCV is not installed (extra 'dev', via rapidocr-onnxruntime)")
    for needed, module in (("intel", "openvino"), ("arm", "ncnn"), ("tflite", "litert_torch")):
        if target == needed:
            pytest.importorskip(module, reason=f"{module} is not installed (its extra)")
    result = build(MODEL, target=target, spec=landscape["spec"], out_dir=landscape["out"], golden=[landscape["images"]],
                   report=lambda _line: None)
    assert result.archive.name.startswith(f"selfie_segmentation_landscape-{target}-")
    assert result.check is not None and result.check.passed
    with tarfile.open(result.archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert manifest["model"]["input"]["shape"] == [1, 3, 144, 256]  # NHWC read from the graph, NCHW inside
    assert hashlib.sha256(MODEL.read_bytes()).hexdigest() in json.dumps(manifest)  # the source file is named
    agreements, iou = {}, None
    with Archive.open(result.archive) as archive, Segmentor(archive) as seg:
        for path in sorted(landscape["images"].iterdir()):
            rgb = load_image(path)
            ours = seg.segment(rgb).labels.astype(bool)
            own = _own_labels(rgb)
            agreements[path.stem] = float(np.mean(ours == own))
            if path.stem == "astronaut":
                assert own.mean() > 0.2  # a person, found by the model as it is
                iou = np.sum(ours & own) / np.sum(ours | own)
    assert min(agreements.values()) >= 0.99, agreements
    assert iou is not None and iou > 0.97, iou


def test_spec_init_drafts_from_a_tflite_file(tmp_path: Path) -> None:
    proc = edgeseg_cli("spec", "init", "--model", MODEL, "--out", tmp_path / "spec.toml")
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "spec.toml").read_text()
    assert 'layout = "NHWC"   # from the graph' in text and "size = [144, 256]   # from the graph" in text
    assert 'kind = "probability"   # from the graph' in text
