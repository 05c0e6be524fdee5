"""``edgeseg`` on the host: the device commands (run, verify, info, bench) plus build and targets.

Thin: parse arguments, call :func:`edgeseg.build` or the runtime, print.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeseg_runtime.cli import build_parser as runtime_parser
from edgeseg_runtime.cli import run_cli

__all__ = ["main"]


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


def cmd_build(args: argparse.Namespace) -> int:
    from .build import build

    result = build(
        args.model,
        target=args.target,
        spec=args.spec,
        spec_overrides=_spec_overrides(args) or None,
        out_dir=args.out,
        with_argmax=args.with_argmax,
        golden=args.golden,
        precision=args.precision,
        calib=args.calib,
        calib_count=args.calib_count,
        eval_set=args.eval,
        recalibrate=args.recalibrate,
        release_version=args.release_version,
        sign_key=args.sign_key,
    )
    print(result.archive)
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

    p = sub.add_parser("targets", help="list the target profiles", description="List targets/*.toml with their settings.")
    p.set_defaults(func=cmd_targets)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the host ``edgeseg`` command."""
    from .deploy.cli import add_commands

    parser, sub = runtime_parser()
    _add_build(sub)
    add_commands(sub)
    return run_cli(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
