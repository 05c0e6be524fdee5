"""Deployment over SSH against real sshd devices (tests/sshd.py): happy path, delta, faults, fleets.

Every fault case ends by checking the device runs a working version: the
``current`` release passes ``edgeseg verify`` run on the device over SSH.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fabric", reason="fabric is not installed (extra 'deploy')")
pytest.importorskip("cryptography", reason="cryptography is not installed (extra 'deploy')")
from conftest import edgeseg_cli, scale_weights  # noqa: E402
from edgeseg_runtime.archive import Archive, sha256_file
from edgeseg_runtime.contract import Manifest
from edgeseg_runtime.images import load_image
from edgeseg_runtime.install import parse_version, part_name
from edgeseg_runtime.segmentor import Segmentor
from PIL import Image
from sshd import SshDevice, require_sshd, ssh_keygen

import edgeseg
from edgeseg.bundle import pack
from edgeseg.deploy import (
    DeviceResult,
    Waves,
    deploy,
    deploy_device,
    device_status,
    load_inventory,
    provision_device,
    recover_device,
    rollback_device,
)
from edgeseg.deploy.ssh import DeviceLink
from edgeseg.signing import new_keypair, sign_stage
from edgeseg.targets import load_target

pytestmark = pytest.mark.device
CHUNK = 64 * 1024


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require_sshd()
    d = tmp_path_factory.mktemp("keys")
    signing, other = new_keypair(d), new_keypair(d, "other")
    client = ssh_keygen(d / "client_key")
    return {"sign": signing.private, "pub": signing.public, "other": other.private, "client": client}


def _modified_model(dest: Path) -> Path:
    """The default model with slightly changed weights: a 'model-only' update."""
    return scale_weights(edgeseg.DEFAULT_MODEL, dest, 1.01)


@pytest.fixture(scope="module")
def releases(keys: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Signed cpu archives of the default model: 1.0.0, 1.1.0 (changed weights), 0.9.0, unsigned, wrong key."""
    out = tmp_path_factory.mktemp("releases")
    quiet = {"report": lambda _line: None}
    v11_model = _modified_model(out / "selfie_v11.onnx")
    shutil.copyfile(edgeseg.DEFAULT_MODEL.parent / "LICENSE", out / "LICENSE")
    spec = edgeseg.DEFAULT_SPEC

    def build(name: str, version: str, model: Path | None = None, key: Path | None = keys["sign"], target: object = "cpu") -> Path:
        a = edgeseg.build(model, spec=spec if model else None, target=target, out_dir=out / name,
                          release_version=version, sign_key=key, **quiet).archive
        return a

    return {
        "1.0.0": build("v100", "1.0.0"),
        "1.1.0": build("v110", "1.1.0", v11_model),
        "0.9.0": build("v090", "0.9.0"),
        "unsigned": build("unsigned", "1.2.0", key=None),
        "other-key": build("other", "1.2.0", key=keys["other"]),
    }


class Fleet:
    """Devices plus their inventory file and known_hosts."""

    def __init__(self, root: Path, keys: dict[str, Path]) -> None:
        self.root, self.keys = root, keys
        self.devices: dict[str, SshDevice] = {}
        self.extra: dict[str, dict[str, object]] = {}

    def add(self, name: str, groups: tuple[str, ...] = ("lab",), **kw: object) -> SshDevice:
        extra = {k: kw.pop(k) for k in list(kw) if k in ("timeout", "target")}
        dev = SshDevice(self.root / name, Path(f"{self.keys['client']}.pub"), **kw)  # type: ignore[arg-type]
        self.devices[name] = dev
        self.extra[name] = {"groups": groups, **extra}
        self.write()
        return dev

    def write(self, trust: bool = True) -> Path:
        text = (f'known_hosts = "known_hosts"\n[defaults]\nkey = "{self.keys["client"]}"\n'
                f'trusted_keys = ["{self.keys["pub"]}"]\ntimeout = 5.0\n')
        for name, dev in self.devices.items():
            e = dict(self.extra[name])
            text += dev.toml(name, groups=e.pop("groups"), **e)  # type: ignore[arg-type]
        (self.root / "devices.toml").write_text(text)
        if trust:
            (self.root / "known_hosts").write_text("".join(d.known_hosts_line() for d in self.devices.values()))
        return self.root / "devices.toml"

    @property
    def inventory(self):
        return load_inventory(self.root / "devices.toml")

    def close(self) -> None:
        for d in self.devices.values():
            d.close()


@pytest.fixture
def fleet(tmp_path: Path, keys: dict[str, Path]) -> Iterator[Fleet]:
    f = Fleet(tmp_path, keys)
    yield f
    f.close()


def _provisioned(fleet: Fleet, name: str = "d1", **kw: object) -> SshDevice:
    dev = fleet.add(name, **kw)
    inv = fleet.inventory
    res = provision_device(inv.get(name), inv)
    assert res.ok, res.error
    return dev


def _on_device(fleet: Fleet, name: str, *argv: str) -> subprocess.CompletedProcess:
    """Run the device's own ``R/bin/edgeseg ARGS`` over SSH (exit code and output)."""
    inv = fleet.inventory
    dev = inv.get(name)
    with DeviceLink(dev, inv.known_hosts) as link:
        r = link.run([f"{dev.root}/bin/edgeseg", *argv])
    return subprocess.CompletedProcess(argv, r.exited, r.stdout, r.stderr)


def _current(fleet: Fleet, name: str) -> str | None:
    res = device_status(fleet.inventory.get(name), fleet.inventory)
    assert res.ok, res.error
    cur = res.details["current"]
    return cur["version"] if cur else None


def _assert_working(fleet: Fleet, name: str, version: str | None) -> None:
    """The device runs ``version`` and its current release passes verify on the device."""
    assert _current(fleet, name) == version
    if version is not None:
        root = fleet.inventory.get(name).root
        proc = _on_device(fleet, name, "verify", f"{root}/current")
        assert proc.returncode == 0 and proc.stdout.startswith("PASS"), proc.stdout + proc.stderr


