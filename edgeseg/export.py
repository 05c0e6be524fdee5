"""The shared export: any supported model → one fp32 ONNX every target starts from.

The shared ONNX has one input and one output, named as the MMDeploy SDK
expects ("whole" inference, MMDeploy ``configs/mmseg/segmentation_*``):

* ``input``: float32 ``[N, C, H, W]`` (NCHW; C = 3 for colour, 1 for grey, the spec's channels for RAW),
  normalized as the spec says;
* ``output``: float32 scores ``[N, C, H, W]`` (C = number of classes), or,
  with ``with_argmax``, int64 labels ``[N, 1, H, W]``.

To get there from the source model it adds, where needed: Transposes for an
NHWC input or output; for a 1-channel probability output with threshold
``t``, the two-class scores ``[2t - p, p]`` (``[1 - p, p]`` at the usual
0.5): class 0's score is ``p`` mirrored about ``t``, so the arg-max is
``p > t``, and because both scores are linear in ``p`` the arg-max of the
bilinearly resized scores is the resized ``p`` thresholded at ``t``;
with ``with_argmax``, an ``ArgMax`` over C (or ``p > threshold``). The spec is checked against the
graph first (class count, layout, size, dtype): a contradiction is a
:class:`ConfigError` at build time, not a blank mask on the device.

Sources: ONNX IR and operator specs (onnx.ai, opset 13+ Transpose, Concat,
Sub, ArgMax, Greater, Cast); PyTorch ``torch.onnx.export`` (TorchScript-based
exporter, ``dynamo=False``).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError, ConversionError, EdgesegError, ToolchainError
from .spec import ModelSpec

if TYPE_CHECKING:
    import onnx

__all__ = ["SharedModel", "export_shared", "load_source", "normalize_graph", "tensor_dims", "inferred_dims", "graph_constants", "spec_defaults",
           "dcr_to_crd", "OPSET"]

#: opset used when exporting from PyTorch
OPSET = 17
#: highest ONNX IR version written (what the MMDeploy SDK's bundled ONNX Runtime 1.15 reads)
MAX_IR_VERSION = 9
INPUT_NAME = "input"
OUTPUT_NAME = "output"
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class SharedModel:
    """The shared fp32 ONNX written by :func:`export_shared`.

    Attributes:
        path: the ``.onnx`` file.
        sha256: hex digest of its bytes.
        source_sha256: hex digest of the source model file ("" for an in-memory module).
        input_shape: ``[N, C, H, W]``; strings for dynamic dims.
        output_shape: ``[N, C, H, W]`` or ``[N, 1, H, W]``.
        output_dtype: ``"float32"`` (scores) or ``"int64"`` (labels).
        opset: default-domain opset of the graph.
        exporter: the PyTorch exporter that wrote it (``torchscript`` | ``dynamo``), "" for ONNX sources.
        rewrites: the static-shape rewrites made at export and their measured difference from PyTorch
            (:mod:`edgeseg.torch_rewrites`), "" for none.
    """

    path: Path
    sha256: str
    source_sha256: str
    input_shape: list[int | str]
    output_shape: list[int | str]
    output_dtype: str
    opset: int
    exporter: str = ""
    rewrites: str = ""


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ToolchainError("the onnx package is missing; pip install onnx (it is a core dependency of edgeseg)") from None
    return onnx


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ToolchainError(
            "PyTorch models need torch: pip install 'edgeseg[torch]' (torch==2.13.0, CPU wheel)"
        ) from None
    return torch


def _dummy_input(spec: ModelSpec) -> Any:
    torch = _torch()
    if spec.input.size is None:
        raise ConfigError("a PyTorch model needs input.size = [H, W] in the model spec (or --input-size)")
    h, w = spec.input.size
    c = spec.input.n_channels
    shape = (1, c, h, w) if spec.input.layout == "NCHW" else (1, h, w, c)
    return torch.zeros(shape, dtype=torch.float32)


def _export_torch(module: Any, spec: ModelSpec, out: Path, dynamic: bool) -> tuple[str, str]:
    """``torch.onnx.export`` with the TorchScript-based exporter, else the dynamo one.

    Returns:
        ``(the exporter that wrote out, the static-shape rewrites it used and their check)``: the second is
        :func:`_check_rewrites`'s note, "" when there were none.

    The TorchScript exporter refuses non-global ``AdaptiveAvgPool2d`` whose
    output does not divide the input (PSPNet, Fast-SCNN, UPerNet), and with
    dynamic H/W any non-global one ("input size not accessible"). The dynamo
    exporter takes them, but its graph is only right at the traced size
    (DESIGN.md §6), so a dynamic export is checked against a static one at a
    second size (:func:`edgeseg.variants.check_dynamic_export`).
    """
    from collections import Counter

    from .torch_rewrites import static_rewrites

    torch = _torch()
    module.eval()
    axes = (1, 2) if spec.input.layout == "NHWC" else (2, 3)
    dynamic_axes = {"input": {a: f"d{a}" for a in axes}} if dynamic else None
    rewrites: Counter[str] = Counter()
    try:
        with torch.no_grad(), static_rewrites(rewrites) if not dynamic else contextlib.nullcontext():
            torch.onnx.export(
                module, (_dummy_input(spec),), str(out), opset_version=OPSET, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes, dynamo=False,
            )
        return "torchscript", _check_rewrites(module, spec, out, rewrites) if rewrites else ""
    except EdgesegError:  # the model's own clear error (e.g. a missing compiled op): not an exporter failure
        raise
    except Exception as exc:  # the exporter raises many unrelated types
        legacy = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    try:
        _export_dynamo(module, spec, out, axes if dynamic else None)
        return "dynamo", ""
    except EdgesegError:
        raise
    except Exception as exc:
        dynamo = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(
            f"torch.onnx.export failed{' with dynamic H/W' if dynamic else ''}: {legacy[:300]}; dynamo exporter: {dynamo[:300]}"
        ) from None


#: largest max abs difference, relative to the logits' range, between a rewritten export and PyTorch
REWRITE_REL_TOL = 1e-4


def _check_rewrites(module: Any, spec: ModelSpec, out: Path, rewrites: dict[str, int]) -> str:
    """Compare a graph exported with :func:`edgeseg.torch_rewrites.static_rewrites` with the unchanged module.

    Both run on one seeded standard-normal input at the export size (ONNX
    Runtime, CPU, fp32).

    Returns:
        The note :func:`_stamped` records in the graph's metadata (``edgeseg.rewrites``: each rewrite, its
        count, the max abs difference and its share of the logits' range).

    Raises:
        ConversionError: they differ by more than :data:`REWRITE_REL_TOL` of the range.
    """
    import onnxruntime as ort

    from .metrics import range_share

    torch = _torch()
    x = np.random.default_rng(0).standard_normal(tuple(_dummy_input(spec).shape)).astype(np.float32)
    with torch.no_grad():
        ref = module(torch.from_numpy(x))
    ref = (ref[0] if isinstance(ref, (tuple, list)) else ref).numpy()  # the first output is the one exported first
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    diff = float(np.abs(got.astype(np.float64) - ref).max()) if got.shape == ref.shape else float("inf")
    rel = range_share(diff, ref)
    said = ", ".join(f"{name} x{n}" for name, n in sorted(rewrites.items()))
    if not rel <= REWRITE_REL_TOL:
        raise ConversionError(f"the static-shape rewrite of {said} changed the model's output by {rel:.1e} of its range "
                              f"(max abs diff {diff:.3g}); report this model")
    return f"{said}; max abs diff vs PyTorch {diff:.2e} ({rel:.1e} of the range)"


def _export_dynamo(module: Any, spec: ModelSpec, out: Path, axes: tuple[int, int] | None) -> None:
    """The dynamo exporter (dynamic H/W on ``axes``), re-saved as one file (it writes weights to a side ``.data`` file)."""
    import logging

    from ._capture import captured_output

    torch = _torch()
    onnx = _onnx()
    dims = {a: torch.export.Dim.AUTO for a in axes} if axes else None
    side = out.with_suffix(".dynamo.onnx")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with torch.no_grad(), captured_output() as log:  # it prints a recovered version-converter traceback
        log.unlink()
        program = torch.onnx.export(
            module, (_dummy_input(spec),), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=(dims,) if dims else None, opset_version=OPSET, dynamo=True, verbose=False,
        )
        program.save(str(side))
    onnx.save(onnx.load(str(side)), str(out))  # loads the external data next to it, saves one file
    for f in side.parent.glob(side.name + "*"):
        f.unlink()


def _stamped(proto: onnx.ModelProto, exporter: str, rewrites: str) -> onnx.ModelProto:
    """Record which PyTorch exporter wrote the graph (``metadata_props["edgeseg.exporter"]``) and its static-shape
    rewrites (``"edgeseg.rewrites"``, when there were any)."""
    for key, value in (("edgeseg.exporter", exporter), ("edgeseg.rewrites", rewrites)):
        if value:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
    return proto


def load_source(model: str | Path | Any, spec: ModelSpec, work: Path, *, dynamic: bool = False) -> tuple[onnx.ModelProto, str]:
    """Read the source model as an ONNX graph.

    Args:
        model: an ``.onnx`` file, a TorchScript file (``torch.jit.save``), a TensorFlow Lite file (converted
            with tf2onnx and checked against LiteRT: :mod:`edgeseg.tflite_import`), or an
            ``nn.Module`` / ``ScriptModule`` object.
        spec: its model spec (input size and layout are needed for PyTorch).
        work: scratch folder.
        dynamic: export PyTorch models with dynamic H/W.

    Returns:
        ``(graph, sha256 of the source file or "")``.

    Raises:
        ConfigError: file missing, empty, or neither ONNX, TorchScript nor TensorFlow Lite.
        ConversionError: the PyTorch export or the TFLite conversion failed.
        ToolchainError: torch needed but not installed; the TFLite converter venv cannot be made.
    """
    onnx = _onnx()
    if not isinstance(model, (str, Path)):
        exported = work / "from_torch.onnx"
        stamps = _export_torch(model, spec, exported, dynamic)  # writes the file read next
        return _stamped(onnx.load(str(exported)), *stamps), ""
    path = Path(model)
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        raise ConfigError(f"{path}: model file is empty")
    kind = _kind(data)
    if kind == "torch":
        torch = _torch()
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ConfigError(f"{path}: zip file but not a TorchScript model ({str(exc).splitlines()[0]})") from None
        exported = work / "from_torchscript.onnx"
        stamps = _export_torch(module, spec, exported, dynamic)  # writes the file read next
        return _stamped(onnx.load(str(exported)), *stamps), digest
    if kind == "tflite":
        from .tflite_import import tflite_to_onnx

        return tflite_to_onnx(path, work), digest
    try:
        proto = onnx.load_model_from_string(data)
        onnx.checker.check_model(proto)
    except Exception as exc:  # protobuf DecodeError, ValidationError
        raise _not_onnx(path, exc) from None
    if not proto.graph.node:
        raise ConfigError(f"{path}: ONNX file has an empty graph")
    return proto, digest


#: the FlatBuffers file identifier of a TensorFlow Lite model (bytes 4-8 of the file; TFLite schema)
TFLITE_ID = b"TFL3"


def source_kind(model: str | Path | Any) -> str:
    """``"torch"`` (an ``nn.Module``, or a zip file: TorchScript), ``"tflite"`` or ``"onnx"``, from the file's
    first bytes (not its name); a missing file is ``"onnx"`` (reported when it is read)."""
    if not isinstance(model, (str, Path)):
        return "torch"
    try:
        with Path(model).open("rb") as f:
            return _kind(f.read(8))
    except OSError:
        return "onnx"


def _kind(head: bytes) -> str:
    """A model file's kind from its first bytes: a zip (TorchScript), a TFLite FlatBuffer, else ONNX."""
    return "torch" if head[:4] == _ZIP_MAGIC else "tflite" if head[4:8] == TFLITE_ID else "onnx"


