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

import importlib.metadata
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import edgeseg_runtime
from edgeseg_runtime.archive import SCHEMA_VERSION, Archive
from edgeseg_runtime.contract import (GOLDEN_SAMPLES, GOLDEN_STEP, Golden, GoldenSample, Model, PipelineSpec, RuntimeInfo,
                                     TensorSpec, parse_version)
from edgeseg_runtime.images import iter_image_paths, load_image, save_image, save_label_map
from edgeseg_runtime.pipeline import output_labels
from edgeseg_runtime.runners import REGISTRY, runner_class
from edgeseg_runtime.segmentor import Segmentor
from edgeseg_runtime.verify import VerifyReport, verify_archive

from ._version import __version__
from ._progress import Reporter, Step, Steps
from .accuracy import AccuracyReport, evaluate, load_eval_set, raise_if_failed, score_labels
from .backends import Backend, Calibration, ModelFiles, get_backend, translate_errors
from .bundle import copy_runtime, pack, write_manifest
from .cache import QuantCache, cache_key
from .calibration import CalibrationSet, load_calibration
from .datasets import Dataset
from .errors import ArchiveError, ConfigError, ConversionError, EdgesegError, ToolchainError, VerifyError
from .export import SharedModel, export_shared, source_kind, spec_defaults
from .variants import DynamicCheck, check_dynamic_export, probe_shape, spec_at, variant_dir
from .signing import default_sign_key, load_private_key, sign_stage
from .wheels import fetch_wheels
from .pipeline import check_pipeline, make_detail, make_deploy, make_pipeline
from .spec import DATA, DEFAULT_SPEC, ModelSpec, load_spec
from .targets import Target, load_target

__all__ = ["build", "plan_build", "BuildPlan", "BuildResult", "DEFAULT_MODEL", "SAMPLE_IMAGES"]

#: the embedded default model (MediaPipe Selfie Segmentation, ONNX)
DEFAULT_MODEL = DATA / "models" / "selfie_segmentation" / "selfie_segmentation.onnx"
#: real photos used as golden inputs when none are given
SAMPLE_IMAGES = DATA / "images"



