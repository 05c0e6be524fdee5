"""ONNX Runtime backend: the shared ONNX as fp32, fp16, or int8 QDQ.

Sources: ONNX Runtime docs (https://onnxruntime.ai/docs/), "Quantize ONNX
models" (https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html)
and ``onnxruntime.transformers.float16``.

* **fp32**: the shared ONNX copied as ``end2end.onnx``.
* **fp16**: ``onnxruntime.transformers.float16.convert_float_to_float16`` with
  ``keep_io_types=True`` (fp32 input and output kept). ``onnxconverter-common``
  broke on these graphs (Resize ops; fp16 outputs despite keep_io_types);
  ORT's own converter works. ``keep_float`` names/op types stay fp32.
* **int8**: ``quantize_static`` in QDQ format, uint8 activations, int8
  weights, per-channel by default, calibrated on the build's calibration set
  (minmax / entropy / percentile). On x86 CPUs without VNNI the u8·s8 kernels
  can saturate (ORT docs: "reduce_range"); the accuracy gate measures what the
  choice gave, and ``[quantization.options]`` (:attr:`OnnxRuntimeBackend.quant_options`)
  can switch to ``weight_type = "uint8"`` or ``reduce_range = true``. Unnamed nodes get
  names (``<op>_<index>``) first, so ``keep_float`` can name them. A model
  below opset 13 is upgraded first (:func:`upgrade_opset`, recorded as
  ``opset_upgraded``): QDQ's per-channel ``DequantizeLinear`` needs 13.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgeseg_runtime.runners import Option, import_backend

from ..errors import ConfigError
from ..targets import Target
from . import BaseBackend, Calibration, Capabilities, ModelFiles, translate_errors

if TYPE_CHECKING:
    from ..spec import ModelSpec

NET = "end2end.onnx"


def _ort() -> Any:
    return import_backend("onnxruntime", extra="onnxruntime")


def name_nodes(model: Any) -> Any:
    """Give every unnamed node of an ONNX ``ModelProto`` the name ``<op_type>_<index>`` (in place)."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return model


def resolve_keep_float(model: Any, keep: list[str]) -> list[str]:
    """Node names for ``keep_float`` entries (node names or ONNX op types such as ``Conv``).

    Raises:
        ConfigError: an entry that is neither a node name nor an op type of the graph.
    """
    names = [n.name for n in model.graph.node]
    types = {n.op_type for n in model.graph.node}
    out: list[str] = []
    for entry in keep:
        if entry in types:
            out += [n.name for n in model.graph.node if n.op_type == entry]
        elif entry in names:
            out.append(entry)
        else:
            raise ConfigError(
                f"[quantization] keep_float: {entry!r} is neither a node name nor an op type of the model "
                f"(op types: {', '.join(sorted(types))}; first nodes: {', '.join(names[:5])})"
            )
    return sorted(set(out), key=names.index)


#: the largest finite IEEE 754 binary16 value
FP16_MAX = 65504.0


def fp16_overflow_nodes(model: Any) -> list[str]:
    """Nodes with a constant float input (initializer or Constant) holding a value beyond :data:`FP16_MAX`.

    Such a node cannot run in fp16 at all: the value becomes inf (a BatchNormalization variance of 1e8 turns
    every output NaN), so the fp16 build keeps it in fp32 and records it. Nodes must be named (:func:`name_nodes`).
    """
    from onnx import TensorProto, numpy_helper

    from ..export import graph_constants

    consts = graph_constants(model)
    floats = (TensorProto.FLOAT, TensorProto.DOUBLE)
    big = {name for name, t in consts.items()
           if t.data_type in floats and np.any(np.abs(numpy_helper.to_array(t)) > FP16_MAX)}
    return [n.name for n in model.graph.node if n.op_type != "Constant" and big.intersection(n.input)]


_QUANT_TYPES = ("int8", "uint8")
#: QDQ with per-channel weights needs DequantizeLinear's ``axis`` attribute, added in opset 13 (ONNX operator docs)
QDQ_MIN_OPSET = 13


def upgrade_opset(model: Any, minimum: int) -> tuple[Any, dict[str, int] | None]:
    """The model at opset ``minimum`` or above: ``onnx.version_converter`` when it is older.

    Returns:
        ``(model, {"from": old, "to": minimum})``, or ``(model, None)`` when it was new enough.

    Raises:
        ConversionError: the converter could not upgrade an op (said with the opsets).
    """
    from onnx import version_converter

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset >= minimum:
        return model, None
    with translate_errors(f"upgrading the ONNX opset from {opset} to {minimum} (onnx.version_converter) failed"):
        upgraded = version_converter.convert_version(model, minimum)
    return name_nodes(upgraded), {"from": int(opset), "to": minimum}


