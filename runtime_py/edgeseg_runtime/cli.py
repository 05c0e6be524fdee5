"""``edgeseg`` on the device: run, verify, info, bench, measure.

One grammar for every command (the host's ``edgeseg`` extends this parser,
see ``edgeseg.cli``): the archive is the first positional argument
(``edgeseg run ARCHIVE IMAGE... -o OUT``); ``--json`` makes a reporting
command print only JSON on stdout (progress and errors go to stderr);
``-q``/``-v`` (before or after the command) set what the ``edgeseg`` logger
prints on stderr: errors only, or debug lines too; results on stdout never
change with them.

Exit codes, the same in every command: 0 ok; 1 a check failed (``verify``
FAIL, an invalid signature, some images failed in ``run``); 2 could not run
(missing or unreadable archive, missing backend, bad usage); 130 Ctrl-C,
128 + N signal N.

Building the parser imports nothing heavy (no numpy, no backend): ``--help``
stays fast; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from . import __version__
from .errors import ArchiveError, EdgesegError, ImageError, SignatureError, ToolchainError, VerifyError, exit_code

if TYPE_CHECKING:
    import numpy as np

    from .archive import Archive
    from .contract import Backend

__all__ = ["LOGGER_NAME", "OneLineParser", "add_global_options", "build_parser", "configure_logging", "console",
           "host_entry_point", "json_option", "main", "move_legacy_archive", "need_archive", "plan_outputs",
           "print_json", "run_cli", "say", "signature_line"]

Handler = Callable[[argparse.Namespace], int]
#: a command's handler, or ``"module:function"`` imported when the command runs (keeps ``--help`` fast)
HandlerRef = Union[Handler, str]  # noqa: UP007  (evaluated at import: Python 3.9 has no X | Y here)

#: the logger every progress line goes through (``-q``: errors only, ``-v``: debug lines too)
LOGGER_NAME = "edgeseg"
#: ``images.DEFAULT_MAX_PIXELS``, repeated here so that building the parser does not import numpy/Pillow
#: (tests/test_cli_grammar.py checks that the two agree)
_DEFAULT_MAX_PIXELS = 64_000_000
#: the host package's commands (``edgeseg.cli``), named when the runtime alone is asked for one
HOST_COMMANDS = ("build", "compare", "deploy", "status", "rollback", "recover", "devices", "keys", "targets", "matrix",
                 "completion")
#: the commands that took ``--archive/-a A`` before the archive became their first argument
LEGACY_ARCHIVE_COMMANDS = ("run", "verify", "info", "bench", "measure")


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


def _archive_path(text: str) -> Path:
    """argparse type of ARCHIVE: a path, never empty (``""`` would mean the current folder: ``verify "$UNSET"``)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("ARCHIVE is empty; give the archive's path")
    return Path(text)


def _archive_arg(p: argparse.ArgumentParser) -> None:
    """``ARCHIVE`` (first positional), and the hidden, deprecated ``--archive/-a`` (see :func:`move_legacy_archive`)."""
    p.add_argument("archive", type=_archive_path, metavar="ARCHIVE",
                   help="archive written by 'edgeseg build' (.tar.gz) or its unpacked folder")
    p.add_argument("--archive", "-a", dest="legacy_archive", type=_archive_path, help=argparse.SUPPRESS)


