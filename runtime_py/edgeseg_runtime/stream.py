"""Segmenting a video stream: a video file or a camera, frame by frame, into a mask video and/or label PNGs.

Frames are decoded with PyAV (FFmpeg's libraries; the runtime's optional extra ``video``:
``pip install 'edgeseg-runtime[video]'``, imported only when a stream is run), converted to
``(H, W, 3)`` uint8 RGB and segmented one at a time. Three stages overlap, each in its own thread
(PyAV, Pillow and numpy release the GIL while they work)::

    reader thread      decode frame i+1 (+ convert to RGB)
    calling thread     infer frame i            (Segmentor.segment_stream: pre-processing of the next
                                                 frames overlapping inference, in threads of its own)
    writer thread      encode / write frame i-1 (mask video, label PNG, overlay video)

``overlap=False`` runs the three one after the other in the calling thread (``Segmentor.segment``).

Outputs, for a source ``<stem>.<ext>`` (a camera ``/dev/videoN``: stem ``videoN``) in ``out_dir``:

* ``<stem>_mask.mkv``: one frame per segmented frame, each pixel the palette colour of its class.
  FFV1 (FFmpeg's lossless intra codec, ``bgr0``) in Matroska: decoding it gives back exactly the
  colours written, so the class ids are recoverable when the palette's colours are distinct. Without
  FFV1, lossless H.264 RGB (``libx264rgb``, qp 0) in Matroska; without that, MPEG-4 part 2 in MP4
  (lossy: edges blur, colours are approximate). :attr:`StreamStats.mask_codec` says which was used.
* ``<stem>/frame_NNNNNN.png``: the label map of each segmented frame (palette PNG, as ``edgeseg run``
  writes for images), ``NNNNNN`` the frame's index in the source (gaps where a live source dropped frames).
* ``<stem>_overlay.mp4``: class colours blended over the frames, H.264 (``libx264``, CRF 18, yuv420p)
  in MP4, MPEG-4 part 2 without libx264; FFV1 in ``<stem>_overlay.mkv`` for odd frame sizes.

Timing: the output frames keep the source's timestamps (milliseconds from the first segmented frame).

Live sources (cameras) deliver frames at their own pace: frames that arrive while the segmentor is
busy are dropped, only the newest is kept, and the drops are counted. From a file no frame is ever
dropped: decoding waits for the segmentor.

Every output is written under a temporary name and renamed when the whole stream is done; any error,
Ctrl-C on a file, or SIGTERM removes them all (nothing partial is left). On a live source Ctrl-C ends the
capture instead: what was recorded is finished and kept (:attr:`StreamStats.interrupted`).

Sources: PyAV (https://pyav.basswood-io.com/docs/stable/) ``av.open``, ``container.decode``,
``VideoFrame.to_ndarray/from_ndarray``, ``stream.encode``; FFV1: RFC 9043.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from .errors import EdgesegError, ImageError, ToolchainError

if TYPE_CHECKING:
    from .segmentor import Segmentor

__all__ = ["VIDEO_SUFFIXES", "StreamStats", "is_stream", "is_camera", "run_stream", "PYAV_HINT"]

#: File suffixes read as videos (lower case).
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v"})

#: What to install when PyAV is missing.
PYAV_HINT = "video input needs PyAV: pip install 'edgeseg-runtime[video]'"

_CAMERA = re.compile(r"^/dev/video[0-9]+$")

#: seconds between two progress lines (at most twice a second)
PROGRESS_INTERVAL = 0.5

#: frames decoded ahead of the segmentor (file sources) and results queued for the writer
QUEUE_DEPTH = 2

#: ``(encoder, container format, suffix, pixel format, options, lossless)`` in order of preference
_MASK_CODECS = (
    ("ffv1", "matroska", ".mkv", "bgr0", {"level": "3", "slices": "4", "slicecrc": "1"}, True),
    ("libx264rgb", "matroska", ".mkv", "rgb24", {"qp": "0", "preset": "veryfast"}, True),
    ("mpeg4", "mp4", ".mp4", "yuv420p", {"qscale": "2"}, False),
)
_OVERLAY_CODECS = (
    ("libx264", "mp4", ".mp4", "yuv420p", {"crf": "18", "preset": "veryfast"}, False),
    ("mpeg4", "mp4", ".mp4", "yuv420p", {"qscale": "3"}, False),
    ("ffv1", "matroska", ".mkv", "bgr0", {"level": "3", "slices": "4"}, True),
)


def is_camera(path: str | Path) -> bool:
    """True for a V4L2 camera device path, ``/dev/video<N>``."""
    return bool(_CAMERA.match(str(path)))


def is_stream(path: str | Path) -> bool:
    """True when ``path`` is run as a video stream: a video file suffix (:data:`VIDEO_SUFFIXES`, any case)
    or a camera ``/dev/video<N>``. Looks at the name only (the file need not exist)."""
    return is_camera(path) or Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass
class StreamStats:
    """What :func:`run_stream` did (``to_dict()`` for ``--json``).

    Attributes:
        source: the file or camera path read.
        live: frames were dropped when the segmentor was busy (a camera, or ``live=True``).
        width, height: frame size in pixels.
        frames_read: frames decoded from the source and used or dropped (``segmented + dropped``).
        frames_segmented: frames segmented and written.
        frames_dropped: frames skipped because a newer one arrived while the segmentor was busy (live only; 0 for files).
        seconds: wall-clock seconds from opening the source to the outputs renamed into place.
        fps: ``frames_segmented / seconds``: end-to-end throughput (decode, inference and encode overlapped).
        interrupted: a live capture ended by Ctrl-C (its outputs are complete and kept).
        mask_video, overlay_video: files written, or None.
        mask_codec, overlay_codec: the FFmpeg encoders used, or None.
        mask_lossless: the mask video decodes to exactly the palette colours written.
        frames_dir: folder of per-frame label PNGs, or None.
    """

    source: str
    live: bool
    width: int = 0
    height: int = 0
    frames_read: int = 0
    frames_segmented: int = 0
    frames_dropped: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    interrupted: bool = False
    mask_video: Optional[str] = None
    mask_codec: Optional[str] = None
    mask_lossless: Optional[bool] = None
    overlay_video: Optional[str] = None
    overlay_codec: Optional[str] = None
    frames_dir: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (paths as strings, seconds and fps rounded to 3 and 2 decimals)."""
        doc = asdict(self)
        doc["seconds"], doc["fps"] = round(self.seconds, 3), round(self.fps, 2)
        return doc

    def summary(self) -> str:
        """One line: ``clip.mp4: 300 frames segmented (0 dropped) in 9.81 s, 30.6 FPS -> out/clip_mask.mkv``."""
        written = [p for p in (self.mask_video, self.frames_dir, self.overlay_video) if p]
        return (f"{self.source}: {self.frames_segmented} frames segmented ({self.frames_dropped} dropped) in "
                f"{self.seconds:.2f} s, {self.fps:.1f} FPS{' (stopped by Ctrl-C)' if self.interrupted else ''}"
                f" -> {', '.join(written) or 'nothing written'}")


