"""``edgeseg compare``: the same images through every target, measured against the fp32 reference.

Each archive runs ``edgeseg measure`` (:mod:`edgeseg_runtime.measure`) in its
own process — a subprocess on this host, or the device's installed runtime
over SSH when a device is named for it (:mod:`edgeseg.deploy.measure`) — and
returns label maps, raw outputs, latency samples and its peak memory. The
host then computes, per target (:mod:`edgeseg.metrics`, MMSegmentation
``IoUMetric`` rules, summed over the set):

* **vs reference**: mIoU and per-class IoU with the fp32 ONNX Runtime
  archive's labels as ground truth, and pixel agreement;
* **vs ground truth** (when the set has masks): mIoU, per-class IoU, pixel accuracy;
* **score difference** (max / mean abs) of the raw outputs, where both are scores of one shape;
* latency p50/p90/p99 (warm-up excluded), peak memory, archive and model size.

**Δ mIoU vs fp32** is ``mIoU_target - mIoU_fp32`` against ground truth (in
points, 0..100), or without masks ``100 * (mIoU vs fp32 labels - 1)`` (≤ 0).
The **gate is two-sided**: a drop beyond ``max_drop`` fails, and so does a
gain beyond ``max_gain``: a quantized model that beats its own fp32 model
beyond noise points at a broken evaluation, not a better model (MMDeploy's
regression table reported FCN int8 +1.94 mIoU, and its one-sided check
could not notice).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg_runtime.archive import MANIFEST_NAME, Archive, sha256_file
from edgeseg_runtime.images import load_label_map
from edgeseg_runtime.measure import DONE_PREFIX, MEASURE_NAME
from edgeseg_runtime.runners import runner_class
from edgeseg_runtime.verify import compare_arrays

from ._progress import Reporter, Step, Steps
from ._version import __version__
from .datasets import Dataset, LabelMap, load_dataset
from .errors import ConfigError, EdgesegError
from .metrics import (
    IGNORE_INDEX,
    AbsDiff,
    LatencySummary,
    SegmentationScores,
    confusion_matrix,
    latency_summary,
    miou_drop,
    scores_from_confusion,
)

__all__ = ["SCHEMA", "SCHEMA_VERSION", "ArchiveInfo", "TargetResult", "Comparison", "compare", "archive_info",
           "same_source"]

#: ``report.json``'s ``schema`` and ``schema_version`` (bump on incompatible changes)
SCHEMA = "edgeseg.compare"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ArchiveInfo:
    """What the report needs from an archive's manifest.

    Attributes:
        path: archive file or folder.
        sha256: of the archive file (of ``manifest.json`` for a folder).
        manifest_sha256: of its ``manifest.json`` (what a device reports it runs).
        model, classes, palette: the model's name, class names, RGB palette.
        target, backend, precision: from the profile.
        input_shape: ``[1, 3, H, W]`` network input.
        archive_bytes, model_bytes: archive size; the backend's model files' size.
        source_sha256: sha256 of the source model file the archive was built from
            (``provenance.source_sha256``; archives of one model at any target or
            precision share it); "" when built from an in-memory PyTorch module.
        with_argmax: the model outputs labels, not scores.
        model_version, release_version: the spec's model version; the release version devices compare.
    """

    path: Path
    sha256: str
    manifest_sha256: str
    model: str
    classes: list[str]
    palette: list[list[int]]
    target: str
    backend: str
    precision: str
    input_shape: list[Any]
    archive_bytes: int
    model_bytes: int
    source_sha256: str
    with_argmax: bool
    model_version: str = ""
    release_version: str = ""


def archive_info(path: str | Path) -> ArchiveInfo:
    """Open (and check) an archive and read what the comparison needs.

    Raises:
        ArchiveError: not an edgeseg archive, or its files do not match the manifest.
    """
    p = Path(path)
    with Archive.open(p) as archive:
        m = archive.manifest
        manifest_sha = sha256_file(archive.path(MANIFEST_NAME))
    files = m.files
    model_files = [m.backend.net, m.backend.weights]
    return ArchiveInfo(
        path=p,
        sha256=sha256_file(p) if p.is_file() else manifest_sha,
        manifest_sha256=manifest_sha,
        model=m.model.name,
        classes=list(m.model.classes),
        palette=[list(c) for c in m.model.palette],
        target=m.target.name,
        backend=m.backend.name,
        precision=m.target.precision,
        input_shape=list(m.model.input.shape),
        archive_bytes=p.stat().st_size if p.is_file() else m.total_bytes,
        model_bytes=sum(files[f].size for f in model_files if f in files),
        source_sha256=m["provenance"]["source_sha256"],  # report-only section: read through the Mapping
        with_argmax=m.model.with_argmax,
        model_version=m.model.version,
        release_version=m.release_version,
    )


def same_source(a: ArchiveInfo, b: ArchiveInfo) -> bool:
    """Whether two archives were built from one source model.

    The source model is the file the build started from: both archives record
    its sha256 (``provenance.source_sha256``), identical for every target and
    precision built from it, whereas the shared ONNX's sha256 is not (with
    arg-max folded in, dynamic or static H/W it differs). A build from an
    in-memory PyTorch module records no file digest: when either archive lacks
    it, the model's name and version (the spec's) must match instead.
    """
    if a.source_sha256 and b.source_sha256:
        return a.source_sha256 == b.source_sha256
    return (a.model, a.model_version) == (b.model, b.model_version)


@dataclass
class TargetResult:
    """One row of the comparison: an archive run on this host or on a device.

    Attributes:
        label: short unique name for tables and plots (``target/precision[@device]``).
        info: the archive.
        device: ``"host"`` or the inventory name of the device it ran on.
        is_reference: this row is the fp32 ONNX Runtime reference.
        run: the ``measure.json`` document (None when it failed to run).
        vs_reference: its labels scored with the reference's as ground truth.
        vs_ground_truth: scored against the masks (None without masks).
        delta_miou: Δ mIoU vs fp32 in points (module doc); NaN when it did not run.
        delta_basis: ``"ground truth"`` or ``"fp32 labels"``.
        score_diff: abs difference of raw outputs (None when not comparable; ``score_note`` says why).
        per_image: ``{"image", "agreement"}`` per image.
        failures: gate misses and errors, one line each.
        error: why it did not run.
        run_dir: its label maps (``<stem>.png``) and ``measure.json``.
    """

    label: str
    info: ArchiveInfo
    device: str
    is_reference: bool = False
    run: dict[str, Any] | None = None
    vs_reference: SegmentationScores | None = None
    vs_ground_truth: SegmentationScores | None = None
    delta_miou: float = float("nan")
    delta_basis: str = ""
    score_diff: AbsDiff | None = None
    score_note: str = ""
    per_image: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    error: str = ""
    run_dir: Path | None = None

    @property
    def latency(self) -> LatencySummary:
        return latency_summary(self.run["latency_ms"] if self.run else [])

    @property
    def infer_latency(self) -> LatencySummary:
        return latency_summary(self.run["infer_ms"] if self.run else [])

    @property
    def peak_memory_bytes(self) -> int | None:
        return self.run.get("peak_rss_bytes") if self.run else None

    @property
    def miou(self) -> float:
        """mIoU in points against ground truth (with masks) or the fp32 labels."""
        scores = self.vs_ground_truth or self.vs_reference
        return 100 * scores.miou if scores else float("nan")

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self, classes: list[str], base: Path) -> dict[str, Any]:
        """JSON-ready row; ``labels_dir`` relative to ``base`` (the report folder)."""
        i = self.info
        return {
            "label": self.label,
            "archive": str(i.path),
            "archive_sha256": i.sha256,
            "manifest_sha256": i.manifest_sha256,
            "model": i.model,
            "target": i.target,
            "backend": i.backend,
            "backend_version": self.run["backend"]["version"] if self.run else None,
            "precision": i.precision,
            "input_shape": i.input_shape,
            "device": self.device,
            "machine": self.run["machine"] if self.run else None,
            "is_reference": self.is_reference,
            "source_sha256": i.source_sha256,
            "model_version": i.model_version,
            "release_version": i.release_version,
            "size": {"archive_bytes": i.archive_bytes, "model_bytes": i.model_bytes},
            "latency_ms": self.latency.to_dict(),
            "inference_ms": self.infer_latency.to_dict(),
            "load_ms": self.run["load_ms"] if self.run else None,
            "peak_memory_bytes": self.peak_memory_bytes,
            "vs_reference": self.vs_reference.to_dict(classes) if self.vs_reference else None,
            "pixel_agreement": _num(self.vs_reference.pixel_accuracy) if self.vs_reference else None,
            "vs_ground_truth": self.vs_ground_truth.to_dict(classes) if self.vs_ground_truth else None,
            "miou": _num(self.miou),
            "delta_miou": _num(self.delta_miou),
            "delta_basis": self.delta_basis,
            "score_diff": self.score_diff.to_dict() if self.score_diff else None,
            "score_note": self.score_note,
            "images": self.per_image,
            "passed": self.passed,
            "failures": self.failures,
            "error": self.error or None,
            "labels_dir": Path(os.path.relpath(self.run_dir, base)).as_posix() if self.run_dir else None,
        }


@dataclass
class Comparison:
    """Every target's results on one image set.

    Attributes:
        dataset: the images (and masks).
        classes: the model's class names.
        results: the reference first, then the archives in the order given.
        max_drop, max_gain: the gate in mIoU points (None = not gated).
        runs, warmup: latency runs per target.
        created: UTC time, ISO 8601.
        out_dir: the report folder (label maps under ``runs/``).
    """

    dataset: Dataset
    classes: list[str]
    results: list[TargetResult]
    max_drop: float | None
    max_gain: float | None
    runs: int
    warmup: int
    created: str
    out_dir: Path

    @property
    def reference(self) -> TargetResult:
        return next(r for r in self.results if r.is_reference)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def failures(self) -> list[str]:
        """``label: why`` for every target outside the gate or that did not run."""
        return [f"{r.label}: {why}" for r in self.results for why in r.failures]

    def to_dict(self) -> dict[str, Any]:
        """The canonical ``report.json`` document (label folders relative to ``out_dir``)."""
        d = self.dataset
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "created": self.created,
            "edgeseg": __version__,
            "dataset": {
                "source": d.source, "layout": d.layout, "images": len(d), "masks": d.has_masks, "sha256": d.digest,
                "ignore_index": IGNORE_INDEX, "reduce_zero_label": d.reduce_zero_label,
                "label_map": {str(k): v for k, v in d.label_map.items()} if d.label_map else None,
            },
            "model": {"name": self.reference.info.model, "classes": self.classes},
            "reference": self.reference.label,
            "latency": {"runs": self.runs, "warmup": self.warmup,
                        "path": "pre-processing + inference + post-processing of a decoded image"},
            "gate": {"max_drop": self.max_drop, "max_gain": self.max_gain, "passed": self.passed,
                     "failures": self.failures()},
            "targets": [r.to_dict(self.classes, self.out_dir) for r in self.results],
        }


def _num(value: float) -> float | None:
    return None if value != value else round(float(value), 6)  # NaN -> None


def _labels(folder: Path, stem: str) -> np.ndarray:
    """A label map a run wrote (here or on a device) as int64: decoded as a PNG only, whatever the file holds.

    Raises:
        ImageError: not a PNG (an SGI, TGA, ... file named ``.png``), not single-channel, over the pixel limit, corrupt.
    """
    return load_label_map(folder / f"{stem}.png").astype(np.int64)


def _output(folder: Path, stem: str) -> np.ndarray | None:
    path = folder / f"{stem}.output.npy"
    return np.load(path) if path.is_file() else None


def _measure_here(info: ArchiveInfo, images: Sequence[Path], out: Path, runs: int, warmup: int, step: Step) -> dict[str, Any]:
    """``edgeseg measure`` in a subprocess of this host's Python (its own peak memory)."""
    runner_class(info.backend).version()  # ToolchainError (one line, which extra) before starting a process
    argv = [sys.executable, "-m", "edgeseg_runtime", "measure", str(info.path), *map(str, images),
            "--out", str(out), "--runs", str(runs), "--warmup", str(warmup)]
    step.start(len(images), "images")
    with tempfile.TemporaryFile("w+") as err:
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(DONE_PREFIX):
                    step.advance()
        if proc.returncode != 0:
            err.seek(0)
            tail = " | ".join(err.read().strip().splitlines()[-2:]) or f"exit {proc.returncode}"
            raise EdgesegError(f"edgeseg measure failed ({tail}); argv: {' '.join(argv[:6])} ...")
    return json.loads((out / MEASURE_NAME).read_text(encoding="utf-8"))


