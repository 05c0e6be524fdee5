"""OpenVINO backend: shared ONNX → OpenVINO IR (``end2end.xml`` + ``end2end.bin``).

Sources: OpenVINO docs, "Convert a model" (``openvino.convert_model``) and
``openvino.save_model(..., compress_to_fp16=...)``
(https://docs.openvino.ai/2026/openvino-workflow/model-preparation.html);
NNCF post-training quantization, ``nncf.quantize`` and
``nncf.quantize_with_accuracy_control``
(https://docs.openvino.ai/2026/openvino-workflow/model-optimization-guide/quantizing-models-post-training.html).

* **fp32** / **fp16**: the IR, fp16 meaning fp16-compressed weights (the CPU
  plugin computes in fp32 or the ``inference_precision`` backend option).
* **int8**: NNCF post-training quantization on the build's calibration set
  (``subset_size`` = its size). ``calibration_method`` picks the activation
  range estimator (minmax → ``MINMAX``, percentile → ``MEAN_QUANTILE``; NNCF has
  no entropy method). When plain int8 misses the accuracy budget, the
  build's mixed-precision search (:mod:`edgeseg.mixed_precision`) runs NNCF's
  accuracy-controlled mode, which reverts the most sensitive layers to float
  until the gate's worst-class IoU and mIoU budgets hold against the fp32
  labels (on the evaluation set, at the network's output size). ``keep_float`` entries are OpenVINO op
  types (``Convolution``, ``Sigmoid``...) or op names of the converted model.
  Accuracy control is slow (it re-ranks and re-evaluates layer groups; an
  unbounded run took ~9 minutes on the default model here), so it stops after
  ``max_iterations`` reverted groups (default 20) and the gate judges the result.
  Options: :attr:`OpenVINOBackend.quant_options` (``preset``, ``fast_bias_correction``,
  ``max_iterations``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from edgeseg_runtime.pipeline import output_labels
from edgeseg_runtime.runners import Option, import_backend

from .._capture import stdout_to_stderr
from ..errors import ConfigError
from ..metrics import confusion_matrix
from ..targets import Target
from . import BaseBackend, Calibration, Capabilities, ModelFiles, translate_errors

if TYPE_CHECKING:
    from ..spec import ModelSpec

FILES = ("end2end.xml", "end2end.bin")


def _ov() -> Any:
    return import_backend("openvino", extra="openvino")


def _nncf() -> Any:
    nncf = import_backend("nncf", extra="openvino")
    nncf.set_log_level(logging.ERROR)  # NNCF logs every step at INFO
    return nncf


class OpenVINOBackend(BaseBackend):
    name = "openvino"
    extra = "openvino"
    capabilities = Capabilities(build_on="host", precisions=frozenset({"fp32", "fp16", "int8"}),
                                calibration_methods=frozenset({"minmax", "percentile"}))
    quant_options: ClassVar[dict[str, Option]] = {
        "preset": Option(str, choices=("performance", "mixed"), default="performance", doc="NNCF quantization preset"),
        "fast_bias_correction": Option(bool, default=True, doc="NNCF's fast bias correction"),
        "max_iterations": Option(int, default=20, doc="accuracy control: most layer groups reverted to float"),
    }

    def versions(self) -> dict[str, str]:
        return {"openvino": str(_ov().get_version()).split("-")[0]}

    def convert(self, onnx_path: Path, target: Target, out_dir: Path, calibration: Calibration | None = None, *,
                spec: ModelSpec | None = None) -> ModelFiles:
        """Convert and save the IR at the target's precision (see module doc).

        Raises:
            ConfigError: bad ``[quantization]`` options or ``keep_float``; int8 without calibration.
            ConversionError: conversion or quantization failed.
            ToolchainError: int8 without NNCF installed.
        """
        ov = _ov()
        details: dict[str, object] = {"compress_to_fp16": target.precision == "fp16"}
        with translate_errors("OpenVINO conversion failed"):  # RuntimeError/OpConversionFailure with long text
            model = ov.convert_model(str(onnx_path))
        if target.precision == "int8":
            if calibration is None:
                raise ConfigError("int8 needs a calibration set")
            model, details = self._int8(model, target, calibration)
        with translate_errors("OpenVINO could not save the IR"):
            ov.save_model(model, str(out_dir / FILES[0]), compress_to_fp16=target.precision == "fp16")
        return ModelFiles(net=FILES[0], weights=FILES[1], files=FILES, details=details)

    def _int8(self, model: Any, target: Target, calibration: Calibration) -> tuple[Any, dict[str, object]]:
        nncf = _nncf()
        from nncf.quantization.advanced_parameters import (
            AdvancedAccuracyRestorerParameters,
            AdvancedQuantizationParameters,
            QuantizationParameters,
        )
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        q, opts = target.quantization, self.quantization_options(target)
        preset_name = opts["preset"]
        presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
        estimator = {"minmax": RangeEstimatorParametersSet.MINMAX, "percentile": RangeEstimatorParametersSet.MEAN_QUANTILE}
        advanced = AdvancedQuantizationParameters(
            activations_range_estimator_params=estimator[q.calibration_method],
            weights_quantization_params=None if q.per_channel else QuantizationParameters(per_channel=False),
        )
        ignored = self._ignored_scope(nncf, model, q.keep_float)
        dataset = nncf.Dataset(list(calibration.tensors()))
        common = {
            "preset": presets[preset_name],
            "subset_size": len(calibration.images),
            "fast_bias_correction": opts["fast_bias_correction"],
            "ignored_scope": ignored,
        }
        # the build passes evaluation pairs only when plain int8 missed the budget (edgeseg.mixed_precision)
        controlled = bool(calibration.validation)
        if controlled:
            validate, max_drop = _budget_validation(q.budget(), calibration.num_classes)
        with translate_errors("NNCF int8 quantization failed"), stdout_to_stderr():  # NNCF's progress bars
            if controlled:
                quantized = nncf.quantize_with_accuracy_control(
                    model,
                    dataset,
                    nncf.Dataset(list(calibration.validation)),
                    validate,
                    max_drop=max_drop,
                    drop_type=nncf.DropType.ABSOLUTE,
                    advanced_quantization_parameters=advanced,
                    advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                        max_num_iterations=opts["max_iterations"],
                        ranking_subset_size=min(RANKING_IMAGES, len(calibration.validation)),
                    ),
                    **common,
                )
            else:
                quantized = nncf.quantize(model, dataset, advanced_parameters=advanced, **common)
        return quantized, {
            "quantizer": "nncf.quantize_with_accuracy_control" if controlled else "nncf.quantize",
            "nncf": str(nncf.__version__),
            "preset": preset_name,
            "per_channel": q.per_channel,
            "calibration_method": q.calibration_method,
            "kept_float": list(q.keep_float),
            "accuracy_control": {"metric": "min(worst class IoU - min_class_iou, mIoU - 1 + max_miou_drop/100, "
                                 "pixel agreement - min_pixel_agreement) vs fp32 labels", "max_drop": round(max_drop, 6)} if controlled else None,
        }

    @staticmethod
    def _ignored_scope(nncf: Any, model: Any, keep: list[str]) -> Any:
        if not keep:
            return None
        ops = model.get_ops()
        types = {op.get_type_name() for op in ops}
        names = {op.get_friendly_name() for op in ops}
        unknown = [k for k in keep if k not in types and k not in names]
        if unknown:
            raise ConfigError(
                f"[quantization] keep_float: {unknown[0]!r} is neither an OpenVINO op type nor an op name of the model "
                f"(op types: {', '.join(sorted(types))})"
            )
        return nncf.IgnoredScope(types=[k for k in keep if k in types], names=[k for k in keep if k not in types])


#: evaluation images NNCF ranks layer groups on (its default, 300, means every image: ~1 s per group here)
RANKING_IMAGES = 16


def _budget_validation(budget: dict[str, float | None], num_classes: int) -> tuple[Any, float]:
    """NNCF ``validation_fn`` and ``max_drop`` that accept what the gate accepts (:func:`edgeseg.mixed_precision.budget_metric`)."""
    from ..mixed_precision import budget_metric

    metric, max_drop = budget_metric(budget, [str(i) for i in range(num_classes)])

    def validate(compiled: Any, data: Any) -> float:
        cm = np.zeros((num_classes, num_classes), np.int64)
        for tensor, ref_labels in data:
            cm += confusion_matrix(output_labels(compiled(tensor)[0]), ref_labels, num_classes)
        return metric(cm)

    return validate, max_drop


def fake_quantize_names(xml_path: Path) -> list[str]:
    """Names of the ``FakeQuantize`` layers of an OpenVINO IR, in file order (what NNCF quantized).

    Source: OpenVINO IR format (``<layer type="FakeQuantize" name=...>`` in the ``.xml``).

    Raises:
        OSError: the file cannot be read. xml.etree.ElementTree.ParseError: not XML.
    """
    from xml.etree import ElementTree

    root = ElementTree.parse(xml_path).getroot()  # noqa: S314  our own converter's output
    return [layer.get("name", "") for layer in root.iter("layer") if layer.get("type") == "FakeQuantize"]
