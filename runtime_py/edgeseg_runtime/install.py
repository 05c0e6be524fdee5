"""On-device A/B install of edgeseg archives: signed, atomic, health-checked, reversible, one at a time.

The host (``edgeseg deploy``) uploads the files a device lacks and then asks
this module, running on the device, to install one manifest. Layout under
the install root ``R``::

    agent -> agents/<digest>   this package as the host pushed it (the installer code)
    trusted_keys/*.pem         Ed25519 public keys whose signatures this device accepts
    incoming/<sha256>-<size>.<session>.part
                               uploads in progress, one file per upload session; a new
                               session takes over (renames) a partial and resumes at its size
    incoming/<sha256>.sig      the signature of the manifest stored under that sha256
    store/<sha256>             received files, named by their content (read-only)
    releases/<version>/        installed slots: the archive's files, hard links into store/;
                               one slot per version (``1.0``, ``1.0.0`` are one version)
    releases/.staging-<v>/     a slot being assembled
    sites/<sha256>/            dependencies installed from an archive's wheels/ (shared by
                               every slot with the same wheels)
    engines/<key>.engine       TensorRT engines the health check built here, keyed by
                               TensorRT + GPU + precision + shapes + ONNX (edgeseg_runtime.engine)
    current  -> releases/<v>   the version in use (symbolic link, switched by rename(2))
    previous -> releases/<v>   the version before it (``rollback`` target)
    version_floor              the highest release version ever installed here (anti-rollback)
    journal.json               the install in progress and its phase
    lock                       flock(2)ed by the command that changes the root (see below)
    bin/edgeseg                runs the runtime of ``current`` (``R/bin/edgeseg verify R/current``)

**One at a time.** Every command that changes the root (``install``, ``commit``,
``rollback``, ``recover``, ``prune``, ``engine``) holds an exclusive
``flock(LOCK_EX | LOCK_NB)`` on ``R/lock`` from start to end; a second one
fails at once with ``another install is running on R since T (pid N,
COMMAND)``. The file's content (pid, command, start time) only feeds that
message. *Stale-lock rule*: there is none to apply, since the kernel releases
a flock when the process holding it ends, however it ends (crash,
``kill -9``, power loss), so a lock never outlives its holder and nobody ever
deletes ``R/lock``. ``state`` and ``exec`` take no lock; they read whatever
half-done state they find without failing.

**Uploads need no lock.** Each host upload session writes its own
``incoming/<sha256>-<size>.<session>.part`` (resuming means renaming a partial
to the session's own name first, then writing at explicit offsets), so two
hosts never append to one file, and identical bytes land at identical offsets
whatever happens. An install takes into the store only the parts its own
manifest lists; a part whose size reached ``<size>`` but whose sha256 differs
is deleted (the host sends it again); other parts are deleted only when no
session touched them for a day.

An install is a sequence of idempotent steps; each records its phase in
``journal.json`` before it starts (written to a temporary file, fsynced and
renamed, POSIX ``rename(2)`` being atomic):

1. check: signature of ``manifest.json`` by a trusted key, the manifest's
   contract (:class:`~edgeseg_runtime.contract.Manifest`: every path inside the
   slot), the release version against ``current`` and ``version_floor``
   (anti-rollback; a version equal to an installed one in another spelling or
   with another manifest is refused), then ingest the uploads the manifest lists;
2. assemble ``releases/.staging-<v>`` from the store, re-checking every sha256;
3. dependencies: ``pip install --no-index`` from the archive's ``wheels/`` into
   ``sites/<sha>`` (skipped when the archive has none or the site exists);
4. health check: the slot's own runtime runs ``verify --json`` on the golden set
   and, when the profile sets ``[deploy] latency_budget_ms``, ``bench --json``;
   their answers are read as records (:class:`VerifyOutcome`, :class:`BenchOutcome`);
5. switch: rename the slot to ``releases/<v>``, point ``previous`` at the old
   release, raise ``version_floor``, then point ``current`` at the slot by
   renaming a new symbolic link over the old one;
6. prune slots beyond the profile's ``keep_releases`` and unreferenced store files.

**Two front doors.** The host's ``edgeseg deploy`` runs steps 1-6 in one
``install``. Mender's update module (:mod:`edgeseg_runtime.mender`) splits
them: :meth:`InstallRoot.stage_archive` (``ArtifactInstall``) checks the
archive file's signature, contract and version before unpacking it, then runs
steps 1-4 and leaves the slot in ``releases/.staging-<v>`` with the journal in
phase ``staged``; :meth:`InstallRoot.commit_staged` (``ArtifactCommit``) runs
steps 5-6; :meth:`InstallRoot.discard_staged` (``ArtifactRollback``) deletes
the slot. While a slot is staged, ``install`` is refused; ``recover``
discards it.

Power may fail at any point: ``current`` always names a complete, checked
slot, because nothing but step 5's rename changes it. :meth:`InstallRoot.recover`
(run at boot, and before every install) finishes an install whose switch
already happened and discards any other half-done one (an unreadable
journal included), deletes corrupt uploads, and points a missing or broken
``current`` at ``previous`` or the newest complete slot.

Standard library only (this runs before numpy is installed); Python 3.9+.
"""

# typing's Optional/Tuple/Dict in the health-check records on purpose (Record.from_dict on Python 3.9)
# ruff: noqa: UP006, UP035, UP045
from __future__ import annotations

import errno
import fcntl
import hashlib
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from . import __version__
from .archive import sha256_file
from .contract import MANIFEST_NAME, SIGNATURE_NAME, FileEntry, Manifest
from .contract import parse_version as _contract_version
from .contract import (
    BenchOutcome,
    DeviceState,
    Health,
    InstallResult,
    Journal,
    LockHolder,
    Part,
    PruneResult,
    RecoverResult,
    Release,
    RollbackResult,
    VerifyOutcome,
)
from .errors import ArchiveError, EdgesegError, InstallError
from .signing import load_public_key, verify_manifest

__all__ = ["PART_RE", "STALE_SECONDS", "DeviceBusy", "InstallRoot", "parse_version", "part_name", "wheels_digest"]

Report = Callable[[str], None]
#: uploads and signatures nobody touched for this long are deleted (seconds)
STALE_SECONDS = 24 * 3600
LOCK_NAME = "lock"
FLOOR_NAME = "version_floor"
JOURNAL_NAME = "journal.json"
_SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)
#: ``<sha256>-<size>.<session>.part``: an upload of ``size`` bytes by one host session
PART_RE = re.compile(r"(?P<sha>[0-9a-f]{64})-(?P<size>[0-9]{1,15})\.(?P<session>[0-9A-Za-z_-]{1,64})\.part", re.ASCII)
_SIG_RE = re.compile(r"(?P<sha>[0-9a-f]{64})\.sig", re.ASCII)
_MAX_SMALL = 1 << 16  # journal.json, lock, version_floor, manifest.sig are small


# ------------------------------------------------------------ health-check answers
# What the slot's runtime prints for the health check (``edgeseg verify --json``, ``edgeseg bench --json``),
# read as records. typing's Optional/Tuple/Dict: Record.from_dict resolves the annotations on Python 3.9.


A = TypeVar("A", VerifyOutcome, BenchOutcome)


