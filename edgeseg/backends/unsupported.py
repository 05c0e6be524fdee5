"""Name the ONNX op and nodes a converter could not take, and the fix where one exists.

pnnx (ncnn) reports what it could not lower as PyTorch op names left in the
ncnn ``.param`` (``torch.gt``, ``Tensor.to``); onnx2torch (LiteRT, CoreML)
raises ``NotImplementedError`` naming an ``OperationDescription(domain,
operation_type, version)``. Both are said here in the terms of the shared
ONNX the user can open (op type and node names, e.g. in Netron).

Sources: pnnx's ONNX-to-PyTorch op table (``tools/pnnx/src/pass_onnx``, the
``torch.*``/``Tensor.*`` names it writes); onnx2torch's converter registry
(``onnx2torch/node_converters/registry.py``, ``OperationDescription``).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["PNNX_TO_ONNX", "FIXES", "nodes_of", "pnnx_unsupported", "onnx2torch_unsupported"]

#: the ONNX op types that a PyTorch op pnnx leaves unconverted comes from
PNNX_TO_ONNX: dict[str, tuple[str, ...]] = {
    "torch.gt": ("Greater",), "torch.lt": ("Less",), "torch.ge": ("GreaterOrEqual",), "torch.le": ("LessOrEqual",),
    "torch.eq": ("Equal",), "Tensor.to": ("Cast",), "torch.where": ("Where",), "Tensor.reshape": ("Reshape",),
    "Tensor.view": ("Reshape",), "torch.unbind": ("Split", "Gather"), "torch.argmax": ("ArgMax",),
    "torch.argmin": ("ArgMin",), "Tensor.index_select": ("Gather",), "torch.gather": ("GatherElements",),
    "torch.topk": ("TopK",), "Tensor.expand": ("Expand",), "torch.einsum": ("Einsum",), "torch.cumsum": ("CumSum",),
    "torch.tile": ("Tile",), "Tensor.repeat": ("Tile",), "torch.logical_and": ("And",), "torch.logical_or": ("Or",),
    "torch.logical_not": ("Not",), "Tensor.masked_fill": ("Where",), "torch.nonzero": ("NonZero",),
    "F.grid_sample": ("GridSample",), "torch.roll": ("Slice", "Concat"), "Tensor.new_zeros": ("ConstantOfShape",),
    "torch.full": ("ConstantOfShape",), "torch.arange": ("Range",), "torch.scatter": ("ScatterElements",),
}

_LABELS = "build without --with-argmax (edgeseg arg-maxes or thresholds the scores after inference, on every backend)"
#: what to do about an op, where something can be done
FIXES: dict[str, str] = {
    "ArgMax": _LABELS, "Greater": _LABELS, "Cast": _LABELS,
    "ReduceMean": "export at opset 17 (ReduceMean takes its axes as an attribute there) or with the TorchScript "
                  "exporter (torch.onnx.export(..., dynamo=False))",
    "DepthToSpace": "edgeseg rewrites DCR DepthToSpace to CRD; a CRD one that still fails needs the tflite or "
                    "onnxruntime target",
    "NonZero": "data-dependent shapes cannot be converted statically: replace the op in the model (e.g. a mask "
               "multiply instead of indexing)",
}


def nodes_of(model: Any, op_types: tuple[str, ...] | list[str], *, keep: int = 3) -> list[str]:
    """``"<OpType> '<node name>'"`` for the nodes of ``op_types`` in an ONNX ``ModelProto`` (first ``keep`` per
    type, then ``"+N more"``); unnamed nodes are named by their first output."""
    out: list[str] = []
    for op in op_types:
        names = [n.name or (n.output[0] if n.output else "?") for n in model.graph.node if n.op_type == op]
        if names:
            shown = ", ".join(repr(x) for x in names[:keep])
            out.append(f"{op} {shown}" + (f" (+{len(names) - keep} more)" if len(names) > keep else ""))
    return out


def _with_fixes(found: list[str], op_types: list[str]) -> str:
    fixes = list(dict.fromkeys(FIXES[op] for op in op_types if op in FIXES))
    return "; ".join(found) + (f"; fix: {' / '.join(fixes)}" if fixes else "")


def pnnx_unsupported(model: Any, left: list[str]) -> str:
    """One line for the PyTorch ops pnnx left unconverted: each with the ONNX op type and nodes it comes from.

    Args:
        model: the ONNX ``ModelProto`` given to pnnx.
        left: the op names pnnx left in the ncnn ``.param`` (``torch.gt``, ``Tensor.to``).
    """
    parts, types = [], []
    for op in left:
        onnx_types = PNNX_TO_ONNX.get(op, () if "." in op else (op,))  # no dot: the ONNX op itself, passed through
        nodes = nodes_of(model, onnx_types)
        types += [t for t in onnx_types if any(n.startswith(t + " ") for n in nodes)]
        parts.append(f"{op} (ONNX {'; '.join(nodes)})" if nodes else op)
    reason = _ncnn_rank_reason(model) if "Reshape" in types else ""
    return f"pnnx left ops ncnn has no layer for: {_with_fixes(parts, types)}{reason}"


def _ncnn_rank_reason(model: Any) -> str:
    """Why ncnn cannot hold a Reshape's result, when the shapes say: more than 4 axes after the batch axis, or a
    batch axis that is not kept (ncnn's ``Mat`` has w, h, d, c; the batch axis is implicit and must stay 1)."""
    from ..export import inferred_dims

    dims = inferred_dims(model)  # {} for a graph shape inference cannot read: no reason given
    for node in model.graph.node:
        if node.op_type != "Reshape":
            continue
        src, out = dims.get(node.input[0]), dims.get(node.output[0])
        if not src or not out or None in src or None in out:
            continue
        if len(out) > 5 or src[0] != out[0]:
            what = f"a {len(out)}-D tensor" if len(out) > 5 else "a tensor whose first (batch) axis changes"
            return (f"; because: Reshape {node.name!r} makes {what} ({src} -> {out}), and an ncnn blob has at most "
                    "4 axes after a batch axis of 1")
    return ""


_O2T = re.compile(r"operation_type='(\w+)', version=(\d+)")


def onnx2torch_unsupported(model: Any, message: str) -> str | None:
    """One line for onnx2torch's "Converter is not implemented" error: op type, opset version, nodes, fix;
    None when ``message`` is not that error."""
    found = _O2T.search(message)
    if found is None:
        return None
    op, version = found.group(1), found.group(2)
    nodes = nodes_of(model, (op,))
    where = f": nodes {nodes[0].split(' ', 1)[1]}" if nodes else ""
    return f"onnx2torch has no converter for ONNX {op} version {version}{where}" + (
        f"; fix: {FIXES[op]}" if op in FIXES else "")
