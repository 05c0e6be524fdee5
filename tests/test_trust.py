"""Hostile archives, images and arguments: each case the trust issue found, kept as a regression test.

Every case ends in correct behaviour or one line and an exit code (1 = a check
failed, 2 = could not run), with nothing written outside the output folder and
no temporary folder left behind. Cases about installs and deploys are in
test_install.py / test_deploy.py; device Pythons in test_device_pythons.py;
random inputs in test_fuzz.py.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import edgeseg
from conftest import edgeseg_cli
from edgeseg.bundle import pack, write_manifest
from edgeseg.signing import new_keypair, sign_stage
from edgeseg_runtime import Archive, ArchiveError
from edgeseg_runtime.contract import LIMITS, Manifest, parse_version

ONE_LINE = "exactly one line on stderr"


def _unpack(archive: Path, dest: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _rebuild(folder: Path, dest: Path, edit: Callable[[dict[str, Any]], None] | None = None, *,
             refresh_files: bool = True, sign_key: Path | None = None) -> Path:
    """Edit an unpacked archive's manifest, optionally recompute its files table and re-sign, and pack it."""
    (folder / "manifest.sig").unlink(missing_ok=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    if edit is not None:
        edit(manifest)
    if refresh_files:
        manifest.pop("files", None)
        write_manifest(folder, manifest)
    else:
        (folder / "manifest.json").write_text(json.dumps(manifest))
    if sign_key is not None:
        sign_stage(folder, sign_key)
    return pack(folder, dest)


def _one_line_error(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1, f"{ONE_LINE}: {proc.stderr!r}"
    return proc.stderr


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("cryptography", reason="cryptography is not installed (extra 'deploy'): no signed archives")
    d = tmp_path_factory.mktemp("signed")
    kp = new_keypair(d / "keys")
    archive = edgeseg.build(target="cpu", out_dir=d, sign_key=kp.private, report=lambda _l: None).archive
    return {"archive": archive, "key": kp.private}


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TMPDIR of the test's own, to see whether an ``edgeseg-*`` folder is left behind (onnxruntime writes
    its own ``.ses`` file there on import)."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    return tmp


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(tmp)}


# ---------------------------------------------------------------- case 1
def test_unlisted_member_in_signed_targz_is_refused_at_its_header(signed: dict[str, Path], tmp_path: Path,
                                                                  private_tmp: Path) -> None:
    """A validly signed archive plus a planted .pyc / build/ / egg-info member: refused, nothing unpacked."""
    for planted in ("runtime/edgeseg_runtime/__pycache__/cli.cpython-311.pyc", "runtime/build/lib/edgeseg_runtime/cli.py",
                    "runtime/edgeseg_runtime.egg-info/PKG-INFO"):
        bad = tmp_path / "bad.tar.gz"
        with tarfile.open(signed["archive"]) as src, tarfile.open(bad, "w:gz", format=tarfile.PAX_FORMAT) as dst:
            for member in src.getmembers():
                dst.addfile(member, src.extractfile(member))
            extra = tarfile.TarInfo(planted)
            payload = b"import os; os.system('touch /tmp/pwned')"
            extra.size = len(payload)
            dst.addfile(extra, io.BytesIO(payload))
        proc = edgeseg_cli("verify", bad, env=_env(private_tmp))
        assert proc.returncode == 1 and "is not listed in the manifest" in proc.stdout and planted in proc.stdout
        proc = edgeseg_cli("info", bad, env=_env(private_tmp))
        assert "is not listed in the manifest" in _one_line_error(proc)
    assert not list(private_tmp.glob("edgeseg-*")), "the temporary extraction folder is removed"


