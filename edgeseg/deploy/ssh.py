"""SSH to one device (fabric / paramiko): host-key checking, dead-link timeouts, resumable uploads.

* **Host keys** are checked against the inventory's ``known_hosts`` file. An
  unknown host is refused (never paramiko's ``AutoAddPolicy``, which fabric
  sets by default); :func:`fetch_host_key` + :func:`trust_host` add one
  explicitly (``edgeseg devices trust``). A changed key is refused as a
  possible man-in-the-middle.
* **Dead links**: paramiko waits forever on a link that drops every packet.
  The socket edgeseg opens carries ``TCP_USER_TIMEOUT`` (Linux, RFC 5482:
  unacknowledged data older than the timeout kills the connection) and TCP
  keepalive; the SSH transport sends keepalives; the SFTP channel has a
  timeout. Whichever fires first ends the wait with :class:`DeployError`.
* **Uploads** write ``incoming/<sha256>-<size>.<session>.part``, one file per
  upload session, at explicit offsets (never ``O_APPEND``): a dropped link
  loses nothing already written, a later session takes a partial over by
  renaming it to its own name and resumes at its size, and two hosts sending
  the same file never interleave. The device checks the sha256 before use.
* **Cancelling** (Ctrl-C, SIGTERM, SIGHUP): a :class:`Cancel` token shared by
  the links of a command; :meth:`Cancel.cancel` shuts down every link's socket,
  also one still connecting or waiting for the server's SSH banner (a blocked
  read or write fails at once), and the upload loop checks it before every chunk.
* **Logging**: paramiko's own log records (its transport thread logs a failed
  handshake as an ERROR with two tracebacks, a closed socket as "Socket
  exception") never reach stderr: the ``paramiko`` logger gets a
  ``NullHandler`` and does not propagate, so edgeseg's one line is all a user
  sees. Add a handler to ``logging.getLogger("paramiko")`` to see them.

Sources: paramiko ``SSHClient``/``SFTPClient`` docs, fabric ``Connection``,
``tcp(7)`` for ``TCP_USER_TIMEOUT``/``TCP_KEEPIDLE``.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import logging
import secrets
import shlex
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import DeployError, ToolchainError
from .inventory import Device

__all__ = ["AgentError", "Cancel", "Cancelled", "DeviceLink", "fetch_host_key", "fingerprint", "trust_host"]

Progress = Callable[[int], None]
CHUNK = 64 * 1024


def _paramiko() -> Any:
    try:
        import fabric  # noqa: F401  (deploying needs it; checked here)
        import paramiko
    except ImportError:
        raise ToolchainError("deploying over SSH needs fabric and paramiko: pip install 'edgeseg[deploy]'") from None
    _quiet_paramiko()
    return paramiko


def _quiet_paramiko() -> None:
    """Keep paramiko's log records (``paramiko``, ``paramiko.transport``, ...) off stderr.

    Without a handler of its own, Python's last-resort handler prints
    paramiko's ERROR records ("Exception (client): Error reading SSH protocol
    banner" and two tracebacks, "Socket exception: Bad file descriptor")
    next to edgeseg's one-line error. A ``NullHandler`` and no propagation
    swallow them; a handler added to the ``paramiko`` logger still sees them.
    """
    logger = logging.getLogger("paramiko")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())
    logger.propagate = False


def _link_errors() -> tuple[type[BaseException], ...]:
    import paramiko

    return (OSError, EOFError, socket.timeout, paramiko.SSHException)


def fingerprint(key: Any) -> str:
    """OpenSSH-style ``SHA256:<base64>`` fingerprint of a paramiko public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _host_id(device: Device) -> str:
    """The known_hosts name: ``host`` on port 22, ``[host]:port`` otherwise (OpenSSH's rule)."""
    return device.host if device.port == 22 else f"[{device.host}]:{device.port}"


class AgentError(DeployError):
    """The device's agent refused or failed a command (its ``! {...}`` line)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class Cancelled(DeployError):
    """The command was interrupted on the host (Ctrl-C); the device keeps or finishes what it had started."""


class Cancel:
    """A cancel token for the links of one command: ``cancel()`` stops uploads and closes every open link.

    Thread-safe: the main thread cancels (on Ctrl-C) while worker threads use the links.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._links: set[DeviceLink] = set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self, name: str = "") -> None:
        """Raise :class:`Cancelled` once cancelled."""
        if self._event.is_set():
            raise Cancelled(f"{name + ': ' if name else ''}interrupted")

    def cancel(self) -> None:
        """Cancel: every link registered now or later is closed (its socket shut down, even mid-handshake)."""
        self._event.set()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()

    def _add(self, link: DeviceLink) -> None:
        with self._lock:
            self._links.add(link)
        if self._event.is_set():
            link.close()

    def _drop(self, link: DeviceLink) -> None:
        with self._lock:
            self._links.discard(link)