class OnnxRuntimeBackend(BaseBackend):
    name = "onnxruntime"
    extra = "onnxruntime"
    capabilities = Capabilities(build_on="host", precisions=frozenset({"fp32", "fp16", "int8"}),
                                calibration_methods=frozenset({"minmax", "entropy", "percentile"}))
    quant_options: ClassVar[dict[str, Option]] = {
        "weight_type": Option(str, choices=_QUANT_TYPES, default="int8", doc="int8 | uint8 weights"),
        "activation_type": Option(str, choices=_QUANT_TYPES, default="uint8", doc="int8 | uint8 activations"),
        "reduce_range": Option(bool, default=False, doc="7-bit weights (u8 x s8 kernels saturate on CPUs without VNNI)"),
    }

    def versions(self) -> dict[str, str]:
        return {"onnxruntime": _ort().__version__}

    def convert(self, onnx_path: Path, target: Target, out_dir: Path, calibration: Calibration | None = None, *,
                spec: ModelSpec | None = None) -> ModelFiles:
        """Write ``end2end.onnx`` at the target's precision (see module doc).

        Raises:
            ConfigError: bad ``[quantization]`` options or ``keep_float`` entries; int8 without calibration.
            ConversionError: the converter or quantizer failed.
        """
        if target.precision == "fp32":
            shutil.copyfile(onnx_path, out_dir / NET)
            return ModelFiles(net=NET, files=(NET,))
        if target.precision == "fp16":
            details = self._fp16(onnx_path, target, out_dir / NET)
        else:
            if calibration is None:
                raise ConfigError("int8 needs a calibration set")
            details = self._int8(onnx_path, target, out_dir / NET, calibration)
        return ModelFiles(net=NET, files=(NET,), details=details)

    def _fp16(self, onnx_path: Path, target: Target, dest: Path) -> dict[str, object]:
        import onnx

        _ort()
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = name_nodes(onnx.load(str(onnx_path)))
        keep = resolve_keep_float(model, target.quantization.keep_float)
        overflow = [n for n in fp16_overflow_nodes(model) if n not in keep]
        with translate_errors("ONNX Runtime fp16 conversion failed"):
            half = convert_float_to_float16(model, keep_io_types=True, node_block_list=(keep + overflow) or None)
            onnx.save(half, str(dest))
        return {"converter": "onnxruntime.transformers.float16", "keep_io_types": True, "kept_float": keep,
                **({"kept_float_overflow": overflow} if overflow else {})}

    def _int8(self, onnx_path: Path, target: Target, dest: Path, calibration: Calibration) -> dict[str, object]:
        import onnx

        _ort()
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

        q = target.quantization
        opts = self.quantization_options(target)
        types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
        weight, activation = opts["weight_type"], opts["activation_type"]
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
        model = name_nodes(onnx.load(str(onnx_path)))
        model, upgraded = upgrade_opset(model, QDQ_MIN_OPSET)
        original = {n.name for n in model.graph.node}
        input_name = model.graph.input[0].name

        class Reader(CalibrationDataReader):  # ORT pulls feeds until None
            def __init__(self, tensors: Iterator[Any]) -> None:
                self.tensors = tensors

            def get_next(self) -> dict[str, Any] | None:
                tensor = next(self.tensors, None)
                return None if tensor is None else {input_name: tensor}

        with tempfile.TemporaryDirectory(prefix="edgeseg-ort-q-") as tmp:
            named, pre = Path(tmp) / "named.onnx", Path(tmp) / "pre.onnx"
            onnx.save(model, str(named))
            with translate_errors("ONNX Runtime int8 quantization failed"):
                quant_pre_process(str(named), str(pre), skip_symbolic_shape=True)  # ONNX shape inference is enough; sympy not needed
            # keep_float against the graph that is quantized: pre-processing fuses some nodes (a name it fused away
            # is dropped) and adds others (a mixed-precision search names those)
            pre_model = name_nodes(onnx.load(str(pre)))
            onnx.save(pre_model, str(pre))
            present = {n.name for n in pre_model.graph.node}
            keep = resolve_keep_float(pre_model, [k for k in q.keep_float if k in present or k not in original])
            with translate_errors("ONNX Runtime int8 quantization failed"):  # a calibration image's error passes as it is
                quantize_static(
                    str(pre),
                    str(dest),
                    Reader(calibration.tensors()),
                    quant_format=QuantFormat.QDQ,
                    activation_type=types[activation],
                    weight_type=types[weight],
                    per_channel=q.per_channel,
                    reduce_range=opts["reduce_range"],
                    calibrate_method=method[q.calibration_method],
                    nodes_to_exclude=keep,
                )
        return {
            "quantizer": "onnxruntime.quantization.quantize_static",
            "format": "QDQ",
            "activation_type": activation,
            "weight_type": weight,
            "per_channel": q.per_channel,
            "reduce_range": opts["reduce_range"],
            "calibration_method": q.calibration_method,
            "kept_float": keep,
            **({"opset_upgraded": upgraded} if upgraded else {}),
        }
