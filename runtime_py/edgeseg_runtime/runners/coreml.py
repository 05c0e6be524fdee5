"""CoreML runner (``.mlpackage``, ML Program) on macOS.

Source: coremltools, ``coremltools.models.MLModel(path, compute_units=...)``
and ``MLModel.predict`` (https://apple.github.io/coremltools/docs-guides/source/model-prediction.html):
"Prediction is only supported on macOS". On any other OS :meth:`version`
raises, so ``verify``/``run`` say that clearly and the build records that the
numeric check is pending until the archive runs on a Mac.

Options (target profile ``[backend_options]``): see :attr:`CoreMLRunner.OPTIONS`
(``input_type`` and ``deployment_target`` are read by the host build).
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ToolchainError
from . import BaseRunner, Option, error_text, import_backend, resolve

COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")
#: ML Program deployment targets the host build converts for
DEPLOYMENT_TARGETS = ("iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15")


def _import() -> Any:
    if platform.system() != "Darwin":  # checked first: importing coremltools on Linux prints a page of warnings
        try:
            have = f"coremltools {metadata.version('coremltools')} is installed"
        except metadata.PackageNotFoundError:
            have = "coremltools is not installed either"
        raise ToolchainError(
            f"CoreML prediction is only supported on macOS ({have}, this is {platform.system()}); "
            "run this archive on a Mac or iOS device"
        )
    return import_backend("coremltools", extra="coreml")


class CoreMLRunner(BaseRunner):
    """Runs an ML Program ``.mlpackage`` with ``coremltools`` prediction."""

    backend = "coreml"
    requirement = "coremltools>=8.0"
    #: coremltools 9.0 crashes with numpy 2.4 (measured): offline archives must not bundle it
    constraints = ("numpy<2.4",)
    OPTIONS: ClassVar[dict[str, Option]] = {
        # compute_units is checked when the model loads (ToolchainError naming the choices), not here
        "compute_units": Option(str, default="ALL", doc=" | ".join(COMPUTE_UNITS)),
        "input_type": Option(str, choices=("tensor", "image"), default="tensor",
                             doc="image: an ImageType input that folds the pipeline's Normalize into the model (host build)"),
        "deployment_target": Option(str, choices=DEPLOYMENT_TARGETS, default="iOS16",
                                    doc="minimum deployment target of the ML Program (host build)"),
    }

    def __init__(self, root: Path, model: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        super().__init__(root, model, options)
        self.path = self.root / model["net"]
        self.image = dict(model.get("image_input") or {})  # mean/std/color when the input is an image

    @staticmethod
    def version() -> str:
        """Installed coremltools version. Raises ToolchainError when missing or not on macOS."""
        return str(_import().__version__)

    @classmethod
    def plan(cls, model: Mapping[str, Any], options: Mapping[str, Any]) -> list[str]:
        """``edgeseg info`` lines: what the package is and what happens on the device."""
        v = model.get("validation", {})
        io = "; ".join(
            f"{f['name']} {f['kind']} {f.get('dtype', f.get('color', ''))} {f['shape']}" for f in v.get("inputs", []) + v.get("outputs", [])
        )
        comp = model.get("weight_compression", {}).get("mode")
        units = resolve(options, cls.OPTIONS)["compute_units"]
        return [
            f"package     CoreML {model.get('format', 'mlprogram')} for {model.get('deployment_target', '?')}+, "
            f"{model.get('compute_precision', '?')} compute" + (f", weights {comp}" if comp else ""),
            f"validated   on the build host: {io or 'n/a'}",
            f"on device   coremltools prediction, compute units {units} (macOS only); "
            f"{model.get('numeric_check', '')}",
        ]

    def _activate_impl(self) -> None:
        ct = _import()
        units = str(self.options["compute_units"])
        if units not in COMPUTE_UNITS:
            raise ToolchainError(f"compute_units = {units!r}; use one of {', '.join(COMPUTE_UNITS)}")
        try:
            self._model = ct.models.MLModel(str(self.path), compute_units=getattr(ct.ComputeUnit, units))
        except Exception as exc:  # coremltools raises assorted errors
            raise ToolchainError(f"CoreML cannot load {self.path.name}: {error_text(exc)}") from exc

    def _as_image(self, tensor: np.ndarray) -> Any:
        """The pre-processed ``(1, 3, H, W)`` tensor back to the RGB/BGR image an image-input model takes."""
        from PIL import Image

        mean = np.asarray(self.image["mean"], np.float32).reshape(3, 1, 1)
        std = np.asarray(self.image["std"], np.float32).reshape(3, 1, 1)
        pixels = np.clip(np.rint(tensor[0] * std + mean), 0, 255).astype(np.uint8).transpose(1, 2, 0)
        return Image.fromarray(np.ascontiguousarray(pixels if self.image.get("color", "RGB") == "RGB" else pixels[..., ::-1]))

    def _infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = {k: (self._as_image(v) if self.image else np.ascontiguousarray(v, np.float32)) for k, v in feed.items()}
        result = self._model.predict(inputs)
        return {k: np.asarray(v) for k, v in result.items()}

    def _deactivate_impl(self) -> None:
        self._model = None
