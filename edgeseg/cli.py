"""``edgeseg`` on the host: the device commands (run, verify, info, bench, measure) plus build, compare, targets,
matrix, the deployment commands (keys, devices, deploy, status, rollback, recover) and completion.

Thin: parse arguments into typed values (:class:`~edgeseg.datasets.LabelMap`,
:class:`~edgeseg.deploy.fleet.Waves`, ...), call the Python API
(:func:`edgeseg.build`, :func:`edgeseg.build_for_device`,
:func:`edgeseg.compare.compare`, ...) or the runtime, print.

One grammar (:mod:`edgeseg_runtime.cli`): the archive is the first positional
argument; every command that reports takes ``--json`` (stdout: only JSON;
progress and errors on stderr); ``-q``/``-v`` before or after the command.
Building the parser imports no command's code (handlers are named
``"module:function"`` and imported when the command runs), so ``--help`` is fast.

Exit codes (:func:`exit_code`): 0 ok; 1 a measured check failed (golden
check, accuracy gate, comparison gate, a device that failed); 2 could not run
(a missing archive among them); 130 interrupted, 128 + N signal N.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeseg_runtime.cli import _count, add_global_options, json_option, need_archive, print_json, run_cli, say
from edgeseg_runtime.cli import build_parser as runtime_parser
from edgeseg_runtime.errors import VerifyError, exit_code

__all__ = ["build_parser", "exit_code", "main"]

#: ``edgeseg.datasets.LAYOUTS``, repeated so that building the parser does not import numpy (checked by a test)
LAYOUTS = ("auto", "plain", "cityscapes", "ade20k", "voc", "images")
#: shells ``edgeseg completion`` writes a script for
SHELLS = ("bash", "zsh", "fish")
_DEPLOY = "edgeseg.deploy.cli"


def _progress() -> Any:
    """The ``report`` callback for the API's long steps: None (rich progress) on a terminal, else the logger.

    ``-q`` silences both: the logger drops the lines, and rich is not used.
    """
    import logging

    if sys.stderr.isatty() and logging.getLogger("edgeseg").isEnabledFor(logging.INFO):
        return None
    return say


def _floats3(text: str) -> list[float]:
    try:
        parts = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}") from None
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
        ("input", "size_divisor"): args.size_divisor,
        ("input", "min_side"): args.min_side,
        ("input", "max_side"): args.max_side,
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


def _build_doc(result: Any) -> dict[str, Any]:
    """``build --json``: the archive and the figures of its gates (golden check, accuracy gate)."""
    from edgeseg_runtime.contract import Manifest

    m = Manifest.from_doc(result.manifest)
    return {
        "archive": str(result.archive),
        "model": m.model.name, "target": m.target.name, "precision": m.target.precision,
        "release_version": m.release_version,
        "build_check": result.manifest.get("build_check"),
        "quantization": result.manifest.get("quantization"),
        "calibration_cache": result.calibration_cache or None,
    }


def cmd_build(args: argparse.Namespace) -> int:
    from .build import build

    options: dict[str, Any] = {
        "out_dir": args.out, "with_argmax": args.with_argmax, "golden": args.golden, "precision": args.precision,
        "calib": args.calib, "calib_count": args.calib_count, "eval_set": args.eval, "recalibrate": args.recalibrate,
        "search": args.search,
        "release_version": args.release_version, "sign_key": args.sign_key, "report": _progress(),
    }
    if args.device:
        from .deploy.engine import build_for_device, device_for_build

        devices = list(dict.fromkeys(args.device))
        for name in devices:  # every device known and right for the target before building anything
            inventory, _ = device_for_build(args.target, name, args.inventory)
        model, spec, overrides = _mmseg_model(args, _spec_overrides(args) or None)
        built = {name: build_for_device(model, target=args.target, device=name, inventory=inventory, spec=spec,
                                        spec_overrides=overrides, **options) for name in devices}
        if args.json:
            generic = next(iter(built.values())).generic
            print_json({**_build_doc(generic), "device_archives": {n: str(b.archive) for n, b in built.items()}})
        else:
            print("\n".join(str(b.archive) for b in built.values()))
        return 0
    model, spec, overrides = _mmseg_model(args, _spec_overrides(args) or None)
    result = build(model, target=args.target, spec=spec, spec_overrides=overrides, **options)
    if args.json:
        print_json(_build_doc(result))
    else:
        print(result.archive)
    return 0


def cmd_matrix(args: argparse.Namespace) -> int:
    from .matrix import run_matrix

    paths = run_matrix(
        full=args.full, models=args.models, backends=args.backends, precisions=args.precisions, size=tuple(args.size),
        runs=args.runs, out_dir=args.out, jobs=args.jobs, resume=args.resume, report=say,
    )
    if args.json:
        print_json({"files": [str(p) for p in paths]})
    else:
        print("\n".join(map(str, paths)))
    return 0


def cmd_spec_init(args: argparse.Namespace) -> int:
    from .spec_draft import write_draft

    out = write_draft(args.model, args.out, force=args.force)
    if args.json:
        print_json({"spec": str(out), "model": str(args.model)})
    else:
        say(f"wrote {out}: check every '# GUESS' against the model's documentation, then "
            f"'edgeseg build --model {args.model} --spec {out} --target cpu'")
    return 0


def cmd_toolchain_build(args: argparse.Namespace) -> int:
    from .crossbuild import build, ncnn_layers_of

    layers = None
    if args.layers:
        layers = [n.strip() for n in args.layers.split(",") if n.strip()]
    elif args.param:
        layers = ncnn_layers_of(args.param)
    built = build(args.toolchain, args.what, layers, report=say, jobs=args.jobs)
    if args.json:
        print_json([{**b.info, "path": str(b.wheel), "cached": b.cached} for b in built])
    else:
        for b in built:
            how = "cached" if b.cached else f"{b.info['how']} in {b.info['seconds']:.0f} s"
            say(f"{b.wheel}  ({b.wheel.stat().st_size / 1e6:.1f} MB, {how}; from {b.info['source']})")
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from .errors import EdgesegError
    from .targets import list_targets, load_target

    rows: list[dict[str, Any]] = []
    for name in list_targets():
        try:
            t = load_target(name)
            rows.append({"name": name, "backend": t.backend, "precision": t.precision, "os": t.platform.os,
                         "arch": t.platform.arch, "description": t.description})
        except EdgesegError as exc:
            rows.append({"name": name, "error": str(exc)})
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            print(f"{r['name']:<10} INVALID: {r['error']}" if "error" in r else
                  f"{r['name']:<10} {r['backend']:<12} {r['precision']:<5} {r['os']}/{r['arch']}  {r['description']}")
    return 1 if any("error" in r for r in rows) else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare
    from .datasets import parse_label_map
    from .report import render_console, write_report

    for archive in [*args.archives, *([args.reference] if args.reference else [])]:
        need_archive(archive)
    comparison = compare(
        args.archives, args.images, args.masks, reference=args.reference, layout=args.layout, split=args.split,
        label_map=parse_label_map(args.label_map), limit=args.limit, devices=args.device or (),
        inventory=args.inventory, runs=args.runs, warmup=args.warmup, max_drop=args.max_drop, max_gain=args.max_gain,
        out_dir=args.out, report=_progress(), allow_other_sources=args.allow_other_sources,
    )
    paths = write_report(comparison)
    if args.json:
        print_json({**comparison.to_dict(), "files": {k: str(v) for k, v in paths.items()}})
    else:
        print(render_console(comparison))
        print(f"report: {paths['json']}  {paths['md']}  {paths['html']}")
    if not comparison.passed:
        failed = VerifyError("gate FAILED:\n  " + "\n  ".join(comparison.failures()))
        print(f"edgeseg: {failed}", file=sys.stderr)
        return exit_code(failed)
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    """Print the completion script; shtab is imported here only (never on another command's path)."""
    from .errors import ToolchainError

    try:
        import shtab
    except ImportError:
        raise ToolchainError("shell completion needs shtab: pip install 'shtab>=1.13'") from None
    parser = build_parser()
    for action in _all_actions(parser):  # file names where a path is expected
        metavar = str(action.metavar or action.dest).upper()
        if action.type is Path or "ARCHIVE" in metavar or "IMAGE" in metavar:
            action.complete = shtab.DIRECTORY if metavar.endswith(("DIR", "OUT")) else shtab.FILE  # type: ignore[attr-defined]
    sys.stdout.write(shtab.complete(parser, shell=args.shell))
    return 0


def _all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every argument of ``parser`` and of the sub-commands below it."""
    found: list[argparse.Action] = []
    for action in parser._actions:  # noqa: SLF001  (argparse keeps no public list)
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for child in dict.fromkeys(action.choices.values()):
                found += _all_actions(child)
        else:
            found.append(action)
    return found


def _names(text: str) -> list[str] | None:
    """``A,B`` → ``["A", "B"]``, ``""`` → None (argparse type of the comma-separated lists)."""
    return text.split(",") if text else None


def _inventory_arg(p: Any) -> None:
    p.add_argument("--inventory", "-i", type=Path, default=Path("devices.toml"),
                   help="device inventory: a TOML file with known_hosts, [defaults] and one [[device]] table per "
                   "device (name, host, port, user, key, target, root, groups, trusted_keys); the documentation's "
                   "'Deploy' page describes it (default: %(default)s)")


def _device_arg(p: Any, text: str) -> None:
    p.add_argument("--device", "-d", action="append", metavar="NAME", help=text + " (repeatable)")


def _select_args(p: argparse.ArgumentParser, what: str) -> None:
    _inventory_arg(p)
    _device_arg(p, "device name from the inventory")
    p.add_argument("--group", "-g", metavar="G", help="every device of a group")
    json_option(p, what)


def _add_compare(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="run archives on the same images and report accuracy vs fp32, latency, memory and size",
        description="Run every ARCHIVE on the same images (here, or on a device over SSH with --device) and measure it "
        "against the fp32 ONNX Runtime reference: mIoU and per-class IoU (vs masks when given, always vs the fp32 "
        "labels), pixel agreement, score differences, latency p50/p90/p99, peak memory, size. Writes OUT/report.json, "
        "report.md and report.html (plots), and OUT/runs/ (every target's label maps). Exit 1 when a target is "
        "outside --max-drop/--max-gain or did not run; 2 when an archive is missing or the reference cannot run.",
    )
    p.add_argument("archives", nargs="+", type=Path, metavar="ARCHIVE",
                   help="archives of one model; the first fp32 ONNX Runtime one (target cpu) is the reference")
    p.add_argument("--images", required=True, type=Path, metavar="DIR",
                   help="image folder, or a dataset root: DIR/images + DIR/masks, Cityscapes, ADE20K or VOC layout")
    p.add_argument("--masks", type=Path, metavar="DIR", help="ground-truth label maps (<stem>.png, 255 = ignore)")
    p.add_argument("--layout", default="auto", choices=LAYOUTS,
                   help="dataset folder convention (default: detected from the folder names): plain = DIR/images + "
                   "DIR/masks/<stem>.png; cityscapes = leftImg8bit/ + gtFine/*_labelTrainIds.png; ade20k = images/ + "
                   "annotations/ (reduce-zero-label); voc = JPEGImages/ + SegmentationClass/; images = a folder of "
                   "images without masks")
    p.add_argument("--split", help="dataset split (default: val / validation where present)")
    p.add_argument("--label-map", metavar="SRC=DST,...", help="map the set's class ids to the model's, e.g. 15=1,*=0")
    p.add_argument("--limit", type=_count(1), metavar="N", help="only the first N images (a quick look; N >= 1)")
    p.add_argument("--reference", type=Path, metavar="ARCHIVE", help="the fp32 ONNX Runtime archive (default: among ARCHIVEs)")
    p.add_argument("--device", "-d", action="append", metavar="NAME[=ARCHIVE]",
                   help="run the archive for this device's target (or ARCHIVE) on the device over SSH; it must be "
                   "installed there (edgeseg deploy). Repeatable")
    _inventory_arg(p)
    p.add_argument("--runs", type=int, default=20, help="timed latency runs per target (default %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default %(default)s)")
    p.add_argument("--max-drop", type=float, metavar="POINTS", help="fail when a target's mIoU is this far below fp32")
    p.add_argument("--max-gain", type=float, metavar="POINTS",
                   help="fail when a target's mIoU is this far ABOVE fp32 (suspicious: broken labels or evaluation)")
    p.add_argument("--out", "-o", type=Path, default=Path("report"), help="report folder (default: %(default)s)")
    p.add_argument("--allow-other-sources", action="store_true",
                   help="compare archives built from another source model than the reference's (e.g. a new "
                   "release's weights against the previous fp32); refused by default, before anything runs")
    json_option(p, "the report.json document and the report's file names")
    p.set_defaults(func=cmd_compare)


def _add_build(sub: Any) -> None:
    p = sub.add_parser(
        "build",
        help="build a deployable archive for a target",
        description="Export the shared fp32 ONNX, run the ONNX Runtime reference on golden images, convert for the "
        "target (fp16/int8: quantize, int8 calibrated on real images, then an accuracy gate against fp32 on an "
        "evaluation set), check the converted model against the reference, and write "
        "<out>/<model>-<target>-<precision>.tar.gz. The archive path is printed on the last line (--json: the path "
        "and the gates' figures). Without --model, builds the embedded default model (MediaPipe Selfie "
        "Segmentation). Exit 1 when the accuracy gate or the golden check fails (no archive is written).",
    )
    p.add_argument("--target", "-t", required=True,
                   help="target profile name (see 'edgeseg targets'; $EDGESEG_TARGETS_DIR is searched first) or the "
                   "path of a .toml file")
    p.add_argument("--model", "-m", type=Path, help="ONNX or TorchScript file (default: the embedded default model)")
    p.add_argument("--spec", "-s", type=Path,
                   help="model spec TOML: name, [input] layout/size/color/mean/std, [output] kind/layout/classes/"
                   "threshold (the documentation's 'Your own model' page); the flags below override it")
    p.add_argument("--mmseg-config", metavar="CFG",
                   help="MMSegmentation 1.x config (a config file, or a config name from the mmsegmentation package): "
                   "model and spec from it (pip install 'edgeseg[mmseg]'); --input-size overrides its crop size")
    p.add_argument("--checkpoint", type=Path, metavar="CKPT", help="weights for --mmseg-config (default: random weights)")
    p.add_argument("--out", "-o", type=Path, default=Path("dist"), help="output folder (default: %(default)s)")
    p.add_argument("--with-argmax", action="store_true", help="fold argmax into the ONNX (outputs int64 labels)")
    p.add_argument("--golden", nargs="+", type=Path, metavar="IMAGE_OR_DIR", help="golden images (default: sample photos)")
    json_option(p, "the archive path, model, target, precision and the gates' figures (golden check, accuracy gate)")
    q = p.add_argument_group("quantization (fp16/int8)")
    q.add_argument("--precision", "-p", choices=["fp32", "fp16", "int8"], help="override the profile's precision")
    q.add_argument("--calib", nargs="+", type=Path, metavar="IMAGE_OR_DIR", help="int8 calibration images (default: embedded photos)")
    q.add_argument("--calib-count", type=int, metavar="N", help="calibration images to sample (default: the profile's calib_count)")
    q.add_argument(
        "--eval", type=Path, metavar="DIR",
        help="evaluation set for the accuracy gate: DIR/images (+ DIR/masks/<stem>.png label maps) or a folder of "
        "images (default: 28 photos shipped with edgeseg); must not overlap the calibration images",
    )
    q.add_argument("--recalibrate", action="store_true", help="ignore the cached calibration and search results")
    q.add_argument("--no-search", dest="search", action="store_false",
                   help="int8 that misses the accuracy budget stops the build at once, instead of searching for the "
                   "fewest layers to keep in float (mixed precision)")
    r = p.add_argument_group("release")
    r.add_argument("--release-version", metavar="N.N.N", help="version devices compare on update (default: the spec's version)")
    r.add_argument("--sign-key", type=Path, metavar="KEY",
                   help="Ed25519 key that signs the manifest (default: $EDGESEG_SIGNING_KEY; else unsigned)")
    e = p.add_argument_group("engine on a device (TensorRT targets)")
    _device_arg(e, "after the build, build the TensorRT engine on this device over SSH, run the golden check there, "
                "and write <archive>-<NAME>.tar.gz carrying the engine (for a fleet of identical devices); "
                "one archive per device")
    _inventory_arg(e)
    g = p.add_argument_group("model spec flags (override --spec)")
    g.add_argument("--name", help="model name used in the archive name (default: the model file's name)")
    g.add_argument("--input-layout", choices=["NCHW", "NHWC"])
    g.add_argument("--input-size", type=_size, metavar="HxW", help="network input size, e.g. 512x1024")
    g.add_argument("--color", choices=["RGB", "BGR"], help="channel order the network takes")
    g.add_argument("--mean", type=_floats3, metavar="R,G,B", help="mean in 0..255 units, network channel order")
    g.add_argument("--std", type=_floats3, metavar="R,G,B", help="std in 0..255 units, network channel order")
    g.add_argument("--keep-ratio", action="store_true",
                   help="fit images inside the size keeping aspect (static-shape builds: letterboxed)")
    g.add_argument("--min-side", type=int, metavar="PX",
                   help="dynamic-shape models: keep each image's own size, scaled up so its short side is >= PX")
    g.add_argument("--max-side", type=int, metavar="PX",
                   help="dynamic-shape models: keep each image's own size, scaled down so its long side is <= PX")
    g.add_argument("--size-divisor", type=int, metavar="N",
                   help="pad the input's H and W to multiples of N (e.g. 32), cropped from the output")
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
    json_option(p, "the files written")
    p.set_defaults(func=cmd_matrix)

    p = sub.add_parser("spec", help="model specs: draft one from a model file",
                       description="Model specs (what a model file cannot say: normalisation, colour order, classes).")
    ss = p.add_subparsers(dest="spec_command", metavar="ACTION", required=True)
    q = ss.add_parser("init", help="write a starting spec from an ONNX file, every guess marked",
                      description="Read the ONNX graph and write a model spec: layout, size, channels and output kind "
                      "from the graph ('# from the graph'), the rest guessed and marked '# GUESS' (colour order, "
                      "mean/std, class names, a dynamic model's size). An existing file is never replaced without "
                      "--force.")
    q.add_argument("--model", "-m", type=Path, required=True, help="the ONNX file")
    q.add_argument("--out", "-o", type=Path, default=Path("spec.toml"), help="spec file to write (default: %(default)s)")
    q.add_argument("--force", action="store_true", help="replace an existing --out")
    json_option(q, "the spec path")
    q.set_defaults(func=cmd_spec_init)

    p = sub.add_parser("toolchain", help="device wheels PyPI does not have: compile or repack them here",
                       description="Toolchain profiles (toolchains/*.toml) for platforms PyPI does not serve "
                       "(32-bit ARM): make their device wheels on this host.")
    ts = p.add_subparsers(dest="toolchain_command", metavar="ACTION", required=True)
    q = ts.add_parser("build", help="compile ncnn / repack Debian's numpy and Pillow for a toolchain",
                      description="Make the device wheels a toolchain profile names: ncnn compiled from its PyPI "
                      "sdist with the profile's cross compiler (apt-get install crossbuild-essential-armhf), numpy "
                      "and Pillow repacked from Debian's packages for the device's architecture. Results are cached "
                      "(~/.cache/edgeseg/crossbuild) by source sha256, toolchain file, compiler version and layer "
                      "set: a second run compiles nothing. Builds of a --target whose toolchain needs this do it "
                      "themselves (compiling only the model's ncnn layers).")
    q.add_argument("what", metavar="WHAT", help="ncnn, numpy, pillow or all")
    q.add_argument("--toolchain", "-t", required=True, help="toolchain name (e.g. linux-armhf-py311) or .toml path")
    layers = q.add_mutually_exclusive_group()
    layers.add_argument("--layers", help="ncnn: compile only these layer types, comma-separated (plus what they "
                        "create internally); default all")
    layers.add_argument("--param", type=Path, nargs="+", help="ncnn: compile only the layers these .param files use")
    q.add_argument("--jobs", "-j", type=int, default=None, help="parallel compile jobs (default: the CPUs)")
    json_option(q, "one object per wheel: path, how it was made, source and sha256, compiler, flags, seconds")
    q.set_defaults(func=cmd_toolchain_build)

    p = sub.add_parser("targets", help="list the target profiles",
                       description="List the target profiles with backend, precision and platform: your own "
                       "(*.toml in $EDGESEG_TARGETS_DIR, which win over a shipped one of the same name) and the "
                       "shipped ones. Exit 1 when a profile is invalid (listed with the reason).")
    json_option(p, "one object per profile")
    p.set_defaults(func=cmd_targets)


def _add_deploy(sub: Any) -> None:
    """The deployment commands; their handlers are in :mod:`edgeseg.deploy.cli`, imported when one runs."""
    p = sub.add_parser("keys", help="signing keys", description="Ed25519 keys that sign archives (devices check them).")
    ks = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    q = ks.add_parser("new", help="create a key pair", description="Write NAME.key (private, 0600) and NAME.pem (public).")
    q.add_argument("--out", "-o", type=Path, default=Path("keys"), help="folder (default: %(default)s)")
    q.add_argument("--name", default="edgeseg-signing", help="file name stem (default: %(default)s)")
    q.add_argument("--force", action="store_true", help="replace existing files")
    json_option(q, "the key files and the key id")
    q.set_defaults(func=f"{_DEPLOY}:cmd_keys_new")

    p = sub.add_parser("devices", help="device inventory: list, trust host keys, provision",
                       description="The devices of the inventory (devices.toml): list them, trust their SSH host keys, "
                       "provision them.")
    ds = p.add_subparsers(dest="devices_command", metavar="ACTION", required=True)
    q = ds.add_parser("list", help="list the inventory", description="List the inventory's devices: name, address, "
                      "target, install root, groups.")
    _inventory_arg(q)
    json_option(q, "one object per device")
    q.set_defaults(func=f"{_DEPLOY}:cmd_devices_list")
    q = ds.add_parser("trust", help="add a device's SSH host key to known_hosts (explicitly)",
                      description="Read the device's host key, print its fingerprint, and add it to the inventory's "
                      "known_hosts after you confirm (--yes) or when it equals --fingerprint. Exit 1 when not trusted.")
    _inventory_arg(q)
    q.add_argument("name", help="device name")
    q.add_argument("--fingerprint", metavar="SHA256:...", help="expected fingerprint (from the device's console)")
    q.add_argument("--yes", action="store_true", help="trust without asking")
    q.set_defaults(func=f"{_DEPLOY}:cmd_devices_trust")
    q = ds.add_parser("provision", help="install root, installer and trusted signing keys on devices",
                      description="Create the install root, push the installer, and the inventory's trusted_keys. "
                      "Exit 1 when a device failed.")
    _select_args(q, "one result per device")
    q.add_argument("--mender", action="store_true",
                   help="also write the Mender update module 'edgeseg' (into the device's mender_modules folder, "
                   "default /usr/share/mender/modules/v3), so 'mender install' of an artifact from "
                   "'edgeseg export mender' installs with edgeseg's installer")
    q.set_defaults(func=f"{_DEPLOY}:cmd_provision")

    p = sub.add_parser("export", help="hand an archive to another delivery system (Mender)",
                       description="Wrap a signed archive for an over-the-air system fleets already run.")
    es = p.add_subparsers(dest="export_command", metavar="FORMAT", required=True)
    q = es.add_parser(
        "mender", help="a Mender artifact (payload type edgeseg) holding the signed archive",
        description="Write a Mender artifact (format v3, with Debian's mender-artifact) whose payload is the signed "
        "archive, unchanged: artifact name <model>-<version>, provides edgeseg.<model>.version/target/precision, "
        "depends on the device types given, and Mender's own signature with --sign-key. Devices install it with "
        "the 'edgeseg' update module ('edgeseg devices provision --mender'): checked and health-checked on "
        "ArtifactInstall, switched on ArtifactCommit. Exit 2 when the archive is missing, unsigned or altered, or "
        "mender-artifact is not installed (the artifact is then not written).")
    q.add_argument("archive", type=Path, metavar="ARCHIVE", help="signed archive from 'edgeseg build --sign-key' "
                   "(.tar.gz, or its unpacked folder: packed first)")
    q.add_argument("--device-type", "-t", action="append", metavar="T", dest="device_types",
                   help="Mender device type the artifact installs on (repeatable; required)")
    q.add_argument("--sign-key", "-k", type=Path, metavar="KEY",
                   help="RSA or ECDSA P-256 private key (PEM) for Mender's signature (clients with ArtifactVerifyKey "
                   "refuse unsigned artifacts)")
    q.add_argument("--out", "-o", type=Path, metavar="X.mender",
                   help="artifact to write (default: next to the archive, <name>.mender)")
    json_option(q, "what was written: path, sizes, artifact name, provides")
    q.set_defaults(func=f"{_DEPLOY}:cmd_export_mender")

    p = sub.add_parser(
        "deploy", help="install a signed archive on devices over SSH (waves, health check, atomic switch)",
        description="Upload what each device lacks (resumable, content-addressed), verify the signature and every "
        "checksum on the device, install into a new release slot, run the health check (golden verify, latency "
        "budget), then switch atomically. A failure leaves the device on its version. With --group: waves, "
        "stopping when a wave's failure rate passes --max-failure-rate. Exit 1 when a device failed or the rollout "
        "stopped; 2 when the archive is missing or unusable.",
    )
    p.add_argument("archive", type=Path, metavar="ARCHIVE", help="signed archive from 'edgeseg build --sign-key'")
    _select_args(p, "the rollout: one result per device, and where it stopped")
    p.add_argument("--waves", default="1,50%,100%", help="cumulative wave sizes (default: %(default)s)")
    p.add_argument("--max-failure-rate", type=float, default=0.0, metavar="R",
                   help="stop when a wave's failed share is above R in [0, 1] (default: %(default)s)")
    p.add_argument("--allow-downgrade", action="store_true", help="install a lower version than installed")
    p.add_argument("--stage-only", action="store_true", help="upload only; a later deploy installs without sending")
    p.set_defaults(func=f"{_DEPLOY}:cmd_deploy")

    for name, text in (
        ("status", "what each device runs: current/previous release, free space"),
        ("rollback", "make each device's previous release current again"),
        ("recover", "finish or discard a half-done install (after a power loss)"),
    ):
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ". Exit 1 when a device failed "
                           "or reports a problem.")
        _select_args(p, "one result per device")
        p.set_defaults(func=f"{_DEPLOY}:cmd_{name}")


def _add_completion(sub: Any) -> None:
    p = sub.add_parser(
        "completion", help="print a shell completion script (bash, zsh, fish)",
        description="Print the completion script of edgeseg for a shell. bash: add 'eval \"$(edgeseg completion "
        "bash)\"' to ~/.bashrc (or save it as ~/.local/share/bash-completion/completions/edgeseg); zsh: save it as "
        "_edgeseg in a folder of $fpath (e.g. edgeseg completion zsh > ~/.zfunc/_edgeseg with fpath+=~/.zfunc "
        "before compinit); fish: edgeseg completion fish > ~/.config/fish/completions/edgeseg.fish. "
        "Needs shtab (a dependency of edgeseg).",
    )
    p.add_argument("shell", choices=SHELLS, help="the shell: %(choices)s")
    p.set_defaults(func=cmd_completion)


def build_parser() -> argparse.ArgumentParser:
    """The host ``edgeseg`` parser: the runtime's commands and the host's, ``-q``/``-v`` on each (imports no command)."""
    parser, sub = runtime_parser()
    _add_build(sub)
    _add_compare(sub)
    _add_deploy(sub)
    _add_completion(sub)
    return add_global_options(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the host ``edgeseg`` command (the runtime's ``console`` hands over to it)."""
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
