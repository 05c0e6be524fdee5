"""``edgeseg`` on the device: run, verify, info, bench, measure.

Exit codes: 0 success; 1 a check failed (verify) or some images failed (run);
2 an error that stopped the command (bad archive, missing backend, bad usage).
The host package extends this parser with ``build`` (see ``edgeseg.cli``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .archive import Archive
from .contract import Backend
from .bench import bench, format_result
from .errors import ArchiveError, EdgesegError, ImageError, SignatureError, ToolchainError, VerifyError, exit_code
from .images import DEFAULT_MAX_PIXELS, iter_image_paths, load_image, overlay, save_label_map, save_scores
from .runners import runner_class
from .segmentor import Segmentor
from .signing import check_signature, parse_signature
from .verify import verify_archive

__all__ = ["OneLineParser", "build_parser", "main", "run_cli", "plan_outputs", "signature_line"]

Handler = Callable[[argparse.Namespace], int]


def _count(low: int, high: int = 1_000_000) -> Callable[[str], int]:
    """argparse type: an integer in [``low``, ``high``]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def _archive_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--archive", "-a", required=True, type=Path, metavar="A",
        help="archive written by 'edgeseg build' (.tar.gz) or its unpacked folder",
    )


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``PROG: error: MESSAGE (see PROG --help)``, exit 2."""

    def error(self, message: str) -> Any:  # noqa: D102 (argparse API)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(prog: str = "edgeseg") -> tuple[argparse.ArgumentParser, Any]:
    """The argument parser and its sub-command group (the host adds ``build`` to it)."""
    parser = OneLineParser(
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
    p.add_argument("--max-pixels", type=_count(1, 1 << 34), default=DEFAULT_MAX_PIXELS,
                   help="refuse larger images (default %(default)s; peak memory grows ~13 bytes per pixel)")
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
    p.add_argument("--runs", type=_count(1), default=50, help="timed iterations (default %(default)s)")
    p.add_argument("--warmup", type=_count(0), default=5, help="untimed iterations first (default %(default)s)")
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
    p.add_argument("--runs", type=_count(1), default=20, help="timed passes (default %(default)s)")
    p.add_argument("--warmup", type=_count(0), default=3, help="untimed passes first (default %(default)s)")
    p.add_argument("--no-scores", action="store_true", help="do not write the raw outputs (.output.npy)")
    p.set_defaults(func=cmd_measure)
    return parser, sub


def _describe(labels: np.ndarray, classes: Sequence[str]) -> str:
    """Coverage and bounding box of each non-background class present (memory: one mask, not its coordinates)."""
    parts = []
    counts = np.zeros(max(len(classes), int(labels.max()) + 1), dtype=np.int64)
    for y in range(0, labels.shape[0], 256):  # bincount widens to int64: a band at a time, not the whole map
        counts += np.bincount(labels[y:y + 256].ravel(), minlength=len(counts))
    for c in np.flatnonzero(counts):
        if c == 0:
            continue
        mask = labels == c
        ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        name = classes[c] if c < len(classes) else str(c)
        parts.append(f"{name} {counts[c] / labels.size:.1%} (x {xs[0]}..{xs[-1]}, y {ys[0]}..{ys[-1]})")
    return ", ".join(parts) or f"only {classes[0] if classes else 'class 0'}"


def _output_folder(out: Path) -> Path:
    """Create ``--out`` (refusing a path that exists and is not a folder)."""
    try:
        if out.exists() and not out.is_dir():
            raise EdgesegError(f"--out {out} exists and is not a folder; choose another --out")
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgesegError(f"cannot create --out {out} ({exc.strerror or exc})") from None
    return out


def plan_outputs(inputs: Sequence[Path], out: Path, suffixes: Sequence[str]) -> dict[Path, list[Path]]:
    """The files each input will write (``OUT/<stem><suffix>``), refusing any clash before anything is written.

    Raises:
        ImageError: two inputs would write the same file, or an output would
            overwrite an input (e.g. ``--out`` is the input folder and
            ``a_overlay.png`` is an input next to ``a.png``).
    """
    def key(p: Path) -> str:
        return os.path.normcase(os.path.realpath(p))

    reads = {key(p): p for p in inputs}
    writes: dict[str, Path] = {}
    plan: dict[Path, list[Path]] = {}
    for p in inputs:
        plan[p] = []
        for suffix in suffixes:
            dest = out / f"{p.stem}{suffix}"
            k = key(dest)
            if k in reads:
                raise ImageError(f"{p} would write {dest}, which is the input {reads[k]}; "
                                 "never overwriting an input: choose another --out")
            if k in writes:
                raise ImageError(f"{p} and {writes[k]} would both write {dest.name} in {out}; "
                                 "rename one or run them separately")
            writes[k] = p
            plan[p].append(dest)
    return plan


@contextmanager
def _atomic(dest: Path) -> Iterator[Path]:
    """A temporary name next to ``dest``, renamed onto it on success and removed on any other exit."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass


def cmd_run(args: argparse.Namespace) -> int:
    paths = list(iter_image_paths(args.images))
    suffixes = [".png"] + (["_overlay.png"] if args.overlay else []) + (["_scores.npy"] if args.probs else [])
    out = args.out
    plan = plan_outputs(paths, out, suffixes)
    failed = 0
    start = time.perf_counter()
    with Archive.open(args.archive) as archive, Segmentor(archive) as seg:
        if args.probs and seg.postprocess.with_argmax:
            raise EdgesegError("--probs: this archive's model has argmax folded in and outputs no scores")
        _output_folder(out)
        for p in paths:
            try:
                rgb = load_image(p, max_pixels=args.max_pixels)
                result = seg.segment(rgb)
            except ImageError as exc:
                failed += 1
                print(f"skipped: {exc}", file=sys.stderr)
                continue
            dests = iter(plan[p])
            dest = next(dests)
            try:
                with _atomic(dest) as tmp:
                    save_label_map(result.labels, tmp, seg.palette)
                if args.probs:
                    h, w = result.labels.shape
                    with _atomic(plan[p][-1]) as tmp:
                        save_scores(seg.postprocess.plane_images(result.output, h, w), len(seg.classes), h, w, tmp)
                if args.overlay:
                    from PIL import Image

                    with _atomic(next(dests)) as tmp:  # blended into the decoded photo itself: one image less
                        Image.fromarray(overlay(rgb, result.labels, seg.palette, copy=False)).save(tmp, format="PNG")
            except OSError as exc:
                raise EdgesegError(
                    f"cannot write results for {p.name} into {out} ({exc.strerror or exc}); "
                    "free space or choose another --out (results written so far are kept)"
                ) from None
            h, w = result.labels.shape
            print(f"{p} -> {dest}  {w}x{h}  {_describe(result.labels, seg.classes)}", flush=True)
    done = len(paths) - failed
    print(f"{done}/{len(paths)} images segmented in {time.perf_counter() - start:.2f} s -> {out}")
    return 1 if failed else 0


def _fail(args: argparse.Namespace, why: str) -> int:
    print(json.dumps({"passed": False, "verdict": f"FAIL: {why}"}) if args.json else f"FAIL: {why}")
    return 1


def cmd_verify(args: argparse.Namespace) -> int:
    if not args.archive.exists():
        raise EdgesegError(f"{args.archive}: no such archive file or folder")
    try:
        with Archive.open(args.archive) as archive:
            signature = signature_line(archive)
            if signature.startswith("signature INVALID"):
                return _fail(args, f"{archive.source}: {signature}")
            report = verify_archive(archive)
    except (ArchiveError, VerifyError, ImageError) as exc:  # the archive is not what it claims: the check failed
        return _fail(args, str(exc))
    if args.json:
        print(json.dumps({**report.to_dict(), "signature": signature}, indent=2))
    else:
        print(report.verdict())
    return 0 if report.passed else 1


def _text(doc: Any, *keys: str, default: str = "n/a") -> str:
    """A report-only value of the manifest (``build_check``, ``quantization``, ``toolchain``) as one short line."""
    for key in keys:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return default if doc is None else " ".join(str(doc).split())[:300]