def test_unlisted_files_in_folder_are_refused_whatever_their_name(signed: dict[str, Path], tmp_path: Path) -> None:
    folder = _unpack(signed["archive"], tmp_path / "x")
    assert edgeseg_cli("verify", folder).returncode == 0
    for planted in ("runtime/edgeseg_runtime/__pycache__/archive.cpython-311.pyc", "runtime/build/lib/x.py",
                    "runtime/edgeseg_runtime.egg-info/PKG-INFO", "golden/__pycache__/x.pyc", ".hidden"):
        path = folder / planted
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"planted")
        proc = edgeseg_cli("verify", folder)
        assert proc.returncode == 1 and f"file {planted!r} is not listed in the manifest" in proc.stdout, proc.stdout
        if "__pycache__" in planted:
            assert "python -B" in proc.stdout  # says how such a file gets there legitimately
        path.unlink()
    # a link is refused too, even one pointing at a listed file with the same bytes
    (folder / "extra.onnx").symlink_to(folder / "end2end.onnx")
    proc = edgeseg_cli("verify", folder)
    assert proc.returncode == 1 and "is a link" in proc.stdout


# ---------------------------------------------------------------- case 3
def test_info_and_verify_say_signature_invalid(signed: dict[str, Path], tmp_path: Path) -> None:
    proc = edgeseg_cli("info", signed["archive"])
    assert proc.returncode == 0 and "(signature valid;" in proc.stdout
    # a 3-byte signature
    folder = _unpack(signed["archive"], tmp_path / "three")
    (folder / "manifest.sig").write_bytes(b"abc")
    proc = edgeseg_cli("info", folder)
    assert proc.returncode == 1 and "signature INVALID" in proc.stdout and "signed by key" not in proc.stdout
    proc = edgeseg_cli("verify", folder)
    assert proc.returncode == 1 and proc.stdout.startswith("FAIL") and "signature INVALID" in proc.stdout
    # a well-formed signature over another manifest: the archive was altered after signing
    folder = _unpack(signed["archive"], tmp_path / "altered")
    sig = (folder / "manifest.sig").read_bytes()
    bad = _rebuild(folder, tmp_path / "altered.tar.gz", lambda m: m["model"].update(description="altered"))
    folder2 = _unpack(bad, tmp_path / "altered2")
    (folder2 / "manifest.sig").write_bytes(sig)
    for target in (folder2, pack(folder2, tmp_path / "altered2.tar.gz")):
        proc = edgeseg_cli("info", target)
        assert proc.returncode == 1 and "signature INVALID" in proc.stdout and "altered after signing" in proc.stdout
        proc = edgeseg_cli("verify", target, "--json")
        assert proc.returncode == 1 and json.loads(proc.stdout)["passed"] is False


# ---------------------------------------------------------------- case 4
@pytest.mark.parametrize("version", ["2.0.0\n", "٢.0.0", "2.0.0 ", "v2", "1" * 5001, "1." * 20 + "1", "-1.0", ""])
def test_release_versions_are_ascii_dotted_numbers_full_match(version: str, tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="not dotted numbers"):
        parse_version(version)
    if version:  # "" means "the model spec's version" to build
        with pytest.raises(edgeseg.ConfigError, match="must be dotted ASCII numbers"):
            edgeseg.build(target="cpu", out_dir=tmp_path, release_version=version, report=lambda _l: None)
        assert not any(tmp_path.iterdir())


def test_manifest_with_a_bad_version_is_refused(signed: dict[str, Path], tmp_path: Path) -> None:
    assert parse_version("1.10.0") > parse_version("1.9.3") and parse_version("2.0") == parse_version("2")
    folder = _unpack(signed["archive"], tmp_path / "x")
    bad = _rebuild(folder, tmp_path / "v.tar.gz", lambda m: m["release"].update(version="2.0.0\n"))
    assert "release.version" in _one_line_error(edgeseg_cli("info", bad))


# ---------------------------------------------------------------- case 5
def test_only_supported_formats_are_decoded(archives: dict[str, Path], photos: dict[str, Path], tmp_path: Path) -> None:
    """An EPS (Pillow would hand it to Ghostscript) or PSD named .png is refused before any decoder runs."""
    rgb = Image.open(photos["rocket"]).convert("RGB").resize((64, 48))
    inputs = tmp_path / "in"
    inputs.mkdir()
    rgb.save(inputs / "eps.png", format="EPS")
    (inputs / "ok.png").write_bytes(photos["rocket"].read_bytes())
    proc = edgeseg_cli("run", archives["cpu"], inputs, "--out", tmp_path / "out")
    assert proc.returncode == 1, proc.stderr
    assert "eps.png: not an image file in a format the runtime reads" in proc.stderr
    assert "ghostscript" not in proc.stderr.lower()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ok.png"]