def _import_av() -> Any:
    """PyAV, or :class:`ToolchainError` with the extra to install."""
    try:
        import av
    except ImportError:
        raise ToolchainError(PYAV_HINT) from None
    return av


def _first_line(exc: BaseException) -> str:
    """An exception as a short phrase: FFmpeg's own words (``strerror``, without PyAV's errno and file name)."""
    text = getattr(exc, "strerror", None) or str(exc)
    return (str(text).strip().splitlines() or [type(exc).__name__])[0][:200]


# ---------------------------------------------------------------------------------------------------------------
# reading


@dataclass
class _Frame:
    index: int            # position in the source's decoded frames
    rgb: np.ndarray       # (H, W, 3) uint8
    time: Optional[float]  # presentation time in seconds, None when the source has none


_END = object()


class _Handoff:
    """A bounded hand-off between two threads.

    ``latest=False``: a FIFO of ``depth`` items, :meth:`put` waits for room (nothing is lost).
    ``latest=True``: one slot, :meth:`put` replaces an item not yet taken and counts it in :attr:`dropped`.
    """

    def __init__(self, depth: int, *, latest: bool = False) -> None:
        self.items: deque[Any] = deque()
        self.depth = 1 if latest else depth
        self.latest = latest
        self.dropped = 0
        self.cond = threading.Condition()
        self.closed = False  # the consumer is gone: puts are discarded

    def put(self, item: Any, *, final: bool = False) -> bool:
        """Hand ``item`` over; False when the consumer has closed (the producer should stop)."""
        with self.cond:
            if self.latest and not final:
                if self.items and self.items[-1] is not _END:
                    self.items.pop()
                    self.dropped += 1
            else:
                while len(self.items) >= self.depth and not self.closed and not final:
                    self.cond.wait(0.1)
            if self.closed:
                return False
            self.items.append(item)
            self.cond.notify_all()
            return True

    def get(self) -> Any:
        """The next item, waiting for one; the end marker once closed."""
        with self.cond:
            while not self.items:
                if self.closed:
                    return _END
                self.cond.wait(0.1)
            item = self.items.popleft()
            self.cond.notify_all()
            return item

    def close(self) -> int:
        """Stop accepting items; returns how many frames were left untaken (and discards them)."""
        with self.cond:
            self.closed = True
            left = sum(1 for i in self.items if isinstance(i, _Frame))
            self.items.clear()
            self.cond.notify_all()
            return left


