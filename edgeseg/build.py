"""``edgeseg build``: model → shared ONNX → reference → convert → check → archive.

Steps, each writing into a fresh folder (inputs are never modified):

1. **export** the shared fp32 ONNX (:mod:`edgeseg.export`);
2. **reference**: run it with ONNX Runtime fp32 on the golden images (the
   outputs every target is measured against);
3. **convert** with the target's backend (:mod:`edgeseg.backends`);
4. **check**: run the converted model through the runtime on the golden
   images and compare with the reference using the target's tolerances; a
   failure stops the build (no archive) with :class:`VerifyError`;
5. **bundle**: ``pipeline.json``/``deploy.json``/``detail.json``, golden files,
   the runtime, ``manifest.json``, then one deterministic
   ``<out>/<model>-<target>.tar.gz``.
"""

from __future__ import annotations

import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import edgeseg_runtime
from edgeseg_runtime.archive import SCHEMA_VERSION, Archive
from edgeseg_runtime.images import iter_image_paths, load_image, save_label_map
from edgeseg_runtime.runners import RUNNERS, runner_class
from edgeseg_runtime.segmentor import Segmentor
from edgeseg_runtime.verify import VerifyReport, verify_archive

from . import __version__
from .backends import get_backend
from .bundle import copy_runtime, pack, write_manifest
from .errors import ConfigError, ToolchainError, VerifyError
from .export import SharedModel, export_shared
from .pipeline import check_pipeline, make_detail, make_deploy, make_pipeline
from .spec import DATA, DEFAULT_SPEC, ModelSpec, load_spec
from .targets import Target, load_target

__all__ = ["build", "BuildResult", "DEFAULT_MODEL", "SAMPLE_IMAGES"]

#: the embedded default model (MediaPipe Selfie Segmentation, ONNX)
DEFAULT_MODEL = DATA / "models" / "selfie_segmentation" / "selfie_segmentation.onnx"
#: real photos used as golden inputs when none are given
SAMPLE_IMAGES = DATA / "images"

