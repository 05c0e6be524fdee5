"""``edgeseg build``: model → shared ONNX → reference → convert → check → archive.

Steps, each writing into a fresh folder (inputs are never modified):

1. **export** the shared fp32 ONNX (:mod:`edgeseg.export`);
2. **reference**: run it with ONNX Runtime fp32 on the golden images (the
   outputs every target is measured against);
3. **calibrate** (int8): the calibration set through the archive's own
   pre-processing (:mod:`edgeseg.calibration`); the quantized result is cached
   (:mod:`edgeseg.cache`), so a rebuild does not recalibrate;
4. **convert** with the target's backend (:mod:`edgeseg.backends`) at the
   profile's precision (or ``precision=`` / ``--precision``);
5. **accuracy gate** (fp16/int8): the converted model and the reference over
   an evaluation set held apart from calibration (:mod:`edgeseg.accuracy`);
   a miss of the profile's budget stops the build with :class:`AccuracyError`;
6. **golden check**: run the converted model through the runtime on the golden
   images and compare with the reference using the target's tolerances; a
   failure stops the build (no archive) with :class:`VerifyError`;
7. **bundle**: ``pipeline.json``/``deploy.json``/``detail.json``, golden files,
   the runtime (and, for ``offline = true`` profiles, the device's wheels),
   ``manifest.json`` (with the measured accuracy and the release version),
   its Ed25519 signature ``manifest.sig`` when a signing key is given, then
   one deterministic ``<out>/<model>-<target>-<precision>.tar.gz``.
"""

from __future__ import annotations

import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import edgeseg_runtime
from edgeseg_runtime.archive import SCHEMA_VERSION, Archive
from edgeseg_runtime.images import iter_image_paths, load_image, save_label_map
from edgeseg_runtime.pipeline import output_labels
from edgeseg_runtime.contract import Model, PipelineSpec, parse_version
from edgeseg_runtime.runners import RUNNERS, runner_class
from edgeseg_runtime.segmentor import Segmentor
from edgeseg_runtime.verify import VerifyReport, verify_archive

from . import __version__
from ._progress import Reporter, Steps
from .accuracy import AccuracyReport, evaluate, load_eval_set, raise_if_failed
from .backends import Backend, Calibration, ModelFiles, get_backend
from .bundle import copy_runtime, pack, write_manifest
from .cache import QuantCache, cache_key
from .calibration import load_calibration
from .errors import ArchiveError, ConfigError, ConversionError, ToolchainError, VerifyError
from .export import SharedModel, export_shared
from .variants import DynamicCheck, check_dynamic_export, probe_shape, spec_at, variant_dir
from .signing import default_sign_key, load_private_key, sign_stage
from .wheels import fetch_wheels
from .pipeline import check_pipeline, make_detail, make_deploy, make_pipeline
from .spec import DATA, DEFAULT_SPEC, ModelSpec, load_spec
from .targets import Target, load_target

__all__ = ["build", "BuildResult", "DEFAULT_MODEL", "SAMPLE_IMAGES"]

#: the embedded default model (MediaPipe Selfie Segmentation, ONNX)
DEFAULT_MODEL = DATA / "models" / "selfie_segmentation" / "selfie_segmentation.onnx"
#: real photos used as golden inputs when none are given
SAMPLE_IMAGES = DATA / "images"



@dataclass(frozen=True)
class BuildResult:
    """What :func:`build` produced.

    Attributes:
        archive: path of the ``.tar.gz``.
        manifest: the manifest written into it.
        check: the build-time golden check (None when the backend cannot run on this host).
        accuracy: the accuracy gate's report (fp16/int8 builds that ran here), else None.
        calibration_cache: int8: "hit" (cached calibration result reused) or "miss"; else "".
            Not in the manifest, so a rebuild from the cache gives a byte-identical archive.
    """

    archive: Path
    manifest: dict[str, Any]
    check: VerifyReport | None
    accuracy: AccuracyReport | None = None
    calibration_cache: str = ""


