#!/usr/bin/env python3
"""Quantization benchmark: fp32 vs fp16 vs int8 vs int8 with the mixed-precision search, per backend, in one run.

For each model (the embedded default model; ``bisenetv2``: MMSegmentation's
BiSeNetV2 at 512x1024, random weights, when mmseg is installed) and each
target (``cpu`` = ONNX Runtime, ``intel`` = OpenVINO, ``tflite`` = LiteRT):

* builds fp32, fp16, **int8** (no search, the gate's budget and the golden
  check's label limits lifted so the plain quantizer's result is measured
  even where the build would refuse it)
  and **int8+search** (the stock profile: the search keeps layers in float
  until the budget is met, or the build is refused: then the row says so);
* **latency**: bare backend inference on one prepared tensor, the variants of
  a (model, target) interleaved round by round so load changes hit them
  alike; median per variant and ``fp32 / variant`` (> 1 = faster);
* **accuracy** on the default evaluation set (28 photos,
  :data:`edgeseg.accuracy.DEFAULT_EVAL`) against the fp32 ONNX Runtime labels:
  the worst class's IoU and the mIoU drop (the gate's own figures,
  :func:`edgeseg.accuracy.score_labels`).

Goal (issue 20): int8 >= 1.8x faster than fp32 on the heavier model with
worst-class IoU >= 0.90, and the default model's int8 either meets that IoU or
is refused.

    python benchmarks/bench_quantization.py [--runs 50] [--models default,bisenetv2] [--targets cpu,intel,tflite]
        [--variants fp32,fp16,int8,int8+search]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import edgeseg
from edgeseg.accuracy import load_eval_set, score_labels
from edgeseg_runtime import Archive, Segmentor
from edgeseg_runtime.images import load_image

VARIANTS = ("fp32", "fp16", "int8", "int8+search")
QUIET = {"report": lambda _line: None}


def _model(name: str, folder: Path) -> dict[str, Any]:
    """``edgeseg.build`` keyword arguments for a model name."""
    if name == "default":
        return {}
    if name == "bisenetv2":
        import torch

        from edgeseg.mmseg import load_mmseg

        torch.manual_seed(0)  # random weights, the same in every run
        module, spec = load_mmseg("bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024", input_size=(512, 1024))
        return {"model": module, "spec": spec}
    raise SystemExit(f"unknown model {name!r} (default, bisenetv2)")


def _build(kwargs: dict[str, Any], target: str, variant: str, out: Path) -> tuple[Any, str]:
    """(archive, note): the variant's archive, or (None, why not)."""
    profile = edgeseg.load_target(target)
    precision = variant.split("+")[0]
    search = variant == "int8+search"
    if variant == "int8":  # the plain quantizer, measured even where the gate or the golden check would refuse it
        q = profile.quantization.model_copy(update={"min_pixel_agreement": None, "max_miou_drop": None, "min_class_iou": None})
        tol = profile.tolerance
        limits = tol.int8.model_copy(update={"min_label_agreement": 0.0, "min_class_iou": None}) if tol.int8 else None
        profile = profile.model_copy(update={"quantization": q, "tolerance": tol.model_copy(update={"int8": limits})})
    try:
        result = edgeseg.build(target=profile, precision=precision, search=search, out_dir=out / variant, **kwargs, **QUIET)
    except edgeseg.EdgesegError as exc:
        return None, str(exc).split(": FAIL: ")[-1][:160] if "FAIL" in str(exc) else str(exc)[:160]
    note = ""
    found = result.manifest.get("quantization", {}).get("search") or {}
    if found.get("method"):
        note = f"search: {len(found['kept_float'])} kept in float, {found['seconds']:.0f} s"
    return result.archive, note


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--models", default="default,bisenetv2")
    ap.add_argument("--targets", default="cpu,intel,tflite")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="fp32 first (the ratios' base)")
    args = ap.parse_args()
    if not set(args.variants.split(",")) <= set(VARIANTS):
        ap.error(f"--variants: choose from {', '.join(VARIANTS)}")
    evalset = load_eval_set(None, [])
    rows: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for model in args.models.split(","):
            try:
                kwargs = _model(model, folder)
            except edgeseg.EdgesegError as exc:
                print(f"{model}: skipped ({exc})", file=sys.stderr)
                continue
            t0 = time.perf_counter()
            ref_archive = edgeseg.build(target="cpu", precision="fp32", out_dir=folder / model / "ref", **kwargs, **QUIET).archive
            with Archive.open(ref_archive) as a, Segmentor(a) as ref:
                classes = list(a.manifest.model.classes)
                ref_maps = [ref.segment(load_image(p)).labels for p in evalset.images]
            for target in args.targets.split(","):
                built = {v: _build(kwargs, target, v, folder / model / target) for v in args.variants.split(",")}
                print(f"{model}/{target}: built in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
                measured = _measure(model, target, built, evalset, ref_maps, classes, args)
                for row in measured:  # said at once too: a long run stopped part way keeps what it measured
                    print(" ".join(row), file=sys.stderr, flush=True)
                rows += measured
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    vnni = sorted(f for f in flags if "vnni" in f) or ["none"]
    print(f"CPU int8 dot-product extensions: {', '.join(vnni)}; {args.runs} interleaved runs per variant; accuracy on "
          f"{len(evalset)} photos ({evalset.source}) vs fp32 ONNX Runtime labels")
    print(f"{'model':<10} {'target':<7} {'variant':<12} {'median ms':>9} {'vs fp32':>8} {'worst class IoU':>16} "
          f"{'mIoU drop':>9}  note")
    for row in rows:
        print(" ".join(row))
    return 0


def _measure(model: str, target: str, built: dict[str, tuple[Any, str]], evalset: Any, ref_maps: list, classes: list[str],
             args: argparse.Namespace) -> list[tuple[str, ...]]:
    rows = []
    with ExitStack() as stack:
        segs: dict[str, Segmentor] = {}
        for variant, (archive, _note) in built.items():
            if archive is not None:
                segs[variant] = stack.enter_context(Segmentor(stack.enter_context(Archive.open(archive))))
        if not segs:
            return [(f"{model:<10}", f"{target:<7}", "-", f"{'':>9}", f"{'':>8}", f"{'':>16}", f"{'':>9}",
                     f" nothing built ({built['fp32'][1]})")]
        tensor = next(iter(segs.values())).prepare(load_image(evalset.images[0]))
        for seg in segs.values():
            for _ in range(args.warmup):
                seg.infer(tensor)
        samples: dict[str, list[float]] = {v: [] for v in segs}
        for _ in range(args.runs):
            for variant, seg in segs.items():
                t0 = time.perf_counter_ns()
                seg.infer(tensor)
                samples[variant].append((time.perf_counter_ns() - t0) / 1e6)
        fp32_ms = statistics.median(samples["fp32"]) if "fp32" in samples else float("nan")
        for variant in built:
            archive, note = built[variant]
            if variant not in segs:
                rows.append((f"{model:<10}", f"{target:<7}", f"{variant:<12}", f"{'-':>9}", f"{'-':>8}", f"{'-':>16}",
                             f"{'-':>9}", f" refused: {note}"))
                continue
            seg = segs[variant]
            maps = [seg.segment(load_image(p)).labels for p in evalset.images]
            rep = score_labels(ref_maps, maps, evalset, precision=variant.split("+")[0], classes=classes, budget={})
            ms = statistics.median(samples[variant])
            rows.append((f"{model:<10}", f"{target:<7}", f"{variant:<12}", f"{ms:>9.2f}", f"{fp32_ms / ms:>7.2f}x",
                         f"{rep.worst_class_iou:>16.3f}", f"{rep.miou_drop:>9.2f}", f" {note}"))
    return rows


if __name__ == "__main__":
    sys.exit(main())
