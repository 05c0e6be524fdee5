"""Target profiles (``targets/*.toml``): one file per deployment target.

A profile fixes backend, precision, input shapes, platform and the tolerances
``edgeseg verify`` applies. Unknown keys are errors. Example (``targets/intel.toml``)::

    schema_version = 1
    name = "intel"
    description = "Intel CPU via OpenVINO IR, fp16-compressed weights"
    backend = "openvino"          # onnxruntime | openvino | tensorrt | ncnn | coreml | tflite
    precision = "fp16"            # fp32 | fp16 | int8
    build_on = "host"             # host | device (TensorRT engines are built on the device)

    [input]
    shapes = []                   # [[H, W], ...]; empty = the model's own; several = static-shape variants
    dynamic = false               # export with dynamic H/W
    batch = 1

    [platform]
    os = "linux"
    arch = "x86_64"
    python = "3.11"
    toolchain = "linux-x86_64-py311"   # toolchains/<name>.toml
    offline = false                    # bundle the platform's wheels into the archive

    [tolerance]                   # edgeseg verify, against the fp32 ONNX Runtime reference
    atol = 0.02                   # |out - ref| <= atol + rtol * |ref| on scores
    rtol = 0.0
    min_label_agreement = 0.99    # fraction of pixels with the reference label

    [quantization]                # int8: calibration and the accuracy gate
    [backend_options]             # passed to the backend runner; keys checked against it
    [deploy]                      # health check and release keeping on devices
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from edgeseg_runtime.runners import BACKEND_NAMES, option_error, runner_class
from pydantic import Field, PositiveInt, model_validator

from ._profiles import find_profile, list_profiles
from ._schema import Strict, load_toml, validate
from .errors import ConfigError

__all__ = [
    "BACKENDS",
    "Deploy",
    "InputShapes",
    "Limits",
    "Platform",
    "Quantization",
    "Target",
    "Tolerance",
    "list_targets",
    "load_target",
]

#: every backend a profile may name: the runtime registry's names (the old name of the tuple)
BACKENDS = BACKEND_NAMES
BackendName = Literal[BACKEND_NAMES]  # type: ignore[valid-type]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Shape = tuple[PositiveInt, PositiveInt]
OptionValue = str | int | float | bool | list[str] | list[int]


class InputShapes(Strict):
    """Network input shapes for this target."""

    shapes: list[Shape] = Field(default_factory=list, description="[[H, W], ...]; several = static-shape variants")
    dynamic: bool = False
    batch: PositiveInt = 1


class Platform(Strict):
    """Where the archive runs."""

    os: Literal["linux", "macos", "ios", "android", "windows"]
    arch: Literal["x86_64", "aarch64", "arm64", "armv7l"]
    python: str = Field(default="3.11", pattern=r"^3\.\d+$")
    toolchain: str | None = None
    offline: bool = False


class Limits(Strict):
    """Golden-check limits for one precision."""

    # the same ranges as the archive contract (edgeseg_runtime.contract), so a profile that loads builds an archive
    atol: Annotated[float, Field(ge=0.0, le=1e6, allow_inf_nan=False)]
    rtol: Annotated[float, Field(ge=0.0, le=1e6, allow_inf_nan=False)] = 0.0
    min_label_agreement: Fraction
    min_class_iou: Fraction | None = Field(default=None, description="worst class IoU vs the fp32 labels over the "
                                           "golden set (int8: scores may move while labels hold)")


class Tolerance(Limits):
    """Verification tolerances against the fp32 reference.

    The top-level keys apply to the profile's own precision; ``[tolerance.fp16]``
    / ``[tolerance.int8]`` (/ ``fp32``) give the limits when a build asks for
    another precision (``--precision``).
    """

    fp32: Limits | None = None
    fp16: Limits | None = None
    int8: Limits | None = None


class Quantization(Strict):
    """Calibration and accuracy-gate settings for fp16/int8 builds."""

    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    calib_count: PositiveInt = 32
    seed: int = 0
    per_channel: bool = True
    keep_float: list[str] = Field(default_factory=list, description="node names or op types kept in float")
    max_miou_drop: NonNegative | None = Field(default=None, description="mIoU points (gate: vs ground truth with "
                                              "masks, else vs the fp32 labels)")
    min_class_iou: Fraction | None = Field(default=None, description="lowest IoU of any class vs the fp32 labels "
                                           "(classes under 0.1 % of the pixels are not gated)")
    min_pixel_agreement: Fraction | None = 0.98
    options: dict[str, OptionValue] = Field(default_factory=dict, description="backend quantizer options")

    def budget(self) -> dict[str, float | None]:
        """The accuracy gate's budget."""
        return {"min_class_iou": self.min_class_iou, "max_miou_drop": self.max_miou_drop,
                "min_pixel_agreement": self.min_pixel_agreement}


