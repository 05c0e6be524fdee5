"""Automatic mixed precision: the fewest layers kept in float that bring an int8 build within its accuracy budget.

When an int8 model misses the gate (:mod:`edgeseg.accuracy`), the build
searches for the smallest float set that meets it, per backend:

* **ONNX Runtime** (QDQ): every quantized activation tensor of the int8 model
  is ranked by the damage its own quantize-dequantize pair does, measured in
  the int8 model on evaluation images (:func:`rank_activations`): the mean,
  over channels, of the relative error ``||x_c - QDQ(x_c)|| / ||x_c||``
  (capped at 1). Per channel, because a layer whose range one huge channel
  sets wipes out its small channels while its overall SQNR (ONNX Runtime's
  ``qdq_loss_debug`` figure) still looks fine. Keeping a tensor in float means
  keeping its producer and consumers out of quantization
  (``nodes_to_exclude``). The search keeps the k worst tensors in float for k
  = 1, 2, 4, ... until the budget is met, then bisects down to the smallest
  such k (:func:`search`): at most about 2 log2(n) requantizations.
* **OpenVINO**: NNCF's accuracy control (``quantize_with_accuracy_control``),
  which ranks and reverts layers itself, driven by the gate's own figures
  (:func:`budget_metric`).
* **TFLite** (ai-edge-quantizer): the same ranking and bisection over the
  int8 model's ops (:func:`rank_tflite_ops`: each op's float output quantized
  with the scale the int8 model gave it); an op kept in float gets
  ai-edge-quantizer's ``no_quantize`` rule for its scope.

The chosen set, every trial (float set size, figures, seconds) and the time
go into the manifest (``quantization.search``); the outcome is cached with
the calibration cache. ``--no-search`` turns the search off.

Sources: ONNX Runtime "Quantize ONNX models" (QDQ format,
``nodes_to_exclude``, ``qdq_loss_debug``); NNCF "Quantization with accuracy
control"; the same idea as Polygraphy's ``debug reduce`` (bisection over a
graph) and ORT's ``qdq_loss_debug`` (per-tensor error of the QDQ pairs).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .accuracy import AccuracyReport

__all__ = ["Damage", "Trial", "SearchOutcome", "rank_activations", "rank_tflite_ops", "search", "budget_metric"]

#: evaluation images the ranking runs on (the damage is a per-tensor average; a few images rank the same)
RANK_IMAGES = 4
#: activation tensors fetched per ranking run (bounds memory on large models)
_CHUNK = 24


@dataclass(frozen=True)
class Damage:
    """One quantized activation tensor of a QDQ model and what keeping it in float takes.

    Attributes:
        tensor: the activation's name (as in the fp32 model).
        damage: mean per-channel relative error of its quantize-dequantize pair, in [0, 1].
        nodes: the nodes to exclude from quantization so it stays float (its producer and consumers).
    """

    tensor: str
    damage: float
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Trial:
    """One requantization of the search: how many tensors were kept in float and the gate's figures."""

    tensors: int
    float_nodes: int
    passed: bool
    worst_class: str | None
    worst_class_iou: float
    miou_drop: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        iou = None if self.worst_class_iou != self.worst_class_iou else round(self.worst_class_iou, 6)
        return {"tensors": self.tensors, "float_nodes": self.float_nodes, "passed": self.passed,
                "worst_class": self.worst_class, "worst_class_iou": iou, "miou_drop": round(self.miou_drop, 4),
                "seconds": round(self.seconds, 2)}