def _score_all(ran: list[TargetResult], dataset: Dataset, n: int) -> None:
    """Fill every result's metrics from its label maps, in one pass over the images.

    ``ran[0]`` is the reference; its labels, its raw output and the mask of
    each image are read once and shared by every target.
    """
    ref = ran[0]
    agree = [np.zeros((n, n), np.int64) for _ in ran]
    gt = [np.zeros((n, n), np.int64) for _ in ran]
    diffs: list[AbsDiff | None] = [AbsDiff() for _ in ran]
    for i, image in enumerate(dataset.images):
        assert ref.run_dir is not None
        ref_labels, ref_out = _labels(ref.run_dir, image.stem), _output(ref.run_dir, image.stem)
        truth = dataset.read_mask(i, n, ref_labels.shape)
        for k, result in enumerate(ran):
            assert result.run_dir is not None
            labels = _labels(result.run_dir, image.stem)
            agree[k] += confusion_matrix(labels, ref_labels, n)
            if truth is not None:
                gt[k] += confusion_matrix(labels, truth, n)
            diff = diffs[k]
            out = _output(result.run_dir, image.stem) if diff is not None else None
            a = compare_arrays(out, ref_out, labels, ref_labels)
            result.per_image.append({"image": image.name, "agreement": round(a.label_agreement, 6)})
            if diff is None:
                continue
            if a.scores_compared:
                diff.include(a)
            else:
                diffs[k], result.score_note = None, a.note
    for k, result in enumerate(ran):
        result.vs_reference = scores_from_confusion(agree[k])
        result.vs_ground_truth = scores_from_confusion(gt[k]) if dataset.has_masks else None
        result.score_diff = diffs[k]