def parse_version(text: Any) -> tuple[int, ...]:
    """``"1.10.2"`` → ``(1, 10, 2)`` (:func:`edgeseg_runtime.contract.parse_version`, the one rule).

    Raises:
        InstallError: not 1-8 dotted parts of 1-9 ASCII digits.
    """
    try:
        return _contract_version(text)
    except ArchiveError as exc:
        raise InstallError(str(exc)) from None


def _version_key(name: str) -> tuple[int, ...]:
    try:
        return parse_version(name)
    except InstallError:
        return (-1,)


def _is_version(name: Any) -> bool:
    return _version_key(name) != (-1,)


def part_name(sha256: str, size: int, session: str) -> str:
    """Name of an upload in ``incoming/``: ``<sha256>-<size>.<session>.part``."""
    return f"{sha256}-{size}.{session}.part"


def wheels_digest(files: Mapping[str, FileEntry]) -> str | None:
    """Identity of an archive's ``wheels/`` set: sha256 over its sorted ``name sha256`` lines; None without wheels."""
    lines = sorted(f"{rel} {entry.sha256}" for rel, entry in files.items() if rel.startswith("wheels/"))
    if not lines:
        return None
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _symlink_atomic(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` by renaming a fresh symbolic link over it (atomic)."""
    tmp = link.with_name(f".{link.name}.new")
    _remove(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


def _remove(path: Path) -> None:
    """Delete a file, link or folder if it is there."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def _read_small(path: Path) -> bytes:
    """The bytes of a small regular file (OSError when missing, not regular or too big)."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "not a regular file", str(path))
    if st.st_size > _MAX_SMALL:
        raise OSError(errno.EFBIG, f"over {_MAX_SMALL} bytes", str(path))
    return path.read_bytes()


def _holder(data: bytes) -> LockHolder | None:
    try:
        return LockHolder.from_dict(json.loads(data.decode("utf-8")))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


class _Staged:
    """A health-checked slot in ``releases/.staging-<v>``, not yet current."""

    def __init__(self, manifest: Manifest, manifest_sha: str, key_id: str, staging: Path, old: str | None,
                 health: Health | None) -> None:
        self.manifest, self.manifest_sha, self.key_id = manifest, manifest_sha, key_id
        self.staging, self.old, self.health = staging, old, health


class DeviceBusy(InstallError):
    """Another command that changes the install root holds ``R/lock``."""


class InstallRoot:
    """The install root of one device (see the module docstring for the layout).

    Not the host's inventory entry (:class:`edgeseg.deploy.Device`): this is the folder ``R`` on the device.

    Args:
        root: install root folder (created if missing and possible).
        report: callback receiving one progress line per step.
    """

    def __init__(self, root: str | Path, report: Report | None = None) -> None:
        self.root = Path(root).absolute()
        self.report = report or (lambda _line: None)
        self._lock_fd: int | None = None
        for sub in ("store", "incoming", "releases", "sites", "trusted_keys"):
            try:
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            except OSError:  # a read-only root: state still answers, changes say why they cannot
                pass

    # ------------------------------------------------------------------- lock
    @contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """Hold ``R/lock`` (exclusive, non-blocking flock) for a command that changes the root.

        Re-entrant within this object (an install runs ``recover`` and ``prune``).

        Raises:
            DeviceBusy: another process holds it.
            InstallError: the root is read-only or the lock cannot be created.
        """
        if self._lock_fd is not None:
            yield
            return
        path = self.root / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise self._write_error(exc, path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            try:
                holder = _holder(os.pread(fd, _MAX_SMALL, 0))
            except OSError:
                holder = None
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = holder.describe() if holder else "(its holder did not say who it is yet)"
                raise DeviceBusy(f"another install is running on {self.root} {who}") from None
            raise InstallError(f"cannot lock {path}: {exc.strerror or exc}") from None
        try:
            doc = json.dumps({"pid": os.getpid(), "command": command, "since": round(time.time(), 3)}).encode()
            try:  # write over, then cut: a reader never sees an empty file while the lock is held
                os.pwrite(fd, doc, 0)
                os.ftruncate(fd, len(doc))
            except OSError:
                pass  # the content is only for messages
            self._lock_fd = fd
            yield
        finally:
            self._lock_fd = None
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)  # releases the flock

    def lock_holder(self) -> LockHolder | None:
        """Who holds ``R/lock`` now, as its file says (None when nobody, or the holder is gone)."""
        try:
            holder = _holder(_read_small(self.root / LOCK_NAME))
        except OSError:
            return None
        if holder is None or holder.pid <= 0:
            return None
        try:
            os.kill(holder.pid, 0)
        except ProcessLookupError:
            return None
        except OSError:  # alive, another user's
            pass
        return holder

    # ------------------------------------------------------------------ state
    def _release(self, link: str) -> Release | None:
        """The release a link names; ``broken`` when its slot is missing, not a slot, or unreadable."""
        path = self.root / link
        try:
            target = os.readlink(path)
        except FileNotFoundError:
            return None
        except OSError:  # there, but not a symbolic link
            return Release(version=None, slot=str(path), manifest_sha256=None, broken=True)
        parts = Path(target).parts
        name = parts[-1] if parts else ""
        slot = self.root / "releases" / name
        if parts != ("releases", name) or not _is_version(name):
            return Release(version=None, slot=str(self.root / target), manifest_sha256=None, broken=True)
        try:
            mbytes = (slot / MANIFEST_NAME).read_bytes()
            manifest = Manifest.parse(mbytes)
        except (OSError, ArchiveError):
            return Release(version=None, slot=str(slot), manifest_sha256=None, broken=True)
        if manifest.release_version != name:
            return Release(version=None, slot=str(slot), manifest_sha256=None, broken=True)
        return Release(version=name, slot=str(slot), manifest_sha256=hashlib.sha256(mbytes).hexdigest(),
                       target=manifest.target.name)

    def _current_version(self) -> str | None:
        cur = self._release("current")
        return cur.version if cur and not cur.broken else None

    def releases(self) -> list[str]:
        """Installed slot versions, oldest first (by version number)."""
        try:
            entries = list(os.scandir(self.root / "releases"))
        except OSError:
            return []
        names = []
        for entry in entries:
            try:
                if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
                    names.append(entry.name)
            except OSError:
                continue
        return sorted(names, key=_version_key)

    def trusted_keys(self) -> dict[str, Any]:
        """``{key_id: public key}`` of ``trusted_keys/*.pem``."""
        out = {}
        for path in sorted((self.root / "trusted_keys").glob("*.pem")):
            key_id, key = load_public_key(path)
            out[key_id] = key
        return out

    def _floor_file(self) -> tuple[str | None, str | None]:
        """``(version, None)`` from ``R/version_floor``; ``(None, why)`` when unreadable; ``(None, None)`` when absent."""
        try:
            data = _read_small(self.root / FLOOR_NAME)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, f"cannot read it: {exc.strerror or exc}"
        try:
            text = data.decode("ascii").strip()
        except UnicodeDecodeError:
            return None, "it is not a release version"
        return (text, None) if _is_version(text) else (None, "it is not a release version")

    def version_floor(self) -> str | None:
        """The highest release version ever installed: ``R/version_floor``, or a higher slot still here."""
        candidates = [v for v in (self._floor_file()[0], *self.releases()) if v and _is_version(v)]
        return max(candidates, key=parse_version) if candidates else None

    def _raise_floor(self, version: str) -> None:
        """Make ``R/version_floor`` at least ``version`` (written atomically, fsynced)."""
        stored, _ = self._floor_file()
        floor = max([v for v in (stored, self.version_floor(), version) if v], key=parse_version)
        if stored != floor:
            _write_atomic(self.root / FLOOR_NAME, floor + "\n")

    def _read_journal(self) -> tuple[Journal | None, str | None]:
        """``(journal, None)``, ``(None, None)`` when there is none, ``(None, why)`` when it is unreadable."""
        path = self.root / JOURNAL_NAME
        try:
            data = _read_small(path)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, f"it is {exc.strerror or exc}".replace("it is not a regular file", "it is not a file")
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return None, "not valid JSON: truncated or overwritten"
        try:
            journal = Journal.from_dict(doc, JOURNAL_NAME)
        except ValueError as exc:
            return None, str(exc)[:160]
        for value in (journal.version, journal.old):
            if value is not None and not _is_version(value):
                return None, f"{str(value)[:40]!r} is not a release version"
        if journal.manifest is not None and not _SHA256.fullmatch(journal.manifest):
            return None, "its manifest is not a sha256"
        return journal, None

    def _parts(self, check: bool) -> list[tuple[Path, Part]]:
        """Uploads in ``incoming/``; with ``check``, full-size ones are hashed (``complete`` / ``corrupt``)."""
        incoming = self.root / "incoming"
        try:
            entries = list(os.scandir(incoming))
        except OSError:
            return []
        now = time.time()
        out = []
        for entry in entries:
            m = PART_RE.fullmatch(entry.name)
            if m is None:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    continue
                size, complete = int(m["size"]), False
                corrupt = st.st_size > size
                if check and st.st_size == size:
                    complete = sha256_file(Path(entry.path), limit=size) == m["sha"]
                    corrupt = not complete
            except OSError:  # taken by an install or renamed by an upload meanwhile
                continue
            out.append((Path(entry.path), Part(name=entry.name, sha256=m["sha"], size=size, received=st.st_size,
                                               complete=complete, corrupt=corrupt,
                                               age_s=round(max(0.0, now - st.st_mtime), 1))))
        return out

    def state(self) -> DeviceState:
        """What the host needs before an upload; reads only, takes no lock, never fails on a half-done state."""
        keys: tuple[str, ...] | None = tuple(sorted(p.stem for p in (self.root / "trusted_keys").glob("*.pem")))
        if importlib.util.find_spec("cryptography") is None:  # signatures cannot be checked here
            keys = None
        try:
            st = os.statvfs(self.root)
            free, read_only = st.f_bavail * st.f_frsize, bool(st.f_flag & getattr(os, "ST_RDONLY", 1))
        except OSError:
            free, read_only = 0, False
        journal, journal_error = self._read_journal()
        _, floor_error = self._floor_file()
        current, previous = self._release("current"), self._release("previous")
        releases = self.releases()
        try:
            store = tuple(sorted(n for n in os.listdir(self.root / "store") if _SHA256.fullmatch(n)))
        except OSError:
            store = ()
        parts = [p for _, p in self._parts(check=True)]
        partials: dict[str, int] = {}
        for p in parts:
            partials[p.sha256] = max(partials.get(p.sha256, 0), p.received)
        holder = self.lock_holder()
        problems = []
        if read_only:
            problems.append(f"{self.root} is read-only (its file system is mounted read-only)")
        if journal_error is not None:
            problems.append(f"journal.json is unreadable ({journal_error}); 'edgeseg recover' discards the half-done install")
        elif journal is not None and journal.phase == "staged" and holder is None:
            problems.append(f"version {journal.version} is staged by a Mender deployment, waiting for 'mender commit' "
                            "or 'mender rollback' on the device ('edgeseg recover' discards it)")
        elif journal is not None and holder is None:
            problems.append(f"an install of {journal.version or 'a release'} stopped in phase {journal.phase}; "
                            "'edgeseg recover' finishes or discards it")
        if current is None and releases:
            problems.append(f"no current release (the link {self.root}/current is missing; installed: "
                            f"{', '.join(releases)}); 'edgeseg recover' restores it")
        elif current is not None and current.broken:
            problems.append(f"current names a missing or unreadable release ({current.slot}); 'edgeseg recover' restores it")
        if floor_error is not None:
            problems.append(f"version_floor is unreadable ({floor_error}); 'edgeseg recover' rewrites it")
        return DeviceState(
            agent=__version__, python=platform.python_version(), arch=platform.machine(), root=str(self.root),
            current=current, previous=previous, releases=tuple(releases), store=store, partials=partials,
            parts=tuple(parts), free_bytes=free, read_only=read_only, trusted_keys=keys, journal=journal,
            journal_error=journal_error, version_floor=self.version_floor(), lock=holder, problems=tuple(problems),
        )

    # ----------------------------------------------------------------- ingest
    def ingest(self, wanted: Mapping[str, int | None]) -> list[str]:
        """Move completed uploads of the ``wanted`` files (``{sha256: size or None}``) into the store.

        Only the files asked for are taken: uploads for another deploy stay in
        ``incoming/``. A part with all its bytes whose sha256 differs, or with
        more bytes than its name says, is deleted (the host sends it again); a
        shorter one is left for its upload to resume.

        Returns:
            The sha256 names moved into the store.
        """
        store = self.root / "store"
        by_sha: dict[str, list[tuple[Path, Part]]] = {}
        for path, part in self._parts(check=False):
            by_sha.setdefault(part.sha256, []).append((path, part))
        moved = []
        for sha, size in wanted.items():
            if (store / sha).is_file():
                continue
            for path, part in sorted(by_sha.get(sha, []), key=lambda item: -item[1].received):
                if (size is not None and part.size != size) or part.received < part.size:
                    continue
                try:
                    if part.received == part.size and sha256_file(path, limit=part.size) == sha:
                        os.chmod(path, 0o444)
                        os.replace(path, store / sha)
                        moved.append(sha)
                        break
                    path.unlink()
                except FileNotFoundError:
                    continue
                self.report(f"deleted a corrupt upload of {sha[:16]} ({part.received:,} bytes that do not hash to "
                            "its name); it will be sent again")
        if moved:
            _fsync_dir(store)
        return moved

    def _blob(self, sha: str) -> Path:
        path = self.root / "store" / sha
        if not path.is_file():
            raise InstallError(f"file {sha[:16]} is not on the device (upload incomplete?); deploy again")
        return path

    # ---------------------------------------------------------------- install
    def _journal(self, journal: Journal) -> None:
        _write_atomic(self.root / JOURNAL_NAME, json.dumps(journal.to_dict(), sort_keys=True))

    def _remove_journal(self) -> None:
        _remove(self.root / JOURNAL_NAME)

    def _write_error(self, exc: OSError, where: Path) -> InstallError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return InstallError(f"disk full on the device while writing {where}; free space and deploy again")
        if exc.errno == errno.EROFS:
            return InstallError(f"{self.root} is read-only (its file system is mounted read-only); "
                                "remount it read-write and try again")
        return InstallError(f"cannot write {where}: {exc.strerror or exc}")

    def _check_manifest(self, manifest_sha: str) -> tuple[Manifest, str]:
        """Signature (over the exact bytes, before parsing) and contract of the manifest stored under ``manifest_sha``."""
        blob = self._blob(manifest_sha)
        mbytes = blob.read_bytes()
        if hashlib.sha256(mbytes).hexdigest() != manifest_sha:
            blob.unlink()
            raise InstallError("manifest.json on the device is corrupt (sha256 mismatch); deploy again")
        trusted = self.trusted_keys()
        if not trusted:
            raise InstallError("this device trusts no signing key; run 'edgeseg devices provision' with trusted_keys")
        try:
            sig: bytes | None = _read_small(self.root / "incoming" / f"{manifest_sha}.sig")
        except FileNotFoundError:
            sig = None
        key_id = verify_manifest(mbytes, sig, trusted)
        try:
            manifest = Manifest.parse(mbytes)
        except ArchiveError as exc:
            raise InstallError(f"refusing to install: {exc}") from None
        return manifest, key_id

    def _check_version(self, version: str, manifest_sha: str, current: Release | None, allow_downgrade: bool) -> None:
        """Anti-rollback against ``current`` and ``version_floor``; one version, one content, one slot.

        Versions compare by :func:`parse_version` (``1.0 == 1.0.0``, ``01.1 == 1.1``).
        A version equal to an installed slot's is refused unless it is that
        slot's own spelling and manifest (the same contents: reinstall or
        ``unchanged``); equal to ``version_floor`` in another spelling, it is
        refused too (another spelling is another manifest). So each version
        has one slot, named by one spelling (:meth:`_same_version_slots`),
        whatever ``--allow-downgrade`` says.
        """
        new = parse_version(version)
        other = "; give the new build another --release-version"
        for name in self._same_version_slots(version):
            raise InstallError(f"version {version} is installed with other contents (as {name}, the same version){other}")
        slot = self.root / "releases" / version
        if slot.is_dir():
            try:
                existing: str | None = sha256_file(slot / MANIFEST_NAME)
            except OSError:
                existing = None
            if existing is not None and existing != manifest_sha:
                raise InstallError(f"version {version} is installed with other contents{other}")
        floor = self.version_floor()
        if floor and floor != version and parse_version(floor) == new:
            raise InstallError(f"version {version} is installed with other contents (as {floor}, the same version, "
                               f"in version_floor){other}")
        if allow_downgrade:
            return
        cur = current.version if current and not current.broken else None
        if cur and new < parse_version(cur):
            raise InstallError(f"version {version} is older than the installed {cur}; refusing a downgrade "
                               "(anti-rollback) unless --allow-downgrade")
        if floor and new < parse_version(floor):
            raise InstallError(f"version {version} is older than {floor}, the highest version installed on this device "
                               "(version_floor); refusing a downgrade (anti-rollback) unless --allow-downgrade")

    def _same_version_slots(self, version: str) -> list[str]:
        """Slots (``releases/<name>``) of the same version as ``version`` under another name (``1.0`` for ``1.0.0``)."""
        key = parse_version(version)
        return [name for name in self.releases() if name != version and _version_key(name) == key]

    def install(self, manifest_sha: str, *, allow_downgrade: bool = False, health_timeout: float = 600.0) -> InstallResult:
        """Install the release whose ``manifest.json`` is uploaded under ``manifest_sha`` (holds ``R/lock``).

        The signature travels as ``incoming/<manifest_sha>.sig`` (uploaded by the host).

        Raises:
            DeviceBusy: another install (or rollback, recover, ...) is running.
            SignatureError: unsigned, untrusted or altered manifest.
            InstallError: bad manifest or paths, downgrade, missing or corrupt
                files, disk full, read-only root, failed dependencies or health
                check, a Mender deployment staged and not yet committed.
                ``current`` is unchanged in every case.
        """
        if not isinstance(manifest_sha, str) or not _SHA256.fullmatch(manifest_sha):
            raise InstallError("--manifest must be the sha256 of manifest.json (64 lower-case hex digits)")
        with self.lock("install"):
            self._refuse_if_staged()
            self._recover()
            staged = self._stage(manifest_sha, allow_downgrade, health_timeout)
            if isinstance(staged, InstallResult):
                return staged
            return self._commit(staged)

    def _refuse_if_staged(self) -> None:
        journal, _ = self._read_journal()
        if journal is not None and journal.phase == "staged":
            raise InstallError(
                f"version {journal.version} is staged by a Mender deployment and waits for its commit; finish it "
                "('mender commit' or 'mender rollback'), or discard it with 'edgeseg recover' on the device")

    def _stage(self, manifest_sha: str, allow_downgrade: bool, health_timeout: float,
               local: bool = False) -> InstallResult | _Staged:
        """Steps 1-4 (check, assemble, dependencies, health) under the caller's lock; ``current`` untouched.

        Returns:
            The slot waiting in ``releases/.staging-<v>``, or an ``unchanged``
            result when that manifest is already current.
        """
        try:
            self.ingest({manifest_sha: None})
        except OSError as exc:
            raise self._write_error(exc, self.root / "store") from None
        manifest, key_id = self._check_manifest(manifest_sha)
        version = manifest.release_version
        current = self._release("current")
        self._check_version(version, manifest_sha, current, allow_downgrade)
        self.report(f"checked: signed by key {key_id}, version {version}, {len(manifest.files)} files")
        if current and not current.broken and current.manifest_sha256 == manifest_sha:
            self.report(f"version {version} is already current")
            return InstallResult(status="unchanged", version=version, previous=current.version, key_id=key_id)
        old = current.version if current and not current.broken else None
        staging = self.root / "releases" / f".staging-{version}"
        try:
            self.ingest({entry.sha256: entry.size for entry in manifest.files.values()})
            self._journal(Journal(phase="assemble", version=version, manifest=manifest_sha, undo=local))
            self._assemble(manifest, manifest_sha, staging)
            self._journal(Journal(phase="dependencies", version=version, manifest=manifest_sha, undo=local))
            site = self._dependencies(manifest, staging)
            self._journal(Journal(phase="health", version=version, manifest=manifest_sha, undo=local))
        except OSError as exc:
            self._discard(staging)
            raise self._write_error(exc, staging) from None
        except EdgesegError:
            self._discard(staging)
            raise
        health = self._health(staging, site, manifest, health_timeout)
        if not health.passed:
            self._discard(staging)
            raise InstallError(f"health check failed, kept version {old or 'none'}: {health.verdict}")
        return _Staged(manifest, manifest_sha, key_id, staging, old, health)

    def _commit(self, staged: _Staged, undo: bool = False) -> InstallResult:
        """Step 5-6 under the caller's lock: switch ``current`` to the staged slot, then prune.

        ``undo``: record what :meth:`discard_staged` needs to take the switch back (a Mender commit).
        Once ``current`` has switched, the install has happened: a failure while tidying up
        (launcher, pruning) is reported, and ``recover`` finishes it.
        """
        version = staged.manifest.release_version
        before = self._release("previous")
        journal = Journal(phase="switch", version=version, manifest=staged.manifest_sha, old=staged.old, undo=undo,
                          previous=before.version if undo and before and not before.broken else None,
                          floor=self.version_floor() if undo else None)
        try:
            self._journal(journal)
            self._switch(version, staged.staging, staged.old)
        except OSError as exc:  # the journal says what recover must finish or discard
            raise self._write_error(exc, self.root) from None
        try:
            self._finish(staged.manifest, journal)
        except OSError as exc:
            self.report(f"installed {version}, but tidying up failed ({exc.strerror or exc}); 'edgeseg recover' "
                        "finishes it")
        return InstallResult(status="installed", version=version, previous=staged.old, key_id=staged.key_id,
                             health=staged.health)

    # ------------------------------------------------------- staged installs (Mender)
    def stage_archive(self, archive: str | Path, *, allow_downgrade: bool = False,
                      health_timeout: float = 600.0) -> InstallResult:
        """Install an archive file up to a health-checked slot, without switching ``current`` (holds ``R/lock``).

        What the Mender update module's ``ArtifactInstall`` does
        (:mod:`edgeseg_runtime.mender`). The archive's signature, contract and
        version are checked from its first two members before a byte of it is
        unpacked; then it is unpacked by :func:`edgeseg_runtime.tarball.extract`
        (unlisted members refused) into uploads under ``incoming/``, and steps
        1-4 of :meth:`install` run on them. The slot waits in
        ``releases/.staging-<v>`` with ``journal.json`` in phase ``staged``
        until :meth:`commit_staged` or :meth:`discard_staged`.

        Returns:
            ``staged`` (with the health check), or ``unchanged`` when that
            manifest is already current (nothing is staged then).

        Raises:
            DeviceBusy, SignatureError, InstallError: as :meth:`install`; ``current`` is unchanged in every case.
        """
        from .tarball import extract, read_head

        path = Path(archive)
        with self.lock("install"):
            self._refuse_if_staged()
            self._recover()
            try:
                manifest, mbytes, sig = read_head(path)
            except ArchiveError as exc:
                raise InstallError(f"refusing to install: {exc}") from None
            trusted = self.trusted_keys()
            if not trusted:
                raise InstallError("this device trusts no signing key; run 'edgeseg devices provision' with trusted_keys")
            verify_manifest(mbytes, sig, trusted)
            msha = hashlib.sha256(mbytes).hexdigest()
            self._check_version(manifest.release_version, msha, self._release("current"), allow_downgrade)
            unpack = self.root / f".unpack-{os.getpid()}.tmp"
            session = f"local{os.getpid()}"
            _remove(unpack)
            version = manifest.release_version
            try:
                # journaled before the first byte is written: a cut from here on is discarded whole by recover
                self._journal(Journal(phase="assemble", version=version, manifest=msha, undo=True))
                try:
                    unpack.mkdir()
                    self.report(f"unpacking {path.name}")
                    extract(path, unpack)
                    incoming, store = self.root / "incoming", self.root / "store"
                    for rel, entry in manifest.files.items():
                        if not (store / entry.sha256).is_file():  # files an installed release has are not taken twice
                            os.replace(unpack / rel, incoming / part_name(entry.sha256, entry.size, session))
                    os.replace(unpack / MANIFEST_NAME, incoming / part_name(msha, len(mbytes), session))
                    os.replace(unpack / SIGNATURE_NAME, incoming / f"{msha}.sig")
                except ArchiveError as exc:
                    raise InstallError(f"refusing to install: {exc}") from None
                except OSError as exc:
                    raise self._write_error(exc, unpack) from None
                finally:
                    _remove(unpack)
                staged = self._stage(msha, allow_downgrade, health_timeout, local=True)
            except BaseException:  # refused, failed, or stopped by a signal: nothing of the archive stays behind
                self._discard(self.root / "releases" / f".staging-{version}")
                self._drop_session(session)
                self._forget(msha)
                raise
            finally:
                self._drop_session(session)
            if isinstance(staged, InstallResult):
                return staged
            self._journal(Journal(phase="staged", version=manifest.release_version, manifest=msha, old=staged.old,
                                  undo=True))
            self.report(f"staged releases/{staged.staging.name}: health check passed; waiting for the commit")
            return InstallResult(status="staged", version=manifest.release_version, previous=staged.old,
                                 key_id=staged.key_id, health=staged.health)

    def _undo_commit(self, journal: Journal) -> InstallResult:
        """Take back a Mender commit cut before or after its switch (see :meth:`discard_staged`)."""
        new, old = journal.version or "", journal.old
        if old and (self.root / "releases" / old).is_dir():
            _symlink_atomic(self.root / "current", f"releases/{old}")
        elif not old:
            _remove(self.root / "current")
        if journal.previous and (self.root / "releases" / journal.previous).is_dir():
            _symlink_atomic(self.root / "previous", f"releases/{journal.previous}")
        else:
            _remove(self.root / "previous")
        if journal.floor:
            _write_atomic(self.root / FLOOR_NAME, journal.floor + "\n")
        else:
            _remove(self.root / FLOOR_NAME)
        if new and new != old:
            aside = self.root / "releases" / f".old-{new}-{os.getpid()}"
            if (self.root / "releases" / new).is_dir():
                os.replace(self.root / "releases" / new, aside)
            _remove(aside)
        _remove(self.root / "releases" / f".staging-{new}")
        self._remove_journal()
        if journal.manifest:
            self._forget(journal.manifest)
        self.report(f"took back the commit of {new}: current -> {('releases/' + old) if old else 'none'}")
        return InstallResult(status="unchanged", version=old or "none", previous=journal.previous, key_id="")

    def _tidy_local(self) -> None:
        """Leftovers of a cut :meth:`stage_archive` with no journal yet: its unpack folder and local uploads."""
        for leftover in self.root.glob(".unpack-*.tmp"):
            _remove(leftover)
        for entry in list(os.scandir(self.root / "incoming")):
            match = PART_RE.fullmatch(entry.name)
            if match and match["session"].startswith("local"):
                _remove(Path(entry.path))

    def _drop_session(self, session: str) -> None:
        """Delete the uploads of one local session (``stage_archive``'s) left in ``incoming/``."""
        for entry in list(os.scandir(self.root / "incoming")):
            match = PART_RE.fullmatch(entry.name)
            if match and match["session"] == session:
                _remove(Path(entry.path))

    def _forget(self, manifest_sha: str) -> None:
        """Delete what a refused, failed or discarded install of ``manifest_sha`` left: its signature and store files.

        Only what no installed slot uses (:meth:`gc`); the caller holds the lock.
        """
        in_use = False
        for v in self.releases():
            try:
                in_use |= sha256_file(self.root / "releases" / v / MANIFEST_NAME) == manifest_sha
            except OSError:
                in_use = True  # unreadable: keep it
        if not in_use:
            _remove(self.root / "incoming" / f"{manifest_sha}.sig")
        self.gc()

    def commit_staged(self, manifest: str | None = None) -> InstallResult:
        """Switch ``current`` to the slot :meth:`stage_archive` left (holds ``R/lock``): Mender's ``ArtifactCommit``.

        A commit cut after its switch (power loss) is finished when called again.
        ``manifest``: the sha256 of the manifest this deployment staged (None = whichever is staged).

        Raises:
            DeviceBusy: another command holds the lock.
            InstallError: nothing is staged (discarded by ``recover``, or never staged).
        """
        with self.lock("commit"):
            journal, error = self._read_journal()
            if journal is not None and journal.phase in ("switch", "prune"):
                self._recover()  # finishes a switched install, discards one cut before its switch
                cur = self._release("current")
                if cur and not cur.broken and cur.version == journal.version:
                    return InstallResult(status="installed", version=cur.version, previous=journal.old, key_id="")
                raise InstallError(f"the commit of {journal.version} was cut before its switch; nothing is staged now")
            if error is not None or journal is None or journal.phase != "staged" or not journal.version:
                raise InstallError("nothing is staged to commit (no staged install, or 'recover' discarded it)")
            if manifest is not None and journal.manifest != manifest:
                raise InstallError(f"the staged install ({journal.version}) is not this deployment's; not committing it")
            version, msha = journal.version, journal.manifest or ""
            staging = self.root / "releases" / f".staging-{version}"
            try:
                mbytes = (staging / MANIFEST_NAME).read_bytes()
                manifest = Manifest.parse(mbytes)
            except (OSError, ArchiveError):
                self._discard(staging)
                raise InstallError(f"the staged slot of {version} is missing or unreadable; discarded it") from None
            if hashlib.sha256(mbytes).hexdigest() != msha:
                self._discard(staging)
                raise InstallError(f"the staged slot of {version} does not hold the staged manifest; discarded it")
            try:  # checked again: the slot waited on disk between two processes
                key_id = verify_manifest(mbytes, _read_small(staging / SIGNATURE_NAME), self.trusted_keys())
            except (OSError, EdgesegError) as exc:
                self._discard(staging)
                raise InstallError(f"the staged slot of {version} fails its signature check ({exc}); discarded it") from None
            return self._commit(_Staged(manifest, msha, key_id, staging, journal.old, None), undo=True)

    def discard_staged(self, manifest: str | None = None) -> InstallResult | None:
        """Undo what :meth:`stage_archive` (or a cut :meth:`commit_staged`) did: Mender's ``ArtifactRollback``.

        A staged slot is deleted; a commit that was cut (power loss, a kill) is
        taken back whole: ``current``, ``previous`` and ``version_floor`` as
        they were, the new slot removed. ``current`` ends on the release that
        was current before the deployment. Holds ``R/lock``.

        Args:
            manifest: the sha256 of the manifest this deployment staged; an install
                in progress of another manifest is left alone. None = whichever.

        Returns:
            None when there was nothing to undo; else a record of the version current after it.
        """
        with self.lock("rollback"):
            journal, _ = self._read_journal()
            if journal is None:
                self._tidy_local()
                return None
            if manifest is not None and journal.manifest != manifest:
                self.report(f"the install in progress ({journal.version}) is not this deployment's; left as it is")
                return None
            if journal.phase in ("switch", "prune") and journal.undo and journal.version:
                return self._undo_commit(journal)
            if journal.version:
                self._discard(self.root / "releases" / f".staging-{journal.version}")
                self.report(f"discarded the staged install of {journal.version}")
            self._recover()
            if journal.manifest:
                self._forget(journal.manifest)
            version = self._current_version()
            return InstallResult(status="unchanged", version=version or "none", previous=None, key_id="")

    def _switch(self, version: str, staging: Path, old: str | None) -> None:
        releases = self.root / "releases"
        slot = releases / version
        aside = releases / f".old-{version}-{os.getpid()}"
        if slot.exists():  # the same version installed again (after a rollback): out of the way first
            os.replace(slot, aside)
        os.replace(staging, slot)
        _fsync_dir(releases)
        if old and old != version:
            _symlink_atomic(self.root / "previous", f"releases/{old}")
        self._raise_floor(version)
        _symlink_atomic(self.root / "current", f"releases/{version}")
        _remove(aside)
        self.report(f"switched: current -> releases/{version}")

    def _assemble(self, manifest: Manifest, manifest_sha: str, staging: Path) -> None:
        _remove(staging)
        tmp = staging.with_name(staging.name + ".tmp")
        _remove(tmp)
        tmp.mkdir()
        top = os.path.realpath(tmp)
        for rel, entry in sorted(manifest.files.items()):
            dest = tmp / rel
            if not os.path.realpath(dest).startswith(top + os.sep):  # the contract refused these already
                raise InstallError(f"manifest path {rel!r} escapes the release slot; refusing to install")
            blob = self._blob(entry.sha256)
            if blob.stat().st_size != entry.size or sha256_file(blob) != entry.sha256:
                blob.unlink()
                shutil.rmtree(tmp)
                raise InstallError(f"{rel}: the device's copy does not match the manifest's sha256 (corrupt); deploy again")
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(blob, dest)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):  # no hard link possible: copy instead
                    raise
                shutil.copyfile(blob, dest)
        shutil.copyfile(self._blob(manifest_sha), tmp / MANIFEST_NAME)
        shutil.copyfile(self.root / "incoming" / f"{manifest_sha}.sig", tmp / SIGNATURE_NAME)
        os.replace(tmp, staging)
        self.report(f"assembled releases/{staging.name} ({len(manifest.files)} files)")

    def site_of(self, manifest: Manifest) -> Path | None:
        """The dependency folder of a release (None when its archive carries no wheels)."""
        digest = wheels_digest(manifest.files)
        return None if digest is None else self.root / "sites" / digest

    def _dependencies(self, manifest: Manifest, slot: Path) -> Path | None:
        site = self.site_of(manifest)
        if site is None:
            self.report("dependencies: none bundled; using the device's Python packages")
            return None
        if (site / ".complete").is_file():
            self.report(f"dependencies: reusing sites/{site.name[:16]}")
            return site
        tmp = site.with_name(f".{site.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        argv = [
            sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(slot / "wheels"),
            "--only-binary=:all:", "--no-compile", "--disable-pip-version-check", "--target", str(tmp),
            *manifest.runtime.requirements,
        ]
        wheels = [rel for rel in manifest.files if rel.startswith("wheels/")]
        self.report(f"dependencies: pip install --no-index from {len(wheels)} wheels")
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            if "No space left" in proc.stderr:
                raise InstallError("disk full on the device while installing the wheels; free space and deploy again")
            raise InstallError(f"installing the archive's wheels failed ({' '.join(argv[:4])} ...): {tail}")
        (tmp / ".complete").write_text("ok\n", encoding="utf-8")
        os.replace(tmp, site)
        return site

    def _runtime_env(self, slot: Path, site: Path | None) -> dict[str, str]:
        paths = [str(slot / "runtime")] + ([str(site)] if site else [])
        # device-built TensorRT engines live next to the releases (edgeseg_runtime.engine)
        return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONDONTWRITEBYTECODE": "1",
                "EDGESEG_ENGINE_CACHE": str(self.root / "engines")}

    def _health(self, slot: Path, site: Path | None, manifest: Manifest, timeout: float) -> Health:
        """Golden ``verify`` (and ``bench`` against the latency budget) with the slot's own runtime."""
        env = self._runtime_env(slot, site)
        t0 = time.perf_counter()
        self.report("health check: verify on the golden set")
        verify, why = self._runtime_answer(VerifyOutcome, ["verify", str(slot), "--json"], env, timeout)
        passed, verdict = (verify.passed, verify.verdict) if verify is not None else (False, f"FAIL: {why}")
        latency: float | None = None
        budget = manifest.target.deploy.latency_budget_ms
        if passed and budget:
            self.report(f"health check: latency against the budget of {budget} ms")
            bench, why = self._runtime_answer(
                BenchOutcome, ["bench", str(slot), "--json", "--runs", "20", "--warmup", "3"], env, timeout)
            latency = bench.end_to_end_ms if bench is not None else None
            if latency is None:
                passed = False
                verdict = f"FAIL: no latency to hold against the profile's budget of {budget} ms ({why})"
            elif latency > budget:
                passed = False
                verdict = f"FAIL: median latency {latency} ms is over the profile's budget of {budget} ms"
            else:
                verdict += f"; latency {latency:.1f} ms <= {budget} ms"
        health = Health(passed=passed, verdict=verdict, seconds=round(time.perf_counter() - t0, 2), latency_ms=latency)
        self.report(f"health check: {health.verdict}")
        return health

    def _runtime_answer(self, record: type[A], args: list[str], env: dict[str, str], timeout: float) -> tuple[A | None, str]:
        """Run ``edgeseg CMD ARCHIVE ... --json`` with the slot's runtime; its answer as ``record``, or ``(None, why not)``.

        A slot whose runtime predates the positional archive (``CMD --archive
        ARCHIVE``, an archive built by an older edgeseg) refuses the call as a
        usage error naming ``--archive``: it is asked again in its own grammar.
        """
        argv = [sys.executable, "-m", "edgeseg_runtime", *args]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
            if proc.returncode == 2 and not proc.stdout.strip() and "required: --archive" in proc.stderr:
                argv = [sys.executable, "-m", "edgeseg_runtime", args[0], "--archive", *args[1:]]
                proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return None, f"'{args[0]}' took longer than {timeout:.0f} s"
        try:
            doc = json.loads(proc.stdout)
        except (ValueError, RecursionError):  # JSONDecodeError included
            tail = " | ".join(proc.stderr.strip().splitlines()[-2:]) or f"exit {proc.returncode}"
            return None, f"{args[0]} did not run: {tail}"
        try:
            return record.from_dict(doc, f"edgeseg {args[0]} --json"), ""
        except ValueError as exc:
            return None, f"{args[0]} answered in an unexpected form ({str(exc)[:160]})"

    def _discard(self, staging: Path) -> None:
        """Abandon an install before its switch: the half-built slot and the journal go, ``current`` stays."""
        _remove(staging)
        _remove(staging.with_name(staging.name + ".tmp"))
        self._remove_journal()

    def _finish(self, manifest: Manifest, journal: Journal | None = None) -> None:
        """Launcher, pruning of old slots, sites and store files; then the journal goes."""
        prune = Journal(phase="prune", version=manifest.release_version)
        if journal is not None:
            prune = Journal(phase="prune", version=journal.version, manifest=journal.manifest, old=journal.old,
                            undo=journal.undo, previous=journal.previous, floor=journal.floor)
        self._journal(prune)
        self._write_launcher()
        self.prune(manifest.target.deploy.keep_releases)
        self._remove_journal()

    def _write_launcher(self) -> None:
        bindir = self.root / "bin"
        bindir.mkdir(exist_ok=True)
        py, root, agent = shlex.quote(sys.executable), shlex.quote(str(self.root)), shlex.quote(str(self.root / "agent"))
        script = (
            "#!/bin/sh\n# edgeseg on this device (written by the edgeseg installer): 'recover' runs the installer's\n"
            "# recovery (put it in a boot script); anything else runs the current release's runtime.\n"
            f"PYTHONPATH={agent}; export PYTHONPATH\n"
            f'if [ "$1" = recover ]; then exec {py} -m edgeseg_runtime.agent --root {root} --plain recover; fi\n'
            f'exec {py} -m edgeseg_runtime.agent --root {root} exec -- "$@"\n'
        )
        path = bindir / "edgeseg"
        try:
            same = path.read_text(encoding="utf-8") == script
        except (OSError, UnicodeDecodeError):
            same = False
        if not same:
            _write_atomic(path, script)
            os.chmod(path, 0o755)

    def prune(self, keep: int) -> PruneResult:
        """Remove slots beyond the ``keep`` newest (never ``current`` or ``previous``), then unused sites and files.

        Returns:
            The versions removed.
        """
        with self.lock("prune"):
            pinned = {r.version for r in (self._release("current"), self._release("previous")) if r and r.version}
            versions = self.releases()
            removed = []
            for v in versions[: max(0, len(versions) - max(1, keep))]:
                if v not in pinned:
                    aside = self.root / "releases" / f".old-{v}-{os.getpid()}"
                    os.replace(self.root / "releases" / v, aside)  # gone at once; recover removes what a cut leaves
                    shutil.rmtree(aside)
                    removed.append(v)
            if removed:
                self.report(f"pruned releases {', '.join(removed)} (keep_releases = {keep})")
            self.gc()
            return PruneResult(removed=tuple(removed))

    def gc(self) -> None:
        """Delete store files and sites no slot uses, and uploads and signatures untouched for a day.

        Uploads younger than :data:`STALE_SECONDS` stay: they may belong to a
        deploy still sending its files for its own install.
        """
        used: set[str] = set()
        sites: set[str] = set()
        readable = True
        staged = [p.name for p in (self.root / "releases").glob(".staging-*") if (p / MANIFEST_NAME).is_file()]
        for v in [*self.releases(), *staged]:  # a slot staged for a Mender commit keeps its files and site
            try:
                mbytes = (self.root / "releases" / v / MANIFEST_NAME).read_bytes()
                manifest = Manifest.parse(mbytes)
            except (OSError, ArchiveError):
                readable = False  # which files it uses is unknown: keep them all
                continue
            used |= {entry.sha256 for entry in manifest.files.values()}
            used.add(hashlib.sha256(mbytes).hexdigest())
            site = self.site_of(manifest)
            if site is not None:
                sites.add(site.name)
        if readable:
            for blob in (self.root / "store").iterdir():
                if blob.name not in used:
                    _remove(blob)
            for site in (self.root / "sites").iterdir():
                if site.name not in sites:
                    _remove(site)
        else:
            self.report("kept every stored file: a release slot has no readable manifest")
        now = time.time()
        for entry in list(os.scandir(self.root / "incoming")):
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime > STALE_SECONDS:
                    _remove(Path(entry.path))
            except OSError:
                continue

    # --------------------------------------------------------- rollback/recover
    def rollback(self) -> RollbackResult:
        """Make ``previous`` current again (and the current one ``previous``); holds ``R/lock``.

        Raises:
            InstallError: no previous release to return to.
        """
        with self.lock("rollback"):
            self._refuse_if_staged()
            self._recover()
            cur, prev = self._release("current"), self._release("previous")
            if not prev or not prev.version or prev.broken:
                raise InstallError("no previous release on this device to roll back to")
            _symlink_atomic(self.root / "current", f"releases/{prev.version}")
            cur_version = cur.version if cur and not cur.broken else None
            if cur_version and cur_version != prev.version:
                _symlink_atomic(self.root / "previous", f"releases/{cur_version}")
            self.report(f"rolled back: current -> releases/{prev.version}")
            return RollbackResult(status="rolled back", version=prev.version, previous=cur_version)

    def recover(self) -> RecoverResult:
        """Finish or discard a half-done install and repair the root (run at boot; holds ``R/lock``).

        * a journal that reached ``switch`` with ``current`` already on the new
          slot: the install is finished (``previous``, pruning); any other
          journal, unreadable ones included, is discarded with its staging folder;
        * uploads that have all their bytes but the wrong sha256 are deleted
          (the host sends them again), and uploads untouched for a day;
        * a missing or broken ``current`` is pointed at ``previous`` when it is
          complete, else at the newest complete slot (every file checked);
        * ``version_floor`` is rewritten when unreadable or below a slot.

        Returns:
            ``status``: ``clean`` | ``finished`` | ``discarded`` | ``repaired``;
            ``version``: the current version after it; ``notes``: what it did.
        """
        with self.lock("recover"):
            return self._recover()

    def _recover(self) -> RecoverResult:
        notes: list[str] = []
        status = "clean"
        journal, error = self._read_journal()
        if error is not None:
            self._remove_journal()
            status = "discarded"
            notes.append(f"journal.json was unreadable ({error}): discarded the half-done install")
        elif journal is not None:
            cur = self._release("current")
            new = journal.version
            if journal.phase in ("switch", "prune") and new and cur and not cur.broken and cur.version == new:
                if journal.old and journal.old != new and (self.root / "releases" / journal.old).is_dir():
                    _symlink_atomic(self.root / "previous", f"releases/{journal.old}")
                self._raise_floor(new)
                self._finish(Manifest.parse((self.root / "releases" / new / MANIFEST_NAME).read_bytes()))
                status = "finished"
                notes.append(f"finished the install of {new} (its switch had happened)")
            else:
                status = "discarded"
                notes.append(f"discarded the install of {new or 'a release'} stopped in phase {journal.phase}")
                self._remove_journal()
                self._tidy_local()
                if journal.manifest and journal.undo:  # a Mender install's unpacked files (SSH uploads stay for a resume)
                    self._forget(journal.manifest)
            self._remove_journal()
        for leftover in (self.root / "releases").iterdir():
            if leftover.name.startswith((".staging-", ".old-")):
                _remove(leftover)
                if leftover.name.startswith(".staging-") and status == "clean":
                    status = "discarded"
                    notes.append(f"removed the half-built slot {leftover.name}")
        for tmp in [*self.root.glob(".*.new"), *self.root.glob(".*.tmp"), *(self.root / "sites").glob(".*.tmp")]:
            _remove(tmp)
        repaired = self._recover_uploads(notes)
        repaired |= self._recover_links(notes)
        stored, floor_error = self._floor_file()
        floor = self.version_floor()
        if floor and (stored is None or parse_version(stored) < parse_version(floor)):
            _write_atomic(self.root / FLOOR_NAME, floor + "\n")
            if floor_error is not None:
                repaired = True
                notes.append(f"rewrote version_floor ({floor_error}) as {floor}")
        elif floor_error is not None:
            _remove(self.root / FLOOR_NAME)
            notes.append(f"removed version_floor ({floor_error}); nothing is installed")
        self._write_launcher()
        if repaired and status == "clean":
            status = "repaired"
        version = self._current_version()
        for note in notes:
            self.report(f"recover: {note}")
        if status != "clean":
            self.report(f"recover: {status}; current is {version or 'none'}")
        return RecoverResult(status=status, version=version, notes=tuple(notes))  # type: ignore[arg-type]

    def _recover_uploads(self, notes: list[str]) -> bool:
        """Delete corrupt (full-size, wrong sha256) and day-old uploads; True when one was corrupt."""
        corrupt = False
        for path, part in self._parts(check=True):
            if part.corrupt:
                _remove(path)
                corrupt = True
                notes.append(f"deleted a corrupt upload of {part.sha256[:16]} ({part.received:,} bytes that do not hash "
                             "to its name); the next deploy sends it again")
            elif part.age_s > STALE_SECONDS:
                _remove(path)
        return corrupt

    def _slot_problem(self, version: str) -> str | None:
        """Why ``releases/<version>`` is not a complete slot (None when every file matches its manifest)."""
        slot = self.root / "releases" / version
        try:
            manifest = Manifest.parse((slot / MANIFEST_NAME).read_bytes())
        except (OSError, ArchiveError):
            return "no readable manifest.json"
        if manifest.release_version != version:
            return f"its manifest is for version {manifest.release_version}"
        if not (slot / SIGNATURE_NAME).is_file():
            return "no manifest.sig"
        for rel, entry in manifest.files.items():
            try:
                if (slot / rel).stat().st_size != entry.size or sha256_file(slot / rel) != entry.sha256:
                    return f"{rel} does not match its sha256"
            except OSError:
                return f"{rel} is missing"
        return None

    def _recover_links(self, notes: list[str]) -> bool:
        """Point a missing or broken ``current`` at ``previous`` or the newest complete slot; True when repaired."""
        cur, prev = self._release("current"), self._release("previous")
        versions = self.releases()
        repaired = False
        if (cur is None and versions) or (cur is not None and cur.broken):
            why = "missing" if cur is None else f"broken ({cur.slot})"
            choice = None
            if prev is not None and prev.version and not prev.broken and self._slot_problem(prev.version) is None:
                choice = prev.version
            else:
                choice = next((v for v in reversed(versions) if _is_version(v) and self._slot_problem(v) is None), None)
            if choice is None:
                notes.append(f"current was {why} and no installed release is complete; deploy a release")
                if cur is not None:
                    _remove(self.root / "current")
            else:
                _symlink_atomic(self.root / "current", f"releases/{choice}")
                notes.append(f"current was {why}: now releases/{choice}")
                repaired = True
            cur = self._release("current")
        prev = self._release("previous")
        if prev is not None and (prev.broken or (cur is not None and prev.version == cur.version)):
            _remove(self.root / "previous")
            notes.append("removed the link previous (its release is missing or is the current one)")
        return repaired

    def exec_argv(self, args: list[str]) -> tuple[list[str], dict[str, str]]:
        """argv and environment that run ``edgeseg ARGS`` with the current release's runtime.

        Raises:
            InstallError: nothing is installed, or ``current`` is missing or broken.
        """
        cur = self._release("current")
        if cur is None or cur.broken:
            if not self.releases():
                raise InstallError(f"nothing is installed under {self.root}; deploy a release first")
            raise InstallError(f"no usable current release under {self.root} (the link 'current' is missing or broken); "
                               f"run '{self.root}/bin/edgeseg recover'")
        slot = Path(cur.slot)
        manifest = Manifest.parse((slot / MANIFEST_NAME).read_bytes())
        env = self._runtime_env(slot, self.site_of(manifest))
        return [sys.executable, "-m", "edgeseg_runtime", *args], env