@dataclass
class SearchOutcome:
    """What the search tried and chose.

    Attributes:
        method: ``activation ranking + bisection`` (ONNX Runtime, TFLite), ``nncf accuracy control`` (OpenVINO).
        kept_float: what the search kept in float, beyond the spec's keep_float: ONNX node names (ONNX Runtime),
            op scopes (TFLite), the FakeQuantize layers NNCF reverted (OpenVINO).
        trials: every requantization, in order.
        passed: the chosen result meets the budget (else it is the best found, and the build stops).
        seconds: wall time of the search.
        ranking: the worst tensors (name, damage), worst first (ONNX Runtime).
        cached: the outcome came from the cache (no trial ran); said in the build's output, not in the manifest.
    """

    method: str
    kept_float: list[str]
    trials: list[Trial] = field(default_factory=list)
    passed: bool = False
    seconds: float = 0.0
    ranking: list[tuple[str, float]] = field(default_factory=list)
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``quantization.search`` (the same document whether the outcome was cached or not, so
        a rebuild from the cache writes a byte-identical archive)."""
        return {"method": self.method, "kept_float": list(self.kept_float), "passed": self.passed,
                "seconds": round(self.seconds, 2),
                "trials": [t.to_dict() for t in self.trials],
                "ranking": [{"tensor": n, "damage": round(d, 4)} for n, d in self.ranking]}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> SearchOutcome:
        trials = [Trial(t["tensors"], t["float_nodes"], t["passed"], t["worst_class"],
                        float("nan") if t["worst_class_iou"] is None else t["worst_class_iou"], t["miou_drop"],
                        t["seconds"]) for t in doc["trials"]]
        return cls(doc["method"], list(doc["kept_float"]), trials, bool(doc["passed"]), float(doc["seconds"]),
                   [(r["tensor"], r["damage"]) for r in doc["ranking"]], cached=True)

    def summary(self) -> str:
        """One line for the build's output."""
        state = "met the budget" if self.passed else "did not meet the budget"
        chosen = [t for t in self.trials if t.passed]
        last = (min(chosen, key=lambda t: t.tensors) if chosen else
                max(self.trials, key=lambda t: (_nan_low(t.worst_class_iou), -t.miou_drop)) if self.trials else None)
        figures = (f"; worst class {last.worst_class} IoU {last.worst_class_iou:.3f}, drop {last.miou_drop:.2f}"
                   if last else "")
        return (f"{self.method}: {len(self.kept_float)} kept in float, {len(self.trials)} trials, "
                f"{self.seconds:.1f} s{' (cached)' if self.cached else ''}, {state}{figures}")


def trial_of(tensors: int, nodes: int, report: AccuracyReport, seconds: float) -> Trial:
    """A :class:`Trial` from the gate's report."""
    return Trial(tensors, nodes, report.passed, report.worst_class, report.worst_class_iou, report.miou_drop, seconds)