def _golden_paths(golden: Sequence[str | Path] | None) -> list[Path]:
    paths = list(iter_image_paths(golden or [SAMPLE_IMAGES]))
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise ConfigError("golden images must have distinct file names (stems)")
    return paths


def _resolve_spec(model: Any, spec: ModelSpec | str | Path | None, overrides: dict[str, Any] | None) -> ModelSpec:
    if isinstance(spec, ModelSpec):
        if overrides:
            raise ConfigError("give spec overrides with a spec file or alone, not with a ModelSpec object")
        return spec
    if spec is None and model is None:
        spec = DEFAULT_SPEC
    if spec is None and not overrides:
        raise ConfigError(
            "a model spec is needed for your model: --spec FILE.toml, or flags such as --output-kind and --classes"
        )
    return load_spec(spec, overrides)


def _variant_shapes(tgt: Target, backend: Backend) -> list[tuple[int, int]]:
    """The profile's static-shape variants (``[input] shapes``); [] = the model's own size.

    Raises:
        ConfigError: batch other than 1; several shapes with what this version
            cannot combine with them (int8, a fallback, an engine built on the device).
    """
    if tgt.input.batch != 1:
        raise ConfigError(f"target {tgt.name!r}: batch = {tgt.input.batch}; this version builds batch 1")
    shapes = [(int(h), int(w)) for h, w in tgt.input.shapes]
    if len(set(shapes)) != len(shapes):
        raise ConfigError(f"target {tgt.name!r}: input.shapes lists a size twice: {tgt.input.shapes}")
    if len(shapes) > 1:
        why = ("int8 (one calibration per variant)" if tgt.precision == "int8" else
               "a fallback_backend" if tgt.fallback_backend else
               "an engine built on the device (use a dynamic model and min/opt/max shapes)" if backend.build_on == "device"
               else "")
        if why:
            raise ConfigError(f"target {tgt.name!r}: several input.shapes (static variants) with {why} are not "
                              "supported in this version; list one shape")
    return shapes


def _export(source: Any, spec: ModelSpec, tgt: Target, shapes: list[tuple[int, int]], work: Path,
            with_argmax: bool) -> tuple[list[SharedModel], DynamicCheck | None]:
    """The shared ONNX (one per static variant), and for PyTorch sources the dynamic-export check.

    Raises:
        ConfigError: a static ONNX asked for other sizes.
        ConversionError: a dynamic export (``input.dynamic``) that is wrong at a second size.
    """
    from_torch = not isinstance(source, (str, Path)) or Path(source).suffix.lower() != ".onnx"
    if not shapes:
        shareds = [export_shared(source, spec, work / "export", with_argmax=with_argmax, dynamic=tgt.input.dynamic)]
    else:
        shareds = []
        for shape in shapes:
            try:
                shareds.append(export_shared(source, spec_at(spec, shape), work / "export" / variant_dir(shape),
                                             with_argmax=with_argmax, static=True))
            except ConfigError as exc:
                raise ConfigError(f"{exc} (static-shape variant {shape[0]}x{shape[1]} of target {tgt.name!r}: "
                                  "other sizes need a PyTorch model or an ONNX with dynamic H/W)") from None
    check = None
    if from_torch and (tgt.input.dynamic or len(shapes) > 1):
        probe = probe_shape(spec_at(spec, shapes[0] if shapes else None), shapes)
        static = shareds[1] if len(shapes) > 1 else export_shared(
            source, spec_at(spec, probe), work / "probe", with_argmax=with_argmax, static=True)
        try:
            dynamic = shareds[0] if tgt.input.dynamic else export_shared(
                source, spec_at(spec, shapes[0]), work / "dynamic", with_argmax=with_argmax, dynamic=True)
            check = check_dynamic_export(dynamic.path, static.path, spec, load_image(next(iter(iter_image_paths([SAMPLE_IMAGES])))))
        except ConversionError as exc:
            check = DynamicCheck(False, probe, float("nan"), 0.0, f"the exporter refused it: {exc}")
        if tgt.input.dynamic and not check.safe:
            raise ConversionError(check.message())
    return shareds, check


