"""Deploy to one device over SSH: provision, upload what it lacks, install, roll back, status.

The host side of :mod:`edgeseg_runtime.install`. ``deploy_device``:

1. opens the archive on the host (tar safety, every sha256; refuses unsigned);
2. connects (host key checked), pushes the installer (``R/agent``) when its
   code differs, reads the device's state;
3. refuses before sending anything when the archive's target, architecture or
   signing key does not fit the device, or its disk lacks the space;
4. uploads only the files whose sha256 the device does not hold, resuming
   partial uploads (content-addressed delta: a model update does not resend
   the runtime or wheels);
5. asks the device to install (signature, checks, slot, dependencies, health
   check, atomic switch) and streams its progress lines.

Every failure is a :class:`DeployError` (one line) and leaves the device on
its installed version.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import edgeseg_runtime
from edgeseg_runtime.archive import MANIFEST_NAME, Archive, sha256_file
from edgeseg_runtime.signing import SIGNATURE_NAME

from ..errors import DeployError, EdgesegError
from ..signing import public_key_id, signature_key_id
from .inventory import Device, Inventory
from .ssh import DeviceLink

__all__ = ["DeviceResult", "deploy_device", "rollback_device", "device_status", "recover_device", "provision_device"]

Report = Callable[[str], None]
_ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64"}
#: free space kept beyond what an install needs (bytes)
SPACE_MARGIN = 1 << 20
#: installed wheels take about this many times their (compressed) size
WHEEL_EXPANSION = 3
#: after an SFTP "Failure", less free space than this means the disk is full
CHUNK_SLACK = 256 * 1024


@dataclass
class DeviceResult:
    """The outcome of one command on one device (a row of the fleet table).

    Attributes:
        device: inventory name.
        status: ``installed`` | ``unchanged`` | ``staged`` | ``rolled back`` | ``ok`` | ``failed`` | ``skipped``.
        before, after: release versions before and after (None = nothing installed).
        seconds: wall time of the command.
        bytes_sent: payload bytes uploaded (files and resumed parts; not SSH framing).
        bytes_total: payload bytes of a full transfer of the archive.
        error: the one-line reason when ``status`` is ``failed``.
        details: the device's result (health check figures, state).
    """

    device: str
    status: str
    before: str | None = None
    after: str | None = None
    seconds: float = 0.0
    bytes_sent: int = 0
    bytes_total: int = 0
    error: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status not in ("failed", "skipped")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _agent_files() -> dict[str, Path]:
    src = Path(edgeseg_runtime.__file__).resolve().parent
    return {
        p.relative_to(src.parent).as_posix(): p
        for p in sorted(src.rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def _agent_digest(files: dict[str, Path]) -> str:
    h = hashlib.sha256()
    for rel, path in files.items():
        h.update(f"{rel} {sha256_file(path)}\n".encode())
    return h.hexdigest()


def push_agent(link: DeviceLink, report: Report) -> bool:
    """Install this host's ``edgeseg_runtime`` as the device's installer (``R/agent``) when it differs.

    Returns:
        True when it was (re)installed.
    """
    root = link.device.root
    files = _agent_files()
    digest = _agent_digest(files)
    if (link.read_text(f"{root}/agent/.digest") or "").strip() == digest:
        return False
    staging = f"{root}/.agent-new"
    link.run(["rm", "-rf", staging])
    link.mkdirs(*sorted({f"{staging}/{Path(rel).parent.as_posix()}" for rel in files}))
    for rel, path in files.items():
        link.put_bytes(path.read_bytes(), f"{staging}/{rel}")
    link.put_bytes(f"{digest}\n".encode(), f"{staging}/.digest")
    link.run(["sh", "-c", 'rm -rf "$1/.agent-old"; if [ -d "$1/agent" ]; then mv "$1/agent" "$1/.agent-old"; fi; '
              'mv "$1/.agent-new" "$1/agent" && rm -rf "$1/.agent-old"', "sh", root])
    report(f"installer updated on {link.device.name} (edgeseg_runtime {edgeseg_runtime.__version__})")
    return True


def provision_device(device: Device, inventory: Inventory, report: Report | None = None) -> DeviceResult:
    """Prepare a device: install root, installer, and the inventory's ``trusted_keys``.

    Raises nothing: failures are in the result (``status = failed``).
    """
    report = report or (lambda _line: None)
    t0 = time.perf_counter()
    if not device.trusted_keys:
        return DeviceResult(device.name, "failed", error=f"{device.name}: no trusted_keys in the inventory to provision")
    try:
        with DeviceLink(device, inventory.known_hosts) as link:
            link.mkdirs(f"{device.root}/trusted_keys")
            push_agent(link, report)
            for key in device.trusted_keys:
                key_id = public_key_id(key)
                link.put_bytes(Path(key).expanduser().read_bytes(), f"{device.root}/trusted_keys/{key_id}.pem")
                report(f"{device.name}: trusts signing key {key_id}")
            state = link.agent("state")
    except (EdgesegError, OSError) as exc:
        return DeviceResult(device.name, "failed", seconds=time.perf_counter() - t0, error=str(exc))
    if state["trusted_keys"] is None:
        return DeviceResult(device.name, "failed", seconds=time.perf_counter() - t0, error=_no_crypto(device))
    cur = state["current"]["version"] if state["current"] else None
    return DeviceResult(device.name, "ok", cur, cur, time.perf_counter() - t0, details=state)


def _no_crypto(device: Device) -> str:
    """The device's agent reported no ``cryptography`` (``trusted_keys`` is None in its state)."""
    return (
        f"{device.name}: {device.python} lacks the 'cryptography' package, so it cannot check signatures: "
        "pip install cryptography (or apt install python3-cryptography) on the device"
    )