# ------------------------------------------------------------------------------------------ ONNX Runtime
def rank_activations(qdq_path: Path, inputs: Sequence[np.ndarray], input_name: str) -> list[Damage]:
    """Rank the quantized activation tensors of a QDQ ONNX model by the damage of their own QDQ pair, worst first.

    Args:
        qdq_path: the int8 QDQ model (ONNX Runtime ``quantize_static`` output).
        inputs: network inputs (``float32``, the model's input shape), a few evaluation images.
        input_name: the model's input name.

    Returns:
        One :class:`Damage` per activation tensor with a QuantizeLinear/DequantizeLinear pair.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(qdq_path))
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    pairs: list[tuple[str, str, tuple[str, ...]]] = []  # (float tensor, its dequantized copy, nodes to exclude)
    for q in graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in initializers:
            continue
        x = q.input[0]
        for dq in consumers.get(q.output[0], []):
            if dq.op_type != "DequantizeLinear":
                continue
            users = [n.name for n in consumers.get(dq.output[0], []) if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
            made = producer.get(x)
            nodes = ([made.name] if made is not None and made.op_type not in ("QuantizeLinear", "DequantizeLinear") else []) + users
            pairs.append((x, dq.output[0], tuple(dict.fromkeys(n for n in nodes if n))))  # unnamed: not excludable
            break
    errors: dict[str, list[float]] = {}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every QDQ pair as written
    opts.log_severity_level = 3
    for start in range(0, len(pairs), _CHUNK):
        chunk = pairs[start:start + _CHUNK]
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        del probe.graph.output[:]
        for x, post, _ in chunk:
            probe.graph.output.extend([onnx.helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None),
                                       onnx.helper.make_tensor_value_info(post, onnx.TensorProto.FLOAT, None)])
        session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        for tensor in inputs:
            values = session.run(None, {input_name: tensor})
            for k, (x, _, _) in enumerate(chunk):
                errors.setdefault(x, []).append(_channel_error(values[2 * k], values[2 * k + 1]))
    ranked = [Damage(x, float(np.mean(errors[x])), nodes) for x, _, nodes in pairs if x in errors and nodes]
    return sorted(ranked, key=lambda d: -d.damage)


def _channel_error(x: np.ndarray, q: np.ndarray, axis: int = 1) -> float:
    """Mean over channels (``axis``: 1 for NCHW, -1 for NHWC) of ``min(1, ||x_c - q_c|| / ||x_c||)``; channels
    that are all zero are skipped."""
    x = np.asarray(x, np.float64)
    q = np.asarray(q, np.float64)
    if x.ndim < 2:
        x, q = x.reshape(1, -1), q.reshape(1, -1)
    channel = axis % x.ndim
    axes = tuple(i for i in range(x.ndim) if i != channel)
    norm = np.sqrt((x * x).sum(axis=axes))
    err = np.sqrt(((x - q) ** 2).sum(axis=axes))
    live = norm > 0
    if not live.any():
        return 0.0
    return float(np.minimum(err[live] / norm[live], 1.0).mean())


# ------------------------------------------------------------------------------------------ TFLite
def rank_tflite_ops(float_path: Path, int8_path: Path, inputs: Sequence[np.ndarray]) -> list[Damage]:
    """Rank the ops of an int8 LiteRT model by the damage of quantizing their own output, worst first.

    The float model runs with every intermediate tensor kept; each op's output
    is quantized with the scale and zero point the int8 model gave that tensor
    (the TFLite quantization spec: ``q = clip(round(x / scale) + zero_point)``,
    ``x' = scale * (q - zero_point)``) and scored like :func:`rank_activations`
    (mean per-channel relative error, channels last: LiteRT's NHWC).

    Args:
        float_path, int8_path: the float and the int8 ``.tflite`` of one model (ai-edge-quantizer keeps tensor names).
        inputs: float32 network inputs (the signature's input shape), a few evaluation images.

    Returns:
        One :class:`Damage` per op whose output the int8 model quantizes; ``nodes`` is the op's scope
        (output tensor names joined and ended by ``;``, ai-edge-quantizer ``get_op_scope``), what
        ``keep_float`` takes (:func:`edgeseg.backends.tflite.keep_float_rules`).
    """
    from ai_edge_litert.interpreter import Interpreter

    quant = Interpreter(model_path=str(int8_path))
    params = {}
    for d in quant.get_tensor_details():
        scales, zeros = d["quantization_parameters"]["scales"], d["quantization_parameters"]["zero_points"]
        if np.dtype(d["dtype"]).kind in "iu" and len(scales) == 1:  # per-tensor: activations (weights are per channel)
            params[d["name"]] = (float(scales[0]), int(zeros[0]), np.dtype(d["dtype"]))
    with warnings.catch_warnings():  # "intended for debugging": keeping every tensor is the point here
        warnings.simplefilter("ignore", UserWarning)
        fl = Interpreter(model_path=str(float_path), experimental_preserve_all_tensors=True)
    fl.allocate_tensors()
    names = {d["index"]: d["name"] for d in fl.get_tensor_details()}
    ops = [(op["op_name"], [i for i in op["outputs"] if i >= 0]) for op in fl._get_ops_details()]  # noqa: SLF001
    ops = [(kind, outs) for kind, outs in ops if outs and kind not in ("QUANTIZE", "DEQUANTIZE")
           and all(names[i] in params for i in outs)]
    (entry,) = fl.get_input_details()
    errors: dict[int, list[float]] = {}
    for tensor in inputs:
        fl.set_tensor(entry["index"], np.ascontiguousarray(tensor, dtype=np.float32))
        fl.invoke()
        for k, (_, outs) in enumerate(ops):
            damage = []
            for i in outs:
                x = fl.get_tensor(i)
                scale, zero, dtype = params[names[i]]
                info = np.iinfo(dtype)
                q = (np.clip(np.rint(x / scale) + zero, info.min, info.max) - zero) * scale
                damage.append(_channel_error(x, q, axis=-1))
            errors.setdefault(k, []).append(max(damage))
    worst: dict[str, float] = {}  # by scope: an op the interpreter lists twice is one op to the quantizer
    for k, (_, outs) in enumerate(ops):
        scope = ";".join(names[i] for i in outs) + ";"
        worst[scope] = max(worst.get(scope, 0.0), float(np.mean(errors[k])))
    return sorted((Damage(scope, damage, (scope,)) for scope, damage in worst.items()), key=lambda d: -d.damage)


def search(ranking: Sequence[Damage], run_trial: Callable[[list[str]], AccuracyReport],
           report: Callable[[str], None] | None = None) -> tuple[SearchOutcome, list[str], AccuracyReport]:
    """Keep the k worst tensors in float for k = 1, 2, 4, ... until the budget is met, then bisect to the smallest k.

    Args:
        ranking: tensors worst first (:func:`rank_activations`).
        run_trial: requantizes with these extra node names kept in float and returns the gate's report.
        report: progress lines.

    Returns:
        ``(outcome, chosen node names, the chosen trial's report)``; when no k meets the budget, the best
        trial (highest worst-class IoU, then lowest drop) is returned with ``outcome.passed`` False.
    """
    say = report or (lambda _line: None)
    t0 = time.perf_counter()
    outcome = SearchOutcome("activation ranking + bisection", [], ranking=[(d.tensor, d.damage) for d in ranking[:10]])
    results: dict[int, tuple[list[str], AccuracyReport]] = {}

    def nodes_for(k: int) -> list[str]:
        return list(dict.fromkeys(n for d in ranking[:k] for n in d.nodes))

    def attempt(k: int) -> bool:
        if k in results:
            return results[k][1].passed
        nodes = nodes_for(k)
        t1 = time.perf_counter()
        rep = run_trial(nodes)
        results[k] = (nodes, rep)
        outcome.trials.append(trial_of(k, len(nodes), rep, time.perf_counter() - t1))
        say(f"search: {k} worst tensors in float ({len(nodes)} nodes): worst class {rep.worst_class} IoU "
            f"{rep.worst_class_iou:.3f}, drop {rep.miou_drop:.2f} -> {'PASS' if rep.passed else 'fail'}")
        return rep.passed

    n = len(ranking)
    lo, hi, k = 0, None, 1
    while n and k <= n:
        if attempt(k):
            hi = k
            break
        lo = k
        k = n if k < n <= 2 * k else 2 * k
    if hi is None and n and n not in results:
        if attempt(n):
            hi = n
    if hi is not None:
        while hi - lo > 1:  # smallest k in (lo, hi] that passes
            mid = (lo + hi) // 2
            if attempt(mid):
                hi = mid
            else:
                lo = mid
        chosen, rep = results[hi]
        outcome.passed = True
    else:
        best = max(results.values(), key=lambda r: (_nan_low(r[1].worst_class_iou), -r[1].miou_drop)) if results else None
        if best is None:
            raise ValueError("nothing to search: the int8 model has no quantized activation")
        chosen, rep = best
    outcome.kept_float = chosen
    outcome.seconds = time.perf_counter() - t0
    return outcome, chosen, rep


def _nan_low(value: float) -> float:
    return -1.0 if value != value else value


# ------------------------------------------------------------------------------------------ OpenVINO (NNCF)
def budget_metric(budget: dict[str, float | None], classes: list[str]) -> tuple[Callable[[np.ndarray], float], float]:
    """A scalar for NNCF's accuracy control that is >= 0 when the gate's class, mIoU and agreement budgets hold.

    NNCF compares ``metric(fp32) - metric(int8)`` with an absolute ``max_drop``.
    Against the fp32 labels, fp32 scores IoU 1 for every class, so with
    ``metric = min(worst class IoU - min_class_iou, mIoU - 1 + max_drop/100,
    pixel agreement - min_pixel_agreement)`` fp32 scores
    ``m0 = min(1 - min_class_iou, max_drop/100, 1 - min_pixel_agreement)``, and
    ``max_drop = m0`` makes NNCF aim at what the gate accepts. Approximately:
    NNCF scores its own fp32 IR (which may differ from the ONNX Runtime labels
    by a few pixels) at the network's output size, and the gate, at image
    size, stays the judge of what NNCF returns.

    Returns:
        ``(metric of a (C, C) confusion matrix vs fp32 labels, NNCF max_drop)``.
    """
    from .metrics import scores_from_confusion, worst_class

    min_iou = budget.get("min_class_iou")
    max_drop = budget.get("max_miou_drop")
    min_agree = budget.get("min_pixel_agreement")
    iou_slack = (lambda v: v - min_iou) if min_iou is not None else (lambda v: 1.0)
    drop_slack = (lambda v: v - 1 + max_drop / 100) if max_drop is not None else (lambda v: 1.0)
    agree_slack = (lambda v: v - min_agree) if min_agree is not None else (lambda v: 1.0)

    def metric(cm: np.ndarray) -> float:
        wc = worst_class(cm, classes)[1]
        scores = scores_from_confusion(cm)
        return float(min(iou_slack(wc if wc == wc else 1.0), drop_slack(scores.miou), agree_slack(scores.pixel_accuracy)))

    perfect = np.diag(np.full(len(classes), 1000, np.int64))
    return metric, metric(perfect)