def json_option(p: argparse.ArgumentParser, what: str) -> None:
    """``--json``: ``what`` as JSON on stdout, nothing else there (progress and errors stay on stderr)."""
    p.add_argument("--json", action="store_true", help=f"print only JSON on stdout: {what} (progress and errors: stderr)")


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``PROG: error: MESSAGE (see PROG --help)``, exit 2."""

    def error(self, message: str) -> Any:  # noqa: D102 (argparse API)
        for name in HOST_COMMANDS:  # the runtime alone: say where the host's commands come from
            if f"invalid choice: '{name}'" in message:
                message += f"; '{name}' comes with the host package (pip install edgeseg), not the device runtime"
                break
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_global_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``-q/--quiet`` and ``-v/--verbose`` on ``parser`` and on every sub-command below it (idempotent).

    On the program they default to normal output; on a sub-command they default
    to nothing (``SUPPRESS``), so ``edgeseg -q run ...`` and ``edgeseg run -q ...``
    both work and a sub-command never resets what the program was given.
    """
    top = not getattr(parser, "_edgeseg_subcommand", False)
    if not getattr(parser, "_edgeseg_globals", False):
        default: Any = None if top else argparse.SUPPRESS
        g = parser.add_argument_group("output")
        g.add_argument("-q", "--quiet", dest="log_level", action="store_const", const="quiet", default=default,
                       help="print only errors on stderr (results on stdout are unchanged)")
        g.add_argument("-v", "--verbose", dest="log_level", action="store_const", const="verbose", default=default,
                       help="also print debug lines on stderr")
        parser._edgeseg_globals = True  # type: ignore[attr-defined]
    for action in parser._actions:  # noqa: SLF001  (argparse keeps no public list of sub-parsers)
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for child in action.choices.values():
                child._edgeseg_subcommand = True  # type: ignore[attr-defined]
                add_global_options(child)
    return parser


def build_parser(prog: str = "edgeseg") -> tuple[argparse.ArgumentParser, Any]:
    """The argument parser and its sub-command group (the host adds ``build``, ``deploy``, ... to it).

    ``-q``/``-v`` are on every sub-command (:func:`add_global_options`; :func:`run_cli`
    adds them again to sub-commands added later, the host's).
    """
    parser = OneLineParser(
        prog=prog,
        description="Deploy semantic-segmentation models to edge devices and prove they still work there. "
        "Every command takes the archive first (edgeseg run ARCHIVE IMAGE... -o OUT); 'edgeseg COMMAND --help' "
        "describes each. Exit codes: 0 ok, 1 a check failed, 2 could not run.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "run", help="segment images with an archive",
        description="Segment images. For each IMAGE writes OUT/<stem>.png: a single-channel PNG of class ids "
        "at the image's size, with the class palette attached. Prints one line per image (with --json: one JSON "
        "object per image, JSON Lines). Exit 1 when some images could not be segmented (the others are written). "
        "A video file (.mp4 .mkv .avi .mov .webm .m4v) or a camera (/dev/videoN) is segmented frame by frame into "
        "OUT/<stem>_mask.mkv (needs the runtime's 'video' extra, PyAV). Decoding, inference and writing overlap.",
    )
    _archive_arg(p)
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    p.add_argument("--out", "-o", required=True, type=Path, help="output folder (created if missing)")
    p.add_argument("--overlay", action="store_true", help="also write OUT/<stem>_overlay.png (classes blended on the photo)")
    p.add_argument("--probs", action="store_true", help="also write OUT/<stem>_scores.npy: (C, H, W) float32 class scores")
    p.add_argument("--max-pixels", type=_count(1, 1 << 34), default=_DEFAULT_MAX_PIXELS,
                   help="refuse larger images (default %(default)s; peak memory grows ~13 bytes per pixel)")
    p.add_argument("--frames", action="store_true",
                   help="videos: also write OUT/<stem>/frame_NNNNNN.png label maps (see docs/streams.md)")
    p.add_argument("--mask-video", action=argparse.BooleanOptionalAction, default=True,
                   help="videos: write OUT/<stem>_mask.mkv, the class colours, lossless (default: on)")
    p.add_argument("--max-frames", type=_count(1, 1 << 40), default=None, metavar="N",
                   help="videos: stop after N frames (a camera runs until Ctrl-C)")
    p.add_argument("--threads", type=_count(0, 1024), default=None, metavar="N",
                   help="backend CPU threads (0 = the backend's choice, one per core; default: the profile's). With "
                   "several images the backend's idle threads do not busy-wait, leaving the cores to decoding and "
                   "writing, which overlap with inference")
    json_option(p, "one object per image, one per line (image, label_map, overlay, scores, width, height, "
                "classes; or image and error)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "verify", help="re-run the golden images and compare with the fp32 reference",
        description="Check every file against the manifest and the signature, run the golden inputs and compare "
        "with the fp32 reference outputs using the target's tolerances. Prints a one-line verdict. Exit 0 on PASS, "
        "1 on FAIL, 2 when the archive is missing or the backend is not installed.",
    )
    _archive_arg(p)
    json_option(p, "the full report (passed, verdict, per-image figures, signature)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "info", help="show what an archive holds",
        description="Show model, target, backend, shapes, tolerances, signature, files and versions. "
        "Exit 1 when the signature is invalid.",
    )
    _archive_arg(p)
    json_option(p, "the manifest and the signature line")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "bench", help="time pre/post-processing against bare inference",
        description="Median latency of the runtime's stages next to the backend's bare inference, in one loop.",
    )
    _archive_arg(p)
    p.add_argument("image", nargs="?", type=Path, metavar="IMAGE",
                   help="image to time (default: the archive's first golden image)")
    p.add_argument("--runs", type=_count(1), default=50, help="timed iterations (default %(default)s)")
    p.add_argument("--warmup", type=_count(0), default=5, help="untimed iterations first (default %(default)s)")
    json_option(p, "the figures")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "measure", help="label maps, raw outputs, latency samples and peak memory for 'edgeseg compare'",
        description="Segment every image, then time RUNS passes of the in-memory path. Writes OUT/<stem>.png, "
        "OUT/<stem>.output.npy and OUT/measure.json (per-image timings, latency and inference samples in "
        "milliseconds, load time, peak memory, backend and machine; the documentation's 'Compare' page describes "
        "it). 'edgeseg compare' runs this on the host or on a device; the host computes the metrics.",
    )
    _archive_arg(p)
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    p.add_argument("--out", "-o", required=True, type=Path, help="output folder (created if missing)")
    p.add_argument("--runs", type=_count(1), default=20, help="timed passes (default %(default)s)")
    p.add_argument("--warmup", type=_count(0), default=3, help="untimed passes first (default %(default)s)")
    p.add_argument("--no-scores", action="store_true", help="do not write the raw outputs (.output.npy)")
    json_option(p, "the measure.json document")
    p.set_defaults(func=cmd_measure)
    add_global_options(parser)
    return parser, sub