def _gate(result: TargetResult, ref: TargetResult, max_drop: float | None, max_gain: float | None) -> None:
    """Δ mIoU vs fp32 and the two-sided gate (module doc)."""
    if result.vs_reference is not None:  # the figure the build's gate reports (edgeseg.metrics.miou_drop)
        drop, basis = miou_drop(result.vs_reference, ref.vs_ground_truth, result.vs_ground_truth)
        result.delta_miou, result.delta_basis = -drop, basis.removeprefix("vs ")
    if result.is_reference:
        return
    delta = result.delta_miou
    if max_drop is not None and not -delta <= max_drop:
        result.failures.append(f"mIoU drop {-delta:.2f} > {max_drop:g} points (vs {result.delta_basis})")
    if max_gain is not None and delta > max_gain:
        result.failures.append(
            f"mIoU gain {delta:+.2f} > {max_gain:g} points over fp32 (vs {result.delta_basis}): suspicious, "
            "a converted model should not beat its fp32 source beyond noise; check the masks, label map and classes"
        )


def _row_labels(jobs: list[tuple[ArchiveInfo, Any]]) -> list[str]:
    """``target/precision[@device]``, made unique with `` (2)``, `` (3)``..."""
    labels: list[str] = []
    for info, device in jobs:
        base = f"{info.target}/{info.precision}" + (f"@{device.name}" if device is not None else "")
        label, k = base, 2
        while label in labels:
            label, k = f"{base} ({k})", k + 1
        labels.append(label)
    return labels


