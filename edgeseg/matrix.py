"""The measured support matrix: MMSegmentation architectures × edgeseg backends.

MMDeploy documents MMSegmentation support as a hand-written Y/N table with
footnotes ("PSPNet and Fast-SCNN only support static shape"). This module
measures it instead. For each architecture (:data:`SEED_MODELS`, the seed
table's list, one config each), with **random weights** (no checkpoints are
reachable here) at a reduced input size:

1. build the model from its mmseg config (:func:`edgeseg.mmseg.load_mmseg`);
2. export the shared ONNX (static), recording the exporter that worked
   (TorchScript, else dynamo);
3. shape: export with dynamic H/W and compare with a static export at a
   second size (:func:`edgeseg.variants.check_dynamic_export`): ``dynamic``
   when they match, else ``static`` (the seeds' footnote, detected);
4. for every backend and precision (fp32, and fp16 where the backend's
   target profile has it): convert the shared ONNX with edgeseg's own
   backend, run it with edgeseg's runner on a real photo, and compare with
   PyTorch on the same tensor: label agreement, max abs diff, the max abs
   diff relative to the logits' range, median latency, model size. A
   failure records the first line of its error.

A cell is **Y** when the backend's logits match PyTorch's within
:data:`REL_TOL` of their range (``max|out - ref| / (max ref - min ref)``).
Label agreement is measured and shown, but not the criterion: random-weight
networks have near-tied class scores (top-two margins of 1e-4 of the range
are common), so rounding that is harmless for a trained model flips some of
their labels. Each row also records how far PyTorch's own logits move when
only the input, or only one sampled layer's output, is rounded to fp16
(:func:`fp16_sensitivity`); an fp16 N cell names such a single rounding
when it moves the logits by more than :data:`ILL_CONDITIONED_SHARE` of the
fp16 tolerance: most layers (no few layers kept in fp32 fix the model) or
only the input. int8 is not measured: it needs calibration images, and on
random weights its accuracy would say nothing; ``edgeseg build --precision
int8`` gates it per model.

Backends that cannot run here say so in their cells: CoreML converts but
predicts only on macOS; TensorRT is not installable here (DESIGN.md §6).
Output: JSON and Markdown (:func:`write_matrix`).
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from edgeseg_runtime.runners import BACKEND_NAMES

from .errors import EdgesegError

__all__ = ["SEED_MODELS", "FAST_MODELS", "BACKEND_COLUMNS", "COLUMN_PROFILES", "MMDEPLOY_Y", "REL_TOL",
           "ILL_CONDITIONED_SHARE", "SAMPLED_LAYERS", "fp16_sensitivity", "backend_columns",
           "ModelRow", "Cell", "measure_matrix", "summary", "write_matrix", "run_matrix"]

#: architecture → mmseg 1.2.2 config (the smallest backbone the wheel has a config for)
SEED_MODELS: dict[str, str] = {
    "FCN": "fcn_r18-d8_4xb2-80k_cityscapes-512x1024",
    "PSPNet": "pspnet_r18-d8_4xb2-80k_cityscapes-512x1024",
    "DeepLabV3": "deeplabv3_r18-d8_4xb2-80k_cityscapes-512x1024",
    "DeepLabV3+": "deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024",
    "Fast-SCNN": "fast_scnn_8xb4-160k_cityscapes-512x1024",
    "UNet": "unet-s5-d16_fcn_4xb4-160k_cityscapes-512x1024",
    "BiSeNetV1": "bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024",
    "BiSeNetV2": "bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024",
    "CGNet": "cgnet_fcn_4xb4-60k_cityscapes-680x680",
    "STDC": "stdc1_4xb12-80k_cityscapes-512x1024",
    "OCRNet": "ocrnet_hr18s_4xb2-40k_cityscapes-512x1024",
    "DDRNet": "ddrnet_23-slim_in1k-pre_2xb6-120k_cityscapes-1024x1024",
    "PIDNet": "pidnet-s_2xb6-120k_1024x1024-cityscapes",
    "SegFormer": "segformer_mit-b0_8xb1-160k_cityscapes-1024x1024",
    "Segmenter": "segmenter_vit-t_mask_8xb1-160k_ade20k-512x512",
    "UPerNet": "upernet_r18_4xb2-40k_cityscapes-512x1024",
    "Mask2Former": "mask2former_r50_8xb2-90k_cityscapes-512x1024",
    "ANN": "ann_r50-d8_4xb2-40k_cityscapes-512x1024",
    "APCNet": "apcnet_r50-d8_4xb2-40k_cityscapes-512x1024",
    "DMNet": "dmnet_r50-d8_4xb2-40k_cityscapes-512x1024",
    "DNLNet": "dnl_r50-d8_4xb2-40k_cityscapes-512x1024",
    "EMANet": "emanet_r50-d8_4xb2-80k_cityscapes-512x1024",
    "EncNet": "encnet_r50-d8_4xb2-40k_cityscapes-512x1024",
    "ERFNet": "erfnet_fcn_4xb4-160k_cityscapes-512x1024",
    "FastFCN": "fastfcn_r50-d32_jpu_psp_4xb2-80k_cityscapes-512x1024",
    "GCNet": "gcnet_r50-d8_4xb2-40k_cityscapes-512x1024",
    "ICNet": "icnet_r18-d8_4xb2-80k_cityscapes-832x832",
    "ISANet": "isanet_r50-d8_4xb2-40k_cityscapes-512x1024",
    "NonLocal Net": "nonlocal_r50-d8_4xb2-40k_cityscapes-512x1024",
    "PointRend": "pointrend_r50_4xb2-80k_cityscapes-512x1024",
    "Semantic FPN": "fpn_r50_4xb2-80k_cityscapes-512x1024",
    "DANet": "danet_r50-d8_4xb2-40k_cityscapes-512x1024",
    "SETR": "setr_vit-l-mla_8xb1-160k_ade20k-512x512",
    "CCNet": "ccnet_r50-d8_4xb2-40k_cityscapes-512x1024",
    "PSANet": "psanet_r50-d8_4xb2-40k_cityscapes-512x1024",
    "DPT": "dpt_vit-b16_8xb2-160k_ade20k-512x512",
}
#: the CI subset: small models, ONNX Runtime only
FAST_MODELS = ("BiSeNetV2", "CGNet", "ERFNet", "Fast-SCNN", "PSPNet")
#: the matrix's columns, left to right, by the target profile each backend is measured with → the column's label.
#: The backend names come from edgeseg_runtime.runners.BACKEND_NAMES (:func:`backend_columns`): a backend whose
#: profile is not listed here gets a column at the right, labelled with its name.
COLUMN_PROFILES: dict[str, str] = {
    "cpu": "ONNX Runtime",
    "intel": "OpenVINO",
    "arm": "ncnn",
    "tflite": "LiteRT",
    "apple": "CoreML",
    "jetson": "TensorRT",
}
#: MMDeploy's own support table for MMSegmentation (MMDeploy 1.x, ``docs/en/04-supported-codebases/mmseg.md``):
#: architecture → the backends it marks Y, in this matrix's backend names (its PPLNN column has no edgeseg
#: backend; MMDeploy has no LiteRT or CoreML column; Mask2Former has no row). The reference this matrix is held to.
MMDEPLOY_Y: dict[str, frozenset[str]] = {
    name: frozenset(backends.split()) for name, backends in {
        "FCN": "onnxruntime tensorrt ncnn openvino", "PSPNet": "onnxruntime tensorrt ncnn openvino",
        "DeepLabV3": "onnxruntime tensorrt ncnn openvino", "DeepLabV3+": "onnxruntime tensorrt ncnn openvino",
        "Fast-SCNN": "onnxruntime tensorrt openvino", "UNet": "onnxruntime tensorrt ncnn openvino",
        "ANN": "onnxruntime tensorrt", "APCNet": "onnxruntime tensorrt ncnn",
        "BiSeNetV1": "onnxruntime tensorrt ncnn openvino", "BiSeNetV2": "onnxruntime tensorrt ncnn openvino",
        "CGNet": "onnxruntime tensorrt ncnn openvino", "DMNet": "onnxruntime",
        "DNLNet": "onnxruntime tensorrt ncnn openvino", "EMANet": "onnxruntime tensorrt openvino",
        "EncNet": "onnxruntime tensorrt openvino", "ERFNet": "onnxruntime tensorrt ncnn openvino",
        "FastFCN": "onnxruntime tensorrt ncnn openvino", "GCNet": "onnxruntime tensorrt",
        "ICNet": "onnxruntime tensorrt openvino", "ISANet": "onnxruntime tensorrt openvino",
        "NonLocal Net": "onnxruntime tensorrt ncnn openvino", "OCRNet": "onnxruntime tensorrt ncnn openvino",
        "PointRend": "onnxruntime tensorrt openvino", "Semantic FPN": "onnxruntime tensorrt ncnn openvino",
        "STDC": "onnxruntime tensorrt ncnn openvino", "UPerNet": "onnxruntime tensorrt",
        "DANet": "onnxruntime tensorrt openvino", "Segmenter": "onnxruntime tensorrt",
        "SegFormer": "onnxruntime tensorrt openvino", "SETR": "onnxruntime openvino",
        "CCNet": "", "PSANet": "", "DPT": "",
    }.items()
}
#: precision → largest max abs diff, relative to the PyTorch logits' range, for a Y cell
REL_TOL: dict[str, float] = {"fp32": 1e-3, "fp16": 2e-2}
#: a single fp16 rounding (:func:`fp16_sensitivity`) that moves PyTorch's logits by more than this share of the fp16
#: tolerance is named in an fp16 N: whether most sampled layers' roundings do (conditioning), or only the input's
ILL_CONDITIONED_SHARE = 0.25
#: layers :func:`fp16_sensitivity` rounds one at a time
SAMPLED_LAYERS = 8


@functools.cache
def backend_columns() -> dict[str, tuple[str, str]]:
    """Every backend of ``BACKEND_NAMES`` with a shipped target profile → ``(profile, label)``, in column order.

    The profile is the shipped target whose ``backend`` it is (those of
    :data:`COLUMN_PROFILES` first, in that order); read once.
    """
    from .targets import list_targets, load_target

    profiles = [*COLUMN_PROFILES, *(t for t in list_targets() if t not in COLUMN_PROFILES)]
    profile_of: dict[str, str] = {}
    for profile in profiles:
        profile_of.setdefault(load_target(profile).backend, profile)
    order = {profile: i for i, profile in enumerate(profiles)}
    names = sorted((n for n in BACKEND_NAMES if n in profile_of), key=lambda n: order[profile_of[n]])
    return {n: (profile_of[n], COLUMN_PROFILES.get(profile_of[n], n)) for n in names}


#: backend → (target profile, column label), in column order (:func:`backend_columns`)
BACKEND_COLUMNS: dict[str, tuple[str, str]] = backend_columns()


@dataclass
class Cell:
    """One backend at one precision for one model. ``status``: Y (ran and matched), N (failed), ? (not runnable here).

    ``rel_diff`` is ``max_abs_diff`` over the PyTorch logits' range (max - min).
    """

    status: str
    convert_ok: bool = False
    label_agreement: float | None = None
    max_abs_diff: float | None = None
    rel_diff: float | None = None
    latency_ms: float | None = None
    size_mb: float | None = None
    error: str = ""


@dataclass
class ModelRow:
    """One architecture."""

    model: str
    config: str
    input_size: tuple[int, int]
    build_ok: bool = False
    export_ok: bool = False
    exporter: str = ""
    shape: str = ""  # "dynamic" | "static" | "" (unknown)
    shape_detail: str = ""
    pytorch_ms: float | None = None
    error: str = ""
    rewrites: str = ""  # static-shape rewrites made at export (SharedModel.rewrites)
    measured: str = ""  # ISO date the row was measured
    #: how far PyTorch's own logits move, relative to their range, when only the input is rounded to fp16, and
    #: when only one sampled layer's output is (layer name → move): :func:`fp16_sensitivity`
    fp16_input_rel: float | None = None
    fp16_layer_rel: dict[str, float] = field(default_factory=dict)
    cells: dict[str, dict[str, Cell]] = field(default_factory=dict)  # backend -> precision -> cell


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:240]


def _median_ms(fn: Callable[[], Any], runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def fp16_sensitivity(module: Any, x: np.ndarray, ref: np.ndarray,
                     layers: int = SAMPLED_LAYERS) -> tuple[float, dict[str, float]]:
    """How far the model's own fp32 logits move when a single tensor is rounded to fp16, relative to their range.

    ``max|f'(x) - f(x)| / (max f(x) - min f(x))`` where ``f'`` is the model with one tensor rounded to fp16 (unit
    roundoff 2^-11) and everything else exact: first the input, then, one at a time, the output of each of
    ``layers`` ``Conv2d``/``Linear`` layers sampled evenly from those the forward pass calls, in call order (a
    ``MultiheadAttention`` projection used through its weight is not called, so not sampled). An fp16 model
    rounds at every fp16 layer, so these are the perturbations it is made of (the condition-number view of
    rounding error: Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., §1.6).
    Well-conditioned networks move ≤ ~1e-4 of their range for each. Large moves from most sampled layers mean the
    network amplifies rounding anywhere (e.g. a top-k choice among near-tied scores): no few layers kept in fp32
    fix it. A large move from the input alone, with small ones from the sampled layers, means a few decisions
    near a tie that some roundings flip and others do not, depending on the input image.

    Args:
        module: the PyTorch model (eval mode) that maps an NCHW float32 tensor to logits.
        x: the NCHW float32 input ``ref`` was computed from.
        ref: ``module(x)`` as a numpy array, the logits.
        layers: how many layers to sample (all of them when the model calls fewer).

    Returns:
        ``(input_move, {layer name: move})``, each a float ≥ 0.
    """
    import torch

    from .metrics import range_share

    called: dict[str, Any] = {}  # the layers whose forward runs, in call order
    layer_types = (torch.nn.Conv2d, torch.nn.Linear)

    def noting(name: str) -> Callable[..., None]:
        def hook(layer: Any, _args: Any, _out: Any) -> None:
            called.setdefault(name, layer)
        return hook

    handles = [m.register_forward_hook(noting(n)) for n, m in module.named_modules() if isinstance(m, layer_types)]
    try:
        with torch.no_grad():
            module(torch.from_numpy(x))
    finally:
        for handle in handles:
            handle.remove()
    named = list(called.items())
    picks = sorted({int(i) for i in np.linspace(0, len(named) - 1, min(layers, len(named))).round()}) if named else []

    def rounded(_layer: Any, _args: Any, out: Any) -> Any:
        return out.half().float()

    def move(out: Any) -> float:
        return range_share(float(np.abs(out.numpy() - ref).max()), ref)

    moves = {}
    with torch.no_grad():
        input_move = move(module(torch.from_numpy(x).half().float()))
        for i in picks:
            name, layer = named[i]
            handle = layer.register_forward_hook(rounded)
            try:
                moves[name] = move(module(torch.from_numpy(x)))
            finally:
                handle.remove()
    return input_move, moves


def _mismatch(rel: float, precision: str, input_move: float | None, layer_moves: dict[str, float]) -> str:
    """Why a cell ``rel`` of the range from PyTorch's logits is N; the moves are :func:`fp16_sensitivity`'s."""
    text = f"logits differ from PyTorch by {rel:.1%} of their range"
    if precision != "fp16" or input_move is None:
        return text
    limit = ILL_CONDITIONED_SHARE * REL_TOL["fp16"]
    inner = sorted(layer_moves.values())
    if inner and statistics.median(inner) > limit:
        text += (f"; rounding one of {len(inner)} sampled layers alone moves PyTorch by a median "
                 f"{statistics.median(inner):.1%} (conditioning: no few fp32 layers fix it)")
    elif input_move > limit:
        text += f"; rounding only its input moves PyTorch {input_move:.1%}" + (
            f" (one of {len(inner)} sampled inner layers ≤ {inner[-1]:.2%})" if inner else "")
    return text


def _precisions(name: str, wanted: Sequence[str]) -> dict[str, Any]:
    """The backend's target profile at each wanted precision it has a tolerance for (precision → Target).

    Profiles are model-independent (a model's own ``keep_float`` is in its
    spec), so every architecture is converted the same way.
    """
    from .targets import load_target

    profile = load_target(backend_columns()[name][0])
    out = {}
    for precision in wanted:
        try:
            out[precision] = profile.with_precision(precision)
        except EdgesegError:
            continue  # the profile has no such precision: no cell
    return out


def _measure_backend(name: str, target: Any, shared: Any, x: np.ndarray, ref: np.ndarray, work: Path, runs: int,
                     row: ModelRow) -> Cell:
    """``row`` gives the model's :func:`fp16_sensitivity` figures, for an N cell's reason."""
    from edgeseg_runtime.runners import runner_class
    from edgeseg_runtime.verify import compare_arrays

    from .backends import get_backend
    from .metrics import range_share

    out = work / f"{name}-{target.precision}"
    out.mkdir()
    try:
        backend = get_backend(target)
        backend.versions()
    except EdgesegError as exc:
        return Cell("?", error=f"not available here: {_first_line(exc)}")
    try:
        files = backend.convert(shared.path, target, out)
    except Exception as exc:  # a backend's converter failing is a measured N
        return Cell("N", error=_first_line(exc))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    if backend.capabilities.build_on == "device":
        return Cell("?", convert_ok=True, size_mb=round(size, 2),
                    error="the engine is built on the device (TensorRT not installable here)")
    runner_cls = runner_class(name)
    try:
        runner_cls.version()
    except EdgesegError as exc:
        return Cell("?", convert_ok=True, size_mb=round(size, 2), error=f"converted; cannot run here: {_first_line(exc)}")
    try:
        model = {"net": files.net, "weights": files.weights, **files.details}
        with runner_cls(out, model, dict(target.backend_options)) as runner:  # e.g. OpenVINO's inference_precision
            got = runner.infer({"input": x})["output"]
            latency = _median_ms(lambda: runner.infer({"input": x}), runs)
    except Exception as exc:
        return Cell("N", convert_ok=True, size_mb=round(size, 2), error=f"runs but fails: {_first_line(exc)}")
    if got.shape != ref.shape:
        return Cell("N", convert_ok=True, error=f"output shape {list(got.shape)} instead of {list(ref.shape)}")
    a = compare_arrays(got, ref, got.argmax(1), ref.argmax(1))
    diff = a.max_abs_diff
    rel = range_share(diff, ref)
    status = "Y" if rel <= REL_TOL[target.precision] else "N"
    return Cell(status, True, round(a.label_agreement, 6), diff, rel, round(latency, 2), round(size, 2),
                "" if status == "Y" else _mismatch(rel, target.precision, row.fp16_input_rel, row.fp16_layer_rel))


def _measure_model(name: str, config: str, targets: dict[str, dict[str, Any]], size: tuple[int, int],
                   runs: int, report: Callable[[str], None]) -> ModelRow:
    """One row: ``targets`` is backend → precision → target profile (:func:`_precisions`)."""
    import torch
    from edgeseg_runtime.images import load_image

    from .build import SAMPLE_IMAGES
    from .export import export_shared
    from .mmseg import load_mmseg
    from .pipeline import stretch_to
    from .variants import check_dynamic_export, spec_at

    import datetime

    row = ModelRow(name, config, size, measured=datetime.date.today().isoformat())
    with tempfile.TemporaryDirectory(prefix="edgeseg-matrix-") as tmp:
        work = Path(tmp)
        try:
            module, spec = load_mmseg(config, input_size=size)
            row.build_ok = True
            photo = load_image(SAMPLE_IMAGES / "astronaut.png")
            x = stretch_to(spec, *spec.input.size)(photo)  # the runtime's pre-processing at the spec's size
            with torch.no_grad():
                ref = module(torch.from_numpy(x)).numpy()
                row.pytorch_ms = round(_median_ms(lambda: module(torch.from_numpy(x)), max(1, runs // 4)), 2)
            row.fp16_input_rel, row.fp16_layer_rel = fp16_sensitivity(module, x, ref)
            shared = export_shared(module, spec, work / "static")
            row.export_ok, row.exporter, row.rewrites = True, shared.exporter, shared.rewrites
        except Exception as exc:  # every failure is a measured result
            row.error = _first_line(exc)
            report(f"{name}: {row.error}")
            return row
        try:
            probe = (size[0], size[1] + size[1] // 2)
            static = export_shared(module, spec_at(spec, probe), work / "probe", static=True)
            dynamic = export_shared(module, spec, work / "dynamic", dynamic=True)
            check = check_dynamic_export(dynamic.path, static.path, spec, photo)
            row.shape = "dynamic" if check.safe else "static"
            row.shape_detail = check.summary()
        except Exception as exc:
            row.shape, row.shape_detail = "static", f"dynamic export failed: {_first_line(exc)}"
        bdir = work / "backends"
        bdir.mkdir()
        for backend, by_precision in targets.items():
            for precision, target in by_precision.items():
                try:
                    cell = _measure_backend(backend, target, shared, x, ref, bdir, runs, row)
                except Exception as exc:  # a bug in a backend wrapper: recorded, not raised
                    cell = Cell("N", error=f"{_first_line(exc)} ({traceback.format_exc(limit=1).splitlines()[-1]})")
                row.cells.setdefault(backend, {})[precision] = cell
        report(f"{name}: export {row.exporter}, {row.shape}; " + ", ".join(
            f"{b} {p} {c.status}" for b, cells in row.cells.items() for p, c in cells.items()))
    return row


def _check_names(models: Sequence[str], backends: Sequence[str], precisions: Sequence[str]) -> None:
    """Raises ConfigError for a name the matrix does not know."""
    from .errors import ConfigError

    for kind, names, known in (("model", models, SEED_MODELS), ("backend", backends, backend_columns()),
                               ("precision", precisions, REL_TOL)):
        for name in names:
            if name not in known:
                raise ConfigError(f"unknown {kind} {name!r}; known: {', '.join(known)}")


def measure_matrix(
    models: Sequence[str] | None = None, backends: Sequence[str] | None = None, *, precisions: Sequence[str] = ("fp32",),
    size: tuple[int, int] = (256, 512), runs: int = 10, report: Callable[[str], None] | None = None,
) -> list[ModelRow]:
    """Measure the matrix (see module doc).

    Args:
        models: architecture names from :data:`SEED_MODELS`; None = all.
        backends: columns from :data:`BACKEND_COLUMNS`; None = all.
        precisions: from :data:`REL_TOL`; a backend whose profile lacks one gets no cell for it.
        size: ``(H, W)`` input size every model is built and exported at.
        runs: timed inferences per cell (median).
        report: progress lines (one per model).

    Raises:
        ConfigError: an unknown model or backend name.
    """
    names = list(SEED_MODELS if models is None else models)
    cols = list(backend_columns() if backends is None else backends)
    _check_names(names, cols, precisions)
    say = report or (lambda _line: None)
    targets = {b: _precisions(b, precisions) for b in cols}  # profiles read once, not per model
    return [_measure_model(n, SEED_MODELS[n], targets, size, runs, say) for n in names]


def _cell_md(cells: dict[str, Cell] | None) -> str:
    """One table cell: every precision measured, fp32 first, ``<br>``-separated; one line for precisions that failed alike."""
    texts: dict[str, list[str]] = {}
    for precision, cell in (cells or {}).items():
        if cell.status == "Y":
            text = f"Y {cell.label_agreement:.2%}, {cell.latency_ms:.1f} ms"
        else:
            text = f"{cell.status}{':' if cell.status == 'N' else ''} {_short(cell.error)}"
        texts.setdefault(text.replace("|", "/"), []).append(precision)
    many = len(cells or {}) > 1
    return "<br>".join((f"{', '.join(precs)} " if many else "") + text for text, precs in texts.items())


def _dates(rows: Sequence[ModelRow], meta: dict[str, Any]) -> str:
    """When the rows were measured: one date, or the range when a resumed run re-measured some of them."""
    dates = sorted({r.measured or meta.get("date", "") for r in rows} - {""}) or [meta.get("date", "")]
    return dates[0] if len(dates) == 1 else f"rows measured {dates[0]} to {dates[-1]} (each row's date in Details)"


def _spread(moves: dict[str, float]) -> str:
    """``min to max`` of :func:`fp16_sensitivity`'s layer moves, for the Details."""
    return f"{min(moves.values()):.1e} to {max(moves.values()):.1e}" if moves else "-"