# ---------------------------------------------------------------- case 6
def _tar_header(name: str, size_field: bytes, typeflag: bytes = b"0") -> bytes:
    """A raw ustar header whose size field is given as bytes (so it can be negative base-256)."""
    block = bytearray(512)
    block[0:len(name)] = name.encode()
    block[100:108] = b"0000644\x00"
    block[108:116] = b"0000000\x00"
    block[116:124] = b"0000000\x00"
    block[124:136] = size_field
    block[136:148] = b"00000000000\x00"
    block[156:157] = typeflag
    block[257:263] = b"ustar\x00"
    block[263:265] = b"00"
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}\x00 ".encode()
    return bytes(block)


def _manifest_member(archive: Path) -> bytes:
    with tarfile.open(archive) as tar:
        data = tar.extractfile("manifest.json").read()
    head = _tar_header("manifest.json", f"{len(data):011o}\x00".encode())
    return head + data + bytes(-len(data) % 512)


@pytest.mark.parametrize("kind", ["negative-size", "pax-flood", "pax-huge"])
def test_hostile_tar_headers_are_refused_quickly(kind: str, archives: dict[str, Path], tmp_path: Path,
                                                 private_tmp: Path) -> None:
    """CPython tarfile loops forever on a negative size (CVE-2025-8194) and is quadratic on crafted pax
    headers (CVE-2024-6232) on 3.11.7/3.11.2; edgeseg's own reader refuses both at once."""
    import gzip

    body = _manifest_member(archives["cpu"])
    if kind == "negative-size":
        body += _tar_header("end2end.onnx", b"\xff" * 12)
    else:
        # many small records (valid, 14 bytes each), or one record claiming a length far past the header
        records = b"14 x=aaaaaaaa\n" * 4000 if kind == "pax-flood" else b"99999999 path=" + b"a" * 100
        body += _tar_header("././@PaxHeader", f"{len(records):011o}\x00".encode(), b"x") + records \
            + bytes(-len(records) % 512) + _tar_header("end2end.onnx", b"00000000001\x00") + b"x" + bytes(511)
    bad = tmp_path / f"{kind}.tar.gz"
    bad.write_bytes(gzip.compress(body + bytes(1024)))
    t0 = time.monotonic()
    with pytest.raises(ArchiveError):
        with Archive.open(bad):
            pass
    assert time.monotonic() - t0 < 2.0
    proc = edgeseg_cli("verify", bad, env=_env(private_tmp))
    assert proc.returncode == 1 and proc.stdout.startswith("FAIL") and proc.stdout.count("\n") == 1, proc.stdout
    assert not list(private_tmp.glob("edgeseg-*"))


# ---------------------------------------------------------------- case 7
def test_members_are_checked_against_the_manifest_before_extraction(archives: dict[str, Path], tmp_path: Path,
                                                                    private_tmp: Path) -> None:
    """An unlisted 3 GB member and 100k empty members are refused at their first header, nothing written."""
    import gzip

    body = _manifest_member(archives["cpu"])
    three_gb = _tar_header("big.bin", f"{3 << 30:011o}\x00".encode())
    bad = tmp_path / "big.tar.gz"
    bad.write_bytes(gzip.compress(body + three_gb + bytes(512 * 64)))  # the data is never read
    t0 = time.monotonic()
    proc = edgeseg_cli("verify", bad, env=_env(private_tmp))
    assert proc.returncode == 1 and "'big.bin' is not listed in the manifest" in proc.stdout
    assert "nothing of it was unpacked" in proc.stdout
    many = b"".join(_tar_header(f"e{i}", b"00000000000\x00") for i in range(100_000))
    bad.write_bytes(gzip.compress(body + many + bytes(1024)))
    proc = edgeseg_cli("verify", bad, env=_env(private_tmp))
    assert proc.returncode == 1 and "'e0' is not listed in the manifest" in proc.stdout
    assert time.monotonic() - t0 < 30 and not list(private_tmp.glob("edgeseg-*"))


