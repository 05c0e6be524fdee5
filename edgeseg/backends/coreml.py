"""CoreML backend: shared ONNX → PyTorch (onnx2torch) → TorchScript → ``end2end.mlpackage`` (ML Program).

Sources: coremltools "Converting from PyTorch"
(https://apple.github.io/coremltools/docs-guides/source/convert-pytorch.html),
"Typed execution" (``compute_precision``), "Optimize" (``linear_quantize_weights``,
``palettize_weights``: https://apple.github.io/coremltools/docs-guides/source/opt-overview.html);
onnx2torch (https://github.com/ENOT-AutoDL/onnx2torch).

* coremltools 9 no longer reads ONNX, so the shared ONNX (the one every target
  derives from, with edgeseg's NCHW input and output contract) is turned into
  a ``torch.nn.Module`` by onnx2torch, traced to TorchScript at the static
  input shape, and converted to an ML Program (``minimum_deployment_target``
  iOS16/macOS13 or the ``deployment_target`` option), fp32 I/O kept.
* **fp16** (default): ``compute_precision=FLOAT16``; **fp32**: FLOAT32;
  **int8**: fp16 program with int8 weights, per-channel linear quantization
  (``[quantization.options] weight_compression = "linear"``, the default) or
  k-means palettization (``"palettize"``, ``nbits`` 1..8). Weight-only: the
  calibration images are not used (recorded in the manifest).
* Input: a tensor, or with backend option ``input_type = "image"`` an
  ``ImageType`` that folds the pipeline's Normalize into the model (one scale
  for all channels, so only when the spec's ``std`` is equal across channels).
* Flexible H/W is refused: measured here, coremltools fails on bilinear
  upsampling with flexible shapes; build a static shape instead.
* The package is validated here (spec loaded, input/output names, shapes and
  dtypes checked against the model); prediction needs macOS, so the numeric
  golden check is recorded as pending until the archive runs on a Mac.
* Reproducible: the conversion date in the model metadata is dropped and the
  package's ``Manifest.json`` item ids are derived from their paths (uuid5), so
  the same input gives the same bytes.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import uuid
import warnings
from pathlib import Path
from typing import Any, ClassVar

from edgeseg_runtime.runners import Option
from edgeseg_runtime.runners.coreml import DEPLOYMENT_TARGETS

from ..errors import ConfigError, ConversionError, ToolchainError
from ..spec import ModelSpec
from ..targets import Target
from . import BaseBackend, Calibration, Capabilities, ModelFiles, static_input_shape, translate_errors
from .onnx_torch import import_onnx2torch, onnx_to_torch

NET = "end2end.mlpackage"
#: the ML Program deployment targets (the runner's ``deployment_target`` choices)
TARGETS = DEPLOYMENT_TARGETS


@contextlib.contextmanager
def _quiet() -> Any:
    """coremltools prints version warnings and tqdm bars on stderr; keep them off the user's terminal."""
    sink = io.StringIO()
    with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace TracerWarnings from onnx2torch's Resize (static shapes: harmless)
        yield sink


#: (coremltools release prefix, first numpy it crashes with): measured, coremltools 9.0 with numpy 2.4.x
_NUMPY_CEILINGS = (("9.0", (2, 4)),)


