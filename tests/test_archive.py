"""Archive safety and integrity: tampering, truncation, unsafe members, unpacked folders."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import edgeseg_cli, scale_weights
from edgeseg.bundle import pack, write_manifest
from edgeseg_runtime import Archive, ArchiveError


def _unpack(archive: Path, dest: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _repack(folder: Path, dest: Path, *, update_manifest: bool) -> Path:
    if update_manifest:
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest.pop("files")
        write_manifest(folder, manifest)
    return pack(folder, dest)


@pytest.mark.slow
def test_altered_model_fails_verify_by_checksum(archives: dict[str, Path], tmp_path: Path) -> None:
    folder = _unpack(archives["cpu"], tmp_path / "x")
    scale_weights(folder / "end2end.onnx", folder / "end2end.onnx", -1.0)  # negate the largest initializer
    bad = _repack(folder, tmp_path / "bad.tar.gz", update_manifest=False)
    proc = edgeseg_cli("verify", bad)
    assert proc.returncode == 1
    assert proc.stdout.startswith("FAIL: ") and "end2end.onnx does not match its sha256" in proc.stdout


@pytest.mark.slow
def test_altered_model_with_rewritten_manifest_fails_numerically(archives: dict[str, Path], tmp_path: Path) -> None:
    folder = _unpack(archives["cpu"], tmp_path / "x")
    scale_weights(folder / "end2end.onnx", folder / "end2end.onnx", -1.0)  # negate the largest initializer
    bad = _repack(folder, tmp_path / "bad.tar.gz", update_manifest=True)
    proc = edgeseg_cli("verify", bad, "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["passed"] is False
    # every golden image catches it on its samples of the output (the fp32 atol is 1e-4)
    assert all(not img["passed"] and img["max_abs_diff"] > 1e-3 for img in report["images"]), report["images"]


@pytest.mark.slow
def test_unpacked_folder_runs_with_its_own_runtime(archives: dict[str, Path], tmp_path: Path) -> None:
    """The archive's runtime/ works alone: no edgeseg host package on the path."""
    folder = _unpack(archives["cpu"], tmp_path / "x")
    code = "import sys; sys.path.insert(0, sys.argv[1]); from edgeseg_runtime.cli import main; sys.exit(main(sys.argv[2:]))"
    # -B: no bytecode cache written into the archive (it would be a file the manifest does not list)
    for _ in range(2):  # and running it leaves the folder exactly as it was: the second run passes too
        proc = subprocess.run(
            [sys.executable, "-I", "-B", "-c", code, str(folder / "runtime"), "verify", str(folder)],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.startswith("PASS")
    assert not list(folder.rglob("__pycache__"))


def test_extra_file_in_folder_is_refused(archives: dict[str, Path], tmp_path: Path) -> None:
    folder = _unpack(archives["cpu"], tmp_path / "x")
    (folder / "evil.py").write_text("print('hi')")
    with pytest.raises(ArchiveError, match="not listed in the manifest"):
        with Archive.open(folder):
            pass


def test_truncated_archive(archives: dict[str, Path], tmp_path: Path) -> None:
    data = archives["cpu"].read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    proc = edgeseg_cli("verify", cut)
    assert proc.returncode == 1 and "corrupt or truncated" in proc.stdout
    proc = edgeseg_cli("info", cut)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "corrupt or truncated" in proc.stderr


def test_not_an_archive(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ArchiveError, match="corrupt or truncated"):
        with Archive.open(junk):
            pass
    empty_tar = tmp_path / "empty.tar"
    empty_tar.write_bytes(b"\x00" * 10240)  # a valid, empty tar
    with pytest.raises(ArchiveError, match="no manifest.json; not an edgeseg archive"):
        with Archive.open(empty_tar):
            pass
    with pytest.raises(ArchiveError, match="no such archive"):
        with Archive.open(tmp_path / "missing.tar.gz"):
            pass


@pytest.fixture(scope="module")
def real_manifest(archives: dict[str, Path]) -> bytes:
    """A real, valid manifest.json (the cpu archive's): hostile members are judged after it, as in a real attack."""
    with tarfile.open(archives["cpu"]) as tar:
        return tar.extractfile("manifest.json").read()


def _evil_tar(path: Path, member: tarfile.TarInfo, manifest: bytes, data: bytes = b"x") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("manifest.json")
        ok.size = len(manifest)
        tar.addfile(ok, io.BytesIO(manifest))
        if member.isfile():
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        else:
            tar.addfile(member)
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda: tarfile.TarInfo("../escape.txt"),
        lambda: tarfile.TarInfo("/abs/escape.txt"),
        lambda: tarfile.TarInfo("golden/../../escape.txt"),
    ],
    ids=["dotdot", "absolute", "nested-dotdot"],
)
def test_escaping_members_are_never_extracted(make, real_manifest: bytes, tmp_path: Path,  # noqa: ANN001
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    extract_root = tmp_path / "tmp"
    extract_root.mkdir()
    monkeypatch.setenv("TMPDIR", str(extract_root))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    # keep the temporary folder after the failure, to see what (if anything) was extracted
    monkeypatch.setattr("edgeseg_runtime.archive.shutil.rmtree", lambda *a, **k: None)
    evil = _evil_tar(tmp_path / "evil.tar.gz", make(), real_manifest)
    with pytest.raises(ArchiveError, match="escapes the archive root"):
        with Archive.open(evil):
            pass
    assert not (tmp_path / "escape.txt").exists() and not Path("/abs/escape.txt").exists()
    assert list(extract_root.iterdir()), "the temporary extraction folder was created"
    assert not any(p.is_file() for p in extract_root.rglob("*")), "nothing may be extracted, not even manifest.json"


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_links_are_refused(kind: bytes, real_manifest: bytes, tmp_path: Path) -> None:
    member = tarfile.TarInfo("end2end.onnx")
    member.type = kind
    member.linkname = "/etc/passwd"
    evil = _evil_tar(tmp_path / "link.tar.gz", member, real_manifest)
    with pytest.raises(ArchiveError, match="is a link"):
        with Archive.open(evil):
            pass


def test_pack_is_byte_identical_and_atomic(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    (stage / "sub").mkdir(parents=True)
    (stage / "b.txt").write_text("b")
    (stage / "sub" / "a.txt").write_text("a")
    write_manifest(stage, {"schema_version": 1})
    one = pack(stage, tmp_path / "one.tar.gz").read_bytes()
    (stage / "b.txt").touch()  # a newer mtime must not change the bytes
    two = pack(stage, tmp_path / "two.tar.gz").read_bytes()
    assert one == two
    with tarfile.open(tmp_path / "one.tar.gz") as tar:
        names = tar.getnames()
        # the manifest first (a device checks every later member against it), then sorted
        assert names[0] == "manifest.json" and names[1:] == sorted(names[1:])
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
    assert not list(tmp_path.glob(".*partial"))
    shutil.rmtree(stage)


@pytest.mark.slow
def test_runtime_wheel_installs_from_unpacked_archive_without_touching_it(archives: dict[str, Path], tmp_path: Path) -> None:
    """The device flow: unpack, pip install the archive's runtime wheel (no host package, no build, no index),
    verify with its console command; the archive folder is left byte for byte as it was."""
    folder = _unpack(archives["cpu"], tmp_path / "x")
    before = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    wheels = list((folder / "runtime").glob("edgeseg_runtime-*-py3-none-any.whl"))
    assert len(wheels) == 1
    site = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site), str(wheels[0])],
        capture_output=True, text=True, timeout=300,
    )
    assert pip.returncode == 0, pip.stderr
    assert (site / "bin" / "edgeseg").is_file()
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == before  # pip wrote nothing there
    env = {**os.environ, "PYTHONPATH": str(site)}
    verify = [str(site / "bin" / "edgeseg"), "verify", str(folder)]
    proc = subprocess.run(verify, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # pip's byproducts of a source build are not tolerated inside an archive: each is an unlisted file
    for planted in ("runtime/build/lib/edgeseg_runtime/cli.py", "runtime/edgeseg_runtime.egg-info/PKG-INFO",
                    "runtime/edgeseg_runtime/sitecustomize.py"):
        path = folder / planted
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("print('planted')\n")
        proc = subprocess.run(verify, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
        assert proc.returncode == 1 and "not listed in the manifest" in proc.stdout, (planted, proc.stdout)
        assert "planted" not in proc.stdout + proc.stderr
        shutil.rmtree(folder / planted.split("/")[0] / planted.split("/")[1]) if planted.count("/") > 2 else path.unlink()


def test_golden_data_is_compact_and_still_catches_a_changed_model(archives: dict[str, Path], tmp_path: Path) -> None:
    """Golden outputs larger than GOLDEN_SAMPLES elements are stored as samples at fixed positions: the
    archive's overhead (everything but the model and the wheels) stays within max(2 MB, 10 % of the model),
    and a model whose outputs moved still fails the check on those samples."""
    from edgeseg_runtime.contract import GOLDEN_SAMPLES, GOLDEN_STEP, Manifest

    with tarfile.open(archives["cpu"]) as tar:
        sizes = {m.name: m.size for m in tar.getmembers() if m.isfile()}
        manifest = Manifest.parse(tar.extractfile("manifest.json").read())
    for g in manifest.golden:
        assert g.sample is not None and g.sample.count == GOLDEN_SAMPLES and g.sample.step == GOLDEN_STEP
        assert g.sample.shape == (1, 2, 256, 256)
        assert sizes[g.output] < GOLDEN_SAMPLES * 4 + 256  # the samples, float32, and the .npy header
        assert len(set(g.sample.indices().tolist())) == GOLDEN_SAMPLES  # distinct positions
    model = sum(size for name, size in sizes.items() if name.startswith("end2end"))
    overhead = sum(size for name, size in sizes.items() if not name.startswith(("end2end", "wheels/")))
    assert overhead <= max(2_000_000, model // 10), (overhead, model)
    folder = _unpack(archives["cpu"], tmp_path / "x")
    scale_weights(folder / "end2end.onnx", folder / "end2end.onnx", 0.9)  # a 10 % smaller largest initializer
    proc = edgeseg_cli("verify", _repack(folder, tmp_path / "moved.tar.gz", update_manifest=True), "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["passed"] is False, proc.stdout