def _quantization_lines(q: Any) -> list[str]:
    """``info`` lines for an fp16/int8 archive: calibration set and the accuracy gate's verdict."""
    if not isinstance(q, dict) or not q:
        return []
    lines = []
    if isinstance(q.get("calibration"), dict):
        lines.append(f"calibration {_text(q, 'calibration', 'count')} images ({_text(q, 'calibration', 'source')}), "
                     f"{_text(q, 'calibration', 'method')}, sha256 {_text(q, 'calibration', 'sha256')[:16]}")
    lines.append(f"accuracy    {_text(q, 'accuracy', 'verdict')}")
    return lines


def _plan_lines(backend: Backend, options: Mapping[str, Any]) -> list[str]:
    """Backend-specific ``info`` lines (the runner's ``plan``), plus the fallback when the profile names one."""
    lines: list[str] = []
    try:
        plan = runner_class(backend.name).plan
    except EdgesegError:
        plan = None
    if plan is not None:
        try:
            lines += plan(backend.details, options)
        except (KeyError, TypeError, ValueError, AttributeError):
            lines.append(f"plan        (the {backend.name} details in the manifest are not readable)")
    fb = backend.fallback
    if fb is not None:
        lines.append(f"fallback    {fb.name} on {fb.net} when {backend.name} is missing on the device "
                     "(profile's fallback_backend; said on stderr when used)")
    return lines


def signature_line(archive: Archive) -> str:
    """What ``info``/``verify`` say about ``manifest.sig``: UNSIGNED, signed (checked or not), or INVALID."""
    if archive.signature is None:
        return "UNSIGNED (devices refuse it; build with --sign-key)"
    try:
        doc = check_signature(archive.manifest_bytes, archive.signature)
    except SignatureError as exc:
        return f"signature INVALID: {exc}"
    except ToolchainError as exc:
        return f"signed by key {parse_signature(archive.signature).key_id}, not checked here ({exc})"
    return f"signed by key {doc.key_id} (signature valid; a device installs it only if it trusts that key)"


def cmd_info(args: argparse.Namespace) -> int:
    with Archive.open(args.archive) as archive:
        m = archive.manifest
        signed = signature_line(archive)
    if args.json:
        print(json.dumps({**m.doc, "signature": signed}, indent=2))
        return 1 if signed.startswith("signature INVALID") else 0
    model, target, backend = m.model, m.target, m.backend
    try:
        here = f"installed here ({backend.name} {runner_class(backend.name).version()})"
    except EdgesegError as exc:
        here = f"NOT usable here: {exc}"
    tol = target.tolerance
    lines = [
        f"archive     {args.archive}",
        f"model       {model.name} {model.version}  ({len(model.classes)} classes: {', '.join(model.classes[:8])}"
        + (" ..." if len(model.classes) > 8 else "") + ")",
        f"release     {m.release_version}; {signed}",
        f"target      {target.name}: {target.description}",
        f"backend     {backend.name} {target.precision}  net={backend.net}"
        + (f" weights={backend.weights}" if backend.weights else "") + f"  requires {backend.requirement}",
        f"            {here}",
        *_plan_lines(backend, target.backend_options),
        f"platform    {target.os}/{target.arch} python {target.python}",
        f"input       {model.input.name} {model.input.dtype} {list(model.input.shape)} {model.input.layout}",
        f"output      {model.output.name} {model.output.dtype} {list(model.output.shape)} ({model.output.kind})",
        f"tolerance   atol={tol.atol}, rtol={tol.rtol}, min_label_agreement={tol.min_label_agreement}",
        f"golden      {len(m.golden)} images; build check: {_text(m.doc, 'build_check', 'verdict')}",
        *_quantization_lines(m.doc.get("quantization")),
        f"runtime     edgeseg_runtime {m.runtime.version}; requires {', '.join(m.runtime.requirements)}",
        "toolchain   " + (", ".join(f"{k} {_text(v)}" for k, v in sorted(m.doc["toolchain"].items()))
                          if isinstance(m.doc.get("toolchain"), dict) else "n/a"),
        "files",
    ]
    for rel, meta in sorted(m.files.items()):
        if not rel.startswith("runtime/"):
            lines.append(f"  {rel:<40} {meta.size:>10,d} B  sha256 {meta.sha256[:16]}")
    n_rt = sum(1 for rel in m.files if rel.startswith("runtime/"))
    lines.append(f"  runtime/ ({n_rt} files)")
    print("\n".join(lines))
    return 1 if signed.startswith("signature INVALID") else 0