def _short(text: str, limit: int = 170) -> str:
    """An error cut for a table cell (the JSON keeps the whole first line)."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def write_matrix(rows: list[ModelRow], out_dir: Path, *, meta: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``support-matrix.json`` and ``support-matrix.md`` into ``out_dir``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = list(dict.fromkeys(b for r in rows for b in r.cells)) or list(backend_columns())
    doc = {"meta": meta or {}, "models": [asdict(r) for r in rows]}
    json_path = out_dir / "support-matrix.json"
    json_path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    m = meta or {}
    lines = [
        "# Support matrix: MMSegmentation models × edgeseg backends (measured)",
        "",
        f"Generated by `{m.get('command', 'invoke matrix --full')}` on {m.get('host', 'this host')}, {_dates(rows, m)}, "
        f"{m.get('models_done', len(rows))} models in {round(m.get('seconds', 0) / 60)} min"
        + (f" ({m['jobs']} at once, so latencies include that load)" if m.get("jobs", 1) > 1 else "") + ". "
        f"Every model has **random weights** (no checkpoints are reachable here), input {m.get('size', '')}, "
        f"{m.get('precisions', 'fp32')}, "
        "one real photo (astronaut), compared with PyTorch on the same input tensor. A cell is **Y** when the "
        "backend's logits are within " + " / ".join(f"{t:g} ({p})" for p, t in REL_TOL.items()) + " of their range "
        "of PyTorch's (label agreement with PyTorch and median latency shown), **N** with the first line of what "
        "failed, **?** when the backend cannot run on this host (what was checked is said). Label agreement is "
        "shown, not judged: random weights leave class scores nearly tied, so rounding flips some labels that a "
        "trained model would keep. An fp16 N says when PyTorch's own logits move by more than "
        f"{ILL_CONDITIONED_SHARE:g} of the fp16 tolerance from a single fp16 rounding: of most of {SAMPLED_LAYERS} "
        "sampled layers (the model amplifies rounding anywhere, e.g. a top-k choice; keeping a few layers in fp32 "
        "does not fix it), or of the input only; each row's figures are in Details. *Export*: the exporter that "
        "worked (TorchScript, else dynamo). *Shape*: "
        "**dynamic** when a dynamic-H/W export matches a static export at a second size, **static** when it does "
        "not (build such models at fixed sizes: `[input] shapes`). int8 is not measured (calibration needs real "
        "weights; `edgeseg build --precision int8` gates it per model).",
        "",
        "| Model | Export | Shape | " + " | ".join(backend_columns()[c][1] for c in cols) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in cols) + " |",
    ]
    for r in rows:
        export = (r.exporter or "Y") if r.export_ok else f"N: {r.error}".replace("|", "/")
        lines.append(f"| {r.model} | {export} | {r.shape or '-'} | " + " | ".join(_cell_md(r.cells.get(c)) for c in cols) + " |")
    lines += ["", *_summary_md(rows, cols), "", "## Details", ""]
    for r in rows:
        lines.append(f"- **{r.model}** (`{r.config}`{', measured ' + r.measured if r.measured else ''}): "
                     f"{r.shape_detail or r.error or 'no detail'}; PyTorch {r.pytorch_ms if r.pytorch_ms is not None else '-'} ms"
                     + (f"; one fp16 rounding moves PyTorch's logits by (of their range): of the input only "
                        f"{r.fp16_input_rel:.1e}, of one of {len(r.fp16_layer_rel)} sampled layers only "
                        f"{_spread(r.fp16_layer_rel)}" if r.fp16_input_rel is not None else "")
                     + (f"; export rewrites: {r.rewrites}" if r.rewrites else ""))
        for c, cells in r.cells.items():
            for precision, cell in cells.items():
                if cell.status == "Y":
                    lines.append(f"  - {backend_columns()[c][1]} {precision}: max abs diff {cell.max_abs_diff:.2e} "
                                 f"({cell.rel_diff:.1e} of the range), {cell.size_mb} MB")
    md_path = out_dir / "support-matrix.md"
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return json_path, md_path


def summary(rows: Sequence[ModelRow], cols: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per backend: how many exported models are Y at fp32 (and fp16), convert, and how MMDeploy's Y cells fare.

    Returns:
        backend → ``{"exported": n, "fp32_y": n, "fp16_y": n, "fp16_measured": n, "converts": n,
        "mmdeploy_y": n, "mmdeploy_y_here": n, "mmdeploy_not_y": {model: "status: error"}}`` (fp16 counts only
        over models whose fp32 cell is Y).
    """
    out: dict[str, dict[str, Any]] = {}
    exported = [r for r in rows if r.export_ok]
    for c in cols:
        cells = {r.model: r.cells.get(c, {}) for r in exported}
        fp32_y = [m for m, cs in cells.items() if cs.get("fp32") and cs["fp32"].status == "Y"]
        fp16 = [m for m in fp32_y if "fp16" in cells[m]]
        wanted = [r.model for r in rows if c in MMDEPLOY_Y.get(r.model, ())]
        not_y = {}
        for m in wanted:
            cell = cells.get(m, {}).get("fp32")
            if cell is None or cell.status != "Y":
                row = next(r for r in rows if r.model == m)
                not_y[m] = f"{cell.status}: {cell.error}" if cell else f"N: {row.error or 'not measured'}"
        out[c] = {
            "exported": len(exported), "fp32_y": len(fp32_y), "fp16_measured": len(fp16),
            "fp16_y": sum(cells[m]["fp16"].status == "Y" for m in fp16),
            "converts": sum(bool(cs.get("fp32") and cs["fp32"].convert_ok) for cs in cells.values()),
            "mmdeploy_y": len(wanted), "mmdeploy_y_here": len(wanted) - len(not_y), "mmdeploy_not_y": not_y,
        }
    return out


