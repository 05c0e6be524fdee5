"""Overlapped decode / inference / post-processing (edgeseg_runtime.pipelining, Segmentor.segment_stream, edgeseg run).

The stream must give exactly what one image at a time gives, in order, keep going past a bad image,
stop on a backend failure with that error, and leave no thread behind when the caller stops early.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import edgeseg_cli
from edgeseg import SAMPLE_IMAGES
from edgeseg_runtime import Archive, ImageError, Segmentor, ToolchainError
from edgeseg_runtime.pipelining import pipelined


@pytest.fixture(scope="module")
def images(photos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Real photos at mixed sizes, PNG and JPEG, with an unreadable file among them."""
    folder = tmp_path_factory.mktemp("mixed")
    sources = [*photos.values(), *sorted(SAMPLE_IMAGES.glob("*.png"))]
    out = []
    for i, size in enumerate([(320, 240), (1024, 512), (333, 517), (640, 480), (2048, 1024), (256, 256)]):
        img = Image.open(sources[i % len(sources)]).convert("RGB").resize(size, Image.Resampling.LANCZOS)
        path = folder / f"img{i}.{'jpg' if i % 2 else 'png'}"
        img.save(path)
        out.append(path)
    broken = folder / "img_broken.png"
    broken.write_bytes(out[0].read_bytes()[:300])  # a truncated PNG
    out.insert(3, broken)
    return out


def _stage_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("edgeseg-")]


def test_stream_equals_one_at_a_time(archives: dict[str, Path], images: list[Path]) -> None:
    with Archive.open(archives["cpu"]) as archive, Segmentor(archive) as seg:
        good = [p for p in images if "broken" not in p.name]
        decoded = [seg.load(p) for p in good]
        serial = [seg.segment(rgb).labels for rgb in decoded]
        streamed = [r.labels for r in seg.segment_stream(iter(decoded), depth=1)]
        assert len(streamed) == len(serial)
        for a, b in zip(serial, streamed):
            assert a.shape == b.shape
            np.testing.assert_array_equal(a, b)
        assert any(labels.any() for labels in streamed)  # the photos have people: not all background


def test_a_bad_image_is_reported_in_place_and_the_stream_goes_on(archives: dict[str, Path], images: list[Path]) -> None:
    with Archive.open(archives["cpu"]) as archive, Segmentor(archive) as seg:
        items = list(pipelined(seg, images, seg.load))
    assert [i.source for i in items] == images
    broken = [i for i in items if i.error is not None]
    assert [i.source.name for i in broken] == ["img_broken.png"] and isinstance(broken[0].error, ImageError)
    for item in items:
        if item.error is None:
            assert item.labels is not None and item.labels.shape == item.image.shape[:2]


def test_a_backend_failure_stops_the_stream_with_its_error(archives: dict[str, Path], images: list[Path]) -> None:
    with Archive.open(archives["cpu"]) as archive, Segmentor(archive) as seg:
        real_forward, calls = seg.forward, []

        def failing(tensor: np.ndarray) -> np.ndarray:
            calls.append(1)
            if len(calls) == 3:
                raise ToolchainError("onnxruntime failed on the third image")
            return real_forward(tensor)

        seg.forward = failing  # type: ignore[method-assign]
        good = [p for p in images if "broken" not in p.name]
        seen = []
        with pytest.raises(ToolchainError, match="third image"):
            for item in pipelined(seg, good, seg.load):
                seen.append(item.source)
        assert seen == good[:2]
    _wait_for_no_stage_threads()


def test_a_source_error_is_raised_in_the_callers_thread(archives: dict[str, Path], images: list[Path]) -> None:
    def sources():
        yield images[0]
        raise RuntimeError("the camera went away")

    with Archive.open(archives["cpu"]) as archive, Segmentor(archive) as seg:
        got = []
        with pytest.raises(RuntimeError, match="camera went away"):
            for item in pipelined(seg, sources(), seg.load):
                got.append(item)
        assert len(got) == 1 and got[0].labels is not None
    _wait_for_no_stage_threads()


def test_stopping_early_leaves_no_threads(archives: dict[str, Path], images: list[Path]) -> None:
    with Archive.open(archives["cpu"]) as archive, Segmentor(archive) as seg:
        stream = pipelined(seg, images * 5, seg.load, depth=2)
        first = next(stream)
        assert first.labels is not None and _stage_threads()
        stream.close()
    _wait_for_no_stage_threads()


def _wait_for_no_stage_threads() -> None:
    deadline = time.monotonic() + 10
    while _stage_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _stage_threads()


def test_run_threads_option_writes_identical_label_maps(archives: dict[str, Path], images: list[Path], tmp_path: Path) -> None:
    good = [str(p) for p in images if "broken" not in p.name]
    one = edgeseg_cli("run", archives["cpu"], *good, "--out", tmp_path / "t1", "--threads", "1")
    two = edgeseg_cli("run", archives["cpu"], *good, "--out", tmp_path / "t2", "--threads", "2")
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert "images/s" in one.stdout.splitlines()[-1]
    for p in images:
        if "broken" in p.name:
            continue
        a = np.asarray(Image.open(tmp_path / "t1" / f"{p.stem}.png"))
        b = np.asarray(Image.open(tmp_path / "t2" / f"{p.stem}.png"))
        assert a.shape == Image.open(p).size[::-1]
        np.testing.assert_array_equal(a, b)
    bad = edgeseg_cli("run", archives["cpu"], *good, "--out", tmp_path / "t3", "--threads", "-1")
    assert bad.returncode == 2 and "--threads" in bad.stderr and "Traceback" not in bad.stderr
