"""Releases through Mender: ``edgeseg export mender`` and the ``edgeseg`` update module, with Debian's real client.

Each device is a real ``sshd`` (:mod:`sshd`) provisioned over SSH with
``edgeseg devices provision --mender``, plus a standalone ``mender`` client
(``mender-client`` 3.4, Debian 12) that runs in its own mount and PID
namespace: the update-module folder (``/usr/share/mender/modules``) and
``/etc/mender`` are the device's folders bind-mounted over the host's (the
client has both paths built in), its state is in ``--data``. Killing that
namespace's first process ends the client, the module and the health check at
once: a power cut.

Needs root, ``openssh-server``, ``mender-client`` and ``mender-artifact`` (the
README's test command installs them).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fabric", reason="fabric is not installed (extra 'deploy')")
pytest.importorskip("cryptography", reason="cryptography is not installed (extra 'deploy')")
from conftest import edgeseg_cli, scale_weights
from edgeseg_runtime.archive import sha256_file
from sshd import SshDevice, require_sshd, ssh_keygen

import edgeseg
from edgeseg.signing import new_keypair
from edgeseg.targets import load_target

MENDER, MENDER_ARTIFACT = shutil.which("mender"), shutil.which("mender-artifact")
pytestmark = pytest.mark.skipif(
    MENDER is None or MENDER_ARTIFACT is None,
    reason="mender-client and mender-artifact are not installed (apt-get install mender-client mender-artifact)",
)
DEVICE_TYPE = "edgeseg-test-board"
MODEL = "selfie_segmentation"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """edgeseg's Ed25519 signing key, an SSH client key, and a Mender ECDSA P-256 signing key pair."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    require_sshd()
    d = tmp_path_factory.mktemp("keys")
    signing = new_keypair(d)
    mender_key = ec.generate_private_key(ec.SECP256R1())
    (d / "mender.key").write_bytes(mender_key.private_bytes(  # SEC1 ('EC PRIVATE KEY'): what mender-artifact reads
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    (d / "mender-pkcs8.key").write_bytes(mender_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (d / "mender.pub").write_bytes(mender_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return {"sign": signing.private, "pub": signing.public, "client": ssh_keygen(d / "client_key"),
            "mender": d / "mender.key", "mender_pub": d / "mender.pub", "mender_pkcs8": d / "mender-pkcs8.key"}


@pytest.fixture(scope="module")
def releases(keys: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Signed cpu archives of the default model: 1.0.0, 1.1.0 (changed weights), 1.2.0, a 1.5.0 that fails its
    health check (latency budget 0.001 ms), an unsigned 1.6.0, and 1.3.0 altered after signing."""
    out = tmp_path_factory.mktemp("releases")
    quiet = {"report": lambda _line: None}
    v11 = scale_weights(edgeseg.DEFAULT_MODEL, out / "selfie_v11.onnx", 1.01)
    shutil.copyfile(edgeseg.DEFAULT_MODEL.parent / "LICENSE", out / "LICENSE")
    slow = load_target("cpu")
    slow = slow.model_copy(update={"deploy": slow.deploy.model_copy(update={"latency_budget_ms": 0.001})})

    def build(version: str, model: Path | None = None, target: object = "cpu", key: Path | None = keys["sign"]) -> Path:
        return edgeseg.build(model, spec=edgeseg.DEFAULT_SPEC if model else None, target=target,
                             out_dir=out / version, release_version=version, sign_key=key, **quiet).archive

    made = {v: build(v) for v in ("1.0.0", "1.2.0")}
    made["1.1.0"] = build("1.1.0", v11)
    made["1.5.0"] = build("1.5.0", target=slow)
    made["unsigned"] = build("1.6.0", key=None)
    # altered after signing: the manifest says 1.3.0, the signature covers 1.2.0's manifest
    folder = out / "tampered-src"
    with tarfile.open(made["1.2.0"]) as tar:
        tar.extractall(folder, filter="data")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["release"]["version"] = "1.3.0"
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    from edgeseg.bundle import pack

    made["tampered"] = pack(folder, out / "tampered" / made["1.2.0"].name)  # deliberately not re-signed
    return made


@pytest.fixture(scope="module")
def artifacts(releases: dict[str, Path], keys: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``edgeseg export mender`` of each release (Mender-signed with the ECDSA key), plus artifacts an attacker wrote
    with mender-artifact directly: the tampered archive under a valid Mender signature, and another device type."""
    out = tmp_path_factory.mktemp("artifacts")
    made = {}
    for name in ("1.0.0", "1.1.0", "1.2.0", "1.5.0"):
        r = edgeseg_cli("export", "mender", releases[name], "-t", DEVICE_TYPE, "--sign-key", keys["mender"],
                        "-o", out / f"{name}.mender", "--json")
        assert r.returncode == 0, r.stderr
        made[name] = Path(json.loads(r.stdout)["path"])
    r = edgeseg_cli("export", "mender", releases["1.2.0"], "-t", "some-other-board", "-o", out / "other.mender")
    assert r.returncode == 0, r.stderr
    made["other-type"] = out / "other.mender"
    r = edgeseg_cli("export", "mender", releases["1.2.0"], "-t", DEVICE_TYPE, "-o", out / "unsigned.mender")
    assert r.returncode == 0, r.stderr
    made["mender-unsigned"] = out / "unsigned.mender"
    made["tampered"] = out / "tampered.mender"
    subprocess.run([MENDER_ARTIFACT, "write", "module-image", "-T", "edgeseg", "-n", f"{MODEL}-1.3.0", "-t", DEVICE_TYPE,
                    "-f", str(releases["tampered"]), "-o", str(made["tampered"]), "-k", str(keys["mender"])],
                   check=True, capture_output=True)
    return made


class MenderDevice:
    """An sshd device provisioned with ``--mender``, and its standalone Mender client."""

    def __init__(self, workdir: Path, keys: dict[str, Path], *, verify_key: Path | None = None) -> None:
        self.dir = workdir
        self.ssh = SshDevice(workdir / "ssh", Path(str(keys["client"]) + ".pub"))
        self.root = self.ssh.root
        self.modules = workdir / "mender" / "modules"
        self.etc = workdir / "mender" / "etc"
        self.data = workdir / "mender" / "data"
        for d in (self.modules / "v3", self.etc, self.data):
            d.mkdir(parents=True, exist_ok=True)
        (self.data / "device_type").write_text(f"device_type={DEVICE_TYPE}\n")
        (self.etc / "artifact_info").write_text("artifact_name=factory-image\n")
        conf = {"DeviceTypeFile": str(self.data / "device_type")}
        if verify_key is not None:
            conf["ArtifactVerifyKey"] = str(verify_key)
        (self.etc / "mender.conf").write_text(json.dumps(conf))
        self.inventory = workdir / "devices.toml"
        (workdir / "known_hosts").write_text(self.ssh.known_hosts_line())
        self.inventory.write_text(
            f'known_hosts = "{workdir / "known_hosts"}"\n[defaults]\nkey = "{keys["client"]}"\n'
            f'trusted_keys = ["{keys["pub"]}"]\n\n'
            + self.ssh.toml("m1", mender_modules=str(self.modules / "v3")))

    def provision(self) -> subprocess.CompletedProcess[str]:
        return edgeseg_cli("devices", "provision", "-i", self.inventory, "-d", "m1", "--mender", "--json")

    def argv(self, *args: str) -> list[str]:
        script = ('mount --bind "$1" /usr/share/mender/modules && mount --bind "$2" /etc/mender && shift 3 && '
                  'exec mender --config /etc/mender/mender.conf --data "$0" --no-syslog -l info "$@"')
        return ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
                "sh", "-c", script, str(self.data), str(self.modules), str(self.etc), "--", *args]

    def mender(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=300, check=False)

    def current(self) -> str | None:
        try:
            return os.readlink(self.root / "current")
        except FileNotFoundError:
            return None

    def on_device(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The device's own ``R/bin/edgeseg ARGS`` (what a boot script or an operator runs there)."""
        return subprocess.run([str(self.root / "bin" / "edgeseg"), *args], capture_output=True, text=True, timeout=300, check=False)

    def assert_working(self, version: str) -> None:
        assert self.current() == f"releases/{version}"
        r = self.on_device("verify", str(self.root / "current"), "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["passed"] and doc["verdict"].startswith(f"PASS: {version} "), doc
        assert not (self.root / "journal.json").exists()
        assert not [p.name for p in (self.root / "releases").iterdir() if p.name.startswith(".")]

    def snapshot(self) -> dict[str, list[str]]:
        """What an install could have changed: store, releases, journal, links."""
        return {
            "store": sorted(p.name for p in (self.root / "store").iterdir()),
            "incoming": sorted(p.name for p in (self.root / "incoming").iterdir()),
            "releases": sorted(p.name for p in (self.root / "releases").iterdir()),
            "journal": [(self.root / "journal.json").read_text()] if (self.root / "journal.json").exists() else [],
            "links": [str(self.current()), str(os.readlink(self.root / "previous")) if (self.root / "previous").is_symlink() else ""],
        }

    def close(self) -> None:
        self.ssh.close()


@pytest.fixture()
def device(tmp_path: Path, keys: dict[str, Path]) -> Iterator[MenderDevice]:
    dev = MenderDevice(tmp_path, keys)
    try:
        r = dev.provision()
        assert r.returncode == 0, r.stdout + r.stderr
        yield dev
    finally:
        dev.close()


def _provides(dev: MenderDevice) -> dict[str, str]:
    out = dev.mender("show-provides").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _installed(dev: MenderDevice, artifact: Path) -> float:
    """``mender install`` then ``mender commit``; returns the seconds both took."""
    t0 = time.perf_counter()
    r = dev.mender("install", str(artifact))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Use 'commit' to update, or 'rollback'" in r.stdout + r.stderr  # SupportsRollback: Yes, so it waits
    r = dev.mender("commit")
    assert r.returncode == 0, r.stderr[-2000:]
    return time.perf_counter() - t0


# ------------------------------------------------------------------ the artifact
def test_export_wraps_the_signed_archive_unchanged(releases: dict[str, Path], artifacts: dict[str, Path],
                                                   keys: dict[str, Path], tmp_path: Path) -> None:
    archive = releases["1.0.0"]
    read = subprocess.run([MENDER_ARTIFACT, "read", "--no-progress", "-k", str(keys["mender_pub"]),
                           str(artifacts["1.0.0"])], capture_output=True, text=True, check=False)
    assert read.returncode == 0, read.stderr
    info = read.stdout
    assert "Signature: signed and verified correctly" in info
    assert f"Name: {MODEL}-1.0.0" in info and f"Compatible devices: '[{DEVICE_TYPE}]'" in info
    assert "Type:   edgeseg" in info and f"edgeseg.{MODEL}.version: 1.0.0" in info and f"edgeseg.{MODEL}.target: cpu" in info
    assert f'Clears Provides: ["edgeseg.{MODEL}.*"]' in info
    # the payload is the archive, byte for byte
    with tarfile.open(artifacts["1.0.0"]) as outer:
        data = outer.extractfile("data/0000.tar")
        assert data is not None
        with tarfile.open(fileobj=data) as inner:
            (member,) = inner.getmembers()
            payload = inner.extractfile(member)
            assert payload is not None
            assert hashlib.sha256(payload.read()).hexdigest() == sha256_file(archive)
    size, asize = artifacts["1.0.0"].stat().st_size, archive.stat().st_size
    assert asize < size < asize + 64 * 1024  # uncompressed payload: the archive plus Mender's headers
    print(f"\nartifact {size:,} bytes for an archive of {asize:,} (+{(size - asize) / asize:.2%})")


def test_export_refuses_what_a_device_would_refuse_and_writes_nothing(releases: dict[str, Path], keys: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    before = {name: sha256_file(p) for name, p in releases.items()}
    out = tmp_path / "out"
    cases = [
        (["export", "mender", releases["unsigned"], "-t", DEVICE_TYPE, "-o", out / "a.mender"], "unsigned"),
        (["export", "mender", releases["tampered"], "-t", DEVICE_TYPE, "-o", out / "b.mender"], "altered after signing"),
        (["export", "mender", tmp_path / "missing.tar.gz", "-t", DEVICE_TYPE], "no such archive"),
        (["export", "mender", releases["1.0.0"], "-o", out / "c.mender"], "--device-type"),
        (["export", "mender", releases["1.0.0"], "-t", "a board", "-o", out / "d.mender"], "device type 'a board'"),
        (["export", "mender", releases["1.0.0"], "-t", DEVICE_TYPE, "-k", tmp_path / "nokey.pem"], "no such signing key"),
        (["export", "mender", releases["1.0.0"], "-t", DEVICE_TYPE, "-k", keys["mender_pkcs8"], "-o", out / "e.mender"],
         "openssl ec -in KEY"),
    ]
    for argv, message in cases:
        r = edgeseg_cli(*argv)
        assert r.returncode == 2, (argv, r.stderr)
        last = r.stderr.strip().splitlines()[-1]  # progress lines may come first; the error is one line
        assert last.startswith("edgeseg: error: ") and message in last and "Traceback" not in r.stderr, r.stderr
    assert not out.exists() or not list(out.iterdir())  # no artifact, no temporary folder
    assert {name: sha256_file(p) for name, p in releases.items()} == before
    assert not list(releases["1.0.0"].parent.glob("*.mender"))


# ------------------------------------------------------------------ the update module with the real client
def test_install_commit_upgrade_and_verify_on_the_device(device: MenderDevice, artifacts: dict[str, Path]) -> None:
    module = device.modules / "v3" / "edgeseg"
    assert os.access(module, os.X_OK) and str(device.root) in module.read_text()
    seconds = _installed(device, artifacts["1.0.0"])
    device.assert_working("1.0.0")
    assert _provides(device)[f"edgeseg.{MODEL}.version"] == "1.0.0"
    assert device.mender("show-artifact").stdout.strip() == f"{MODEL}-1.0.0"
    seconds += _installed(device, artifacts["1.1.0"])
    device.assert_working("1.1.0")
    assert os.readlink(device.root / "previous") == "releases/1.0.0"
    assert _provides(device)[f"edgeseg.{MODEL}.version"] == "1.1.0"
    # the other front door to the same installer, side by side (printed for the record, not a timed assertion)
    t0 = time.perf_counter()
    r = edgeseg_cli("deploy", artifacts_archive(artifacts, "1.2.0"), "-i", device.inventory, "-d", "m1", "--json")
    ssh = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    device.assert_working("1.2.0")
    print(f"\nper release: mender install + commit {seconds / 2:.2f} s; edgeseg deploy over SSH {ssh:.2f} s")


def test_failed_health_check_fails_the_deployment_and_keeps_the_release(device: MenderDevice, artifacts: dict[str, Path]) -> None:
    _installed(device, artifacts["1.1.0"])
    before = device.snapshot()
    r = device.mender("install", str(artifacts["1.5.0"]))
    assert r.returncode != 0
    assert "health check failed, kept version 1.1.0" in r.stderr and "over the profile's budget" in r.stderr
    device.assert_working("1.1.0")
    assert device.snapshot() == before
    assert device.mender("show-artifact").stdout.strip() == f"{MODEL}-1.1.0"
    assert device.mender("commit").returncode == 2  # nothing in progress


def test_rollback_before_commit_returns_to_the_running_release(device: MenderDevice, artifacts: dict[str, Path]) -> None:
    _installed(device, artifacts["1.1.0"])
    r = device.mender("install", str(artifacts["1.2.0"]))
    assert r.returncode == 0, r.stderr[-2000:]
    # staged: health-checked, not current; the SSH front door refuses to cut in
    assert device.current() == "releases/1.1.0"
    assert (device.root / "releases" / ".staging-1.2.0").is_dir()
    assert json.loads((device.root / "journal.json").read_text())["phase"] == "staged"
    ssh = edgeseg_cli("deploy", artifacts_archive(artifacts, "1.2.0"), "-i", device.inventory, "-d", "m1", "--json")
    assert ssh.returncode == 1 and "staged by a Mender deployment" in ssh.stdout + ssh.stderr
    r = device.mender("rollback")
    assert r.returncode == 0, r.stderr[-2000:]
    device.assert_working("1.1.0")
    assert not (device.root / "releases" / "1.2.0").exists()
    assert device.mender("show-artifact").stdout.strip() == f"{MODEL}-1.1.0"


def artifacts_archive(artifacts: dict[str, Path], name: str) -> Path:
    """The edgeseg archive inside an artifact (extracted next to it), for the SSH front door."""
    dest = artifacts[name].with_suffix(".payload")
    if not dest.exists():
        dest.mkdir()
        with tarfile.open(artifacts[name]) as outer:
            data = outer.extractfile("data/0000.tar")
            assert data is not None
            with tarfile.open(fileobj=data) as inner:
                inner.extractall(dest, filter="data")
    (payload,) = dest.iterdir()
    return payload


@pytest.mark.parametrize("case", ["other device type", "unsigned for ArtifactVerifyKey", "bad Ed25519 inside", "downgrade"])
def test_refused_artifacts_stage_nothing(case: str, tmp_path: Path, keys: dict[str, Path], artifacts: dict[str, Path]) -> None:
    dev = MenderDevice(tmp_path, keys, verify_key=keys["mender_pub"])
    try:
        assert dev.provision().returncode == 0
        _installed(dev, artifacts["1.1.0"])  # Mender-signed: accepted with ArtifactVerifyKey
        before = dev.snapshot()
        artifact, message = {
            "other device type": (artifacts["other-type"], DEVICE_TYPE),
            "unsigned for ArtifactVerifyKey": (artifacts["mender-unsigned"], "signature"),
            "bad Ed25519 inside": (artifacts["tampered"], "altered after signing"),
            "downgrade": (artifacts["1.0.0"], "refusing a downgrade"),
        }[case]
        r = dev.mender("install", str(artifact))
        assert r.returncode != 0
        assert message in r.stderr, r.stderr[-2000:]
        assert dev.snapshot() == before
        dev.assert_working("1.1.0")
        assert dev.mender("show-artifact").stdout.strip() == f"{MODEL}-1.1.0"
    finally:
        dev.close()


def test_power_loss_mid_install_ends_on_a_working_release(device: MenderDevice, artifacts: dict[str, Path]) -> None:
    _installed(device, artifacts["1.1.0"])
    for attempt in ("recover", "mender install"):
        proc = subprocess.Popen(device.argv("install", str(artifacts["1.2.0"])), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline, phase = time.monotonic() + 120, None
        while time.monotonic() < deadline and phase != "health":
            try:
                phase = json.loads((device.root / "journal.json").read_text())["phase"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.01)
        assert phase == "health", "the install never reached its health check"
        os.killpg(proc.pid, signal.SIGKILL)  # the namespace's first process: client, module and health check die
        proc.wait(10)
        assert device.current() == "releases/1.1.0"
        if attempt == "recover":  # what the device's boot script runs
            r = device.on_device("recover")
            assert r.returncode == 0 and "discarded" in r.stdout + r.stderr, r.stdout + r.stderr
            device.assert_working("1.1.0")
        else:  # or simply deploy again through Mender
            _installed(device, artifacts["1.2.0"])
            device.assert_working("1.2.0")


# ------------------------------------------------------------------ attack findings: cut commits, signals, two front doors
def _module(root: Path, state: str, files: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    """The update module as Mender runs it (its own process), without the client."""
    runtime = Path(edgeseg.__file__).parents[1] / "runtime_py"
    env = {**os.environ, "PYTHONPATH": str(runtime), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "edgeseg_runtime.mender", "--root", str(root), state, str(files)],
                          capture_output=True, text=True, env=env, timeout=300, check=False, **kw)


def _files(tmp: Path, archive: Path) -> Path:
    """A Mender payload folder holding ``archive`` (what the client stores for a module that does not stream)."""
    folder = tmp / f"files-{archive.parent.name}"
    (folder / "files").mkdir(parents=True)
    (folder / "tmp").mkdir()
    shutil.copyfile(archive, folder / "files" / archive.name)
    return folder


def _root(tmp: Path, keys: dict[str, Path]) -> Path:
    from edgeseg_runtime.install import InstallRoot
    from edgeseg_runtime.signing import load_public_key

    dev = InstallRoot(tmp / "root")
    shutil.copyfile(keys["pub"], dev.root / "trusted_keys" / f"{load_public_key(keys['pub'])[0]}.pem")
    return dev.root


def _installed_by_module(root: Path, tmp: Path, archive: Path) -> None:
    files = _files(tmp, archive)
    for state in ("ArtifactInstall", "ArtifactCommit", "Cleanup"):
        r = _module(root, state, files)
        assert r.returncode == 0, (state, r.stderr)


def _tree(root: Path) -> dict[str, object]:
    links = {n: os.readlink(root / n) if (root / n).is_symlink() else None for n in ("current", "previous")}
    return {**links, "floor": (root / "version_floor").read_text() if (root / "version_floor").exists() else None,
            "releases": sorted(p.name for p in (root / "releases").iterdir()),
            "store": sorted(p.name for p in (root / "store").iterdir()),
            "incoming": sorted(p.name for p in (root / "incoming").iterdir()),
            "journal": (root / "journal.json").exists(), "tmp": sorted(p.name for p in root.glob(".*.tmp"))}


@pytest.mark.parametrize("cut", ["after the switch", "before the switch"])
def test_a_cut_commit_is_taken_back_whole_by_the_rollback(cut: str, releases: dict[str, Path], keys: dict[str, Path],
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ArtifactCommit killed mid-way, then Mender's ArtifactRollback: the device is exactly as before the deployment
    (current, previous, version_floor, store), so Mender's record (the old artifact) is the truth."""
    from edgeseg_runtime.install import InstallRoot

    root = _root(tmp_path, keys)
    _installed_by_module(root, tmp_path, releases["1.0.0"])
    _installed_by_module(root, tmp_path, releases["1.1.0"])
    before = _tree(root)
    files = _files(tmp_path, releases["1.2.0"])
    assert _module(root, "ArtifactInstall", files).returncode == 0
    method = "_finish" if cut == "after the switch" else "_raise_floor"

    def power_cut(*_a: object, **_k: object) -> None:
        raise SystemExit("power cut")  # what a kill leaves: nothing after this point runs

    monkeypatch.setattr(InstallRoot, method, power_cut)
    manifest = (files / "tmp" / "edgeseg-state").read_text().split()[2]
    with pytest.raises(SystemExit):
        InstallRoot(root).commit_staged(manifest)
    monkeypatch.undo()
    assert json.loads((root / "journal.json").read_text())["undo"] is True
    r = _module(root, "ArtifactRollback", files)
    assert r.returncode == 0 and "took back the commit of 1.2.0" in r.stderr, r.stderr
    assert _module(root, "ArtifactFailure", files).returncode == 0
    assert _tree(root) == before


def test_tidying_up_after_the_switch_does_not_fail_the_commit(releases: dict[str, Path], keys: dict[str, Path],
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeseg_runtime.install import InstallRoot

    root = _root(tmp_path, keys)
    _installed_by_module(root, tmp_path, releases["1.0.0"])
    files = _files(tmp_path, releases["1.1.0"])
    assert _module(root, "ArtifactInstall", files).returncode == 0

    def cannot_prune(*_a: object, **_k: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(InstallRoot, "prune", cannot_prune)
    lines: list[str] = []
    result = InstallRoot(root, report=lines.append).commit_staged()
    assert result.status == "installed" and result.version == "1.1.0"
    assert os.readlink(root / "current") == "releases/1.1.0" and any("tidying up failed" in l for l in lines)
    monkeypatch.undo()
    r = subprocess.run([str(root / "bin" / "edgeseg"), "recover"], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "finished the install of 1.1.0" in r.stdout + r.stderr, r.stdout + r.stderr
    assert not (root / "journal.json").exists()


def test_a_signal_during_artifact_install_discards_it(releases: dict[str, Path], keys: dict[str, Path], tmp_path: Path) -> None:
    root = _root(tmp_path, keys)
    _installed_by_module(root, tmp_path, releases["1.0.0"])
    before = _tree(root)
    files = _files(tmp_path, releases["1.1.0"])
    runtime = Path(edgeseg.__file__).parents[1] / "runtime_py"
    proc = subprocess.Popen([sys.executable, "-m", "edgeseg_runtime.mender", "--root", str(root), "ArtifactInstall",
                             str(files)], env={**os.environ, "PYTHONPATH": str(runtime)}, stderr=subprocess.PIPE, text=True)
    deadline, phase = time.monotonic() + 60, None
    while time.monotonic() < deadline and phase != "health":
        try:
            phase = json.loads((root / "journal.json").read_text())["phase"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.005)
    assert phase == "health"
    proc.send_signal(signal.SIGTERM)  # systemctl stop mender-client
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("edgeseg: error: stopped by signal 15; the install was discarded")
    assert _tree(root) == before  # journal, staging slot, unpacked files: all gone
    deadline, alive = time.monotonic() + 10, "?"
    while alive and time.monotonic() < deadline:  # killed and reaped at once; a loaded machine may list it a moment
        alive = subprocess.run(["pgrep", "-af", f"{root}/releases/.staging"], capture_output=True, text=True,
                               check=False).stdout.strip()
        time.sleep(0.1 if alive else 0)
    assert alive == "", alive  # the health check did not outlive the module


def test_other_commands_while_staged_leave_the_staged_slot_working(releases: dict[str, Path], keys: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    from edgeseg_runtime.install import InstallRoot

    root = _root(tmp_path, keys)
    _installed_by_module(root, tmp_path, releases["1.0.0"])
    _installed_by_module(root, tmp_path, releases["1.1.0"])
    files = _files(tmp_path, releases["1.2.0"])
    assert _module(root, "ArtifactInstall", files).returncode == 0
    dev = InstallRoot(root)
    dev.prune(1)  # gc must not take the staged slot's files
    with pytest.raises(Exception, match="staged by a Mender deployment"):
        dev.rollback()
    other = _files(tmp_path / "other", releases["1.1.0"])
    assert _module(root, "ArtifactFailure", other).returncode == 0  # a deployment that staged nothing touches nothing
    assert (root / "releases" / ".staging-1.2.0").is_dir()
    r = _module(root, "ArtifactCommit", other)  # it staged nothing: it commits nothing, not another one's slot
    assert r.returncode == 1 and "staged nothing to commit" in r.stderr, r.stderr
    assert os.readlink(root / "current") == "releases/1.1.0"
    r = _module(root, "ArtifactCommit", files)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(root / "bin" / "edgeseg"), "verify", str(root / "current")], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0 and r.stdout.startswith("PASS: 1.2.0 "), r.stdout + r.stderr


def test_export_never_writes_over_a_special_file_or_into_a_folder(releases: dict[str, Path], keys: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for out, message in ((fifo, "is not a regular file"), (tmp_path, "is a folder")):
        r = edgeseg_cli("export", "mender", releases["1.0.0"], "-t", DEVICE_TYPE, "-o", out)
        assert r.returncode == 2 and message in r.stderr.strip().splitlines()[-1], r.stderr
    assert fifo.is_fifo() and not list(tmp_path.glob(".edgeseg-mender-*"))