def _check_numpy_pair() -> None:
    """Refuse, in one line, a coremltools/numpy pair known to crash (checked before importing coremltools)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ct_version, np_version = version("coremltools"), version("numpy")
    except PackageNotFoundError:
        return
    np_release = tuple(int(p) for p in np_version.split(".")[:2] if p.isdigit())
    for prefix, ceiling in _NUMPY_CEILINGS:
        if (ct_version == prefix or ct_version.startswith(prefix + ".")) and np_release >= ceiling:
            raise ToolchainError(f"coremltools {ct_version} crashes with numpy {np_version} (measured); "
                                 f"pip install 'numpy<{ceiling[0]}.{ceiling[1]}' in this environment")


def _ct() -> Any:
    _check_numpy_pair()
    try:
        with _quiet():
            import coremltools as ct
    except ImportError as exc:
        raise ToolchainError(f"coremltools is not installed ({exc}); pip install 'edgeseg[coreml]'") from None
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    return ct


def package_files(package: Path, root: Path) -> tuple[str, ...]:
    """Every file of an ``.mlpackage`` folder, relative to ``root``, sorted."""
    return tuple(sorted(p.relative_to(root).as_posix() for p in package.rglob("*") if p.is_file()))


def make_reproducible(package: Path) -> None:
    """Derive the ``Manifest.json`` item ids from their paths (uuid5) so rebuilds give identical bytes."""
    mpath = package / "Manifest.json"
    doc = json.loads(mpath.read_text(encoding="utf-8"))
    new_ids = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, f"mlpackage:{item['path']}"))
               for old, item in doc["itemInfoEntries"].items()}
    doc["itemInfoEntries"] = {new_ids[old]: item for old, item in sorted(doc["itemInfoEntries"].items(), key=lambda kv: kv[1]["path"])}
    doc["rootModelIdentifier"] = new_ids[doc["rootModelIdentifier"]]
    mpath.write_text(json.dumps(doc, indent=4, sort_keys=True) + "\n", encoding="utf-8")


_DTYPES = {65568: "float32", 65552: "float16", 131104: "int32", 65600: "float64"}  # ArrayFeatureType.ArrayDataType


def describe_package(ct: Any, package: Path) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs of a package's spec: name, kind (tensor | image), shape, dtype. Raises ConversionError."""
    with translate_errors("the CoreML package does not load"):
        spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()

    def feature(f: Any) -> dict[str, Any]:
        kind = f.type.WhichOneof("Type")
        if kind == "imageType":
            img = f.type.imageType
            color = {10: "GRAYSCALE", 20: "RGB", 30: "BGR"}.get(img.colorSpace, str(img.colorSpace))
            return {"name": f.name, "kind": "image", "shape": [1, 3, int(img.height), int(img.width)], "color": color}
        arr = f.type.multiArrayType
        return {"name": f.name, "kind": "tensor", "shape": [int(d) for d in arr.shape],
                "dtype": _DTYPES.get(int(arr.dataType), str(arr.dataType))}

    return {"inputs": [feature(f) for f in spec.description.input], "outputs": [feature(f) for f in spec.description.output]}


def validate_package(ct: Any, package: Path, input_shape: list[int], output_shape: list[Any], output_dtype: str,
                     image: bool) -> dict[str, Any]:
    """Check a converted package against the model: one input ``input``, one output ``output``, shapes, dtypes.

    Returns:
        ``{"passed": True, "inputs": [...], "outputs": [...]}``.

    Raises:
        ConversionError: a name, shape, kind or dtype differs (says which).
    """
    desc = describe_package(ct, package)
    ins, outs = desc["inputs"], desc["outputs"]
    want_out = "float32" if output_dtype == "float32" else "int32"  # CoreML has no int64 arrays
    problems = []
    if [i["name"] for i in ins] != ["input"] or [o["name"] for o in outs] != ["output"]:
        problems.append(f"names {[i['name'] for i in ins]} -> {[o['name'] for o in outs]}, expected ['input'] -> ['output']")
    else:
        i, o = ins[0], outs[0]
        if i["kind"] != ("image" if image else "tensor") or i["shape"] != list(input_shape):
            problems.append(f"input is {i['kind']} {i['shape']}, expected {'image' if image else 'tensor'} {input_shape}")
        if not image and i.get("dtype") != "float32":
            problems.append(f"input dtype {i.get('dtype')}, expected float32")
        if o["shape"] != list(output_shape) or o.get("dtype") != want_out:
            problems.append(f"output {o.get('dtype')} {o['shape']}, expected {want_out} {output_shape}")
    if problems:
        raise ConversionError(f"the CoreML package does not match the model: {'; '.join(problems)}")
    return {"passed": True, **desc}


