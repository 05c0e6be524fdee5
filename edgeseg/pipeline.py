"""Writing ``pipeline.json``, ``deploy.json`` and ``detail.json`` (MMDeploy SDK layout).

The three files make an archive usable as an MMDeploy "SDK model" folder as
well as by edgeseg's runtime. What the SDK (``mmdeploy-runtime`` 1.3.1) reads:
``deploy.json`` ``{"version", "task": "Segmentor", "models": [{"name", "net",
"weights", "backend", "precision", "batch_size", "dynamic_shape"}], "customs"}``;
``pipeline.json`` with a Transform task, a Net task whose ``name`` equals the
model name, and an mmseg ``ResizeMask`` task reading ``num_classes`` and
``with_argmax``. ``detail.json`` is informational (never read by the SDK).
Source: MMDeploy 1.x ``mmdeploy/utils/export_info.py`` and ``csrc/mmdeploy/codebase/mmseg``.
"""

from __future__ import annotations

from typing import Any

from edgeseg_runtime.contract import PipelineSpec
from edgeseg_runtime.pipeline import Preprocess, parse_pipeline

from .errors import ConfigError
from .export import SharedModel
from .spec import ModelSpec
from .targets import Target

__all__ = ["stretch_to", "make_pipeline", "make_deploy", "make_detail", "check_pipeline", "MMDEPLOY_VERSION"]

#: the MMDeploy SDK version whose schema these files follow
MMDEPLOY_VERSION = "1.3.1"


def stretch_to(spec: ModelSpec, height: int, width: int) -> Preprocess:
    """The runtime's pre-processing for ``spec``, stretching every image to ``height`` x ``width`` pixels.

    Returns:
        :class:`edgeseg_runtime.pipeline.Preprocess`; calling it on an image
        as its ``load`` reads it (``(H, W, 3)`` uint8 RGB for colour models)
        gives the ``(1, C, height, width)`` float32 NCHW network input.
    """
    return Preprocess(size=(width, height), keep_ratio=False, mean=spec.input.means(), std=spec.input.stds(),
                      to_rgb=spec.input.color != "BGR", mode=spec.input.read_mode)


_META_KEYS = ["filename", "ori_filename", "ori_shape", "img_shape", "pad_shape", "scale_factor", "img_norm_cfg"]


def make_pipeline(spec: ModelSpec, shared: SharedModel) -> dict[str, Any]:
    """The ``pipeline.json`` document for a model.

    A keep-ratio resize into a static-shape model is letterboxed (``Pad`` to
    the fixed size); ``input.size_divisor`` on a dynamic model adds
    ``Pad(size_divisor=...)`` after Normalize. ``input.min_side``/``max_side``
    on a dynamic model write a ``Resize`` with those keys and no ``size``
    (an edgeseg extension: the MMDeploy SDK cannot read it); on a static one
    they letterbox like ``keep_ratio``.

    Raises:
        ConfigError: no input size (nor min/max side) known, or a static input that is not a multiple of ``size_divisor``.
    """
    h, w = shared.input_shape[2], shared.input_shape[3]
    static = isinstance(h, int) and isinstance(w, int)
    divisor = spec.input.size_divisor
    if static and divisor and (h % divisor or w % divisor):
        raise ConfigError(f"input.size_divisor = {divisor} but the model takes a fixed {h}x{w} input, not a multiple")
    size = [w, h] if static else ([spec.input.size[1], spec.input.size[0]] if spec.input.size else None)
    limits = spec.input.limits and not static  # the image's own size within min_side/max_side
    if size is None and not limits:
        raise ConfigError("the model has dynamic H/W and the spec gives no input.size (or input.min_side/max_side)")
    keep_ratio = spec.input.keep_ratio or spec.input.limits
    slide = spec.inference.mode == "slide"
    pad: dict[str, Any] | None = None
    if slide:
        if shared.output_dtype != "float32":
            raise ConfigError("inference.mode = 'slide' averages scores: build without --with-argmax")
    elif static and keep_ratio:  # letterbox: fit inside the fixed input, pad the rest
        pad = {"type": "Pad", "size": size, "pad_val": spec.input.pad_value}
    elif divisor and divisor > 1 and not static:
        pad = {"type": "Pad", "size_divisor": divisor, "pad_val": spec.input.pad_value}
    scale = spec.inference.scale
    resize: list[dict[str, Any]]
    if slide and scale is None:  # slide over the image at its own resolution
        resize = []
    elif limits:  # no MMDeploy SDK equivalent (its Resize needs a size): the edgeseg runtime reads these keys
        resize = [{"type": "Resize", "keep_ratio": True,
                   **{k: v for k, v in (("min_side", spec.input.min_side), ("max_side", spec.input.max_side)) if v}}]
    else:
        resize = [{"type": "Resize", "keep_ratio": keep_ratio, "size": [scale[1], scale[0]] if scale else size}]
    mode = spec.input.read_mode
    # mmcv's color_type for the SDK ("color": 8-bit 3 channels, "grayscale": 8-bit luma, "unchanged": as stored);
    # "mode" is the runtime's exact read mode
    load = {"type": "LoadImageFromFile"} if mode == "RGB" else {
        "type": "LoadImageFromFile", "color_type": "grayscale" if mode == "L" else "unchanged",
        "to_float32": mode == "F", "mode": mode}
    transforms: list[dict[str, Any]] = [
        load,
        *resize,
        {
            "type": "Normalize",
            "mean": list(spec.input.means()),
            "std": list(spec.input.stds()),
            "to_rgb": spec.input.color != "BGR",
        },
        *([pad] if pad else []),
        {"type": "ImageToTensor", "keys": ["img"]},
        {"type": "Collect", "keys": ["img"], "meta_keys": _META_KEYS},
    ]
    return {
        "pipeline": {
            "input": ["img"],
            "output": ["post_output"],
            "tasks": [
                {
                    "type": "Task",
                    "module": "Transform",
                    "name": "Preprocess",
                    "input": ["img"],
                    "output": ["prep_output"],
                    "transforms": transforms,
                },
                {
                    "name": spec.name,
                    "type": "Task",
                    "module": "Net",
                    "is_batched": False,
                    "input": ["prep_output"],
                    "output": ["infer_output"],
                    "input_map": {"img": "input"},
                    "output_map": {},
                },
                {
                    "type": "Task",
                    "module": "mmseg",
                    "name": "postprocess",
                    "component": "ResizeMask",
                    "params": {
                        "num_classes": len(spec.output.classes),
                        "with_argmax": shared.output_dtype != "float32",
                        # mmseg test_cfg keys; the MMDeploy SDK reads neither (it has "whole" inference only)
                        **({"mode": "slide", "crop_size": [size[1], size[0]], "stride": list(spec.inference.stride)}
                           if slide and spec.inference.stride else {}),
                    },
                    "input": ["prep_output", "infer_output"],
                    "output": ["post_output"],
                },
            ],
        }
    }


