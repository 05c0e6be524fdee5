"""Deploy to one device over SSH: provision, upload what it lacks, install, roll back, status.

The host side of :mod:`edgeseg_runtime.install`. ``deploy_device``:

1. opens the archive on the host (tar safety, every sha256; refuses unsigned
   or a malformed signature); a fleet deploy (:func:`edgeseg.deploy.deploy`)
   opens it once, in the main thread, and hands the opened :class:`Archive`
   to every device;
2. connects (host key checked), pushes the installer (``R/agent``) when its
   code differs, reads the device's state (:class:`~edgeseg_runtime.contract.DeviceState`);
3. refuses before sending a byte when the root is read-only, or the archive's
   target, architecture or signing key does not fit the device, or its
   Ed25519 signature does not verify with the key the *device* trusts (its
   ``trusted_keys/<key_id>.pem``, or the inventory's copy of that key), or its
   disk lacks the space;
4. uploads only the files whose sha256 the device does not hold, each into
   this session's own ``incoming/<sha256>-<size>.<session>.part``, taking a
   partial over (rename) to resume it (content-addressed delta: a model update
   does not resend the runtime or wheels; two hosts never write one file);
5. asks the device to install (lock, signature, checks, slot, dependencies,
   health check, atomic switch) and streams its progress lines.

Every failure is one line in :attr:`DeviceResult.error` and leaves the device
on its installed version. A :class:`~edgeseg.deploy.ssh.Cancel` token stops
the upload at the next chunk and closes the link (Ctrl-C, SIGTERM, SIGHUP; also
a link still connecting or waiting for the SSH banner); an install the device
had started runs to its end there. Every command here takes one (``cancel=``).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import edgeseg_runtime
from edgeseg_runtime.archive import MANIFEST_NAME, Archive, sha256_file
from edgeseg_runtime.contract import Manifest
from edgeseg_runtime.contract import DeviceState, InstallResult, RecoverResult, RollbackResult
from edgeseg_runtime.install import part_name
from edgeseg_runtime.signing import SIGNATURE_NAME, parse_signature

from ..errors import DeployError, EdgesegError
from ..signing import public_key_id, signature_key_id
from .inventory import Device, Inventory
from .ssh import AgentError, Cancel, Cancelled, DeviceLink

__all__ = ["DeviceResult", "deploy_device", "rollback_device", "device_status", "recover_device", "provision_device",
           "push_agent", "open_signed"]

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
        status: ``installed`` | ``unchanged`` | ``staged`` | ``rolled back`` | ``ok`` | ``clean`` |
            ``finished`` | ``discarded`` | ``repaired`` (recover) | ``problem`` (status: the
            device needs attention, ``error`` says what) | ``failed`` | ``skipped``.
        before, after: release versions before and after (None = nothing installed).
        seconds: wall time of the command.
        bytes_sent: payload bytes uploaded (files and resumed parts; not SSH framing).
        bytes_total: payload bytes of a full transfer of the archive.
        error: the one-line reason when ``status`` is ``failed`` or ``problem``.
        details: the device's answer as JSON (a :mod:`edgeseg_runtime.contract` record).
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
        return self.status not in ("failed", "skipped", "problem")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _answer(cls: Any, doc: dict[str, Any], device: Device) -> Any:
    """The agent's JSON answer as its typed record (a mismatch is one DeployError line)."""
    try:
        return cls.from_dict(doc)
    except ValueError as exc:
        raise DeployError(f"{device.name}: the device's installer answered in an unexpected form ({exc})") from None


def read_state(link: DeviceLink) -> DeviceState:
    """``agent state`` as a :class:`DeviceState`."""
    return _answer(DeviceState, link.agent("state"), link.device)  # type: ignore[no-any-return]


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


def _prepare_root(link: DeviceLink) -> None:
    """``mkdir -p R/agents R/incoming``; a read-only or unwritable root is one clear line."""
    d = link.device
    r = link.run(["mkdir", "-p", d.root, f"{d.root}/agents", f"{d.root}/incoming"])
    if r.exited != 0:
        text = " ".join((r.stderr or "").split())
        if "Read-only file system" in text:
            raise DeployError(_read_only(d))
        raise DeployError(f"{d.name}: cannot create the install root {d.root} ({text[:160] or f'exit {r.exited}'})")