# ------------------------------------------------------------------------------------------------- logging
def _line_handler() -> Any:
    """The one stderr handler: plain one-line messages, written to the *current* ``sys.stderr``."""
    import logging

    class LineHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                stream = sys.stderr
                stream.write(self.format(record) + "\n")
                stream.flush()
            except RecursionError:
                raise
            except Exception:  # noqa: BLE001, S110  a closed stderr: nothing left to tell
                pass

    return LineHandler()


def configure_logging(level: str | None = None) -> Any:
    """The ``edgeseg`` logger at ``level`` (``"quiet"``: errors, ``"verbose"``: debug, None: info), one handler.

    Messages are written as they are (no timestamp, no level name) to
    ``sys.stderr``; calling it again only changes the level. Returns the logger.
    """
    import logging

    logger = logging.getLogger(LOGGER_NAME)
    if not any(getattr(h, "_edgeseg", False) for h in logger.handlers):
        handler = _line_handler()
        handler._edgeseg = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel({"quiet": logging.ERROR, "verbose": logging.DEBUG}.get(level or "", logging.INFO))
    return logger


def _log() -> Any:
    import logging

    return logging.getLogger(LOGGER_NAME)


def say(line: str) -> None:
    """A progress line on stderr through the ``edgeseg`` logger (silenced by ``-q``)."""
    _log().info(line)


