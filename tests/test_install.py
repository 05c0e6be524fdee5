"""The device side of deployment without SSH: signatures, versions, lock, recovery, waves, inventory bounds."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from edgeseg_runtime.archive import sha256_file
from edgeseg_runtime.contract import Manifest
from edgeseg_runtime.errors import InstallError, SignatureError
from edgeseg_runtime.install import DeviceBusy, InstallRoot, parse_version, part_name
from edgeseg_runtime.signing import load_public_key, verify_manifest

import edgeseg
from edgeseg.deploy.fleet import Waves, parse_waves, plan_waves
from edgeseg.deploy.inventory import Device as Entry
from edgeseg.deploy.inventory import load_inventory
from edgeseg.errors import ConfigError
from edgeseg.signing import load_private_key, new_keypair, sign_bytes

RUNTIME = Path(edgeseg.__file__).parents[1] / "runtime_py"


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("cryptography", reason="cryptography is not installed (extra 'deploy'): no signed archives")
    d = tmp_path_factory.mktemp("signed")
    kp = new_keypair(d / "keys")
    out = {"key": kp.private, "pub": kp.public}
    for v in ("1.0.0", "2.0.0", "0.9.0"):
        out[v] = edgeseg.build(target="cpu", out_dir=d / v, release_version=v, sign_key=kp.private, report=lambda _l: None).archive
    return out


def _device(tmp_path: Path, pub: Path) -> InstallRoot:
    dev = InstallRoot(tmp_path / "root")
    key_id, _ = load_public_key(pub)
    shutil.copyfile(pub, dev.root / "trusted_keys" / f"{key_id}.pem")
    return dev


def _receive(dev: InstallRoot, archive: Path, tmp: Path, *, signature: bool = True) -> str:
    """Place an archive's files in the device's incoming/ as a finished upload would; returns the manifest sha256."""
    folder = tmp / f"unpacked-{archive.parent.name}"
    if not folder.exists():
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
    for p in folder.rglob("*"):
        if p.is_file() and p.name != "manifest.sig":
            shutil.copyfile(p, dev.root / "incoming" / part_name(sha256_file(p), p.stat().st_size, "test"))
    msha = sha256_file(folder / "manifest.json")
    if signature:
        shutil.copyfile(folder / "manifest.sig", dev.root / "incoming" / f"{msha}.sig")
    return msha


def _agent(root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real agent in its own process, as the host (or R/bin/edgeseg) runs it."""
    env = {**os.environ, "PYTHONPATH": str(RUNTIME), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "edgeseg_runtime.agent", "--root", str(root), *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


def _answer(proc: subprocess.CompletedProcess) -> dict:
    last = proc.stdout.strip().splitlines()[-1]
    assert last[:2] in ("= ", "! "), proc.stdout + proc.stderr
    return json.loads(last[2:])


def test_versions_compare_numerically() -> None:
    assert parse_version("1.10.0") > parse_version("1.9.3") > parse_version("1.9")
    assert parse_version("2.0") == parse_version("2") == parse_version("2.0.0")
    # the contract's rule: ASCII digits only, matched in full (no trailing newline, no Arabic-Indic digits)
    for bad in ("v1", "1.2-rc1", "", "1..2", "2.0.0\n", "\u0662.0.0", "1" * 10, ".".join("1" * 9)):
        with pytest.raises(InstallError, match="dotted numbers"):
            parse_version(bad)


def test_signature_checks(signed: dict[str, Path], tmp_path: Path) -> None:
    key_id, pub = load_public_key(signed["pub"])
    data = b'{"files": {}}'
    sig = sign_bytes(data, load_private_key(signed["key"]))
    assert verify_manifest(data, sig, {key_id: pub}) == key_id
    with pytest.raises(SignatureError, match="altered after signing"):
        verify_manifest(data + b" ", sig, {key_id: pub})
    with pytest.raises(SignatureError, match="does not trust"):
        verify_manifest(data, sig, {})
    with pytest.raises(SignatureError, match="unsigned"):
        verify_manifest(data, None, {key_id: pub})
    doc = json.loads(sig)
    doc["signature"] = doc["signature"][:-4] + "AAA="
    with pytest.raises(SignatureError):
        verify_manifest(data, json.dumps(doc).encode(), {key_id: pub})
    with pytest.raises(SignatureError, match="not a valid"):
        verify_manifest(data, b"garbage", {key_id: pub})


def test_install_refuses_unsigned_and_keeps_current(signed: dict[str, Path], tmp_path: Path) -> None:
    dev = _device(tmp_path, signed["pub"])
    first = dev.install(_receive(dev, signed["1.0.0"], tmp_path))
    assert first.status == "installed" and dev.state().version == "1.0.0"
    assert (dev.root / "version_floor").read_text() == "1.0.0\n"
    msha = _receive(dev, signed["2.0.0"], tmp_path, signature=False)
    with pytest.raises(SignatureError, match="unsigned"):
        dev.install(msha)
    assert dev.state().version == "1.0.0" and dev.state().journal is None


@pytest.mark.parametrize("phase", ["assemble", "dependencies", "health"])
def test_recover_discards_an_install_cut_before_the_switch(signed: dict[str, Path], tmp_path: Path, phase: str) -> None:
    dev = _device(tmp_path, signed["pub"])
    dev.install(_receive(dev, signed["1.0.0"], tmp_path))
    # what a power cut leaves: a half-built slot and the journal of its phase
    msha = _receive(dev, signed["2.0.0"], tmp_path)
    dev.ingest({msha: None})
    staging = dev.root / "releases" / ".staging-2.0.0"
    (staging / "golden").mkdir(parents=True)
    (dev.root / "journal.json").write_text(json.dumps({"phase": phase, "version": "2.0.0", "manifest": msha}))
    rec = dev.recover()
    assert (rec.status, rec.version) == ("discarded", "1.0.0")
    assert not staging.exists() and not (dev.root / "journal.json").exists()
    assert dev.install(msha).status == "installed"  # the next deploy needs no upload
    assert dev.state().version == "2.0.0"


def test_recover_finishes_an_install_cut_after_the_switch(signed: dict[str, Path], tmp_path: Path) -> None:
    dev = _device(tmp_path, signed["pub"])
    dev.install(_receive(dev, signed["1.0.0"], tmp_path))
    msha = _receive(dev, signed["2.0.0"], tmp_path)
    dev.ingest({msha: None})
    manifest = Manifest.parse((dev.root / "store" / msha).read_bytes())
    dev.ingest({e.sha256: e.size for e in manifest.files.values()})
    dev._assemble(manifest, msha, dev.root / "releases" / "2.0.0")  # slot complete and checked
    (dev.root / "current").unlink()
    (dev.root / "current").symlink_to("releases/2.0.0")  # the switch happened, bookkeeping did not
    (dev.root / "journal.json").write_text(json.dumps({"phase": "switch", "version": "2.0.0", "manifest": msha, "old": "1.0.0"}))
    rec = dev.recover()
    assert (rec.status, rec.version) == ("finished", "2.0.0")
    state = dev.state()
    assert (state.current.version, state.previous.version, state.journal) == ("2.0.0", "1.0.0", None)
    assert state.version_floor == "2.0.0" and state.problems == ()


def test_rollback_needs_a_previous_release(signed: dict[str, Path], tmp_path: Path) -> None:
    dev = _device(tmp_path, signed["pub"])
    dev.install(_receive(dev, signed["1.0.0"], tmp_path))
    with pytest.raises(InstallError, match="no previous release"):
        dev.rollback()


# ------------------------------------------------------------------ one command at a time (issue case 9)
HOLD = """
import sys, time
from edgeseg_runtime.install import InstallRoot
with InstallRoot(sys.argv[1]).lock("install"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_one_state_changing_command_at_a_time_and_no_stale_lock(signed: dict[str, Path], tmp_path: Path) -> None:
    dev = _device(tmp_path, signed["pub"])
    dev.install(_receive(dev, signed["1.0.0"], tmp_path))
    msha = _receive(dev, signed["2.0.0"], tmp_path)
    env = {**os.environ, "PYTHONPATH": str(RUNTIME)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(dev.root)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        pattern = (rf"another install is running on {re.escape(str(dev.root))} since \d{{4}}-\d\d-\d\d "
                   rf"\d\d:\d\d:\d\d UTC \(pid {holder.pid}, install\)")
        for command in (["install", "--manifest", msha], ["rollback"], ["recover"], ["prune", "--keep", "1"]):
            t0 = time.monotonic()
            proc = _agent(dev.root, *command)
            err = _answer(proc)
            assert proc.returncode == 2 and err["kind"] == "DeviceBusy", proc.stdout + proc.stderr
            assert re.fullmatch(pattern, err["error"]), err["error"]
            assert time.monotonic() - t0 < 10  # at once, not after waiting for the holder
        with pytest.raises(DeviceBusy):  # another open file description in this process: refused as well
            InstallRoot(dev.root).recover()
        # state (and exec) take no lock: they answer, and say who holds it
        state = _agent(dev.root, "state")
        assert state.returncode == 0 and _answer(state)["lock"]["pid"] == holder.pid
        assert _answer(state)["current"]["version"] == "1.0.0"
    finally:
        holder.kill()  # kill -9: the kernel releases its flock, so the lock never outlives its holder
        holder.wait()
    assert _answer(_agent(dev.root, "state"))["lock"] is None
    done = _agent(dev.root, "install", "--manifest", msha)
    assert done.returncode == 0 and _answer(done)["status"] == "installed", done.stdout + done.stderr
    assert dev.state().version == "2.0.0"


# ------------------------------------------------------------------ a corrupt journal (issue case 13)
JOURNALS = {
    "garbage": b"this is not json",
    "binary": bytes(range(256)) * 4,
    "truncated": b'{"phase": "assemble", "version": "2.0',
    "wrong types": b'["assemble", "2.0.0"]',
    "hostile version": b'{"phase": "switch", "version": "../../etc", "old": "1.0.0"}',
    "directory": None,
}


@pytest.mark.parametrize("kind", list(JOURNALS))
def test_a_corrupt_journal_is_reported_and_recover_discards_it(signed: dict[str, Path], tmp_path: Path, kind: str) -> None:
    dev = _device(tmp_path, signed["pub"])
    dev.install(_receive(dev, signed["1.0.0"], tmp_path))
    msha = _receive(dev, signed["2.0.0"], tmp_path)
    staging = dev.root / "releases" / ".staging-2.0.0"
    (staging / "golden").mkdir(parents=True)
    journal = dev.root / "journal.json"
    if JOURNALS[kind] is None:
        journal.mkdir()
        (journal / "junk").write_text("x")
    else:
        journal.write_bytes(JOURNALS[kind])
    state = _agent(dev.root, "state")
    assert state.returncode == 0 and state.stdout.splitlines()[-1].startswith("= "), state.stdout + state.stderr
    doc = _answer(state)
    assert doc["journal"] is None and doc["journal_error"]
    assert doc["current"]["version"] == "1.0.0" and "journal.json is unreadable" in doc["problems"][0]
    rec = _agent(dev.root, "recover")
    assert rec.returncode == 0, rec.stdout + rec.stderr
    done = _answer(rec)
    assert (done["status"], done["version"]) == ("discarded", "1.0.0")
    assert done["notes"][0].startswith("journal.json was unreadable")
    assert not journal.exists() and not staging.exists()
    assert dev.install(msha).status == "installed" and dev.state().version == "2.0.0"


# ------------------------------------------------------------------ anti-rollback without current (issue case 12)
def test_anti_rollback_does_not_depend_on_the_current_link(signed: dict[str, Path], tmp_path: Path) -> None:
    dev = _device(tmp_path, signed["pub"])
    dev.install(_receive(dev, signed["1.0.0"], tmp_path))
    dev.install(_receive(dev, signed["2.0.0"], tmp_path))
    assert (dev.root / "version_floor").read_text() == "2.0.0\n"
    (dev.root / "current").unlink()
    state = dev.state()
    assert state.current is None and state.problems and "no current release" in state.problems[0]
    old = _receive(dev, signed["0.9.0"], tmp_path)
    rec = dev.recover()  # current comes back: previous (1.0.0) is complete
    assert (rec.status, rec.version) == ("repaired", "1.0.0") and "current was missing" in rec.notes[0]
    assert dev.state().problems == ()
    with pytest.raises(InstallError, match=r"0\.9\.0 is older than the installed 1\.0\.0"):
        dev.install(old)
    # every link and slot gone: the durable record still refuses a lower version
    for link in ("current", "previous"):
        (dev.root / link).unlink(missing_ok=True)
    shutil.rmtree(dev.root / "releases")
    (dev.root / "releases").mkdir()
    with pytest.raises(InstallError, match=r"0\.9\.0 is older than 2\.0\.0, the highest version installed on this device"):
        dev.install(old)
    assert dev.state().version is None
    assert dev.install(old, allow_downgrade=True).status == "installed"
    assert dev.state().version == "0.9.0" and (dev.root / "version_floor").read_text() == "2.0.0\n"


def test_recover_points_a_dangling_current_at_the_newest_complete_slot(signed: dict[str, Path], tmp_path: Path) -> None:
    dev = _device(tmp_path, signed["pub"])
    dev.install(_receive(dev, signed["1.0.0"], tmp_path))
    dev.install(_receive(dev, signed["2.0.0"], tmp_path))
    (dev.root / "previous").unlink()
    (dev.root / "current").unlink()
    (dev.root / "current").symlink_to("releases/7.0.0")  # a slot that does not exist
    assert "current names a missing" in dev.state().problems[0]
    # the newest slot is incomplete (a file lost): recover takes the newest complete one
    victim = next(p for p in (dev.root / "releases" / "2.0.0").rglob("*.py"))
    victim.unlink()
    rec = dev.recover()
    assert (rec.status, rec.version) == ("repaired", "1.0.0")


# ------------------------------------------------------------------ a corrupt full-size upload (issue case 10)
def test_a_corrupt_full_size_upload_is_deleted_by_recover_and_install(signed: dict[str, Path], tmp_path: Path) -> None:
    dev = _device(tmp_path, signed["pub"])
    msha = _receive(dev, signed["1.0.0"], tmp_path)
    manifest = Manifest.parse((tmp_path / "unpacked-1.0.0" / "manifest.json").read_bytes())
    entry = manifest.files[manifest.backend.net]
    part = dev.root / "incoming" / part_name(entry.sha256, entry.size, "test")
    good = part.read_bytes()
    part.write_bytes(good[:100] + bytes([good[100] ^ 0xFF]) + good[101:])  # all its bytes, one of them wrong
    (found,) = [p for p in dev.state().parts if p.name == part.name]
    assert found.corrupt and not found.complete and found.received == entry.size
    rec = dev.recover()
    assert rec.status == "repaired" and not part.exists() and "deleted a corrupt upload" in rec.notes[0]
    with pytest.raises(InstallError, match="is not on the device"):
        dev.install(msha)
    part.write_bytes(good[:100])  # the host sends it again (a session that stopped early)
    part.write_bytes(good)  # ... and resumes it
    assert dev.install(msha).status == "installed"


# ------------------------------------------------------------------ R/bin/edgeseg with nothing installed (case 14)
def test_exec_with_nothing_installed_is_one_human_line(tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc = _agent(root, "exec", "--", "info", str(root / "current"))
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"edgeseg: nothing is installed under {root}; deploy a release first\n"


# ------------------------------------------------------------------ inventory
@pytest.mark.parametrize(("line", "message"), [
    ("timeout = 1e300", r"timeout: Input should be less than or equal to 3600"),
    ("connect_timeout = 7200", r"connect_timeout: Input should be less than or equal to 3600"),
    ("timeout = 0.0", r"timeout: Input should be greater than 0"),
    ('port = "42509"', r"port: Input should be a valid integer"),
    ('timeout = "5"', r"timeout: Input should be a valid number"),
])
def test_inventory_types_are_strict_and_timeouts_bounded(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "devices.toml"
    path.write_text(f'[[device]]\nname = "d1"\nhost = "10.0.0.1"\ntarget = "cpu"\n{line}\n')
    with pytest.raises(ConfigError, match=message):
        load_inventory(path)
    path.write_text('[[device]]\nname = "d1"\nhost = "10.0.0.1"\ntarget = "cpu"\ntimeout = 3600\nport = 42509\n')
    device = load_inventory(path).devices[0]
    assert (device.timeout, device.port) == (3600.0, 42509)


def _entries(n: int) -> list[Entry]:
    return [Entry(name=f"d{i}", host="h", target="cpu") for i in range(n)]


def test_waves_are_cumulative() -> None:
    sizes = lambda plan: [len(w) for w in plan]
    assert sizes(plan_waves(_entries(6), Waves.parse("1,50%,100%"))) == [1, 2, 3]
    assert sizes(plan_waves(_entries(10), Waves.parse("1,50%,100%"))) == [1, 4, 5]
    assert sizes(plan_waves(_entries(3), Waves.parse("1,50%"))) == [1, 1, 1]  # the rest always forms a last wave
    assert sizes(plan_waves(_entries(1), Waves.parse("1,50%,100%"))) == [1]
    assert sizes(plan_waves(_entries(5), Waves.parse("100%"))) == [5]
    assert parse_waves("2, 25%") == [(2.0, False), (25.0, True)]
    for bad in ("", "0", "150%", "x", "1.5"):
        with pytest.raises(ConfigError):
            parse_waves(bad)


def test_waves_are_typed_values() -> None:
    waves = Waves.parse("1, 50%,100%")
    assert str(waves) == "1,50%,100%" and waves.sizes[1].percent
    with pytest.raises(ConfigError, match="percentage in"):
        Waves(((150.0, True),))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Waves.parse\('1,50%'\)"):
        plan_waves(_entries(3), "1,50%")  # type: ignore[arg-type]


def test_health_check_reads_the_runtimes_json_as_records() -> None:
    """What ``edgeseg verify --json`` / ``bench --json`` print is what the installer's records read (no free dicts)."""
    from edgeseg_runtime.bench import BenchResult
    from edgeseg_runtime.contract import BenchOutcome, VerifyOutcome
    from edgeseg_runtime.verify import ImageCheck, VerifyReport

    report = VerifyReport("a.tar.gz", "onnxruntime", "fp32", {"atol": 1e-4, "rtol": 0.0, "min_label_agreement": 0.99},
                          [ImageCheck("golden/a.png", float("inf"), 0.5, 0.0, False)])
    printed = json.loads(json.dumps({**report.to_dict(), "signature": "signature OK"}))  # as cmd_verify prints it
    verify = VerifyOutcome.from_dict(printed)
    assert (verify.passed, verify.verdict, verify.images[0].max_abs_diff) == (False, report.verdict(), float("inf"))
    refusal = VerifyOutcome.from_dict({"passed": False, "verdict": "FAIL: signature INVALID"})  # cmd_verify's _fail
    assert refusal.images == () and not refusal.passed
    with pytest.raises(ValueError, match="passed: expected bool"):
        VerifyOutcome.from_dict({"passed": "yes", "verdict": "PASS"})
    bench = BenchResult((640, 480), (1, 3, 256, 256), 5, 1.0, 0.2, 1.1, 0.3, 1.6, 2.0, 0.5)
    timed = BenchOutcome.from_dict(json.loads(json.dumps({"archive": "a.tar.gz", **bench.to_dict()})))
    assert timed.end_to_end_ms == 1.6 and timed.input_shape == (1, 3, 256, 256)


# ------------------------------------------------------------------ attack findings: versions, agent usage, inventory shapes
def _as_version(archive: Path, version: str, tmp: Path, key: Path) -> Path:
    """``archive`` re-signed as release ``version`` (same files, another manifest)."""
    from edgeseg.bundle import pack
    from edgeseg.signing import sign_stage

    folder = tmp / f"src-{version}"
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["release"]["version"] = version
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    sign_stage(folder, key)
    return pack(folder, tmp / f"as-{version}" / archive.name)


def test_equal_versions_in_other_spellings_never_get_a_second_slot(signed: dict[str, Path], tmp_path: Path) -> None:
    """``1.0`` == ``1.0.0`` == ``01.0.0``: one slot per version; another spelling is another manifest, refused."""
    dev = _device(tmp_path, signed["pub"])
    v100 = _receive(dev, signed["1.0.0"], tmp_path)
    assert dev.install(v100).status == "installed"
    spelled = {v: _receive(dev, _as_version(signed["1.0.0"], v, tmp_path, signed["key"]), tmp_path)
               for v in ("1.0", "01.0.0", "2.0", "2.00.0")}
    for v in ("1.0", "01.0.0"):
        for allow in (False, True):
            with pytest.raises(InstallError, match=rf"^version {re.escape(v)} is installed with other contents "
                                                   r"\(as 1\.0\.0, the same version\); give the new build another"):
                dev.install(spelled[v], allow_downgrade=allow)
    assert dev.install(v100).status == "unchanged"  # the same contents
    assert dev.install(spelled["2.0"]).status == "installed"
    with pytest.raises(InstallError, match=r"version 2\.00\.0 is installed with other contents \(as 2\.0,"):
        dev.install(spelled["2.00.0"])
    state = dev.state()
    assert (state.version, state.releases, state.version_floor) == ("2.0", ("1.0.0", "2.0"), "2.0")
    # slots gone, the floor remains: its version in another spelling is still refused, even as a downgrade
    for link in ("current", "previous"):
        (dev.root / link).unlink()
    shutil.rmtree(dev.root / "releases")
    (dev.root / "releases").mkdir()
    with pytest.raises(InstallError, match=r"version 2\.00\.0 is installed with other contents \(as 2\.0, the same "
                                           r"version, in version_floor\)"):
        dev.install(spelled["2.00.0"], allow_downgrade=True)
    assert dev.install(spelled["2.0"]).status == "installed"  # its own spelling: the floor's release again
    assert dev.state().releases == ("2.0",)


@pytest.mark.parametrize("argv", [["--root", "R", "bogus"], ["--root", "R", "prune", "--keep", "abc"], [],
                                  ["--root", "R", "install"], ["--root", "R", "state", "extra"]])
def test_agent_usage_errors_are_one_line(tmp_path: Path, argv: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(RUNTIME), "PYTHONDONTWRITEBYTECODE": "1"}
    argv = [str(tmp_path / "root") if a == "R" else a for a in argv]
    proc = subprocess.run([sys.executable, "-m", "edgeseg_runtime.agent", *argv], capture_output=True, text=True,
                          env=env, timeout=60)
    assert (proc.returncode, proc.stdout) == (2, ""), proc.stderr
    assert re.fullmatch(r"edgeseg-agent( \w+)?: error: .+ \(see edgeseg-agent( \w+)? --help\)\n", proc.stderr), proc.stderr
    assert "usage:" not in proc.stderr


_DEVICE = '[[device]]\nname = "d1"\nhost = "10.0.0.1"\ntarget = "cpu"\n'


@pytest.mark.parametrize(("text", "message"), [
    ("defaults = []\n" + _DEVICE, r"defaults: must be a table \(\[defaults\]\), not an array"),
    ("defaults = 5\n" + _DEVICE, r"defaults: must be a table \(\[defaults\]\), not an integer"),
    ('device = "x"\n', r"device: must be an array of tables .*, not a string$"),
    ("device = [1]\n", r"device\[0\]: must be a table \(a \[\[device\]\] section\), not an integer"),
    ('[device]\nname = "d1"\nhost = "h"\ntarget = "cpu"\n', r"device: must be an array of tables .*not a table "
                                                            r"\(\[device\] is one table: write \[\[device\]\]\)"),
    ("[defaults]\nkey = 5\n" + _DEVICE, r"defaults\.key: must be a string \(an SSH private key file\), not an integer"),
    (_DEVICE + "key = 5\n", r"device\[0\]\.key: must be a string"),
    ("[defaults]\ntrusted_keys = [1]\n" + _DEVICE, r"defaults\.trusted_keys\[0\]: must be a string .*not an integer"),
    ('[defaults]\ntrusted_keys = "keys/a.pem"\n' + _DEVICE,
     r"defaults\.trusted_keys: must be an array of strings .*not a string \(one key: trusted_keys = \[\"keys/a.pem\"\]\)"),
    ("known_hosts = 5\n" + _DEVICE, r"known_hosts: must be a string \(a file path\), not an integer"),
    ('known_hosts = "a\\u0000b"\n' + _DEVICE, r"known_hosts: 'a\\x00b' is not a usable path"),
])
def test_inventory_shapes_are_checked_before_merging(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "devices.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: {message}"):
        load_inventory(path)
    proc = subprocess.run([sys.executable, "-m", "edgeseg", "devices", "list", "-i", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.startswith(f"edgeseg: error: {path}: "), proc.stderr
    assert proc.stderr.count("\n") == 1 and "internal error" not in proc.stderr


@pytest.mark.parametrize("text", ["nan%", "inf", "1e400", "-inf%", "nan", "1,1e400%"])
def test_waves_must_be_finite(text: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is not a finite number"):
        Waves.parse(text)
    inv = tmp_path / "devices.toml"
    inv.write_text(_DEVICE.replace('target = "cpu"\n', 'target = "cpu"\ngroups = ["lab"]\n'))
    proc = subprocess.run([sys.executable, "-m", "edgeseg", "deploy", str(tmp_path / "a.tar.gz"), "-i", str(inv),
                           "--group", "lab", f"--waves={text}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("edgeseg: error: --waves: "), proc.stderr
    assert proc.stderr.count("\n") == 1 and "internal error" not in proc.stderr
