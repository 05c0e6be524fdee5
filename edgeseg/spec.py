"""Model spec: what an ONNX file cannot say about a segmentation model.

A spec is a TOML file (or the same keys given as CLI flags)::

    name = "selfie_segmentation"
    version = "0.10.14"

    [input]
    layout = "NHWC"            # NCHW | NHWC, as the source model takes it
    size = [256, 256]          # [H, W] pixels the network takes
    color = "RGB"              # RGB | BGR (3 channels) | GRAY (1) | RAW (the file's own channels, see channels)
    # channels = 4             # RAW: channels of the images (1-4: grey, grey+alpha, RGB, RGBA)
    # dtype = "uint16"         # samples as read: uint8 | uint16 (one channel, never shifted to 8 bits) | float32
    mean = [0.0, 0.0, 0.0]     # (x - mean) / std per channel (or one number for all), in the image's units:
    std = [255.0, 255.0, 255.0]  # 0..255 for uint8, 0..65535 for uint16 (MMSegmentation convention)
    keep_ratio = false         # false: stretch to size; true: fit inside size (dynamic models; static: letterboxed)
    # min_side = 736           # dynamic models, instead of size: keep the image's own size, scaled (ratio kept)
    # max_side = 2048          #   so the short side >= min_side and the long side <= max_side (max wins)
    size_divisor = 32          # optional: pad bottom/right to multiples of it (mmseg Pad size_divisor)
    pad_value = 0.0            # value of padded elements, after mean/std (mmseg SegDataPreProcessor pads with 0)

    [inference]                # optional
    mode = "whole"             # whole | slide (overlapping windows of input.size, scores averaged)
    # stride = [341, 341]      # slide: [H, W] step between windows
    # scale = [1024, 2048]     # slide: resize the image first (else its own resolution)

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

__all__ = ["InputSpec", "OutputSpec", "InferenceSpec", "ModelSpec", "load_spec", "voc_palette", "DEFAULT_SPEC"]

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
    color: Literal["RGB", "BGR", "GRAY", "RAW"] = Field(
        default="RGB", description="RGB or BGR: 3 channels in that order; GRAY: one luma channel (ITU-R 601); RAW: "
        "the image file's own channels (channels = 1-4: grey, grey+alpha, RGB, RGBA)")
    channels: Annotated[int, Field(ge=1, le=4)] | None = Field(
        default=None, description="channels the network takes: 3 for RGB/BGR, 1 for GRAY; required for RAW")
    dtype: Literal["uint8", "uint16", "float32"] = Field(
        default="uint8", description="samples as the images are read: uint8, uint16 (16-bit, one channel; never "
        "shifted to 8 bits, 8-bit files scaled by 257) or float32 (32-bit float TIFF, one channel); mean/std "
        "are in these units")
    mean: Channel | tuple[Channel, ...] = Field(
        default=0.0, description="per channel (network channel order), or one number for every channel")
    std: PositiveChannel | tuple[PositiveChannel, ...] = Field(
        default=1.0, description="per channel (network channel order), or one number for every channel")
    keep_ratio: bool = False
    min_side: Annotated[int, Field(ge=1, le=16384)] | None = Field(
        default=None, description="dynamic H/W within limits: scale the image (keeping the ratio) up so its short "
        "side is at least this many pixels (PaddleOCR DetResizeForTest limit_type 'min'); static builds letterbox "
        "into input.size instead")
    max_side: Annotated[int, Field(ge=1, le=16384)] | None = Field(
        default=None, description="dynamic H/W within limits: scale the image (keeping the ratio) down so its long "
        "side is at most this many pixels (limit_type 'max'); wins over min_side. Either keeps the ratio, "
        "whatever keep_ratio says")
    size_divisor: Annotated[int, Field(ge=1, le=1024)] | None = Field(
        default=None, description="pad the network input at the bottom/right so H and W are multiples of this "
        "(MMSegmentation Pad size_divisor; networks with stride-32 stages need 32)")
    pad_value: Channel = Field(default=0.0, description="value of the padded elements, in network-input units "
                               "(after mean/std), as MMSegmentation's SegDataPreProcessor pads")

    @model_validator(mode="after")
    def _channels_fit(self) -> InputSpec:
        n = self.n_channels
        for key in ("mean", "std"):
            values = getattr(self, key)
            if isinstance(values, tuple) and len(values) not in (1, n):
                raise ValueError(f"input.{key} has {len(values)} values for {n} channels (give {n}, or one for all)")
        if self.color == "RAW" and self.channels is None:
            raise ValueError("color = 'RAW' needs channels = N (the images' channels, 1-4)")
        if self.color != "RAW" and self.channels not in (None, n):
            raise ValueError(f"color = {self.color!r} has {n} channel{'s' * (n > 1)}, not {self.channels}")
        if self.min_side and self.max_side and self.min_side > self.max_side:
            raise ValueError(f"input.min_side {self.min_side} is larger than input.max_side {self.max_side}")
        if self.dtype != "uint8" and n != 1:
            raise ValueError(f"dtype = {self.dtype!r} needs one channel (GRAY, or RAW with channels = 1): Pillow "
                             "decodes 16-bit and float images with one channel only")
        return self

    @property
    def limits(self) -> bool:
        """True when the image keeps its own size within ``min_side``/``max_side`` (dynamic H/W models)."""
        return bool(self.min_side or self.max_side)

    @property
    def n_channels(self) -> int:
        """Channels of the images and of the network input."""
        return self.channels if self.color == "RAW" and self.channels else (1 if self.color == "GRAY" else 3)

    @property
    def read_mode(self) -> str:
        """How the runtime reads images for this input (:data:`edgeseg_runtime.images.READ_MODES`)."""
        n = self.n_channels
        if n == 1:
            return {"uint8": "L", "uint16": "I;16", "float32": "F"}[self.dtype]
        return {2: "LA", 3: "RGB", 4: "RGBA"}[n]

    def means(self) -> tuple[float, ...]:
        """``mean`` with one value per channel."""
        return _per_channel(self.mean, self.n_channels)

    def stds(self) -> tuple[float, ...]:
        """``std`` with one value per channel."""
        return _per_channel(self.std, self.n_channels)


def _per_channel(value: float | tuple[float, ...], n: int) -> tuple[float, ...]:
    values = (float(value),) if isinstance(value, (int, float)) else tuple(value)
    return values * n if len(values) == 1 else values


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


class InferenceSpec(Strict):
    """How the network covers an image: once ("whole", the default) or in overlapping windows ("slide").

    Sliding-window inference is MMSegmentation's ``test_cfg = dict(mode="slide", crop_size=..., stride=...)``
    (:mod:`edgeseg_runtime.slide`): the window is the network's input (``input.size``), scores are averaged
    where windows overlap.
    """

    mode: Literal["whole", "slide"] = "whole"
    stride: tuple[PositiveInt, PositiveInt] | None = Field(
        default=None, description="[H, W] step between windows (slide), at most the window (input.size); "
        "mmseg configs use about 2/3 of it")
    scale: tuple[PositiveInt, PositiveInt] | None = Field(
        default=None, description="[H, W]: resize the image to this first (slide; keep_ratio as input.keep_ratio, "
        "mmseg's test Resize scale); none = windows over the image at its own resolution")

    @model_validator(mode="after")
    def _slide_keys(self) -> InferenceSpec:
        if self.mode == "slide" and self.stride is None:
            raise ValueError("mode = 'slide' needs stride = [H, W]")
        if self.mode == "whole" and (self.stride is not None or self.scale is not None):
            raise ValueError("stride and scale apply to mode = 'slide'")
        return self


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
    inference: InferenceSpec = InferenceSpec()
    quantization: QuantizationSpec = QuantizationSpec()

    @model_validator(mode="after")
    def _slide_fits(self) -> ModelSpec:
        if self.inference.mode != "slide":
            return self
        if self.input.size_divisor:
            raise ValueError("inference.mode = 'slide' pads its windows itself: drop input.size_divisor")
        if self.input.limits:
            raise ValueError("inference.mode = 'slide' runs windows of input.size: drop input.min_side/max_side "
                             "(inference.scale resizes the image first)")
        size, stride = self.input.size, self.inference.stride
        if size is not None and stride is not None and (stride[0] > size[0] or stride[1] > size[1]):
            raise ValueError(f"inference.stride {list(stride)} is larger than the window input.size {list(size)}: "
                             "pixels between windows would have no score")
        return self


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
