"""Run an archive over a set of images and record what a comparison needs: ``edgeseg measure``.

The worker behind ``edgeseg compare`` (on the host) — the same code runs on
this machine in a subprocess or on a device over SSH, so every target is
measured the same way and in its own process (its peak memory is its own).

For each image it writes into the output folder:

* ``<stem>.png``: the label map at the image's size (palette PNG, as ``run``);
* ``<stem>.output.npy``: the raw network output (``(1, C, h, w)`` float32
  scores, or ``(1, 1, h, w)`` labels), unless ``scores=False``;

and ``measure.json``:

* ``images``: name, size, seconds of the first (cold for the first image) pass;
* ``latency_ms`` / ``infer_ms``: one sample per timed run of the in-memory path
  (pre-processing + inference + post-processing to a label map at the image's
  size; decoding the file is not included) and of its inference part; the
  runs cycle over the first images, after ``warmup`` untimed runs. Those
  images stay decoded in memory: at most :data:`LATENCY_IMAGES` (4) and at most
  :data:`LATENCY_PIXELS` (32 MP) of them in total, the first image always (so
  four 64 MP photos keep one decoded, about 190 MB as RGB, not four); every
  other image is released once segmented; ``latency_images`` names them;
* ``load_ms``: opening the archive and activating the backend;
* ``peak_rss_bytes``: peak resident memory of this process (:func:`peak_rss_bytes`);
* ``backend``, ``machine``, ``python``: where it ran.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .archive import Archive, sha256_file
from .errors import EdgesegError, ImageError
from .images import save_label_map
from .runners import runner_class
from .segmentor import Segmentor

__all__ = ["MEASURE_NAME", "DONE_PREFIX", "LATENCY_IMAGES", "LATENCY_PIXELS", "measure", "peak_rss_bytes"]

#: the result file in the output folder
MEASURE_NAME = "measure.json"
#: ``edgeseg measure`` prints this and the image name as each image is done (progress for the host)
DONE_PREFIX = "measured "
#: images kept decoded for the latency runs, at most
LATENCY_IMAGES = 4
#: pixels (width x height) of all the images kept for the latency runs, at most; the first image is kept whatever its size
LATENCY_PIXELS = 32_000_000


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process in bytes (None where it cannot be read, e.g. Windows).

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this
    process's own memory map. Not ``getrusage``'s ``ru_maxrss``: Linux folds
    the pre-``exec`` memory map into it, so a runtime started by a large parent
    (``edgeseg compare`` runs ``measure`` in a subprocess) would report the
    parent's size (measured: 1.79 GB instead of 0.63 GB). Elsewhere
    ``ru_maxrss`` (macOS reports bytes).

    Source: proc(5) ``VmHWM``; getrusage(2) ``ru_maxrss``; Linux ``exec_mmap``.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def measure(
    archive_path: str | Path,
    images: Sequence[Path],
    out_dir: str | Path,
    *,
    runs: int = 20,
    warmup: int = 3,
    scores: bool = True,
    on_image: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Segment ``images`` with an archive, then time ``runs`` passes; write results into ``out_dir``.

    Args:
        archive_path: archive file or unpacked folder.
        images: image files; stems must be distinct.
        out_dir: output folder (created).
        runs: timed passes (>= 1) after ``warmup`` untimed ones.
        warmup: untimed passes.
        scores: also write each raw network output as ``<stem>.output.npy``.
        on_image: called with each image's file name once it is segmented.

    The timed runs cycle over the first images kept decoded: at most
    :data:`LATENCY_IMAGES` and :data:`LATENCY_PIXELS` pixels in total (the
    first image always); the others are released once segmented.

    Returns:
        The ``measure.json`` document (see module doc).

    Raises:
        EdgesegError: ``runs`` < 1 or ``warmup`` < 0.
        ImageError: no images, an image cannot be read, or two images share a stem.
        ArchiveError, ToolchainError: the archive cannot be opened or its backend is missing.
    """
    if runs < 1 or warmup < 0:
        raise EdgesegError(f"--runs must be >= 1 and --warmup >= 0 (got {runs} and {warmup})")
    if not images:
        raise ImageError("no images to measure")
    stems = [p.stem for p in images]
    if len(set(stems)) != len(stems):
        raise ImageError("images must have distinct file names (stems)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter_ns
    t0 = clock()
    with Archive.open(archive_path) as archive, Segmentor(archive) as seg:
        load_ms = (clock() - t0) / 1e6
        records = []
        kept: list[np.ndarray] = []  # the first images, within LATENCY_IMAGES and LATENCY_PIXELS
        kept_names: list[str] = []
        kept_pixels, keeping = 0, True
        for path in images:
            t = clock()
            rgb = seg.load(path)
            result = seg.segment(rgb)
            seconds = (clock() - t) / 1e9
            save_label_map(result.labels, out / f"{path.stem}.png", seg.palette)
            if scores:
                np.save(out / f"{path.stem}.output.npy", result.output)
            records.append({"image": path.name, "stem": path.stem, "width": rgb.shape[1], "height": rgb.shape[0],
                            "seconds": round(seconds, 6)})
            pixels = rgb.shape[0] * rgb.shape[1]
            keeping = keeping and len(kept) < LATENCY_IMAGES and (not kept or kept_pixels + pixels <= LATENCY_PIXELS)
            if keeping:
                kept.append(rgb)
                kept_names.append(path.name)
                kept_pixels += pixels
            del rgb, result  # not kept: released before the next image is decoded
            if on_image is not None:
                on_image(path.name)
        latency, infer = [], []
        for i in range(warmup + runs):
            rgb = kept[i % len(kept)]
            t1 = clock()
            tensor = seg.prepare(rgb)
            t2 = clock()
            output = seg.forward(tensor)
            t3 = clock()
            seg.finish(output, rgb.shape[0], rgb.shape[1])
            t4 = clock()
            if i >= warmup:
                latency.append(round((t4 - t1) / 1e6, 4))
                infer.append(round((t3 - t2) / 1e6, 4))
        m = archive.manifest
        manifest_sha = sha256_file(archive.path("manifest.json"))
    doc = {
        "schema_version": 1,
        "archive": Path(archive_path).name,
        "manifest_sha256": manifest_sha,
        "backend": {"name": m.backend.name, "version": runner_class(m.backend.name).version()},
        "precision": m.target.precision,
        "machine": platform.machine(),
        "node": platform.node(),
        "python": platform.python_version(),
        "images": records,
        "scores": scores,
        "runs": runs,
        "warmup": warmup,
        "load_ms": round(load_ms, 3),
        "latency_ms": latency,
        "infer_ms": infer,
        "latency_images": kept_names,
        "peak_rss_bytes": peak_rss_bytes(),
    }
    (out / MEASURE_NAME).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return doc