def move_legacy_archive(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """``CMD ... --archive A ...`` -> ``CMD A ...`` for the commands that took ``--archive`` (deprecated alias).

    Returns the arguments and the deprecation line to print, or None when
    ``--archive``/``-a`` was not used. The forms argparse accepted are all
    moved: ``--archive A``, ``--archive=A``, an abbreviation (``--arch A``),
    ``-a A``, ``-aA`` and ``-a=A``; a trailing ``--archive`` without a value is
    left for argparse to refuse.
    """
    args = [str(a) for a in argv]
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "--":  # global options take no value
        i += 1
    if i >= len(args) or args[i] not in LEGACY_ARCHIVE_COMMANDS:
        return args, None
    cmd = i
    for j in range(cmd + 1, len(args)):
        a = args[j]
        if a == "--":
            break
        name, eq, rest = a.partition("=")
        if len(name) > 2 and name.startswith("--") and "--archive".startswith(name):
            if eq:
                value, used = rest, 1
            elif j + 1 < len(args):
                value, used = args[j + 1], 2
            else:
                break
        elif a == "-a":
            if j + 1 >= len(args):
                break
            value, used = args[j + 1], 2
        elif a.startswith("-a") and not a.startswith("--"):
            value, used = a[3:] if a.startswith("-a=") else a[2:], 1
        else:
            continue
        del args[j:j + used]
        args.insert(cmd + 1, value)
        return args, (f"edgeseg: --archive is deprecated; give the archive first: "
                      f"edgeseg {args[cmd]} ARCHIVE ...")
    return args, None


def need_archive(path: Path | str) -> Path:
    """``path`` when it exists; else the one-line error of every archive command (exit 2)."""
    path = Path(path)
    if not path.exists():  # a dangling link too: nothing to check, so "could not run" (2), not FAIL
        raise EdgesegError(f"{path}: no such archive file or folder")
    return path


def print_json(doc: Any, *, indent: int | None = 2) -> None:
    """``doc`` as JSON on stdout (non-finite floats as null, paths as strings)."""
    print(json.dumps(_jsonable(doc), indent=indent, allow_nan=False), flush=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _class_stats(labels: np.ndarray, classes: Sequence[str]) -> list[dict[str, Any]]:
    """Coverage and bounding box of each non-background class present.

    Pixel counts from one histogram. Boxes: with up to :data:`FEW_PRESENT` classes present, from one mask
    per class; with more (a 19-class street scene), from two histograms whatever their number, of
    (row, class) and (class, column) pairs: a class's box spans the first and last row and column where
    it occurs. Memory: a band of rows at a time.
    """
    import numpy as np

    height, width = labels.shape
    count = max(len(classes), int(labels.max()) + 1)
    totals = np.zeros(count, dtype=np.int64)
    for y in range(0, height, 256):  # bincount widens to int64: a band at a time, not the whole map
        totals += np.bincount(labels[y:y + 256].ravel(), minlength=count)
    present = [int(c) for c in np.flatnonzero(totals) if c != 0]
    if len(present) <= FEW_PRESENT or count * (height + width) > (1 << 24):
        boxes = {}
        for c in present:
            mask = labels == c
            boxes[c] = (np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0)))
    else:
        per_row = np.zeros((height, count), dtype=np.int64)
        per_col = np.zeros((count, width), dtype=np.int64)
        columns = np.arange(width, dtype=np.int32)
        for y in range(0, height, 256):
            band = labels[y:y + 256].astype(np.int32)
            rows = np.arange(y, y + len(band), dtype=np.int32)[:, None]
            per_row += np.bincount((rows * count + band).ravel(), minlength=height * count).reshape(height, count)
            per_col += np.bincount((band * width + columns).ravel(), minlength=count * width).reshape(count, width)
        boxes = {c: (np.flatnonzero(per_row[:, c]), np.flatnonzero(per_col[c])) for c in present}
    stats = []
    for c in present:
        ys, xs = boxes[c]
        stats.append({"id": c, "name": classes[c] if c < len(classes) else str(c),
                      "fraction": round(float(totals[c] / labels.size), 6),
                      "box": [int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])]})
    return stats


#: up to this many classes present, ``edgeseg run``'s summary finds boxes with one mask per class
FEW_PRESENT = 3