def _pick_reference(infos: list[ArchiveInfo], reference: ArchiveInfo | None) -> ArchiveInfo:
    if reference is not None:
        same = [i for i in infos if i.path.resolve() == reference.path.resolve()]
        reference = same[0] if same else reference  # listed too: one row, not two
        if (reference.backend, reference.precision) != ("onnxruntime", "fp32"):
            raise ConfigError(
                f"{reference.path}: the reference must be an fp32 ONNX Runtime archive, this one is "
                f"{reference.backend} {reference.precision}"
            )
        return reference
    for info in infos:
        if (info.backend, info.precision) == ("onnxruntime", "fp32"):
            return info
    raise ConfigError(
        "no fp32 ONNX Runtime archive to compare against: build one (edgeseg build --target cpu) and add it "
        "to the archives or pass it with --reference"
    )


def compare(
    archives: Sequence[str | Path],
    images: str | Path,
    masks: str | Path | None = None,
    *,
    reference: str | Path | None = None,
    layout: str = "auto",
    split: str | None = None,
    label_map: LabelMap | None = None,
    limit: int | None = None,
    devices: Sequence[str] = (),
    inventory: str | Path = "devices.toml",
    runs: int = 20,
    warmup: int = 3,
    max_drop: float | None = None,
    max_gain: float | None = None,
    out_dir: str | Path = "report",
    report: Reporter | None = None,
    allow_other_sources: bool = False,
) -> Comparison:
    """Run every archive on the same images and measure it against the fp32 reference.

    Args:
        archives: archive files or folders, all of one model (same classes).
        images: image folder or dataset root (:func:`edgeseg.datasets.load_dataset`).
        masks: mask folder when ``images`` is an image folder.
        reference: the fp32 ONNX Runtime archive; None = the first such among ``archives``.
        layout, split: dataset options (:mod:`edgeseg.datasets`).
        label_map: set id → model id (:class:`~edgeseg.datasets.LabelMap`; the CLI parses ``15=1,*=0``).
        limit: use only the first N images.
        devices: ``NAME`` (runs the archive built for the device's target) or
            ``NAME=ARCHIVE``; those archives run on the device over SSH,
            which must run them as its current release.
        inventory: ``devices.toml`` for ``devices``.
        runs, warmup: timed and untimed latency passes per target.
        max_drop, max_gain: the two-sided gate in mIoU points (None = not checked).
        out_dir: report folder; every run's label maps go to ``out_dir/runs/<n>-<label>/``
            (replaced on each comparison), for the report's images and for you.
        report: progress lines (None = rich progress on stderr).
        allow_other_sources: compare archives built from another source model
            than the reference's (:func:`same_source`), e.g. a new release's
            weights against the previous release's fp32; the report names them.
            By default they are refused before anything runs.

    Returns:
        A :class:`Comparison`; targets that could not run carry ``error`` and fail the gate.

    Raises:
        ConfigError: no reference, archives of models with other classes or
            (unless ``allow_other_sources``) another source model than the
            reference's, bad dataset, unknown device, or a device whose archive
            is ambiguous; raised before any archive runs.
        ArchiveError: an archive is corrupt.
        EdgesegError: the reference itself cannot run.
    """
    if runs < 1 or warmup < 0:
        raise ConfigError(f"--runs must be >= 1 and --warmup >= 0 (got {runs}, {warmup})")
    if not archives and reference is None:
        raise ConfigError("give at least one archive")
    dataset = load_dataset(images, masks, layout=layout, split=split, label_map=label_map).limit(limit)
    infos, ref_info = _archives(archives, reference, dataset, allow_other_sources)
    inv = None
    if devices:
        from .deploy.inventory import load_inventory

        inv = load_inventory(inventory)
    jobs = _plan(infos, ref_info, devices, inv)
    results = [TargetResult(label, info, dev.name if dev else "host", is_reference=(i == 0))
               for i, (label, (info, dev)) in enumerate(zip(_row_labels(jobs), jobs, strict=True))]
    runs_root = Path(out_dir) / "runs"
    for old in runs_root.glob("*-*/" + MEASURE_NAME):  # label maps of an earlier comparison in this folder
        shutil.rmtree(old.parent)
    with Steps(report) as steps:
        for k, ((_info, dev), result) in enumerate(zip(jobs, results, strict=True)):
            result.run_dir = runs_root / f"{k}-{_slug(result.label)}"
            _run_target(result, dev, inv, dataset, runs, warmup, steps, report)
        _score_step([r for r in results if r.run is not None], dataset, len(ref_info.classes), max_drop, max_gain, steps)
    for result in results:  # raw outputs can be large (C x h x w floats per image); the label maps stay
        for npy in result.run_dir.glob("*.output.npy") if result.run_dir else ():
            npy.unlink()
    return Comparison(dataset, list(ref_info.classes), results, max_drop, max_gain, runs, warmup,
                      datetime.now(UTC).isoformat(timespec="seconds"), Path(out_dir))