class Deploy(Strict):
    """Device-side install settings."""

    latency_budget_ms: Annotated[float, Field(ge=1e-6, le=1e9, allow_inf_nan=False)] | None = None
    keep_releases: Annotated[int, Field(ge=1, le=1000)] = 3


class Target(Strict):
    """One deployment target profile."""

    schema_version: Literal[1] = 1
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = ""
    backend: BackendName
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    build_on: Literal["host", "device"] = "host"
    fallback_backend: BackendName | None = None
    input: InputShapes = InputShapes()
    platform: Platform
    tolerance: Tolerance
    quantization: Quantization = Quantization()
    backend_options: dict[str, OptionValue] = Field(default_factory=dict)
    fallback_options: dict[str, OptionValue] = Field(default_factory=dict, description="options of the fallback_backend's runner")
    deploy: Deploy = Deploy()

    @model_validator(mode="after")
    def _consistent(self) -> Target:
        if self.fallback_backend == self.backend:
            raise ValueError("fallback_backend must differ from backend")
        if self.fallback_options and self.fallback_backend is None:
            raise ValueError("fallback_options without a fallback_backend")
        if self.input.dynamic and len(self.input.shapes) > 1:
            raise ValueError("input: several static shapes and dynamic = true exclude each other")
        return self

    def manifest_dict(self) -> dict[str, Any]:
        """The profile as stored in an archive's manifest (JSON-ready; flat tolerance of its precision)."""
        doc = self.model_dump(mode="json", exclude={"tolerance": {"fp32", "fp16", "int8"}})
        if doc["tolerance"].get("min_class_iou") is None:  # absent rather than null: older runtimes read the manifest
            doc["tolerance"].pop("min_class_iou", None)
        return doc

    def with_precision(self, precision: str | None) -> Target:
        """This profile built at ``precision`` (None = its own), with that precision's tolerance.

        Raises:
            ConfigError: unknown precision, or the profile has no ``[tolerance.<precision>]``
                for a precision other than its own.
        """
        if precision is None:
            precision = self.precision
        if precision not in ("fp32", "fp16", "int8"):
            raise ConfigError(f"precision must be fp32, fp16 or int8, got {precision!r}")
        limits = getattr(self.tolerance, precision)
        if limits is None and precision != self.precision:
            raise ConfigError(
                f"target {self.name!r} is {self.precision} and has no [tolerance.{precision}] for the golden check; "
                f"add one to targets/{self.name}.toml"
            )
        flat = Tolerance(**(limits or self.tolerance).model_dump(
            include={"atol", "rtol", "min_label_agreement", "min_class_iou"}))
        return self.model_copy(update={"precision": precision, "tolerance": flat})


def _check_options(options: dict[str, Any], backend: str, where: str) -> None:
    """``[backend_options]`` / ``fallback_options`` against the runner's declared options; ConfigError names the key."""
    allowed = runner_class(backend).OPTIONS
    for key, value in options.items():
        why = option_error(key, value, allowed)
        if why is not None:
            raise ConfigError(f"{where}.{key}: {why}")


def _check_backend_options(target: Target, source: str) -> None:
    _check_options(target.backend_options, target.backend, f"{source}: backend_options")
    if target.fallback_backend is not None:
        _check_options(target.fallback_options, target.fallback_backend, f"{source}: fallback_options")


def load_target(name_or_path: str | Path) -> Target:
    """Load and validate a target profile by name (``targets/<name>.toml``) or path.

    Raises:
        ConfigError: unknown target (lists the available ones), invalid TOML,
            unknown key, bad value, or a backend option the backend does not take.
    """
    path = find_profile(name_or_path, "targets", "target")
    target = validate(Target, load_toml(path, "target profile"), str(path))
    if path.stem != target.name:
        raise ConfigError(f"{path}: name = {target.name!r} but the file is {path.name}; make them the same")
    _check_backend_options(target, str(path))
    _check_toolchain(target, str(path))
    return target


def _check_toolchain(target: Target, source: str) -> None:
    from .toolchains import load_toolchain

    if target.platform.toolchain is None:
        return
    tc = load_toolchain(target.platform.toolchain)
    plat = target.platform
    for key in ("os", "arch", "python"):
        if getattr(tc, key) != getattr(plat, key):
            raise ConfigError(
                f"{source}: platform.{key} = {getattr(plat, key)!r} but toolchain {tc.name!r} says {getattr(tc, key)!r}"
            )


def list_targets() -> list[str]:
    """Names of the shipped target profiles."""
    return list_profiles("targets")
