"""``python -B -m edgeseg_runtime verify/info/run/bench`` on this interpreter, from the archive's own runtime/."""

from __future__ import annotations

import json
import shutil
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from edgeseg_runtime.archive import Archive
from edgeseg_runtime.errors import ArchiveError
from PIL import Image


def test_runtime_comes_from_the_archive(shipped) -> None:
    import edgeseg_runtime

    here = Path(edgeseg_runtime.__file__).resolve()
    assert here.parent == (shipped.runtime / "edgeseg_runtime").resolve()
    proc = shipped.python("-c", "import edgeseg_runtime, sys; print(edgeseg_runtime.__file__); print(sys.version)")
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.splitlines()[0]).resolve() == here
    assert proc.stdout.splitlines()[1] == sys.version.splitlines()[0]


def test_verify_passes_on_the_tar_gz(shipped, manifest) -> None:
    proc = shipped.cli("verify", shipped.archive)
    n = len(manifest.golden)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"PASS: {shipped.archive.name} ({manifest.backend.name} {manifest.target.precision})")
    assert f" {n}/{n} golden images within tolerance" in proc.stdout


def test_info_names_the_model(shipped, manifest) -> None:
    proc = shipped.cli("info", shipped.archive)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    model = manifest.model
    assert lines[1].startswith(f"model       {model.name} {model.version}  ({len(model.classes)} classes: ")
    assert f"installed here ({manifest.backend.name} " in proc.stdout  # the backend imports on this interpreter
    assert any(line.startswith(f"target      {manifest.target.name}: ") for line in lines)


def _check_label_map(out: Path, photo: Path, classes: int, size: tuple[int, int]) -> np.ndarray:
    with Image.open(out / f"{photo.stem}.png") as img:
        assert img.format == "PNG" and img.mode == "P"
        assert img.size == size, photo.name
        labels = np.asarray(img)
    assert labels.max() < classes, f"{photo.name}: class id {labels.max()} with {classes} classes"
    return labels


def test_run_one_photo_and_a_golden_image(shipped, manifest, shown_size, tmp_path: Path) -> None:
    """One ``run`` on a user photo and the archive's first golden image, whose labels must match the reference."""
    photo = shipped.photos()[0]
    golden = manifest.golden[0]
    golden_image = tmp_path / "in" / f"golden-{Path(golden.image).name}"  # no clash with a photo's name
    golden_image.parent.mkdir()
    shutil.copyfile(shipped.unpacked / golden.image, golden_image)
    out = tmp_path / "out"
    proc = shipped.cli("run", shipped.archive, photo, golden_image, "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted({f"{photo.stem}.png", f"{golden_image.stem}.png"})
    assert proc.stdout.splitlines()[-1].startswith("2/2 images segmented in ")
    w, h = shown_size(photo)
    assert f"{photo} -> {out / (photo.stem + '.png')}  {w}x{h}  " in proc.stdout
    classes = len(manifest.model.classes)
    _check_label_map(out, photo, classes, (w, h))
    labels = _check_label_map(out, golden_image, classes, shown_size(golden_image))
    with Image.open(shipped.unpacked / golden.labels) as ref:
        reference = np.asarray(ref)
    agreement = float(np.mean(labels == reference))
    assert agreement >= manifest.target.tolerance.min_label_agreement, agreement
    assert len(np.unique(reference)) > 1  # a real photo with more than one class: the comparison means something


@pytest.mark.extended
def test_run_every_photo(shipped, manifest, shown_size, tmp_path: Path) -> None:
    photos = shipped.photos()
    out = tmp_path / "out"
    proc = shipped.cli("run", shipped.archive, shipped.images, "--out", out, "--overlay")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1].startswith(f"{len(photos)}/{len(photos)} images segmented in ")
    expected = {f"{p.stem}.png" for p in photos} | {f"{p.stem}_overlay.png" for p in photos}
    assert {p.name for p in out.iterdir()} == expected
    seen = set()
    for photo in photos:
        labels = _check_label_map(out, photo, len(manifest.model.classes), shown_size(photo))
        seen |= set(np.unique(labels).tolist())
        with Image.open(out / f"{photo.stem}_overlay.png") as overlay:
            assert overlay.size == shown_size(photo) and overlay.mode == "RGB"
    assert len(seen) > 1, "every photo got one class"


@pytest.mark.extended
def test_verify_on_the_unpacked_folder_twice(shipped, manifest) -> None:
    """A folder verifies, and again: the first run left no ``__pycache__`` (or anything else) in it."""
    for _ in range(2):
        proc = shipped.cli("verify", shipped.unpacked)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.startswith(f"PASS: {shipped.unpacked.name} ({manifest.backend.name} ")
    assert not list(shipped.unpacked.rglob("__pycache__"))


@pytest.mark.extended
def test_bench_json(shipped, manifest) -> None:
    proc = shipped.cli("bench", shipped.archive, "--runs", "3", "--warmup", "1", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["archive"] == shipped.archive.name and doc["runs"] == 3
    for key in ("bare_ms", "preprocess_ms", "infer_ms", "postprocess_ms", "end_to_end_ms", "decode_ms", "encode_ms"):
        assert doc[key] > 0, key
    assert doc["end_to_end_ms"] >= doc["infer_ms"]


def _tamper(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0xFF])


@pytest.mark.extended
def test_tampered_folder_is_refused(shipped, manifest, tmp_path: Path) -> None:
    copy = tmp_path / "tampered"
    shutil.copytree(shipped.unpacked, copy)
    victim = copy / manifest.golden[0].image
    victim.write_bytes(_tamper(victim.read_bytes()))
    proc = shipped.cli("verify", copy)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.startswith("FAIL: ")
    assert f"{manifest.golden[0].image} does not match its sha256" in proc.stdout


@pytest.mark.extended
def test_tampered_tar_gz_is_refused(shipped, manifest, tmp_path: Path) -> None:
    """The same archive re-packed (same order, same sizes) with one byte of a golden image changed."""
    victim = manifest.golden[0].image
    bad = tmp_path / shipped.archive.name
    with tarfile.open(shipped.archive, "r:gz") as src, tarfile.open(bad, "w:gz") as dst:
        for member in src:
            data = src.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if member.name == victim:
                data = _tamper(data)  # type: ignore[arg-type]
            dst.addfile(member, BytesIO(data) if data is not None else None)
    proc = shipped.cli("verify", bad)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.startswith("FAIL: ") and f"{victim} does not match its sha256" in proc.stdout
    with pytest.raises(ArchiveError, match="does not match its sha256"), Archive.open(bad):
        pass
