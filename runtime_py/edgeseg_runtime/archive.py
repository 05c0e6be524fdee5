"""Opening an edgeseg archive (``.tar.gz`` or an unpacked folder) safely.

An archive is a flat tree whose ``manifest.json`` lists every other file with
its sha256 and size. Opening one:

1. (``.tar.gz``) reads every member header first and refuses the whole archive
   if any member is absolute, contains ``..``, is a link or a device, or if
   the stream is truncated/corrupt; nothing is extracted before that check.
   Extraction then uses :mod:`tarfile`'s ``data`` filter (PEP 706) as a
   second line of defence, into a private temporary folder.
2. checks that the files on disk are exactly those in the manifest, each
   with the recorded sha256 (FIPS 180-4) and size.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import ArchiveError

__all__ = ["Archive", "MANIFEST_NAME", "SCHEMA_VERSION", "sha256_file", "check_member_names"]

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def check_member_names(members: list[tarfile.TarInfo], where: str) -> None:
    """Refuse any tar member that could land outside the destination.

    Raises:
        ArchiveError: absolute path, ``..`` component, link, device or FIFO.
    """
    for m in members:
        p = PurePosixPath(m.name)
        if p.is_absolute() or m.name.startswith(("/", "\\")) or ".." in p.parts:
            raise ArchiveError(f"{where}: member {m.name!r} escapes the archive root; refusing to extract anything")
        if not (m.isfile() or m.isdir()):
            kind = "link" if (m.issym() or m.islnk()) else "special file"
            raise ArchiveError(f"{where}: member {m.name!r} is a {kind}; edgeseg archives hold only regular files")


@dataclass
class Archive:
    """An archive checked and available as a folder.

    Attributes:
        root: folder holding the archive's files.
        manifest: the parsed ``manifest.json``.
        source: what was opened (archive file or folder).
    """

    root: Path
    manifest: dict[str, Any]
    source: Path
    _pipeline: dict[str, Any] | None = field(default=None, repr=False)

    @classmethod
    @contextmanager
    def open(cls, path: str | Path, *, check: bool = True) -> Iterator[Archive]:
        """Open an archive file or unpacked archive folder.

        Args:
            path: ``*.tar.gz`` written by ``edgeseg build``, or its unpacked folder.
            check: verify every file against the manifest (sha256 and size).

        Yields:
            The opened :class:`Archive`; a temporary extraction is removed on exit.

        Raises:
            ArchiveError: missing, corrupt, truncated, unsafe, or files that do
                not match the manifest.
        """
        path = Path(path)
        if path.is_dir():
            archive = cls._from_dir(path, path)
            if check:
                archive.check_files()
            yield archive
            return
        if not path.is_file():
            raise ArchiveError(f"{path}: no such archive file or folder")
        tmp = Path(tempfile.mkdtemp(prefix="edgeseg-"))
        try:
            _extract(path, tmp)
            archive = cls._from_dir(tmp, path)
            if check:
                archive.check_files()
            yield archive
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def _from_dir(cls, root: Path, source: Path) -> Archive:
        mpath = root / MANIFEST_NAME
        if not mpath.is_file():
            raise ArchiveError(f"{source}: no {MANIFEST_NAME}; not an edgeseg archive")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArchiveError(f"{source}: {MANIFEST_NAME} is not valid JSON ({exc})") from None
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        if version != SCHEMA_VERSION:
            raise ArchiveError(
                f"{source}: manifest schema_version {version!r} is not {SCHEMA_VERSION}; "
                "use the edgeseg runtime shipped inside this archive (runtime/)"
            )
        return cls(root=root, manifest=manifest, source=source)

    def check_files(self) -> None:
        """Compare the files on disk with the manifest's list.

        Raises:
            ArchiveError: a listed file is missing, has another size or sha256,
                or a file is present that the manifest does not list.
        """
        listed: dict[str, dict[str, Any]] = self.manifest.get("files", {})
        present = {
            p.relative_to(self.root).as_posix()
            for p in self.root.rglob("*")
            if p.is_file() and p.name != MANIFEST_NAME and not _install_byproduct(p.relative_to(self.root))
        }
        present.discard("manifest.sig")
        extra = sorted(present - listed.keys())
        if extra:
            raise ArchiveError(f"{self.source}: file {extra[0]!r} is not listed in the manifest (tampered archive?)")
        for rel, meta in sorted(listed.items()):
            p = self.root / rel
            if not p.is_file():
                raise ArchiveError(f"{self.source}: {rel} is missing")
            if p.stat().st_size != meta["size"] or sha256_file(p) != meta["sha256"]:
                raise ArchiveError(
                    f"{self.source}: {rel} does not match its sha256 in the manifest (altered or corrupt); "
                    "rebuild or re-download the archive"
                )

    def path(self, rel: str) -> Path:
        """Absolute path of a file inside the archive."""
        return self.root / rel

    @property
    def pipeline(self) -> dict[str, Any]:
        """The parsed ``pipeline.json``."""
        if self._pipeline is None:
            try:
                self._pipeline = json.loads(self.path("pipeline.json").read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise ArchiveError(f"{self.source}: cannot read pipeline.json ({exc})") from None
        return self._pipeline

    @property
    def name(self) -> str:
        """``<model>-<target>``, the archive's base name."""
        return f"{self.manifest['model']['name']}-{self.manifest['target']['name']}"


def _install_byproduct(rel: Path) -> bool:
    """Files that ``pip install ./runtime`` or Python itself leave in an unpacked archive.

    ``__pycache__`` anywhere; ``runtime/build/`` and ``runtime/*.egg-info/``
    (setuptools builds in the source folder). Everything else must be listed.
    """
    parts = rel.parts
    if "__pycache__" in parts:
        return True
    return len(parts) > 2 and parts[0] == "runtime" and (parts[1] == "build" or parts[1].endswith(".egg-info"))


def _extract(path: Path, dest: Path) -> None:
    where = str(path)
    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()  # reads to the end: catches truncation before extracting
            check_member_names(members, where)
            tar.extractall(dest, members=members, filter="data")
    except ArchiveError:
        raise
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ArchiveError(f"{where}: disk full while unpacking into {dest.parent}; free space or set TMPDIR") from None
        raise ArchiveError(f"{where}: corrupt or truncated archive ({exc}); rebuild or re-download it") from None
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"{where}: corrupt or truncated archive ({exc}); rebuild or re-download it") from None
