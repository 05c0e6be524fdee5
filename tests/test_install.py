"""The device side of deployment without SSH: signatures, versions, recovery, waves."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

import edgeseg
from edgeseg.deploy.fleet import parse_waves, plan_waves
from edgeseg.deploy.inventory import Device as Entry
from edgeseg.errors import ConfigError
from edgeseg.signing import new_keypair, sign_bytes, load_private_key
from edgeseg_runtime.archive import sha256_file
from edgeseg_runtime.errors import InstallError, SignatureError
from edgeseg_runtime.install import Device, parse_version
from edgeseg_runtime.signing import load_public_key, verify_manifest


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("signed")
    kp = new_keypair(d / "keys")
    out = {"key": kp.private, "pub": kp.public}
    for v in ("1.0.0", "2.0.0"):
        out[v] = edgeseg.build(target="cpu", out_dir=d / v, release_version=v, sign_key=kp.private, report=lambda _l: None).archive
    return out


def _device(tmp_path: Path, pub: Path) -> Device:
    dev = Device(tmp_path / "root")
    key_id, _ = load_public_key(pub)
    shutil.copyfile(pub, dev.root / "trusted_keys" / f"{key_id}.pem")
    return dev


def _receive(dev: Device, archive: Path, tmp: Path, *, signature: bool = True) -> str:
    """Place an archive's files in the device's incoming/ as a finished upload would; returns the manifest sha256."""
    folder = tmp / f"unpacked-{archive.parent.name}"
    if not folder.exists():
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
    for p in folder.rglob("*"):
        if p.is_file() and p.name != "manifest.sig":
            shutil.copyfile(p, dev.root / "incoming" / f"{sha256_file(p)}.part")
    msha = sha256_file(folder / "manifest.json")
    if signature:
        shutil.copyfile(folder / "manifest.sig", dev.root / "incoming" / f"{msha}.sig")
    return msha


def test_versions_compare_numerically() -> None:
    assert parse_version("1.10.0") > parse_version("1.9.3") > parse_version("1.9")
    assert parse_version("2.0") == parse_version("2") == parse_version("2.0.0")
    for bad in ("v1", "1.2-rc1", "", "1..2"):
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
    assert first["status"] == "installed" and dev.state()["current"]["version"] == "1.0.0"
    msha = _receive(dev, signed["2.0.0"], tmp_path, signature=False)
    with pytest.raises(SignatureError, match="unsigned"):
        dev.install(msha)
    assert dev.state()["current"]["version"] == "1.0.0" and dev.state()["journal"] is None


@pytest.mark.parametrize("phase", ["assemble", "dependencies", "health"])
def test_recover_discards_an_install_cut_before_the_switch(signed: dict[str, Path], tmp_path: Path, phase: str) -> None:
    dev = _device(tmp_path, signed["pub"])
    dev.install(_receive(dev, signed["1.0.0"], tmp_path))
    # what a power cut leaves: a half-built slot and the journal of its phase
    msha = _receive(dev, signed["2.0.0"], tmp_path)
    dev.ingest()
    staging = dev.root / "releases" / ".staging-2.0.0"
    (staging / "golden").mkdir(parents=True)
    (dev.root / "journal.json").write_text(json.dumps({"phase": phase, "version": "2.0.0", "manifest": msha}))
    assert dev.recover() == {"status": "discarded", "version": "1.0.0"}
    assert not staging.exists() and not (dev.root / "journal.json").exists()
    assert dev.install(msha)["status"] == "installed"  # the next deploy needs no upload
    assert dev.state()["current"]["version"] == "2.0.0"


def test_recover_finishes_an_install_cut_after_the_switch(signed: dict[str, Path], tmp_path: Path) -> None:
    dev = _device(tmp_path, signed["pub"])
    dev.install(_receive(dev, signed["1.0.0"], tmp_path))
    msha = _receive(dev, signed["2.0.0"], tmp_path)
    dev.ingest()
    manifest = json.loads((dev.root / "store" / msha).read_text())
    dev._assemble(manifest, msha, dev.root / "releases" / "2.0.0")  # slot complete and checked
    (dev.root / "current").unlink()
    (dev.root / "current").symlink_to("releases/2.0.0")  # the switch happened, bookkeeping did not
    (dev.root / "journal.json").write_text(json.dumps({"phase": "switch", "version": "2.0.0", "manifest": msha, "old": "1.0.0"}))
    assert dev.recover() == {"status": "finished", "version": "2.0.0"}
    state = dev.state()
    assert (state["current"]["version"], state["previous"]["version"], state["journal"]) == ("2.0.0", "1.0.0", None)


def test_rollback_needs_a_previous_release(signed: dict[str, Path], tmp_path: Path) -> None:
    dev = _device(tmp_path, signed["pub"])
    dev.install(_receive(dev, signed["1.0.0"], tmp_path))
    with pytest.raises(InstallError, match="no previous release"):
        dev.rollback()


def _entries(n: int) -> list[Entry]:
    return [Entry(name=f"d{i}", host="h", target="cpu") for i in range(n)]


def test_waves_are_cumulative() -> None:
    sizes = lambda plan: [len(w) for w in plan]  # noqa: E731
    assert sizes(plan_waves(_entries(6), "1,50%,100%")) == [1, 2, 3]
    assert sizes(plan_waves(_entries(10), "1,50%,100%")) == [1, 4, 5]
    assert sizes(plan_waves(_entries(3), "1,50%")) == [1, 1, 1]  # the rest always forms a last wave
    assert sizes(plan_waves(_entries(1), "1,50%,100%")) == [1]
    assert sizes(plan_waves(_entries(5), "100%")) == [5]
    assert parse_waves("2, 25%") == [(2.0, False), (25.0, True)]
    for bad in ("", "0", "150%", "x", "1.5"):
        with pytest.raises(ConfigError):
            parse_waves(bad)