def _write_golden(ref: Segmentor, images: list[Path], stage: Path, palette: list[list[int]]) -> list[dict[str, str]]:
    gdir = stage / "golden"
    gdir.mkdir()
    entries = []
    for path in images:
        rgb = load_image(path)
        result = ref.segment(rgb)
        stem = path.stem
        Image.fromarray(rgb).save(gdir / f"{stem}.png", compress_level=6)
        np.save(gdir / f"{stem}.output.npy", result.output)
        save_label_map(result.labels, gdir / f"{stem}.labels.png", palette)
        entries.append(
            {"image": f"golden/{stem}.png", "output": f"golden/{stem}.output.npy", "labels": f"golden/{stem}.labels.png"}
        )
    return entries


def build(
    model: str | Path | Any = None,
    *,
    target: str | Path | Target,
    spec: ModelSpec | str | Path | None = None,
    spec_overrides: dict[str, Any] | None = None,
    out_dir: str | Path = "dist",
    with_argmax: bool = False,
    golden: Sequence[str | Path] | None = None,
    precision: str | None = None,
    calib: Sequence[str | Path] | None = None,
    calib_count: int | None = None,
    eval_set: str | Path | None = None,
    recalibrate: bool = False,
    release_version: str | None = None,
    sign_key: str | Path | None = None,
    report: Reporter | None = None,
) -> BuildResult:
    """Build one target's archive for a model.

    Args:
        model: ONNX file, TorchScript file, or ``nn.Module``; None = the embedded default model.
        target: profile name (``targets/<name>.toml``), path, or :class:`Target`.
        spec: model spec (object, TOML path); None = the default model's spec
            when ``model`` is None.
        spec_overrides: nested keys merged over the spec (CLI flags).
        out_dir: folder for the archive.
        with_argmax: fold arg-max into the shared ONNX (labels output).
        golden: image files/folders for the golden set; None = edgeseg's sample photos.
        precision: ``fp32`` | ``fp16`` | ``int8``; None = the profile's.
        calib: calibration images (files/folders) for int8; None = the embedded
            calibration photos (:data:`edgeseg.calibration.DEFAULT_CALIBRATION`).
        calib_count: calibration images to use; None = the profile's ``calib_count``.
        eval_set: evaluation set for the accuracy gate: a folder with
            ``images/`` (+ ``masks/``) or of images; None = the golden images.
        recalibrate: ignore a cached calibration result.
        release_version: the version devices compare for updates and anti-rollback
            (dotted numbers, e.g. ``1.4.0``); None = the model spec's ``version``.
        sign_key: Ed25519 private key (``edgeseg keys new``) that signs
            ``manifest.json`` into ``manifest.sig``; None = ``$EDGESEG_SIGNING_KEY``,
            else the archive is unsigned (devices refuse unsigned archives).
        report: callback for progress lines; None = rich progress on stderr.

    Returns:
        :class:`BuildResult` with the archive path.

    Raises:
        ConfigError: unknown target, bad spec, spec/model contradiction,
            calibration images that are also evaluation images, a release
            version that is not dotted numbers, an unreadable signing key.
        ToolchainError: backend not installed or not implemented.
        ConversionError: export, conversion or quantization failed.
        AccuracyError: an fp16/int8 build misses the profile's accuracy budget (no archive).
        VerifyError: the converted model misses the target's tolerance on the golden set.
        ImageError: a golden, calibration or evaluation image cannot be read.
    """
    t0 = time.perf_counter()
    profile = target if isinstance(target, Target) else load_target(target)
    if precision is not None:  # a precision the backend cannot build is said before a missing tolerance
        get_backend(profile.model_copy(update={"precision": precision}))
    tgt = profile.with_precision(precision)
    if calib_count is not None:
        tgt = tgt.model_copy(update={"quantization": tgt.quantization.model_copy(update={"calib_count": calib_count})})
    model_spec = _resolve_spec(model, spec, spec_overrides)
    source = DEFAULT_MODEL if model is None else model
    backend = get_backend(tgt)
    tool_versions = backend.versions()
    ref_version = runner_class("onnxruntime").version()  # the reference needs onnxruntime
    images = _golden_paths(golden)
    evalset = load_eval_set(eval_set, images) if tgt.precision != "fp32" else None
    if tgt.precision == "fp32" and (calib is not None or eval_set is not None):
        raise ConfigError("--calib/--eval apply to fp16/int8 builds; this build is fp32 (use --precision)")
    palette = model_spec.output.colours()
    version = release_version or model_spec.version
    try:
        parse_version(version)
    except ArchiveError:
        raise ConfigError(
            f"release version {version[:40]!r} must be dotted ASCII numbers like 1.4.0 (at most 8 parts of 9 digits; "
            "devices compare it for updates): set version in the model spec or pass --release-version"
        ) from None
    sign_key = default_sign_key(sign_key)
    if sign_key is not None:
        load_private_key(sign_key)  # fail before the long steps, not at the end
    archive_path = Path(out_dir) / f"{model_spec.name}-{tgt.name}-{tgt.precision}.tar.gz"

    with tempfile.TemporaryDirectory(prefix="edgeseg-build-") as tmp, Steps(report) as steps, ExitStack() as stack:
        work = Path(tmp)
        stage = work / "stage"
        stage.mkdir()
        with steps.step("export shared fp32 ONNX") as step:
            shapes = _variant_shapes(tgt, backend)
            shareds, dynamic_check = _export(source, model_spec, tgt, shapes, work, with_argmax)
            shared = shareds[0]  # the primary (first listed) size
            model_spec = spec_at(model_spec, shapes[0] if shapes else None)
            pipeline = make_pipeline(model_spec, shared)
            check_pipeline(pipeline, shared, model_spec)
            step.detail = f"input {shared.input_shape} -> output {shared.output_shape} {shared.output_dtype}"
            if len(shareds) > 1:
                step.detail += f"; static variants {', '.join(f'{h}x{w}' for h, w in shapes)}"
            if dynamic_check is not None:
                step.detail += f"; {dynamic_check.message() if tgt.input.dynamic else dynamic_check.summary()}"
        variants = [(tuple(s), sh) for s, sh in zip(shapes, shareds, strict=True)] if len(shareds) > 1 else []

        model_section = {
            "name": model_spec.name,
            "version": model_spec.version,
            "description": model_spec.description,
            "license": model_spec.license,
            "classes": list(model_spec.output.classes),
            "palette": palette,
            "input": {"name": "input", "shape": shared.input_shape, "dtype": "float32", "layout": "NCHW",
                      **({"variants": [list(v) for v, _ in variants]} if variants else {})},
            "output": {
                "name": "output",
                "shape": shared.output_shape,
                "dtype": shared.output_dtype,
                "layout": "NCHW",
                "kind": "scores" if shared.output_dtype == "float32" else "labels",
            },
            "with_argmax": shared.output_dtype != "float32",
        }
        target_section = tgt.manifest_dict()

        with steps.step("reference run (ONNX Runtime fp32)") as step:
            ref = stack.enter_context(_reference(model_section, pipeline, shared, variants))
            golden_entries = _write_golden(ref, images, stage, palette)
            step.detail = f"{len(images)} golden images"

        quant_section: dict[str, Any] = {}
        cset = None
        if tgt.precision == "int8":
            assert evalset is not None
            with steps.step("calibration set") as step:
                cset = load_calibration(
                    calib, pipeline, shared.input_shape, count=tgt.quantization.calib_count,
                    seed=tgt.quantization.seed, exclude=evalset.images,
                )
                quant_section["calibration"] = {
                    "source": "edgeseg default set" if calib is None else ", ".join(str(c) for c in calib),
                    "images": [p.name for p in cset.images],
                    "count": len(cset),
                    "requested": cset.requested,
                    "seed": tgt.quantization.seed,
                    "method": tgt.quantization.calibration_method,
                    "sha256": cset.digest,
                }
                step.detail = f"{len(cset)} images ({quant_section['calibration']['source']}), sha256 {cset.digest[:12]}"
                if getattr(backend, "device_calibration", False):  # calibrated on the device (TensorRT)
                    (stage / "calibration").mkdir()
                    quant_section["device_calibration"] = cset.save_compact(stage / "calibration" / "calibration.npz")

        with steps.step(f"convert ({tgt.backend} {tgt.precision})") as step:
            calibration = None
            if cset is not None:
                assert evalset is not None
                # evaluation inputs and fp32 labels, for accuracy-controlled quantizers (only they read them)
                validation = (
                    tuple(_validation_pair(ref, p) for p in evalset.images) if tgt.quantization.max_miou_drop is not None else ()
                )
                calibration = Calibration(cset, validation, len(model_spec.output.classes), step)
            if variants:
                files, cache_state = _convert_variants(backend, tgt, variants, stage, tool_versions, model_spec), ""
            else:
                files, cache_state = _convert(backend, tgt, shared, stage, calibration, recalibrate, tool_versions, model_spec)
            step.detail = ", ".join(files.files) + (f" (calibration cache {cache_state})" if cache_state else "")

        requirement, runtime_reqs = _requirements(tgt)
        fallback = _fallback(tgt, files, shared, stage)
        manifest: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "release": {"version": version},
            "model": model_section,
            "target": target_section,
            "backend": {
                "name": tgt.backend, "net": files.net, "weights": files.weights, "requirement": requirement,
                **files.details, **({"fallback": fallback} if fallback else {}),
            },
            "golden": golden_entries,
            "runtime": {"version": edgeseg_runtime.__version__, "requirements": runtime_reqs},
            "toolchain": {
                "edgeseg": __version__,
                "onnx": _version_of("onnx"),
                "onnxruntime (reference)": ref_version,
                "numpy": np.__version__,
                "pillow": Image.__version__,
                "python": platform.python_version(),
                **tool_versions,
            },
            "provenance": {
                "source": Path(source).name if isinstance(source, (str, Path)) else type(source).__name__,
                "source_sha256": shared.source_sha256,
                "shared_onnx_sha256": shared.sha256,
                "opset": shared.opset,
                **({"exporter": shared.exporter} if shared.exporter else {}),
                "with_argmax": with_argmax,
                "dynamic": tgt.input.dynamic,
                **({"dynamic_export_check": dynamic_check.to_dict()} if dynamic_check is not None else {}),
            },
        }
        (stage / "pipeline.json").write_text(_dumps(pipeline), encoding="utf-8")
        (stage / "deploy.json").write_text(
            _dumps(make_deploy(model_spec, tgt, files.net, files.weights, tgt.input.dynamic)), encoding="utf-8"
        )
        (stage / "detail.json").write_text(_dumps(make_detail(model_spec, tgt, shared)), encoding="utf-8")
        for extra in ("LICENSE", "NOTICE"):
            src = Path(source).parent / extra if isinstance(source, (str, Path)) else None
            if src is not None and src.is_file():
                shutil.copyfile(src, stage / f"MODEL_{extra}")
        copy_runtime(stage / "runtime", edgeseg_runtime.__version__, runtime_reqs)
        if tgt.platform.offline:
            with steps.step("offline wheels for the device") as step:
                wheels = fetch_wheels(runtime_reqs, tgt, stage / "wheels")
                manifest["runtime"]["wheels"] = [w.name for w in wheels]
                step.detail = f"{len(wheels)} wheels, {sum(w.stat().st_size for w in wheels) / 1e6:.1f} MB"

        pending = _not_runnable(tgt.backend)
        write_manifest(stage, manifest)  # provisional (no gate or check results yet): opened like any archive
        staged = stack.enter_context(Archive.open(stage))
        candidate = stack.enter_context(Segmentor(staged)) if not pending else None
        accuracy: AccuracyReport | None = None
        if evalset is not None:
            with steps.step(f"accuracy gate ({tgt.precision} vs fp32)") as step:
                if candidate is not None:
                    accuracy = evaluate(
                        ref, candidate, evalset, precision=tgt.precision, classes=list(model_spec.output.classes),
                        budget=tgt.quantization.budget(), step=step,
                    )
                    quant_section["accuracy"] = accuracy.to_dict()
                    step.detail = accuracy.verdict()
                    raise_if_failed(accuracy, tgt.name)
                else:
                    quant_section["accuracy"] = {"passed": None, "verdict": pending}
                    step.detail = quant_section["accuracy"]["verdict"]
            manifest["quantization"] = quant_section

        check: VerifyReport | None = None
        with steps.step("golden check of the converted model") as step:
            if candidate is not None:
                check = verify_archive(staged, candidate, label=archive_path.name)
                manifest["build_check"] = {
                    "passed": check.passed,
                    "verdict": check.verdict(),
                    "images": [vars(c) for c in check.images],
                }
                step.detail = check.verdict()
                if not check.passed:
                    raise VerifyError(f"build stopped, no archive written: {check.verdict()}")
            else:
                manifest["build_check"] = {"passed": None, "verdict": pending}
                step.detail = manifest["build_check"]["verdict"]

        with steps.step("bundle") as step:
            manifest = write_manifest(stage, manifest)
            signed = f"signed by key {sign_stage(stage, sign_key)}" if sign_key is not None else "UNSIGNED"
            pack(stage, archive_path)
            step.detail = (
                f"{archive_path} ({archive_path.stat().st_size / 1e3:.0f} kB, {len(manifest['files'])} files, {signed})"
            )
    if report is not None:
        report(f"built in {time.perf_counter() - t0:.1f} s")
    return BuildResult(archive=archive_path, manifest=manifest, check=check, accuracy=accuracy, calibration_cache=cache_state)