def _not_onnx(path: Path, exc: Exception) -> ConfigError:
    return ConfigError(
        f"{path}: not a valid ONNX model ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}); "
        "give an .onnx, TorchScript or .tflite file, or an nn.Module from Python")


def spec_defaults(model: str | Path) -> dict[str, Any]:
    """What a model file says about its spec, for the keys the spec leaves out.

    * ``name``: the file's stem, made a valid archive name (``PP-OCRv4 det.onnx`` → ``PP-OCRv4_det``);
    * for an ONNX file, ``input.layout``: NCHW when the 4-D input has 1-4 channels at axis 1 only, NHWC when
      at axis 3 only; ``input.color`` GRAY for one channel, RAW with ``channels`` for 2 or 4 (3 keeps the
      spec's RGB/BGR); ``output.layout`` the same as the input's when the output is 4-D (TensorFlow models
      are NHWC throughout, PyTorch ones NCHW); absent when the graph leaves it open (the spec's default NCHW
      then applies, and is checked against the graph).

    Raises:
        ConfigError: the file does not exist, is empty, or is an ``.onnx`` file that does not parse (said
            before a missing spec is).
    """
    import re

    path = Path(model)
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist")
    if path.stat().st_size == 0:
        raise ConfigError(f"{path}: model file is empty")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem).lstrip("._-")[:64] or "model"
    out: dict[str, Any] = {"name": name}
    kind = source_kind(path)
    if kind == "tflite":  # TFLite's convolutions are NHWC only: so are its segmentation models' input and output
        return {**out, "input": {"layout": "NHWC"}, "output": {"layout": "NHWC"}}
    if kind != "onnx" or path.suffix.lower() != ".onnx":
        return out
    try:
        proto = _onnx().load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001  protobuf DecodeError and friends: one line
        raise _not_onnx(path, exc) from None
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    def few(d: Any) -> bool:
        return isinstance(d, int) and 1 <= d <= 4

    if len(inputs) == 1 and len(dims := tensor_dims(inputs[0])) == 4 and few(dims[1]) != few(dims[3]):
        layout = "NCHW" if few(dims[1]) else "NHWC"
        channels = dims[1] if layout == "NCHW" else dims[3]
        out["input"] = {"layout": layout, **({"color": "GRAY"} if channels == 1 else
                                             {"color": "RAW", "channels": channels} if channels in (2, 4) else {})}
        if len(proto.graph.output) == 1 and len(tensor_dims(proto.graph.output[0])) == 4:
            out["output"] = {"layout": layout}
    return out


