"""``edgeseg`` on the device: run, verify, info, bench, measure.

Exit codes: 0 success; 1 a check failed (verify) or some images failed (run);
2 an error that stopped the command (bad archive, missing backend, bad usage).
The host package extends this parser with ``build`` (see ``edgeseg.cli``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .archive import Archive
from .bench import bench, format_result
from .errors import EdgesegError, ImageError, VerifyError
from .images import DEFAULT_MAX_PIXELS, iter_image_paths, load_image, overlay, save_label_map
from .runners import runner_class
from .segmentor import Segmentor
from .verify import verify_archive

__all__ = ["build_parser", "main", "run_cli"]

Handler = Callable[[argparse.Namespace], int]


def _archive_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--archive", "-a", required=True, type=Path, metavar="A",
        help="archive written by 'edgeseg build' (.tar.gz) or its unpacked folder",
    )


def build_parser(prog: str = "edgeseg") -> tuple[argparse.ArgumentParser, Any]:
    """The argument parser and its sub-command group (the host adds ``build`` to it)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Deploy semantic-segmentation models to edge devices and prove they still work there.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "run", help="segment images with an archive",
        description="Segment images. For each IMAGE writes OUT/<stem>.png: a single-channel PNG of class ids "
        "at the image's size, with the class palette attached.",
    )
    _archive_arg(p)
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    p.add_argument("--out", "-o", required=True, type=Path, help="output folder (created if missing)")
    p.add_argument("--overlay", action="store_true", help="also write OUT/<stem>_overlay.png (classes blended on the photo)")
    p.add_argument("--probs", action="store_true", help="also write OUT/<stem>_scores.npy: (C, H, W) float32 class scores")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (default %(default)s)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "verify", help="re-run the golden images and compare with the fp32 reference",
        description="Check every file against the manifest, run the golden inputs and compare with the fp32 reference "
        "outputs using the target's tolerances. Exit 0 on PASS, 1 on FAIL.",
    )
    _archive_arg(p)
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("info", help="show what an archive holds", description="Show model, target, shapes, files and versions.")
    _archive_arg(p)
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "bench", help="time pre/post-processing against bare inference",
        description="Median latency of the runtime's stages next to the backend's bare inference, in one loop.",
    )
    _archive_arg(p)
    p.add_argument("image", nargs="?", type=Path, help="image to time (default: the archive's first golden image)")
    p.add_argument("--runs", type=int, default=50, help="timed iterations (default %(default)s)")
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations first (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print figures as JSON")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "measure", help="label maps, raw outputs, latency samples and peak memory for 'edgeseg compare'",
        description="Segment every image, then time RUNS passes of the in-memory path. Writes OUT/<stem>.png, "
        "OUT/<stem>.output.npy and OUT/measure.json (format in edgeseg_runtime/measure.py). 'edgeseg compare' "
        "runs this on the host or on a device; the host computes the metrics.",
    )
    _archive_arg(p)
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    p.add_argument("--out", "-o", required=True, type=Path, help="output folder (created if missing)")
    p.add_argument("--runs", type=int, default=20, help="timed passes (default %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed passes first (default %(default)s)")
    p.add_argument("--no-scores", action="store_true", help="do not write the raw outputs (.output.npy)")
    p.set_defaults(func=cmd_measure)
    return parser, sub


def _describe(labels: np.ndarray, classes: Sequence[str]) -> str:
    """Coverage and bounding box of each non-background class present."""
    parts = []
    counts = np.bincount(labels.ravel(), minlength=len(classes))
    for c in np.flatnonzero(counts):
        if c == 0:
            continue
        ys, xs = np.nonzero(labels == c)
        name = classes[c] if c < len(classes) else str(c)
        parts.append(
            f"{name} {counts[c] / labels.size:.1%} (x {xs.min()}..{xs.max()}, y {ys.min()}..{ys.max()})"
        )
    return ", ".join(parts) or f"only {classes[0] if classes else 'class 0'}"


def cmd_run(args: argparse.Namespace) -> int:
    paths = list(iter_image_paths(args.images))
    stems: dict[str, Path] = {}
    for p in paths:
        if p.stem in stems:
            raise ImageError(f"{p} and {stems[p.stem]} would both write {p.stem}.png; rename one or run them separately")
        stems[p.stem] = p
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    start = time.perf_counter()
    with Archive.open(args.archive) as archive, Segmentor(archive) as seg:
        if args.probs and seg.postprocess.with_argmax:
            raise EdgesegError("--probs: this archive's model has argmax folded in and outputs no scores")
        for p in paths:
            try:
                rgb = load_image(p, max_pixels=args.max_pixels)
                result = seg.segment(rgb, scores=args.probs)
            except ImageError as exc:
                failed += 1
                print(f"skipped: {exc}", file=sys.stderr)
                continue
            dest = args.out / f"{p.stem}.png"
            try:
                save_label_map(result.labels, dest, seg.palette)
                if args.overlay:
                    from PIL import Image

                    Image.fromarray(overlay(rgb, result.labels, seg.palette)).save(args.out / f"{p.stem}_overlay.png")
                if result.scores is not None:
                    np.save(args.out / f"{p.stem}_scores.npy", result.scores)
            except OSError as exc:
                raise EdgesegError(
                    f"cannot write results for {p.name} into {args.out} ({exc.strerror or exc}); "
                    "free space or choose another --out (results written so far are kept)"
                ) from None
            h, w = result.labels.shape
            print(f"{p} -> {dest}  {w}x{h}  {_describe(result.labels, seg.classes)}")
    done = len(paths) - failed
    print(f"{done}/{len(paths)} images segmented in {time.perf_counter() - start:.2f} s -> {args.out}")
    return 1 if failed else 0


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        with Archive.open(args.archive) as archive:
            report = verify_archive(archive)
    except EdgesegError as exc:
        if args.json:
            print(json.dumps({"passed": False, "verdict": f"FAIL: {exc}"}))
        else:
            print(f"FAIL: {exc}")
        return 1
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.verdict())
    return 0 if report.passed else 1