class _Source:
    """An opened video file or camera: its first video stream, decoded frame by frame."""

    def __init__(self, av: Any, path: str, *, camera: bool) -> None:
        self.path, self.camera = path, camera
        self.av = av
        ffmpeg_error = av.error.FFmpegError
        try:
            if camera:
                if not any("v4l2" in f.split(",") for f in av.formats_available):
                    raise ToolchainError(f"{path}: this PyAV build has no V4L2 (video4linux2) input; "
                                         "cameras need PyAV's Linux wheel or an FFmpeg built with v4l2")
                self.container = av.open(path, format="v4l2")
            else:
                self.container = av.open(path)
        except EdgesegError:
            raise
        except (ffmpeg_error, OSError) as exc:
            raise ImageError(self._open_error(exc)) from None
        try:
            videos = self.container.streams.video
            if not videos:
                raise ImageError(f"{path}: holds no video stream (not a video file, or truncated/corrupt)")
            self.stream = videos[0]
            if not camera:  # frame threads hold back a few frames: fine for a file, added latency for a camera
                self.stream.thread_type = "AUTO"
            rate = self.stream.average_rate or self.stream.guessed_rate
            self.rate: Fraction = Fraction(rate) if rate and rate > 0 else Fraction(30)
        except BaseException:
            self.close()
            raise

    def _open_error(self, exc: BaseException) -> str:
        code = getattr(exc, "errno", None)
        if self.camera:
            if code == errno.ENOENT:
                return f"{self.path}: no such camera (is it plugged in? 'ls /dev/video*' lists the cameras)"
            if code in (errno.EACCES, errno.EPERM):
                return f"{self.path}: permission denied; add your user to the 'video' group (then log in again)"
            if code == errno.EBUSY:
                return f"{self.path}: camera busy; another program is using it"
            return f"{self.path}: cannot open the camera ({_first_line(exc)})"
        if code == errno.ENOENT or not Path(self.path).exists():
            return f"{self.path}: no such video file"
        if code in (errno.EACCES, errno.EPERM):
            return f"{self.path}: permission denied"
        return f"{self.path}: not a video file PyAV can read, or truncated/corrupt ({_first_line(exc)})"

    def frames(self) -> Iterator[_Frame]:
        """Every frame in presentation order as ``(H, W, 3)`` uint8 RGB.

        Raises:
            ImageError: a frame cannot be decoded, or a file ends before its declared length (truncated).
        """
        index, last_end = 0, None
        try:
            for frame in self.container.decode(self.stream):
                rgb = frame.to_ndarray(format="rgb24")
                if not rgb.flags.writeable or not rgb.flags.c_contiguous:
                    rgb = np.array(rgb)  # a view of the frame's buffer: our own copy (the overlay blends into it)
                t = frame.time
                if t is not None:
                    last_end = t + 1 / float(self.rate)
                yield _Frame(index, rgb, t)
                index += 1
        except (self.av.error.FFmpegError, OSError) as exc:
            raise ImageError(f"{self.path}: cannot decode frame {index} ({_first_line(exc)}); "
                             "the file is truncated or corrupt") from None
        if not self.camera:
            self._check_complete(index, last_end)

    def _check_complete(self, count: int, last_end: float | None) -> None:
        """A file that ends before its header says (frames, or duration) is truncated: FFmpeg's demuxers
        stop quietly at the end of the data (Matroska, AVI), so the count is checked here."""
        s = self.stream
        declared = s.frames or 0
        if count == 0:
            raise ImageError(f"{self.path}: no frame could be decoded; the file is truncated or corrupt")
        if declared and count < declared:
            raise ImageError(f"{self.path}: decoded {count} of the {declared} frames its header declares; "
                             "the file is truncated or corrupt")
        end = None
        if s.duration and s.time_base:
            end = float((s.start_time or 0) * s.time_base + s.duration * s.time_base)
        elif self.container.duration and len(self.container.streams) == 1:  # other streams may be longer
            end = ((self.container.start_time or 0) + self.container.duration) / 1e6
        slack = 2 / float(self.rate) + 0.05
        if end is not None and last_end is not None and last_end + slack < end:
            raise ImageError(f"{self.path}: frames stop at {last_end:.2f} s of its {end:.2f} s; "
                             "the file is truncated or corrupt")

    def close(self) -> None:
        try:
            self.container.close()
        except Exception:  # noqa: BLE001  closing a failed container must not hide the first error
            pass


