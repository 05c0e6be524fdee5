"""The main job end to end: archives of the default model, run on real photos, checked against LiteRT."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edgeseg
from conftest import HAS_OPENVINO, edgeseg_cli, reference_mask

pytestmark = pytest.mark.slow

TARGETS = ["cpu", pytest.param("intel", marks=pytest.mark.skipif(not HAS_OPENVINO, reason="openvino not installed"))]


@pytest.mark.parametrize("target", TARGETS)
def test_run_agrees_with_litert_reference(target: str, archives: dict[str, Path], photos: dict[str, Path], tmp_path: Path) -> None:
    proc = edgeseg_cli("run", archives[target], *photos.values(), "--out", tmp_path, "--overlay", "--probs")
    assert proc.returncode == 0, proc.stderr
    for name, photo in photos.items():
        with Image.open(tmp_path / f"{name}.png") as img:
            assert img.mode == "P" and img.getpalette()[3:6] == [255, 64, 64]
            labels = np.asarray(img)
        with Image.open(photo) as src:
            assert labels.shape == (src.height, src.width)
        ref = reference_mask(name)
        agreement = float(np.mean(labels == ref))
        assert agreement >= 0.995, f"{target}/{name}: {agreement:.4%} agreement with LiteRT"
        if name == "rocket":
            assert labels.mean() < 0.005, "rocket has no person"
        else:
            assert labels.mean() > 0.2, f"{name} shows a person"
        scores = np.load(tmp_path / f"{name}_scores.npy")
        assert scores.shape == (2, *labels.shape) and scores.dtype == np.float32
        assert np.array_equal(np.argmax(scores, axis=0) == 1, labels == 1)
        with Image.open(tmp_path / f"{name}_overlay.png") as ov:
            assert ov.size == (labels.shape[1], labels.shape[0]) and ov.mode == "RGB"


@pytest.mark.parametrize("target", TARGETS)
def test_verify_passes_and_reports(target: str, archives: dict[str, Path]) -> None:
    proc = edgeseg_cli("verify", archives[target])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("PASS: ") and "3/3 golden images" in proc.stdout
    assert len(proc.stdout.strip().splitlines()) == 1


def test_build_is_deterministic(archives: dict[str, Path], tmp_path: Path) -> None:
    again = edgeseg.build(target="cpu", out_dir=tmp_path, report=lambda _l: None).archive
    digest = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()  # noqa: E731
    assert digest(again) == digest(archives["cpu"])


def test_build_cli_prints_archive_on_last_line(tmp_path: Path) -> None:
    proc = edgeseg_cli("build", "--target", "cpu", "--out", tmp_path / "d")
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert Path(last) == tmp_path / "d" / "selfie_segmentation-cpu-fp32.tar.gz" and Path(last).is_file()
    assert "golden check" in proc.stderr  # progress went to stderr


def test_intel_archive_holds_fp16_ir(archives: dict[str, Path]) -> None:
    if "intel" not in archives:
        pytest.skip("openvino not installed")
    from edgeseg_runtime import Archive

    with Archive.open(archives["intel"]) as a, Archive.open(archives["cpu"]) as c:
        assert a.manifest["backend"]["net"] == "end2end.xml" and a.manifest["target"]["precision"] == "fp16"
        onnx_bytes = c.manifest["files"]["end2end.onnx"]["size"]
        # fp16-compressed weights: the .bin holds about half the bytes of the fp32 ONNX
        assert a.manifest["files"]["end2end.bin"]["size"] < 0.6 * onnx_bytes
        assert a.manifest["build_check"]["passed"] is True


def test_info_describes_archive(archives: dict[str, Path]) -> None:
    proc = edgeseg_cli("info", archives["cpu"])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "selfie_segmentation 0.10.14" in out and "onnxruntime fp32" in out
    assert "[1, 3, 256, 256]" in out and "[1, 2, 256, 256]" in out and "installed here" in out


def test_shipped_model_matches_its_sha256() -> None:
    sums = (edgeseg.DEFAULT_MODEL.parent / "SHA256SUMS").read_text().split()
    assert sums[1] == "selfie_segmentation.onnx"
    assert hashlib.sha256(edgeseg.DEFAULT_MODEL.read_bytes()).hexdigest() == sums[0]
    for name in ("LICENSE", "NOTICE", "spec.toml"):
        assert (edgeseg.DEFAULT_MODEL.parent / name).is_file()


def test_spec_given_as_flags_equals_spec_file(archives: dict[str, Path], tmp_path: Path) -> None:
    flags = [
        "--model", edgeseg.DEFAULT_MODEL, "--name", "selfie_flags", "--input-layout", "NHWC", "--input-size", "256x256",
        "--std", "255,255,255", "--output-kind", "probability", "--output-layout", "NHWC", "--classes", "background,person",
    ]
    proc = edgeseg_cli("build", "--target", "cpu", *flags, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    from edgeseg_runtime import Archive

    with Archive.open(Path(proc.stdout.strip().splitlines()[-1])) as a, Archive.open(archives["cpu"]) as b:
        tasks_a, tasks_b = a.pipeline["pipeline"]["tasks"], b.pipeline["pipeline"]["tasks"]
        assert [t for t in tasks_a if t["module"] != "Net"] == [t for t in tasks_b if t["module"] != "Net"]
        for entry in a.manifest["golden"]:
            assert a.path(entry["output"]).read_bytes() == b.path(entry["output"]).read_bytes()