def _quantization_lines(q: dict[str, Any] | None) -> list[str]:
    """``info`` lines for an fp16/int8 archive: calibration set and the accuracy gate's verdict."""
    if not q:
        return []
    lines = []
    cal = q.get("calibration")
    if cal:
        lines.append(f"calibration {cal['count']} images ({cal['source']}), {cal['method']}, sha256 {cal['sha256'][:16]}")
    lines.append(f"accuracy    {q.get('accuracy', {}).get('verdict', 'n/a')}")
    return lines


def _plan_lines(backend: dict[str, Any], options: dict[str, Any]) -> list[str]:
    """Backend-specific ``info`` lines (the runner's ``plan``), plus the fallback when the profile names one."""
    lines: list[str] = []
    try:
        plan = getattr(runner_class(backend["name"]), "plan", None)
    except EdgesegError:
        plan = None
    if plan is not None:
        lines += plan(backend, options)
    fb = backend.get("fallback")
    if fb:
        lines.append(f"fallback    {fb['name']} on {fb['net']} when {backend['name']} is missing on the device "
                     "(profile's fallback_backend; said on stderr when used)")
    return lines


def cmd_info(args: argparse.Namespace) -> int:
    with Archive.open(args.archive) as archive:
        m = archive.manifest
        sig = archive.path("manifest.sig")
        try:
            signed = f"signed by key {json.loads(sig.read_bytes())['key_id']} (devices check it on install)"
        except FileNotFoundError:
            signed = "UNSIGNED (devices refuse it; build with --sign-key)"
        except (ValueError, KeyError, TypeError):
            signed = "unreadable manifest.sig"
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    model, target, backend = m["model"], m["target"], m["backend"]
    try:
        here = f"installed here ({backend['name']} {runner_class(backend['name']).version()})"
    except EdgesegError as exc:
        here = f"NOT usable here: {exc}"
    lines = [
        f"archive     {args.archive}",
        f"model       {model['name']} {model['version']}  ({len(model['classes'])} classes: {', '.join(model['classes'][:8])}"
        + (" ..." if len(model["classes"]) > 8 else "") + ")",
        f"release     {m.get('release', {}).get('version', 'n/a')}; {signed}",
        f"target      {target['name']}: {target.get('description', '')}",
        f"backend     {backend['name']} {target['precision']}  net={backend['net']}"
        + (f" weights={backend['weights']}" if backend.get("weights") else "") + f"  requires {backend['requirement']}",
        f"            {here}",
        *_plan_lines(backend, target.get("backend_options", {})),
        f"platform    {target['platform']['os']}/{target['platform']['arch']} python {target['platform']['python']}",
        f"input       {model['input']['name']} {model['input']['dtype']} {model['input']['shape']} {model['input']['layout']}",
        f"output      {model['output']['name']} {model['output']['dtype']} {model['output']['shape']} ({model['output']['kind']})",
        "tolerance   " + ", ".join(f"{k}={v}" for k, v in target["tolerance"].items()),
        f"golden      {len(m['golden'])} images; build check: {m.get('build_check', {}).get('verdict', 'n/a')}",
        *_quantization_lines(m.get("quantization")),
        f"runtime     edgeseg_runtime {m['runtime']['version']}; requires {', '.join(m['runtime']['requirements'])}",
        "toolchain   " + ", ".join(f"{k} {v}" for k, v in sorted(m["toolchain"].items())),
        "files",
    ]
    for rel, meta in sorted(m["files"].items()):
        if not rel.startswith("runtime/"):
            lines.append(f"  {rel:<40} {meta['size']:>10,d} B  sha256 {meta['sha256'][:16]}")
    n_rt = sum(1 for rel in m["files"] if rel.startswith("runtime/"))
    lines.append(f"  runtime/ ({n_rt} files)")
    print("\n".join(lines))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    with Archive.open(args.archive) as archive, Segmentor(archive) as seg:
        image = args.image or archive.path(archive.manifest["golden"][0]["image"])
        result = bench(seg, image, runs=args.runs, warmup=args.warmup)
        name = archive.name
    print(json.dumps({"archive": name, **result.to_dict()}) if args.json else format_result(name, result))
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    from .measure import DONE_PREFIX, measure

    doc = measure(args.archive, list(iter_image_paths(args.images)), args.out, runs=args.runs, warmup=args.warmup,
                  scores=not args.no_scores, on_image=lambda name: print(f"{DONE_PREFIX}{name}", flush=True))
    print(f"{len(doc['images'])} images, {doc['runs']} timed runs -> {args.out}")
    return 0


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse, dispatch, and turn edgeseg errors into one line on stderr.

    Exit codes: 0 ok; 1 a measured check failed (:class:`VerifyError`, e.g. a
    build's accuracy gate); 2 any other error; 130 interrupted.
    """
    args = parser.parse_args(argv)
    handler: Handler = args.func
    try:
        return handler(args)
    except VerifyError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except EdgesegError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the device-side ``edgeseg`` command."""
    parser, _ = build_parser()
    return run_cli(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
