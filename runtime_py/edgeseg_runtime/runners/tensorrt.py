"""TensorRT runner: builds (or reuses) this device's engine from the archive's ONNX, then runs it.

Where the engine comes from, in order (see :mod:`edgeseg_runtime.engine`):

1. a prebuilt engine inside the archive (``edgeseg build --device``) whose
   cache key equals this device's (same TensorRT, GPU, precision, shapes, ONNX);
2. the device's engine cache;
3. a build here, announced on stderr with an estimate (the last build in the
   cache), then stored in the cache.

Inference uses TensorRT 10's name-based API (``set_tensor_address``,
``execute_async_v3``) with CUDA memory from cuda-python, as TensorRT's own
samples do (https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/python-api-docs.html).

Options (target profile ``[backend_options]``): see :attr:`TensorRTRunner.OPTIONS`
(``min_shape``/``opt_shape``/``max_shape`` are read by the host build).

Untested here: no TensorRT was installable where this was written (see the
README's Jetson section); ``pytest -m tensorrt`` runs it where TensorRT is.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..archive import sha256_file
from ..engine import (
    EngineCache,
    EngineSettings,
    build_engine,
    check_cuda,
    cuda_runtime,
    default_cache_dir,
    engine_key,
    gpu_identity,
)
from ..errors import ToolchainError
from . import BaseRunner, Option, resolve

MISSING = (
    "TensorRT is not installed here ({why}); on a Jetson it comes with JetPack "
    "(apt install python3-libnvinfer), elsewhere from NVIDIA's wheel index; or name a fallback_backend "
    "in the target profile"
)


def _import() -> Any:
    try:
        import tensorrt  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ToolchainError(MISSING.format(why=exc)) from None
    return tensorrt


def _say(line: str) -> None:
    print(f"edgeseg: {line}", file=sys.stderr, flush=True)


class TensorRTRunner(BaseRunner):
    """Runs the device-built TensorRT engine of an archive's ONNX."""

    backend = "tensorrt"
    requirement = "tensorrt>=8.6"
    #: the device's system provides it (JetPack), so offline archives do not bundle it
    system_requirement = "tensorrt (JetPack: apt install python3-libnvinfer) and cuda-python"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "workspace_mb": Option(int, 1, 1 << 20, default=1024, doc="builder workspace limit, MiB"),
        "dla_core": Option(int, -1, 16, default=-1, doc="DLA core to build for (GPU fallback on); -1 = GPU only"),
        "sparsity": Option(bool, default=False, doc="2:4 structured-sparse kernels (SPARSE_WEIGHTS)"),
        "optimization_level": Option(int, 0, 5, default=3, doc="builder_optimization_level"),
        "min_shape": Option(list, items=int, doc="[H, W]: dynamic models' optimisation profile (host build)"),
        "opt_shape": Option(list, items=int, doc="[H, W]: dynamic models' optimisation profile (host build)"),
        "max_shape": Option(list, items=int, doc="[H, W]: dynamic models' optimisation profile (host build)"),
        "engine_cache": Option(str, doc="engine cache folder when $EDGESEG_ENGINE_CACHE is unset"),
    }

    def __init__(self, root: Path, model: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        super().__init__(root, model, options)
        self.onnx = self.root / model["net"]
        self.spec: dict[str, Any] = dict(model.get("engine", {}))
        self.prebuilt: list[dict[str, Any]] = list(model.get("prebuilt_engines", []))
        self.source = ""  # "archive" | "cache" | "built": where the engine came from
        self.key = ""
        self._context: Any = None
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._outputs: list[str] = []
        self._stream: Any = None
        self._cudart: Any = None
        self._engine: Any = None

    @staticmethod
    def version() -> str:
        """Installed TensorRT version. Raises ToolchainError when missing."""
        return str(_import().__version__)

    @classmethod
    def plan(cls, model: Mapping[str, Any], options: Mapping[str, Any]) -> list[str]:
        """``edgeseg info`` lines: how and where the device builds, caches and runs the engine."""
        e, o = model.get("engine", {}), resolve(options, cls.OPTIONS)
        shapes = e.get("opt_shape") if e.get("min_shape") == e.get("max_shape") else (
            f"{e.get('min_shape')}..{e.get('max_shape')} (opt {e.get('opt_shape')})")
        dla = o["dla_core"]
        lines = [
            f"engine      built on the device by TensorRT on first install (health check) or first run: {e.get('precision')}, "
            f"input {e.get('input')} {shapes}, workspace {o['workspace_mb']} MiB, "
            f"{'DLA core ' + str(dla) + ' + GPU fallback' if dla >= 0 else 'GPU'}, sparsity {'on' if o['sparsity'] else 'off'}",
            "engine key  TensorRT version + GPU compute capability + precision + shapes + ONNX sha256 + builder settings; "
            "cached in $EDGESEG_ENGINE_CACHE (R/engines when deployed), rebuilt only when the key changes",
        ]
        if e.get("calibration"):
            lines.append(f"calibration on the device: {e['calibration']} ({e.get('calibration_method')}), "
                         "TensorRT's calibration cache kept next to the engine")
        for entry in model.get("prebuilt_engines", []):
            parts = entry.get("parts", {})
            gpu = parts.get("gpu", {})
            lines.append(f"prebuilt    {entry['file']}: {gpu.get('name')} sm {gpu.get('compute_capability')}, TensorRT "
                         f"{parts.get('tensorrt')} (used on devices with the same key, rebuilt elsewhere)")
        lines.append("untested    the engine build and runner never ran in edgeseg's CI (no TensorRT there); "
                     "'edgeseg verify' on the device is the first numeric check")
        return lines

    def settings(self) -> EngineSettings:
        """Build settings from the archive's ``engine`` section and the backend options."""
        s, o = self.spec, self.options
        try:
            return EngineSettings(
                precision=str(s["precision"]), input_name=str(s["input"]),
                min_shape=tuple(s["min_shape"]), opt_shape=tuple(s["opt_shape"]), max_shape=tuple(s["max_shape"]),
                workspace_mb=int(o["workspace_mb"]), dla_core=int(o["dla_core"]),
                sparsity=bool(o["sparsity"]), optimization_level=int(o["optimization_level"]),
                calibration_method=str(s.get("calibration_method", "entropy")),
                calibration_sha256=str(s.get("calibration_sha256", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ToolchainError(f"the archive's backend.engine section is incomplete ({exc}); rebuild the archive") from None

    def _calibration(self) -> Iterator[np.ndarray]:
        import json

        from ..calibration import load_compact
        from ..pipeline import parse_pipeline

        pipeline = json.loads((self.root / "pipeline.json").read_text(encoding="utf-8"))
        preprocess, _ = parse_pipeline(pipeline)
        return load_compact(self.root / self.spec["calibration"], preprocess)

    def _engine_bytes(self, trt: Any, settings: EngineSettings, gpu: dict[str, str]) -> bytes:
        self.key, parts = engine_key(settings, sha256_file(self.onnx), str(trt.__version__), gpu)
        for entry in self.prebuilt:
            if entry.get("key") == self.key:
                self.source = "archive"
                return (self.root / entry["file"]).read_bytes()
        if self.prebuilt:
            _say(f"the archive's engine was built for another device ({self.prebuilt[0].get('parts', {}).get('gpu')}, "
                 f"TensorRT {self.prebuilt[0].get('parts', {}).get('tensorrt')}); building one for this device")
        cache = EngineCache(default_cache_dir(self.options["engine_cache"]))
        data = cache.load(self.key)
        if data is not None:
            self.source = "cache"
            return data
        last = cache.last_build_seconds()
        estimate = f"the last build here took {last:.0f} s" if last else "no earlier build here to estimate from; usually minutes"
        _say(f"building the TensorRT {trt.__version__} engine for this device ({gpu.get('name')}, sm {gpu.get('compute_capability')}, "
             f"{settings.precision}, input {list(settings.opt_shape)}): first run only, {estimate}; cached in {cache.root}")
        t0 = time.perf_counter()
        calib = self._calibration if settings.precision == "int8" else None
        data = build_engine(trt, self.onnx, settings, calibration=calib, calibration_cache=cache.calibration_path(self.key))
        seconds = time.perf_counter() - t0
        cache.store(self.key, parts, data, seconds)
        _say(f"engine built in {seconds:.0f} s -> {cache.engine_path(self.key)}")
        self.source = "built"
        return data

    def _activate_impl(self) -> None:
        trt = _import()
        cudart = self._cudart = cuda_runtime()
        settings = self.settings()
        gpu = gpu_identity(cudart)
        data = self._engine_bytes(trt, settings, gpu)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise ToolchainError(f"TensorRT {trt.__version__} could not load the engine ({self.source}, key {self.key[:12]})")
        self._context = self._engine.create_execution_context()
        self.inputs = {}
        self._stream = check_cuda(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._trt = trt
        self._outputs = []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                self._outputs.append(name)
            else:
                self.inputs[name] = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))

    def _address(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self._cudart.cudaFree(ptr)
            ptr = int(check_cuda(self._cudart.cudaMalloc(nbytes), "cudaMalloc"))
            self._buffers[name] = (ptr, nbytes)
        self._context.set_tensor_address(name, ptr)
        return ptr

    def _infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy inputs to the GPU, ``execute_async_v3``, copy outputs back; returns name -> array."""
        cudart, trt, ctx = self._cudart, self._trt, self._context
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        held = []
        for name, array in feed.items():
            x = np.ascontiguousarray(array, dtype=trt.nptype(self._engine.get_tensor_dtype(name)))
            held.append(x)
            ctx.set_input_shape(name, x.shape)
            ptr = self._address(name, x.nbytes)
            check_cuda(cudart.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes, h2d, self._stream), "cudaMemcpyAsync")
        outputs: dict[str, np.ndarray] = {}
        for name in self._outputs:
            out = np.empty(tuple(ctx.get_tensor_shape(name)), dtype=trt.nptype(self._engine.get_tensor_dtype(name)))
            self._address(name, out.nbytes)
            outputs[name] = out
        if not ctx.execute_async_v3(self._stream):
            raise ToolchainError("TensorRT execute_async_v3 failed")
        for name, out in outputs.items():
            check_cuda(cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[name][0], out.nbytes, d2h, self._stream),
                       "cudaMemcpyAsync")
        check_cuda(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return outputs

    def _deactivate_impl(self) -> None:
        if self._cudart is not None:
            for ptr, _ in self._buffers.values():
                self._cudart.cudaFree(ptr)
            if self._stream is not None:
                self._cudart.cudaStreamDestroy(self._stream)
        self._buffers, self._context, self._engine, self._stream = {}, None, None, None
