#!/usr/bin/env python3
"""Runtime overhead benchmark: end-to-end time per image vs the backend's bare inference.

For each target archive of the default model, and for an image at the model's
input size (256x256) and at a photo's own size (512x512), times in one loop,
side by side (see ``edgeseg_runtime.bench``):

* bare: ``runner.infer`` on an already prepared tensor;
* end-to-end: pre-processing + inference + post-processing to a label map at
  the image's size (decoded image in memory; file decode/encode shown apart).

Prints one row per case and the overhead ratio ``e2e / bare - 1``. Goal:
pre/post-processing adds <= 10% at the model's size.

    python benchmarks/bench_runtime.py [--runs 200] [--targets cpu,intel]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

import edgeseg
from edgeseg_runtime import Archive, Segmentor
from edgeseg_runtime.bench import bench, format_result


def _photo(folder: Path) -> Path:
    """A 512x512 real photo: scikit-image's astronaut when installed, else the shipped sample upscaled."""
    try:
        from skimage import data

        img = Image.fromarray(data.astronaut())
    except ImportError:
        img = Image.open(edgeseg.SAMPLE_IMAGES / "astronaut.png").convert("RGB").resize((512, 512), Image.LANCZOS)
    path = folder / "astronaut_512.png"
    img.save(path)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--targets", default="cpu,intel")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        photo = _photo(folder)
        at_model = folder / "astronaut_256.png"
        Image.open(photo).resize((256, 256), Image.LANCZOS).save(at_model)
        print(f"{'archive':<34} {'image':<9} stage medians over {args.runs} runs")
        for target in args.targets.split(","):
            try:
                archive = edgeseg.build(target=target, out_dir=folder / "dist", report=lambda _l: None).archive
            except edgeseg.EdgesegError as exc:
                print(f"{target}: skipped ({exc})")
                continue
            with Archive.open(archive) as a, Segmentor(a) as seg:
                for image in (at_model, photo):
                    print(format_result(a.name, bench(seg, image, runs=args.runs, warmup=args.warmup)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
