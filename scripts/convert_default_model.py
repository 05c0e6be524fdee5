#!/usr/bin/env python3
"""Re-create edgeseg's embedded default model from the PyPI wheel ``mediapipe==0.10.14``.

This script is the provenance of ``edgeseg/data/models/selfie_segmentation/``;
it is not run by edgeseg itself. It needs only PyPI (no other download):

1. makes a throwaway venv with the pinned conversion stack (TensorFlow 2.15,
   tf2onnx, numpy<2, onnx 1.16.2) and LiteRT (``ai-edge-litert``) for checking;
2. takes ``selfie_segmentation.tflite`` out of the mediapipe wheel and checks
   its sha256;
3. converts it with ``tf2onnx --tflite --opset 17``; tf2onnx leaves one
   MediaPipe custom op, ``Convolution2DTransposeBias`` (NHWC input, OHWI
   kernel, bias, SAME padding, stride 2), which is replaced by
   Transpose(NHWC→NCHW) → ConvTranspose(kernel IOHW, bias, stride 2) →
   Transpose(NCHW→NHWC);
4. checks ONNX Runtime against LiteRT on the original ``.tflite`` for
   scikit-image photos (max abs difference of the person probability);
5. writes the ONNX, its sha256, the licence and NOTICE, the sample photos
   (``edgeseg/data/images``) and the LiteRT reference label maps the tests
   use (``tests/data/reference_masks``), made with edgeseg_runtime's own
   pre/post-processing so that they see the same resized input.

Usage::

    python scripts/convert_default_model.py            # or: invoke convert-default-model
    python scripts/convert_default_model.py --work /tmp/convert --keep

Sources: MediaPipe Selfie Segmentation model card (Google, 2021);
tf2onnx README ("--tflite"); ONNX operator spec for ConvTranspose.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "edgeseg" / "data" / "models" / "selfie_segmentation"
IMAGES_DIR = REPO / "edgeseg" / "data" / "images"
MASKS_DIR = REPO / "tests" / "data" / "reference_masks"

MEDIAPIPE = "mediapipe==0.10.14"
TFLITE_MEMBER = "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"
LICENSE_MEMBER = "mediapipe-0.10.14.dist-info/LICENSE"
TFLITE_SHA256 = "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c"
CONVERSION_STACK = [
    "tensorflow-cpu==2.15.1",
    "numpy==1.26.4",
    "protobuf==4.25.9",
    "onnx==1.16.2",
    "tf2onnx==1.17.0",
    "onnxruntime==1.31.1",
    "ai-edge-litert==2.3.0",
    "scikit-image==0.26.0",
    "pillow==13.0.0",
]
#: scikit-image photos: (name, shipped as a sample image, max side of the shipped copy)
PHOTOS = [("astronaut", True), ("camera", True), ("rocket", True), ("coffee", False), ("chelsea", False)]
SAMPLE_MAX_SIDE = 320
MAX_ABS_DIFF = 1e-4


def run(argv: list[str]) -> None:
    print("+", " ".join(argv), flush=True)
    subprocess.run(argv, check=True)


def outer(args: argparse.Namespace) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="edgeseg-convert-"))
    work.mkdir(parents=True, exist_ok=True)
    venv = work / "venv"
    py = venv / "bin" / "python"
    if not py.exists():
        run([sys.executable, "-m", "venv", str(venv)])
        run([str(py), "-m", "pip", "install", "-q", *CONVERSION_STACK])
    wheels = list(work.glob("mediapipe-0.10.14-*.whl"))
    if not wheels:
        run([str(py), "-m", "pip", "download", "-q", "--no-deps", MEDIAPIPE, "-d", str(work)])
        wheels = list(work.glob("mediapipe-0.10.14-*.whl"))
    try:
        run([str(py), __file__, "--inner", "--work", str(work), "--wheel", str(wheels[0])])
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)


def replace_custom_op(model):  # noqa: ANN001, ANN201 - onnx types exist only inside the venv
    """Swap tf2onnx's TFL_Convolution2DTransposeBias node for standard ONNX ops."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    idx = next(i for i, n in enumerate(graph.node) if n.op_type == "TFL_Convolution2DTransposeBias")
    node = graph.node[idx]
    x, w_name, b_name = node.input
    kernel_ohwi = numpy_helper.to_array(inits[w_name])
    if kernel_ohwi.shape[1:3] != (2, 2):
        raise SystemExit(f"unexpected kernel {kernel_ohwi.shape}: only 2x2 stride-2 SAME (no padding) is handled")
    kernel_iohw = np.ascontiguousarray(kernel_ohwi.transpose(3, 0, 1, 2))
    graph.initializer.remove(inits[w_name])
    graph.initializer.append(numpy_helper.from_array(kernel_iohw, f"{w_name}_iohw"))
    out = node.output[0]
    new_nodes = [
        helper.make_node("Transpose", [x], [f"{out}_nchw_in"], name=f"{out}_t_in", perm=[0, 3, 1, 2]),
        helper.make_node(
            "ConvTranspose", [f"{out}_nchw_in", f"{w_name}_iohw", b_name], [f"{out}_nchw_out"],
            name=f"{out}_convT", kernel_shape=[2, 2], strides=[2, 2],
        ),
        helper.make_node("Transpose", [f"{out}_nchw_out"], [out], name=f"{out}_t_out", perm=[0, 2, 3, 1]),
    ]
    graph.node.remove(node)
    for k, n in enumerate(new_nodes):
        graph.node.insert(idx + k, n)
    return model