class _Reader(threading.Thread):
    """Decodes a source into a :class:`_Handoff` (file: waits for room; live: keeps the newest)."""

    def __init__(self, frames: Iterator[_Frame], handoff: _Handoff, *, pace: bool) -> None:
        super().__init__(name="edgeseg-stream-reader", daemon=True)
        self.frames, self.handoff, self.pace = frames, handoff, pace

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001  handed to the calling thread, raised there
            self.handoff.put(exc, final=True)
        finally:
            close = getattr(self.frames, "close", None)
            if close is not None:
                close()  # the decoder's generator ends in this thread, before the container is closed

    def _run(self) -> None:
        wall0 = t0 = None
        for frame in self.frames:
            if self.pace and frame.time is not None:  # a file played as if live: at its own speed
                if wall0 is None or t0 is None:
                    wall0, t0 = time.perf_counter(), frame.time
                ahead = (frame.time - t0) - (time.perf_counter() - wall0)
                if ahead > 0:
                    time.sleep(ahead)
            if not self.handoff.put(frame):
                return
        self.handoff.put(_END, final=True)


def _handed_frames(handoff: _Handoff) -> Iterator[_Frame]:
    while True:
        item = handoff.get()
        if item is _END:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


# ---------------------------------------------------------------------------------------------------------------
# writing


