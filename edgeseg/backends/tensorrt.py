"""TensorRT backend: the shared ONNX plus what the device needs to build its own engine.

TensorRT engines are tied to the TensorRT version and GPU they were built on
(an engine from TRT 8.2.3 fails on a Nano with 8.2.1), so nothing is built on
the host (``build_on = "device"``). The archive carries:

* ``end2end.onnx``: the shared fp32 ONNX, static shapes (or an optimisation
  profile, ``min_shape``/``opt_shape``/``max_shape`` = ``[H, W]`` backend
  options, for a dynamic export);
* ``backend.engine`` in the manifest: precision, input name and the
  profile's N,C,H,W shapes, calibration method and set digest;
* the builder settings (``workspace_mb``, ``dla_core``, ``sparsity``,
  ``optimization_level``) as the target's backend options;
* int8: ``calibration/calibration.npz``, the calibration images after Resize
  (:meth:`edgeseg.calibration.CalibrationSet.save_compact`); the device turns
  them into the exact float tensors the host would use and calibrates with
  ``IInt8EntropyCalibrator2`` (or ``IInt8MinMaxCalibrator``), keeping
  TensorRT's calibration cache next to its engine. ONNX Runtime's TensorRT
  calibration table is the ORT-TensorRT-EP format, not TensorRT's cache
  format, so the host does not pre-compute one.

The engine build and runner are in :mod:`edgeseg_runtime.engine` and
:mod:`edgeseg_runtime.runners.tensorrt`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeseg_runtime.runners import resolve, runner_class

from ..errors import ConfigError
from ..export import tensor_dims
from ..targets import Target
from . import BaseBackend, Calibration, Capabilities, ModelFiles

if TYPE_CHECKING:
    from ..spec import ModelSpec

NET = "end2end.onnx"
CALIBRATION = "calibration/calibration.npz"


def _nchw(value: Any, channels: int, batch: int, key: str) -> list[int]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)):
        raise ConfigError(f"[backend_options] {key} = {value!r}; give [H, W] in pixels")
    return [batch, channels, value[0], value[1]]


def engine_shapes(input_shape: list[Any], target: Target) -> dict[str, list[int]]:
    """The optimisation profile ``{"min_shape", "opt_shape", "max_shape"}`` (each ``[N, C, H, W]``).

    A static input gives its own shape three times. A dynamic one (``H``/``W``
    named dims) needs ``min_shape``, ``opt_shape`` and ``max_shape`` backend options.

    Raises:
        ConfigError: dynamic input without the three options, or options on a static model.
    """
    opts = resolve(target.backend_options, runner_class(TensorRTBackend.name).OPTIONS)
    keys = ("min_shape", "opt_shape", "max_shape")
    batch, channels = target.input.batch, int(input_shape[1])
    if all(isinstance(d, int) for d in input_shape):
        given = [k for k in keys if opts[k] is not None]
        if given:
            raise ConfigError(
                f"target {target.name!r}: [backend_options] {given[0]} is for dynamic models; this model's input is "
                f"static {input_shape}"
            )
        return {k: [int(d) for d in input_shape] for k in keys}
    missing = [k for k in keys if opts[k] is None]
    if missing:
        raise ConfigError(
            f"target {target.name!r}: the model's input is dynamic {input_shape}; TensorRT needs an optimisation profile: "
            f"set [backend_options] {', '.join(missing)} = [H, W]"
        )
    shapes = {k: _nchw(opts[k], channels, batch, k) for k in keys}
    lo, mid, hi = shapes["min_shape"], shapes["opt_shape"], shapes["max_shape"]
    if not all(a <= b <= c for a, b, c in zip(lo, mid, hi, strict=True)):
        raise ConfigError(f"target {target.name!r}: need min_shape <= opt_shape <= max_shape, got {lo[2:]}, {mid[2:]}, {hi[2:]}")
    return shapes


class TensorRTBackend(BaseBackend):
    name = "tensorrt"
    extra = "tensorrt"
    #: the engine is built on the device; the build stores the calibration images for it (calibration/calibration.npz)
    capabilities = Capabilities(build_on="device", precisions=frozenset({"fp32", "fp16", "int8"}),
                                calibration_methods=frozenset({"entropy", "minmax"}), device_calibration=True)

    def versions(self) -> dict[str, str]:
        """Nothing to convert with on the host: the engine is built by the device's TensorRT."""
        return {"tensorrt": "on the device (engine built there)"}

    def convert(self, onnx_path: Path, target: Target, out_dir: Path, calibration: Calibration | None = None, *,
                spec: ModelSpec | None = None) -> ModelFiles:
        """Copy the shared ONNX and record the engine's build settings (see module doc).

        Raises:
            ConfigError: bad optimisation-profile options; int8 without a calibration set.
        """
        import onnx

        model = onnx.load(str(onnx_path), load_external_data=False)
        inp = model.graph.input[0]
        input_shape: list[Any] = tensor_dims(inp)
        engine: dict[str, Any] = {"precision": target.precision, "input": inp.name, **engine_shapes(input_shape, target)}
        if target.precision == "int8":
            if calibration is None:
                raise ConfigError("int8 needs a calibration set")
            engine.update(calibration=CALIBRATION, calibration_method=target.quantization.calibration_method,
                          calibration_sha256=calibration.images.digest)
        shutil.copyfile(onnx_path, out_dir / NET)
        return ModelFiles(net=NET, files=(NET,), details={"engine": engine, "engine_built_on": "device"})