def tensor_dims(value_info: Any) -> list[int | str]:
    """Dims of an ONNX ``ValueInfoProto``: ints, the ``dim_param`` name (or ``"?"``) for dynamic ones."""
    dims: list[int | str] = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return dims


def graph_constants(model: Any) -> dict[str, Any]:
    """The constant values of an ONNX ``ModelProto``: value name → ``TensorProto``, from its initializers and its
    ``Constant`` nodes' ``value`` tensors (other Constant forms, ``value_float`` etc., are left out)."""
    consts = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            consts.update((node.output[0], a.t) for a in node.attribute if a.name == "value")
    return consts


def inferred_dims(model: Any) -> dict[str, list[int | None]]:
    """Every value's dims in an ONNX ``ModelProto`` by ONNX shape inference with data propagation (sizes computed
    through ``Shape -> Slice -> Concat`` become known); None for a dim it cannot tell, {} for a graph it cannot
    infer (onnx raises assorted errors there)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        return {}
    return {vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
            for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}


def _pick(values: list[Any], wanted: str | None, what: str) -> Any:
    if wanted is not None:
        for v in values:
            if v.name == wanted:
                return v
        raise ConfigError(f"model has no {what} named {wanted!r} (it has: {', '.join(v.name for v in values)})")
    if len(values) != 1:
        raise ConfigError(
            f"model has {len(values)} {what}s ({', '.join(v.name for v in values)}); name the one to use in the spec"
        )
    return values[0]


def _rename(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if x == old else x for x in node.input]
        node.output[:] = [new if x == old else x for x in node.output]
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.name == old:
            vi.name = new


def normalize_graph(proto: onnx.ModelProto, spec: ModelSpec, *, with_argmax: bool = False) -> onnx.ModelProto:
    """Check the spec against the graph and rewrite it into the shared form (see module doc).

    Args:
        proto: the source graph (not modified).
        spec: the model spec.
        with_argmax: fold the arg-max (or threshold) into the graph.

    Returns:
        A new graph with input ``input`` (NCHW float32) and output ``output``.

    Raises:
        ConfigError: the spec contradicts the graph (layout, channels, size,
            class count, dtype), or asks for something the graph cannot give.
    """
    onnx = _onnx()
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    g_in = _pick([i for i in graph.input if i.name not in inits], spec.input.name, "input")
    g_out = _pick(list(graph.output), spec.output.name, "output")
    in_dims, hw_axes = _check_input(g_in, spec)
    out_dims, channels = _check_output(g_out, spec, with_argmax)
    taken = {x for n in graph.node for x in (*n.input, *n.output)} | inits
    for new, old in ((INPUT_NAME, g_in.name), (OUTPUT_NAME, g_out.name)):
        if new != old and new in taken:
            raise ConfigError(f"the model already uses the tensor name {new!r} internally; rename it before export")
    n_dim = in_dims[0]
    dcr_to_crd(model)
    _rewrite_input(graph, g_in, spec, (n_dim, in_dims[hw_axes[0]], in_dims[hw_axes[1]]))
    graph.output.append(_rewrite_output(graph, g_out, spec, out_dims, channels, n_dim, with_argmax))
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ConversionError(f"the rewritten graph is invalid: {str(exc).splitlines()[0]}") from None
    return model


def dcr_to_crd(model: onnx.ModelProto) -> int:
    """Rewrite every ``DepthToSpace`` in DCR mode (ONNX's default, TensorFlow's) as CRD (PyTorch's
    ``PixelShuffle``), the only mode pnnx/ncnn and onnx2torch (LiteRT, CoreML) convert, in place.

    The two modes read the input channels in different orders: DCR output channel ``c`` at block
    offset ``k`` (``k = by * b + bx``) comes from input channel ``k * C + c``, CRD from ``c * b² + k``
    (ONNX operator docs, DepthToSpace-13). So DCR(x) = CRD(x[:, perm]) with ``perm[c * b² + k] = k * C + c``.
    When the input comes from a Conv (or ConvTranspose) with constant weights used nowhere else, its output
    channels are permuted in the weights and bias (no cost at run time); otherwise a constant ``Gather``
    on the channel axis does it. The result is exact (the same numbers, reordered).

    Returns:
        How many nodes were rewritten.

    Raises:
        ConfigError: a DCR DepthToSpace whose input channel count is not known from the graph.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    uses: dict[str, int] = {}
    for n in graph.node:
        for x in n.input:
            uses[x] = uses.get(x, 0) + 1
    shapes = {vi.name: tensor_dims(vi) for vi in (*graph.value_info, *graph.input, *graph.output)}
    done = inserted = 0
    for i, node in enumerate(list(graph.node)):
        if node.op_type != "DepthToSpace":
            continue
        if _attr(node, "mode", b"DCR") != b"DCR":
            continue
        b = _attr(node, "blocksize")
        src = producer.get(node.input[0])
        weight = inits.get(src.input[1]) if src is not None and len(src.input) > 1 else None
        channels = None
        if weight is not None and src.op_type == "Conv":
            channels = weight.dims[0]
        elif weight is not None and src.op_type == "ConvTranspose":
            channels = weight.dims[1] * _attr(src, "group", 1)
        dims = shapes.get(node.input[0])
        channels = channels or (dims[1] if dims and len(dims) == 4 and isinstance(dims[1], int) else None)
        if not channels:
            raise ConfigError(f"DepthToSpace {node.name or node.output[0]!r} (DCR mode): its input's channel count is "
                              "not known from the graph, so it cannot be rewritten as CRD for pnnx/onnx2torch")
        c_out = channels // (b * b)
        perm = np.array([k * c_out + c for c in range(c_out) for k in range(b * b)], dtype=np.int64)
        foldable = (src is not None and src.op_type == "Conv" and weight is not None
                    and _attr(src, "group", 1) == 1  # a grouped conv's channels
                    # are tied to their input group: permuting them would change what they read
                    and uses.get(node.input[0], 0) == 1 and node.input[0] not in {o.name for o in graph.output}
                    and all(uses.get(x, 0) == 1 for x in src.input[1:]) and all(x in inits for x in src.input[1:]))
        if foldable:
            for name in src.input[1:]:  # weight [C_out, ...] and bias [C_out]: permute the output channels
                t = inits[name]
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[perm], name))
        else:
            gathered = f"{node.input[0]}_crd_order"
            index = numpy_helper.from_array(perm, f"{node.name or node.output[0]}_crd_perm")
            graph.initializer.append(index)
            graph.node.insert(i + inserted, helper.make_node("Gather", [node.input[0], index.name], [gathered], axis=1,
                                                         name=f"{node.name or node.output[0]}_crd_order"))
            node.input[0] = gathered
            inserted += 1
        for a in [a for a in node.attribute if a.name == "mode"]:
            node.attribute.remove(a)
        node.attribute.append(helper.make_attribute("mode", "CRD"))
        done += 1
    return done