class CoreMLBackend(BaseBackend):
    name = "coreml"
    extra = "coreml"
    #: weight-only int8: the calibration methods are accepted and unused; convert() reads spec= (image inputs)
    capabilities = Capabilities(build_on="host", precisions=frozenset({"fp32", "fp16", "int8"}),
                                calibration_methods=frozenset({"minmax", "entropy", "percentile"}), wants_spec=True,
                                static_shapes=True)
    quant_options: ClassVar[dict[str, Option]] = {
        "weight_compression": Option(str, choices=("linear", "palettize"), default="linear",
                                     doc="int8 weights: linear (per channel) or k-means palettization"),
        "nbits": Option(int, 1, 8, default=8, doc="palettize: bits per weight"),
    }

    def versions(self) -> dict[str, str]:
        ct = _ct()
        o2t = import_onnx2torch(extra="coreml")
        import torch

        return {"coremltools": ct.__version__, "onnx2torch": getattr(o2t, "__version__", "installed"), "torch": torch.__version__}

    def convert(self, onnx_path: Path, target: Target, out_dir: Path, calibration: Calibration | None = None, *,
                spec: ModelSpec | None = None) -> ModelFiles:
        """Convert to ``end2end.mlpackage`` and validate it (see module doc).

        ``spec`` (the model spec) gives mean/std/colour for ``input_type = "image"``.

        Raises:
            ConfigError: dynamic input, unknown option values, image input with unequal std.
            ConversionError: onnx2torch, tracing, coremltools or validation failed.
        """
        import numpy as np
        import onnx

        ct = _ct()
        opts = self.backend_options(target)
        model = onnx.load(str(onnx_path))
        shape = static_input_shape(model)
        if shape is None:
            raise ConfigError(
                f"target {target.name!r}: CoreML needs a static input shape (flexible H/W fails on bilinear upsampling in "
                "coremltools); build with [input] dynamic = false"
            )
        out_dims = model.graph.output[0].type.tensor_type.shape.dim
        out_shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in out_dims]
        out_dtype = "float32" if model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT else "int64"
        deployment, image = opts["deployment_target"], opts["input_type"]  # choices checked with the profile
        details: dict[str, Any] = {"format": "mlprogram", "deployment_target": deployment, "input_type": image,
                                   "source": "shared ONNX via onnx2torch + torch.jit.trace"}
        traced = _trace(model, shape)
        inputs = [self._input(ct, np, shape, image, spec, details)]
        output = ct.TensorType(name="output", dtype=np.float32 if out_dtype == "float32" else np.int32)
        precision = ct.precision.FLOAT32 if target.precision == "fp32" else ct.precision.FLOAT16
        with translate_errors("coremltools could not convert the model"), _quiet():
            ml = ct.convert(traced, inputs=inputs, outputs=[output], convert_to="mlprogram",
                            minimum_deployment_target=getattr(ct.target, deployment), compute_precision=precision)
            if target.precision == "int8":
                ml, compression = self._compress(ct, ml, self.quantization_options(target))
                details["weight_compression"] = compression
            ml.user_defined_metadata.pop("com.github.apple.coremltools.conversion_date", None)
            ml.save(str(out_dir / NET))
        make_reproducible(out_dir / NET)
        details["compute_precision"] = "fp32" if target.precision == "fp32" else "fp16"
        details["validation"] = validate_package(ct, out_dir / NET, shape, out_shape, out_dtype, image == "image")
        details["numeric_check"] = "pending: CoreML prediction runs only on macOS; run 'edgeseg verify' on a Mac"
        return ModelFiles(net=NET, files=package_files(out_dir / NET, out_dir), details=details)

    @staticmethod
    def _input(ct: Any, np: Any, shape: list[int], kind: str, spec: ModelSpec | None, details: dict[str, Any]) -> Any:
        if kind == "tensor":
            return ct.TensorType(name="input", shape=tuple(shape), dtype=np.float32)
        if spec is None:
            raise ConfigError("input_type = 'image' needs the model spec's mean/std; pass spec= to convert()")
        mean, std, color = spec.input.means(), spec.input.stds(), spec.input.color
        if spec.input.read_mode != "RGB":
            raise ConfigError(f"input_type = 'image': CoreML image inputs are 8-bit RGB/BGR; this model reads "
                              f"{spec.input.read_mode} images: use input_type = 'tensor'")
        if len(set(std)) != 1:
            raise ConfigError(
                f"input_type = 'image': CoreML's ImageType takes one scale for all channels, but the spec's std is {list(std)}; "
                "use input_type = 'tensor'"
            )
        details["image_input"] = {"mean": list(mean), "std": list(std), "color": color}
        return ct.ImageType(name="input", shape=tuple(shape), scale=1.0 / std[0], bias=[-m / std[0] for m in mean],
                            color_layout=ct.colorlayout.RGB if color == "RGB" else ct.colorlayout.BGR)

    @staticmethod
    def _compress(ct: Any, ml: Any, q: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Weight-only int8: ``q`` are the resolved ``[quantization.options]`` (mode and bits already checked)."""
        cto = ct.optimize.coreml
        if q["weight_compression"] == "linear":
            config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"))
            return cto.linear_quantize_weights(ml, config=config), {"mode": "linear_symmetric int8, per channel", "weights_only": True}
        nbits = q["nbits"]
        config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=nbits))
        return cto.palettize_weights(ml, config=config), {"mode": f"k-means palettization, {nbits} bits", "weights_only": True}


def _trace(model: Any, shape: list[int]) -> Any:
    """The shared ONNX as TorchScript (onnx2torch, folded like tflite, then ``torch.jit.trace`` at ``shape``)."""
    import torch

    with translate_errors("onnx2torch could not convert the shared ONNX"), _quiet():  # onnx2torch / tracing errors
        net = onnx_to_torch(model, extra="coreml", freeze=True)  # plain initializers, constant shapes
        with torch.no_grad():
            return torch.jit.trace(net, torch.zeros(shape, dtype=torch.float32))