def _describe(stats: Sequence[Mapping[str, Any]], classes: Sequence[str]) -> str:
    """``person 54.5% (x 0..319, y 9..319), ...`` from :func:`_class_stats`."""
    parts = [f"{c['name']} {c['fraction']:.1%} (x {c['box'][0]}..{c['box'][2]}, y {c['box'][1]}..{c['box'][3]})"
             for c in stats]
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
    from .archive import Archive
    from .images import iter_image_paths, load_image, overlay, save_label_map, save_scores
    from .pipelining import pipelined
    from .segmentor import Segmentor
    from .stream import is_stream, run_stream

    need_archive(args.archive)
    # videos and cameras are streams (a /dev/videoN exists and would otherwise be taken for an image)
    streams = [p for p in args.images if is_stream(p)]
    paths = list(iter_image_paths([p for p in args.images if not is_stream(p)]))
    if streams and args.probs:
        raise EdgesegError("--probs: videos get no score files; run the videos without --probs")
    suffixes = [".png"] + (["_overlay.png"] if args.overlay else []) + (["_scores.npy"] if args.probs else [])
    out = args.out
    plan = plan_outputs(paths, out, suffixes)
    failed = 0
    start = time.perf_counter()
    # several images: the backend's idle threads must not busy-wait, the decoding and writing stages need the cores
    several = len(paths) + 2 * len(streams) > 1
    with Archive.open(args.archive) as archive, Segmentor(archive, threads=args.threads, spin=False if several else None) as seg:
        if args.probs and seg.postprocess.with_argmax:
            raise EdgesegError("--probs: this archive's model has argmax folded in and outputs no scores")
        _output_folder(out)
        for video in streams:
            stats = run_stream(seg, video, out, mask_video=args.mask_video, labels_png=args.frames,
                               overlay=args.overlay, max_frames=args.max_frames, report=say)
            if args.json:
                print_json(stats.to_dict(), indent=None)
            else:
                print(stats.summary(), flush=True)
        if not paths:
            return 0
        # decoding the next image and inferring this one overlap with writing the previous one's results;
        # decoder warnings ("Corrupt EXIF data") are not errors: load_image silences them with catch_warnings,
        # which is not thread-safe, so with two decoders at once they are silenced for the process
        warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
        _map_large_allocations()
        for item in pipelined(seg, paths, lambda path: seg.load(path, max_pixels=args.max_pixels)):
            p = item.source
            if item.error is not None:
                failed += 1
                _log().error(f"skipped: {item.error}")
                if args.json:
                    print_json({"image": str(p), "error": str(item.error)}, indent=None)
                continue
            labels, rgb = item.labels, item.image
            dests = iter(plan[p])
            dest = next(dests)
            written: dict[str, str | None] = {"overlay": None, "scores": None}
            h, w = labels.shape
            try:
                with _atomic(dest) as tmp:
                    save_label_map(labels, tmp, seg.palette, compress_level=3)
                if args.probs:
                    with _atomic(plan[p][-1]) as tmp:
                        save_scores(seg.postprocess.planes(item.output, h, w, seg.preprocess_for(h, w).valid_fraction(w, h)),
                                    len(seg.classes), h, w, tmp)
                    written["scores"] = str(plan[p][-1])
                if args.overlay:
                    from PIL import Image

                    target = next(dests)
                    # blended into the decoded photo itself (one image less); a grey or 16-bit model's image is
                    # read again in colour for display
                    photo = rgb if seg.preprocess.mode == "RGB" else load_image(p, max_pixels=args.max_pixels)
                    with _atomic(target) as tmp:
                        Image.fromarray(overlay(photo, labels, seg.palette, copy=False)).save(tmp, format="PNG")
                    written["overlay"] = str(target)
            except OSError as exc:
                raise EdgesegError(
                    f"cannot write results for {p.name} into {out} ({exc.strerror or exc}); "
                    "free space or choose another --out (results written so far are kept)"
                ) from None
            stats = _class_stats(labels, seg.classes)
            if args.json:
                print_json({"image": str(p), "label_map": str(dest), **written, "width": w, "height": h,
                            "classes": stats}, indent=None)
            else:
                print(f"{p} -> {dest}  {w}x{h}  {_describe(stats, seg.classes)}", flush=True)
    done = len(paths) - failed
    seconds = time.perf_counter() - start
    summary = f"{done}/{len(paths)} images segmented in {seconds:.2f} s ({done / max(seconds, 1e-9):.1f} images/s) -> {out}"
    if args.json:
        say(summary)
    else:
        print(summary)
    return 1 if failed else 0