def _attr(node: Any, name: str, default: Any = None) -> Any:
    """An ONNX node attribute's value (``onnx.helper.get_attribute_value``), or ``default`` when it is absent."""
    from onnx import helper

    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else helper.get_attribute_value(found)


def _check_input(g_in: Any, spec: ModelSpec) -> tuple[list[Any], tuple[int, int]]:
    """The input's dims and H/W axes, after checking rank, dtype, channels and size against the spec."""
    from onnx import TensorProto

    in_dims = tensor_dims(g_in)
    in_type = g_in.type.tensor_type.elem_type
    if len(in_dims) != 4:
        raise ConfigError(f"model input {g_in.name!r} has shape {in_dims}; a 4-D image tensor is needed")
    if in_type != TensorProto.FLOAT:
        raise ConfigError(f"model input {g_in.name!r} is {TensorProto.DataType.Name(in_type)}; float32 is needed")
    c_axis, hw_axes = (1, (2, 3)) if spec.input.layout == "NCHW" else (3, (1, 2))
    want = spec.input.n_channels
    if in_dims[c_axis] != want:
        other = "NHWC" if spec.input.layout == "NCHW" else "NCHW"
        if in_dims[hw_axes[1] if spec.input.layout == "NCHW" else 1] == want:
            hint = f"is it {other}?"
        else:
            hint = ("set input.color = 'GRAY' (1 channel) or 'RAW' with channels = N" if spec.input.color != "RAW"
                    else "set input.channels to the model's")
        raise ConfigError(
            f"spec says input layout {spec.input.layout} with {want} channel{'s' * (want > 1)} ({spec.input.color}) "
            f"but model input {g_in.name!r} {in_dims} has {in_dims[c_axis]} at axis {c_axis}; {hint}"
        )
    model_hw = [in_dims[a] for a in hw_axes]
    static = all(isinstance(d, int) and d > 0 for d in model_hw)
    if static and spec.input.size is not None and list(spec.input.size) != model_hw:
        raise ConfigError(f"spec input.size {list(spec.input.size)} but the model takes {model_hw} (H, W)")
    if not static and spec.input.size is None and not spec.input.keep_ratio and not spec.input.limits:
        raise ConfigError("the model has dynamic H/W: set input.size = [H, W] (and keep_ratio), or input.min_side/"
                          "max_side, in the spec")
    return in_dims, hw_axes