@dataclass(frozen=True, repr=False)
class BuildResult:
    """What :func:`build` produced.

    Its ``repr`` is one short line (archive, target, precision, the accuracy
    gate's and the golden check's verdicts); the manifest is ``result.manifest``.

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

    def __repr__(self) -> str:
        """``BuildResult(archive='dist/m-cpu-fp32.tar.gz', target='cpu', precision='fp32', gate=None, check='PASS')``.

        ``gate``: the accuracy gate, None when it did not run (fp32, or a backend
        that cannot run here); ``check``: the golden check, None when pending.
        """
        from edgeseg_runtime.contract import Manifest

        try:
            target = Manifest.from_doc(self.manifest).target
            name, precision = target.name, target.precision
        except EdgesegError:  # a hand-made or partial manifest: the repr never raises
            name = precision = None

        def verdict(report: Any) -> str | None:
            return None if report is None else ("PASS" if report.passed else "FAIL")

        return (f"BuildResult(archive={str(self.archive)!r}, target={name!r}, "
                f"precision={precision!r}, gate={verdict(self.accuracy)!r}, check={verdict(self.check)!r})")


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
    # a missing model file is said before a missing spec; the file's name and the graph's layouts fill the
    # keys the spec leaves out
    defaults = spec_defaults(model) if isinstance(model, (str, Path)) else {}
    if spec is None and not overrides:
        raise ConfigError(
            "a model spec is needed for your model: --spec FILE.toml, or flags such as --output-kind and --classes"
        )
    return load_spec(spec, overrides, defaults)


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
               "an engine built on the device (use a dynamic model and min/opt/max shapes)"
               if backend.capabilities.build_on == "device"
               else "")
        if why:
            raise ConfigError(f"target {tgt.name!r}: several input.shapes (static variants) with {why} are not "
                              "supported in this version; list one shape")
    return shapes


def _export(source: Any, spec: ModelSpec, tgt: Target, shapes: list[tuple[int, int]], work: Path,
            with_argmax: bool, static: bool = False) -> tuple[list[SharedModel], DynamicCheck | None]:
    """The shared ONNX (one per static variant), and for PyTorch sources the dynamic-export check.

    Raises:
        ConfigError: a static ONNX asked for other sizes.
        ConversionError: a dynamic export (``input.dynamic``) that is wrong at a second size.
    """
    from_torch = source_kind(source) == "torch"
    if not shapes:
        shareds = [export_shared(source, spec, work / "export", with_argmax=with_argmax, dynamic=tgt.input.dynamic,
                                 static=static)]
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
            photo = next(iter(iter_image_paths([SAMPLE_IMAGES])))
            check = check_dynamic_export(dynamic.path, static.path, spec, load_image(photo, mode=spec.input.read_mode))
        except ConversionError as exc:
            check = DynamicCheck(False, probe, float("nan"), 0.0, f"the exporter refused it: {exc}")
        if tgt.input.dynamic and not check.safe:
            raise ConversionError(check.message())
    return shareds, check


@dataclass(frozen=True)
class BuildPlan:
    """A build's inputs, resolved and checked before any long step (see :func:`plan_build`).

    Attributes:
        source: ONNX/TorchScript path or ``nn.Module`` (the default model's ONNX when none was given).
        spec: the model spec (at the model's own size).
        target: the profile at the build's precision (its tolerance flattened to that precision).
        backend: the target's host backend.
        golden: golden image files (distinct stems).
        evalset: the accuracy gate's evaluation set (fp16/int8), else None.
        calib: int8 calibration images as given (None = the embedded set).
        recalibrate: ignore a cached calibration result.
        with_argmax: fold arg-max into the shared ONNX.
        version: the release version (checked dotted numbers).
        sign_key: Ed25519 private key file, or None (unsigned).
        archive: where the ``.tar.gz`` goes.
        tool_versions: the backend toolchain's versions; ``reference_version``: ONNX Runtime's.
        search: run the mixed-precision search when int8 misses the budget (:mod:`edgeseg.mixed_precision`).
    """

    source: Any
    spec: ModelSpec
    target: Target
    backend: Backend
    golden: tuple[Path, ...]
    evalset: Dataset | None
    calib: Sequence[str | Path] | None
    recalibrate: bool
    with_argmax: bool
    version: str
    sign_key: str | Path | None
    archive: Path
    tool_versions: dict[str, str]
    reference_version: str
    search: bool = True


@dataclass(frozen=True)
class Exported:
    """Step 1: the shared fp32 ONNX (one per static-shape variant), its pipeline and model section."""

    shared: SharedModel
    variants: list[tuple[tuple[int, int], SharedModel]]
    spec: ModelSpec
    pipeline: dict[str, Any]
    model: Model
    dynamic_check: DynamicCheck | None


@dataclass(frozen=True)
class Calibrated:
    """Step 3 (int8): the calibration set and its manifest section (``quantization.calibration``)."""

    images: CalibrationSet
    section: dict[str, Any]
    device_calibration: dict[str, Any] | None


@dataclass(frozen=True)
class Converted:
    """Step 4: the target's model files (in the stage) and whether the quantization cache answered."""

    files: ModelFiles
    cache_state: str
    search: dict[str, Any] | None = None  # the manifest's quantization.search (int8 through the gate)
    best_of: str = ""  # "best of N trials: " when a search did not meet the budget


def plan_build(
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
    search: bool = True,
) -> BuildPlan:
    """Resolve and check everything :func:`build` needs, so a bad input fails before the long steps.

    Arguments are :func:`build`'s. Raises what :func:`build` raises for bad inputs.
    """
    profile = target if isinstance(target, Target) else load_target(target)
    if precision is not None:  # a precision the backend cannot build is said before a missing tolerance
        get_backend(profile.model_copy(update={"precision": precision}))
    tgt = profile.with_precision(precision)
    if tgt.backend_options.get("inference_precision") == "auto" and tgt.precision != "fp16":
        # OpenVINO "auto" (fp16 compute where native) is for fp16 archives; fp32/int8 compute in f32 (targets/intel.toml)
        tgt = tgt.model_copy(update={"backend_options": {**tgt.backend_options, "inference_precision": "f32"}})
    if calib_count is not None:
        tgt = tgt.model_copy(update={"quantization": tgt.quantization.model_copy(update={"calib_count": calib_count})})
    model_spec = _resolve_spec(model, spec, spec_overrides)
    if model_spec.inference.mode == "slide" and (tgt.precision == "int8" or len(tgt.input.shapes) > 1):
        raise ConfigError("inference.mode = 'slide' builds fp32 or fp16 with one input size in this version "
                          f"(target {tgt.name!r} asks for {'int8' if tgt.precision == 'int8' else 'several input.shapes'})")
    own = [k for k in model_spec.quantization.keep_float.get(tgt.backend, []) if k not in tgt.quantization.keep_float]
    if own and tgt.precision != "fp32":  # the model's own float choices join the profile's (model-independent) ones
        tgt = tgt.model_copy(update={"quantization": tgt.quantization.model_copy(
            update={"keep_float": [*tgt.quantization.keep_float, *own]})})
    backend = get_backend(tgt)
    tool_versions = backend.versions()
    reference_version = runner_class("onnxruntime").version()  # the reference needs onnxruntime
    images = _golden_paths(golden)
    evalset = load_eval_set(eval_set, images) if tgt.precision != "fp32" else None
    if tgt.precision == "fp32" and (calib is not None or eval_set is not None):
        raise ConfigError("--calib/--eval apply to fp16/int8 builds; this build is fp32 (use --precision)")
    version = release_version or model_spec.version
    try:
        parse_version(version)
    except ArchiveError:
        raise ConfigError(
            f"release version {version[:40]!r} must be dotted ASCII numbers like 1.4.0 (at most 8 parts of 9 digits; "
            "devices compare it for updates): set version in the model spec or pass --release-version"
        ) from None
    key = default_sign_key(sign_key)
    if key is not None:
        load_private_key(key)  # fail before the long steps, not at the end
    return BuildPlan(
        source=DEFAULT_MODEL if model is None else model, spec=model_spec, target=tgt, backend=backend,
        golden=tuple(images), evalset=evalset, calib=calib, recalibrate=recalibrate, with_argmax=with_argmax,
        version=version, sign_key=key, archive=Path(out_dir) / f"{model_spec.name}-{tgt.name}-{tgt.precision}.tar.gz",
        tool_versions=tool_versions, reference_version=reference_version, search=search,
    )


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
    search: bool = True,
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
            ``images/`` (+ ``masks/``) or of images; None = the shipped default
            set (:data:`edgeseg.accuracy.DEFAULT_EVAL`).
        recalibrate: ignore a cached calibration result.
        release_version: the version devices compare for updates and anti-rollback
            (dotted numbers, e.g. ``1.4.0``); None = the model spec's ``version``.
        sign_key: Ed25519 private key (``edgeseg keys new``) that signs
            ``manifest.json`` into ``manifest.sig``; None = ``$EDGESEG_SIGNING_KEY``,
            else the archive is unsigned (devices refuse unsigned archives).
        search: when an int8 model misses the accuracy budget, search for the
            fewest layers to keep in float (:mod:`edgeseg.mixed_precision`); False = ``--no-search``.
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
    plan = plan_build(
        model, target=target, spec=spec, spec_overrides=spec_overrides, out_dir=out_dir, with_argmax=with_argmax,
        golden=golden, precision=precision, calib=calib, calib_count=calib_count, eval_set=eval_set,
        recalibrate=recalibrate, release_version=release_version, sign_key=sign_key, search=search,
    )
    tgt = plan.target
    with tempfile.TemporaryDirectory(prefix="edgeseg-build-") as tmp, Steps(report) as steps, ExitStack() as stack:
        work = Path(tmp)
        with steps.step("export shared fp32 ONNX") as step:
            exported = export_step(plan, work / "export")
            step.detail = _export_detail(exported, tgt)
        with steps.step("reference run (ONNX Runtime fp32)") as step:
            ref = stack.enter_context(_reference(exported))
            golden_entries = golden_step(ref, plan.golden, exported.model, work / "golden")
            step.detail = f"{len(golden_entries)} golden images"
        calibrated = None
        if tgt.precision == "int8":
            with steps.step("calibration set") as step:
                calibrated = calibration_step(plan, exported, work / "calibration")
                step.detail = (f"{len(calibrated.images)} images ({calibrated.section['source']}), "
                               f"sha256 {calibrated.images.digest[:12]}")
        with steps.step(f"convert ({tgt.backend} {tgt.precision})") as step:
            converted = convert_step(plan, exported, calibrated, ref, work / "model", step)
            step.detail = ", ".join(converted.files.files) + (
                f" (calibration cache {converted.cache_state})" if converted.cache_state else "")
            if converted.search is not None and "method" in converted.search:
                step.detail += f"; mixed precision: {converted.search['summary']}"
        stage = work / "stage"
        draft = stage_step(plan, exported, golden_entries, calibrated, converted, [work / "golden", work / "model",
                                                                                  work / "calibration"], stage, steps)
        pending = _not_runnable(tgt.backend)
        staged = stack.enter_context(Archive.open(stage))  # the stage opened like any archive (provisional manifest)
        candidate = stack.enter_context(Segmentor(staged)) if not pending else None
        quantization = None
        accuracy: AccuracyReport | None = None
        if plan.evalset is not None:
            with steps.step(f"accuracy gate ({tgt.precision} vs fp32)") as step:
                accuracy = gate_step(plan, ref, candidate, step, converted.best_of)
                quantization = _quantization_section(calibrated, accuracy, pending, converted.search)
                step.detail = quantization["accuracy"]["verdict"]
        with steps.step("golden check of the converted model") as step:
            check = check_step(staged, candidate, plan.archive.name)
            build_check = _check_section(check, pending)
            step.detail = build_check["verdict"]
        with steps.step("bundle") as step:
            manifest, signed = bundle_step(plan, stage, {**draft, **({"quantization": quantization} if quantization
                                                                     is not None else {}), "build_check": build_check})
            step.detail = (f"{plan.archive} ({plan.archive.stat().st_size / 1e3:.0f} kB, {len(manifest['files'])} files, "
                           f"{signed})")
    if report is not None:
        report(f"built in {time.perf_counter() - t0:.1f} s")
    return BuildResult(archive=plan.archive, manifest=manifest, check=check, accuracy=accuracy,
                       calibration_cache=converted.cache_state)


# ------------------------------------------------------------------------------------------------ steps
def export_step(plan: BuildPlan, out: Path) -> Exported:
    """Step 1: the shared fp32 ONNX into ``out`` (one per static variant), checked against the spec.

    Raises:
        ConfigError: the spec contradicts the graph, or variants the model cannot give.
        ConversionError: the export failed, or a dynamic export is wrong at a second size.
    """
    tgt = plan.target
    shapes = _variant_shapes(tgt, plan.backend)
    shareds, dynamic_check = _export(plan.source, plan.spec, tgt, shapes, out, plan.with_argmax,
                                     static=plan.backend.capabilities.static_shapes and not tgt.input.dynamic)
    shared = shareds[0]  # the primary (first listed) size
    spec = spec_at(plan.spec, shapes[0] if shapes else None)
    pipeline = make_pipeline(spec, shared)
    check_pipeline(pipeline, shared, spec)
    variants = [(s, sh) for s, sh in zip(shapes, shareds)] if len(shareds) > 1 else []
    model = Model(
        name=spec.name, version=spec.version, description=spec.description, license=spec.license,
        classes=tuple(spec.output.classes), palette=tuple(tuple(rgb) for rgb in spec.output.colours()),  # type: ignore[misc]
        input=TensorSpec("input", tuple(shared.input_shape), "float32", "NCHW"),
        output=TensorSpec("output", tuple(shared.output_shape), shared.output_dtype, "NCHW",
                          "scores" if shared.output_dtype == "float32" else "labels"),
        with_argmax=shared.output_dtype != "float32", variants=tuple(s for s, _ in variants),
    )
    return Exported(shared, variants, spec, pipeline, model, dynamic_check)


def _export_detail(exported: Exported, tgt: Target) -> str:
    shared = exported.shared
    detail = f"input {shared.input_shape} -> output {shared.output_shape} {shared.output_dtype}"
    if exported.variants:
        detail += f"; static variants {', '.join(f'{h}x{w}' for (h, w), _ in exported.variants)}"
    if exported.dynamic_check is not None:
        check = exported.dynamic_check
        detail += f"; {check.message() if tgt.input.dynamic else check.summary()}"
    return detail


def golden_step(ref: Segmentor, images: Sequence[Path], model: Model, out: Path) -> tuple[Golden, ...]:
    """Step 2: the golden images and the fp32 reference's outputs and label maps, into ``out/golden``."""
    gdir = out / "golden"
    gdir.mkdir(parents=True)
    palette = [list(rgb) for rgb in model.palette]
    entries = []
    for path in images:
        rgb = ref.load(path)
        result = ref.segment(rgb)
        stem = path.stem
        image = save_image(rgb, gdir / f"{stem}.png")  # as read: 16-bit stays 16-bit, float goes to TIFF
        output, sample = result.output, None
        if output.size > GOLDEN_SAMPLES:  # a compact golden: fixed samples of a large output (GoldenSample)
            sample = GoldenSample(tuple(int(d) for d in output.shape), GOLDEN_SAMPLES, GOLDEN_STEP)
            output = np.ascontiguousarray(output.reshape(-1)[sample.indices()])
        np.save(gdir / f"{stem}.output.npy", output)
        save_label_map(result.labels, gdir / f"{stem}.labels.png", palette)
        entries.append(Golden(f"golden/{image.name}", f"golden/{stem}.output.npy", f"golden/{stem}.labels.png", sample))
    return tuple(entries)


def calibration_step(plan: BuildPlan, exported: Exported, out: Path) -> Calibrated:
    """Step 3 (int8): the calibration set through the archive's own pre-processing, held apart from evaluation.

    Backends that calibrate on the device (TensorRT) get the resized images in
    ``out/calibration/calibration.npz``.
    """
    assert plan.evalset is not None
    q = plan.target.quantization
    cset = load_calibration(plan.calib, exported.pipeline, exported.shared.input_shape, count=q.calib_count,
                            seed=q.seed, exclude=plan.evalset.images)
    section = {
        "source": "edgeseg default set" if plan.calib is None else ", ".join(str(c) for c in plan.calib),
        "images": [p.name for p in cset.images],
        "count": len(cset),
        "requested": cset.requested,
        "seed": q.seed,
        "method": q.calibration_method,
        "sha256": cset.digest,
    }
    device = None
    if plan.backend.capabilities.device_calibration:  # calibrated on the device (TensorRT)
        (out / "calibration").mkdir(parents=True)
        device = cset.save_compact(out / "calibration" / "calibration.npz")
    return Calibrated(cset, section, device)


def convert_step(plan: BuildPlan, exported: Exported, calibrated: Calibrated | None, ref: Segmentor, out: Path,
                 step: Step) -> Converted:
    """Step 4: the target's model files into ``out`` (int8 through the quantization cache)."""
    tgt = plan.target
    out.mkdir(parents=True)
    calibration = None
    if calibrated is not None:
        calibration = Calibration(calibrated.images, (), len(exported.spec.output.classes), step)
    if exported.variants:
        return Converted(_convert_variants(plan.backend, tgt, exported.variants, out, plan.tool_versions, exported.spec), "")
    files, state = _convert(plan.backend, tgt, exported.shared, out, calibration, plan.recalibrate, plan.tool_versions,
                            exported.spec)
    if calibration is None or plan.evalset is None or _not_runnable(tgt.backend):
        return Converted(files, state)
    if not plan.search:
        return Converted(files, state, {"enabled": False})
    return _search_step(plan, exported, calibration, ref, out, files, state, step)


def _search_step(plan: BuildPlan, exported: Exported, calibration: Calibration, ref: Segmentor, out: Path,
                 files: ModelFiles, state: str, step: Step) -> Converted:
    """Step 4b (int8): the gate on the converted model; when it misses, the mixed-precision search.

    The fewest layers kept in float that meet the budget (:mod:`edgeseg.mixed_precision`):
    the chosen model replaces ``out``'s files. The outcome is cached next to the
    calibration cache, keyed by everything it depends on.
    """
    from . import mixed_precision as mp

    tgt, evalset = plan.target, plan.evalset
    assert evalset is not None
    classes = list(exported.spec.output.classes)
    ref_maps = [ref.segment(ref.load(p)).labels for p in evalset.images]

    def gate(folder: Path, got: ModelFiles) -> AccuracyReport:
        with _candidate(exported, tgt, folder, got) as cand:
            maps = [cand.segment(cand.load(p)).labels for p in evalset.images]
        return score_labels(ref_maps, maps, evalset, precision=tgt.precision, classes=classes,
                            budget=tgt.quantization.budget())

    step.say("accuracy of the int8 model")
    first = gate(out, files)
    if first.passed:
        return Converted(files, state, {"needed": False, "verdict": first.verdict()})
    parts = {  # everything the chosen float set depends on: the int8 model, the candidate's runner, the fp32 labels
        "model": _cache_parts(tgt, exported.shared, calibration, plan.tool_versions),
        "backend_options": dict(tgt.backend_options), "reference_version": plan.reference_version,
        "pipeline": exported.pipeline, "classes": classes, "budget": tgt.quantization.budget(),
        "eval": [evalset.digest, evalset.reduce_zero_label], "search": 2,  # the digest covers the label map
    }
    if tgt.backend == "openvino":
        parts["nncf"] = importlib.metadata.version("nncf")
    key = cache_key(parts)
    cached = QuantCache().fetch_json(f"search-{key}") if not plan.recalibrate else None
    try:
        restored = mp.SearchOutcome.from_dict(cached) if cached is not None else None
    except (KeyError, TypeError, ValueError):  # a damaged cache entry: search again
        restored = None
    trial_n = 0

    def convert_with(target: Target, cal: Calibration | None) -> tuple[Path, ModelFiles]:
        nonlocal trial_n
        trial_n += 1
        folder = out.parent / f"{out.name}-trial{trial_n}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        got, _ = _convert(plan.backend, target, exported.shared, folder, cal, plan.recalibrate, plan.tool_versions,
                          exported.spec)
        return folder, got

    def with_float(nodes: list[str]) -> Target:
        q = tgt.quantization
        return tgt.model_copy(update={"quantization": q.model_copy(update={"keep_float": [*q.keep_float, *nodes]})})

    outcome: mp.SearchOutcome
    if restored is not None:
        outcome = restored
        chosen_target, chosen_cal = with_float(outcome.kept_float), calibration
        if tgt.backend == "openvino":  # NNCF chose its float set: the same run again (a quantization cache hit)
            chosen_target = tgt
            chosen_cal = replace(calibration, validation=tuple(_validation_pair(ref, p) for p in evalset.images))
        folder, got = convert_with(chosen_target, chosen_cal)
    elif tgt.backend in ("onnxruntime", "tflite"):
        step.say(f"mixed precision: ranking layers (int8: worst class {first.worst_class} IoU {first.worst_class_iou:.3f})")
        inputs = [ref.prepare(ref.load(p)) for p in evalset.images[: mp.RANK_IMAGES]]
        if tgt.backend == "onnxruntime":
            with translate_errors("mixed-precision ranking (ONNX Runtime) failed"):
                ranking = mp.rank_activations(out / files.net, inputs, exported.model.input.name)
        else:  # the float model's op outputs, quantized as the int8 model does
            float_dir, float_files = convert_with(tgt.model_copy(update={"precision": "fp32"}), None)
            with translate_errors("mixed-precision ranking (LiteRT) failed"):
                ranking = mp.rank_tflite_ops(float_dir / float_files.net, out / files.net, inputs)
        if not ranking:
            return Converted(files, state, {"method": "none", "passed": False, "first": first.verdict(),
                                            "summary": "no quantized activation left to keep in float"},
                             best_of="mixed precision found no quantized activation left to keep in float: ")
        folders: dict[tuple[str, ...], tuple[Path, ModelFiles]] = {}

        def trial(nodes: list[str]) -> AccuracyReport:
            folders[tuple(nodes)] = convert_with(with_float(nodes), calibration)
            return gate(*folders[tuple(nodes)])

        outcome, chosen, _ = mp.search(ranking, trial, report=lambda line: step.say(f"mixed precision: {line}"))
        folder, got = folders[tuple(chosen)]
    elif tgt.backend == "openvino":  # NNCF's accuracy control, driven by the gate's own budget
        t0 = time.perf_counter()
        step.say("mixed precision: NNCF accuracy control (minutes)")
        cal = replace(calibration, validation=tuple(_validation_pair(ref, p) for p in evalset.images))
        folder, got = convert_with(tgt, cal)
        rep = gate(folder, got)
        from .backends.openvino import fake_quantize_names

        kept_now = set(fake_quantize_names(folder / got.net))  # the quantizers NNCF reverted: kept in float
        kept = [name for name in fake_quantize_names(out / files.net) if name not in kept_now]
        outcome = mp.SearchOutcome("nncf accuracy control", kept,
                                   [mp.trial_of(0, len(kept), rep, time.perf_counter() - t0)], rep.passed,
                                   time.perf_counter() - t0)
    else:
        return Converted(files, state, {"method": "none", "passed": False, "summary": f"{tgt.backend}: no search"},
                         best_of=f"no mixed-precision search for {tgt.backend}: ")
    if restored is None:
        QuantCache().store_json(f"search-{key}", outcome.to_dict())
    shutil.rmtree(out)
    shutil.copytree(folder, out)
    for extra in out.parent.glob(f"{out.name}-trial*"):
        shutil.rmtree(extra, ignore_errors=True)
    section = {**outcome.to_dict(), "first": first.verdict(), "summary": outcome.summary()}
    best = "" if outcome.passed else f"best of {len(outcome.trials)} mixed-precision trials ({outcome.method}): "
    return Converted(got, state, section, best)


@contextmanager
def _candidate(exported: Exported, tgt: Target, folder: Path, files: ModelFiles) -> Iterator[Segmentor]:
    """The converted model behind the archive's own pipeline, run by the target's runner (no archive needed)."""
    runner = runner_class(tgt.backend)(folder, {"net": files.net, "weights": files.weights}, dict(tgt.backend_options))
    with Segmentor.from_parts(exported.model, PipelineSpec.from_doc(exported.pipeline), {None: runner}) as seg:
        yield seg


def stage_step(plan: BuildPlan, exported: Exported, golden: tuple[Golden, ...], calibrated: Calibrated | None,
               converted: Converted, parts: list[Path], stage: Path, steps: Steps) -> dict[str, Any]:
    """Step 5: the archive folder: the steps' files, pipeline/deploy/detail, licences, runtime, wheels, and a
    provisional ``manifest.json`` (no gate or check results yet) so the stage opens like any archive.

    Returns:
        The manifest document without ``files``, ``quantization`` and ``build_check``.
    """
    tgt, spec, files = plan.target, exported.spec, converted.files
    stage.mkdir()
    for part in parts:
        if part.is_dir():
            shutil.copytree(part, stage, dirs_exist_ok=True)
    requirement, runtime_reqs = _requirements(tgt)
    backend = {"name": tgt.backend, "net": files.net, "weights": files.weights, "requirement": requirement,
               **files.details}
    fallback = _fallback(tgt, files, exported.shared, stage)
    if fallback:
        backend["fallback"] = fallback
    (stage / "pipeline.json").write_text(_dumps(exported.pipeline), encoding="utf-8")
    (stage / "deploy.json").write_text(
        _dumps(make_deploy(spec, tgt, files.net, files.weights, tgt.input.dynamic)), encoding="utf-8")
    (stage / "detail.json").write_text(_dumps(make_detail(spec, tgt, exported.shared)), encoding="utf-8")
    for extra in ("LICENSE", "NOTICE"):
        src = Path(plan.source).parent / extra if isinstance(plan.source, (str, Path)) else None
        if src is not None and src.is_file():
            shutil.copyfile(src, stage / f"MODEL_{extra}")
    copy_runtime(stage / "runtime", edgeseg_runtime.__version__, runtime_reqs)
    wheels: tuple[str, ...] = ()
    cross_build: list[dict[str, Any]] = []
    if tgt.platform.offline:
        with steps.step("offline wheels for the device") as step:
            params = sorted(stage.rglob("*.param")) if tgt.backend == "ncnn" else None  # static variants' too
            paths, cross_build = fetch_wheels(runtime_reqs, tgt, stage / "wheels", params, step.say)
            wheels = tuple(w.name for w in paths)
            step.detail = (f"{len(paths)} wheels, {sum(w.stat().st_size for w in paths) / 1e6:.1f} MB"
                           + (f", {len(cross_build)} made here" if cross_build else ""))
    draft = {
        "schema_version": SCHEMA_VERSION,
        "release": {"version": plan.version},
        "model": exported.model.to_doc(),
        "target": tgt.manifest_dict(),
        "backend": backend,
        "golden": [g.to_doc() for g in golden],
        "runtime": RuntimeInfo(edgeseg_runtime.__version__, tuple(runtime_reqs), wheels).to_doc(),
        "toolchain": _toolchain(plan),
        **({"cross_build": cross_build} if cross_build else {}),
        "provenance": _provenance(plan, exported),
        **({"quantization": {"device_calibration": calibrated.device_calibration}}
           if calibrated is not None and calibrated.device_calibration is not None else {}),
    }
    write_manifest(stage, draft)
    return draft


def gate_step(plan: BuildPlan, ref: Segmentor, candidate: Segmentor | None, step: Step,
              best_of: str = "") -> AccuracyReport | None:
    """Step 6 (fp16/int8): the converted model against the fp32 reference on the evaluation set.

    Returns:
        The report, or None when the backend cannot run on this host (the gate is pending).

    Raises:
        AccuracyError: the profile's budget is missed (no archive is written).
    """
    if candidate is None:
        return None
    assert plan.evalset is not None
    tgt = plan.target
    accuracy = evaluate(ref, candidate, plan.evalset, precision=tgt.precision, classes=list(plan.spec.output.classes),
                        budget=tgt.quantization.budget(), step=step)
    raise_if_failed(accuracy, tgt.name, best_of, tgt.backend)
    return accuracy


def check_step(staged: Archive, candidate: Segmentor | None, label: str) -> VerifyReport | None:
    """Step 7: the converted model through the runtime on the golden images, within the target's tolerances.

    Returns:
        The report, or None when the backend cannot run on this host (the check is pending).

    Raises:
        VerifyError: the tolerance is missed (no archive is written).
    """
    if candidate is None:
        return None
    check = verify_archive(staged, candidate, label=label)
    if not check.passed:
        raise VerifyError(f"build stopped, no archive written: {check.verdict()}")
    return check


def bundle_step(plan: BuildPlan, stage: Path, manifest: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Step 8: the final ``manifest.json``, its signature, and the deterministic ``.tar.gz``.

    Returns:
        The manifest as written, and "signed by key K" or "UNSIGNED".
    """
    written = write_manifest(stage, manifest)
    signed = f"signed by key {sign_stage(stage, plan.sign_key)}" if plan.sign_key is not None else "UNSIGNED"
    pack(stage, plan.archive)
    return written, signed


def _quantization_section(calibrated: Calibrated | None, accuracy: AccuracyReport | None, pending: str,
                          search: dict[str, Any] | None = None) -> dict[str, Any]:
    section: dict[str, Any] = {}
    if calibrated is not None:
        section["calibration"] = calibrated.section
        if calibrated.device_calibration is not None:
            section["device_calibration"] = calibrated.device_calibration
    if search is not None:
        section["search"] = {k: v for k, v in search.items() if k != "summary"}
    section["accuracy"] = accuracy.to_dict() if accuracy is not None else {"passed": None, "verdict": pending}
    return section


def _check_section(check: VerifyReport | None, pending: str) -> dict[str, Any]:
    if check is None:
        return {"passed": None, "verdict": pending}
    return {"passed": check.passed, "verdict": check.verdict(), "images": [vars(c) for c in check.images]}


def _toolchain(plan: BuildPlan) -> dict[str, str]:
    return {
        "edgeseg": __version__,
        "onnx": _version_of("onnx"),
        "onnxruntime (reference)": plan.reference_version,
        "numpy": np.__version__,
        "pillow": Image.__version__,
        "python": platform.python_version(),
        **plan.tool_versions,
    }


def _provenance(plan: BuildPlan, exported: Exported) -> dict[str, Any]:
    shared, source = exported.shared, plan.source
    return {
        "source": Path(source).name if isinstance(source, (str, Path)) else type(source).__name__,
        "source_sha256": shared.source_sha256,
        "shared_onnx_sha256": shared.sha256,
        "opset": shared.opset,
        **({"exporter": shared.exporter} if shared.exporter else {}),
        **({"export_rewrites": shared.rewrites} if shared.rewrites else {}),
        "with_argmax": plan.with_argmax,
        "dynamic": plan.target.input.dynamic,
        **({"dynamic_export_check": exported.dynamic_check.to_dict()} if exported.dynamic_check is not None else {}),
    }


def _requirements(tgt: Target) -> tuple[str, list[str]]:
    """The backend's requirement line and the runtime's pip requirements (what offline archives bundle).

    A backend the device's system provides (TensorRT from JetPack) is named but not pip-installed.
    """
    base = ["numpy>=1.24", "pillow>=9.4"]  # runtime_py/pyproject.toml: Debian 12's numpy 1.24.2 and Pillow 9.4.0
    if tgt.backend not in REGISTRY:
        return tgt.backend, [*base, tgt.backend]
    runner = runner_class(tgt.backend)
    system = runner.system_requirement
    reqs = base if system else [*base, runner.requirement, *runner.constraints]
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


def _reference(exported: Exported) -> Segmentor:
    """The fp32 ONNX Runtime reference: the shared ONNX (and its static variants) behind the archive's own pipeline."""
    from edgeseg_runtime.runners.onnxruntime import OnnxRuntimeRunner

    runners: dict[Any, Any] = {}
    for (h, w), variant in exported.variants:
        runners[(h, w)] = OnnxRuntimeRunner(variant.path.parent, {"net": variant.path.name}, {})
    if not runners:
        runners[None] = OnnxRuntimeRunner(exported.shared.path.parent, {"net": exported.shared.path.name}, {})
    return Segmentor.from_parts(exported.model, PipelineSpec.from_doc(exported.pipeline), runners)


def _not_runnable(backend: str) -> str:
    """Why the target's backend cannot run on this host ("" when it can): the runner's own message."""
    try:
        runner_class(backend).version()
        return ""
    except ToolchainError as exc:
        return f"pending: {backend} does not run on this host ({exc})"


def _validation_pair(ref: Segmentor, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(network input, fp32 reference labels at the network's output size) for one evaluation image."""
    tensor = ref.prepare(ref.load(path))
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
    if calibration is None:
        return backend.convert(shared.path, tgt, stage, spec=spec), ""
    parts = _cache_parts(tgt, shared, calibration, tool_versions)
    key = cache_key(parts)
    cache = QuantCache()
    cached = None if recalibrate else cache.fetch(key, stage)
    if cached is not None:
        return cached, "hit"
    files = backend.convert(shared.path, tgt, stage, calibration, spec=spec)
    cache.store(key, stage, files, parts)
    return files, "miss"


def _cache_parts(tgt: Target, shared: SharedModel, calibration: Calibration, tool_versions: dict[str, str]) -> dict[str, Any]:
    """What an int8 conversion depends on (the quantization cache's key); the gate's budget only when a quantizer
    reads it (accuracy control, with evaluation pairs)."""
    budget = {"min_pixel_agreement", "max_miou_drop", "min_class_iou"}
    return {
        "shared_onnx_sha256": shared.sha256,
        "calibration_sha256": calibration.images.digest,
        "backend": tgt.backend,
        "versions": {**tool_versions, "edgeseg": __version__},
        "precision": tgt.precision,
        "quantization": tgt.quantization.model_dump(mode="json", exclude=budget),
        "validation": _digest_pairs(calibration.validation) if calibration.validation else None,
        "budget": tgt.quantization.budget() if calibration.validation else None,
    }


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