def inner(args: argparse.Namespace) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter
    from PIL import Image
    from skimage import data as skdata

    sys.path.insert(0, str(REPO / "runtime_py"))
    from edgeseg_runtime.images import load_image
    from edgeseg_runtime.pipeline import Postprocess, Preprocess

    work = Path(args.work)
    with zipfile.ZipFile(args.wheel) as whl:
        tflite_bytes = whl.read(TFLITE_MEMBER)
        license_text = whl.read(LICENSE_MEMBER)
    digest = hashlib.sha256(tflite_bytes).hexdigest()
    if digest != TFLITE_SHA256:
        raise SystemExit(f"selfie_segmentation.tflite sha256 {digest} != expected {TFLITE_SHA256}")
    tflite = work / "selfie_segmentation.tflite"
    tflite.write_bytes(tflite_bytes)

    raw = work / "raw.onnx"
    run([sys.executable, "-m", "tf2onnx.convert", "--tflite", str(tflite), "--opset", "17", "--output", str(raw)])
    model = replace_custom_op(onnx.load(str(raw)))
    onnx.checker.check_model(model, full_check=True)
    onnx_path = work / "selfie_segmentation.onnx"
    onnx.save(model, str(onnx_path))

    # ONNX Runtime vs LiteRT on the same pre-processed input (edgeseg_runtime's pre-processing).
    pre = Preprocess(size=(256, 256), keep_ratio=False, mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0), to_rgb=True)
    post = Postprocess(num_classes=2, with_argmax=False)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    interp = Interpreter(model_path=str(tflite))
    interp.allocate_tensors()
    in_idx = interp.get_input_details()[0]["index"]
    out_idx = interp.get_output_details()[0]["index"]
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    MASKS_DIR.mkdir(parents=True, exist_ok=True)
    photos = work / "photos"
    photos.mkdir(exist_ok=True)
    worst = 0.0
    for name, ship in PHOTOS:
        png = photos / f"{name}.png"
        Image.fromarray(getattr(skdata, name)()).save(png)
        rgb = load_image(png)
        nhwc = np.ascontiguousarray(pre(rgb).transpose(0, 2, 3, 1))
        interp.set_tensor(in_idx, nhwc)
        interp.invoke()
        p_lite = interp.get_tensor(out_idx)
        p_ort = sess.run(None, {"input_1": nhwc})[0]
        diff = float(np.abs(p_lite - p_ort).max())
        worst = max(worst, diff)
        prob = p_lite[0, :, :, 0]
        scores = np.stack([1.0 - prob, prob])[None].astype(np.float32)
        labels, _ = post(scores, rgb.shape[0], rgb.shape[1])
        Image.fromarray(labels * 255, mode="L").convert("1").save(MASKS_DIR / f"{name}.png", optimize=True)
        print(f"{name}: {rgb.shape[1]}x{rgb.shape[0]} ORT vs LiteRT max abs diff {diff:.2e}, "
              f"LiteRT person pixels {labels.mean():.2%}")
        if ship:
            thumb = Image.open(png)
            thumb.thumbnail((SAMPLE_MAX_SIDE, SAMPLE_MAX_SIDE), Image.LANCZOS)
            thumb.save(IMAGES_DIR / f"{name}.png", optimize=True)
    if worst > MAX_ABS_DIFF:
        raise SystemExit(f"ONNX Runtime and LiteRT differ by {worst:.2e} > {MAX_ABS_DIFF:.0e}: conversion is wrong")

    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copy(onnx_path, MODEL_DIR / "selfie_segmentation.onnx")
    (MODEL_DIR / "LICENSE").write_bytes(license_text)
    onnx_sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    (MODEL_DIR / "SHA256SUMS").write_text(
        f"{onnx_sha}  selfie_segmentation.onnx\n{TFLITE_SHA256}  selfie_segmentation.tflite ({MEDIAPIPE} wheel)\n"
    )
    print(f"wrote {MODEL_DIR / 'selfie_segmentation.onnx'} sha256 {onnx_sha}")
    print(f"ONNX Runtime vs LiteRT: max abs diff {worst:.2e} over {len(PHOTOS)} photos")

    shared = REPO.parent / "shared" / "models" / "selfie_segmentation.onnx"
    if shared.exists():
        ref = ort.InferenceSession(str(shared), providers=["CPUExecutionProvider"])
        probe = np.random.default_rng(0).random((1, 256, 256, 3), dtype=np.float32)
        d = float(np.abs(ref.run(None, {"input_1": probe})[0] - sess.run(None, {"input_1": probe})[0]).max())
        same = hashlib.sha256(shared.read_bytes()).hexdigest() == onnx_sha
        print(f"vs ../shared/models reference: sha256 {'identical' if same else 'differs'}, max abs diff {d:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", help="working folder (default: a temporary one, removed afterwards)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary working folder")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--wheel", help=argparse.SUPPRESS)
    args = ap.parse_args()
    inner(args) if args.inner else outer(args)


if __name__ == "__main__":
    main()