def test_huge_listed_member_is_refused_before_hashing(archives: dict[str, Path], tmp_path: Path) -> None:
    """A manifest listing a 200 GB (sparse) file: refused from the manifest alone, in well under a second."""
    folder = _unpack(archives["cpu"], tmp_path / "x")
    with open(folder / "big.bin", "wb") as fh:
        fh.truncate(200 << 30)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["big.bin"] = {"sha256": "0" * 64, "size": 200 << 30}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    t0 = time.monotonic()
    proc = edgeseg_cli("verify", folder)
    assert proc.returncode == 1 and "over the limit" in proc.stdout and "EDGESEG_MAX_ARCHIVE_BYTES" in proc.stdout
    assert time.monotonic() - t0 < 10
    with pytest.raises(ArchiveError, match="over the limit"):
        Manifest.parse((folder / "manifest.json").read_bytes())
    assert LIMITS.total_bytes < 200 << 30


# ---------------------------------------------------------------- case 8
@pytest.mark.parametrize("size", [[12000, 12000], [100000, 100000], [0, 256], [-5, 256], ["256", 256], [256]])
def test_pipeline_resize_is_checked_against_the_model_at_open(size: list[Any], archives: dict[str, Path],
                                                              photos: dict[str, Path], tmp_path: Path) -> None:
    folder = _unpack(archives["cpu"], tmp_path / "x")
    pipeline = json.loads((folder / "pipeline.json").read_text())
    resize = next(t for t in pipeline["pipeline"]["tasks"][0]["transforms"] if t["type"] == "Resize")
    resize["size"] = size
    (folder / "pipeline.json").write_text(json.dumps(pipeline))
    bad = _rebuild(folder, tmp_path / "r.tar.gz")
    t0 = time.monotonic()
    proc = edgeseg_cli("run", bad, photos["rocket"], "--out", tmp_path / "out")
    err = _one_line_error(proc)
    assert "pipeline.json" in err and time.monotonic() - t0 < 20
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_peak_memory_per_image_is_bounded(archives: dict[str, Path], tmp_path: Path) -> None:
    """A 64 MP PNG of a few kB through run --overlay --probs: peak RSS within the bound the README states
    (~9 bytes per image pixel for a two-class model + the runtime's ~100 MB), not the 3.1 GB it took before."""
    big = tmp_path / "bomb.png"
    Image.new("RGB", (8000, 8000), (90, 120, 150)).save(big, optimize=True)
    assert big.stat().st_size < 300_000
    # VmHWM of the process's own memory map: getrusage/wait4's ru_maxrss also counts the parent's pages at fork
    code = ("import sys\nfrom edgeseg_runtime.cli import main\nrc = main(sys.argv[1:])\n"
            "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')), file=sys.stderr)\nsys.exit(rc)\n")
    argv = [sys.executable, "-c", code, "run", str(archives["cpu"]), str(big), "--out",
            str(tmp_path / "out"), "--overlay", "--probs"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, err
    peak = int(err.split("VmHWM:")[1].split()[0]) * 1024
    bound = 10 * 64e6 + 150e6
    print(f"\n64 MP image, run --overlay --probs: peak RSS {peak / 1e6:.0f} MB (bound {bound / 1e6:.0f} MB)")
    assert peak < bound, f"{peak / 1e6:.0f} MB"
    labels = np.asarray(Image.open(tmp_path / "out" / "bomb.png"))
    assert labels.shape == (8000, 8000)
    scores = np.load(tmp_path / "out" / "bomb_scores.npy", mmap_mode="r")
    assert scores.shape == (2, 8000, 8000) and np.array_equal(np.argmax(scores[:, ::97, ::89], axis=0),
                                                              labels[::97, ::89])
    assert "1/1 images" in out


# ---------------------------------------------------------------- case 15
def test_targz_opens_without_python_tarfile(archives: dict[str, Path], tmp_path: Path) -> None:
    """The runtime reads .tar.gz with its own reader: nothing depends on tarfile's extractall(filter=)
    (missing in Debian 12's Python 3.11.2) or on its CVE fixes."""
    code = ("import sys\nclass Block:\n    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'tarfile': raise ImportError('tarfile blocked by test')\n"
            "sys.meta_path.insert(0, Block())\nfrom edgeseg_runtime.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", code, "verify", str(archives["cpu"])],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("PASS"), proc.stdout + proc.stderr


# ---------------------------------------------------------------- case 17
MANIFEST_EDITS: dict[str, Callable[[dict[str, Any]], None]] = {
    "files-list": lambda m: m.update(files=[]),
    "size-string": lambda m: m["files"]["end2end.onnx"].update(size="12"),
    "size-negative": lambda m: m["files"]["end2end.onnx"].update(size=-1),
    "model-missing": lambda m: m.pop("model"),
    "target-string": lambda m: m.update(target="cpu"),
    "backend-list": lambda m: m.update(backend=[]),
    "backend-net-outside": lambda m: m["backend"].update(net="/etc/passwd"),
    "palette-bad": lambda m: m["model"].update(palette=[[0, 0, 0], [300, "x", None]]),
    "tolerance-string": lambda m: m["target"].update(tolerance="tight"),
    "tolerance-nan": lambda m: m["target"]["tolerance"].update(atol=float("nan")),
    "variant-shape-0": lambda m: m["backend"].update(variants=[{"shape": [0, 256], "net": "end2end.onnx"}]),
    "deep-nesting": lambda m: m.update(provenance=json.loads("[" * 5000 + "]" * 5000)),
    "classes-empty": lambda m: m["model"].update(classes=[]),
    "golden-missing-file": lambda m: m["golden"][0].update(image="golden/nope.png"),
    "runtime-req-flag": lambda m: m["runtime"].update(requirements=["--index-url=http://evil"]),
    "huge-int": lambda m: m["model"]["input"].update(shape=[1, 3, 10 ** 400, 256]),
}


@pytest.mark.parametrize("edit", MANIFEST_EDITS, ids=list(MANIFEST_EDITS))
def test_malformed_manifest_is_one_line(edit: str, archives: dict[str, Path], photos: dict[str, Path],
                                        tmp_path: Path) -> None:
    folder = _unpack(archives["cpu"], tmp_path / "x")
    if edit == "deep-nesting":  # json.dumps cannot write it either: write the text by hand
        manifest = json.loads((folder / "manifest.json").read_text())
        text = json.dumps(manifest)[:-1] + ', "provenance": ' + "[" * 5000 + "]" * 5000 + "}"
        (folder / "manifest.json").write_text(text)
        bad = pack(folder, tmp_path / "bad.tar.gz")
    elif edit == "huge-int":
        manifest = json.loads((folder / "manifest.json").read_text())
        text = json.dumps(manifest).replace('"shape": [1, 3, 256, 256]', '"shape": [1, 3, ' + "9" * 5001 + ", 256]", 1)
        (folder / "manifest.json").write_text(text)
        bad = pack(folder, tmp_path / "bad.tar.gz")
    else:
        bad = _rebuild(folder, tmp_path / "bad.tar.gz", MANIFEST_EDITS[edit], refresh_files=edit not in (
            "files-list", "size-string", "size-negative"))
    for argv in (["info", bad], ["run", bad, photos["rocket"], "--out", tmp_path / "o"],
                 ["bench", bad, "--runs", "1"]):
        err = _one_line_error(edgeseg_cli(*argv))
        assert "manifest.json" in err, err
    proc = edgeseg_cli("verify", bad)
    assert proc.returncode == 1 and proc.stdout.startswith("FAIL") and proc.stdout.count("\n") == 1
    assert not (tmp_path / "o").exists()


PIPELINE_EDITS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "mean-two": lambda p: p["pipeline"]["tasks"][0]["transforms"][2].update(mean=[0.0, 0.0]),
    "std-zero": lambda p: p["pipeline"]["tasks"][0]["transforms"][2].update(std=[0.0, 1.0, 1.0]),
    "tasks-string": lambda p: p["pipeline"].update(tasks="Transform,Net"),
    "no-resizemask": lambda p: p["pipeline"]["tasks"].pop(),
    "classes-mismatch": lambda p: p["pipeline"]["tasks"][2]["params"].update(num_classes=21),
    "binary": lambda p: b"\x89PNG\r\n\x1a\n\x00\xff",
}


