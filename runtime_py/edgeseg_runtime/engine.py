"""TensorRT engines built on the device, and the cache that keeps them.

TensorRT plans do not move between machines: a plan is tied to the TensorRT
version and the GPU it was built on (TensorRT developer guide, "Serialized
engines are not portable across platforms or TensorRT versions"). So a Jetson
archive ships the shared ONNX plus the builder settings, and the device builds
its engine once, on first install (the health check) or first run.

**Cache key** (:func:`engine_key`): sha256 of the canonical JSON of

* ``tensorrt``: the TensorRT version on the device;
* ``gpu``: the GPU's compute capability (``"8.7"`` on Orin) and name;
* ``precision``: fp32 | fp16 | int8;
* ``shapes``: the input's min/opt/max shapes (equal for a static model);
* ``onnx_sha256``: the ONNX the engine is built from;
* ``builder``: workspace, DLA core, sparsity, optimisation level;
* ``calibration_sha256``: int8 only, the calibration set's digest.

A change in any part builds a new engine; nothing else does.

**Cache folder** (:class:`EngineCache`): ``$EDGESEG_ENGINE_CACHE``, else the
``engine_cache`` backend option, else ``~/.cache/edgeseg/engines``. On a device
installed by ``edgeseg deploy`` the installer sets ``$EDGESEG_ENGINE_CACHE`` to
``R/engines``, next to ``R/releases``. Each engine is ``<key>.engine`` with a
``<key>.json`` beside it: the key's parts, the engine's sha256 and size, and how
long the build took (the next build's time estimate). An engine whose bytes no
longer match its sha256 is ignored and rebuilt. int8 builds also keep
TensorRT's calibration cache (``<key>.calib``) so a rebuild does not recalibrate.

**Build** (:func:`build_engine`), written against the TensorRT 10 Python API
(https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/python-api-docs.html):
``trt.Builder`` → ``create_network`` → ``trt.OnnxParser.parse`` →
``IBuilderConfig`` (``set_memory_pool_limit(WORKSPACE)``, ``BuilderFlag.FP16``
/ ``INT8`` with an ``IInt8EntropyCalibrator2`` (or ``IInt8MinMaxCalibrator``)
reading the archive's ``calibration/calibration.npz``, DLA with GPU fallback,
``SPARSE_WEIGHTS``, ``builder_optimization_level``, an optimisation profile for
dynamic inputs) → ``build_serialized_network``. CUDA memory for calibration and
inference comes from ``cuda-python`` (``cuda.bindings.runtime``), which
TensorRT's own samples use; no pycuda.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ToolchainError
from .runners import runner_class, tool_lines

__all__ = ["EngineCache", "EngineSettings", "build_engine", "check_cuda", "cuda_runtime", "default_cache_dir", "engine_key"]

CACHE_ENV = "EDGESEG_ENGINE_CACHE"


def default_cache_dir(option: str | None = None) -> Path:
    """``$EDGESEG_ENGINE_CACHE``, else ``option`` (the ``engine_cache`` backend option), else ``~/.cache/edgeseg/engines``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    if option:
        return Path(option).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeseg" / "engines"


@dataclass(frozen=True)
class EngineSettings:
    """Everything an engine build depends on besides the device (from the manifest and backend options).

    Attributes:
        precision: ``fp32`` | ``fp16`` | ``int8``.
        input_name: the network input's name.
        min_shape, opt_shape, max_shape: ``[N, C, H, W]`` of the optimisation
            profile (all equal for a static model).
        workspace_mb: builder workspace limit, MiB.
        dla_core: DLA core to build for (-1 = GPU only); layers DLA cannot run fall back to the GPU.
        sparsity: let TensorRT use 2:4 structured-sparse kernels (``SPARSE_WEIGHTS``).
        optimization_level: ``builder_optimization_level`` 0..5 (TensorRT's default is 3).
        calibration_method: int8: ``entropy`` (``IInt8EntropyCalibrator2``) or ``minmax``.
        calibration_sha256: int8: digest of the calibration set ("" otherwise).
    """

    precision: str
    input_name: str
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    workspace_mb: int = 1024
    dla_core: int = -1
    sparsity: bool = False
    optimization_level: int = 3
    calibration_method: str = "entropy"
    calibration_sha256: str = ""

    @property
    def dynamic(self) -> bool:
        return not (self.min_shape == self.opt_shape == self.max_shape)

    def key_parts(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "shapes": {"input": self.input_name, "min": list(self.min_shape), "opt": list(self.opt_shape),
                       "max": list(self.max_shape)},
            "builder": {"workspace_mb": self.workspace_mb, "dla_core": self.dla_core, "sparsity": self.sparsity,
                        "optimization_level": self.optimization_level,
                        **({"calibration_method": self.calibration_method} if self.precision == "int8" else {})},
            **({"calibration_sha256": self.calibration_sha256} if self.precision == "int8" else {}),
        }


