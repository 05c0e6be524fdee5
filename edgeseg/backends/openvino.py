"""OpenVINO backend: shared ONNX → OpenVINO IR (``end2end.xml`` + ``end2end.bin``).

Source: OpenVINO docs, "Convert a model" (``openvino.convert_model``) and
``openvino.save_model(..., compress_to_fp16=...)``
(https://docs.openvino.ai/2026/openvino-workflow/model-preparation.html).
fp16 means fp16-compressed weights; the CPU plugin computes in fp32 (or the
``inference_precision`` backend option). int8 (NNCF) belongs to the
quantization work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from edgeseg_runtime.runners import import_backend

from ..errors import ConversionError
from ..targets import Target
from . import ModelFiles


def _ov() -> Any:
    return import_backend("openvino", extra="openvino")


class OpenVINOBackend:
    name: ClassVar[str] = "openvino"
    extra: ClassVar[str] = "openvino"
    build_on: ClassVar[Literal["host", "device"]] = "host"
    precisions: ClassVar[frozenset[str]] = frozenset({"fp32", "fp16"})

    def versions(self) -> dict[str, str]:
        return {"openvino": str(_ov().get_version()).split("-")[0]}

    def convert(self, onnx_path: Path, target: Target, out_dir: Path) -> ModelFiles:
        """Convert and save the IR; fp16 compresses weights to half precision."""
        ov = _ov()
        try:
            model = ov.convert_model(str(onnx_path))
            ov.save_model(model, str(out_dir / "end2end.xml"), compress_to_fp16=target.precision == "fp16")
        except Exception as exc:  # OpenVINO raises RuntimeError/OpConversionFailure with long text
            raise ConversionError(f"OpenVINO conversion failed: {str(exc).strip().splitlines()[0]}") from None
        return ModelFiles(
            net="end2end.xml",
            weights="end2end.bin",
            files=("end2end.xml", "end2end.bin"),
            details={"compress_to_fp16": target.precision == "fp16"},
        )