def _open_socket(device: Device, on_socket: Callable[[socket.socket], None] | None = None) -> socket.socket:
    """A TCP connection to the device with dead-link options; ``on_socket`` sees each socket before it connects.

    ``on_socket`` lets a :class:`DeviceLink` register the socket with its
    cancel token first, so cancelling also ends a connect in progress.
    """
    def unreachable(exc: OSError) -> DeployError:
        return DeployError(
            f"{device.name} ({device.host}:{device.port}): cannot connect ({exc.strerror or exc}); is it on and reachable?"
        )

    try:
        addresses = socket.getaddrinfo(device.host, device.port, 0, socket.SOCK_STREAM)
    except OSError as exc:
        raise unreachable(exc) from None
    sock, error = None, None
    for family, kind, proto, _name, address in addresses:
        candidate = socket.socket(family, kind, proto)
        try:
            if on_socket is not None:
                on_socket(candidate)
            candidate.settimeout(device.connect_timeout)
            candidate.connect(address)
        except OSError as exc:
            candidate.close()
            error = exc
            continue
        except BaseException:
            candidate.close()
            raise
        sock = candidate
        break
    if sock is None:
        raise unreachable(error or OSError("no address")) from None
    ms = int(device.timeout * 1000)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, ms)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(device.timeout / 3)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    return sock


def fetch_host_key(device: Device) -> Any:
    """The device's SSH host key, read without authenticating (paramiko ``Transport``).

    Raises:
        DeployError: unreachable, or no SSH server there.
    """
    paramiko = _paramiko()
    sock = _open_socket(device)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=device.connect_timeout)
        return transport.get_remote_server_key()
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise DeployError(f"{device.name}: no SSH server answered at {device.host}:{device.port} ({exc})") from None
    finally:
        transport.close()


def trust_host(device: Device, known_hosts: str | Path, key: Any) -> None:
    """Add ``key`` as ``device``'s host key to the ``known_hosts`` file (created if missing)."""
    import paramiko

    path = Path(known_hosts).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    hk = paramiko.HostKeys()
    if path.is_file():
        hk.load(str(path))
    hk.add(_host_id(device), key.get_name(), key)
    hk.save(str(path))


