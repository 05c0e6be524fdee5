"""Latency of the runtime's stages against the backend's bare inference.

Measured side by side in one loop: each iteration times the bare
``runner.infer`` on a fixed, already prepared tensor, then the full
in-memory path on the decoded image (pre-processing, inference,
post-processing to a label map at the image's size). Figures are medians over
``runs`` iterations after ``warmup`` untimed ones. Decoding and PNG writing
are file I/O, timed separately and not counted as pre/post-processing.
"""

from __future__ import annotations

import io
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


from .images import save_label_map
from .segmentor import Segmentor

__all__ = ["BenchResult", "bench", "format_result"]

@dataclass(frozen=True)
class BenchResult:
    """Median latencies in milliseconds for one image.

    Attributes:
        image_size: ``(W, H)`` of the image.
        input_shape: shape of the network input.
        runs: timed iterations.
        bare_ms: backend inference alone on a prepared tensor.
        preprocess_ms, infer_ms, postprocess_ms: stages of the full path.
        end_to_end_ms: pre-processing + inference + post-processing.
        decode_ms, encode_ms: reading the image file, writing the label PNG.
    """

    image_size: tuple[int, int]
    input_shape: tuple[int, ...]
    runs: int
    bare_ms: float
    preprocess_ms: float
    infer_ms: float
    postprocess_ms: float
    end_to_end_ms: float
    decode_ms: float
    encode_ms: float

    @property
    def overhead(self) -> float:
        """(end-to-end / bare) - 1: what pre/post-processing adds to inference."""
        return self.end_to_end_ms / self.bare_ms - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "overhead": self.overhead}

def _ms(samples: list[int]) -> float:
    return statistics.median(samples) / 1e6

def bench(segmentor: Segmentor, image: Path, *, runs: int = 50, warmup: int = 5) -> BenchResult:
    """Time one image through an active segmentor.

    Args:
        segmentor: an entered :class:`Segmentor`.
        image: image file to use.
        runs: timed iterations (>= 1).
        warmup: untimed iterations first.
    """
    clock = time.perf_counter_ns
    t = clock()
    rgb = segmentor.load(image)
    decode = clock() - t
    height, width = rgb.shape[:2]
    fixed = segmentor.prepare(rgb)
    samples: dict[str, list[int]] = {k: [] for k in ("bare", "pre", "infer", "post", "e2e", "decode", "encode")}
    for i in range(warmup + max(1, runs)):
        t0 = clock()
        segmentor.forward(fixed)
        t1 = clock()
        tensor = segmentor.prepare(rgb)
        t2 = clock()
        output = segmentor.forward(tensor)
        t3 = clock()
        labels, _ = segmentor.finish(output, height, width)
        t4 = clock()
        if i >= warmup:
            for key, value in (("bare", t1 - t0), ("pre", t2 - t1), ("infer", t3 - t2), ("post", t4 - t3), ("e2e", t4 - t1)):
                samples[key].append(value)
    for _ in range(min(5, max(1, runs))):
        t = clock()
        segmentor.load(image)
        samples["decode"].append(clock() - t)
        t = clock()
        save_label_map(labels, io.BytesIO(), segmentor.palette)
        samples["encode"].append(clock() - t)
    samples["decode"].append(decode)
    return BenchResult(
        image_size=(width, height),
        input_shape=tuple(int(v) for v in fixed.shape),
        runs=len(samples["bare"]),
        bare_ms=_ms(samples["bare"]),
        preprocess_ms=_ms(samples["pre"]),
        infer_ms=_ms(samples["infer"]),
        postprocess_ms=_ms(samples["post"]),
        end_to_end_ms=_ms(samples["e2e"]),
        decode_ms=_ms(samples["decode"]),
        encode_ms=_ms(samples["encode"]),
    )

def format_result(name: str, r: BenchResult) -> str:
    """One table row: archive, sizes, stage medians and the overhead ratio."""
    w, h = r.image_size
    return (
        f"{name:<34} {w:>4}x{h:<4} bare {r.bare_ms:7.3f} ms | pre {r.preprocess_ms:6.3f} "
        f"infer {r.infer_ms:7.3f} post {r.postprocess_ms:6.3f} = e2e {r.end_to_end_ms:7.3f} ms | "
        f"overhead {r.overhead:+6.1%} | decode {r.decode_ms:6.3f} encode {r.encode_ms:6.3f} ms"
    )
