"""ncnn backend: shared ONNX → ``end2end.param`` + ``end2end.bin`` with pnnx.

Sources: pnnx README (https://github.com/pnnx/pnnx, command-line keys
``inputshape``, ``fp16``, ``ncnnparam``/``ncnnbin``), ncnn's ``Option``
fields (``use_fp16_storage``, ``use_fp16_packed``, ``use_fp16_arithmetic``;
https://github.com/Tencent/ncnn/wiki/use-ncnn-with-alexnet and
``src/option.h``) and the ncnn param format
(https://github.com/Tencent/ncnn/wiki/param-and-model-file-structure).

* pnnx converts **static-shape** ONNX only (a dynamic-H/W ONNX gave
  ``load_param failed`` here, DESIGN.md §6): a dynamic shared ONNX is refused
  with a ConfigError; list the sizes in the profile's ``input.shapes`` (one
  static variant each) instead.
* **fp32**: fp32 weights, and the runtime options ``use_fp16_storage``,
  ``use_fp16_packed`` and ``use_fp16_arithmetic`` off, so every layer
  computes in fp32 (ncnn's defaults turn fp16 storage on).
* **fp16**: pnnx ``fp16=1`` (fp16 weights in ``.bin``, half the size), fp16
  storage and packing on, fp16 *arithmetic* off: on an aarch64 CPU with
  ``asimdhp`` (the emulated test device) fp16 arithmetic gave the default model
  a max abs diff of 0.82 and 97.6% label agreement, failing its golden check;
  fp16 storage with fp32 accumulation passes it. A profile can turn it on
  with ``[backend_options] use_fp16_arithmetic = true`` and let the golden
  check judge. On x86 (no fp16 arithmetic) ncnn computes in fp32.
* **int8**: not available: ncnn's int8 path needs ``ncnn2table`` and
  ``ncnn2int8``, which the PyPI ``ncnn``/``pnnx`` wheels do not ship.

The runtime options chosen here are written into the manifest's backend
section (``ncnn_options``) and applied by the runner, with the profile's
``[backend_options]`` on top.
"""

from __future__ import annotations

import importlib.util
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from edgeseg_runtime.runners import tool_lines

from ..errors import ConfigError, ConversionError, ToolchainError
from ..export import graph_constants, inferred_dims, tensor_dims
from ..targets import Target
from . import BaseBackend, Calibration, Capabilities, ModelFiles, log_errors, static_input_shape
from .unsupported import pnnx_unsupported

if TYPE_CHECKING:
    import onnx

    from ..spec import ModelSpec

FILES = ("end2end.param", "end2end.bin")
FP16_OPTIONS = ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic")