def _read_only(device: Device) -> str:
    return (f"{device.root} on {device.name} is read-only (its file system is mounted read-only); "
            "remount it read-write and try again")


def push_agent(link: DeviceLink, report: Report) -> bool:
    """Install this host's ``edgeseg_runtime`` as the device's installer (``R/agent``) when it differs.

    Safe when several hosts push at once: each uploads into its own
    ``R/agents/.new-<random>``, renames it to ``R/agents/<digest>`` (content
    named, so concurrent pushes of one version agree), and points the
    symbolic link ``R/agent`` at it with ``rename(2)``. A folder ``R/agent``
    left by an older edgeseg is moved aside first.

    Returns:
        True when it was (re)installed.
    """
    root = link.device.root
    files = _agent_files()
    digest = _agent_digest(files)
    if (link.read_text(f"{root}/agent/.digest") or "").strip() == digest:
        return False
    _prepare_root(link)
    token = secrets.token_hex(6)
    staging = f"{root}/agents/.new-{token}"
    link.mkdirs(*sorted({f"{staging}/{Path(rel).parent.as_posix()}" for rel in files}))
    for rel, path in files.items():
        link.put_bytes(path.read_bytes(), f"{staging}/{rel}")
    link.put_bytes(f"{digest}\n".encode(), f"{staging}/.digest")
    script = (
        'cd "$1" || exit 1\n'
        'if [ -d "agents/$2" ]; then rm -rf "agents/.new-$3"; else mv "agents/.new-$3" "agents/$2" || exit 1; fi\n'
        'rm -f "agents/.link-$3"; ln -s "agents/$2" "agents/.link-$3" || exit 1\n'
        'if [ -d agent ] && [ ! -L agent ]; then mv agent "agents/.old-$3" 2>/dev/null; fi\n'
        'exit 0\n'
    )
    r = link.run(["sh", "-c", script, "sh", root, digest, token])
    # rename(2) replaces the link itself (mv would move into the folder it points to)
    if r.exited != 0 or not link.rename(f"{root}/agents/.link-{token}", f"{root}/agent"):
        raise DeployError(f"{link.device.name}: could not install the installer under {root}/agent "
                          f"({' '.join((r.stderr or '').split())[:160] or 'rename failed'})")
    tidy = 'find "$1/agents" -mindepth 1 -maxdepth 1 ! -name "$2" -mmin +60 -exec rm -rf {} + 2>/dev/null; exit 0'
    link.run(["sh", "-c", tidy, "sh", root, digest])  # other versions' installers, unused for an hour
    report(f"installer updated on {link.device.name} (edgeseg_runtime {edgeseg_runtime.__version__})")
    return True


def provision_device(device: Device, inventory: Inventory, report: Report | None = None, *,
                     cancel: Cancel | None = None, mender: bool = False) -> DeviceResult:
    """Prepare a device: install root, installer, the inventory's ``trusted_keys``, and ``R/bin/edgeseg``.

    With ``mender``, also the Mender update module ``edgeseg`` in the device's
    ``mender_modules`` folder (:mod:`edgeseg_runtime.mender`), which runs this
    installer. ``cancel`` closes the link when fired (Ctrl-C). Raises nothing:
    failures are in the result (``status = failed``).
    """
    report = report or (lambda _line: None)
    t0 = time.perf_counter()
    if not device.trusted_keys:
        return DeviceResult(device.name, "failed", error=f"{device.name}: no trusted_keys in the inventory to provision")
    try:
        with DeviceLink(device, inventory.known_hosts, cancel=cancel) as link:
            _prepare_root(link)
            link.mkdirs(f"{device.root}/trusted_keys")
            push_agent(link, report)
            for key in device.trusted_keys:
                key_id = public_key_id(key)
                link.put_bytes(Path(key).expanduser().read_bytes(), f"{device.root}/trusted_keys/{key_id}.pem")
                report(f"{device.name}: trusts signing key {key_id}")
            try:  # writes R/bin/edgeseg (the boot-time 'recover' and the runtime launcher)
                link.agent("recover", on_line=lambda text: report(f"{device.name}: {text}"))
            except AgentError as exc:
                if exc.kind != "DeviceBusy":  # an install is running: it writes the launcher itself
                    raise
            if mender:
                done = link.agent("mender-module", "--dir", device.mender_modules)
                report(f"{device.name}: Mender update module {done.get('path')} (runs {done.get('python')})")
            state = read_state(link)
    except (EdgesegError, OSError) as exc:
        return DeviceResult(device.name, "failed", seconds=time.perf_counter() - t0, error=str(exc))
    if state.trusted_keys is None:
        return DeviceResult(device.name, "failed", seconds=time.perf_counter() - t0, error=_no_crypto(device))
    return DeviceResult(device.name, "ok", state.version, state.version, time.perf_counter() - t0, details=state.to_dict())