def _temp(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.{os.getpid()}.tmp")


def _pick(av: Any, candidates: Sequence[tuple[Any, ...]], width: int, height: int) -> tuple[Any, ...] | None:
    """The first encoder of ``candidates`` this PyAV has, taking the pixel format (yuv420p: even sizes only)."""
    for cand in candidates:
        name, pix = cand[0], cand[3]
        if pix == "yuv420p" and (width % 2 or height % 2):
            continue
        try:
            codec = av.codec.Codec(name, "w")
        except Exception:  # noqa: BLE001  not in this FFmpeg build (PyAV raises its own UnknownCodecError)
            continue
        if pix in {f.name for f in codec.video_formats or ()}:
            return cand
    return None


class _Video:
    """One output video under a temporary name."""

    def __init__(self, av: Any, dest: Path, choice: tuple[Any, ...], width: int, height: int, rate: Fraction) -> None:
        name, fmt, _suffix, pix, options, self.lossless = choice
        self.av, self.dest, self.codec, self.tmp = av, dest, name, _temp(dest)
        self.container = av.open(str(self.tmp), "w", format=fmt)
        try:
            self.stream = self.container.add_stream(name, rate=rate, options=dict(options))
            self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, pix
            self.stream.codec_context.time_base = Fraction(1, 1000)  # pts in milliseconds (the source's timing)
            self.stream.thread_type = "AUTO"
        except BaseException:
            self.container.close()
            raise
        self.last_pts = -1

    def write(self, rgb: np.ndarray, ms: int) -> None:
        frame = self.av.VideoFrame.from_ndarray(rgb, format="rgb24")
        self.last_pts = frame.pts = max(ms, self.last_pts + 1)
        frame.time_base = Fraction(1, 1000)
        self.container.mux(self.stream.encode(frame))

    def finish(self) -> None:
        self.container.mux(self.stream.encode(None))  # flush the encoder's delayed frames
        self.container.close()

    def discard(self) -> None:
        try:
            self.container.close()
        except Exception:  # noqa: BLE001  removing it anyway
            pass
        _unlink(self.tmp)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _colour_table(palette: Sequence[Sequence[int]] | None) -> np.ndarray:
    """``(N, 3)`` uint8 colours by class id, N >= 256; classes past the palette are black."""
    colours = np.asarray(palette or [], dtype=np.int64).reshape(-1, 3)
    table = np.zeros((max(256, len(colours)), 3), dtype=np.uint8)
    table[:len(colours)] = np.clip(colours, 0, 255)
    return table


class _Sink:
    """The outputs of one stream: mask video, label PNGs, overlay video, all under temporary names until
    :meth:`finish` renames them into place (:meth:`discard` removes them)."""

    def __init__(self, av: Any, out_dir: Path, stem: str, *, width: int, height: int, rate: Fraction,
                 palette: Sequence[Sequence[int]] | None, mask_video: bool, labels_png: bool, overlay: bool,
                 never_write: Path | None) -> None:
        from .images import overlay as blend
        from .images import save_label_map

        from PIL import Image

        self.blend, self.save_label_map, self.Image = blend, save_label_map, Image
        self.palette = [list(c) for c in palette or []]
        self.table = _colour_table(palette)
        self.videos: list[_Video] = []
        self.mask: _Video | None = None
        self.overlay: _Video | None = None
        self.frames_dir: Path | None = None
        self.frames_tmp: Path | None = None
        self.t0: float | None = None
        self.rate = rate
        self.written = 0
        plans: list[tuple[str, Sequence[tuple[Any, ...]]]] = []
        if mask_video:
            plans.append(("_mask", _MASK_CODECS))
        if overlay:
            plans.append(("_overlay", _OVERLAY_CODECS))
        choices = []
        for suffix, candidates in plans:
            choice = _pick(av, candidates, width, height)
            if choice is None:
                raise ToolchainError(f"this PyAV's FFmpeg has none of the encoders {', '.join(c[0] for c in candidates)} "
                                     f"for a {width}x{height} {suffix[1:]} video; install PyAV's own wheel")
            dest = out_dir / f"{stem}{suffix}{choice[2]}"
            choices.append((suffix, dest, choice))
        dests = [d for _, d, _ in choices] + ([out_dir / stem] if labels_png else [])
        for dest in dests:
            if never_write is not None and os.path.realpath(dest) == os.path.realpath(never_write):
                raise ImageError(f"{never_write} would be overwritten by its own output {dest.name}; "
                                 "never overwriting an input: choose another --out")
        if labels_png:
            self._check_frames_dir(out_dir / stem)
        try:
            for suffix, dest, choice in choices:
                video = _Video(av, dest, choice, width, height, rate)
                self.videos.append(video)
                if suffix == "_mask":
                    self.mask = video
                else:
                    self.overlay = video
            if labels_png:
                self.frames_dir = out_dir / stem
                self.frames_tmp = _temp(self.frames_dir)
                if self.frames_tmp.exists():
                    shutil.rmtree(self.frames_tmp)
                self.frames_tmp.mkdir()
        except BaseException:
            self.discard()
            raise

    @staticmethod
    def _check_frames_dir(path: Path) -> None:
        """``OUT/<stem>`` may be replaced only when it is a folder of this function's frame PNGs (or absent)."""
        if not path.exists():
            return
        if not path.is_dir() or any(not re.fullmatch(r"frame_[0-9]+\.png", c.name) or not c.is_file()
                                    for c in path.iterdir()):
            raise ImageError(f"{path} exists and is not a folder of frame_NNNNNN.png label maps; "
                             "choose another --out (it is never replaced)")

    def _colours(self, labels: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 palette colours of ``(H, W)`` class ids (Pillow's P -> RGB for uint8: 4x numpy's take)."""
        if labels.dtype == np.uint8:
            img = self.Image.fromarray(labels)
            img.putpalette(self.table[:256].tobytes())
            return np.asarray(img.convert("RGB"))
        return np.take(self.table, np.minimum(labels, len(self.table) - 1), axis=0)

    def write(self, frame: _Frame, labels: np.ndarray) -> None:
        """Write one segmented frame: ``labels`` ``(H, W)`` uint8/uint16 class ids of ``frame.rgb``."""
        if frame.time is None:
            ms = round(self.written * 1000 / self.rate)
        else:
            if self.t0 is None:
                self.t0 = frame.time
            ms = round((frame.time - self.t0) * 1000)
        if self.mask is not None:
            self.mask.write(self._colours(labels), ms)
        if self.frames_tmp is not None:
            self.save_label_map(labels, self.frames_tmp / f"frame_{frame.index:06d}.png", self.palette)
        if self.overlay is not None:
            self.overlay.write(self.blend(frame.rgb, labels, self.palette, copy=False), ms)
        self.written += 1

    def finish(self) -> None:
        """Flush the encoders and rename every output into place (any failure: all removed)."""
        renamed: list[Path] = []
        try:
            for video in self.videos:
                video.finish()
            for video in self.videos:
                os.replace(video.tmp, video.dest)
                renamed.append(video.dest)
            if self.frames_tmp is not None and self.frames_dir is not None:
                old = None
                if self.frames_dir.exists():  # a previous run's frames (checked at the start): replaced whole
                    old = self.frames_dir.with_name(f".{self.frames_dir.name}.{os.getpid()}.old")
                    os.replace(self.frames_dir, old)
                os.replace(self.frames_tmp, self.frames_dir)
                self.frames_tmp = None
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            for dest in renamed:
                _unlink(dest)
            self.discard()
            raise

    def discard(self) -> None:
        for video in self.videos:
            video.discard()
        if self.frames_tmp is not None:
            shutil.rmtree(self.frames_tmp, ignore_errors=True)
            self.frames_tmp = None


class _Writer(threading.Thread):
    """Writes ``(frame, labels)`` pairs from a :class:`_Handoff` into a :class:`_Sink`; keeps the first error."""

    def __init__(self, sink: _Sink, handoff: _Handoff) -> None:
        super().__init__(name="edgeseg-stream-writer", daemon=True)
        self.sink, self.handoff = sink, handoff
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while True:
                item = self.handoff.get()
                if item is _END:
                    return
                self.sink.write(*item)
        except BaseException as exc:  # noqa: BLE001  raised in the calling thread
            self.error = exc
            self.handoff.close()


# ---------------------------------------------------------------------------------------------------------------
# the loop


def _segmented(segmentor: Segmentor, frames: Iterator[_Frame], limit: int | None, *, live: bool, overlap: bool
               ) -> Iterator[tuple[_Frame, np.ndarray]]:
    """``(frame, labels)`` for each frame, in order; at most ``limit`` frames are taken from ``frames``
    (with ``segment_stream``, in its loader thread: ``pending`` pairs each result with its frame)."""
    pending: deque[_Frame] = deque()

    def images() -> Iterator[np.ndarray]:
        for n, frame in enumerate(frames):
            if limit is not None and n >= limit:
                return
            pending.append(frame)
            yield frame.rgb

    # ---- the one call site of the segmentor. Segmentor.segment_stream (pre-processing of the next frames
    # overlapping inference, results in order) is used when the runtime has it; Segmentor.segment otherwise.
    stream = getattr(segmentor, "segment_stream", None) if overlap else None
    if stream is not None:
        # live: one frame waiting per stage, so that a frame is taken from the camera as late as possible
        results: Iterable[np.ndarray] = (r.labels for r in stream(images(), depth=1 if live else 2))
    else:
        results = (segmentor.segment(rgb).labels for rgb in images())
    # ----
    for labels in results:
        yield pending.popleft(), labels


def run_stream(segmentor: Segmentor, source: str | Path, out_dir: str | Path, *, mask_video: bool = True,
               labels_png: bool = False, overlay: bool = False, max_frames: int | None = None,
               live: bool | None = None, overlap: bool = True,
               report: Callable[[str], None] | None = None) -> StreamStats:
    """Segment every frame of a video file or camera and write the results into ``out_dir`` (module doc).

    Args:
        segmentor: an entered :class:`~edgeseg_runtime.segmentor.Segmentor` of an RGB model.
        source: a video file (:data:`VIDEO_SUFFIXES`; any container FFmpeg reads) or ``/dev/video<N>`` (V4L2).
        out_dir: output folder (created if missing).
        mask_video: write ``<stem>_mask.mkv`` (palette colours of the label maps).
        labels_png: write ``<stem>/frame_NNNNNN.png`` label maps (palette PNGs).
        overlay: write ``<stem>_overlay.mp4`` (class colours blended on the frames).
        max_frames: stop after this many frames segmented (None: the whole file, or until Ctrl-C for a camera).
        live: drop frames that arrive while the segmentor is busy (default: True for a camera, False for a
            file; a file with ``live=True`` is played at its own frame rate, as a camera would deliver it).
        overlap: decode, inference and encode in three threads (False: one after the other, in this thread;
            a live source then drops nothing itself, its driver does).
        report: called with a progress line (frames, FPS, dropped) at most twice a second.

    Returns:
        :class:`StreamStats` of the run.

    Raises:
        ToolchainError: PyAV is not installed, or its FFmpeg lacks every usable encoder (or V4L2 for a
            camera); the backend failed on a frame.
        ImageError: the source is missing, not a video, truncated or corrupt (a frame fails to decode, or
            a file ends before its header says); a camera is missing, busy or not permitted; the model does
            not read RGB; an output would overwrite the source; ``OUT/<stem>`` exists and is not a folder of
            frame PNGs.
        EdgesegError: no output asked for, or an output cannot be written (disk full, permissions).
        KeyboardInterrupt: Ctrl-C with a file source (after removing every temporary output).

    Every message is one line. On any error, and on Ctrl-C with a file source, no output file is left.
    """
    av = _import_av()
    path, camera = str(source), is_camera(source)
    live = camera if live is None else live
    out = Path(out_dir)
    if not (mask_video or labels_png or overlay):
        raise EdgesegError(f"{path}: no output asked for; keep the mask video or ask for frame PNGs or an overlay")
    if max_frames is not None and max_frames < 1:
        raise EdgesegError(f"max_frames must be at least 1, not {max_frames}")
    if not camera and not Path(path).is_file():
        raise ImageError(f"{path}: no such video file")
    mode = getattr(getattr(segmentor, "preprocess", None), "mode", "RGB")
    if mode != "RGB":
        raise ImageError(f"{path}: video frames are RGB, but this archive's model reads {mode} images")
    start = time.perf_counter()
    stats = StreamStats(source=path, live=live)
    src = _Source(av, path, camera=camera)
    sink: _Sink | None = None
    reader: _Reader | None = None
    writer: _Writer | None = None
    frames_in: _Handoff | None = None
    to_write: _Handoff | None = None
    inline: Iterator[_Frame] | None = None  # the decoder's generator when not overlapped
    try:
        stats.width, stats.height = int(src.stream.width), int(src.stream.height)
        stem = Path(path).stem if not camera else Path(path).name
        try:
            if out.exists() and not out.is_dir():
                raise EdgesegError(f"--out {out} exists and is not a folder; choose another --out")
            out.mkdir(parents=True, exist_ok=True)
            sink = _Sink(av, out, stem, width=stats.width, height=stats.height, rate=src.rate,
                         palette=getattr(segmentor, "palette", None), mask_video=mask_video, labels_png=labels_png,
                         overlay=overlay, never_write=None if camera else Path(path))
        except OSError as exc:
            raise EdgesegError(f"cannot write into {out} ({exc.strerror or exc}); choose another --out") from None

        if overlap:
            frames_in = _Handoff(QUEUE_DEPTH, latest=live)
            reader = _Reader(src.frames(), frames_in, pace=live and not camera)
            to_write = _Handoff(QUEUE_DEPTH)
            writer = _Writer(sink, to_write)
            reader.start()
            writer.start()
            frames: Iterator[_Frame] = _handed_frames(frames_in)
        else:
            frames = src.frames()
            inline = frames

        last_report = time.perf_counter()
        results = _segmented(segmentor, frames, max_frames, live=live, overlap=overlap)
        try:
            for frame, labels in results:
                if writer is not None and to_write is not None:
                    if writer.error is not None or not to_write.put((frame, labels)):
                        break
                else:
                    sink.write(frame, labels)
                stats.frames_segmented += 1
                now = time.perf_counter()
                if report is not None and now - last_report >= PROGRESS_INTERVAL:
                    last_report = now
                    dropped = frames_in.dropped if frames_in is not None else 0
                    report(f"{path}: {stats.frames_segmented} frames, "
                           f"{stats.frames_segmented / (now - start):.1f} FPS, {dropped} dropped")
        except KeyboardInterrupt:
            if not live:
                raise
            stats.interrupted = True  # a camera is stopped with Ctrl-C: finish what was recorded
        finally:
            results.close()
        if frames_in is not None and reader is not None:
            frames_in.close()
            reader.join(timeout=10)
            stats.frames_dropped = frames_in.dropped
        if writer is not None and to_write is not None:
            to_write.put(_END, final=True)
            writer.join()
            if writer.error is not None:
                raise writer.error
        stats.frames_segmented = sink.written  # what reached the outputs (a Ctrl-C may fall between two counts)
        stats.frames_read = stats.frames_segmented + stats.frames_dropped
        if stats.frames_segmented == 0:
            raise ImageError(f"{path}: no frame was segmented")
        sink.finish()
    except OSError as exc:
        raise EdgesegError(f"cannot write the results of {path} into {out} ({exc.strerror or exc}); "
                           "free space or choose another --out") from None
    except av.error.FFmpegError as exc:
        raise EdgesegError(f"cannot encode the results of {path} ({_first_line(exc)})") from None
    finally:
        if inline is not None:
            inline.close()  # type: ignore[attr-defined]
        if frames_in is not None:
            frames_in.close()
        if to_write is not None:
            to_write.close()
        for thread in (reader, writer):
            if thread is not None and thread.is_alive():
                thread.join(timeout=10)
        if sink is not None:
            sink.discard()  # after finish() nothing is left to remove; otherwise every temporary output
        if reader is None or not reader.is_alive():
            src.close()  # (a reader stuck in the driver keeps its container; the process exit frees it)
    stats.seconds = time.perf_counter() - start
    stats.fps = stats.frames_segmented / stats.seconds if stats.seconds > 0 else 0.0
    if sink.mask is not None:
        stats.mask_video, stats.mask_codec, stats.mask_lossless = str(sink.mask.dest), sink.mask.codec, sink.mask.lossless
    if sink.overlay is not None:
        stats.overlay_video, stats.overlay_codec = str(sink.overlay.dest), sink.overlay.codec
    if sink.frames_dir is not None:
        stats.frames_dir = str(sink.frames_dir)
    return stats
