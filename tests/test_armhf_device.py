"""The ``armhf`` archive on an emulated 32-bit ARM device (issue 25): wheels made here, offline install, verify there.

PyPI has no numpy, Pillow or ONNX Runtime for armv7l. The ``armhf`` target's
toolchain (``toolchains/linux-armhf-py311.toml``) compiles ncnn from its PyPI
sdist with Debian's cross compiler (only the model's layers) and repacks
Debian 12's own armhf numpy and Pillow (:mod:`edgeseg.crossbuild`). The device
is a Debian 12 armhf root (``tests/arm64.py``, ``arch="armhf"``) whose own sshd,
shell and Python 3.11.2 run under ``qemu-arm-static``; ``edgeseg deploy``
installs the archive with ``pip install --no-index`` there, and its health check
runs ``edgeseg verify``.

Cold: the cross build (~5 min on 2 cores) and the armhf root (6-15 min) are
made once and cached (``~/.cache/edgeseg-tests``), keyed by their recipes.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edgeseg
from arm64 import Arm64Device, can_emulate, start_device
from edgeseg.deploy import deploy_device, load_inventory, provision_device
from edgeseg.deploy.ssh import DeviceLink
from edgeseg.toolchains import load_toolchain
from edgeseg_runtime import Archive, Segmentor, load_image

pytestmark = [pytest.mark.device, pytest.mark.slow]
pytest.importorskip("pnnx", reason="pnnx is not installed (extra 'ncnn')")
pytest.importorskip("auditwheel", reason="auditwheel is not installed (extra 'cross')")
WHY = can_emulate("armhf") or ("" if shutil.which("arm-linux-gnueabihf-g++") else
                               "arm-linux-gnueabihf-g++ not found (apt-get install crossbuild-essential-armhf)")
EM_ARM = 40  # ELF e_machine of 32-bit ARM
EF_ARM_EABI_VER5, EF_ARM_ABI_FLOAT_HARD = 0x05000000, 0x00000400


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Arm64Device, Path]]:
    if WHY:
        pytest.skip(f"the armhf device cannot run here: {WHY}")  # CI sets EDGESEG_REQUIRE_ALL: a failure there
    work = tmp_path_factory.mktemp("armhf")
    dev = start_device(work, "armhf", "pi2", "armhf", timeout=120.0)
    yield dev, work
    dev.close()


def _run(inventory, *argv: str):  # noqa: ANN001, ANN202
    with DeviceLink(inventory.get("pi2"), inventory.known_hosts) as link:
        return link.run(list(argv))


def _elf_header(so: Path) -> tuple[int, int, int]:
    """(EI_CLASS, e_machine, e_flags) of a little-endian ELF file (System V ABI, ELF header)."""
    head = so.read_bytes()[:52]
    assert head[:4] == b"\x7fELF" and head[5] == 1, so
    return head[4], int.from_bytes(head[18:20], "little"), int.from_bytes(head[36:40], "little")


def test_armhf_archive_installs_offline_and_verifies_on_armv7l(device, tmp_path: Path) -> None:  # noqa: ANN001
    dev, work = device
    inventory = load_inventory(work / "devices.toml")
    assert _run(inventory, "uname", "-m").stdout.strip() == "armv7l"
    assert _run(inventory, "python3", "-c", "import numpy").exited != 0  # nothing to install from but the archive

    result = edgeseg.build(target="armhf", out_dir=tmp_path / "armhf", sign_key=dev.sign_key, report=lambda _l: None)
    archive = result.archive
    with Archive.open(archive) as opened:
        made = {b["what"].split()[0].lower(): b for b in opened.manifest.doc["cross_build"]}
    assert set(made) == {"ncnn", "numpy", "pillow"}, made
    assert made["ncnn"]["how"] == "compiled" and made["ncnn"]["sha256"] == load_toolchain("linux-armhf-py311").source[0].sha256
    assert "Convolution" in made["ncnn"]["layers"] and "LSTM" not in made["ncnn"]["layers"]  # the model's layers only
    assert made["numpy"]["source"].startswith("Debian bookworm armhf python3-numpy")

    assert provision_device(inventory.get("pi2"), inventory).ok
    deployed = deploy_device(archive, inventory.get("pi2"), inventory, health_timeout=1200)
    assert deployed.status == "installed", deployed.error
    print(f"\ninstalled on armv7l in {deployed.seconds:.0f} s ({deployed.bytes_sent / 1e6:.1f} MB sent)")

    root = dev.device_root
    verify = _run(inventory, f"{root}/bin/edgeseg", "verify", f"{root}/current")
    print(verify.stdout.splitlines()[0] if verify.stdout else "")
    assert verify.exited == 0 and verify.stdout.startswith("PASS") and "(ncnn fp16)" in verify.stdout, (
        verify.stdout + verify.stderr)
    shown = _run(inventory, f"{root}/bin/edgeseg", "info", f"{root}/current").stdout
    assert "compiled    ncnn" in shown and made["ncnn"]["sha256"][:16] in shown and "arm-linux-gnueabihf-g++" in shown, shown

    site = next(p for p in (dev.root / "sites").iterdir() if not p.name.startswith("."))
    so = next(site.glob("ncnn/ncnn.cpython-311-arm-linux-gnueabihf.so"))
    ei_class, machine, flags = _elf_header(so)
    assert (ei_class, machine) == (1, EM_ARM)  # ELF32, ARM
    assert flags & 0xFF000000 == EF_ARM_EABI_VER5 and flags & EF_ARM_ABI_FLOAT_HARD, hex(flags)
    assert (site / "numpy" / "__init__.py").is_file() and any(site.glob("numpy.libs/libblas*"))

    # the device's labels against the cpu fp32 archive's on the golden photos
    out = "/tmp/labels"
    golden = sorted(p.name for p in (dev.rootfs / "opt" / "edgeseg" / "current" / "golden").glob("*.png")
                    if p.name.count(".") == 1)
    ran = _run(inventory, f"{root}/bin/edgeseg", "run", f"{root}/current",
               *(f"{root}/current/golden/{g}" for g in golden), "--out", out)
    assert ran.exited == 0, ran.stdout + ran.stderr
    cpu = edgeseg.build(target="cpu", out_dir=tmp_path / "cpu", report=lambda _l: None).archive
    with Archive.open(cpu) as opened, Segmentor(opened) as seg:
        for name in golden:
            photo = dev.rootfs / "opt" / "edgeseg" / "current" / "golden" / name
            host = seg.segment(load_image(photo)).labels
            there = np.asarray(Image.open(dev.rootfs / out.lstrip("/") / name))
            agreement = float((host == there).mean())
            print(f"{name}: label agreement armv7l ncnn fp16 vs x86_64 ONNX Runtime fp32 {agreement:.4%}")
            assert agreement >= 0.995, name
