"""Video streams (issue "Streams"): real videos made with PyAV from real photos, segmented by the default
model's cpu archive, and the outputs read back: mask video, per-frame label PNGs, overlay, stats, errors."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edgeseg
from conftest import edgeseg_cli

av = pytest.importorskip("av", reason="PyAV is not installed (pip install 'edgeseg[dev]' or 'edgeseg-runtime[video]')")

from edgeseg_runtime import Archive, Segmentor  # noqa: E402
from edgeseg_runtime.errors import ImageError, ToolchainError, exit_code  # noqa: E402
from edgeseg_runtime.images import load_label_map  # noqa: E402
from edgeseg_runtime.stream import PYAV_HINT, StreamStats, is_stream, run_stream  # noqa: E402

W, H = 640, 480
PER_PHOTO = 10  # frames panning across each photo
RATE = 30


def _photos() -> list[np.ndarray]:
    """Real photos, each resized to 720x540 (room for a 640x480 window to pan): the package's astronaut and
    rocket, scikit-image's coffee and chelsea (a cat: no person)."""
    skdata = pytest.importorskip("skimage.data", reason="skimage.data is not installed (extra 'dev')")
    images = Path(edgeseg.__file__).parent / "data" / "images"
    arrays = [np.asarray(Image.open(images / "astronaut.png").convert("RGB")), skdata.coffee(), skdata.chelsea(),
              np.asarray(Image.open(images / "rocket.png").convert("RGB"))]
    return [np.asarray(Image.fromarray(a).resize((720, 540), Image.BILINEAR)) for a in arrays]


def _panning_frames() -> list[np.ndarray]:
    """40 frames: a 640x480 window moving 8 px right and 6 px down per frame over each photo in turn."""
    return [np.ascontiguousarray(photo[6 * k:6 * k + H, 8 * k:8 * k + W]) for photo in _photos() for k in range(PER_PHOTO)]


def _lossless_encoder() -> tuple[str, str, dict[str, str]]:
    """H.264 lossless RGB (fast to decode) when PyAV's FFmpeg has libx264, else FFV1: decoded frames equal the arrays."""
    try:
        av.codec.Codec("libx264rgb", "w")
        return "libx264rgb", "rgb24", {"qp": "0", "preset": "ultrafast"}
    except Exception:  # noqa: BLE001  an FFmpeg without libx264
        return "ffv1", "bgr0", {}