def _check_output(g_out: Any, spec: ModelSpec, with_argmax: bool) -> tuple[list[Any], Any]:
    """The output's dims and channel count, after checking them and its dtype against the spec's kind and classes."""
    from onnx import TensorProto

    out_dims = tensor_dims(g_out)
    out_type = g_out.type.tensor_type.elem_type
    n_cls = len(spec.output.classes)
    if len(out_dims) != 4:
        raise ConfigError(f"model output {g_out.name!r} has shape {out_dims}; [N, C, H, W] or [N, H, W, C] is needed")
    oc_axis = 1 if spec.output.layout == "NCHW" else 3
    channels = out_dims[oc_axis]
    kind = spec.output.kind
    is_float = out_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)
    if kind == "labels":
        if is_float:
            raise ConfigError(f"spec says output kind 'labels' but {g_out.name!r} is floating point; use logits/probability")
        if channels != 1:
            raise ConfigError(f"labels output must have 1 channel at axis {oc_axis}, model has {channels}")
        return out_dims, channels
    if not is_float:
        raise ConfigError(f"spec says output kind {kind!r} but {g_out.name!r} is an integer tensor; use 'labels'")
    single = kind == "probability" and channels == 1
    if single and n_cls != 2:
        raise ConfigError(f"a 1-channel probability output means 2 classes; the spec lists {n_cls}")
    if not single and isinstance(channels, int) and channels != n_cls:
        raise ConfigError(
            f"model output {g_out.name!r} {out_dims} has {channels} channels at axis {oc_axis} "
            f"({spec.output.layout}) but the spec lists {n_cls} classes"
        )
    return out_dims, channels


