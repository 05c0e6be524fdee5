"""Emulated ARM devices: debootstrapped Debian 12 arm64 and armhf roots run under qemu-user (DESIGN.md §8).

``arch="armhf"`` gives the 32-bit one (``qemu-arm-static``; ``uname -m`` says
``armv7l``), built from :data:`ARMHF_RECIPE` the same way (6-15 min cold).

The root is built once by :func:`arm64_rootfs` from :data:`RECIPE` with
``debootstrap --arch=arm64`` (every arm64 binary runs through the kernel's
binfmt_misc entry for ``qemu-aarch64-static``, flag ``F``, so nothing is copied
into the root) and cached as ``<cache>/debian-bookworm-arm64-<recipe sha>.tar.zst``.
A changed recipe gives a new file name, so a stale cache is never used. Building
takes 3.5-11 min on 2 cores (most of it is dpkg under emulation); unpacking the
cache ~15 s.

:class:`Arm64Device` is a :class:`tests.sshd.SshDevice` whose ``sshd`` is the
root's own arm64 OpenSSH, started with ``chroot`` inside a private mount and
PID namespace (``/proc``, ``/dev`` bound in, ``/run`` a tmpfs): every command
the host runs over SSH, the Python that installs and verifies an archive
included, is an aarch64 process (``uname -m`` says ``aarch64``).

Needs root, ``qemu-user-static``, ``binfmt-support``, ``debootstrap`` and
``zstd`` (``.ci/run`` installs them). Set ``EDGESEG_ARM64_CACHE`` to keep the
cached root somewhere else than ``~/.cache/edgeseg-tests``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from sshd import SshDevice, _run

#: what the device's root is made of; its sha256 names the cache file
RECIPE = {
    "suite": "bookworm",
    "arch": "arm64",
    "variant": "minbase",
    "mirror": "http://deb.debian.org/debian",
    # python3-pip: the installer runs pip install --no-index from the archive's wheels;
    # python3-cryptography: the installer checks Ed25519 signatures (the device's own package)
    "include": ["python3", "python3-pip", "python3-cryptography", "python3-cffi-backend", "openssh-server", "openssh-sftp-server"],
}
QEMU = "qemu-aarch64-static"
#: the 32-bit ARM device: the same Debian 12 root for armhf
ARMHF_RECIPE = {**RECIPE, "arch": "armhf"}
RECIPES = {"arm64": RECIPE, "armhf": ARMHF_RECIPE}
#: Debian architecture -> (qemu-user binary, its binfmt_misc entry)
EMULATORS = {"arm64": (QEMU, "qemu-aarch64"), "armhf": ("qemu-arm-static", "qemu-arm")}


def recipe_digest(arch: str = "arm64") -> str:
    return hashlib.sha256(json.dumps(RECIPES[arch], sort_keys=True).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("EDGESEG_ARM64_CACHE", Path.home() / ".cache" / "edgeseg-tests"))


def can_emulate(arch: str = "arm64") -> str:
    """Why this host cannot run an ``arch`` root ("" when it can)."""
    qemu, binfmt = EMULATORS[arch]
    missing = [tool for tool in (qemu, "debootstrap", "zstd") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found (apt-get install qemu-user-static binfmt-support debootstrap zstd)"
    if os.geteuid() != 0:
        return f"an {arch} device needs root (debootstrap, chroot, namespaces)"
    entry = Path(f"/proc/sys/fs/binfmt_misc/{binfmt}")
    if not entry.is_file():
        if not Path("/proc/sys/fs/binfmt_misc/register").exists():
            subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"], capture_output=True)
        subprocess.run(["update-binfmts", "--enable", binfmt], capture_output=True)
    if not entry.is_file() or "enabled" not in entry.read_text():
        return f"binfmt_misc has no enabled {binfmt} entry (update-binfmts --enable {binfmt})"
    return ""


def build_rootfs(dest: Path, arch: str = "arm64") -> Path:
    """Build the cache tarball of ``RECIPES[arch]`` at ``dest`` (``.tar.zst``); 3.5-15 min."""
    recipe = RECIPES[arch]
    work = dest.with_suffix(".build")
    shutil.rmtree(work, ignore_errors=True)
    argv = [
        "debootstrap", f"--arch={recipe['arch']}", f"--variant={recipe['variant']}",
        f"--include={','.join(recipe['include'])}", recipe["suite"], str(work), recipe["mirror"],
    ]
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        log = work / "debootstrap" / "debootstrap.log"
        tail = log.read_text()[-800:] if log.is_file() else proc.stderr[-800:]
        raise RuntimeError(f"debootstrap failed: {tail}")
    # host keys made by openssh-server's postinst belong to everyone using the cache: drop them
    for key in (work / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()
    shutil.rmtree(work / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    tmp = dest.with_suffix(".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _run("tar", "-C", str(work), "--numeric-owner", "-I", "zstd -T0 -3", "-cf", str(tmp), ".")
    os.replace(tmp, dest)
    shutil.rmtree(work, ignore_errors=True)
    print(f"{arch} root built in {time.monotonic() - t0:.0f} s: {dest} ({dest.stat().st_size / 1e6:.0f} MB)")
    return dest


def arm64_rootfs(into: Path, arch: str = "arm64", unpack: bool = True) -> Path:
    """Unpack the cached ``arch`` root into ``into`` (building the cache first when it is missing).

    The build holds ``<cache>.lock`` (``flock``): a second caller, e.g. the suite's background
    prewarm (``tests/prewarm.py``), waits for it and then unpacks what it made.
    """
    recipe = RECIPES[arch]
    cached = cache_dir() / f"debian-{recipe['suite']}-{recipe['arch']}-{recipe_digest(arch)}.tar.zst"
    cached.parent.mkdir(parents=True, exist_ok=True)
    with open(cached.with_name(cached.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not cached.is_file():
            build_rootfs(cached, arch)
    if not unpack:
        return into
    into.mkdir(parents=True, exist_ok=True)
    _run("tar", "-C", str(into), "--numeric-owner", "-I", "zstd -T0", "-xf", str(cached))
    return into


class Arm64Device(SshDevice):
    """An :class:`SshDevice` whose sshd, shell and Python are the arm64 root's own (under qemu-user).

    ``root`` (the edgeseg install root) is ``/opt/edgeseg`` inside the device's
    filesystem; :attr:`root` is its path as the host sees it, :attr:`device_root`
    as the device does.
    """

    python = "/usr/bin/python3"
    device_root = "/opt/edgeseg"  # type: ignore[assignment]

    def __init__(self, workdir: Path, client_pub: Path, rootfs: Path) -> None:
        self.rootfs = rootfs
        super().__init__(workdir, client_pub)

    def _config(self) -> Path:
        etc = self.rootfs / "etc" / "edgeseg-test"
        etc.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.host_key, etc / "host_key")
        os.chmod(etc / "host_key", 0o600)
        shutil.copyfile(self.dir / "authorized_keys", etc / "authorized_keys")
        (self.rootfs / "opt" / "edgeseg").mkdir(parents=True, exist_ok=True)
        self.root = self.rootfs / "opt" / "edgeseg"
        cfg = etc / "sshd_config"
        cfg.write_text(
            f"Port {self.port}\nListenAddress {self.host}\nHostKey /etc/edgeseg-test/host_key\nPidFile none\n"
            "AuthorizedKeysFile /etc/edgeseg-test/authorized_keys\nStrictModes no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
            "UsePAM no\nSubsystem sftp internal-sftp\nLogLevel ERROR\nPrintMotd no\nMaxStartups 100\n"
            "MaxSessions 100\n"
        )
        return Path("/etc/edgeseg-test/sshd_config")

    def start(self) -> None:
        """Boot: mount /proc, /dev and /run into the root, chroot, start its arm64 sshd (~2-5 s under qemu)."""
        r = self.rootfs
        script = (
            f"mount -t proc proc {r}/proc && mount --rbind /dev {r}/dev && mount -t tmpfs tmpfs {r}/run && "
            f"mkdir -p {r}/run/sshd && exec chroot {r} /usr/sbin/sshd -D -e -f {self._config()}"
        )
        self._boot(["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
                    "sh", "-c", script], timeout=60)


def start_device(work: Path, arch: str, name: str, target: str, timeout: float) -> Arm64Device:
    """Boot an emulated ``arch`` device in ``work`` with what a deployment test needs next to it.

    Writes ``work/devices.toml`` (device ``name`` for ``target``, the client key, a trusted signing key,
    ``known_hosts``); the signing key's private file is ``device.sign_key``. Close the device when done.
    """
    from edgeseg.signing import new_keypair
    from sshd import ssh_keygen

    client = ssh_keygen(work / "client")
    dev = Arm64Device(work / "dev", Path(f"{client}.pub"), arm64_rootfs(work / "rootfs", arch=arch))
    keys = new_keypair(work / "sign")
    (work / "known_hosts").write_text(dev.known_hosts_line())
    (work / "devices.toml").write_text(
        f'known_hosts = "known_hosts"\n[defaults]\nkey = "{client}"\ntrusted_keys = ["{keys.public}"]\n'
        f"timeout = {timeout}\n" + dev.toml(name, target=target)
    )
    dev.sign_key = keys.private  # type: ignore[attr-defined]
    return dev