def engine_key(settings: EngineSettings, onnx_sha256: str, tensorrt_version: str, gpu: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    """The cache key of one engine.

    Args:
        settings: build settings.
        onnx_sha256: hex sha256 of the ONNX file.
        tensorrt_version: ``tensorrt.__version__`` on the device.
        gpu: ``{"compute_capability": "8.7", "name": "Orin"}``.

    Returns:
        ``(key, parts)``: 32 hex characters of the sha256 of the parts' canonical
        JSON, and the parts themselves (stored next to the engine).
    """
    parts = {"tensorrt": tensorrt_version, "gpu": dict(gpu), "onnx_sha256": onnx_sha256, **settings.key_parts()}
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:32], parts


class EngineCache:
    """A folder of built engines keyed by :func:`engine_key` (see the module doc).

    Args:
        root: the cache folder (created on the first store).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def engine_path(self, key: str) -> Path:
        return self.root / f"{key}.engine"

    def calibration_path(self, key: str) -> Path:
        return self.root / f"{key}.calib"

    def load(self, key: str) -> bytes | None:
        """The engine stored under ``key``, or None when absent or not matching its recorded sha256."""
        meta = self._meta(key)
        try:
            data = self.engine_path(key).read_bytes()
        except OSError:
            return None
        if meta is None or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            return None
        return data

    def store(self, key: str, parts: Mapping[str, Any], engine: bytes, seconds: float) -> Path:
        """Write ``engine`` and its ``.json`` atomically (temporary file + rename, engine first).

        Raises:
            ToolchainError: the folder cannot be written (read-only, disk full); says where.
        """
        meta = {"key": key, "parts": dict(parts), "sha256": hashlib.sha256(engine).hexdigest(), "size": len(engine),
                "build_seconds": round(seconds, 1), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for path, data in ((self.engine_path(key), engine), (self.root / f"{key}.json", json.dumps(meta, indent=2).encode())):
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)
        except OSError as exc:
            raise ToolchainError(
                f"cannot write the TensorRT engine into {self.root} ({exc.strerror or exc}); free space or set "
                f"${CACHE_ENV} to a writable folder"
            ) from None
        return self.engine_path(key)

    def last_build_seconds(self) -> float | None:
        """How long the most recent build in this cache took (any key), or None."""
        newest: tuple[float, float] | None = None
        for path in self.root.glob("*.json"):
            try:
                mtime, meta = path.stat().st_mtime, json.loads(path.read_text(encoding="utf-8"))
                seconds = float(meta["build_seconds"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if newest is None or mtime > newest[0]:
                newest = (mtime, seconds)
        return None if newest is None else newest[1]

    def _meta(self, key: str) -> dict[str, Any] | None:
        try:
            meta = json.loads((self.root / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None


# ----------------------------------------------------------------- CUDA and TensorRT (need the device)
def cuda_runtime() -> Any:
    """The CUDA runtime API of ``cuda-python`` (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6).

    Raises:
        ToolchainError: cuda-python is not installed.
    """
    try:
        from cuda.bindings import runtime  # type: ignore[import-not-found]

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart  # type: ignore[import-not-found]

        return cudart
    except ImportError as exc:
        raise ToolchainError(
            f"cuda-python is not installed ({exc}); the TensorRT runner needs it for GPU memory: pip install cuda-python"
        ) from None


def check_cuda(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(error, value...)`` tuple; raises ToolchainError on an error code."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise ToolchainError(f"CUDA error in {what}: {err}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def gpu_identity(cudart: Any) -> dict[str, str]:
    """``{"compute_capability": "8.7", "name": ...}`` of CUDA device 0."""
    props = check_cuda(cudart.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return {"compute_capability": f"{props.major}.{props.minor}", "name": name.strip("\x00 ")}


def _calibrator(trt: Any, cudart: Any, method: str, tensors: Iterator[np.ndarray], nbytes: int, cache: Path) -> Any:
    """An ``IInt8EntropyCalibrator2`` / ``IInt8MinMaxCalibrator`` over the calibration tensors (batch 1)."""
    base = trt.IInt8MinMaxCalibrator if method == "minmax" else trt.IInt8EntropyCalibrator2

    class Calibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.device = check_cuda(cudart.cudaMalloc(nbytes), "cudaMalloc (calibration)")
            self.held: np.ndarray | None = None

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: Sequence[str]) -> list[int] | None:
            tensor = next(tensors, None)
            if tensor is None:
                return None
            self.held = np.ascontiguousarray(tensor, dtype=np.float32)
            check_cuda(cudart.cudaMemcpy(self.device, self.held.ctypes.data, self.held.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyHostToDevice), "cudaMemcpy (calibration)")
            return [int(self.device)]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_bytes(bytes(data))

        def free(self) -> None:
            cudart.cudaFree(self.device)

    return Calibrator()


def build_engine(
    trt: Any,
    onnx_path: Path,
    settings: EngineSettings,
    *,
    calibration: Callable[[], Iterator[np.ndarray]] | None = None,
    calibration_cache: Path | None = None,
) -> bytes:
    """Build a serialized TensorRT engine from an ONNX file.

    Args:
        trt: the imported ``tensorrt`` module.
        onnx_path: the ONNX model.
        settings: precision, shapes and builder settings.
        calibration: int8: a callable giving the ``(1, 3, H, W)`` float32 calibration tensors.
        calibration_cache: int8: TensorRT's calibration cache file (read if present, written after calibrating).

    Returns:
        The serialized engine (plan) bytes.

    Raises:
        ToolchainError: the parser rejects the ONNX (its first and last errors), int8 without
            calibration data, or the build fails.
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ToolchainError(f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: {tool_lines(errors) or 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    config.builder_optimization_level = settings.optimization_level
    if settings.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8 layers without a scale run in fp16, not fp32
    if settings.sparsity:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if settings.dla_core >= 0:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    profile = builder.create_optimization_profile()
    profile.set_shape(settings.input_name, settings.min_shape, settings.opt_shape, settings.max_shape)
    config.add_optimization_profile(profile)
    calibrator = None
    if settings.precision == "int8":
        if calibration is None or calibration_cache is None:
            raise ToolchainError("int8 engine: the archive has no calibration set (calibration/calibration.npz); rebuild it")
        cudart = cuda_runtime()
        nbytes = int(np.prod(settings.opt_shape)) * 4
        calibrator = _calibrator(trt, cudart, settings.calibration_method, calibration(), nbytes, calibration_cache)
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        if settings.dynamic:
            config.set_calibration_profile(profile)
    try:
        plan = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if plan is None:
        raise ToolchainError(
            f"TensorRT {trt.__version__} could not build an engine from {onnx_path.name} ({settings.precision}); "
            "the builder's log above says why"
        )
    return bytes(plan)


def build_on_device(archive_path: Path, out_dir: Path) -> dict[str, Any]:
    """Build (or reuse) this device's engine for a TensorRT archive into ``out_dir`` and verify it.

    What ``edgeseg build --device`` runs on the device (agent command ``engine``):
    the engine cache is pointed at ``out_dir``, the archive's golden check runs on
    the engine, and the host pulls ``<key>.engine`` and ``<key>.json`` back.

    Returns:
        ``{"key", "source", "engine", "parts", "verify"}`` (``verify`` = the golden-check report).

    Raises:
        ToolchainError: not a TensorRT archive, TensorRT or cuda-python missing, or the build failed.
        ArchiveError: the archive is corrupt or altered.
    """
    from .archive import Archive
    from .segmentor import Segmentor
    from .verify import verify_archive

    with Archive.open(archive_path) as archive:
        backend = archive.manifest.backend.details
        if archive.manifest.backend.name != "tensorrt":
            raise ToolchainError(f"{archive_path.name} is a {archive.manifest.backend.name} archive; "
                                 "only TensorRT archives build engines on a device")
        runner_cls = runner_class("tensorrt")  # found by name: this module never imports its runner
        runner_cls.version()  # no TensorRT: say so here rather than falling back to the profile's fallback
        out_dir.mkdir(parents=True, exist_ok=True)
        previous = os.environ.get(CACHE_ENV)
        os.environ[CACHE_ENV] = str(out_dir)
        try:
            with Segmentor(archive) as seg:
                runner = seg.runner
                assert isinstance(runner, runner_cls)
                report = verify_archive(archive, seg)
        finally:
            if previous is None:
                os.environ.pop(CACHE_ENV, None)
            else:
                os.environ[CACHE_ENV] = previous
        key = runner.key
        if runner.source == "archive":  # the archive already carries this device's engine: hand it back as it is
            entry = next(e for e in backend.get("prebuilt_engines", []) if e.get("key") == key)
            EngineCache(out_dir).store(key, entry.get("parts", {}), archive.path(entry["file"]).read_bytes(), 0.0)
        meta = json.loads((out_dir / f"{key}.json").read_text(encoding="utf-8"))
    return {"key": key, "source": runner.source, "engine": f"{key}.engine", "parts": meta["parts"], "verify": report.to_dict()}
