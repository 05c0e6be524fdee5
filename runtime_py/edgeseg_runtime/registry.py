"""THE backend registry: one line per backend (see docs/adding-a-backend.md).

A backend is found everywhere by its name here: target profiles' ``backend`` /
``fallback_backend``, the manifest's ``backend.name``, the runner class in
``edgeseg_runtime.runners.<name>`` and the host converter class in
``edgeseg.backends.<name>``. Standard library only: the installer and the
manifest contract read these names on a device before numpy is installed.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["BACKEND_NAMES", "REGISTRY", "Registration"]


class Registration(NamedTuple):
    """One backend's two halves, found by its name.

    Attributes:
        runner: the :class:`BaseRunner` subclass in ``edgeseg_runtime.runners.<name>`` (on devices).
        host: the converter class in ``edgeseg.backends.<name>`` (the host package only).
    """

    runner: str
    host: str


#: THE backend registry (one line per backend). Profiles' ``backend``/``fallback_backend``, the
#: manifest's backend name, the runner and the host converter are all found by these names.
REGISTRY: dict[str, Registration] = {
    "onnxruntime": Registration("OnnxRuntimeRunner", host="OnnxRuntimeBackend"),
    "openvino": Registration("OpenVINORunner", host="OpenVINOBackend"),
    "tensorrt": Registration("TensorRTRunner", host="TensorRTBackend"),
    "ncnn": Registration("NcnnRunner", host="NcnnBackend"),
    "coreml": Registration("CoreMLRunner", host="CoreMLBackend"),
    "tflite": Registration("TFLiteRunner", host="TFLiteBackend"),
}
#: every backend name, in registry order
BACKEND_NAMES: tuple[str, ...] = tuple(REGISTRY)