def cmd_bench(args: argparse.Namespace) -> int:
    with Archive.open(args.archive) as archive, Segmentor(archive) as seg:
        if args.image is None and not archive.manifest.golden:
            raise EdgesegError(f"{archive.source} lists no golden image; name an IMAGE to time")
        image = args.image or archive.path(archive.manifest.golden[0].image)
        result = bench(seg, image, runs=args.runs, warmup=args.warmup)
        name = archive.name
    print(json.dumps({"archive": name, **result.to_dict()}) if args.json else format_result(name, result))
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    from .measure import DONE_PREFIX, measure

    images = list(iter_image_paths(args.images))
    plan_outputs(images, args.out, [".png"] + ([] if args.no_scores else [".output.npy"]))
    _output_folder(args.out)
    doc = measure(args.archive, images, args.out, runs=args.runs, warmup=args.warmup,
                  scores=not args.no_scores, on_image=lambda name: print(f"{DONE_PREFIX}{name}", flush=True))
    print(f"{len(doc['images'])} images, {doc['runs']} timed runs -> {args.out}")
    return 0


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse, dispatch, and turn edgeseg errors into one line on stderr.

    Exit codes: 0 ok; 1 a measured check failed (:class:`VerifyError`, e.g. a
    build's accuracy gate); 2 any other error; 130 interrupted.
    """
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 are shown escaped, never a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = parser.parse_args(argv)
    handler: Handler = args.func
    previous = _terminate_on_signals()
    try:
        return handler(args)
    except EdgesegError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except _Terminated as exc:
        print(f"{parser.prog}: stopped by signal {exc.signum}", file=sys.stderr)
        return 128 + exc.signum
    except BrokenPipeError:
        # the reader went away (``edgeseg info A | head``): stop quietly, as tools killed by SIGPIPE do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13
    except MemoryError:
        print(f"{parser.prog}: error: out of memory; lower --max-pixels or use smaller images", file=sys.stderr)
        return 2
    except OSError as exc:  # an I/O failure the command did not expect (a path it cannot use): one line
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"{parser.prog}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001  a bug: one line for the user, the traceback with EDGESEG_DEBUG=1
        if os.environ.get("EDGESEG_DEBUG"):
            raise
        first = (str(exc).splitlines() or [""])[0][:200]
        print(f"{parser.prog}: internal error ({type(exc).__name__}: {first}); please report it "
              "(EDGESEG_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2
    finally:
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before)


class _Terminated(BaseException):
    """SIGTERM/SIGHUP received: unwinds like Ctrl-C so temporary folders and files are removed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate_on_signals() -> dict[int, Any]:
    """Turn SIGTERM/SIGHUP into :class:`_Terminated` and SIGINT into KeyboardInterrupt, once (main thread only).

    After the first of them, all three are ignored: a second signal a few
    milliseconds later must not interrupt the cleanup the first one started
    (removing a temporary folder). Returns the handlers replaced.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    names = [n for n in ("SIGTERM", "SIGHUP", "SIGINT") if hasattr(signal, n)]
    nums = [getattr(signal, n) for n in names]

    def handler(signum: int, _frame: Any) -> None:
        for num in nums:
            signal.signal(num, signal.SIG_IGN)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise _Terminated(signum)

    previous = {}
    for signum in nums:
        if signal.getsignal(signum) is signal.SIG_IGN and signum != signal.SIGINT:
            continue  # ignored by whoever started us (nohup): keep it so
        previous[signum] = signal.signal(signum, handler)
    return previous


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the device-side ``edgeseg`` command."""
    parser, _ = build_parser()
    return run_cli(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