def _archives(
    archives: Sequence[str | Path], reference: str | Path | None, dataset: Dataset, allow_other_sources: bool = False
) -> tuple[list[ArchiveInfo], ArchiveInfo]:
    """Step 1: every archive's info and the reference's, checked to be one model (classes and source, see
    :func:`same_source`) with distinct image stems.

    Raises:
        ConfigError: see :func:`compare`.
    """
    stems = [p.stem for p in dataset.images]
    if len(set(stems)) != len(stems):
        raise ConfigError("images must have distinct file names (stems): results are matched by name")
    infos = [archive_info(a) for a in archives]
    ref_info = _pick_reference(infos, archive_info(reference) if reference is not None else None)
    for info in infos:
        if info.classes != ref_info.classes:
            raise ConfigError(
                f"{info.path}: classes {info.classes} differ from the reference's {ref_info.classes}; "
                "compare archives of one model"
            )
        if not allow_other_sources and not same_source(info, ref_info):
            raise ConfigError(
                f"{info.path}: built from another source model ({_source_text(info)}) than the reference "
                f"{ref_info.path} ({_source_text(ref_info)}); compare archives of one source model, or pass "
                "--allow-other-sources to compare them anyway"
            )
    return infos, ref_info


def _source_text(info: ArchiveInfo) -> str:
    """``model 1.0, source sha256 0123abcd4567`` for the one-line refusal."""
    source = f"source sha256 {info.source_sha256[:12]}" if info.source_sha256 else "no source digest"
    return f"{info.model} {info.model_version}, {source}"