def _no_crypto(device: Device) -> str:
    """The device's agent reported no ``cryptography`` (``trusted_keys`` is None in its state)."""
    return (
        f"{device.name}: {device.python} lacks the 'cryptography' package, so it cannot check signatures: "
        "pip install cryptography (or apt install python3-cryptography) on the device"
    )


@dataclass(frozen=True)
class _Blob:
    """One file to place on the device: its local copy, size, and the partial upload to take over (if any)."""

    sha256: str
    path: Path
    size: int
    resume: str | None = None
    offset: int = 0


def _payload(archive: Archive) -> tuple[dict[str, tuple[Path, int]], str]:
    """``{sha256: (local path, size)}`` of every file to place on the device, and the manifest's sha256."""
    blobs: dict[str, tuple[Path, int]] = {}
    for rel, entry in archive.manifest.files.items():
        blobs.setdefault(entry.sha256, (archive.path(rel), entry.size))
    msha = hashlib.sha256(archive.manifest_bytes).hexdigest()
    blobs[msha] = (archive.path(MANIFEST_NAME), len(archive.manifest_bytes))
    return blobs, msha


def _plan(blobs: dict[str, tuple[Path, int]], state: DeviceState) -> list[_Blob]:
    """The files the device lacks, each with the partial upload to resume (the longest sound one)."""
    have = set(state.store)
    plan = []
    for sha, (path, size) in sorted(blobs.items()):
        if sha in have:
            continue
        parts = [p for p in state.parts if p.sha256 == sha and p.size == size]
        if any(p.complete for p in parts):  # all there, checked by the device: an install takes it
            continue
        # a part that reached its size without its sha256 is corrupt: the device deletes it, we start again
        sound = [p for p in parts if not p.corrupt and p.received < size]
        best = max(sound, key=lambda p: p.received) if sound else None
        plan.append(_Blob(sha, path, size, best.name if best else None, best.received if best else 0))
    return plan


def _fits(manifest: Manifest, device: Device, state: DeviceState, sig: bytes) -> str:
    """Refuse early, before any upload, when the archive cannot install on this device; returns the signing key id."""
    name = device.name
    if state.read_only:
        raise DeployError(_read_only(device))
    target = manifest.target.name
    if target != device.target:
        raise DeployError(f"{name} runs target {device.target!r}; this archive is for {target!r}")
    want, have = manifest.target.arch, state.arch
    if _ARCH_ALIASES.get(want, want) != _ARCH_ALIASES.get(have, have):
        raise DeployError(f"{name} is {have}; this archive is built for {want}")
    if state.trusted_keys is None:
        raise DeployError(_no_crypto(device))
    key_id = signature_key_id(sig)
    if not state.trusted_keys:
        raise DeployError(f"{name} trusts no signing key yet; run 'edgeseg devices provision {name}'")
    if key_id is None or key_id not in state.trusted_keys:
        raise DeployError(
            f"{name} does not trust signing key {key_id} (it trusts {', '.join(state.trusted_keys)}); "
            f"add the key's .pem to trusted_keys and run 'edgeseg devices provision {name}'"
        )
    return key_id