def _deploy(fleet: Fleet, archive: Path, name: str = "d1", **kw: object):
    inv = fleet.inventory
    return deploy_device(archive, inv.get(name), inv, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------ happy path
def test_deploy_update_rollback(fleet: Fleet, releases: dict[str, Path]) -> None:
    _provisioned(fleet)
    first = _deploy(fleet, releases["1.0.0"])
    assert (first.status, first.before, first.after) == ("installed", None, "1.0.0"), first.error
    assert first.bytes_sent == first.bytes_total > 0
    assert first.details["health"]["passed"]
    _assert_working(fleet, "d1", "1.0.0")

    again = _deploy(fleet, releases["1.0.0"])
    assert (again.status, again.bytes_sent) == ("unchanged", 0)

    update = _deploy(fleet, releases["1.1.0"])
    assert (update.status, update.before, update.after) == ("installed", "1.0.0", "1.1.0"), update.error
    assert 0 < update.bytes_sent < update.bytes_total
    _assert_working(fleet, "d1", "1.1.0")
    # the device segments a photo with the new release (the command users run there)
    root = fleet.inventory.get("d1").root
    golden = json.loads(Path(f"{root}/current/manifest.json").read_text())["golden"][0]["image"]
    proc = _on_device(fleet, "d1", "run", f"{root}/current", f"{root}/current/{golden}", "--out", f"{root}/../out")
    assert proc.returncode == 0 and "person" in proc.stdout, proc.stdout + proc.stderr

    back = rollback_device(fleet.inventory.get("d1"), fleet.inventory)
    assert (back.status, back.before, back.after) == ("rolled back", "1.1.0", "1.0.0"), back.error
    _assert_working(fleet, "d1", "1.0.0")
    forth = rollback_device(fleet.inventory.get("d1"), fleet.inventory)
    assert forth.after == "1.1.0"


def test_releases_are_pruned_to_the_profile_limit(fleet: Fleet, releases: dict[str, Path], keys: dict[str, Path], tmp_path: Path) -> None:
    _provisioned(fleet)
    target = load_target("cpu")
    target = target.model_copy(update={"deploy": target.deploy.model_copy(update={"keep_releases": 2})})
    for v in ("2.0.0", "2.1.0", "2.2.0"):
        a = edgeseg.build(target=target, out_dir=tmp_path / v, release_version=v, sign_key=keys["sign"], report=lambda _l: None).archive
        assert _deploy(fleet, a).status == "installed"
    state = device_status(fleet.inventory.get("d1"), fleet.inventory).details
    assert state["releases"] == ["2.1.0", "2.2.0"]
    assert (state["current"]["version"], state["previous"]["version"]) == ("2.2.0", "2.1.0")
    # the store keeps only files the kept releases use
    root = Path(fleet.inventory.get("d1").root)
    used = set()
    for v in state["releases"]:
        m = json.loads((root / "releases" / v / "manifest.json").read_text())
        used |= {f["sha256"] for f in m["files"].values()}
    assert {p.name for p in (root / "store").iterdir()} - used <= {
        sha256_file(root / "releases" / v / "manifest.json") for v in state["releases"]
    }


@pytest.mark.slow
def test_offline_wheels_full_vs_delta(fleet: Fleet, keys: dict[str, Path], tmp_path: Path) -> None:
    """An offline archive carries its wheels; a model-only update sends under 10% of a full transfer."""
    target = load_target("cpu")
    target = target.model_copy(update={"platform": target.platform.model_copy(update={"offline": True})})
    quiet = {"report": lambda _l: None, "sign_key": keys["sign"], "target": target}
    v1 = edgeseg.build(out_dir=tmp_path / "a", release_version="3.0.0", **quiet).archive
    model = _modified_model(tmp_path / "m.onnx")
    v2 = edgeseg.build(model, spec=edgeseg.DEFAULT_SPEC, out_dir=tmp_path / "b", release_version="3.1.0", **quiet).archive
    _provisioned(fleet)
    full = _deploy(fleet, v1)
    assert full.status == "installed", full.error
    delta = _deploy(fleet, v2)
    assert delta.status == "installed", delta.error
    print(f"\nfull: {full.bytes_sent / 1e6:.2f} MB in {full.seconds:.1f} s; "
          f"delta: {delta.bytes_sent / 1e6:.2f} MB in {delta.seconds:.1f} s "
          f"({delta.bytes_sent / full.bytes_sent:.1%})")
    assert full.bytes_sent == full.bytes_total > 30e6  # numpy, Pillow, onnxruntime wheels
    assert delta.bytes_sent < 0.10 * full.bytes_sent
    root = Path(fleet.inventory.get("d1").root)
    sites = [p for p in (root / "sites").iterdir() if not p.name.startswith(".")]
    assert len(sites) == 1 and (sites[0] / "onnxruntime").is_dir()  # installed once, shared by both releases
    # the health check ran on the bundled wheels: numpy comes from the site, not the test venv
    proc = _on_device(fleet, "d1", "info", f"{root}/current")
    assert proc.returncode == 0 and "installed here (onnxruntime" in proc.stdout


# ------------------------------------------------------------------ refusals
def test_unsigned_and_untrusted_archives_are_refused_before_upload(fleet: Fleet, releases: dict[str, Path]) -> None:
    _provisioned(fleet)
    unsigned = _deploy(fleet, releases["unsigned"])
    assert unsigned.status == "failed" and "unsigned" in unsigned.error
    other = _deploy(fleet, releases["other-key"])
    assert other.status == "failed" and "does not trust signing key" in other.error and other.bytes_sent == 0
    _assert_working(fleet, "d1", None)


def _unpacked(archive: Path, dest: Path, edit: Callable[[dict], None], key: Path | None) -> Path:
    """Unpack, edit the manifest, and (with ``key``) sign it again."""
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    manifest = json.loads((dest / "manifest.json").read_text())
    edit(manifest)
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if key is not None:
        sign_stage(dest, key)
    return dest


def test_device_refuses_altered_manifest_bad_paths_and_downgrade(
    fleet: Fleet, releases: dict[str, Path], keys: dict[str, Path], tmp_path: Path
) -> None:
    _provisioned(fleet)
    assert _deploy(fleet, releases["1.1.0"]).status == "installed"

    # manifest changed after signing (a higher version): the device's signature check fails
    def bump(manifest: dict) -> None:
        manifest["release"]["version"] = "9.0.0"

    altered = _deploy(fleet, pack(_unpacked(releases["1.0.0"], tmp_path / "altered", bump, None), tmp_path / "a.tar.gz"))
    assert altered.status == "failed" and "altered after signing" in altered.error, altered.error

    # signed by the trusted key, but a manifest path leaves the slot: the host refuses such an
    # archive (its files do not match), so it is sent by hand; the device must refuse it on its own
    def escape(manifest: dict) -> None:
        manifest["release"]["version"] = "9.1.0"
        manifest["files"]["../../evil.py"] = manifest["files"].pop("deploy.json")

    folder = _unpacked(releases["1.0.0"], tmp_path / "evil", escape, keys["sign"])
    inv = fleet.inventory
    dev = inv.get("d1")
    with DeviceLink(dev, inv.known_hosts) as link:
        msha = sha256_file(folder / "manifest.json")
        size = (folder / "manifest.json").stat().st_size
        link.upload(folder / "manifest.json", f"{dev.root}/incoming/{part_name(msha, size, 'byhand')}", 0)
        link.put_bytes((folder / "manifest.sig").read_bytes(), f"{dev.root}/incoming/{msha}.sig")
        with pytest.raises(edgeseg.DeployError, match=r"refusing to install: .*'\.\./\.\./evil\.py' escapes the archive root"):
            link.agent("install", "--manifest", msha)
    assert not (Path(dev.root).parent / "evil.py").exists()

    down = _deploy(fleet, releases["1.0.0"])
    assert down.status == "failed" and "older than the installed 1.1.0" in down.error
    _assert_working(fleet, "d1", "1.1.0")
    allowed = _deploy(fleet, releases["1.0.0"], allow_downgrade=True)
    assert (allowed.status, allowed.after) == ("installed", "1.0.0"), allowed.error
    _assert_working(fleet, "d1", "1.0.0")


def test_tampered_archive_and_escaping_tar_members_never_reach_the_device(
    fleet: Fleet, releases: dict[str, Path], tmp_path: Path
) -> None:
    _provisioned(fleet)
    folder = tmp_path / "t"
    with tarfile.open(releases["1.0.0"]) as tar:
        tar.extractall(folder, filter="data")
    model = folder / "end2end.onnx"
    model.write_bytes(model.read_bytes()[:-8] + b"\0" * 8)
    tampered = _deploy(fleet, pack(folder, tmp_path / "tampered.tar.gz"))
    assert tampered.status == "failed" and "does not match its sha256" in tampered.error
    manifest_bytes = (folder / "manifest.json").read_bytes()
    for name, member in (("dotdot", tarfile.TarInfo("../escape.txt")), ("link", tarfile.TarInfo("end2end.onnx"))):
        if name == "link":
            member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
        evil = tmp_path / f"{name}.tar.gz"
        with tarfile.open(evil, "w:gz") as tar:
            ok = tarfile.TarInfo("manifest.json")
            ok.size = len(manifest_bytes)
            tar.addfile(ok, io.BytesIO(manifest_bytes))
            if member.isfile():
                member.size = 1
                tar.addfile(member, io.BytesIO(b"x"))
            else:
                tar.addfile(member)
        res = _deploy(fleet, evil)
        assert res.status == "failed" and ("escapes the archive root" in res.error or "link" in res.error), res.error
        assert res.bytes_sent == 0
    state = device_status(fleet.inventory.get("d1"), fleet.inventory).details
    assert state["store"] == [] and state["partials"] == {} and state["current"] is None


def test_corrupt_file_on_the_device_is_detected_and_resent(fleet: Fleet, releases: dict[str, Path]) -> None:
    _provisioned(fleet)
    assert _deploy(fleet, releases["1.0.0"]).status == "installed"
    root = Path(fleet.inventory.get("d1").root)
    m11 = json.loads(subprocess.run(["tar", "-xOzf", str(releases["1.1.0"]), "manifest.json"], capture_output=True, text=True).stdout)
    # bit rot in a stored file the update reuses (the runtime is the same in both releases)
    blob = root / "store" / m11["files"]["runtime/edgeseg_runtime/cli.py"]["sha256"]
    blob.chmod(0o644)
    # break the hard-link sharing first so the installed release stays intact, then corrupt the store copy
    data = blob.read_bytes()
    blob.unlink()
    blob.write_bytes(data.replace(b"def ", b"dEf ", 1))
    bad = _deploy(fleet, releases["1.1.0"])
    assert bad.status == "failed" and "does not match the manifest" in bad.error, bad.error
    _assert_working(fleet, "d1", "1.0.0")
    good = _deploy(fleet, releases["1.1.0"])
    assert good.status == "installed", good.error
    assert good.bytes_sent > 0
    _assert_working(fleet, "d1", "1.1.0")


def test_unknown_and_changed_host_keys_are_refused(fleet: Fleet, releases: dict[str, Path], tmp_path: Path) -> None:
    dev = fleet.add("d1")
    fleet.write(trust=False)
    (fleet.root / "known_hosts").write_text("")
    inv = fleet.inventory
    res = provision_device(inv.get("d1"), inv)
    assert res.status == "failed" and "unknown host key" in res.error and "edgeseg devices trust d1" in res.error
    assert not (dev.root / "agent").exists()
    # explicit trust through the CLI, checked against the fingerprint
    fp = subprocess.run(["ssh-keygen", "-lf", str(dev.host_key) + ".pub"], capture_output=True, text=True).stdout.split()[1]
    wrong = edgeseg_cli("devices", "trust", "d1", "-i", fleet.root / "devices.toml", "--fingerprint", "SHA256:nope")
    assert wrong.returncode == 2 and "not trusted" in wrong.stderr
    right = edgeseg_cli("devices", "trust", "d1", "-i", fleet.root / "devices.toml", "--fingerprint", fp)
    assert right.returncode == 0, right.stderr
    assert provision_device(inv.get("d1"), inv).ok
    # the device is reinstalled with a new host key: refused as a possible man-in-the-middle
    dev.power_off()
    dev.host_key.unlink()
    Path(str(dev.host_key) + ".pub").unlink()
    ssh_keygen(dev.host_key)
    dev.start()
    res = _deploy(fleet, releases["1.0.0"])
    assert res.status == "failed" and "host key CHANGED" in res.error


def test_failed_health_check_keeps_the_running_version(fleet: Fleet, releases: dict[str, Path], keys: dict[str, Path], tmp_path: Path) -> None:
    _provisioned(fleet)
    assert _deploy(fleet, releases["1.0.0"]).status == "installed"
    target = load_target("cpu")
    target = target.model_copy(update={"deploy": target.deploy.model_copy(update={"latency_budget_ms": 0.001})})
    slow = edgeseg.build(target=target, out_dir=tmp_path, release_version="1.5.0", sign_key=keys["sign"], report=lambda _l: None).archive
    res = _deploy(fleet, slow)
    assert res.status == "failed" and "health check failed" in res.error and "over the profile's budget" in res.error
    _assert_working(fleet, "d1", "1.0.0")
    assert device_status(fleet.inventory.get("d1"), fleet.inventory).details["releases"] == ["1.0.0"]


# ------------------------------------------------------------------ disks and links
def test_full_disk_is_refused_before_upload(fleet: Fleet, releases: dict[str, Path]) -> None:
    dev = _provisioned(fleet, disk_mb=2)
    res = _deploy(fleet, releases["1.0.0"])
    assert res.status == "failed" and "disk full" in res.error and res.bytes_sent == 0
    assert not any((dev.root / "incoming").iterdir())


def _fill(root: Path) -> Path:
    """Fill the device's disk (another program writing) and return the filler file."""
    filler = root / "filler.bin"
    with open(filler, "wb", buffering=0) as fh:
        for size in (CHUNK, 4096, 1):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError:
                pass
    return filler


def test_full_disk_during_upload_then_resume(fleet: Fleet, releases: dict[str, Path]) -> None:
    dev = _provisioned(fleet, disk_mb=8)
    filler: list[Path] = []

    def fill_once(_n: int) -> None:
        if not filler:
            filler.append(_fill(dev.root))

    res = _deploy(fleet, releases["1.0.0"], on_bytes=fill_once)
    assert res.status == "failed" and "disk full during upload" in res.error, res.error
    filler[0].unlink()
    again = _deploy(fleet, releases["1.0.0"])
    assert again.status == "installed", again.error
    assert again.bytes_sent + res.bytes_sent >= again.bytes_total
    _assert_working(fleet, "d1", "1.0.0")


def test_full_disk_during_install_keeps_the_version(fleet: Fleet, releases: dict[str, Path]) -> None:
    dev = _provisioned(fleet, disk_mb=12)
    assert _deploy(fleet, releases["1.0.0"]).status == "installed"
    staged = _deploy(fleet, releases["1.1.0"], stage_only=True)  # upload now, install later
    assert (staged.status, staged.after) == ("staged", "1.0.0") and staged.bytes_sent > 0, staged.error
    filler = _fill(dev.root)  # another program fills the disk before the install unpacks anything
    res = _deploy(fleet, releases["1.1.0"])
    assert res.status == "failed" and "disk full" in res.error and res.bytes_sent == 0, res.error
    filler.unlink()
    _assert_working(fleet, "d1", "1.0.0")
    state = device_status(fleet.inventory.get("d1"), fleet.inventory).details
    assert state["journal"] is None and not any(p.name.startswith(".staging") for p in (dev.root / "releases").iterdir())
    done = _deploy(fleet, releases["1.1.0"])
    assert (done.status, done.bytes_sent) == ("installed", 0), done.error
    _assert_working(fleet, "d1", "1.1.0")


@pytest.mark.slow
def test_dead_link_times_out_then_the_upload_resumes(fleet: Fleet, releases: dict[str, Path]) -> None:
    dev = _provisioned(fleet, netns=True, timeout=2.0)
    sent = {"n": 0}

    def cut_midway(n: int) -> None:
        sent["n"] += n
        if sent["n"] >= 6 * CHUNK and not getattr(dev, "_cut", False):
            dev._cut = True  # type: ignore[attr-defined]
            dev.cut_link()

    t0 = time.monotonic()
    res = _deploy(fleet, releases["1.0.0"], on_bytes=cut_midway)
    waited = time.monotonic() - t0
    assert res.status == "failed" and "link lost" in res.error, res.error
    assert waited < 30, f"a dead link must time out, it took {waited:.0f} s"
    print(f"\ndead link noticed after {waited:.1f} s (timeout 2 s); {sent['n'] / 1e6:.2f} MB had been queued")
    dev.mend_link()
    partial = device_status(fleet.inventory.get("d1"), fleet.inventory).details["partials"]
    assert sum(partial.values()) > 0
    again = _deploy(fleet, releases["1.0.0"])
    assert again.status == "installed", again.error
    assert again.bytes_sent < again.bytes_total - sum(partial.values()) + 1
    _assert_working(fleet, "d1", "1.0.0")


@pytest.mark.slow
@pytest.mark.parametrize("when", ["checked", "assembled", "health check: verify", "switched"])
def test_power_loss_during_install(fleet: Fleet, releases: dict[str, Path], when: str) -> None:
    dev = _provisioned(fleet)
    assert _deploy(fleet, releases["1.0.0"]).status == "installed"

    def cut_power(line: str) -> None:
        if line.startswith(f"d1: {when}") and dev.proc is not None:
            dev.power_off()

    res = _deploy(fleet, releases["1.1.0"], report=cut_power)
    assert dev.proc is None, f"the install never printed {when!r}"
    assert res.status in ("failed", "installed")
    dev.start()  # power back on; the boot script runs recover
    rec = recover_device(fleet.inventory.get("d1"), fleet.inventory)
    assert rec.ok, rec.error
    assert rec.after in ("1.0.0", "1.1.0")
    _assert_working(fleet, "d1", rec.after)
    state = device_status(fleet.inventory.get("d1"), fleet.inventory).details
    assert state["journal"] is None
    final = _deploy(fleet, releases["1.1.0"])
    assert final.status in ("installed", "unchanged"), final.error
    _assert_working(fleet, "d1", "1.1.0")


# ------------------------------------------------------------------ issue cases 2, 9-14
def _manifest_of(archive: Path) -> Manifest:
    with tarfile.open(archive) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        return Manifest.parse(member.read())


def _listing(root: Path) -> dict[str, list[str]]:
    return {sub: sorted(p.name for p in (root / sub).iterdir()) for sub in ("incoming", "store")}


def test_archive_altered_after_signing_is_refused_before_any_byte_goes_out(
    fleet: Fleet, releases: dict[str, Path], keys: dict[str, Path], tmp_path: Path
) -> None:
    """Case 2: the host checks the signature with the key the device trusts before uploading anything."""
    dev = _provisioned(fleet)
    assert _deploy(fleet, releases["1.0.0"]).status == "installed"
    before = _listing(dev.root)

    def bump(manifest: dict) -> None:
        manifest["release"]["version"] = "9.0.0"

    # new model weights and a rewritten manifest; manifest.sig kept from the genuine 1.1.0
    altered = pack(_unpacked(releases["1.1.0"], tmp_path / "altered", bump, None), tmp_path / "altered.tar.gz")
    key_id = json.loads((tmp_path / "altered" / "manifest.sig").read_text())["key_id"]
    expected = (f"d1: refused before sending anything: signature by key {key_id} does not match manifest.json: "
                "the archive was altered after signing")
    res = _deploy(fleet, altered)
    assert (res.status, res.error, res.bytes_sent) == ("failed", expected, 0)
    assert _listing(dev.root) == before
    # an inventory without the key: the host reads the device's own trusted_keys/<key_id>.pem over SFTP
    toml = fleet.root / "devices.toml"
    toml.write_text("\n".join(line for line in toml.read_text().splitlines() if not line.startswith("trusted_keys")) + "\n")
    res = _deploy(fleet, altered)
    assert (res.status, res.error, res.bytes_sent) == ("failed", expected, 0)
    assert _listing(dev.root) == before
    _assert_working(fleet, "d1", "1.0.0")
    good = _deploy(fleet, releases["1.1.0"])  # the genuine archive verifies with that same key
    assert good.status == "installed", good.error
    _assert_working(fleet, "d1", "1.1.0")


def _resigned(base: Path, version: str, dest: Path, key: Path) -> Path:
    """``base`` as release ``version``, signed again (same files, another manifest)."""
    def bump(manifest: dict) -> None:
        manifest["release"]["version"] = version

    return pack(_unpacked(base, dest / version, bump, key), dest / f"{version}.tar.gz")


def _slot_matches_manifest(slot: Path) -> None:
    manifest = Manifest.parse((slot / "manifest.json").read_bytes())
    assert (slot / "manifest.sig").is_file()
    for rel, entry in manifest.files.items():
        assert (slot / rel).stat().st_size == entry.size and sha256_file(slot / rel) == entry.sha256, rel


LOCKED = r"d1(-again)?: another install is running on {root} since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(pid \d+, install\)"


@pytest.mark.slow
def test_parallel_deploys_to_one_device_leave_a_complete_current(
    fleet: Fleet, releases: dict[str, Path], keys: dict[str, Path], tmp_path: Path
) -> None:
    """Case 9: N deploys of different versions at once to one install root, through two inventory names."""
    dev = _provisioned(fleet)
    toml = fleet.root / "devices.toml"
    toml.write_text(toml.read_text() + dev.toml("d1-again", groups=("lab",)))  # another operator's name for it
    inv = fleet.inventory
    names = ["d1", "d1-again"]
    # every deploy pushes the installer too: none is there
    (dev.root / "agent").unlink() if (dev.root / "agent").is_symlink() else shutil.rmtree(dev.root / "agent")
    shutil.rmtree(dev.root / "agents", ignore_errors=True)
    n, rounds = 4, int(os.environ.get("EDGESEG_RACE_ROUNDS", "3"))
    locked = re.compile(LOCKED.format(root=re.escape(str(dev.root))))
    tally: dict[str, int] = {}
    for r in range(rounds):
        versions = [f"{3 + r}.{i}.0" for i in range(n)]
        archives = [_resigned(releases["1.1.0" if i % 2 else "1.0.0"], v, tmp_path / f"r{r}", keys["sign"])
                    for i, v in enumerate(versions)]
        jitter = random.Random(r)
        delays = [0.0] + [jitter.uniform(0, 10) for _ in range(n - 1)]  # some arrive mid-install, some after

        def one(i: int) -> DeviceResult:
            time.sleep(delays[i])
            return deploy_device(archives[i], inv.get(names[i % 2]), inv)

        with ThreadPoolExecutor(n) as pool:
            rows = list(pool.map(one, range(n)))
        installed = []
        for row in rows:
            if row.status == "installed":
                installed.append(row.after)
                tally["installed"] = tally.get("installed", 0) + 1
                continue
            assert row.status == "failed" and "\n" not in row.error, row
            if locked.fullmatch(row.error):
                tally["lock"] = tally.get("lock", 0) + 1
            elif re.fullmatch(r"d1(-again)?: version \d+\.\d+\.0 is older than the installed \d+\.\d+\.0; refusing a "
                              r"downgrade \(anti-rollback\) unless --allow-downgrade", row.error):
                tally["downgrade"] = tally.get("downgrade", 0) + 1
            else:
                pytest.fail(f"round {r}: unexpected failure: {row.error}")
        print(f"round {r}: " + ", ".join(f"{versions[i]}@{delays[i]:.1f}s:{row.status}" for i, row in enumerate(rows)))
        assert installed, rows
        top = max(installed, key=parse_version)
        status = device_status(inv.get("d1"), inv)
        assert status.ok, status.error
        state = status.details
        assert (state["current"]["version"], state["version_floor"], state["journal"]) == (top, top, None)
        assert not [p for p in (dev.root / "releases").iterdir() if p.name.startswith(".")]
        _slot_matches_manifest((dev.root / "current").resolve())
        _assert_working(fleet, "d1", top)
    print(f"\n{rounds} rounds of {n} parallel deploys: {tally}")


def test_a_corrupt_full_size_upload_is_sent_again(fleet: Fleet, releases: dict[str, Path]) -> None:
    """Case 10: an upload with all its bytes but the wrong sha256 no longer blocks its release."""
    dev = _provisioned(fleet)
    for version, clear in (("1.0.0", "deploy"), ("1.1.0", "recover")):
        staged = _deploy(fleet, releases[version], stage_only=True)
        assert staged.status == "staged", staged.error
        manifest = _manifest_of(releases[version])
        entry = manifest.files[manifest.backend.net]
        (part,) = (dev.root / "incoming").glob(f"{entry.sha256}*.part")
        data = bytearray(part.read_bytes())
        assert len(data) == entry.size
        data[100] ^= 0xFF  # a lost write, bit rot: every byte there, one of them wrong
        part.write_bytes(bytes(data))
        if clear == "recover":
            rec = recover_device(fleet.inventory.get("d1"), fleet.inventory)
            assert (rec.status, rec.after) == ("repaired", "1.0.0"), rec.error
            assert "deleted a corrupt upload" in rec.details["notes"][0] and not part.exists()
        res = _deploy(fleet, releases[version])
        assert (res.status, res.bytes_sent) == ("installed", entry.size), res.error
        assert not part.exists()
        _assert_working(fleet, "d1", version)


def _interrupt_cli(fleet: Fleet, archive: Path, when: str, delay: float) -> tuple[int, float, list[str], str]:
    """Run ``edgeseg deploy ARCHIVE --device d1`` as a real process, send SIGINT ``delay`` s after a stderr line
    containing ``when``; returns exit code, seconds from SIGINT to exit, stderr lines, stdout."""
    proc = subprocess.Popen([sys.executable, "-m", "edgeseg", "deploy", str(archive), "-i", str(fleet.root / "devices.toml"),
                             "--device", "d1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if when in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(60), "\n".join(lines)
        time.sleep(delay)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    assert proc.stdout is not None
    return rc, took, lines, proc.stdout.read()


INTERRUPTED = ("edgeseg: interrupted: uploads stopped and links closed; a device that had already started installing "
               "finishes or discards that install on its own ('edgeseg status' shows which)")


@pytest.mark.slow
def test_ctrl_c_stops_a_deploy_at_once_and_the_device_keeps_its_version(
    fleet: Fleet, releases: dict[str, Path], keys: dict[str, Path], tmp_path: Path
) -> None:
    """Case 11: SIGINT to ``edgeseg deploy`` during the upload (1 Mbit/s link), then during the device's install."""
    dev = _provisioned(fleet, netns=True)
    assert _deploy(fleet, releases["1.0.0"]).status == "installed"
    veth = dev._veth  # type: ignore[attr-defined]
    subprocess.run(["tc", "qdisc", "add", "dev", veth, "root", "tbf", "rate", "1mbit", "burst", "32kbit",
                    "latency", "400ms"], check=True)
    try:  # about 2 MB to send at 1 Mbit/s: SIGINT one second into it
        rc, took, lines, out = _interrupt_cli(fleet, releases["1.1.0"], "d1: sending", 1.0)
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", veth, "root"], capture_output=True)
    print(f"\nCtrl-C during the upload: exit {rc} after {took:.2f} s")
    assert (rc, lines[-1], out) == (130, INTERRUPTED, ""), lines
    assert took < 3.0, f"took {took:.1f} s to stop"
    assert not any("Traceback" in line for line in lines)
    _assert_working(fleet, "d1", "1.0.0")
    state = device_status(fleet.inventory.get("d1"), fleet.inventory).details
    assert state["journal"] is None and 0 < sum(state["partials"].values())
    again = _deploy(fleet, releases["1.1.0"])  # resumes what was sent
    assert again.status == "installed" and again.bytes_sent < again.bytes_total, again.error
    _assert_working(fleet, "d1", "1.1.0")

    # Ctrl-C while the device runs the health check: the host stops at once, the device finishes that install
    newer = _resigned(releases["1.1.0"], "1.2.0", tmp_path, keys["sign"])
    rc, took, lines, out = _interrupt_cli(fleet, newer, "d1: health check: verify", 0.2)
    print(f"Ctrl-C during the install: exit {rc} after {took:.2f} s")
    assert (rc, lines[-1], out) == (130, INTERRUPTED, ""), lines
    assert took < 3.0, f"took {took:.1f} s to stop"
    deadline = time.monotonic() + 60
    while True:  # the agent outlives the hang-up: it switches and cleans up on its own, no recover needed
        state = device_status(fleet.inventory.get("d1"), fleet.inventory).details
        if state["lock"] is None or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert (state["current"]["version"], state["previous"]["version"], state["journal"]) == ("1.2.0", "1.1.0", None)
    _assert_working(fleet, "d1", "1.2.0")


def test_a_missing_current_link_is_reported_repaired_and_no_downgrade_slips_through(
    fleet: Fleet, releases: dict[str, Path]
) -> None:
    """Case 12: ``rm R/current``: status says so, a lower version is still refused, recover restores it."""
    dev = _provisioned(fleet)
    for v in ("1.0.0", "1.1.0"):
        assert _deploy(fleet, releases[v]).status == "installed"
    (dev.root / "current").unlink()
    inv = fleet.inventory
    status = device_status(inv.get("d1"), inv)
    assert status.status == "problem" and "no current release" in status.error, status
    cli = edgeseg_cli("status", "-i", fleet.root / "devices.toml", "--device", "d1", "--json")
    assert cli.returncode == 1 and "no current release" in json.loads(cli.stdout)[0]["error"]
    down = _deploy(fleet, releases["0.9.0"])
    assert down.status == "failed" and "0.9.0 is older than" in down.error, down
    # that deploy's install ran recover first: current is back (previous, complete)
    _assert_working(fleet, "d1", "1.0.0")
    # again, now without a previous link: the newest complete slot
    assert not (dev.root / "previous").exists()
    (dev.root / "current").unlink()
    rec = recover_device(inv.get("d1"), inv)
    assert (rec.status, rec.after) == ("repaired", "1.1.0"), rec
    assert rec.details["notes"] == ["current was missing: now releases/1.1.0"]
    assert device_status(inv.get("d1"), inv).status == "ok"
    _assert_working(fleet, "d1", "1.1.0")


def test_a_corrupt_journal_does_not_block_status_or_recover(fleet: Fleet, releases: dict[str, Path]) -> None:
    """Case 13: garbage, binary or a folder as journal.json: status reports it, recover discards it."""
    dev = _provisioned(fleet)
    assert _deploy(fleet, releases["1.0.0"]).status == "installed"
    inv = fleet.inventory
    for kind, damage in (("garbage", lambda p: p.write_text("{\"phase\": \"assem")),
                         ("binary", lambda p: p.write_bytes(bytes(range(256)))),
                         ("folder", lambda p: p.mkdir())):
        damage(dev.root / "journal.json")
        status = device_status(inv.get("d1"), inv)
        assert status.status == "problem" and "journal.json is unreadable" in status.error, (kind, status)
        rec = recover_device(inv.get("d1"), inv)
        assert (rec.status, rec.after) == ("discarded", "1.0.0"), (kind, rec)
        assert not (dev.root / "journal.json").exists()
    assert _deploy(fleet, releases["1.1.0"]).status == "installed"
    _assert_working(fleet, "d1", "1.1.0")


def test_read_only_root_and_nothing_installed_are_said_plainly(fleet: Fleet, releases: dict[str, Path]) -> None:
    """Case 14: a read-only install root is named as such; R/bin/edgeseg with nothing installed is one line."""
    dev = _provisioned(fleet, disk_mb=32)
    root = fleet.inventory.get("d1").root
    empty = _on_device(fleet, "d1", "info", f"{root}/current")
    assert (empty.returncode, empty.stdout) == (2, "")
    assert empty.stderr == f"edgeseg: nothing is installed under {root}; deploy a release first\n"
    assert _deploy(fleet, releases["1.0.0"]).status == "installed"
    subprocess.run(["mount", "-o", "remount,ro", str(dev.root)], check=True)
    try:
        res = _deploy(fleet, releases["1.1.0"])
        assert res.status == "failed" and res.bytes_sent == 0
        assert res.error == (f"{root} on d1 is read-only (its file system is mounted read-only); remount it "
                             "read-write and try again")
        back = rollback_device(fleet.inventory.get("d1"), fleet.inventory)
        assert back.status == "failed" and f"{root} is read-only" in back.error
        status = device_status(fleet.inventory.get("d1"), fleet.inventory)
        assert status.status == "problem" and f"{root} is read-only" in status.error
        proc = _on_device(fleet, "d1", "verify", f"{root}/current")
        assert proc.returncode == 0 and proc.stdout.startswith("PASS"), proc.stdout + proc.stderr
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(dev.root)], check=True)
    assert _deploy(fleet, releases["1.1.0"]).status == "installed"
    _assert_working(fleet, "d1", "1.1.0")


# ------------------------------------------------------------------ fleets
def test_fleet_rollout_stops_at_the_wave_with_a_broken_device(fleet: Fleet, releases: dict[str, Path]) -> None:
    for i in range(1, 7):
        fleet.add(f"d{i}", groups=("fleet",), disk_mb=2 if i == 3 else None)
    inv = fleet.inventory
    for d in inv.devices:
        assert provision_device(d, inv).ok
    t0 = time.monotonic()
    out = deploy(releases["1.0.0"], inv, group="fleet", waves=Waves.parse("1,50%,100%"), max_failure_rate=0.2)
    took = time.monotonic() - t0
    assert out.waves == [["d1"], ["d2", "d3"], ["d4", "d5", "d6"]]
    assert out.stopped_at == 1 and "1/2 devices" in out.reason and "disk full" in out.reason
    rows = {r.device: r for r in out.results}
    assert [rows[f"d{i}"].status for i in range(1, 7)] == ["installed", "installed", "failed", "skipped", "skipped", "skipped"]
    for i in (1, 2):
        _assert_working(fleet, f"d{i}", "1.0.0")
    for i in (3, 4, 5, 6):
        _assert_working(fleet, f"d{i}", None)
    # with a tolerant threshold the same fleet finishes, updating the later waves in parallel
    out2 = deploy(releases["1.0.0"], inv, group="fleet", waves=Waves.parse("1,50%,100%"), max_failure_rate=0.5)
    rows2 = {r.device: r.status for r in out2.results}
    assert rows2 == {"d1": "unchanged", "d2": "unchanged", "d3": "failed", "d4": "installed", "d5": "installed", "d6": "installed"}
    print(f"\nfirst rollout over 6 devices took {took:.1f} s")
    proc = edgeseg_cli("status", "-i", fleet.root / "devices.toml", "--group", "fleet", "--json")
    assert proc.returncode == 0, proc.stderr
    versions = {r["device"]: r["after"] for r in json.loads(proc.stdout)}
    assert versions == {"d1": "1.0.0", "d2": "1.0.0", "d3": None, "d4": "1.0.0", "d5": "1.0.0", "d6": "1.0.0"}


def test_cli_keys_build_deploy_status(fleet: Fleet, keys: dict[str, Path], tmp_path: Path) -> None:
    _provisioned(fleet)
    proc = edgeseg_cli("keys", "new", "--out", tmp_path / "k")
    assert proc.returncode == 0 and (tmp_path / "k" / "edgeseg-signing.key").stat().st_mode & 0o777 == 0o600
    proc = edgeseg_cli("keys", "new", "--out", tmp_path / "k")
    assert proc.returncode == 2 and "already exists" in proc.stderr
    proc = edgeseg_cli("build", "--target", "cpu", "--out", tmp_path / "dist", "--release-version", "4.0.0", "--sign-key", keys["sign"])
    assert proc.returncode == 0, proc.stderr
    archive = Path(proc.stdout.strip().splitlines()[-1])
    info = edgeseg_cli("info", archive)
    assert "release     4.0.0; signed by key" in info.stdout
    bad = edgeseg_cli("build", "--target", "cpu", "--out", tmp_path / "x", "--release-version", "v4")
    assert bad.returncode == 2 and "dotted ASCII numbers" in bad.stderr, bad.stderr
    dep = edgeseg_cli("deploy", archive, "-i", fleet.root / "devices.toml", "--device", "d1")
    assert dep.returncode == 0, dep.stdout + dep.stderr
    assert "installed" in dep.stdout and "4.0.0" in dep.stdout
    down = edgeseg_cli("deploy", archive, "-i", fleet.root / "devices.toml", "--group", "nope")
    assert down.returncode == 2 and "no device in group 'nope'" in down.stderr
    # tasks.py front-end
    task = subprocess.run(
        [sys.executable, "-m", "invoke", "deploy", "--archive", str(archive), "--device", "d1",
         "--inventory", str(fleet.root / "devices.toml")],
        capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=120,
    )
    assert task.returncode == 0 and "unchanged" in task.stdout, task.stdout + task.stderr


# ------------------------------------------------------------------ compare on a device
def test_compare_measures_the_installed_release_on_the_device(
    fleet: Fleet, releases: dict[str, Path], photos: dict[str, Path], tmp_path: Path
) -> None:
    from edgeseg.compare import compare

    _provisioned(fleet)
    assert _deploy(fleet, releases["1.1.0"]).status == "installed"
    images = sorted(photos.values())
    quiet = {"report": lambda _line: None}
    # d1 runs target cpu: the non-reference cpu archive (1.1.0) goes there, the reference (1.0.0) runs here
    c = compare([releases["1.0.0"], releases["1.1.0"]], images[0].parent, devices=["d1"], inventory=fleet.root / "devices.toml",
                runs=3, warmup=1, out_dir=tmp_path / "r", allow_other_sources=True, **quiet)  # 1.1.0 has new weights
    ref, dev = c.results
    assert (ref.device, dev.device, dev.label) == ("host", "d1", "cpu/fp32@d1") and not dev.error, dev.error
    assert dev.run["archive"] == "1.1.0" and dev.run["latency_ms"] and dev.run["peak_rss_bytes"] > 20e6  # the installed slot ran
    with Archive.open(releases["1.1.0"]) as a, Segmentor(a) as seg:  # the same release segmented here
        for image in images:
            here = seg.segment(load_image(image)).labels
            assert (np.asarray(Image.open(dev.run_dir / f"{image.stem}.png")) == here).all()
    assert 0.99 < dev.vs_reference.pixel_accuracy < 1.0  # 1.1.0 has changed weights: close to 1.0.0, not equal
    root = fleet.inventory.get("d1").root
    assert list(Path(root, "compare").iterdir()) == []  # the scratch folder is gone
    # naming the other archive for d1: it does not run it, so that row fails and says what to do
    stale = compare([releases["1.0.0"]], images[0].parent, devices=[f"d1={releases['1.0.0']}"],
                    inventory=fleet.root / "devices.toml", runs=1, warmup=0, out_dir=tmp_path / "s", **quiet)
    assert not stale.passed and stale.results[1].error.startswith("d1 runs release 1.1.0, not ")
    assert "edgeseg deploy" in stale.results[1].error


# ------------------------------------------------------------------ Jetson / TensorRT devices
def _x86_jetson(fallback: bool) -> object:
    """The jetson profile for this x86_64 test device (an x86 box with an NVIDIA GPU would use the same)."""
    t = load_target("jetson")
    update: dict[str, object] = {"platform": t.platform.model_copy(update={"arch": "x86_64", "python": "3.11", "toolchain": None})}
    if fallback:
        update |= {"fallback_backend": "onnxruntime", "fallback_options": {"providers": ["CPUExecutionProvider"]}}
    return t.model_copy(update=update)


def test_remote_engine_build_reports_a_device_without_tensorrt(fleet: Fleet, keys: dict[str, Path], tmp_path: Path) -> None:
    """``edgeseg build --target jetson --device j1``: the device says it has no TensorRT; nothing else is written."""
    _provisioned(fleet, "j1", target="jetson")
    proc = edgeseg_cli("build", "--target", "jetson", "--device", "j1", "--inventory", fleet.root / "devices.toml",
                       "--out", tmp_path / "dist", "--sign-key", keys["sign"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("edgeseg: error: j1: TensorRT is not installed here (No module named 'tensorrt')"), proc.stderr
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == ["selfie_segmentation-jetson-fp16.tar.gz"]
    root = Path(fleet.inventory.get("j1").root)
    assert list((root / "engine-build").iterdir()) == []  # the scratch upload is gone
    # a non-TensorRT target is refused before anything is built
    proc = edgeseg_cli("build", "--target", "cpu", "--device", "j1", "--inventory", fleet.root / "devices.toml",
                       "--out", tmp_path / "cpu")
    assert proc.returncode == 2 and "only TensorRT targets are" in proc.stderr and not (tmp_path / "cpu").exists()


def test_jetson_health_check_is_honest_and_fallback_explicit(fleet: Fleet, keys: dict[str, Path], tmp_path: Path) -> None:
    _provisioned(fleet, "j1", target="jetson")
    quiet = {"report": lambda _l: None, "sign_key": keys["sign"]}
    plain = edgeseg.build(target=_x86_jetson(False), out_dir=tmp_path / "a", release_version="1.0.0", **quiet).archive
    res = _deploy(fleet, plain, "j1")
    assert res.status == "failed" and "health check failed" in res.error and "TensorRT is not installed here" in res.error, res.error
    assert _current(fleet, "j1") is None  # nothing half-installed
    fb = edgeseg.build(target=_x86_jetson(True), out_dir=tmp_path / "b", release_version="1.0.1", **quiet).archive
    res = _deploy(fleet, fb, "j1")
    assert res.status == "installed", res.error
    assert "(onnxruntime, fallback for tensorrt fp16)" in res.details["health"]["verdict"]
    root = fleet.inventory.get("j1").root
    proc = _on_device(fleet, "j1", "verify", f"{root}/current")
    assert proc.returncode == 0 and proc.stdout.startswith("PASS")
    assert "running the profile's fallback_backend onnxruntime" in proc.stderr


# ------------------------------------------------------------------ a device that accepts TCP and never answers
class _Silent:
    """A TCP server that accepts connections and never sends a byte: a hung sshd (or a tarpit)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.accepted.set()

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def silent(tmp_path: Path, keys: dict[str, Path]) -> Iterator[tuple[_Silent, Path]]:
    """The silent server and an inventory naming it ``mute`` (timeout 20 s, group ``lab``)."""
    server = _Silent()
    (tmp_path / "known_hosts").write_text("")
    inv = tmp_path / "devices.toml"
    inv.write_text(
        f'known_hosts = "known_hosts"\n[defaults]\nkey = "{keys["client"]}"\ntrusted_keys = ["{keys["pub"]}"]\n'
        f'[[device]]\nname = "mute"\nhost = "127.0.0.1"\nport = {server.port}\ntarget = "cpu"\n'
        f'root = "{tmp_path / "root"}"\npython = "{sys.executable}"\ngroups = ["lab"]\ntimeout = 20.0\n'
    )
    yield server, inv
    server.close()


@pytest.mark.parametrize(("command", "signum"), [
    ("deploy", signal.SIGINT), ("deploy", signal.SIGTERM), ("deploy", signal.SIGHUP),
    ("status", signal.SIGINT), ("recover", signal.SIGINT), ("rollback", signal.SIGINT), ("status", signal.SIGTERM),
    ("devices provision", signal.SIGINT),
])
def test_a_signal_stops_a_command_waiting_on_a_hung_device_at_once_and_leaves_no_temporary_files(
    silent: tuple[_Silent, Path], releases: dict[str, Path], tmp_path: Path, command: str, signum: int
) -> None:
    """Ctrl-C, SIGTERM or SIGHUP while a device has accepted TCP but sends no SSH banner (its timeout is 20 s)."""
    server, inv = silent
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    args = [releases["1.0.0"]] if command == "deploy" else []
    proc = subprocess.Popen([sys.executable, "-m", "edgeseg", *command.split(), *map(str, args), "-i", str(inv),
                             "--group", "lab"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(private_tmp)})
    try:
        assert server.accepted.wait(60), "the command never connected"
        if command == "deploy":
            assert len(list(private_tmp.iterdir())) == 1  # the archive, opened once, in the main thread
        time.sleep(0.3)  # in paramiko's wait for the banner
        t0 = time.monotonic()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"\n{command}: {signal.Signals(signum).name} -> exit {proc.returncode} after {took:.2f} s")
    how = "interrupted" if signum == signal.SIGINT else f"stopped by signal {signum}"
    lines = err.splitlines()
    assert proc.returncode == (130 if signum == signal.SIGINT else 128 + signum), err
    assert lines[-1].startswith(f"edgeseg: {how}: ") and "links closed" in lines[-1], err
    assert not [line for line in lines[:-1] if not line.startswith("wave 1/1")], err  # no traceback, no paramiko lines
    assert out == ""
    assert took < 3.0, f"took {took:.1f} s to stop"
    assert list(private_tmp.iterdir()) == []  # the unpacked archive is gone


def test_paramiko_never_writes_on_stderr(silent: tuple[_Silent, Path], fleet: Fleet) -> None:
    """Only edgeseg's line per device: no 'Exception (client)', tracebacks or 'Socket exception' from paramiko."""
    server, inv = silent
    inv.write_text(inv.read_text().replace("timeout = 20.0", "timeout = 1.0"))
    proc = edgeseg_cli("status", "-i", inv, "--device", "mute", "--json")
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr
    (row,) = json.loads(proc.stdout)
    assert row["error"] == f"mute (root@127.0.0.1:{server.port}): SSH failed (Error reading SSH protocol banner)"
    # a missing key file, eight names for one real device at once (paramiko's transport thread saw the socket close)
    dev = fleet.add("d1")
    toml = fleet.root / "devices.toml"
    text = toml.read_text().replace(f'key = "{fleet.keys["client"]}"', 'key = "/nonexistent/key"')
    toml.write_text(text + "".join(dev.toml(f"alias{i}", groups=("many",)) for i in range(8)))
    proc = edgeseg_cli("status", "-i", toml, "--group", "many", "--json")
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr
    assert {r["error"].split(": ", 1)[1] for r in json.loads(proc.stdout)} == {
        "SSH failed ([Errno 2] No such file or directory: '/nonexistent/key')"}


def test_a_fleet_deploy_opens_the_archive_once(fleet: Fleet, releases: dict[str, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The archive is unpacked and checked once, before any device, not once per device."""
    import edgeseg_runtime.tarball

    for name in ("d1", "d2", "d3"):
        _provisioned(fleet, name)
    opened: list[Path] = []
    real = edgeseg_runtime.tarball.extract

    def counting(path: Path, dest: Path) -> object:
        opened.append(Path(path))
        return real(path, dest)

    monkeypatch.setattr(edgeseg_runtime.tarball, "extract", counting)
    out = deploy(releases["1.0.0"], fleet.inventory, group="lab", waves=Waves.parse("1,100%"), stage_only=True)
    assert [r.status for r in out.results] == ["staged"] * 3, out.results
    assert opened == [releases["1.0.0"]]
    # refused before any device is contacted: unsigned, or a signature that is not a signature document
    folder = tmp_path / "badsig"
    with tarfile.open(releases["1.0.0"]) as tar:
        tar.extractall(folder, filter="data")
    (folder / "manifest.sig").write_text("garbage")
    for archive, error in ((releases["unsigned"], "is unsigned"), (pack(folder, tmp_path / "badsig.tar.gz"),
                                                                   "not a valid edgeseg signature")):
        with pytest.raises(edgeseg.EdgesegError, match=error):
            deploy(archive, fleet.inventory, group="lab")
    assert len(opened) == 3


def test_device_builds_read_the_backends_capabilities(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``build --device`` checks ``capabilities.build_on``, not the deprecated ``build_on`` alias."""
    from edgeseg.backends import BaseBackend
    from edgeseg.deploy.engine import device_for_build

    monkeypatch.setattr(BaseBackend, "build_on", property(lambda self: pytest.fail("read the deprecated build_on")))
    inv = tmp_path / "devices.toml"
    inv.write_text('[[device]]\nname = "j1"\nhost = "10.0.0.1"\ntarget = "jetson"\n')
    assert device_for_build("jetson", "j1", inv)[1].name == "j1"
    with pytest.raises(edgeseg.ConfigError, match="only TensorRT targets are"):
        device_for_build("cpu", "j1", inv)