@pytest.mark.parametrize("edit", PIPELINE_EDITS, ids=list(PIPELINE_EDITS))
def test_malformed_pipeline_is_one_line(edit: str, archives: dict[str, Path], photos: dict[str, Path],
                                        tmp_path: Path) -> None:
    folder = _unpack(archives["cpu"], tmp_path / "x")
    pipeline = json.loads((folder / "pipeline.json").read_text())
    out = PIPELINE_EDITS[edit](pipeline)
    (folder / "pipeline.json").write_bytes(out if isinstance(out, bytes) else json.dumps(pipeline).encode())
    bad = _rebuild(folder, tmp_path / "bad.tar.gz")
    for argv in (["info", bad], ["run", bad, photos["rocket"], "--out", tmp_path / "o"]):
        assert "pipeline.json" in _one_line_error(edgeseg_cli(*argv))


def test_cli_usage_errors_are_one_line(archives: dict[str, Path], photos: dict[str, Path], tmp_path: Path) -> None:
    for argv in (["bench", archives["cpu"], "--runs", "-3"], ["bench", archives["cpu"],
                 "--warmup", "x"], ["run", archives["cpu"]], ["nosuchcommand"],
                 ["run", archives["cpu"], photos["rocket"], "--out", photos["astronaut"]]):
        assert "error:" in _one_line_error(edgeseg_cli(*argv))
    # a missing archive cannot be verified: 2 (could not run), not 1 (FAIL)
    assert "no such archive" in _one_line_error(edgeseg_cli("verify", tmp_path / "missing.tar.gz"))