def _rewrite_input(graph: Any, g_in: Any, spec: ModelSpec, nhw: tuple[Any, Any, Any]) -> None:
    """Make the graph input ``input``, NCHW (a Transpose in front of an NHWC model)."""
    from onnx import TensorProto, helper

    if spec.input.layout == "NHWC":
        n_dim, h_dim, w_dim = nhw
        graph.input.remove(g_in)
        graph.input.insert(0, helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                                            [n_dim, spec.input.n_channels, h_dim, w_dim]))
        graph.node.insert(0, helper.make_node("Transpose", [INPUT_NAME], [g_in.name], name="edgeseg_input_nhwc",
                                              perm=[0, 2, 3, 1]))
    elif g_in.name != INPUT_NAME:
        _rename(graph, g_in.name, INPUT_NAME)


def _rewrite_output(graph: Any, g_out: Any, spec: ModelSpec, out_dims: list[Any], channels: Any, n_dim: Any,
                    with_argmax: bool) -> Any:
    """Append the nodes that turn the model's output into ``output`` (NCHW float scores, or int64 labels).

    Returns:
        The new graph output's value info (the old output is removed).
    """
    from onnx import TensorProto, helper, numpy_helper

    out_type = g_out.type.tensor_type.elem_type
    kind, n_cls = spec.output.kind, len(spec.output.classes)
    graph.output.remove(g_out)
    tail = g_out.name
    if tail == OUTPUT_NAME:  # free the name for the final tensor
        _rename(graph, OUTPUT_NAME, "edgeseg_raw_output")
        tail = "edgeseg_raw_output"
    if spec.output.layout == "NHWC":
        graph.node.append(helper.make_node("Transpose", [tail], [f"{tail}_nchw"], name="edgeseg_output_nhwc", perm=[0, 3, 1, 2]))
        tail = f"{tail}_nchw"
    oh, ow = (out_dims[1], out_dims[2]) if spec.output.layout == "NHWC" else (out_dims[2], out_dims[3])
    if kind != "labels" and out_type != TensorProto.FLOAT:
        graph.node.append(helper.make_node("Cast", [tail], [f"{tail}_f32"], to=TensorProto.FLOAT))
        tail = f"{tail}_f32"
    labels = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.INT64, [n_dim, 1, oh, ow])
    if kind == "probability" and channels == 1 and with_argmax:
        thr = numpy_helper.from_array(np.array(spec.output.threshold, dtype=np.float32), "edgeseg_threshold")
        graph.initializer.append(thr)
        graph.node.append(helper.make_node("Greater", [tail, thr.name], [f"{tail}_gt"], name="edgeseg_threshold"))
        graph.node.append(helper.make_node("Cast", [f"{tail}_gt"], [OUTPUT_NAME], name="edgeseg_labels", to=TensorProto.INT64))
        return labels
    if kind == "probability" and channels == 1:  # [2t - p, p]: argmax is p > t (module doc)
        mirror = numpy_helper.from_array(np.array(2 * spec.output.threshold, dtype=np.float32), "edgeseg_one")
        graph.initializer.append(mirror)
        graph.node.append(helper.make_node("Sub", [mirror.name, tail], [f"{tail}_bg"], name="edgeseg_background"))
        graph.node.append(helper.make_node("Concat", [f"{tail}_bg", tail], [OUTPUT_NAME], name="edgeseg_two_class", axis=1))
        return helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [n_dim, 2, oh, ow])
    if kind == "labels":
        graph.node.append(helper.make_node("Cast", [tail], [OUTPUT_NAME], name="edgeseg_labels", to=TensorProto.INT64))
        return labels
    if with_argmax:
        graph.node.append(helper.make_node("ArgMax", [tail], [OUTPUT_NAME], name="edgeseg_argmax", axis=1, keepdims=1))
        return labels
    _rename(graph, tail, OUTPUT_NAME)
    return helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [n_dim, n_cls, oh, ow])


