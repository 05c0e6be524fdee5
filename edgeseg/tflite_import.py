"""TensorFlow Lite models as a build source: ``.tflite`` → ONNX with tf2onnx, checked against TFLite.

tf2onnx reads ``.tflite`` files but needs TensorFlow, whose pins (numpy < 2,
protobuf 4) cannot share edgeseg's environment. So the conversion runs in a
venv of its own, made once from PyPI with the pinned :data:`CONVERTER_STACK`
and kept under ``$EDGESEG_TOOLS_DIR`` (default ``<edgeseg cache>/tools``) in a
folder named by a hash of that recipe and the Python version: a changed recipe
gives a new venv, never a stale one. Making it takes about 2 minutes and
0.9 GB (TensorFlow); ``edgeseg build`` says so while it does.

After ``python -m tf2onnx.convert --tflite MODEL --opset 17``:

* MediaPipe's custom op ``Convolution2DTransposeBias`` (left by tf2onnx as
  ``TFL_Convolution2DTransposeBias``: NHWC input, OHWI kernel, bias, stride 2,
  SAME padding; MediaPipe ``mediapipe/util/tflite/operations/transpose_conv_bias.cc``)
  becomes Transpose(NHWC→NCHW) → ConvTranspose(IOHW kernel, bias, stride 2,
  the explicit pads of ``auto_pad = SAME_UPPER``) → Transpose(NCHW→NHWC);
* any other custom op is refused with its name;
* the converter venv runs the original ``.tflite`` in LiteRT (``ai-edge-litert``,
  which knows MediaPipe's custom ops) on :data:`CHECK_INPUTS` seeded random inputs, ONNX Runtime runs
  the converted graph on the same inputs here, and every output must agree
  within :data:`CHECK_ATOL` × max(1, output range). The figure is recorded in
  the graph (``metadata_props["edgeseg.tflite_check"]``).

Sources: tf2onnx README ("--tflite", opset); TFLite schema (``TFL3`` file
identifier); ONNX ConvTranspose spec (``auto_pad``, output shape).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .cache_dir import cache_root
from .errors import ConfigError, ConversionError, ToolchainError

__all__ = ["CONVERTER_STACK", "CHECK_INPUTS", "CHECK_ATOL", "tools_dir", "converter_python", "tflite_to_onnx"]

#: the converter venv's packages (tf2onnx 1.17 supports TensorFlow up to 2.15)
CONVERTER_STACK = ("tensorflow-cpu==2.15.1", "numpy==1.26.4", "protobuf==4.25.9", "onnx==1.16.2", "tf2onnx==1.17.0",
                   "ai-edge-litert==2.3.0")
#: seeded random inputs the conversion is checked on
CHECK_INPUTS = 3
#: largest difference allowed between TFLite and the converted ONNX, as a fraction of max(1, output range)
CHECK_ATOL = 1e-4
PIP_TIMEOUT = 1200

_WORKER = Path(__file__).with_name("_tflite_worker.py")


def tools_dir() -> Path:
    """Where converter venvs live: ``$EDGESEG_TOOLS_DIR``, else ``<edgeseg cache>/tools``."""
    return Path(os.environ["EDGESEG_TOOLS_DIR"]) if os.environ.get("EDGESEG_TOOLS_DIR") else cache_root() / "tools"


def converter_python(report: Callable[[str], None] | None = None) -> Path:
    """The converter venv's Python, making the venv first when it is not there yet.

    Made in a temporary folder next to its final place and renamed into it, so an interrupted or concurrent
    creation never leaves a half-made venv that is used.

    Raises:
        ToolchainError: pip could not install :data:`CONVERTER_STACK` (no index, no wheel for this Python).
    """
    recipe = hashlib.sha256(json.dumps([sys.version_info[:2], CONVERTER_STACK]).encode()).hexdigest()[:16]
    home = tools_dir() / f"tf2onnx-py{sys.version_info[0]}{sys.version_info[1]}-{recipe}"
    python = home / "bin" / "python"
    if python.is_file():
        return python
    home.parent.mkdir(parents=True, exist_ok=True)
    (report or logging.getLogger(__name__).info)(
        f"making the TFLite converter venv once (tf2onnx + TensorFlow from PyPI, 1-2 min, 1.3 GB) in {home}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{home.name}-", dir=home.parent))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, capture_output=True, timeout=300)
        proc = subprocess.run([str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                               *CONVERTER_STACK], capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False)
        if proc.returncode != 0:
            last = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")][-1:] or ["?"]
            raise ToolchainError(f"could not install the TFLite converter ({' '.join(CONVERTER_STACK)}): {last[0]}")
        # used only as "python -m ...": the venv works from its final place once renamed (pyvenv.cfg beside bin/)
        try:
            tmp.rename(home)
        except OSError:  # made by another build meanwhile: use that one
            if not python.is_file():
                raise
    except subprocess.TimeoutExpired:
        raise ToolchainError("making the TFLite converter venv took too long (pip timed out)") from None
    except subprocess.CalledProcessError as exc:
        raise ToolchainError(f"could not make the TFLite converter venv with {sys.executable} -m venv "
                             f"(exit {exc.returncode})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return python


def tflite_to_onnx(path: Path, work: Path, report: Callable[[str], None] | None = None) -> Any:
    """Convert a ``.tflite`` file to an ONNX ``ModelProto`` (opset 17), checked against TFLite (module doc).

    Args:
        path: the ``.tflite`` file (float32 input and output; NHWC as TensorFlow writes it).
        work: scratch folder (the raw tf2onnx output and the check data go there).
        report: progress lines (the venv's first creation), or None (the ``edgeseg.tflite_import`` logger).

    Returns:
        The converted graph, with ``metadata_props`` ``edgeseg.exporter`` and ``edgeseg.tflite_check``.

    Raises:
        ConfigError: the file is too short to be a TFLite model (said before the converter venv is made).
        ToolchainError: the converter venv cannot be made.
        ConversionError: tf2onnx failed, left an op ONNX has no equivalent for, or the converted graph
            disagrees with TFLite.
    """
    import onnx
    import onnxruntime as ort

    data = path.read_bytes()
    root = int.from_bytes(data[:4], "little") if len(data) >= 8 else 0
    if len(data) < 32 or not 8 <= root <= len(data) - 4:  # FlatBuffers: the root table's offset, inside the file
        raise ConfigError(f"{path}: not a valid TensorFlow Lite model (truncated: {len(data)} bytes, root table "
                          f"offset {root})")
    python = converter_python(report)
    raw, check = work / "from_tflite.onnx", work / "tflite_check.npz"
    try:
        proc = subprocess.run([str(python), str(_WORKER), str(path), str(raw), str(check), str(CHECK_INPUTS)],
                              capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"tf2onnx did not finish converting {path.name} in 900 s") from None
    if proc.returncode != 0 or not raw.is_file() or not check.is_file():
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "Error" in ln or "error" in ln]
        raise ConversionError(f"tf2onnx could not convert {path.name}: {(lines or ['no output'])[-1].strip()[:300]}")
    model = _replace_transpose_conv_bias(onnx.load(str(raw)))
    custom = sorted({n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")
                     or n.op_type.startswith("TFL_")})
    if custom:
        raise ConversionError(f"{path.name}: tf2onnx left TFLite custom ops ONNX has no equivalent for: "
                              f"{', '.join(custom)}")
    try:
        onnx.checker.check_model(model)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001  checker and ORT raise assorted errors: one line
        raise ConversionError(f"{path.name}: the converted ONNX is not valid ({str(exc).splitlines()[0][:200]})") from None
    data = np.load(check)
    names = [i.name for i in sess.get_inputs()]
    worst = 0.0
    for k in range(CHECK_INPUTS):
        feeds = {name: data[f"in{k}_{i}"] for i, name in enumerate(names)}
        for j, got in enumerate(sess.run(None, feeds)):
            want = data[f"out{k}_{j}"]
            scale = max(1.0, float(np.ptp(want)))
            worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - want))) / scale)
    if worst > CHECK_ATOL:
        raise ConversionError(f"{path.name}: the ONNX from tf2onnx differs from LiteRT by {worst:.2e} of the "
                              f"output range (> {CHECK_ATOL:.0e}) on random inputs: the conversion is wrong")
    for key, value in (("edgeseg.exporter", "tf2onnx 1.17.0 (TensorFlow Lite)"),
                       ("edgeseg.tflite_check", f"max abs diff {worst:.2e} of range on {CHECK_INPUTS} inputs")):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def _replace_transpose_conv_bias(model: Any) -> Any:
    """Every ``TFL_Convolution2DTransposeBias`` node as Transpose → ConvTranspose → Transpose (module doc)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    for node in [n for n in graph.node if n.op_type == "TFL_Convolution2DTransposeBias"]:
        x, w_name, b_name = node.input[:3]
        if w_name not in inits:
            continue  # not a constant kernel: left, and refused as a custom op
        idx = list(graph.node).index(node)
        kernel_ohwi = numpy_helper.to_array(inits[w_name])
        kernel = np.ascontiguousarray(kernel_ohwi.transpose(3, 0, 1, 2))  # OHWI -> IOHW
        # SAME, stride 2: output = 2 x input; ConvTranspose's total padding is then k - 2, the odd one at the end
        # (auto_pad SAME_UPPER), written out as pads because pnnx does not read auto_pad
        geometry = {}
        for axis, k in enumerate(kernel.shape[2:]):
            total = int(k) - 2
            geometry.setdefault("pads", [0, 0, 0, 0])
            geometry["pads"][axis], geometry["pads"][axis + 2] = max(total, 0) // 2, max(total, 0) - max(total, 0) // 2
            geometry.setdefault("output_padding", [0, 0])[axis] = max(-total, 0)
        graph.initializer.append(numpy_helper.from_array(kernel, f"{w_name}_iohw"))
        out = node.output[0]
        replacement = [
            helper.make_node("Transpose", [x], [f"{out}_nchw_in"], name=f"{node.name or out}_to_nchw", perm=[0, 3, 1, 2]),
            helper.make_node("ConvTranspose", [f"{out}_nchw_in", f"{w_name}_iohw", b_name], [f"{out}_nchw_out"],
                             name=f"{node.name or out}_conv_transpose", kernel_shape=list(kernel.shape[2:]),
                             strides=[2, 2], **{k: v for k, v in geometry.items() if any(v)}),
            helper.make_node("Transpose", [f"{out}_nchw_out"], [out], name=f"{node.name or out}_to_nhwc",
                             perm=[0, 2, 3, 1]),
        ]
        graph.node.remove(node)
        for k, n in enumerate(replacement):
            graph.node.insert(idx + k, n)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return model