class DeviceLink:
    """An SSH connection to one device: ``with DeviceLink(device, known_hosts) as link: ...``.

    Args:
        device: the inventory entry.
        known_hosts: OpenSSH known_hosts file holding the device's host key.
        cancel: closes this link when cancelled (Ctrl-C on the host).
    """

    def __init__(self, device: Device, known_hosts: str | Path, cancel: Cancel | None = None) -> None:
        self.device = device
        self.known_hosts = Path(known_hosts).expanduser()
        self.cancel = cancel
        self._conn: Any = None
        self._sftp: Any = None
        self._sock: socket.socket | None = None
        self._closed = False
        self._close_lock = threading.Lock()

    # -------------------------------------------------------------- connect
    def __enter__(self) -> DeviceLink:
        paramiko = _paramiko()
        d = self.device
        self._closed = False
        if self.cancel is not None:
            self.cancel.check(d.name)
            self.cancel._add(self)  # from now on cancelling shuts the socket down: connect and handshake end at once
        try:
            self._connect(paramiko)
        except BaseException as exc:
            self.close()
            if self.cancel is not None:
                self.cancel._drop(self)
                if self.cancel.cancelled and isinstance(exc, Exception):
                    raise Cancelled(f"{d.name}: interrupted while connecting") from None
            raise
        return self

    def _connect(self, paramiko: Any) -> None:
        from fabric import Config, Connection

        d = self.device
        policy = _RefuseUnknown(d, self.known_hosts)
        sock = _open_socket(d, self._watch)
        if self._cancelled():  # cancelled between registering and connecting
            raise Cancelled(f"{d.name}: interrupted while connecting")
        kwargs: dict[str, Any] = {
            "sock": sock, "look_for_keys": False, "allow_agent": False, "banner_timeout": d.timeout,
            "auth_timeout": d.timeout, "channel_timeout": d.timeout,
            "key_filename": [str(Path(d.key or "~/.ssh/id_ed25519").expanduser())],
        }
        conn = Connection(d.host, user=d.user, port=d.port, connect_kwargs=kwargs, config=Config(ssh_config=paramiko.SSHConfig()))
        client = paramiko.SSHClient()
        if self.known_hosts.is_file():
            client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(policy)
        conn.client = client
        with self._close_lock:
            self._conn = conn  # close() (a cancel) also closes the transport paramiko is starting
        try:
            self._open(paramiko, conn)
        except BaseException:
            for closing in (client.close, sock.close):  # the transport thread ends before the socket closes
                try:
                    closing()
                except Exception:  # noqa: BLE001, S110  (closing a half-open link: nothing left to report)
                    pass
            raise

    def _open(self, paramiko: Any, conn: Any) -> None:
        d = self.device
        try:
            conn.open()
        except paramiko.BadHostKeyException as exc:
            raise DeployError(
                f"{d.name} ({_host_id(d)}): host key CHANGED (now {fingerprint(exc.key)}, known_hosts has "
                f"{fingerprint(exc.expected_key)}); refusing to connect: possible man-in-the-middle. If the device "
                f"was reinstalled, remove its line from {self.known_hosts} and trust it again"
            ) from None
        except _UnknownHost as exc:
            raise DeployError(str(exc)) from None
        except paramiko.AuthenticationException as exc:
            raise DeployError(f"{d.name} ({d.address}): SSH login refused ({exc}); check 'user' and 'key' in the inventory") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise DeployError(f"{d.name} ({d.address}): SSH failed ({exc})") from None
        if self._conn is None or conn.transport is None:  # closed meanwhile (cancelled)
            raise Cancelled(f"{d.name}: interrupted while connecting")
        conn.transport.set_keepalive(max(1, int(d.timeout / 3)))

    def _watch(self, sock: socket.socket) -> None:
        """Remember the socket being connected, so that :meth:`close` can shut it down."""
        with self._close_lock:
            self._sock = sock
            closed = self._closed
        if closed:  # cancelled before the socket existed
            raise Cancelled(f"{self.device.name}: interrupted while connecting")

    def __exit__(self, *exc: object) -> None:
        self.close()
        if self.cancel is not None:
            self.cancel._drop(self)

    def close(self) -> None:
        """Close SFTP and SSH (never raises: the link may already be dead; any thread may call it).

        Then the socket is shut down: that wakes a thread still blocked on it
        (a connect, paramiko waiting for the banner or the key exchange) at once.
        """
        with self._close_lock:
            self._closed = True
            sock, self._sock = self._sock, None
            objs, self._sftp, self._conn = (self._sftp, self._conn), None, None
        for obj in objs:
            try:
                if obj is not None:
                    obj.close()
            except Exception:
                pass
        if sock is not None:
            _shutdown(sock)

    def _cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.cancelled

    def _conn_or_lost(self, doing: str) -> Any:
        conn = self._conn
        if conn is None:
            if self._cancelled():
                raise Cancelled(f"{self.device.name}: interrupted while {doing}")
            raise self.lost(doing, EOFError("connection closed"))
        return conn

    def lost(self, doing: str, exc: BaseException) -> DeployError:
        """The DeployError for a link that died while ``doing`` something (Cancelled when it was closed on purpose)."""
        if self._cancelled():
            return Cancelled(f"{self.device.name}: interrupted while {doing}")
        why = "no answer" if isinstance(exc, (socket.timeout, TimeoutError)) else (str(exc) or type(exc).__name__)
        return DeployError(
            f"{self.device.name}: link lost while {doing} ({why}; timeout {self.device.timeout:g} s); "
            "the device keeps its installed version: run the command again to resume"
        )

    # ------------------------------------------------------------------ run
    def run(self, argv: list[str], on_line: Callable[[str], None] | None = None, timeout: float | None = None) -> Any:
        """Run a command (argv, shell-quoted) on the device; stream stdout lines to ``on_line``.

        Returns:
            fabric's Result (``stdout``, ``stderr``, ``exited``).

        Raises:
            DeployError: the link died (or the command outlived ``timeout``).
        """
        from invoke.exceptions import CommandTimedOut

        sink = _LineSink(on_line)
        conn = self._conn_or_lost(f"running {shlex.join(argv[:3])} ...")
        try:
            result = conn.run(
                shlex.join(argv), hide="stderr", warn=True, out_stream=sink, in_stream=False, timeout=timeout, pty=False
            )
        except CommandTimedOut:
            raise DeployError(f"{self.device.name}: {argv[0]} did not finish within {timeout:g} s") from None
        except _link_errors() as exc:
            raise self.lost(f"running {shlex.join(argv[:3])} ...", exc) from None
        sink.flush()
        if result.exited == -1 or not conn.transport or not conn.transport.is_active():
            raise self.lost(f"running {' '.join(argv[:3])} ...", EOFError("connection closed"))
        return result

    def agent_argv(self, *args: str) -> list[str]:
        """argv that runs ``edgeseg_runtime.agent ARGS`` (the installer pushed to ``R/agent``) on the device."""
        d = self.device
        return ["env", f"PYTHONPATH={d.root}/agent", "PYTHONDONTWRITEBYTECODE=1", d.python, "-m",
                "edgeseg_runtime.agent", "--root", d.root, *args]

    def agent(self, *args: str, on_line: Callable[[str], None] | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Run ``edgeseg_runtime.agent`` on the device and return its result.

        Raises:
            AgentError: the agent refused or failed (its one-line message).
            DeployError: the link died or the agent could not start.
        """
        d = self.device
        argv = self.agent_argv(*args)

        def line(text: str) -> None:
            if text.startswith(". ") and on_line is not None:
                on_line(text[2:])

        result = self.run(argv, on_line=line, timeout=timeout)
        for text in reversed(result.stdout.splitlines()):
            if text.startswith(("= ", "! ")):
                try:
                    doc = json.loads(text[2:])
                except ValueError:
                    doc = None
                if text.startswith("= ") and isinstance(doc, dict):
                    return doc
                if isinstance(doc, dict) and isinstance(doc.get("error"), str):
                    raise AgentError(f"{d.name}: {doc['error']}", str(doc.get("kind", "")))
                raise DeployError(f"{d.name}: the edgeseg agent answered with an unreadable line ({text[:80]!r})")
        tail = " | ".join(result.stderr.strip().splitlines()[-2:]) or f"exit {result.exited}"
        raise DeployError(f"{d.name}: the edgeseg agent did not run with {d.python!r} ({tail})")

    # ----------------------------------------------------------------- sftp
    @property
    def sftp(self) -> Any:
        """The SFTP client, its channel bounded by the device's timeout."""
        sftp = self._sftp
        if sftp is None:
            conn = self._conn_or_lost("opening SFTP")
            try:
                sftp = conn.sftp()
            except _link_errors() as exc:
                raise self.lost("opening SFTP", exc) from None
            sftp.get_channel().settimeout(self.device.timeout)
            self._sftp = sftp
        return sftp

    def mkdirs(self, *paths: str) -> None:
        """``mkdir -p`` on the device."""
        self.run(["mkdir", "-p", *paths])

    @contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        """Turn a dead link into DeployError; an OSError on a live link (a full disk) passes through."""
        try:
            yield
        except (TimeoutError, EOFError) as exc:
            raise self.lost(doing, exc) from None
        except OSError as exc:
            conn = self._conn
            if conn is None or not conn.transport or not conn.transport.is_active():
                raise self.lost(doing, exc) from None
            raise
        except _link_errors() as exc:
            raise self.lost(doing, exc) from None

    def put_bytes(self, data: bytes, remote: str) -> None:
        """Write a small file (written to ``remote.<random>.tmp`` and renamed, so concurrent writers never mix).

        Raises:
            OSError: an SFTP failure such as a full disk.
            DeployError: the link died.
        """
        tmp = f"{remote}.{secrets.token_hex(6)}.tmp"
        with self._guard(f"writing {remote}"):
            try:
                with self.sftp.open(tmp, "wb") as fh:
                    fh.write(data)
                self.sftp.posix_rename(tmp, remote)
            except OSError:
                try:
                    self.sftp.remove(tmp)
                except OSError:
                    pass
                raise

    def read_bytes(self, remote: str, limit: int = 1 << 20) -> bytes | None:
        """Content of a small remote file (at most ``limit`` bytes), None when missing."""
        try:
            with self._guard(f"reading {remote}"), self.sftp.open(remote, "rb") as fh:
                return fh.read(limit)
        except FileNotFoundError:
            return None

    def rename(self, old: str, new: str) -> bool:
        """``rename(2)`` on the device (SFTP posix-rename); False when ``old`` is gone (someone else took it)."""
        try:
            with self._guard(f"renaming {old}"):
                self.sftp.posix_rename(old, new)
        except OSError:
            return False
        return True

    def size(self, remote: str) -> int | None:
        """Size of a remote file, None when missing."""
        try:
            with self._guard(f"reading the size of {remote}"):
                return int(self.sftp.stat(remote).st_size)
        except FileNotFoundError:
            return None

    def read_text(self, remote: str) -> str | None:
        """Content of a small remote file, None when missing."""
        try:
            with self._guard(f"reading {remote}"), self.sftp.open(remote, "rb") as fh:
                return fh.read().decode()
        except FileNotFoundError:
            return None

    def download(self, remote: str, local: Path) -> int:
        """Copy a remote file to ``local``; returns its size in bytes.

        Raises:
            FileNotFoundError: no such remote file.
            DeployError: the link died.
        """
        with self._guard(f"downloading {remote}"):
            self.sftp.get(remote, str(local))
        return local.stat().st_size

    def listdir(self, remote: str) -> list[str]:
        """File names in a remote folder."""
        with self._guard(f"listing {remote}"):
            return sorted(self.sftp.listdir(remote))

    def upload(self, local: Path, remote: str, offset: int, progress: Progress | None = None) -> int:
        """Write ``local[offset:]`` into ``remote`` at the same offsets (resume at ``offset``); returns the bytes sent.

        ``remote`` is created when ``offset`` is 0 and must exist otherwise. Writes
        carry explicit offsets (no ``O_APPEND``), so a second writer of the same
        file writes the same bytes at the same places instead of interleaving.
        The cancel token is checked before every chunk.

        Raises:
            OSError: an SFTP failure such as a full disk (SFTP says only "Failure").
            Cancelled: the command was interrupted.
            DeployError: the link died (what was written stays for the next attempt).
        """
        sent = 0
        name = self.device.name
        with self._guard(f"uploading {local.name} (from byte {offset:,} of {local.stat().st_size:,})"):
            with open(local, "rb") as src, self.sftp.open(remote, "r+b" if offset else "wb") as dst:
                dst.set_pipelined(True)
                src.seek(offset)
                dst.seek(offset)
                while True:
                    if self.cancel is not None:
                        self.cancel.check(name)
                    chunk = src.read(CHUNK)
                    if not chunk:
                        break
                    dst.write(chunk)
                    sent += len(chunk)
                    if progress is not None:
                        progress(len(chunk))
            # pipelined writes may fail without an error reaching us: the size on the device says
            arrived = self.sftp.stat(remote).st_size
            if arrived < offset + sent:
                raise OSError(errno.EIO, f"only {arrived:,} of {offset + sent:,} bytes of {local.name} arrived")
        return sent


def _shutdown(sock: socket.socket) -> None:
    """Shut a socket down for both directions (wakes a blocked connect, recv or send); never raises.

    The descriptor is left open: the thread using it closes it (closing it
    here could hand its number to another file while that thread still uses it).
    """
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _LineSink:
    """File-like ``out_stream`` for fabric: calls back once per complete line."""

    def __init__(self, on_line: Callable[[str], None] | None) -> None:
        self.on_line = on_line
        self._buf = ""

    def write(self, data: str) -> int:
        self._buf += data
        while "\n" in self._buf:
            text, self._buf = self._buf.split("\n", 1)
            if self.on_line is not None:
                self.on_line(text)
        return len(data)

    def flush(self) -> None:
        pass


class _UnknownHost(Exception):
    pass


class _RefuseUnknown:
    """paramiko missing-host-key policy: refuse, naming the fingerprint and the command that trusts it."""

    def __init__(self, device: Device, known_hosts: Path) -> None:
        self.device, self.known_hosts = device, known_hosts

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        raise _UnknownHost(
            f"{self.device.name} ({hostname}): unknown host key {key.get_name()} {fingerprint(key)} (not in "
            f"{self.known_hosts}); refusing to connect. Check the fingerprint on the device, then run "
            f"'edgeseg devices trust {self.device.name}'"
        )
