"""The ``arm`` archive on an emulated aarch64 device (tests/arm64.py): offline install over SSH, verify there.

The device is a Debian 12 arm64 root whose own sshd, shell and Python run
under qemu-user; the archive's aarch64 wheels (numpy, Pillow, ncnn) are
installed with ``pip install --no-index`` by the device's installer during
``edgeseg deploy``, whose health check runs ``edgeseg verify`` there. The
first run builds the root (~4-11 min) and caches it; later runs unpack it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import edgeseg
from arm64 import Arm64Device, can_emulate, start_device
from edgeseg.deploy import deploy_device, load_inventory, provision_device
from edgeseg.deploy.ssh import DeviceLink

pytestmark = [pytest.mark.device, pytest.mark.slow]
pytest.importorskip("pnnx", reason="pnnx is not installed (extra 'ncnn')")
WHY = can_emulate()


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Arm64Device, Path]]:
    if WHY:
        pytest.skip(f"the aarch64 device cannot run here: {WHY}")  # CI sets EDGESEG_REQUIRE_ALL: a failure there
    work = tmp_path_factory.mktemp("arm64")
    dev = start_device(work, "arm64", "pi", "arm", timeout=60.0)
    yield dev, work
    dev.close()


def _run(inventory, *argv: str):  # noqa: ANN001, ANN202
    dev = inventory.get("pi")
    with DeviceLink(dev, inventory.known_hosts) as link:
        return link.run(list(argv))


def test_arm_archive_installs_offline_and_verifies_on_aarch64(device, tmp_path: Path) -> None:  # noqa: ANN001
    dev, work = device
    inventory = load_inventory(work / "devices.toml")
    assert _run(inventory, "uname", "-m").stdout.strip() == "aarch64"
    assert "aarch64" in _run(inventory, "python3", "-c", "import platform; print(platform.machine())").stdout
    # the device has no index to install from: the archive's wheels must be enough
    assert _run(inventory, "python3", "-c", "import numpy").exited != 0

    archive = edgeseg.build(target="arm", out_dir=tmp_path, sign_key=dev.sign_key, report=lambda _l: None).archive
    provisioned = provision_device(inventory.get("pi"), inventory)
    assert provisioned.ok, provisioned.error
    result = deploy_device(archive, inventory.get("pi"), inventory, health_timeout=900)
    assert result.status == "installed", result.error
    print(f"\ninstalled on aarch64 in {result.seconds:.0f} s ({result.bytes_sent / 1e6:.1f} MB sent)")

    root = dev.device_root
    verify = _run(inventory, f"{root}/bin/edgeseg", "verify", f"{root}/current")
    assert verify.exited == 0 and verify.stdout.startswith("PASS") and "(ncnn fp16)" in verify.stdout, verify.stdout + verify.stderr
    info = _run(inventory, f"{root}/bin/edgeseg", "info", f"{root}/current")
    assert "installed here (ncnn" in info.stdout, info.stdout
    site = next(p for p in (dev.root / "sites").iterdir() if not p.name.startswith("."))
    so = next(site.glob("ncnn/*.so"))
    assert so.read_bytes()[18:20] == b"\xb7\x00"  # ELF e_machine 183 = EM_AARCH64: the device's own wheel
