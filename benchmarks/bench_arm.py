#!/usr/bin/env python3
"""ARM backends on this host: ncnn fp32/fp16 and LiteRT fp32/fp16/int8 latency vs ONNX Runtime, one run.

Builds the default model for ``cpu`` (ONNX Runtime fp32, the reference),
``arm`` (ncnn, fp32 and fp16) and ``tflite`` (LiteRT, fp32, fp16, int8), then
times bare backend inference on the same prepared tensor (astronaut photo),
the archives interleaved round by round so load changes hit them alike.
Prints the median per archive, the ratio ``ONNX Runtime / archive`` (> 1 =
faster than ONNX Runtime), the pre+post-processing time of the runtime for
one photo next to it, and label agreement with the fp32 reference on the
golden photos. On x86 ncnn computes fp16 in fp32 (no fp16 arithmetic), so
the fp16 figures here are about weight size, not speed; run it on the board
for those.

    python benchmarks/bench_arm.py [--runs 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack

import numpy as np

import edgeseg
from edgeseg_runtime import Archive, Segmentor
from edgeseg_runtime.bench import bench
from edgeseg_runtime.images import load_image

BUILDS = [("cpu", "fp32"), ("arm", "fp32"), ("arm", "fp16"), ("tflite", "fp32"), ("tflite", "fp16"), ("tflite", "int8")]
THREAD_OPTION = {"cpu": "intra_op_num_threads", "arm": "num_threads", "tflite": "num_threads"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="threads per backend (same for all)")
    args = ap.parse_args()
    golden = sorted(edgeseg.SAMPLE_IMAGES.glob("*.png"))
    photo_path = next(p for p in golden if p.stem == "astronaut")
    photo = load_image(photo_path)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        segs: dict[str, Segmentor] = {}
        for target, precision in BUILDS:
            name = f"{target} {precision}"
            try:
                result = edgeseg.build(target=target, precision=precision, out_dir=tmp, report=lambda _l: None)
            except edgeseg.EdgesegError as exc:
                print(f"{name}: not built here ({exc})", file=sys.stderr)
                continue
            archive = stack.enter_context(Archive.open(result.archive))
            segs[name] = stack.enter_context(Segmentor(archive, {THREAD_OPTION[target]: args.threads}))
        ref = segs["cpu fp32"]
        tensor = ref.prepare(photo)
        times: dict[str, list[float]] = {n: [] for n in segs}
        for _ in range(args.warmup):
            for seg in segs.values():
                seg.infer(tensor)
        for _ in range(args.runs):
            for name, seg in segs.items():
                t0 = time.perf_counter()
                seg.infer(tensor)
                times[name].append(time.perf_counter() - t0)
        stages = bench(ref, photo_path, runs=args.runs // 4 or 1, warmup=args.warmup)  # the runtime's stage timer
        base = statistics.median(times["cpu fp32"])
        print(f"\nbare inference, default model 256x256, {args.runs} interleaved runs, {args.threads} thread(s)")
        print(f"{'archive':<14}{'median ms':>11}{'ORT/this':>10}{'labels vs fp32':>16}")
        for name, seg in segs.items():
            agree = []
            for path in golden:
                rgb = load_image(path)
                want = ref.segment(rgb).labels
                agree.append(float(np.mean(seg.segment(rgb).labels == want)))
            med = statistics.median(times[name])
            print(f"{name:<14}{med * 1e3:>11.2f}{base / med:>10.2f}{min(agree):>15.2%}")
        pp = (stages.preprocess_ms + stages.postprocess_ms) / 1e3
        print(f"\nruntime pre+post-processing of the {stages.image_size[0]}x{stages.image_size[1]} astronaut photo: "
              f"{pp * 1e3:.2f} ms ({pp / base:.0%} of ONNX Runtime's inference)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
