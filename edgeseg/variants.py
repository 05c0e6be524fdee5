"""Static-shape variants: one model per input size, and the check that says a dynamic export is unsafe.

Some models and backends only work with static shapes: non-global
``AdaptiveAvgPool2d`` (PSPNet, Fast-SCNN, UPerNet; the MMDeploy docs' "only
support static shape" footnote), pnnx/ncnn (dynamic ONNX fails to load), LiteRT.
A profile lists the sizes it wants (``[input] shapes = [[512, 1024], [1024, 2048]]``)
and the build exports, converts and checks one model per size, laid out as
``variants/<H>x<W>/`` and listed in the manifest's ``backend.variants``;
the runtime runs each image at the variant nearest its aspect and size
(:func:`edgeseg_runtime.segmentor.nearest_variant`).

A dynamic-H/W export is only trusted after :func:`check_dynamic_export`
compares it with a static export at a second size: the dynamo exporter writes
a PSP pyramid's pooling for the traced size only, so the "dynamic" graph runs
at other sizes and gives wrong scores (DESIGN.md §6).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from edgeseg_runtime.verify import compare_arrays

from .errors import ConversionError
from .spec import ModelSpec

__all__ = ["DynamicCheck", "check_dynamic_export", "spec_at", "probe_shape", "variant_dir", "DYNAMIC_ATOL"]

#: largest |dynamic - static| (logits/probability units) a dynamic export may differ by at the probe size
DYNAMIC_ATOL = 1e-3


def spec_at(spec: ModelSpec, shape: tuple[int, int] | list[int] | None) -> ModelSpec:
    """The model spec with its input size set to ``shape`` ``(H, W)`` (unchanged for None)."""
    if shape is None:
        return spec
    return spec.model_copy(update={"input": spec.input.model_copy(update={"size": [int(shape[0]), int(shape[1])]})})


def variant_dir(shape: tuple[int, int] | list[int]) -> str:
    """Archive folder of one variant: ``variants/<H>x<W>``."""
    return f"variants/{int(shape[0])}x{int(shape[1])}"


def probe_shape(spec: ModelSpec, shapes: list[tuple[int, int]]) -> tuple[int, int]:
    """The second size a dynamic export is checked at: the profile's second shape, else 1.5x the width (multiple of 32)."""
    if len(shapes) > 1:
        return shapes[1]
    h, w = spec.input.size or (512, 512)
    return h, max(32, int(round(w * 1.5 / 32)) * 32)


@dataclass(frozen=True)
class DynamicCheck:
    """A dynamic export compared with a static export at ``probe`` ``(H, W)``.

    Attributes:
        safe: the dynamic graph matched the static one (max abs diff <= :data:`DYNAMIC_ATOL`).
        probe: the size compared at.
        max_abs_diff: largest output difference (NaN when the dynamic graph failed to run there).
        label_agreement: fraction of pixels with the same label.
        error: the dynamic graph's error at the probe size, or "".
    """

    safe: bool
    probe: tuple[int, int]
    max_abs_diff: float
    label_agreement: float
    error: str = ""

    def message(self) -> str:
        """One line for the user."""
        h, w = self.probe
        if self.safe:
            return f"dynamic export checked at {h}x{w}: matches a static export (max abs diff {self.max_abs_diff:.1e})"
        what = self.error or (f"label agreement {self.label_agreement:.2%}, max abs diff {self.max_abs_diff:.3g} "
                              "against a static export")
        return (f"the dynamic-shape export is wrong at {h}x{w} ({what}); this model needs static shapes: "
                "set input.dynamic = false and list the sizes in input.shapes")

    def summary(self) -> str:
        """A short line for a build that uses static variants anyway."""
        h, w = self.probe
        if self.safe:
            return f"a dynamic export would also be right (checked at {h}x{w})"
        what = self.error or f"label agreement {self.label_agreement:.2%}, max abs diff {self.max_abs_diff:.3g}"
        return f"a dynamic export would be wrong at {h}x{w} ({what}): static variants needed"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "probe": list(self.probe)}


def check_dynamic_export(dynamic_onnx: Path, static_onnx: Path, spec: ModelSpec, image: np.ndarray) -> DynamicCheck:
    """Run a dynamic-H/W shared ONNX and a static one (exported at the probe size) on one image and compare.

    Args:
        dynamic_onnx: shared ONNX with dynamic H/W.
        static_onnx: shared ONNX exported at the probe size (its input shape gives the probe).
        spec: the model spec (mean/std/colour for the pre-processing).
        image: ``(H, W, 3)`` uint8 RGB photo, stretched to the probe size.

    Returns:
        :class:`DynamicCheck` (``safe`` False when the dynamic graph is wrong or fails at the probe).
    """
    import onnxruntime as ort

    from .pipeline import stretch_to

    quiet = ort.SessionOptions()
    quiet.log_severity_level = 4  # a failing dynamic graph is a result here, not a log line
    static = ort.InferenceSession(str(static_onnx), quiet, providers=["CPUExecutionProvider"])
    h, w = (int(d) for d in static.get_inputs()[0].shape[2:])
    # the runtime's own pre-processing, stretched to the probe size
    x = stretch_to(spec, h, w)(image)
    want = static.run(None, {"input": x})[0]
    try:
        dynamic = ort.InferenceSession(str(dynamic_onnx), quiet, providers=["CPUExecutionProvider"])
        got = dynamic.run(None, {"input": x})[0]
        if got.shape != want.shape:
            raise ConversionError(f"output shape {list(got.shape)} instead of {list(want.shape)}")
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument types
        return DynamicCheck(False, (h, w), float("nan"), 0.0, f"it fails there: {str(exc).splitlines()[0][:160]}")
    # in float64 whatever the output's dtype (labels too); labels: the argmax of multi-channel scores,
    # a 1-channel output compared as it is
    multi = want.shape[1] > 1
    a = compare_arrays(got.astype(np.float64), want.astype(np.float64),
                       got.argmax(1) if multi else got, want.argmax(1) if multi else want)
    return DynamicCheck(a.max_abs_diff <= DYNAMIC_ATOL, (h, w), a.max_abs_diff, a.label_agreement)