def _requirements(tgt: Target) -> tuple[str, list[str]]:
    """The backend's requirement line and the runtime's pip requirements (what offline archives bundle).

    A backend the device's system provides (TensorRT from JetPack) is named but not pip-installed.
    """
    base = ["numpy>=1.24", "pillow>=10.0"]
    if tgt.backend not in RUNNERS:
        return tgt.backend, [*base, tgt.backend]
    runner = runner_class(tgt.backend)
    system = getattr(runner, "system_requirement", "")
    reqs = base if system else [*base, runner.requirement, *getattr(runner, "constraints", ())]
    if tgt.fallback_backend:
        reqs = [*reqs, runner_class(tgt.fallback_backend).requirement]
    return system or runner.requirement, reqs


def _fallback(tgt: Target, files: ModelFiles, shared: SharedModel, stage: Path) -> dict[str, Any] | None:
    """The manifest's ``backend.fallback`` for a profile with ``fallback_backend`` (ONNX Runtime on the fp32 ONNX).

    Raises:
        ConfigError: a fallback other than onnxruntime (not in this version).
    """
    if tgt.fallback_backend is None:
        return None
    if tgt.fallback_backend != "onnxruntime":
        raise ConfigError(
            f"target {tgt.name!r}: fallback_backend = {tgt.fallback_backend!r}; this version falls back to onnxruntime only"
        )
    net = files.net if files.net.endswith(".onnx") else "fallback/end2end.onnx"
    if net not in files.files:
        (stage / "fallback").mkdir(exist_ok=True)
        shutil.copyfile(shared.path, stage / net)
    return {"name": "onnxruntime", "net": net, "weights": "", "options": dict(tgt.fallback_options),
            "requirement": runner_class("onnxruntime").requirement}


