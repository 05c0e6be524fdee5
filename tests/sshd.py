"""Test devices: a real OpenSSH ``sshd`` per device, on this machine (DESIGN.md §8 recipes).

Each device is an ``sshd`` in its own PID and mount namespace (``unshare``):
``/run`` is a private tmpfs (sshd's privilege-separation folder), the host's
``~/.bashrc`` is hidden (it makes every command ~300 ms slower), and killing
the namespace's first process ends every process of the device at once: the
"power loss" of :meth:`SshDevice.power_off`. Its install root is a folder,
or a small tmpfs for full-disk cases. A device is on a loopback port, or, with
``netns=True``, in a network namespace behind a veth pair where nftables can
drop every packet (:meth:`SshDevice.cut_link`): a dead link, not a refused one.

Needs root, ``openssh-server`` and (for ``cut_link``) ``nftables``; the
README's test command installs them.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
_counter = itertools.count(1)


def require_sshd() -> None:
    """Fail (not skip) with the fix when the test host cannot run devices."""
    if not Path(SSHD).exists():
        raise RuntimeError("sshd not found: the deploy tests need openssh-server (apt-get install openssh-server)")
    if os.geteuid() != 0:
        raise RuntimeError("the deploy tests start sshd in namespaces and need root")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ssh_keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, capture_output=True)
    return path


def _run(*argv: str) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")


class SshDevice:
    """One test device. ``root`` is its install root; ``port``/``host`` where its sshd listens."""

    python = sys.executable  # the device's Python, as its inventory names it

    def __init__(self, workdir: Path, client_pub: Path, *, disk_mb: int | None = None, netns: bool = False) -> None:
        self.n = next(_counter)
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.root = self.dir / "root"
        self.root.mkdir(exist_ok=True)
        self.disk_mb = disk_mb
        if disk_mb is not None:
            _run("mount", "-t", "tmpfs", "-o", f"size={disk_mb}m", "tmpfs", str(self.root))
        self.host_key = ssh_keygen(self.dir / "host_key")
        shutil.copyfile(client_pub, self.dir / "authorized_keys")
        self.netns = f"edgeseg-t{os.getpid() % 10000}-{self.n}" if netns else None
        if self.netns:
            self._make_netns()
            self.host = f"10.{200 + self.n // 250}.{self.n % 250}.2"
            self.port = 22
        else:
            self.host = "127.0.0.1"
            self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    # ------------------------------------------------------------- network
    def _make_netns(self) -> None:
        ns, n = self.netns, self.n
        a, b = f"esh{os.getpid() % 1000}x{n}", f"esd{os.getpid() % 1000}x{n}"
        self._veth = a
        net = f"10.{200 + n // 250}.{n % 250}"
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        _run("ip", "link", "set", b, "netns", ns)
        _run("ip", "addr", "add", f"{net}.1/30", "dev", a)
        _run("ip", "link", "set", a, "up")
        _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{net}.2/30", "dev", b)
        _run("ip", "netns", "exec", ns, "ip", "link", "set", b, "up")
        _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def cut_link(self) -> None:
        """Drop every packet reaching the device (nftables in its namespace): a dead link."""
        assert self.netns, "cut_link needs a device made with netns=True"
        _run("ip", "netns", "exec", self.netns, "nft", "add table inet cut")
        _run("ip", "netns", "exec", self.netns, "nft",
             "add chain inet cut input { type filter hook input priority 0 ; policy drop ; }")

    def mend_link(self) -> None:
        """Let packets through again."""
        _run("ip", "netns", "exec", self.netns, "nft", "delete table inet cut")

    # ---------------------------------------------------------------- power
    def _config(self) -> Path:
        cfg = self.dir / "sshd_config"
        listen = self.host if not self.netns else "0.0.0.0"
        cfg.write_text(
            f"Port {self.port}\nListenAddress {listen}\nHostKey {self.host_key}\nPidFile none\n"
            f"AuthorizedKeysFile {self.dir}/authorized_keys\nStrictModes no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
            "UsePAM no\nSubsystem sftp internal-sftp\nLogLevel ERROR\nPrintMotd no\nMaxStartups 100\n"
            "MaxSessions 100\n"
        )
        return cfg

    def start(self) -> None:
        """Boot: start sshd and wait until it accepts connections (~0.1-0.3 s)."""
        hide = " ".join(
            f"mount --bind /dev/null {p};" for p in (Path.home() / ".bashrc", Path.home() / ".profile") if p.exists()
        )
        script = f"mount -t tmpfs tmpfs /run && mkdir -p /run/sshd && {hide} exec {SSHD} -D -e -f {self._config()}"
        self._boot(["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
                    "sh", "-c", script])

    def _boot(self, argv: list[str], timeout: float = 10) -> None:
        """Start ``argv`` (the device's sshd, as the namespace's first process) and wait for its port."""
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self.log = open(self.dir / "sshd.log", "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.dir / 'sshd.log').read_text()[-500:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd on {self.host}:{self.port} did not start")

    def power_off(self) -> None:
        """Kill every process of the device at once (SIGKILL to its PID namespace): a power cut."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None
        if hasattr(self, "log"):
            self.log.close()

    def reboot(self) -> None:
        """Power off (if on) and start again, with the same host key, root and address."""
        self.power_off()
        self.start()

    def close(self) -> None:
        self.power_off()
        if self.disk_mb is not None:
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True)
        if self.netns:
            subprocess.run(["ip", "link", "del", self._veth], capture_output=True)
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)

    # ---------------------------------------------------------------- inventory
    @property
    def device_root(self) -> str:
        """The install root as the device's own processes see it."""
        return str(self.root)

    def known_hosts_line(self) -> str:
        key = (self.dir / "host_key.pub").read_text().split()
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{name} {key[0]} {key[1]}\n"

    def toml(self, name: str, target: str = "cpu", groups: tuple[str, ...] = (), **extra: object) -> str:
        lines = [
            "[[device]]", f'name = "{name}"', f'host = "{self.host}"', f"port = {self.port}", f'target = "{target}"',
            f'root = "{self.device_root}"', f'python = "{self.python}"', f"groups = {list(groups)!r}".replace("'", '"'),
        ]
        lines += [f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in extra.items()]
        return "\n".join(lines) + "\n"