def _fix_input_size(proto: onnx.ModelProto, size: list[int] | tuple[int, int] | None) -> onnx.ModelProto:
    """Set every symbolic input axis, batch included, to a number (batch 1, H/W ``size``; ``size`` None keeps
    the H/W, which must then be static) and re-infer the other shapes (ONNX shape inference).

    Raises:
        ConfigError: dynamic H/W and no ``size``.
    """
    onnx = _onnx()
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if all(d.HasField("dim_value") for d in dims):
        return proto
    if size is None and not all(d.HasField("dim_value") for d in dims[2:]):
        raise ConfigError("a static-shape build of a model with dynamic H/W needs input.size = [H, W] in the spec")
    for d, value in zip(dims, [1, dims[1].dim_value, *(size or (dims[2].dim_value, dims[3].dim_value))], strict=True):
        if d.HasField("dim_value"):
            continue
        d.ClearField("dim_param")
        d.dim_value = int(value)
    for vi in proto.graph.output:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                d.ClearField("dim_param")
    del proto.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(proto)


def export_shared(
    model: str | Path | Any, spec: ModelSpec, out_dir: Path, *, with_argmax: bool = False, dynamic: bool = False,
    static: bool = False,
) -> SharedModel:
    """Write the shared fp32 ONNX for a model into ``out_dir/<name>.onnx``.

    Args:
        model: ONNX file, TorchScript file, or ``nn.Module`` (see :func:`load_source`).
        spec: the model spec.
        out_dir: folder to write into (created).
        with_argmax: fold arg-max/threshold into the graph (output int64 labels).
        dynamic: export PyTorch models with dynamic H/W.
        static: fix every dynamic input axis: batch to 1, H/W to ``spec.input.size`` (a static-shape build
            or variant).

    Returns:
        A :class:`SharedModel` describing the file.

    Raises:
        ConfigError, ConversionError, ToolchainError: see :func:`load_source` and :func:`normalize_graph`.
    """
    onnx = _onnx()
    out_dir.mkdir(parents=True, exist_ok=True)
    proto, source_sha = load_source(model, spec, out_dir, dynamic=dynamic)
    shared = normalize_graph(proto, spec, with_argmax=with_argmax)
    if static:
        shared = _fix_input_size(shared, spec.input.size)
    # the MMDeploy SDK 1.3.1 bundles ONNX Runtime 1.15, which rejects IR 10 (the dynamo exporter writes it);
    # IR 9 covers every opset up to 20 (onnx/docs/Versioning.md)
    if shared.ir_version > MAX_IR_VERSION and max(o.version for o in shared.opset_import if o.domain in ("", "ai.onnx")) <= 20:
        shared.ir_version = MAX_IR_VERSION
    path = out_dir / f"{spec.name}.onnx"
    data = shared.SerializeToString()
    path.write_bytes(data)
    opset = next((o.version for o in shared.opset_import if o.domain in ("", "ai.onnx")), 0)
    out_vi = shared.graph.output[0]
    return SharedModel(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        source_sha256=source_sha,
        input_shape=tensor_dims(shared.graph.input[0]),
        output_shape=tensor_dims(out_vi),
        output_dtype="int64" if out_vi.type.tensor_type.elem_type == onnx.TensorProto.INT64 else "float32",
        opset=opset,
        exporter=next((p.value for p in proto.metadata_props if p.key == "edgeseg.exporter"), ""),
        rewrites=next((p.value for p in proto.metadata_props if p.key == "edgeseg.rewrites"), ""),
    )