def _payload(archive: Archive) -> tuple[dict[str, tuple[Path, int]], str]:
    """``{sha256: (local path, size)}`` of every file to place on the device, and the manifest's sha256."""
    blobs: dict[str, tuple[Path, int]] = {}
    for rel, meta in archive.manifest["files"].items():
        blobs.setdefault(meta["sha256"], (archive.path(rel), int(meta["size"])))
    mpath = archive.path(MANIFEST_NAME)
    msha = sha256_file(mpath)
    blobs[msha] = (mpath, mpath.stat().st_size)
    return blobs, msha


def _fits(manifest: dict[str, Any], device: Device, state: dict[str, Any], sig: bytes) -> None:
    """Refuse early, before any upload, when the archive cannot install on this device."""
    name = device.name
    target = manifest["target"]["name"]
    if target != device.target:
        raise DeployError(f"{name} runs target {device.target!r}; this archive is for {target!r}")
    want = manifest["target"]["platform"]["arch"]
    have = state["arch"]
    if _ARCH_ALIASES.get(want, want) != _ARCH_ALIASES.get(have, have):
        raise DeployError(f"{name} is {have}; this archive is built for {want}")
    if state["trusted_keys"] is None:
        raise DeployError(_no_crypto(device))
    key_id = signature_key_id(sig)
    if not state["trusted_keys"]:
        raise DeployError(f"{name} trusts no signing key yet; run 'edgeseg devices provision {name}'")
    if key_id not in state["trusted_keys"]:
        raise DeployError(
            f"{name} does not trust signing key {key_id} (it trusts {', '.join(state['trusted_keys'])}); "
            f"add the key's .pem to trusted_keys and run 'edgeseg devices provision {name}'"
        )


def _needed_bytes(manifest: dict[str, Any], missing: dict[str, int], sizes: dict[str, int]) -> int:
    """Bytes the device must have free: what is left to upload, installed wheels, a margin."""
    upload = sum(sizes[sha] - offset for sha, offset in missing.items())
    wheels = sum(m["size"] for rel, m in manifest["files"].items() if rel.startswith("wheels/"))
    return upload + WHEEL_EXPANSION * wheels + SPACE_MARGIN


