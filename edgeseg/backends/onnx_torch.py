"""The shared ONNX as a PyTorch module (onnx2torch), for toolchains that take PyTorch only.

CoreML (``coremltools.convert`` of a ``torch.jit.trace``) and LiteRT
(``litert_torch.convert``, which runs ``torch.export``) cannot read ONNX.
onnx2torch (https://github.com/ENOT-AutoDL/onnx2torch) turns the graph into a
``torch.fx.GraphModule`` whose ONNX ops are small modules.

Four of those modules read their shape arguments as tensors at run time
(``OnnxReshape``: ``torch.any(shape == 0)``, ``OnnxResize``: ``scales.tolist()``,
``OnnxSlice``: ``axes.numpy()`` and slices of 0-d tensors, ``OnnxPadDynamic``:
``pads.tolist()``).
Under ``torch.export`` that is a data-dependent branch and the export stops
("Could not guard on data-dependent expression"). When such an argument is a
constant of the graph (an initializer, as in every static-shape export),
:func:`freeze_shape_arguments` replaces the module call with the plain
``torch.reshape`` / ``torch.nn.functional.interpolate`` / indexing call and the
values as Python ints/floats, which is what the module would compute. Semantics
kept: ONNX Reshape's ``0`` copies the input's dimension (``allowzero = 0``);
Resize's scales/sizes are given for N, C, H, W and must leave N and C alone;
Slice's negative steps flip the axis first (torch indexing has no negative
step), as onnx2torch's own ``OnnxSlice`` does.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from typing import Any

from ..errors import ConversionError, ToolchainError
from . import translate_errors
from .unsupported import onnx2torch_unsupported

__all__ = ["fold_constants", "freeze_shape_arguments", "import_onnx2torch", "onnx_to_torch"]


def fold_constants(model: Any) -> Any:
    """Constant-fold a static-shape ONNX graph with ONNX Runtime's basic graph optimizations.

    A static export still computes Resize sizes through ``Shape → Slice → Concat``
    chains; onnx2torch's Slice reads its arguments with ``.numpy()``, which
    ``torch.export`` cannot trace. ORT's basic level (constant folding,
    redundant-node elimination; standard ONNX ops only) turns those chains into
    initializers. Source: ONNX Runtime docs, "Graph optimizations", basic level.
    """
    import tempfile
    from pathlib import Path

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgeseg-fold-") as tmp:
        src, dest = Path(tmp) / "in.onnx", Path(tmp) / "folded.onnx"
        onnx.save(model, str(src))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(dest)
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
        return onnx.load(str(dest))


def import_onnx2torch(extra: str) -> Any:
    """Import onnx2torch, with a scoped stand-in for torchvision when it is missing.

    onnx2torch imports torchvision at module level only for its NonMaxSuppression
    and RoiAlign converters. PyPI has no torchvision built for the CPU torch
    this project pins: the matching wheel (0.28.0) installs but fails on import
    ("operator torchvision::nms does not exist"), a newer one pulls CUDA torch.
    So when ``import torchvision`` fails in any way, a module whose ``ops`` raise a
    clear error is put in ``sys.modules`` for the import and removed afterwards.
    A segmentation graph with those ops then fails to convert with that error.

    Raises:
        ToolchainError: onnx2torch is not installed (names ``edgeseg[<extra>]``).
    """
    try:
        import torchvision  # noqa: F401

        saved = None
    except Exception:  # ImportError, or RuntimeError from a torchvision built for another torch
        saved = {k: sys.modules.get(k) for k in ("torchvision", "torchvision.ops")}
        sys.modules.update(_torchvision_stand_in())
    try:
        import onnx2torch
    except ImportError as exc:
        raise ToolchainError(f"onnx2torch is not installed ({exc}); pip install 'edgeseg[{extra}]'") from None
    finally:
        for k, v in (saved or {}).items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return onnx2torch


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    """``torchvision`` and ``torchvision.ops`` modules whose NMS/RoiAlign raise a clear ConversionError."""

    def missing(*_a: Any, **_k: Any) -> Any:
        raise ConversionError("this model has NonMaxSuppression/RoiAlign, which onnx2torch converts with torchvision; "
                              "install torchvision matching torch")

    stub = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    stub.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    ops.__spec__ = importlib.machinery.ModuleSpec("torchvision.ops", None)
    ops.nms = ops.roi_align = ops.box_convert = missing  # type: ignore[attr-defined]
    stub.ops = ops  # type: ignore[attr-defined]
    return {"torchvision": stub, "torchvision.ops": ops}


def onnx_to_torch(model: Any, extra: str, *, freeze: bool = False) -> Any:
    """An ONNX ``ModelProto`` as an eval-mode ``torch.fx.GraphModule`` (NCHW in, same outputs).

    Args:
        model: the ONNX model (static shapes when ``freeze``).
        extra: the edgeseg extra that installs onnx2torch (for the error message).
        freeze: fold constants (:func:`fold_constants`) first and apply
            :func:`freeze_shape_arguments` after (both needed by ``torch.export``).

    Raises:
        ToolchainError: onnx2torch missing.
        ConversionError: onnx2torch has no converter for an op, or failed.
    """
    o2t = import_onnx2torch(extra)
    if freeze:
        model = fold_constants(model)
    with translate_errors("onnx2torch could not convert the shared ONNX"):  # assorted errors
        try:
            module = o2t.convert(model).eval()
        except NotImplementedError as exc:  # no converter for an op (or op version): name it, its nodes, the fix
            line = onnx2torch_unsupported(model, str(exc))
            if line is None:
                raise
            raise ConversionError(line) from exc
    if freeze:
        freeze_shape_arguments(module)
    return module


def _slices(starts: list[int], ends: list[int], axes: list[int] | None, steps: list[int] | None
            ) -> tuple[tuple[int, ...], tuple[Any, ...], tuple[Any, ...]]:
    """ONNX Slice arguments as ``(axes to flip, index for the leading axes, index for the trailing axes)``
    (onnx2torch's ``_get_slices`` on Python ints: a negative step flips the axis and slices it forwards)."""
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    by_axis, flips = {}, []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step < 0:
            flips.append(axis)
            start, end, step = -start - 1, -end - 1, -step
        by_axis[axis] = slice(start, end, step)
    leading = tuple(by_axis.get(a, slice(None)) for a in range(max(axes) + 1)) if max(axes) >= 0 else ()
    trailing = (Ellipsis, *(by_axis.get(a, slice(None)) for a in range(min(axes), 0))) if min(axes) < 0 else ()
    return tuple(flips), leading, trailing


def sliced(x: Any, flips: tuple[int, ...], leading: tuple[Any, ...], trailing: tuple[Any, ...]) -> Any:
    """ONNX Slice with constant arguments (:func:`_slices`), as plain indexing ``torch.export`` traces."""
    import torch

    if flips:
        x = torch.flip(x, dims=list(flips))
    if leading:
        x = x[leading]
    if trailing:
        x = x[trailing]
    return x


def _constant(gm: Any, node: Any) -> Any:
    """The tensor behind a ``get_attr`` node, or None when the argument is not a graph constant."""
    if getattr(node, "op", None) != "get_attr":
        return None
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj


def freeze_shape_arguments(gm: Any) -> int:
    """Replace OnnxReshape/OnnxResize/OnnxSlice/OnnxPadDynamic calls whose arguments are constants (see module
    doc), in place.

    Returns:
        How many calls were replaced.
    """
    import torch
    from onnx2torch.node_converters.pad import OnnxPadDynamic, _onnx_padding_to_torch, _torch_padding_to_mode_format
    from onnx2torch.node_converters.reshape import OnnxReshape
    from onnx2torch.node_converters.resize import OnnxResize, _onnx_mode_to_torch_mode
    from onnx2torch.node_converters.slice import OnnxSlice

    graph, replaced = gm.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        call: tuple[Any, tuple[Any, ...], dict[str, Any]] | None = None
        if isinstance(module, OnnxReshape):
            shape = _constant(gm, node.args[1]) if len(node.args) > 1 else None
            if shape is not None:
                dims = [int(v) for v in shape.tolist()]
                if 0 in dims:  # ONNX: 0 copies the input's dimension; needs the input's (static) shape
                    src = node.args[0].meta.get("tensor_meta")
                    if src is None:
                        continue
                    dims = [int(src.shape[i]) if d == 0 else d for i, d in enumerate(dims)]
                call = (torch.reshape, (node.args[0], tuple(dims)), {})
        elif isinstance(module, OnnxResize):
            args = list(node.args) + [None] * (4 - len(node.args))
            for i, key in enumerate(("roi", "scales", "sizes"), start=1):  # onnx2torch passes some as keywords
                args[i] = node.kwargs.get(key, args[i])
            roi, scales, sizes = (_constant(gm, a) if a is not None else None for a in args[1:4])
            given = [a for a in args[1:4] if a is not None]
            if any(_constant(gm, a) is None for a in given) or (roi is not None and roi.numel() and not module.ignore_roi):
                continue  # a computed argument: leave the module (torch.export may still refuse it)
            size = scale = None
            if sizes is not None and sizes.numel():
                size = tuple(int(v) for v in sizes.tolist()[2:])
            elif scales is not None and scales.numel():
                values = [float(v) for v in scales.tolist()]
                if values[:2] != [1.0, 1.0]:
                    continue
                scale = tuple(values[2:])
            else:
                continue
            mode = _onnx_mode_to_torch_mode(module.onnx_mode, len(size or scale or ()))
            call = (torch.nn.functional.interpolate, (node.args[0],),
                    {"size": size, "scale_factor": scale, "mode": mode, "align_corners": module.align_corners})
        elif isinstance(module, OnnxSlice):
            args = list(node.args) + [None] * (5 - len(node.args))
            for i, key in enumerate(("starts", "ends", "axes", "steps"), start=1):
                args[i] = node.kwargs.get(key, args[i])
            values = [_constant(gm, a) if a is not None else None for a in args[1:5]]
            if any(v is None for a, v in zip(args[1:5], values) if a is not None) or values[0] is None:
                continue
            call = (sliced, (node.args[0], *_slices(*(None if v is None else [int(x) for x in v.tolist()]
                                                       for v in values))), {})
        elif isinstance(module, OnnxPadDynamic):
            pads = _constant(gm, node.args[1]) if len(node.args) > 1 else None
            value = node.args[2] if len(node.args) > 2 else node.kwargs.get("constant_value", 0.0)
            if value is not None and not isinstance(value, (int, float)):
                value = _constant(gm, value)
                value = None if value is None else float(value.reshape(-1)[0]) if value.numel() else 0.0
            if pads is None or value is None:
                continue
            torch_pads = _torch_padding_to_mode_format(_onnx_padding_to_torch([int(v) for v in pads.tolist()]),
                                                       module.mode)
            call = (torch.nn.functional.pad, (node.args[0], tuple(torch_pads)),
                    {"mode": module.mode, **({"value": float(value)} if module.mode == "constant" else {})})
        if call is None:
            continue
        with graph.inserting_after(node):
            new = graph.call_function(call[0], call[1], call[2])
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        replaced += 1
    graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return replaced