def _summary_md(rows: Sequence[ModelRow], cols: Sequence[str]) -> list[str]:
    counts = summary(rows, cols)
    lines = [
        "## Counts, and MMDeploy's table",
        "",
        "Over the models that export. *fp32 Y*: measured Y at fp32; *converts*: the converter wrote a model (the "
        "only check possible where the backend cannot run here); *fp16 Y*: of those Y at fp32; *MMDeploy Y*: the "
        "cells [MMDeploy's own table](https://github.com/open-mmlab/mmdeploy/blob/main/docs/en/04-supported-codebases/"
        "mmseg.md) marks Y (it has no LiteRT or CoreML column), and how many are Y here.",
        "",
        "| Backend | fp32 Y | converts | fp16 Y | MMDeploy Y cells Y here | MMDeploy Y cells not Y here |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c, n in counts.items():
        mm = f"{n['mmdeploy_y_here']}/{n['mmdeploy_y']}" if n["mmdeploy_y"] else "-"
        by_reason: dict[str, list[str]] = {}
        for m, why in n["mmdeploy_not_y"].items():
            by_reason.setdefault(_short(why, 150), []).append(m)
        missing = "; ".join(f"{', '.join(ms) if len(ms) < n['mmdeploy_y'] or len(ms) == 1 else 'all'}: {why}"
                            for why, ms in by_reason.items()).replace("|", "/")
        lines.append(f"| {backend_columns()[c][1]} | {n['fp32_y']}/{n['exported']} | {n['converts']}/{n['exported']} | "
                     f"{n['fp16_y']}/{n['fp16_measured']} | {mm} | {missing or '-'} |")
    return lines


def _row_from_dict(d: dict[str, Any]) -> ModelRow:
    cells = {b: {p: Cell(**c) for p, c in cs.items()} for b, cs in d.get("cells", {}).items()}
    return ModelRow(**{**d, "input_size": tuple(d["input_size"]), "cells": cells})


def _measured_rows(json_path: Path, size: tuple[int, int], cols: Sequence[str],
                   precs: Sequence[str]) -> tuple[dict[str, ModelRow], float]:
    """Rows of an earlier run at the same size that have every wanted backend and precision, and its seconds (``resume``)."""
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
        rows = [_row_from_dict(d) for d in doc.get("models", [])]
        seconds = float(doc.get("meta", {}).get("seconds", 0))
    except (OSError, ValueError, TypeError, KeyError):
        return {}, 0.0
    complete = {r.model: r for r in rows if tuple(r.input_size) == tuple(size)
                and (r.error or all(p in r.cells.get(b, {}) for b in cols for p in precs))}  # a failed build has no cells
    return complete, seconds if complete else 0.0


def _measure_one(name: str, cols: Sequence[str], precs: Sequence[str], size: tuple[int, int], runs: int) -> ModelRow:
    """One model in a worker process (progress lines go to its stderr)."""
    import sys

    return measure_matrix([name], cols, precisions=precs, size=size, runs=runs,
                          report=lambda line: print(line, file=sys.stderr, flush=True))[0]


def run_matrix(
    *, full: bool = False, models: Sequence[str] | None = None, backends: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None, size: tuple[int, int] = (256, 512), runs: int = 10,
    out_dir: Path = Path("docs"), jobs: int = 1, resume: bool = False, report: Callable[[str], None] | None = None,
) -> tuple[Path, Path]:
    """Measure and write the matrix.

    ``full``: every seed model × every backend × fp32 and fp16; else
    :data:`FAST_MODELS` × ONNX Runtime × fp32. ``models``, ``backends`` and
    ``precisions`` narrow either. The files are rewritten after every model,
    so an interrupted run keeps what it measured; ``resume`` keeps the rows
    of ``out_dir``'s JSON that already have every wanted cell at this size
    (and adds that run's seconds to this one's).
    ``jobs`` > 1 measures that many models at once in worker processes (the
    converters are mostly single-threaded; latencies are then measured side
    by side with another model's work).

    Returns:
        The JSON and Markdown paths.

    Raises:
        ConfigError: an unknown model, backend or precision, or ``jobs`` < 1.
    """
    import datetime
    import platform
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from .errors import ConfigError

    names = list(models or (SEED_MODELS if full else FAST_MODELS))
    cols = list(backends or (backend_columns() if full else ["onnxruntime"]))
    precs = list(precisions or (REL_TOL if full else ["fp32"]))
    _check_names(names, cols, precs)  # before any work
    import importlib.util

    missing = [m for m in ("torch", "mmseg", "mmengine") if importlib.util.find_spec(m) is None]
    if missing:  # before anything is written: an empty run must not replace a measured matrix
        from .errors import ToolchainError

        raise ToolchainError(f"the support matrix needs {', '.join(missing)}: pip install 'edgeseg[mmseg]'")
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    say = report or (lambda _line: None)
    t0 = time.perf_counter()
    narrowed = models or backends or precisions
    command = "invoke matrix --full" if full and not narrowed else "edgeseg matrix " + " ".join(
        [*(["--full"] if full else []), *([f"--models {','.join(names)}"] if models else []),
         *([f"--backends {','.join(cols)}"] if backends else []), *([f"--precisions {','.join(precs)}"] if precisions else [])])
    meta = {
        "command": command.strip(), "host": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": datetime.date.today().isoformat(), "size": f"{size[0]}x{size[1]}", "precisions": ", ".join(precs),
        "weights": "random (no checkpoints reachable)", "jobs": jobs,
    }
    done, earlier = _measured_rows(out_dir / "support-matrix.json", size, cols, precs) if resume else ({}, 0.0)
    done = {n: done[n] for n in names if n in done}
    if done:
        say(f"resuming: {len(done)} of {len(names)} models already measured in {out_dir / 'support-matrix.json'}")

    def write() -> tuple[Path, Path]:
        rows = [done[n] for n in names if n in done]  # the seed order, whatever order they finished in
        return write_matrix(rows, out_dir, meta={**meta, "seconds": round(earlier + time.perf_counter() - t0),
                                                 "models_done": f"{len(rows)}/{len(names)}"})

    paths = write()
    todo = [n for n in names if n not in done]
    if jobs == 1:
        for n in todo:
            done[n] = measure_matrix([n], cols, precisions=precs, size=size, runs=runs, report=say)[0]
            paths = write()
        return paths
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_measure_one, n, cols, precs, size, runs): n for n in todo}
        for future in as_completed(futures):
            name = futures[future]
            try:
                done[name] = future.result()
            except Exception as exc:  # a worker that died (e.g. out of memory) is a measured failure
                done[name] = ModelRow(name, SEED_MODELS[name], size, error=f"worker failed: {_first_line(exc)}")
            paths = write()
    return paths