def deploy_device(
    archive_path: str | Path,
    device: Device,
    inventory: Inventory,
    *,
    allow_downgrade: bool = False,
    health_timeout: float = 600.0,
    stage_only: bool = False,
    report: Report | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> DeviceResult:
    """Deploy one archive to one device.

    Args:
        archive_path: ``.tar.gz`` (or unpacked folder) from ``edgeseg build``, signed.
        device: inventory entry; its ``target`` must be the archive's.
        inventory: for the known_hosts file.
        allow_downgrade: install a lower release version than the installed one.
        health_timeout: seconds the device's health check may take.
        stage_only: upload only (``status = staged``); a later deploy installs
            without sending anything (pre-stage updates, install in a window).
        report: progress lines.
        on_bytes: called with each uploaded chunk's size (progress bars).

    Returns:
        :class:`DeviceResult`; ``status`` is ``failed`` with ``error`` on any
        refusal or failure (the device keeps its installed version).
    """
    report = report or (lambda _line: None)
    t0 = time.perf_counter()
    result = DeviceResult(device.name, "failed")
    try:
        with Archive.open(archive_path) as archive:
            sig_path = archive.path(SIGNATURE_NAME)
            if not sig_path.is_file():
                raise DeployError(f"{archive_path} is unsigned; devices install only signed archives: "
                                  "build with --sign-key (keys from 'edgeseg keys new')")
            sig = sig_path.read_bytes()
            blobs, msha = _payload(archive)
            result.bytes_total = sum(size for _, size in blobs.values())
            with DeviceLink(device, inventory.known_hosts) as link:
                link.mkdirs(device.root)
                push_agent(link, report)
                state = link.agent("state")
                result.before = state["current"]["version"] if state["current"] else None
                _fits(archive.manifest, device, state, sig)
                have = set(state["store"])
                partial = state["partials"]
                missing = {sha: min(partial.get(sha, 0), size) for sha, (_, size) in blobs.items() if sha not in have}
                sizes = {sha: size for sha, (_, size) in blobs.items()}
                need = _needed_bytes(archive.manifest, missing, sizes)
                if state["free_bytes"] < need:
                    raise DeployError(
                        f"{device.name}: disk full: the install needs {need / 1e6:.1f} MB, {device.root} has "
                        f"{state['free_bytes'] / 1e6:.1f} MB free; free space on the device (or lower [deploy] keep_releases) and retry"
                    )
                todo = sum(sizes[s] - o for s, o in missing.items())
                report(f"{device.name}: sending {len(missing)} of {len(blobs)} files, {todo / 1e6:.2f} MB "
                       f"({(result.bytes_total - todo) / 1e6:.2f} MB already there)")

                def count(n: int) -> None:
                    result.bytes_sent += n
                    if on_bytes is not None:
                        on_bytes(n)

                _upload(link, blobs, missing, count)
                try:
                    link.put_bytes(sig, f"{device.root}/incoming/{msha}.sig")
                except OSError as exc:
                    raise _upload_failure(link, exc, SIGNATURE_NAME) from None
                if stage_only:
                    result.status, result.after = "staged", result.before
                    report(f"{device.name}: staged {archive.manifest['release']['version']} ({result.bytes_sent / 1e6:.2f} MB sent)")
                    result.seconds = time.perf_counter() - t0
                    return result
                args = ["install", "--manifest", msha, "--health-timeout", str(health_timeout)]
                if allow_downgrade:
                    args.append("--allow-downgrade")
                done = link.agent(*args, on_line=lambda text: report(f"{device.name}: {text}"),
                                  timeout=health_timeout + 120)
                result.status = done["status"]
                result.after = done["version"]
                result.details = done
    except (EdgesegError, OSError) as exc:
        result.error = str(exc)
        result.after = result.before
    result.seconds = time.perf_counter() - t0
    return result


def _upload(link: DeviceLink, blobs: dict[str, tuple[Path, int]], missing: dict[str, int], count: Callable[[int], None]) -> None:
    """Send the missing files to ``incoming/<sha256>.part``, resuming at ``missing[sha]``; ``count`` gets chunk sizes."""
    incoming = f"{link.device.root}/incoming"
    for sha, offset in sorted(missing.items()):
        path, _ = blobs[sha]
        try:
            link.upload(path, f"{incoming}/{sha}.part", offset, count)
        except OSError as exc:
            raise _upload_failure(link, exc, path.name) from None


def _upload_failure(link: DeviceLink, exc: OSError, what: str) -> DeployError:
    """Turn an SFTP failure into a clear error: SFTP reports a full disk only as "Failure", so ask the device."""
    try:
        free = link.agent("state")["free_bytes"]
    except EdgesegError:
        free = None
    if free is not None and free < CHUNK_SLACK:
        return DeployError(
            f"{link.device.name}: disk full during upload ({free / 1e6:.2f} MB free); free space on the device and "
            "deploy again: the upload resumes where it stopped"
        )
    return DeployError(f"{link.device.name}: upload of {what} failed ({exc}); deploy again to resume")


def _simple(device: Device, inventory: Inventory, command: str, report: Report | None) -> DeviceResult:
    t0 = time.perf_counter()
    report = report or (lambda _line: None)
    try:
        with DeviceLink(device, inventory.known_hosts) as link:
            push_agent(link, report)
            before = link.agent("state")
            prev = before["current"]["version"] if before["current"] else None
            if command == "state":
                return DeviceResult(device.name, "ok", prev, prev, time.perf_counter() - t0, details=before)
            done = link.agent(command, on_line=lambda text: report(f"{device.name}: {text}"))
    except (EdgesegError, OSError) as exc:  # AgentError (a refusal) included
        return DeviceResult(device.name, "failed", seconds=time.perf_counter() - t0, error=str(exc))
    status = {"rollback": "rolled back", "recover": done.get("status", "ok")}.get(command, "ok")
    return DeviceResult(device.name, status, prev, done.get("version"), time.perf_counter() - t0, details=done)


def rollback_device(device: Device, inventory: Inventory, report: Report | None = None) -> DeviceResult:
    """Make the device's previous release current again (``edgeseg rollback``)."""
    return _simple(device, inventory, "rollback", report)


def recover_device(device: Device, inventory: Inventory, report: Report | None = None) -> DeviceResult:
    """Finish or discard a half-done install on the device (what its boot-time ``edgeseg recover`` does)."""
    return _simple(device, inventory, "recover", report)


def device_status(device: Device, inventory: Inventory, report: Report | None = None) -> DeviceResult:
    """What the device runs: current/previous release, kept releases, free space (``details``)."""
    return _simple(device, inventory, "state", report)
