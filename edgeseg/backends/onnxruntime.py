"""ONNX Runtime backend: the shared fp32 ONNX is the model.

Source: ONNX Runtime docs (https://onnxruntime.ai/docs/). fp16 and int8
(QDQ static quantization) belong to the quantization work; this version
builds fp32.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar, Literal

from edgeseg_runtime.runners import import_backend

from ..targets import Target
from . import ModelFiles


class OnnxRuntimeBackend:
    name: ClassVar[str] = "onnxruntime"
    extra: ClassVar[str] = "onnxruntime"
    build_on: ClassVar[Literal["host", "device"]] = "host"
    precisions: ClassVar[frozenset[str]] = frozenset({"fp32"})

    def versions(self) -> dict[str, str]:
        return {"onnxruntime": import_backend("onnxruntime", extra="onnxruntime").__version__}

    def convert(self, onnx_path: Path, target: Target, out_dir: Path) -> ModelFiles:
        """Copy the shared ONNX as ``end2end.onnx`` (MMDeploy's file name)."""
        shutil.copyfile(onnx_path, out_dir / "end2end.onnx")
        return ModelFiles(net="end2end.onnx", files=("end2end.onnx",))
