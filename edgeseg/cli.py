"""``edgeseg`` on the host: the device commands (run, verify, info, bench, measure) plus build, compare and targets.

Thin: parse arguments into typed values (:class:`~edgeseg.datasets.LabelMap`,
:class:`~edgeseg.deploy.fleet.Waves`, ...), call the Python API
(:func:`edgeseg.build`, :func:`edgeseg.build_for_device`,
:func:`edgeseg.compare.compare`, ...) or the runtime, print.

Exit codes (:func:`exit_code`): 0 ok; 1 a measured check failed (golden
check, accuracy gate, comparison gate); 2 any other error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeseg_runtime.cli import build_parser as runtime_parser
from edgeseg_runtime.cli import run_cli
from edgeseg_runtime.errors import VerifyError, exit_code

__all__ = ["exit_code", "main"]


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _floats3(text: str) -> list[float]:
    parts = [float(v) for v in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}")
    return parts


def _size(text: str) -> list[int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 512x1024, got {text!r}") from None
    return [h, w]


def _spec_overrides(args: argparse.Namespace) -> dict[str, Any]:
    table = {
        ("name",): args.name,
        ("input", "layout"): args.input_layout,
        ("input", "size"): args.input_size,
        ("input", "color"): args.color,
        ("input", "mean"): args.mean,
        ("input", "std"): args.std,
        ("input", "keep_ratio"): True if args.keep_ratio else None,
        ("output", "kind"): args.output_kind,
        ("output", "layout"): args.output_layout,
        ("output", "classes"): args.classes.split(",") if args.classes else None,
        ("output", "threshold"): args.threshold,
    }
    out: dict[str, Any] = {}
    for keys, value in table.items():
        if value is None:
            continue
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return out


def _mmseg_model(args: argparse.Namespace, overrides: dict[str, Any] | None) -> tuple[Any, Any, dict[str, Any] | None]:
    """``(model, spec, spec_overrides)`` from the model flags, or from ``--mmseg-config`` (with only ``--input-size``)."""
    from .errors import ConfigError

    if args.mmseg_config:
        from .mmseg import load_mmseg

        if args.model or args.spec or set(overrides or {}) - {"input"} or set((overrides or {}).get("input", {})) - {"size"}:
            raise ConfigError("--mmseg-config takes the model and its spec from the config; "
                              "of the model flags only --input-size applies")
        model, spec = load_mmseg(args.mmseg_config, args.checkpoint, input_size=args.input_size)
        return model, spec, None
    if args.checkpoint:
        raise ConfigError("--checkpoint goes with --mmseg-config")
    return args.model, args.spec, overrides


def cmd_build(args: argparse.Namespace) -> int:
    from .build import build

    options: dict[str, Any] = {
        "out_dir": args.out, "with_argmax": args.with_argmax, "golden": args.golden, "precision": args.precision,
        "calib": args.calib, "calib_count": args.calib_count, "eval_set": args.eval, "recalibrate": args.recalibrate,
        "release_version": args.release_version, "sign_key": args.sign_key,
    }
    if args.device:
        from .deploy.engine import build_for_device, device_for_build

        inventory, _ = device_for_build(args.target, args.device, args.inventory)  # fail before loading a model
        model, spec, overrides = _mmseg_model(args, _spec_overrides(args) or None)
        out = build_for_device(model, target=args.target, device=args.device, inventory=inventory, spec=spec,
                               spec_overrides=overrides, **options)
        print(out.archive)
        return 0
    model, spec, overrides = _mmseg_model(args, _spec_overrides(args) or None)
    result = build(model, target=args.target, spec=spec, spec_overrides=overrides, **options)
    print(result.archive)
    return 0


def cmd_matrix(args: argparse.Namespace) -> int:
    from .matrix import run_matrix

    paths = run_matrix(
        full=args.full, models=args.models, backends=args.backends, precisions=args.precisions, size=tuple(args.size),
        runs=args.runs, out_dir=args.out, jobs=args.jobs, resume=args.resume, report=_say,
    )
    print("\n".join(map(str, paths)))
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from .errors import EdgesegError
    from .targets import list_targets, load_target

    for name in list_targets():
        try:
            t = load_target(name)
            print(f"{name:<10} {t.backend:<12} {t.precision:<5} {t.platform.os}/{t.platform.arch}  {t.description}")
        except EdgesegError as exc:
            print(f"{name:<10} INVALID: {exc}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare
    from .datasets import parse_label_map
    from .report import render_console, write_report

    comparison = compare(
        args.archives, args.images, args.masks, reference=args.reference, layout=args.layout, split=args.split,
        label_map=parse_label_map(args.label_map), limit=args.limit, devices=args.device or (),
        inventory=args.inventory, runs=args.runs, warmup=args.warmup, max_drop=args.max_drop, max_gain=args.max_gain,
        out_dir=args.out,
    )
    paths = write_report(comparison)
    print(render_console(comparison))
    print(f"report: {paths['json']}  {paths['md']}  {paths['html']}")
    if not comparison.passed:
        failed = VerifyError("gate FAILED:\n  " + "\n  ".join(comparison.failures()))
        print(f"edgeseg: {failed}", file=sys.stderr)
        return exit_code(failed)
    return 0


def _names(text: str) -> list[str] | None:
    """``A,B`` → ``["A", "B"]``, ``""`` → None (argparse type of the comma-separated lists)."""
    return text.split(",") if text else None


def _add_compare(sub: Any) -> None:
    from .datasets import LAYOUTS

    p = sub.add_parser(
        "compare",
        help="run archives on the same images and report accuracy vs fp32, latency, memory and size",
        description="Run every ARCHIVE on the same images (here, or on a device over SSH with --device) and measure it "
        "against the fp32 ONNX Runtime reference: mIoU and per-class IoU (vs masks when given, always vs the fp32 "
        "labels), pixel agreement, score differences, latency p50/p90/p99, peak memory, size. Writes OUT/report.json, "
        "report.md and report.html (plots), and OUT/runs/ (every target's label maps). Exit 1 when a target is "
        "outside --max-drop/--max-gain or did not run.",
    )
    p.add_argument("archives", nargs="+", type=Path, metavar="ARCHIVE",
                   help="archives of one model; the first fp32 ONNX Runtime one (target cpu) is the reference")
    p.add_argument("--images", required=True, type=Path, metavar="DIR",
                   help="image folder, or a dataset root: DIR/images + DIR/masks, Cityscapes, ADE20K or VOC layout")
    p.add_argument("--masks", type=Path, metavar="DIR", help="ground-truth label maps (<stem>.png, 255 = ignore)")
    p.add_argument("--layout", default="auto", choices=LAYOUTS,
                   help="dataset folder convention (default: detected; see edgeseg/datasets.py)")
    p.add_argument("--split", help="dataset split (default: val / validation where present)")
    p.add_argument("--label-map", metavar="SRC=DST,...", help="map the set's class ids to the model's, e.g. 15=1,*=0")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N images (a quick look)")
    p.add_argument("--reference", type=Path, metavar="ARCHIVE", help="the fp32 ONNX Runtime archive (default: among ARCHIVEs)")
    p.add_argument("--device", "-d", action="append", metavar="NAME[=ARCHIVE]",
                   help="run the archive for this device's target (or ARCHIVE) on the device over SSH; it must be "
                   "installed there (edgeseg deploy). Repeatable")
    p.add_argument("--inventory", "-i", type=Path, default=Path("devices.toml"), help="device inventory (default: %(default)s)")
    p.add_argument("--runs", type=int, default=20, help="timed latency runs per target (default %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default %(default)s)")
    p.add_argument("--max-drop", type=float, metavar="POINTS", help="fail when a target's mIoU is this far below fp32")
    p.add_argument("--max-gain", type=float, metavar="POINTS",
                   help="fail when a target's mIoU is this far ABOVE fp32 (suspicious: broken labels or evaluation)")
    p.add_argument("--out", "-o", type=Path, default=Path("report"), help="report folder (default: %(default)s)")
    p.set_defaults(func=cmd_compare)


def _add_build(sub: Any) -> None:
    p = sub.add_parser(
        "build",
        help="build a deployable archive for a target",
        description="Export the shared fp32 ONNX, run the ONNX Runtime reference on golden images, convert for the "
        "target (fp16/int8: quantize, int8 calibrated on real images, then an accuracy gate against fp32 on an "
        "evaluation set), check the converted model against the reference, and write "
        "<out>/<model>-<target>-<precision>.tar.gz. The archive path is printed on the last line. Without --model, "
        "builds the embedded default model (MediaPipe Selfie Segmentation).",
    )
    p.add_argument("--target", "-t", required=True, help="target profile name (see 'edgeseg targets') or .toml path")
    p.add_argument("--model", "-m", type=Path, help="ONNX or TorchScript file (default: the embedded default model)")
    p.add_argument("--spec", "-s", type=Path, help="model spec TOML (see edgeseg/spec.py); flags below override it")
    p.add_argument("--mmseg-config", metavar="CFG",
                   help="MMSegmentation 1.x config (file, or name under mmseg/.mim/configs): model and spec from it "
                   "(pip install 'edgeseg[mmseg]'); --input-size overrides its crop size")
    p.add_argument("--checkpoint", type=Path, metavar="CKPT", help="weights for --mmseg-config (default: random weights)")
    p.add_argument("--out", "-o", type=Path, default=Path("dist"), help="output folder (default: %(default)s)")
    p.add_argument("--with-argmax", action="store_true", help="fold argmax into the ONNX (outputs int64 labels)")
    p.add_argument("--golden", nargs="+", type=Path, metavar="IMAGE_OR_DIR", help="golden images (default: sample photos)")
    q = p.add_argument_group("quantization (fp16/int8)")
    q.add_argument("--precision", "-p", choices=["fp32", "fp16", "int8"], help="override the profile's precision")
    q.add_argument("--calib", nargs="+", type=Path, metavar="IMAGE_OR_DIR", help="int8 calibration images (default: embedded photos)")
    q.add_argument("--calib-count", type=int, metavar="N", help="calibration images to sample (default: the profile's calib_count)")
    q.add_argument(
        "--eval", type=Path, metavar="DIR",
        help="evaluation set for the accuracy gate: DIR/images (+ DIR/masks/<stem>.png label maps) or a folder of "
        "images (default: the golden images); must not overlap the calibration images",
    )
    q.add_argument("--recalibrate", action="store_true", help="ignore the cached calibration result")
    r = p.add_argument_group("release")
    r.add_argument("--release-version", metavar="N.N.N", help="version devices compare on update (default: the spec's version)")
    r.add_argument("--sign-key", type=Path, metavar="KEY",
                   help="Ed25519 key that signs the manifest (default: $EDGESEG_SIGNING_KEY; else unsigned)")
    e = p.add_argument_group("engine on a device (TensorRT targets)")
    e.add_argument("--device", "-d", metavar="NAME",
                   help="after the build, build the TensorRT engine on this device over SSH, run the golden check there, "
                   "and write <archive>-<NAME>.tar.gz carrying the engine (for a fleet of identical devices)")
    e.add_argument("--inventory", "-i", type=Path, default=Path("devices.toml"), help="device inventory (default: %(default)s)")
    g = p.add_argument_group("model spec flags (override --spec)")
    g.add_argument("--name", help="model name used in the archive name")
    g.add_argument("--input-layout", choices=["NCHW", "NHWC"])
    g.add_argument("--input-size", type=_size, metavar="HxW", help="network input size, e.g. 512x1024")
    g.add_argument("--color", choices=["RGB", "BGR"], help="channel order the network takes")
    g.add_argument("--mean", type=_floats3, metavar="R,G,B", help="mean in 0..255 units, network channel order")
    g.add_argument("--std", type=_floats3, metavar="R,G,B", help="std in 0..255 units, network channel order")
    g.add_argument("--keep-ratio", action="store_true", help="fit images inside the size keeping aspect (dynamic models)")
    g.add_argument("--output-kind", choices=["logits", "probability", "labels"])
    g.add_argument("--output-layout", choices=["NCHW", "NHWC"])
    g.add_argument("--classes", metavar="A,B,...", help="comma-separated class names")
    g.add_argument("--threshold", type=float, help="threshold of a 1-channel probability output")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser(
        "matrix", help="measure the MMSegmentation support matrix",
        description="Build MMSegmentation architectures (random weights) from their configs, export the shared ONNX, "
        "check dynamic vs static shape, convert with every backend and compare each with PyTorch on a real photo. "
        "Writes <out>/support-matrix.{json,md}. Without --full: 5 small models, ONNX Runtime fp32 only (pip install "
        "'edgeseg[mmseg]').",
    )
    p.add_argument("--full", action="store_true", help="every seed architecture x every backend x fp32,fp16 (1-2 h on 2 cores)")
    p.add_argument("--models", type=_names, metavar="A,B", help="architectures by name (e.g. PSPNet,BiSeNetV2)")
    p.add_argument("--backends", type=_names, metavar="X,Y", help="onnxruntime,openvino,ncnn,tflite,coreml,tensorrt")
    p.add_argument("--precisions", type=_names, metavar="P,Q", help="fp32,fp16 (default: fp32; both with --full)")
    p.add_argument("--size", type=_size, default=[256, 512], metavar="HxW", help="input size (default: 256x512)")
    p.add_argument("--runs", type=int, default=10, help="timed inferences per cell (default: %(default)s)")
    p.add_argument("--jobs", "-j", type=int, default=1, help="models measured at once in worker processes (default: 1)")
    p.add_argument("--resume", action="store_true", help="keep the models <out>/support-matrix.json already has")
    p.add_argument("--out", "-o", type=Path, default=Path("docs"), help="output folder (default: %(default)s)")
    p.set_defaults(func=cmd_matrix)

    p = sub.add_parser("targets", help="list the target profiles", description="List targets/*.toml with their settings.")
    p.set_defaults(func=cmd_targets)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the host ``edgeseg`` command."""
    from .deploy.cli import add_commands

    parser, sub = runtime_parser()
    _add_build(sub)
    _add_compare(sub)
    add_commands(sub)
    return run_cli(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