def make_deploy(spec: ModelSpec, target: Target, net: str, weights: str, dynamic: bool) -> dict[str, Any]:
    """The ``deploy.json`` document (MMDeploy SDK model list)."""
    return {
        "version": MMDEPLOY_VERSION,
        "task": "Segmentor",
        "models": [
            {
                "name": spec.name,
                "net": net,
                "weights": weights,
                "backend": target.backend,
                "precision": target.precision.upper(),
                "batch_size": target.input.batch,
                "dynamic_shape": dynamic,
            }
        ],
        "customs": [],
    }


def make_detail(spec: ModelSpec, target: Target, shared: SharedModel) -> dict[str, Any]:
    """The ``detail.json`` document (export settings, for people; the SDK ignores it)."""
    return {
        "version": MMDEPLOY_VERSION,
        "codebase": {"task": "Segmentation", "codebase": "mmseg", "version": "", "pth": "", "config": ""},
        "codebase_config": {"type": "mmseg", "task": "Segmentation", "with_argmax": shared.output_dtype != "float32"},
        "onnx_config": {
            "type": "onnx",
            "export_params": True,
            "opset_version": shared.opset,
            "save_file": f"{spec.name}.onnx",
            "input_names": ["input"],
            "output_names": ["output"],
            "input_shape": shared.input_shape[2:],
        },
        "backend_config": {"type": target.backend, "precision": target.precision},
        "calib_config": {},
    }


def check_pipeline(pipeline: dict[str, Any], shared: SharedModel, spec: ModelSpec) -> None:
    """Check a pipeline document against the model it goes with.

    Raises:
        ConfigError: Resize size differs from a static input, class count or
            argmax setting differs from the output, or the Net task's name is
            not the model name (the SDK then finds no model).
    """
    pre, post = parse_pipeline(pipeline)
    h, w = shared.input_shape[2], shared.input_shape[3]
    slide = PipelineSpec.from_doc(pipeline).slide_crop
    if slide is not None:
        if isinstance(h, int) and isinstance(w, int) and slide != (h, w):
            raise ConfigError(f"pipeline slide crop_size {list(slide)} (H, W) does not match the model input {h}x{w}")
    elif isinstance(h, int) and isinstance(w, int) and (pre.pad_size or pre.size) != (w, h):
        raise ConfigError(f"pipeline Resize size {pre.size} (W, H) does not match the model input {w}x{h}")
    channels = shared.output_shape[1]
    if not post.with_argmax and isinstance(channels, int) and channels != post.num_classes:
        raise ConfigError(f"pipeline says {post.num_classes} classes but the model outputs {channels} channels")
    if post.with_argmax != (shared.output_dtype != "float32"):
        raise ConfigError("pipeline with_argmax does not match the model output dtype")
    net = next(t for t in pipeline["pipeline"]["tasks"] if t.get("module") == "Net")
    if net["name"] != spec.name:
        raise ConfigError(f"pipeline Net task is named {net['name']!r}, not the model name {spec.name!r}")
