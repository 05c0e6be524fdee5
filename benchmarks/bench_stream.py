#!/usr/bin/env python3
"""Video throughput: ``edgeseg run`` on a 640x480 clip vs the bare model, measured side by side in one run.

Makes a 150-frame 640x480 H.264 clip (lossless, 30 fps) with PyAV from real
photos (a window panning over scikit-image's astronaut, coffee, chelsea and
rocket), then for each archive (the embedded default model; Fast-SCNN from
its MMSegmentation config at 512x1024 with seeded weights, when mmseg is
installed) times, alternating, in this process:

* bare: the backend runner on one prepared frame, as many times as the clip has
  frames (FPS = frames / seconds);
* stream: :func:`edgeseg_runtime.stream.run_stream` over the clip, mask video
  written (decode, pre-processing, inference, post-processing, encode; its
  stages overlapped) and, for comparison, the same with ``overlap=False``.

Prints FPS and stream/bare. Goal: stream FPS within 10 % of the bare model's
(stream/bare >= 0.9), reachable when inference is the slowest stage.

    python benchmarks/bench_stream.py [--frames 150] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import edgeseg
from edgeseg_runtime import Archive, Segmentor

W, H, RATE = 640, 480, 30


def make_clip(path: Path, frames: int) -> Path:
    """A lossless 640x480 clip of real photos, a window panning 4 px per frame."""
    import av
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    photos = [np.asarray(Image.fromarray(p).resize((W + 160, H + 120), Image.Resampling.BILINEAR)) for p in photos]
    per = max(1, frames // len(photos))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=RATE, options={"qp": "0", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = W, H, "rgb24"
        for i in range(frames):
            photo, k = photos[(i // per) % len(photos)], i % per
            rgb = np.ascontiguousarray(photo[3 * k % 120:3 * k % 120 + H, 4 * k % 160:4 * k % 160 + W])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def archives(folder: Path) -> dict[str, Path]:
    out = {"default model": edgeseg.build(target="cpu", out_dir=folder, report=lambda _l: None).archive}
    try:
        from edgeseg.mmseg import load_mmseg

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            module, spec = load_mmseg("fast_scnn_8xb4-160k_cityscapes-512x1024", input_size=(512, 1024))
            out["Fast-SCNN 512x1024"] = edgeseg.build(module, spec=spec, target="cpu", out_dir=folder,
                                                       report=lambda _l: None).archive
    except Exception as exc:  # noqa: BLE001  mmseg missing or its export failing: the default model alone
        print(f"Fast-SCNN skipped ({str(exc).splitlines()[0][:100]})")
    return out


def bare_fps(seg: Segmentor, clip: Path, frames: int) -> float:
    import av

    with av.open(str(clip)) as container:
        rgb = next(container.decode(video=0)).to_ndarray(format="rgb24")
    tensor = seg.prepare(rgb)
    seg.infer(tensor)
    start = time.perf_counter()
    for _ in range(frames):
        seg.infer(tensor)
    return frames / (time.perf_counter() - start)


def stream_fps(seg: Segmentor, clip: Path, out: Path, *, overlap: bool) -> float:
    from edgeseg_runtime.stream import run_stream

    stats = run_stream(seg, clip, out, mask_video=True, overlap=overlap, report=lambda _l: None)
    return stats.fps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    try:
        import av  # noqa: F401
    except ImportError:
        print("bench_stream: skipped (PyAV is not installed: pip install 'edgeseg-runtime[video]')")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clip = make_clip(folder / "clip.mkv", args.frames)
        print(f"{'archive':<22} {'bare FPS':>9} {'stream FPS':>11} {'serial FPS':>11} {'stream/bare':>12}  goal >= 0.9")
        for name, archive in archives(folder / "dist").items():
            bare, overlapped, serial = [], [], []
            with Archive.open(archive) as a, Segmentor(a, spin=False) as seg:
                for r in range(args.rounds):
                    bare.append(bare_fps(seg, clip, args.frames))
                    overlapped.append(stream_fps(seg, clip, folder / f"o{r}", overlap=True))
                    serial.append(stream_fps(seg, clip, folder / f"s{r}", overlap=False))
            b, o, s = float(np.median(bare)), float(np.median(overlapped)), float(np.median(serial))
            print(f"{name:<22} {b:>9.1f} {o:>11.1f} {s:>11.1f} {o / b:>12.2f}  {'PASS' if o / b >= 0.9 else 'FAIL'}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