def test_backend_not_installed_is_could_not_run(archives: dict[str, Path]) -> None:
    code = ("import sys\nclass Block:\n    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'onnxruntime': raise ImportError('blocked by test')\n"
            "sys.meta_path.insert(0, Block())\nfrom edgeseg_runtime.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", code, "verify", str(archives["cpu"])],
                          capture_output=True, text=True, timeout=120)
    assert "onnxruntime is not installed" in _one_line_error(proc)


@pytest.mark.parametrize("command", ["info", "run"])
def test_output_into_a_closed_pipe_is_quiet(command: str, archives: dict[str, Path], photos: dict[str, Path],
                                            tmp_path: Path) -> None:
    extra = [str(p) for p in photos.values()] + ["--out", str(tmp_path / "o")] if command == "run" else []
    cmd = [sys.executable, "-m", "edgeseg", command, str(archives["cpu"]), *extra]
    proc = subprocess.run(f"{' '.join(cmd)} | head -c 1", shell=True, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr and proc.stderr == ""


def test_sigterm_removes_the_temporary_extraction(archives: dict[str, Path], tmp_path: Path, private_tmp: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "edgeseg", "bench", str(archives["cpu"]), "--runs",
                             "1000000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(private_tmp))
    deadline = time.monotonic() + 60
    while not list(private_tmp.glob("edgeseg-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(private_tmp.glob("edgeseg-*")), "the archive is unpacked into TMPDIR while it runs"
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM and "stopped by signal" in err
    assert not list(private_tmp.glob("edgeseg-*")), "the temporary folder goes on SIGTERM too"


# ---------------------------------------------------------------- case 18
def test_run_never_overwrites_an_input(archives: dict[str, Path], photos: dict[str, Path], tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copyfile(photos["rocket"], inputs / "rocket.png")
    shutil.copyfile(photos["astronaut"], inputs / "rocket_overlay.png")
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}
    # --out = the input folder: rocket.png would be overwritten by its own label map
    err = _one_line_error(edgeseg_cli("run", archives["cpu"], inputs, "--out", inputs))
    assert "never overwriting an input" in err
    # a.png + a_overlay.png with --overlay into another folder: two outputs share a name
    err = _one_line_error(edgeseg_cli("run", archives["cpu"], inputs, "--out", inputs / "o2", "--overlay"))
    assert "would both write rocket_overlay.png" in err
    assert {p.name: p.read_bytes() for p in inputs.iterdir()} == before  # nothing written, nothing lost


# ---------------------------------------------------------------- case 19
@pytest.mark.parametrize("line,new", [("keep_releases = 3", 'keep_releases = "3"'), ("dynamic = false", 'dynamic = "yes"'),
                                      ("intra_op_num_threads = 0", "intra_op_num_threads = -4"),
                                      ("atol = 1e-4", 'atol = "1e-4"')])
def test_profiles_are_strictly_typed(line: str, new: str, tmp_path: Path) -> None:
    text = (Path(edgeseg.__file__).parent.parent / "targets" / "cpu.toml").read_text()
    assert line in text
    (tmp_path / "cpu.toml").write_text(text.replace(line, new, 1))
    with pytest.raises(edgeseg.ConfigError, match=line.split(" ")[0]):
        edgeseg.build(target=tmp_path / "cpu.toml", out_dir=tmp_path / "d", report=lambda _l: None)


@pytest.mark.parametrize("line,new", [("keep_releases = 3", "keep_releases = 5000"),
                                      ("atol = 1e-4", "atol = 1e7")])
def test_profile_ranges_match_the_archive_contract(line: str, new: str, tmp_path: Path) -> None:
    """A profile that loads builds an archive the device accepts: the same ranges at load time, not at the end."""
    text = (Path(edgeseg.__file__).parent.parent / "targets" / "cpu.toml").read_text()
    (tmp_path / "cpu.toml").write_text(text.replace(line, new, 1))
    with pytest.raises(edgeseg.ConfigError, match=line.split(" ")[0]):
        edgeseg.load_target(tmp_path / "cpu.toml")


def test_signature_without_its_public_key_is_invalid(signed: dict[str, Path], tmp_path: Path) -> None:
    """Dropping the public key from manifest.sig must not turn "INVALID" into "not checked here"."""
    folder = _unpack(signed["archive"], tmp_path / "x")
    sig = json.loads((folder / "manifest.sig").read_text())
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["target"]["tolerance"].update(atol=1000.0, min_label_agreement=0.0)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for variant in ({k: v for k, v in sig.items() if k != "public_key"}, {**sig, "public_key": None}):
        (folder / "manifest.sig").write_text(json.dumps(variant))
        proc = edgeseg_cli("info", folder)
        assert proc.returncode == 1 and "signature INVALID" in proc.stdout, proc.stdout
        proc = edgeseg_cli("verify", folder)
        assert proc.returncode == 1 and "signature INVALID" in proc.stdout


def test_header_floods_are_refused_at_once(signed: dict[str, Path], tmp_path: Path) -> None:
    """Headers no member needs (pax headers in a row, a folder repeated) are refused, not read for minutes."""
    import gzip

    with tarfile.open(signed["archive"]) as src:
        raw = gzip.decompress(signed["archive"].read_bytes())
        first = src.getmembers()[0]
    head = raw[:512 + first.size + (-first.size % 512)]  # the manifest member
    rest = raw[len(head):]
    pax = b"6 a=b\n"
    flood_pax = b"".join(_tar_header("././@PaxHeader", f"{len(pax):011o}\x00".encode(), b"x") + pax + bytes(506)
                         for _ in range(2000))
    flood_dirs = b"".join(_tar_header("runtime/", b"00000000000\x00", b"5") for _ in range(20000))
    for name, flood in (("pax", flood_pax), ("dirs", flood_dirs)):
        bad = tmp_path / f"{name}.tar.gz"
        bad.write_bytes(gzip.compress(head + flood + rest))
        t0 = time.monotonic()
        proc = edgeseg_cli("info", bad)
        assert proc.returncode == 2 and ("two pax headers in a row" in proc.stderr or "appears twice" in proc.stderr)
        assert time.monotonic() - t0 < 20, name


def test_folder_behind_a_switched_link_is_read_from_one_release(archives: dict[str, Path], tmp_path: Path) -> None:
    """An archive given as R/current is resolved once: switching the link mid-run cannot pair one release's model with
    another's manifest."""
    a = _unpack(archives["cpu"], tmp_path / "releases" / "1")
    link = tmp_path / "current"
    link.symlink_to(a)
    with Archive.open(link) as archive:
        b = _unpack(archives["cpu"], tmp_path / "releases" / "2")
        (tmp_path / "new").symlink_to(b)
        os.replace(tmp_path / "new", link)  # the installer's switch
        assert archive.root == a.resolve() and archive.path("end2end.onnx").parent == a.resolve()