def _reference(model_section: dict[str, Any], pipeline: dict[str, Any], shared: SharedModel,
               variants: list[tuple[tuple[int, ...], SharedModel]]) -> Segmentor:
    """The fp32 ONNX Runtime reference: the shared ONNX (and its static variants) behind the archive's own pipeline."""
    from edgeseg_runtime.runners.onnxruntime import OnnxRuntimeRunner

    model = Model.from_doc(model_section)
    spec = PipelineSpec.from_doc(pipeline)
    runners: dict[Any, Any] = {}
    for (h, w), variant in variants:
        runners[(h, w)] = OnnxRuntimeRunner(variant.path.parent, {"net": variant.path.name}, {})
    if not runners:
        runners[None] = OnnxRuntimeRunner(shared.path.parent, {"net": shared.path.name}, {})
    return Segmentor.from_parts(model, spec, runners)


def _not_runnable(backend: str) -> str:
    """Why the target's backend cannot run on this host ("" when it can): the runner's own message."""
    try:
        runner_class(backend).version()
        return ""
    except ToolchainError as exc:
        return f"pending: {backend} does not run on this host ({exc})"


def _validation_pair(ref: Segmentor, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(network input, fp32 reference labels at the network's output size) for one evaluation image."""
    tensor = ref.prepare(load_image(path))
    return tensor, output_labels(ref.infer(tensor))


def _convert(
    backend: Backend,
    tgt: Target,
    shared: SharedModel,
    stage: Path,
    calibration: Calibration | None,
    recalibrate: bool,
    tool_versions: dict[str, str],
    spec: ModelSpec | None = None,
) -> tuple[ModelFiles, str]:
    """Run the backend; for int8, through the quantization cache. Returns the files and "hit"/"miss"/""."""
    extra = {"spec": spec} if getattr(backend, "wants_spec", False) else {}
    if calibration is None:
        return backend.convert(shared.path, tgt, stage, **extra), ""
    q = tgt.quantization
    parts = {
        "shared_onnx_sha256": shared.sha256,
        "calibration_sha256": calibration.images.digest,
        "backend": tgt.backend,
        "versions": {**tool_versions, "edgeseg": __version__},
        "precision": tgt.precision,
        "quantization": q.model_dump(mode="json", exclude={"min_pixel_agreement"}),
        "validation": _digest_pairs(calibration.validation) if calibration.validation else None,
    }
    key = cache_key(parts)
    cache = QuantCache()
    cached = None if recalibrate else cache.fetch(key, stage)
    if cached is not None:
        return cached, "hit"
    files = backend.convert(shared.path, tgt, stage, calibration, **extra)
    cache.store(key, stage, files, parts)
    return files, "miss"


def _convert_variants(
    backend: Backend, tgt: Target, variants: list[tuple[tuple[int, int], SharedModel]], stage: Path,
    tool_versions: dict[str, str], spec: ModelSpec,
) -> ModelFiles:
    """Convert each static-shape variant into ``variants/<H>x<W>/``; the first is the primary model."""
    entries: list[dict[str, Any]] = []
    paths: list[str] = []
    for shape, shared in variants:
        folder = variant_dir(shape)
        (stage / folder).mkdir(parents=True)
        files, _ = _convert(backend, tgt, shared, stage / folder, None, False, tool_versions, spec_at(spec, shape))
        paths += [f"{folder}/{f}" for f in files.files]
        entries.append({"shape": list(shape), "net": f"{folder}/{files.net}",
                        "weights": f"{folder}/{files.weights}" if files.weights else "", **files.details})
    first = entries[0]
    details = {k: v for k, v in first.items() if k not in ("shape", "net", "weights")}
    return ModelFiles(net=first["net"], weights=first["weights"], files=tuple(paths), details={**details, "variants": entries})


def _digest_pairs(pairs: tuple[tuple[np.ndarray, np.ndarray], ...]) -> str:
    import hashlib

    h = hashlib.sha256()
    for tensor, labels in pairs:
        h.update(tensor.tobytes())
        h.update(labels.astype(np.int64).tobytes())
    return h.hexdigest()


def _dumps(doc: Any) -> str:
    import json

    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def _version_of(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except ImportError:
        return "not installed"