Reporter = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build` produced.

    Attributes:
        archive: path of the ``.tar.gz``.
        manifest: the manifest written into it.
        check: the build-time golden check (None when the backend cannot run on this host).
    """

    archive: Path
    manifest: dict[str, Any]
    check: VerifyReport | None


class _Steps:
    """Progress for the build steps: a spinner on a terminal, one line per finished step."""

    def __init__(self, report: Reporter | None) -> None:
        self.report = report

    @contextmanager
    def step(self, title: str) -> Iterator[dict[str, str]]:
        note: dict[str, str] = {}
        start = time.perf_counter()
        if self.report is None:
            from rich.console import Console

            console = Console(stderr=True, soft_wrap=True)
            with console.status(f"{title} ..."):
                yield note
            console.print(f"[green]✓[/green] {title} ({time.perf_counter() - start:.1f} s) {note.get('detail', '')}")
        else:
            yield note
            self.report(f"{title} ({time.perf_counter() - start:.1f} s) {note.get('detail', '')}")


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


def _check_shapes(target: Target, shared: SharedModel) -> None:
    h, w = shared.input_shape[2], shared.input_shape[3]
    for shape in target.input.shapes:
        if [shape[0], shape[1]] != [h, w]:
            raise ConfigError(
                f"target {target.name!r} asks for input shape {list(shape)} but the model takes {[h, w]}; "
                "static-shape variants at other sizes are not available in this version"
            )
    if target.input.batch != 1:
        raise ConfigError(f"target {target.name!r}: batch = {target.input.batch}; this version builds batch 1")


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
        report: callback for progress lines; None = rich status on stderr.

    Returns:
        :class:`BuildResult` with the archive path.

    Raises:
        ConfigError: unknown target, bad spec, spec/model contradiction.
        ToolchainError: backend not installed or not implemented.
        ConversionError: export or conversion failed.
        VerifyError: the converted model misses the target's tolerance on the golden set.
        ImageError: a golden image cannot be read.
    """
    t0 = time.perf_counter()
    tgt = target if isinstance(target, Target) else load_target(target)
    model_spec = _resolve_spec(model, spec, spec_overrides)
    source = DEFAULT_MODEL if model is None else model
    backend = get_backend(tgt)
    tool_versions = backend.versions()
    ref_version = runner_class("onnxruntime").version()  # the reference needs onnxruntime
    images = _golden_paths(golden)
    steps = _Steps(report)
    palette = model_spec.output.colours()
    archive_path = Path(out_dir) / f"{model_spec.name}-{tgt.name}.tar.gz"

    with tempfile.TemporaryDirectory(prefix="edgeseg-build-") as tmp:
        work = Path(tmp)
        stage = work / "stage"
        stage.mkdir()
        with steps.step("export shared fp32 ONNX") as note:
            shared = export_shared(source, model_spec, work / "export", with_argmax=with_argmax, dynamic=tgt.input.dynamic)
            _check_shapes(tgt, shared)
            pipeline = make_pipeline(model_spec, shared)
            check_pipeline(pipeline, shared, model_spec)
            note["detail"] = f"input {shared.input_shape} -> output {shared.output_shape} {shared.output_dtype}"

        model_section = {
            "name": model_spec.name,
            "version": model_spec.version,
            "description": model_spec.description,
            "license": model_spec.license,
            "classes": list(model_spec.output.classes),
            "palette": palette,
            "input": {"name": "input", "shape": shared.input_shape, "dtype": "float32", "layout": "NCHW"},
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

        with steps.step("reference run (ONNX Runtime fp32)") as note:
            ref_dir = work / "reference"
            ref_dir.mkdir()
            shutil.copyfile(shared.path, ref_dir / "model.onnx")
            ref_manifest = {
                "model": model_section,
                "target": {**target_section, "backend_options": {}},
                "backend": {"name": "onnxruntime", "net": "model.onnx", "weights": ""},
            }
            ref_archive = Archive(root=ref_dir, manifest=ref_manifest, source=ref_dir, _pipeline=pipeline)
            with Segmentor(ref_archive) as ref:
                golden_entries = _write_golden(ref, images, stage, palette)
            note["detail"] = f"{len(images)} golden images"

        with steps.step(f"convert ({tgt.backend} {tgt.precision})") as note:
            files = backend.convert(shared.path, tgt, stage)
            note["detail"] = ", ".join(files.files)

        requirement = runner_class(tgt.backend).requirement if tgt.backend in RUNNERS else tgt.backend
        runtime_reqs = ["numpy>=1.24", "pillow>=10.0", requirement]
        manifest: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "model": model_section,
            "target": target_section,
            "backend": {"name": tgt.backend, "net": files.net, "weights": files.weights, "requirement": requirement, **files.details},
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
                "with_argmax": with_argmax,
                "dynamic": tgt.input.dynamic,
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

        check: VerifyReport | None = None
        with steps.step("golden check of the converted model") as note:
            try:
                runner_class(tgt.backend).version()
                runnable = True
            except ToolchainError:
                runnable = False
            if runnable:
                staged = Archive(root=stage, manifest=manifest, source=archive_path, _pipeline=pipeline)
                check = verify_archive(staged)
                manifest["build_check"] = {
                    "passed": check.passed,
                    "verdict": check.verdict(),
                    "images": [vars(c) for c in check.images],
                }
                note["detail"] = check.verdict()
                if not check.passed:
                    raise VerifyError(f"build stopped, no archive written: {check.verdict()}")
            else:
                manifest["build_check"] = {"passed": None, "verdict": f"pending: {tgt.backend} cannot run on this host"}
                note["detail"] = manifest["build_check"]["verdict"]

        with steps.step("bundle") as note:
            manifest = write_manifest(stage, manifest)
            pack(stage, archive_path)
            note["detail"] = f"{archive_path} ({archive_path.stat().st_size / 1e3:.0f} kB, {len(manifest['files'])} files)"
    if report is not None:
        report(f"built in {time.perf_counter() - t0:.1f} s")
    return BuildResult(archive=archive_path, manifest=manifest, check=check)


def _dumps(doc: Any) -> str:
    import json

    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def _version_of(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except ImportError:
        return "not installed"