def _device_key(link: DeviceLink, key_id: str) -> Any:
    """The public key ``key_id`` as the device trusts it: the inventory's copy when it has that id, else the device's file."""
    from edgeseg_runtime.signing import load_public_key

    device = link.device
    for path in device.trusted_keys:
        try:
            kid, key = load_public_key(Path(path).expanduser())
        except (EdgesegError, OSError):
            continue
        if kid == key_id:
            return key
    remote = f"{device.root}/trusted_keys/{key_id}.pem"
    data = link.read_bytes(remote, limit=1 << 16)
    if data is None:
        raise DeployError(f"{device.name} has no {remote} for signing key {key_id}; run 'edgeseg devices provision {device.name}'")
    kid, key = _pem_public_key(data, f"{device.name}:{remote}")  # parsed in memory: no temporary file
    if kid != key_id:
        raise DeployError(f"{device.name}: {remote} holds key {kid}, not {key_id}; run 'edgeseg devices provision {device.name}'")
    return key


def _pem_public_key(data: bytes, where: str) -> tuple[str, Any]:
    """``(key_id, Ed25519PublicKey)`` of PEM bytes (what :func:`edgeseg_runtime.signing.load_public_key` reads from a file)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from edgeseg_runtime.signing import key_id_of

    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise DeployError(f"{where}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise DeployError(f"{where}: not an Ed25519 public key")
    return key_id_of(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)), key


def _check_signature(link: DeviceLink, archive: Archive, key_id: str) -> None:
    """Ed25519 over the exact ``manifest.json`` bytes, with the key the device trusts (before any upload)."""
    from edgeseg_runtime.signing import verify_manifest

    try:
        verify_manifest(archive.manifest_bytes, archive.signature, {key_id: _device_key(link, key_id)})
    except EdgesegError as exc:
        raise DeployError(f"{link.device.name}: refused before sending anything: {exc}") from None


def _needed_bytes(manifest: Manifest, plan: list[_Blob]) -> int:
    """Bytes the device must have free: what is left to upload, installed wheels, a margin."""
    upload = sum(b.size - b.offset for b in plan)
    wheels = sum(entry.size for rel, entry in manifest.files.items() if rel.startswith("wheels/"))
    return upload + WHEEL_EXPANSION * wheels + SPACE_MARGIN


def deploy_device(
    archive_path: str | Path | Archive,
    device: Device,
    inventory: Inventory,
    *,
    allow_downgrade: bool = False,
    health_timeout: float = 600.0,
    stage_only: bool = False,
    report: Report | None = None,
    on_bytes: Callable[[int], None] | None = None,
    cancel: Cancel | None = None,
) -> DeviceResult:
    """Deploy one archive to one device.

    Args:
        archive_path: ``.tar.gz`` (or unpacked folder) from ``edgeseg build``, signed; or an
            :class:`Archive` already opened (:func:`open_signed`: a fleet deploy opens it once
            for all its devices; it stays open, and is not checked again, here).
        device: inventory entry; its ``target`` must be the archive's.
        inventory: for the known_hosts file.
        allow_downgrade: install a lower release version than the highest installed one.
        health_timeout: seconds the device's health check may take.
        stage_only: upload only (``status = staged``); a later deploy installs
            without sending anything (pre-stage updates, install in a window).
        report: progress lines.
        on_bytes: called with each uploaded chunk's size (progress bars).
        cancel: token that stops the upload and closes the link (Ctrl-C).

    Returns:
        :class:`DeviceResult`; ``status`` is ``failed`` with ``error`` on any
        refusal or failure (the device keeps its installed version).
    """
    report = report or (lambda _line: None)
    t0 = time.perf_counter()
    result = DeviceResult(device.name, "failed")

    def count(n: int) -> None:
        result.bytes_sent += n
        if on_bytes is not None:
            on_bytes(n)

    try:
        with _opened(archive_path) as archive:
            sig = _signature(archive)
            blobs, msha = _payload(archive)
            result.bytes_total = sum(size for _, size in blobs.values())
            with DeviceLink(device, inventory.known_hosts, cancel=cancel) as link:
                _prepare_root(link)
                push_agent(link, report)
                state = read_state(link)
                result.before = state.version
                _check_signature(link, archive, _fits(archive.manifest, device, state, sig))
                session = secrets.token_hex(8)
                for attempt in (1, 2):
                    _send(link, archive.manifest, blobs, (msha, sig), state, session, result.bytes_total, count, report)
                    if cancel is not None:
                        cancel.check(device.name)
                    if stage_only:
                        result.status, result.after = "staged", result.before
                        report(f"{device.name}: staged {archive.manifest.release_version} "
                               f"({result.bytes_sent / 1e6:.2f} MB sent)")
                        break
                    try:
                        done = _install(link, msha, health_timeout, allow_downgrade, report)
                    except AgentError as exc:
                        # a stored file this deploy counted on went meanwhile (another install pruned it):
                        # send what is missing now, once
                        if attempt == 2 or "is not on the device" not in str(exc):
                            raise
                        report(f"{device.name}: {exc}; sending the missing files")
                        state = read_state(link)
                        continue
                    result.status, result.after, result.details = done.status, done.version, done.to_dict()
                    break
    except Cancelled:
        result.error = f"{device.name}: interrupted"
        result.after = result.before
    except (EdgesegError, OSError) as exc:
        result.error = str(exc)
        result.after = result.before
    result.seconds = time.perf_counter() - t0
    return result


@contextmanager
def _opened(archive: str | Path | Archive) -> Iterator[Archive]:
    """``archive`` itself when already open (the caller removes it), else :func:`open_signed`."""
    if isinstance(archive, Archive):
        yield archive
        return
    with open_signed(archive) as opened:
        yield opened


@contextmanager
def open_signed(archive_path: str | Path) -> Iterator[Archive]:
    """Open an archive to deploy: tar safety, every sha256, and a signature that is a well-formed document.

    Its temporary folder goes on every exit path (an exception, Ctrl-C, the
    CLI's SIGTERM/SIGHUP), so open it in the thread that handles those: the
    main thread.

    Raises:
        ArchiveError: corrupt, tampered or unsafe archive.
        DeployError: unsigned (devices install only signed archives).
        SignatureError: ``manifest.sig`` is not an edgeseg signature document.
    """
    with Archive.open(archive_path) as archive:
        _signature(archive)
        yield archive


def _signature(archive: Archive) -> bytes:
    """Step 1: the archive's detached signature (devices install only signed archives), checked for form."""
    sig = archive.signature
    if sig is None:
        raise DeployError(f"{archive.source} is unsigned; devices install only signed archives: "
                          "build with --sign-key (keys from 'edgeseg keys new')")
    parse_signature(sig)  # SignatureError (one line) when malformed; the device's key checks the maths
    return sig


def _send(link: DeviceLink, manifest: Manifest, blobs: dict[str, tuple[Path, int]], signed: tuple[str, bytes],
          state: DeviceState, session: str, total: int, count: Callable[[int], None], report: Report) -> None:
    """Step 2: check the free space, upload what the device lacks (resuming partials), then the signature."""
    device = link.device
    msha, sig = signed
    plan = _plan(blobs, state)
    need = _needed_bytes(manifest, plan)
    if state.free_bytes < need:
        raise DeployError(
            f"{device.name}: disk full: the install needs {need / 1e6:.1f} MB, {device.root} has "
            f"{state.free_bytes / 1e6:.1f} MB free; free space on the device (or lower [deploy] "
            "keep_releases) and retry"
        )
    todo = sum(b.size - b.offset for b in plan)
    report(f"{device.name}: sending {len(plan)} of {len(blobs)} files, {todo / 1e6:.2f} MB "
           f"({(total - todo) / 1e6:.2f} MB already there)")
    _upload(link, plan, session, count)
    try:
        link.put_bytes(sig, f"{device.root}/incoming/{msha}.sig")
    except OSError as exc:
        raise _upload_failure(link, exc, SIGNATURE_NAME) from None


def _install(link: DeviceLink, msha: str, health_timeout: float, allow_downgrade: bool, report: Report) -> InstallResult:
    """Step 3: ``agent install`` (lock, signature, checks, slot, dependencies, health check, switch), streamed."""
    device = link.device
    args = ["install", "--manifest", msha, "--health-timeout", str(health_timeout)]
    if allow_downgrade:
        args.append("--allow-downgrade")
    answer = link.agent(*args, on_line=lambda text: report(f"{device.name}: {text}"), timeout=health_timeout + 120)
    return _answer(InstallResult, answer, device)  # type: ignore[no-any-return]


def _upload(link: DeviceLink, plan: list[_Blob], session: str, count: Callable[[int], None]) -> None:
    """Send each planned file into this session's own part, taking over (renaming) a partial to resume it.

    A partial found at or beyond its full size is corrupt: this session starts
    the file again from byte 0 in its own part (the device deletes the other).
    """
    incoming = f"{link.device.root}/incoming"
    for blob in plan:
        mine = f"{incoming}/{part_name(blob.sha256, blob.size, session)}"
        offset = 0
        if blob.resume is not None and link.rename(f"{incoming}/{blob.resume}", mine):
            offset = link.size(mine) or 0
            if offset >= blob.size:
                offset = 0
        try:
            link.upload(blob.path, mine, offset, count)
        except OSError as exc:
            raise _upload_failure(link, exc, blob.path.name) from None


def _upload_failure(link: DeviceLink, exc: OSError, what: str) -> DeployError:
    """Turn an SFTP failure into a clear error: SFTP says only "Failure", so ask the device what is wrong."""
    try:
        state = read_state(link)
    except EdgesegError:
        state = None
    if state is not None and state.read_only:
        return DeployError(_read_only(link.device))
    if state is not None and state.free_bytes < CHUNK_SLACK:
        return DeployError(
            f"{link.device.name}: disk full during upload ({state.free_bytes / 1e6:.2f} MB free); free space on the "
            "device and deploy again: the upload resumes where it stopped"
        )
    return DeployError(f"{link.device.name}: upload of {what} failed ({exc}); deploy again to resume")


def _simple(device: Device, inventory: Inventory, command: str, report: Report | None,
            cancel: Cancel | None = None) -> DeviceResult:
    t0 = time.perf_counter()
    report = report or (lambda _line: None)
    try:
        with DeviceLink(device, inventory.known_hosts, cancel=cancel) as link:
            push_agent(link, report)
            before = read_state(link)
            if command == "state":
                if before.problems:
                    return DeviceResult(device.name, "problem", before.version, before.version, time.perf_counter() - t0,
                                        error=f"{device.name}: " + "; ".join(before.problems), details=before.to_dict())
                return DeviceResult(device.name, "ok", before.version, before.version, time.perf_counter() - t0,
                                    details=before.to_dict())
            answer = link.agent(command, on_line=lambda text: report(f"{device.name}: {text}"))
            done = _answer(RollbackResult if command == "rollback" else RecoverResult, answer, device)
    except (EdgesegError, OSError) as exc:  # AgentError (a refusal) included
        return DeviceResult(device.name, "failed", seconds=time.perf_counter() - t0, error=str(exc))
    return DeviceResult(device.name, done.status, before.version, done.version, time.perf_counter() - t0,
                        details=done.to_dict())


def rollback_device(device: Device, inventory: Inventory, report: Report | None = None, *,
                    cancel: Cancel | None = None) -> DeviceResult:
    """Make the device's previous release current again (``edgeseg rollback``); ``cancel`` closes the link."""
    return _simple(device, inventory, "rollback", report, cancel)


def recover_device(device: Device, inventory: Inventory, report: Report | None = None, *,
                   cancel: Cancel | None = None) -> DeviceResult:
    """Finish or discard a half-done install, repair a missing ``current`` (what its boot-time ``edgeseg recover`` does)."""
    return _simple(device, inventory, "recover", report, cancel)


def device_status(device: Device, inventory: Inventory, report: Report | None = None, *,
                  cancel: Cancel | None = None) -> DeviceResult:
    """What the device runs: current/previous release, kept releases, free space (``details``).

    ``status`` is ``problem`` (``error`` says what) when the device needs
    attention: no current release, an unreadable journal, an install that
    stopped halfway, a read-only root. ``cancel`` closes the link when fired (Ctrl-C).
    """
    return _simple(device, inventory, "state", report, cancel)