def rewrite_for_pnnx(model: onnx.ModelProto) -> dict[str, int]:
    """Rewrite, in place, the ONNX patterns pnnx 20261020 converts to ncnn layers that compute something else.

    Found by comparing small graphs and MMSegmentation models with ONNX Runtime
    (a 1x1 convolution first, so pnnx knows the batch axis):

    * ``ReduceSum`` with its axes as an input (opset 13+): pnnx keeps a
      one-element axes list as a bare int, and its ncnn pass then writes a
      ``Reduction`` with no axes, which reduces nothing (the output keeps the
      input's shape). Written as ``ReduceMean`` (axes attribute, which pnnx
      converts right) times the number of elements reduced.
    * ``Clip(ReduceL1|ReduceL2(x), min)`` then ``Div``, PyTorch's
      ``F.normalize``: pnnx fuses it into ncnn's ``Normalize`` layer, which
      normalizes across channels of a 3-D blob only, so any other axis, or a
      tensor of another rank, comes out wrong (Segmenter's and EMANet's
      normalizations: 56 % and 573 % of the logits' range). The ``Clip`` is
      written as ``Max(norm, min)`` (same values), which pnnx does not fuse: the
      norm, the maximum and the division become ncnn ``Reduction`` and
      ``BinaryOp`` layers.

    Args:
        model: a static-shape ONNX model (shapes are inferred for the element counts).

    Returns:
        What was rewritten: pattern name → count (recorded in the archive's backend details).
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    consts = graph_constants(model)

    def constant(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(consts[name]) if name in consts else None

    shapes = inferred_dims(model)  # none for a graph onnx cannot infer: no ReduceSum rewrite then
    producer = {o: n for n in graph.node for o in n.output}
    done: dict[str, int] = {}
    new_nodes = []
    for node in graph.node:
        if node.op_type == "ReduceSum" and len(node.input) > 1 and node.input[1]:
            axes = constant(node.input[1])
            dims = shapes.get(node.input[0])
            if axes is not None and dims and all(dims[int(a)] for a in axes.reshape(-1)):
                count = int(np.prod([dims[int(a)] for a in axes.reshape(-1)]))
                keep = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
                mean_out = node.output[0] + "_mean"
                scale = node.output[0] + "_count"
                graph.initializer.append(numpy_helper.from_array(np.array(count, dtype=np.float32), scale))
                new_nodes.append(helper.make_node("ReduceMean", [node.input[0]], [mean_out], name=node.name + "_mean",
                                                  axes=[int(a) for a in axes.reshape(-1)], keepdims=keep))
                new_nodes.append(helper.make_node("Mul", [mean_out, scale], list(node.output), name=node.name + "_count"))
                done["ReduceSum -> ReduceMean x count"] = done.get("ReduceSum -> ReduceMean x count", 0) + 1
                continue
        if node.op_type == "Clip" and len(node.input) >= 2 and node.input[1] and (len(node.input) < 3 or not node.input[2]):
            source = producer.get(node.input[0])
            if source is not None and source.op_type in ("ReduceL1", "ReduceL2"):
                new_nodes.append(helper.make_node("Max", [node.input[0], node.input[1]], list(node.output),
                                                  name=node.name + "_max"))
                done["F.normalize's Clip -> Max"] = done.get("F.normalize's Clip -> Max", 0) + 1
                continue
        new_nodes.append(node)
    if done:
        del graph.node[:]
        graph.node.extend(new_nodes)
    return done


def pnnx_executable() -> Path:
    """The ``pnnx`` program inside the pnnx wheel (found without importing pnnx, which imports torch).

    Raises:
        ToolchainError: pnnx is not installed.
    """
    spec = importlib.util.find_spec("pnnx")
    if spec is None or not spec.submodule_search_locations:
        raise ToolchainError("pnnx is not installed; pip install 'edgeseg[ncnn]'")
    exe = Path(next(iter(spec.submodule_search_locations))) / "pnnx"
    if not exe.is_file():
        raise ToolchainError(f"the pnnx wheel has no pnnx program at {exe}; reinstall: pip install --force-reinstall pnnx")
    return exe


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        raise ToolchainError(f"{dist} is not installed; pip install 'edgeseg[ncnn]'") from None


def param_blobs(param: Path) -> tuple[str, str]:
    """(input blob, output blob) of an ncnn ``.param``: the ``Input`` layer's top and the last layer's top.

    Raises:
        ConversionError: no Input layer, or several inputs (edgeseg models have one).
    """
    lines = param.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].strip() != "7767517":
        raise ConversionError(f"{param.name} is not an ncnn param file (magic 7767517 missing)")
    layers = [line.split() for line in lines[2:] if line.strip()]
    inputs = [fields[4] for fields in layers if fields[0] == "Input"]
    if len(inputs) != 1:
        raise ConversionError(f"{param.name}: expected one Input layer, found {len(inputs)}")
    last = layers[-1]
    bottoms, tops = int(last[2]), int(last[3])
    return inputs[0], last[4 + bottoms + tops - 1]


class NcnnBackend(BaseBackend):
    name = "ncnn"
    extra = "ncnn"
    capabilities = Capabilities(
        build_on="host", precisions=frozenset({"fp32", "fp16"}), static_shapes=True,
        unavailable={
            "int8": "ncnn int8 needs ncnn2table and ncnn2int8, which the PyPI ncnn and pnnx wheels do not ship; "
            "build fp16 or fp32 for ncnn, or int8 for the tflite or openvino targets"
        },
    )

    def versions(self) -> dict[str, str]:
        pnnx_executable()
        return {"pnnx": _version("pnnx"), "ncnn": _version("ncnn")}

    def convert(self, onnx_path: Path, target: Target, out_dir: Path, calibration: Calibration | None = None, *,
                spec: ModelSpec | None = None) -> ModelFiles:
        """Run pnnx on the static shared ONNX and write the param/bin pair (see module doc).

        Raises:
            ConfigError: the ONNX has dynamic H/W.
            ConversionError: pnnx failed or wrote no usable param file.
        """
        import onnx

        model = onnx.load(str(onnx_path))
        dims = static_input_shape(model)
        if dims is None:
            raise ConfigError(
                f"target {target.name!r}: pnnx converts static-shape ONNX only and this one is "
                f"{tensor_dims(model.graph.input[0])}; "
                "set input.dynamic = false and list the sizes in input.shapes (one static variant each)"
            )
        fp16 = target.precision == "fp16"
        with tempfile.TemporaryDirectory(prefix="edgeseg-pnnx-") as tmp:
            scratch = Path(tmp)
            rewrites = rewrite_for_pnnx(model)
            source = onnx_path
            if rewrites:
                source = scratch / onnx_path.name
                onnx.save(model, str(source))
            argv = [
                str(pnnx_executable()), str(source), f"inputshape=[{','.join(map(str, dims))}]f32",
                f"fp16={int(fp16)}", f"ncnnparam={out_dir / FILES[0]}", f"ncnnbin={out_dir / FILES[1]}",
                *(f"{key}={scratch / name}" for key, name in (
                    ("pnnxparam", "m.pnnx.param"), ("pnnxbin", "m.pnnx.bin"), ("pnnxpy", "m_pnnx.py"),
                    ("pnnxonnx", "m.pnnx.onnx"), ("ncnnpy", "m_ncnn.py"))),
            ]
            proc = subprocess.run(argv, capture_output=True, text=True, cwd=scratch, check=False)
        log = (proc.stdout + proc.stderr).strip()
        param = out_dir / FILES[0]
        if proc.returncode != 0 or not param.is_file() or not (out_dir / FILES[1]).is_file():
            errors = log_errors(log) or log.splitlines()
            raise ConversionError(f"pnnx could not convert {onnx_path.name} (exit {proc.returncode}): "
                                  f"{tool_lines(chr(10).join(errors[-3:]), keep=3) or 'no output'}")
        # a layer type with a dot (pnnx.Expression, torch.xxx, F.xxx) is an op pnnx could not map to ncnn; one
        # without a dot that ncnn does not know is an ONNX op pnnx passed through (ConvTranspose with auto_pad)
        try:
            from ncnn import layer_to_index
        except ImportError:  # pnnx without the ncnn module: the dotted names only
            def layer_to_index(_name: str) -> int:
                return 0
        types = {f[0] for f in (line.split() for line in param.read_text().splitlines()[2:]) if f}
        unsupported = sorted(t for t in types if "." in t or layer_to_index(t) < 0)
        if unsupported:
            raise ConversionError(pnnx_unsupported(model, unsupported))
        in_blob, out_blob = param_blobs(param)
        return ModelFiles(
            net=FILES[0], weights=FILES[1], files=FILES,
            details={
                "input_blob": in_blob, "output_blob": out_blob, "weights_dtype": "float16" if fp16 else "float32",
                "ncnn_options": {key: fp16 and key != "use_fp16_arithmetic" for key in FP16_OPTIONS},
                **({"onnx_rewrites": rewrites} if rewrites else {}),
            },
        )