def write_video(path: Path, frames: list[np.ndarray], *, rate: int = RATE, codec: tuple[str, str, dict[str, str]] | None = None
                ) -> Path:
    name, pix, options = codec or _lossless_encoder()
    with av.open(str(path), "w") as container:
        stream = container.add_stream(name, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = W, H, pix
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def leftovers(folder: Path) -> list[str]:
    """Temporary names (``.NAME.PID.tmp``) anywhere under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """A lossless 40-frame 640x480 video of real photos (30 fps) and the frames it holds."""
    frames = _panning_frames()
    path = write_video(tmp_path_factory.mktemp("clip") / "clip.mkv", frames)
    assert all(np.array_equal(a, b) for a, b in zip(decode(path), frames))  # lossless: the decoded frames are these
    return path, frames


@pytest.fixture(scope="module")
def seg(archives: dict[str, Path]) -> Iterator[Segmentor]:
    with Archive.open(archives["cpu"]) as archive, Segmentor(archive) as segmentor:
        yield segmentor


@pytest.fixture(scope="module")
def expected(seg: Segmentor, clip: tuple[Path, list[np.ndarray]]) -> list[np.ndarray]:
    """``Segmentor.segment`` of each frame: what the stream must reproduce."""
    return [seg.segment(rgb).labels for rgb in clip[1]]


class NoStreaming:
    """The segmentor seen without ``segment_stream`` (the per-frame path), optionally raising Ctrl-C at a frame."""

    def __init__(self, seg: Segmentor, interrupt_at: int | None = None) -> None:
        self.seg, self.palette, self.preprocess = seg, seg.palette, seg.preprocess
        self.interrupt_at, self.calls = interrupt_at, 0

    def segment(self, rgb: np.ndarray):  # noqa: ANN201
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        self.calls += 1
        return self.seg.segment(rgb)


def test_is_stream() -> None:
    for name in ("a.mp4", "b.MKV", "c.avi", "d.mov", "e.webm", "f.m4v", "/dev/video0", "/dev/video12"):
        assert is_stream(name), name
    for name in ("a.png", "b.jpg", "video.txt", "/dev/video", "/dev/videoX", "/dev/sda", "/tmp/dev/video0x"):
        assert not is_stream(name), name


def test_video_to_mask_video_label_pngs_and_overlay(seg: Segmentor, clip: tuple[Path, list[np.ndarray]],
                                                    expected: list[np.ndarray], tmp_path: Path) -> None:
    path, frames = clip
    lines: list[str] = []
    stats = run_stream(seg, path, tmp_path / "out", labels_png=True, mask_video=True, overlay=True, report=lines.append)
    n = len(frames)
    assert (stats.frames_read, stats.frames_segmented, stats.frames_dropped) == (n, n, 0)
    assert (stats.width, stats.height, stats.live, stats.interrupted) == (W, H, False, False)
    assert stats.fps > 0 and stats.seconds > 0
    doc = json.loads(json.dumps(stats.to_dict()))  # what --json prints
    assert doc["frames_segmented"] == n and doc["mask_codec"] == "ffv1" and doc["mask_lossless"] is True
    # progress: at most two lines a second, each "frames, FPS, dropped"
    assert len(lines) <= 2 * stats.seconds and all(re.fullmatch(r".*clip.mkv: \d+ frames, [\d.]+ FPS, 0 dropped", line)
                                                   for line in lines), lines

    # per-frame label PNGs: exactly Segmentor.segment of each decoded frame (the input video is lossless)
    folder = tmp_path / "out" / "clip"
    assert Path(stats.frames_dir) == folder
    assert sorted(p.name for p in folder.iterdir()) == [f"frame_{i:06d}.png" for i in range(n)]
    for i, want in enumerate(expected):
        png = folder / f"frame_{i:06d}.png"
        assert Image.open(png).mode == "P"
        assert np.array_equal(load_label_map(png), want), f"frame {i}"
    people = [float((want == 1).mean()) for want in expected]
    assert 0.2 < min(people[:PER_PHOTO]) and max(people[:PER_PHOTO]) < 0.9  # the astronaut: both classes in each frame

    # mask video: as many frames as the input, each exactly the palette colours of those labels (FFV1 is lossless)
    mask = tmp_path / "out" / "clip_mask.mkv"
    assert Path(stats.mask_video) == mask
    table = np.zeros((256, 3), np.uint8)
    table[:len(seg.palette)] = seg.palette
    decoded = decode(mask)
    assert len(decoded) == n
    for i, (got, want) in enumerate(zip(decoded, expected)):
        assert np.array_equal(got, table[want]), f"mask frame {i}"
    with av.open(str(mask)) as container:  # the source's timing: 30 fps
        times = [f.time for f in container.decode(video=0)]
    assert np.allclose(np.diff(times), 1 / RATE, atol=0.002)

    # overlay video (lossy H.264): as many frames, the person tinted
    overlay = decode(Path(stats.overlay_video))
    assert len(overlay) == n and overlay[0].shape == (H, W, 3)
    person = expected[0] == 1
    assert overlay[0][person][:, 0].mean() > frames[0][person][:, 0].mean() + 20  # blended towards (255, 64, 64)
    assert leftovers(tmp_path / "out") == []


def test_per_frame_path_and_no_overlap_give_the_same_labels(seg: Segmentor, clip: tuple[Path, list[np.ndarray]],
                                                           expected: list[np.ndarray], tmp_path: Path) -> None:
    """Segmentor.segment per frame (no segment_stream), in threads and all in one thread: the same label maps."""
    for name, segmentor, overlap in (("threads", NoStreaming(seg), True), ("serial", seg, False)):
        stats = run_stream(segmentor, clip[0], tmp_path / name, labels_png=True, mask_video=False, max_frames=12,
                           overlap=overlap)
        assert (stats.frames_read, stats.frames_segmented, stats.mask_video) == (12, 12, None)
        for i in range(12):
            assert np.array_equal(load_label_map(tmp_path / name / "clip" / f"frame_{i:06d}.png"), expected[i]), (name, i)


def test_live_source_drops_frames_and_keeps_the_newest(seg: Segmentor, clip: tuple[Path, list[np.ndarray]],
                                                       expected: list[np.ndarray], tmp_path: Path) -> None:
    """A file played as a camera would deliver it, at 400 fps: frames arriving while busy are dropped and counted;
    every frame written is the label map of the source frame its name says."""
    fast = write_video(tmp_path / "fast.mkv", clip[1], rate=400)
    stats = run_stream(seg, fast, tmp_path / "out", labels_png=True, live=True)
    n = len(clip[1])
    assert stats.live and stats.frames_read == n == stats.frames_segmented + stats.frames_dropped
    assert stats.frames_dropped > 0 and stats.frames_segmented >= 2
    assert len(decode(Path(stats.mask_video))) == stats.frames_segmented
    names = sorted(p.name for p in (tmp_path / "out" / "fast").iterdir())
    assert len(names) == stats.frames_segmented
    for name in names:
        index = int(name[len("frame_"):-len(".png")])
        assert np.array_equal(load_label_map(tmp_path / "out" / "fast" / name), expected[index]), name
    assert leftovers(tmp_path / "out") == []


def test_truncated_or_corrupt_video_is_one_line_and_leaves_nothing(seg: Segmentor, clip: tuple[Path, list[np.ndarray]],
                                                                   tmp_path: Path) -> None:
    data = clip[0].read_bytes()
    half = tmp_path / "half.mkv"  # Matroska: FFmpeg stops quietly where the data ends; the header's duration tells
    half.write_bytes(data[:len(data) // 2])
    mp4 = write_video(tmp_path / "whole.mp4", clip[1][:8], codec=("mpeg4", "yuv420p", {"qscale": "3"}))
    cut_mp4 = tmp_path / "cut.mp4"  # MP4 without its index (written at the end)
    cut_mp4.write_bytes(mp4.read_bytes()[:mp4.stat().st_size * 2 // 3])
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"RIFF\x00\x00\x00\x00AVI not really a video" * 50)
    for bad, why in ((half, "truncated or corrupt"), (cut_mp4, "truncated/corrupt"), (junk, "truncated/corrupt"),
                     (tmp_path / "missing.mp4", "no such video file")):
        out = tmp_path / f"out-{bad.stem}"
        with pytest.raises(ImageError) as info:
            run_stream(seg, bad, out, labels_png=True, overlay=True)
        message = str(info.value)
        assert why in message and str(bad) in message and "\n" not in message, message
        assert exit_code(info.value) == 2
        assert not out.exists() or list(out.rglob("*")) == [], list(out.rglob("*"))
    assert run_stream(seg, mp4, tmp_path / "ok").frames_segmented == 8  # the intact MP4 reads


def test_missing_camera_is_one_line(seg: Segmentor, tmp_path: Path) -> None:
    camera = "/dev/video97"
    if Path(camera).exists():
        pytest.skip(f"{camera} exists here")
    with pytest.raises(ImageError, match=r"^/dev/video97: no such camera \(is it plugged in"):
        run_stream(seg, camera, tmp_path / "out")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_missing_pyav_says_what_to_install(seg: Segmentor, clip: tuple[Path, list[np.ndarray]], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    with pytest.raises(ToolchainError) as info:
        run_stream(seg, clip[0], tmp_path / "out")
    assert str(info.value) == PYAV_HINT == "video input needs PyAV: pip install 'edgeseg-runtime[video]'"
    assert not (tmp_path / "out").exists()


def test_ctrl_c_on_a_file_leaves_no_partial_files_and_on_a_camera_keeps_what_was_recorded(
        seg: Segmentor, clip: tuple[Path, list[np.ndarray]], expected: list[np.ndarray], tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_stream(NoStreaming(seg, interrupt_at=6), clip[0], out, labels_png=True, overlay=True)
    assert list(out.rglob("*")) == []

    stats = run_stream(NoStreaming(seg, interrupt_at=6), clip[0], out, labels_png=True, live=True)
    assert stats.interrupted and stats.frames_segmented == 6
    assert len(decode(Path(stats.mask_video))) == 6  # a complete, playable file
    assert len(list((out / "clip").iterdir())) == 6 and leftovers(out) == []


def test_frames_folder_of_other_files_is_never_replaced(seg: Segmentor, clip: tuple[Path, list[np.ndarray]],
                                                        tmp_path: Path) -> None:
    mine = tmp_path / "out" / "clip"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ImageError, match="is not a folder of frame_NNNNNN.png label maps"):
        run_stream(seg, clip[0], tmp_path / "out", labels_png=True, max_frames=2)
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["clip", "notes.txt"]
    # a previous run's frames are replaced whole (no stale frames from a longer run)
    run_stream(seg, clip[0], tmp_path / "again", labels_png=True, mask_video=False, max_frames=5)
    run_stream(seg, clip[0], tmp_path / "again", labels_png=True, mask_video=False, max_frames=3)
    assert sorted(p.name for p in (tmp_path / "again" / "clip").iterdir()) == [f"frame_{i:06d}.png" for i in range(3)]


def test_cli_run_on_a_video(archives: dict[str, Path], clip: tuple[Path, list[np.ndarray]], tmp_path: Path) -> None:
    if "--max-frames" not in edgeseg_cli("run", "--help").stdout:
        pytest.skip("'edgeseg run' does not route videos to run_stream yet")
    proc = edgeseg_cli("run", archives["cpu"], clip[0], "--out", tmp_path / "out", "--json", "--max-frames", "5")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(StreamStats.__dataclass_fields__) <= set(doc)
    assert doc["frames_segmented"] == 5 and Path(doc["mask_video"]).is_file()
    bad = tmp_path / "bad.mkv"
    bad.write_bytes(clip[0].read_bytes()[:4000])
    proc = edgeseg_cli("run", archives["cpu"], bad, "--out", tmp_path / "bad-out")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "bad-out").exists() or list((tmp_path / "bad-out").rglob("*")) == []