def _run_target(result: TargetResult, dev: Any, inv: Any, dataset: Dataset, runs: int, warmup: int, steps: Steps,
                report: Reporter | None) -> None:
    """Step 2: ``edgeseg measure`` for one row, here or on its device; a failure (but the reference's) is recorded."""
    info = result.info
    assert result.run_dir is not None
    where = f"on {dev.name}" if dev else "here"
    with steps.step(f"{result.label} ({info.backend}) {where}") as step:
        try:
            if dev is None:
                result.run = _measure_here(info, dataset.images, result.run_dir, runs, warmup, step)
            else:
                from .deploy.measure import measure_on_device

                step.start(len(dataset), "images")
                result.run = measure_on_device(
                    info.path, dev, inv, dataset.images, result.run_dir, runs=runs, warmup=warmup,
                    report=report or (lambda _line: None), on_image=lambda _name: step.advance(),
                )
        except (EdgesegError, OSError) as exc:
            if result.is_reference:
                raise
            result.error = str(exc)
            result.failures.append(f"did not run: {exc}")
            step.detail = f"FAILED: {exc}"
            return
        step.detail = f"p50 {result.latency.p50:.2f} ms"


def _score_step(ran: list[TargetResult], dataset: Dataset, n: int, max_drop: float | None, max_gain: float | None,
                steps: Steps) -> None:
    """Step 3: metrics of every row that ran (``ran[0]`` is the reference) and the two-sided gate."""
    with steps.step("score against the fp32 reference") as step:
        _score_all(ran, dataset, n)
        for result in ran:
            _gate(result, ran[0], max_drop, max_gain)
        step.detail = "; ".join(
            f"{r.label} agreement {r.vs_reference.pixel_accuracy:.2%}" + ("" if r.passed else " FAIL") for r in ran[1:]
        )


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)


def _plan(
    infos: list[ArchiveInfo], ref: ArchiveInfo, devices: Sequence[str], inv: Any
) -> list[tuple[ArchiveInfo, Any]]:
    """``(archive, device or None)`` jobs: the reference first (here), then each archive here or on its devices."""
    on_device: dict[int, list[Any]] = {}
    for spec in devices:
        name, _, path = spec.partition("=")
        device = inv.get(name)
        if path:
            matches = [i for i, info in enumerate(infos) if Path(info.path).resolve() == Path(path).resolve()]
            if not matches:
                raise ConfigError(f"--device {spec}: {path} is not one of the archives being compared")
        else:
            matches = [i for i, info in enumerate(infos) if info.target == device.target and info is not ref]
            if len(matches) != 1:
                found = ", ".join(str(infos[i].path) for i in matches) or "none"
                raise ConfigError(
                    f"--device {name}: {len(matches)} archives for its target {device.target!r} ({found}); "
                    f"name one with --device {name}=ARCHIVE"
                )
        on_device.setdefault(matches[0], []).append(device)
    jobs: list[tuple[ArchiveInfo, Any]] = [(ref, None)]
    for i, info in enumerate(infos):
        if i in on_device:
            jobs.extend((info, device) for device in on_device[i])
        elif info is not ref:
            jobs.append((info, None))
    return jobs
