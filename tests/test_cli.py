"""Command line: help, one-line errors, exit codes, partial failures that lose nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import edgeseg_cli


def test_help_lists_commands() -> None:
    proc = edgeseg_cli("--help")
    assert proc.returncode == 0
    for cmd in ("run", "verify", "info", "bench", "build", "targets"):
        assert cmd in proc.stdout
    proc = edgeseg_cli("build", "--help")
    assert proc.returncode == 0 and "--with-argmax" in proc.stdout and "--output-kind" in proc.stdout


def test_targets_lists_profiles() -> None:
    proc = edgeseg_cli("targets")
    assert proc.returncode == 0
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert "onnxruntime" in lines["cpu"] and "openvino" in lines["intel"]


def test_unknown_target_one_line(tmp_path: Path) -> None:
    proc = edgeseg_cli("build", "--target", "mars", "--out", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "unknown target 'mars'; available: apple, arm, armhf, cpu, intel, jetson, tflite" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_run_keeps_going_past_a_bad_image(archives: dict[str, Path], photos: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "in" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rgba = tmp_path / "in" / "rgba.png"
    Image.fromarray(np.zeros((50, 40, 4), np.uint8), mode="RGBA").save(rgba)
    proc = edgeseg_cli("run", archives["cpu"], photos["rocket"], tmp_path / "in", "--out", tmp_path / "out")
    assert proc.returncode == 1
    assert "broken.png" in proc.stderr and "2/3 images segmented" in proc.stdout
    assert (tmp_path / "out" / "rocket.png").is_file() and (tmp_path / "out" / "rgba.png").is_file()
    assert not (tmp_path / "out" / "broken.png").exists()


def test_run_refuses_duplicate_stems(archives: dict[str, Path], photos: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "rocket.jpg"
    Image.open(photos["rocket"]).save(other)
    proc = edgeseg_cli("run", archives["cpu"], photos["rocket"], other, "--out", tmp_path / "o")
    assert proc.returncode == 2 and "would both write rocket.png" in proc.stderr


def test_run_pixel_limit(archives: dict[str, Path], photos: dict[str, Path], tmp_path: Path) -> None:
    proc = edgeseg_cli("run", archives["cpu"], photos["astronaut"], "--out", tmp_path, "--max-pixels", "1000")
    assert proc.returncode == 1 and "over the limit" in proc.stderr


@pytest.mark.slow
def test_bench_reports_ratio(archives: dict[str, Path]) -> None:
    import json

    proc = edgeseg_cli("bench", archives["cpu"], "--runs", "5", "--warmup", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    assert figures["runs"] == 5 and figures["bare_ms"] > 0
    assert figures["end_to_end_ms"] >= figures["infer_ms"]
    assert figures["overhead"] == pytest.approx(figures["end_to_end_ms"] / figures["bare_ms"] - 1)


def test_run_full_disk_is_one_clear_line(archives: dict[str, Path], photos: dict[str, Path], tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("a full disk is a small tmpfs, which needs root")
    out = tmp_path / "full"
    out.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(out)], check=True)
    try:
        fd = os.open(out / "filler", os.O_WRONLY | os.O_CREAT)  # fill it: every later write fails with ENOSPC
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        proc = edgeseg_cli("run", archives["cpu"], photos["rocket"], "--out", out)
        left = sorted(p.name for p in out.iterdir())
    finally:
        subprocess.run(["umount", "-l", str(out)], check=False)
    assert proc.returncode == 2
    assert "No space left on device" in proc.stderr and "free space or choose another --out" in proc.stderr
    assert left == ["filler"]  # no partial label map, no temporary file
    assert proc.stderr.count("\n") == 1


def test_one_exit_code_rule() -> None:
    """1 for a failed check (VerifyError and subclasses), 2 for every other error: the CLI's and invoke's."""
    from edgeseg.cli import exit_code
    from edgeseg.errors import AccuracyError, ConfigError, DeployError, VerifyError

    assert [exit_code(e) for e in (VerifyError("x"), AccuracyError("x"), ConfigError("x"), DeployError("x"),
                                   OSError("x"))] == [1, 1, 2, 2, 2]
