"""Model spec: what an ONNX file cannot say about a segmentation model.

A spec is a TOML file (or the same keys given as CLI flags)::

    name = "selfie_segmentation"
    version = "0.10.14"

    [input]
    layout = "NHWC"            # NCHW | NHWC, as the source model takes it
    size = [256, 256]          # [H, W] pixels the network takes
    color = "RGB"              # channel order the network takes: RGB | BGR
    mean = [0.0, 0.0, 0.0]     # (x - mean) / std, in 0..255 pixel units (MMSegmentation convention)
    std = [255.0, 255.0, 255.0]
    keep_ratio = false         # false: stretch to size; true: fit inside size (dynamic models; static: letterboxed)
    size_divisor = 32          # optional: pad bottom/right to multiples of it (mmseg Pad size_divisor)
    pad_value = 0.0            # value of padded elements, after mean/std (mmseg SegDataPreProcessor pads with 0)

    [output]
    kind = "probability"       # logits (argmax) | probability (threshold when 1 channel) | labels
    layout = "NHWC"
    threshold = 0.5            # only for a 1-channel probability output: class 1 where p > threshold
    classes = ["background", "person"]
    palette = [[0, 0, 0], [255, 64, 64]]   # optional; default: Pascal VOC colour map

Source of the conventions: MMSegmentation ``SegDataPreProcessor`` (mean/std in
pixel units, ``bgr_to_rgb``) and MMDeploy's ``with_argmax``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from edgeseg_runtime.runners import BACKEND_NAMES
from pydantic import Field, PositiveInt, model_validator

from ._schema import Strict, load_toml, validate
from .errors import ConfigError

__all__ = ["InputSpec", "OutputSpec", "ModelSpec", "load_spec", "voc_palette", "DEFAULT_SPEC"]

DATA = Path(__file__).resolve().parent / "data"
#: The embedded default model's spec (MediaPipe Selfie Segmentation).
DEFAULT_SPEC = DATA / "models" / "selfie_segmentation" / "spec.toml"

Channel = Annotated[float, Field(allow_inf_nan=False)]
PositiveChannel = Annotated[float, Field(gt=0, allow_inf_nan=False)]
RGB = tuple[Annotated[int, Field(ge=0, le=255)], Annotated[int, Field(ge=0, le=255)], Annotated[int, Field(ge=0, le=255)]]


class InputSpec(Strict):
    """How images become the network input."""

    name: str | None = None
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    size: tuple[PositiveInt, PositiveInt] | None = None
    color: Literal["RGB", "BGR"] = "RGB"
    mean: tuple[Channel, Channel, Channel] = (0.0, 0.0, 0.0)
    std: tuple[PositiveChannel, PositiveChannel, PositiveChannel] = (1.0, 1.0, 1.0)
    keep_ratio: bool = False
    size_divisor: Annotated[int, Field(ge=1, le=1024)] | None = Field(
        default=None, description="pad the network input at the bottom/right so H and W are multiples of this "
        "(MMSegmentation Pad size_divisor; networks with stride-32 stages need 32)")
    pad_value: Channel = Field(default=0.0, description="value of the padded elements, in network-input units "
                               "(after mean/std), as MMSegmentation's SegDataPreProcessor pads")


class OutputSpec(Strict):
    """What the network output means."""

    name: str | None = None
    kind: Literal["logits", "probability", "labels"]
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5
    classes: list[str] = Field(min_length=2)
    palette: list[RGB] | None = None

    @model_validator(mode="after")
    def _palette_fits(self) -> OutputSpec:
        if self.palette is not None and len(self.palette) != len(self.classes):
            raise ValueError(f"palette has {len(self.palette)} colours for {len(self.classes)} classes")
        return self

    def colours(self) -> list[list[int]]:
        """The palette, or the Pascal VOC colour map for as many classes."""
        return [list(c) for c in self.palette] if self.palette else voc_palette(len(self.classes))


class QuantizationSpec(Strict):
    """Choices about quantizing *this* model, whatever the target (a target profile stays model-independent)."""

    keep_float: dict[Literal[BACKEND_NAMES], list[str]] = Field(  # type: ignore[valid-type]
        default_factory=dict,
        description="per backend (onnxruntime, openvino, ...): node names or op types of this model, in that "
        "backend's terms (ONNX op types for onnxruntime, OpenVINO op types for openvino), kept in float in its "
        "fp16/int8 builds; added to the target's own [quantization] keep_float (none in the shipped profiles)",
    )


class ModelSpec(Strict):
    """Everything edgeseg needs to know about a model beyond its graph."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: str = "0"
    description: str = ""
    license: str = ""
    input: InputSpec = InputSpec()
    output: OutputSpec
    quantization: QuantizationSpec = QuantizationSpec()


def voc_palette(n: int) -> list[list[int]]:
    """The Pascal VOC colour map (VOCdevkit ``VOClabelcolormap.m``): ``n`` RGB triples."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append([r, g, b])
    return palette


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_spec(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
              defaults: Mapping[str, Any] | None = None) -> ModelSpec:
    """Load a model spec from TOML, with optional overrides (e.g. from CLI flags).

    Args:
        path: spec file; None starts from an empty spec (all keys from ``overrides``).
        overrides: nested mapping merged over the file, e.g. ``{"input": {"layout": "NHWC"}}``.
        defaults: nested mapping for keys neither the file nor ``overrides`` give (what the model file says,
            :func:`edgeseg.export.spec_defaults`).

    Raises:
        ConfigError: missing file, invalid TOML, unknown key or invalid value.
    """
    data: dict[str, Any] = load_toml(Path(path), "model spec") if path is not None else {}
    data = _deep_merge(data, overrides or {})
    if "output" not in data:  # said before the defaults could make an [output] section of layout alone
        raise ConfigError(
            f"{path or 'model spec'}: no [output] section; give --spec FILE or --output-kind and --classes"
        )
    data = _deep_merge(dict(defaults or {}), data)
    return validate(ModelSpec, data, str(path or "model spec flags"))