def _map_large_allocations(threshold: int = 4 << 20) -> None:
    """glibc: blocks of ``threshold`` bytes and more are mapped for each allocation and unmapped when freed
    (``mallopt(M_MMAP_THRESHOLD)``), instead of staying in the arena of the thread that freed them.

    ``run`` decodes in other threads than it writes in; glibc's adaptive threshold otherwise keeps a
    decoded image's 16 MB Pillow blocks in the decoder thread's arena while the writer allocates its own:
    a 64 MP photo with ``--overlay --probs`` peaked at 853 MB instead of 594 MB. No-op elsewhere (musl has
    no ``mallopt``). Source: mallopt(3).
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, threshold)  # M_MMAP_THRESHOLD (malloc.h)


def _fail(args: argparse.Namespace, why: str) -> int:
    if args.json:
        print_json({"passed": False, "verdict": f"FAIL: {why}"}, indent=None)
    else:
        print(f"FAIL: {why}")
    return 1


def cmd_verify(args: argparse.Namespace) -> int:
    from .archive import Archive
    from .verify import verify_archive

    need_archive(args.archive)
    try:
        with Archive.open(args.archive) as archive:
            signature = signature_line(archive)
            if signature.startswith("signature INVALID"):
                return _fail(args, f"{archive.source}: {signature}")
            report = verify_archive(archive)
    except (ArchiveError, VerifyError, ImageError) as exc:  # the archive is not what it claims: the check failed
        return _fail(args, str(exc))
    if args.json:
        print_json({**report.to_dict(), "signature": signature})
    else:
        print(report.verdict())
    return 0 if report.passed else 1


def _text(doc: Any, *keys: str, default: str = "n/a") -> str:
    """A report-only value of the manifest (``build_check``, ``quantization``, ``toolchain``) as one short line."""
    for key in keys:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return default if doc is None else " ".join(str(doc).split())[:300]


def _cross_build_lines(builds: Any) -> list[str]:
    """``info`` lines for wheels made by the build host (cross-compiled or repacked; manifest ``cross_build``)."""
    if not isinstance(builds, list):
        return []
    lines = []
    for b in builds:
        if not isinstance(b, dict):
            continue
        if b.get("how") == "compiled":
            layers = b.get("layers")
            n = f"{len(layers)} layers" if isinstance(layers, list) else "all layers"
            options = b.get("ncnn_options")
            chosen = [f"{k}={v}" for k, v in sorted(options.items())] if isinstance(options, dict) else []
            lines.append(f"compiled    {_text(b, 'what')} from {_text(b, 'source')} (sha256 {_text(b, 'sha256')[:16]}) "
                         f"with {_text(b, 'compiler')}, flags {_text(b, 'flags')}"
                         + (f" ({_text(' '.join(chosen))})" if chosen else "") + f", {n}, {_text(b, 'seconds')} s")
        else:
            lines.append(f"repacked    {_text(b, 'what')} from {_text(b, 'source')} (sha256 {_text(b, 'sha256')[:16]})")
    return lines


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
    from .runners import runner_class

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
    from .signing import check_signature, parse_signature

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
    from .archive import Archive
    from .runners import runner_class

    need_archive(args.archive)
    with Archive.open(args.archive) as archive:
        m = archive.manifest
        signed = signature_line(archive)
    if args.json:
        print_json({**m.doc, "signature": signed})
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
        *_cross_build_lines(m.doc.get("cross_build")),
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
    from .archive import Archive
    from .bench import bench, format_result
    from .segmentor import Segmentor

    need_archive(args.archive)
    with Archive.open(args.archive) as archive, Segmentor(archive) as seg:
        if args.image is None and not archive.manifest.golden:
            raise EdgesegError(f"{archive.source} lists no golden image; name an IMAGE to time")
        image = args.image or archive.path(archive.manifest.golden[0].image)
        result = bench(seg, image, runs=args.runs, warmup=args.warmup)
        name = archive.source.resolve().name  # the file's name: <model>-<target>-<precision>.tar.gz
    if args.json:
        print_json({"archive": name, **result.to_dict()}, indent=None)
    else:
        print(format_result(name, result))
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    from .images import iter_image_paths
    from .measure import DONE_PREFIX, measure

    need_archive(args.archive)
    images = list(iter_image_paths(args.images))
    plan_outputs(images, args.out, [".png"] + ([] if args.no_scores else [".output.npy"]))
    _output_folder(args.out)
    if args.json:  # stdout carries only the document: each image's progress line goes to stderr
        def on_image(name: str) -> None:
            say(f"{DONE_PREFIX}{name}")
    else:  # 'edgeseg compare' reads these lines on stdout (here and from devices) to show progress
        def on_image(name: str) -> None:
            print(f"{DONE_PREFIX}{name}", flush=True)
    doc = measure(args.archive, images, args.out, runs=args.runs, warmup=args.warmup,
                  scores=not args.no_scores, on_image=on_image)
    summary = f"{len(doc['images'])} images, {doc['runs']} timed runs -> {args.out}"
    if args.json:
        say(summary)
        print_json(doc)
    else:
        print(summary)
    return 0


def _handler(ref: HandlerRef) -> Handler:
    """A command's handler; ``"module:function"`` is imported now (the parser was built without it)."""
    if isinstance(ref, str):
        import importlib

        module, _, name = ref.partition(":")
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
    return ref


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse, dispatch, and turn edgeseg errors into one line on stderr.

    Adds ``-q``/``-v`` to every sub-command (:func:`add_global_options`),
    moves a deprecated ``--archive A`` to the first argument
    (:func:`move_legacy_archive`), sets the ``edgeseg`` logger's level.

    Exit codes: 0 ok; 1 a measured check failed (:class:`VerifyError`, e.g. a
    build's accuracy gate); 2 any other error; 130 interrupted.
    """
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 are shown escaped, never a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    add_global_options(parser)
    argv, deprecated = move_legacy_archive(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    log = configure_logging(getattr(args, "log_level", None))
    log.debug(f"{parser.prog} {__version__} on Python {sys.version.split()[0]} ({sys.executable}): {' '.join(argv)}")
    if deprecated:
        log.warning(deprecated)
    if getattr(args, "legacy_archive", None) is not None:
        parser.exit(2, f"{parser.prog}: error: the archive is given twice; give it once, first: "
                    f"{parser.prog} {args.command} ARCHIVE ... (see {parser.prog} {args.command} --help)\n")
    previous = _terminate_on_signals()
    t0 = time.perf_counter()
    code = 2
    try:
        code = _handler(args.func)(args)
        return code
    except EdgesegError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        code = exit_code(exc)
        return code
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        code = 130
        return code
    except _Terminated as exc:
        print(f"{parser.prog}: stopped by signal {exc.signum}", file=sys.stderr)
        code = 128 + exc.signum
        return code
    except BrokenPipeError:
        # the reader went away (``edgeseg info A | head``): stop quietly, as tools killed by SIGPIPE do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 128 + 13
        return code
    except MemoryError:
        print(f"{parser.prog}: error: out of memory; lower --max-pixels or use smaller images", file=sys.stderr)
        return 2
    except OSError as exc:  # an I/O failure the command did not expect (a path it cannot use): one line
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"{parser.prog}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001  a bug: one line for the user, the traceback with EDGESEG_DEBUG=1 or -v
        if os.environ.get("EDGESEG_DEBUG"):
            raise
        first = (str(exc).splitlines() or [""])[0][:200]
        log.debug("traceback of the internal error:", exc_info=True)
        print(f"{parser.prog}: internal error ({type(exc).__name__}: {first}); please report it "
              "(EDGESEG_DEBUG=1 or -v shows the traceback)", file=sys.stderr)
        return 2
    finally:
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before)
        log.debug(f"{args.command}: exit {code} after {time.perf_counter() - t0:.2f} s")


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


#: the entry point the host distribution ``edgeseg`` registers: ``[project.entry-points."edgeseg.cli"] host = ...``
HOST_GROUP, HOST_NAME = "edgeseg.cli", "host"


def _dist_name(folder: str) -> str:
    """``Edgeseg_Runtime-0.1.0.dist-info`` -> ``edgeseg-runtime`` (PEP 503 normalized, as importlib.metadata dedupes)."""
    import re

    return re.sub(r"[-_.]+", "-", folder.rsplit(".", 1)[0].split("-", 1)[0]).lower()


def _entry_point_value(text: str, group: str, name: str) -> str | None:
    """``module:attr`` of entry point ``name`` in ``[group]`` of an ``entry_points.txt``, or None."""
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == group:
            key, sep, value = line.partition("=")
            if sep and key.strip() == name:
                return value.split("[", 1)[0].strip()  # drop an extras marker: "mod:fn [extra]"
    return None


def host_entry_point(group: str = HOST_GROUP, name: str = HOST_NAME) -> str | None:
    """The ``module:attr`` that ``importlib.metadata.entry_points(group=group)`` names ``name``, or None.

    Reads the ``*.dist-info``/``*.egg-info`` folders of ``sys.path`` directly,
    as importlib.metadata does (the first distribution of a name on the path
    wins), without importing importlib.metadata and its email/zip/csv stack:
    measured 50-95 ms here, on every ``edgeseg`` command including ``--help``;
    this scan takes about 1 ms. A ``sys.path`` entry that is not a folder (a
    zip) is left to importlib.metadata.
    """
    seen: set[str] = set()
    zips = False
    for entry in sys.path:
        try:
            names = sorted(os.listdir(entry or "."))
        except NotADirectoryError:
            zips = True
            continue
        except OSError:
            continue
        for folder in names:
            if not folder.endswith((".dist-info", ".egg-info")):
                continue
            dist = _dist_name(folder)
            if dist in seen:
                continue
            seen.add(dist)
            try:
                with open(os.path.join(entry or ".", folder, "entry_points.txt"), encoding="utf-8") as fh:
                    text = fh.read()
            except (OSError, UnicodeDecodeError):
                continue
            value = _entry_point_value(text, group, name)
            if value:
                return value
    if zips:
        from importlib.metadata import entry_points

        found = entry_points()
        eps = found.select(group=group) if hasattr(found, "select") else found.get(group, ())  # 3.9: a dict
        for ep in eps:
            if ep.name == name:
                return str(ep.value).split("[", 1)[0].strip()
    return None


def console() -> int:
    """The ``edgeseg`` console script: the host's CLI when the host distribution is installed, else :func:`main`.

    The host distribution ``edgeseg`` registers its CLI under the entry-point
    group ``edgeseg.cli`` (name ``host``, :func:`host_entry_point`); the
    runtime distribution owns the command, so installing or removing either
    never clobbers the other's files. ``main`` itself never imports the host
    package. A host entry point that cannot be loaded (a half-removed
    install) is one line and exit 2, not a traceback.
    """
    value = host_entry_point()
    if value is None:
        return main()
    import importlib

    module, _, attr = value.partition(":")
    try:
        target: Any = importlib.import_module(module.strip())
        for part in filter(None, attr.strip().split(".")):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        print(f"edgeseg: error: the host command line ({value}, entry point '{HOST_NAME}' of '{HOST_GROUP}') "
              f"cannot be loaded ({type(exc).__name__}: {exc}); reinstall edgeseg, or uninstall it to use the "
              "device runtime's command alone", file=sys.stderr)
        return 2
    result = target()
    return 0 if result is None else int(result)


if __name__ == "__main__":
    sys.exit(main())
