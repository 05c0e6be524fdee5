"""Opening an edgeseg archive (``.tar.gz`` or an unpacked folder) safely.

An archive holds exactly the files its ``manifest.json`` lists (each with its
sha256 and size), the manifest itself and, when signed, ``manifest.sig``:
nothing else, ever. Python bytecode caches (``__pycache__``), pip's build
folders and any other unlisted file make the archive invalid, since such a
file could run when the archive's runtime is used.

Opening one:

1. (``.tar.gz``) :func:`edgeseg_runtime.tarball.extract` checks every member
   header against the manifest (the first member) before writing any of its
   bytes, and every sha256 while unpacking, into a private temporary folder
   that is removed on every exit path (exceptions, Ctrl-C, and the CLI's
   SIGTERM/SIGHUP handlers).
2. (folder) the tree is walked without following links: a link, a special
   file or an unlisted file is refused; then each listed file's size and
   sha256 are checked (the listed total is bounded by
   :attr:`~edgeseg_runtime.contract.Limits.total_bytes` before any hashing).
3. ``manifest.json`` and ``pipeline.json`` are parsed into the typed contract
   (:mod:`edgeseg_runtime.contract`) and the pipeline is checked against the
   model's shapes and classes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .contract import (
    LIMITS,
    MANIFEST_NAME,
    PIPELINE_NAME,
    SCHEMA_VERSION,
    SIGNATURE_NAME,
    Manifest,
    PipelineSpec,
    load_json,
)
from .errors import ArchiveError

__all__ = ["Archive", "MANIFEST_NAME", "SCHEMA_VERSION", "sha256_file"]


def sha256_file(path: Path, limit: Optional[int] = None) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks.

    Args:
        path: the file.
        limit: hash at most this many bytes (then one more is read to tell a longer file apart).
    """
    digest = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    left = -1 if limit is None else limit + 1
    with open(path, "rb") as fh:
        while left != 0:
            n = fh.readinto(view if left < 0 else view[: min(len(buf), left)])
            if not n:
                break
            digest.update(view[:n])
            if left > 0:
                left -= n
    return digest.hexdigest()


@dataclass(frozen=True)
class Archive:
    """An archive checked and available as a folder.

    Attributes:
        root: folder holding the archive's files.
        manifest: the validated ``manifest.json`` (:class:`~edgeseg_runtime.contract.Manifest`).
        pipeline_spec: the validated ``pipeline.json`` (:class:`~edgeseg_runtime.contract.PipelineSpec`).
        pipeline: ``pipeline.json`` as parsed JSON (the MMDeploy SDK document).
        source: what was opened (archive file or folder).
        manifest_bytes: the exact bytes of ``manifest.json`` (what a signature covers).
        signature: the bytes of ``manifest.sig``, None when unsigned.
    """

    root: Path
    manifest: Manifest
    pipeline_spec: PipelineSpec
    pipeline: Any
    source: Path
    manifest_bytes: bytes
    signature: Optional[bytes]

    @classmethod
    @contextmanager
    def open(cls, path: str | Path) -> Iterator[Archive]:
        """Open an archive file or unpacked archive folder (always fully checked).

        Args:
            path: ``*.tar.gz`` written by ``edgeseg build``, or its unpacked folder.

        Yields:
            The opened :class:`Archive`; a temporary extraction is removed on exit.

        Raises:
            ArchiveError: missing, corrupt, truncated, unsafe, over the
                limits, or files that are not exactly the manifest's.
        """
        path = Path(path)
        if path.is_dir():
            yield cls._from_folder(path)
            return
        if not path.exists():
            raise ArchiveError(f"{path}: no such archive file or folder")
        if not path.is_file():
            raise ArchiveError(f"{path}: not an archive file or folder")
        from .tarball import extract

        tmp = Path(tempfile.mkdtemp(prefix="edgeseg-"))
        try:
            manifest, mbytes, sig = extract(path, tmp)
            yield cls._finish(tmp, path, manifest, mbytes, sig)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def _from_folder(cls, folder: Path) -> Archive:
        # resolved once: every later read goes to the same directory, even if ``folder`` is a link that an
        # install or rollback switches meanwhile (``R/current``), so one run never mixes two releases
        root = Path(os.path.realpath(folder))
        mpath = root / MANIFEST_NAME
        try:
            st = os.lstat(mpath)
        except OSError:
            raise ArchiveError(f"{root}: no {MANIFEST_NAME}; not an edgeseg archive") from None
        if not stat.S_ISREG(st.st_mode) or st.st_size > LIMITS.manifest_bytes:
            raise ArchiveError(f"{root}: {MANIFEST_NAME} is not a regular file of at most {LIMITS.manifest_bytes:,} bytes")
        with open(mpath, "rb") as fh:
            mbytes = fh.read(LIMITS.manifest_bytes + 1)
        manifest = Manifest.parse(mbytes, f"{root}: {MANIFEST_NAME}")
        _check_tree(root, manifest)
        sig = _read_small(root / SIGNATURE_NAME, root) if (root / SIGNATURE_NAME).exists() else None
        return cls._finish(root, folder, manifest, mbytes, sig)

    @classmethod
    def _finish(cls, root: Path, source: Path, manifest: Manifest, mbytes: bytes, sig: bytes | None) -> Archive:
        if PIPELINE_NAME not in manifest.files:
            raise ArchiveError(f"{source}: the manifest does not list {PIPELINE_NAME}")
        doc = load_json(_read_small(root / PIPELINE_NAME, source), f"{source}: {PIPELINE_NAME}")
        spec = PipelineSpec.from_doc(doc, f"{source}: {PIPELINE_NAME}")
        spec.check_model(manifest.model, f"{source}: {PIPELINE_NAME}")
        return cls(root=root, manifest=manifest, pipeline_spec=spec, pipeline=doc, source=source,
                   manifest_bytes=mbytes, signature=sig)

    def path(self, rel: str) -> Path:
        """Absolute path of a file inside the archive."""
        return self.root / rel

    @property
    def name(self) -> str:
        """``<model>-<target>``, the archive's base name."""
        return self.manifest.name


def _read_small(path: Path, source: Path) -> bytes:
    """A small document's bytes, its size checked before reading (at most :attr:`Limits.document_bytes`)."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > LIMITS.document_bytes:
            raise ArchiveError(f"{source}: {path.name} is not a regular file of at most {LIMITS.document_bytes:,} bytes")
        with open(path, "rb") as fh:
            return fh.read(LIMITS.document_bytes + 1)
    except OSError as exc:
        raise ArchiveError(f"{source}: cannot read {path.name} ({exc.strerror or exc})") from None


def _check_tree(root: Path, manifest: Manifest) -> None:
    """The folder holds exactly the listed files (plus manifest and signature), each with its size and sha256.

    Raises:
        ArchiveError: a link, special file or unlisted file anywhere in the
            tree (checked first, without following links), or a listed file
            missing or differing from the manifest.
    """
    listed = manifest.files
    stack, seen = [root], 0
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            raise ArchiveError(f"{root}: cannot list {folder} ({exc.strerror or exc})") from None
        for entry in entries:
            rel = Path(entry.path).relative_to(root).as_posix()
            if entry.is_symlink():
                raise ArchiveError(f"{root}: {rel} is a link; edgeseg archives hold only regular files")
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
                continue
            if not entry.is_file(follow_symlinks=False):
                raise ArchiveError(f"{root}: {rel} is a special file; edgeseg archives hold only regular files")
            if rel in (MANIFEST_NAME, SIGNATURE_NAME):
                continue
            if rel not in listed:
                hint = (" (a Python bytecode cache: run the archive's runtime with python -B or "
                        "PYTHONDONTWRITEBYTECODE=1, or install its wheel)" if "__pycache__" in rel.split("/") else "")
                raise ArchiveError(f"{root}: file {rel!r} is not listed in the manifest{hint}; an archive holds "
                                   "exactly the files it lists (tampered archive?)")
            seen += 1
    if seen != len(listed):
        missing = next(rel for rel in sorted(listed) if not (root / rel).is_file())
        raise ArchiveError(f"{root}: {missing} is missing")
    for rel, meta in sorted(listed.items()):
        p = root / rel
        if p.stat().st_size != meta.size or sha256_file(p, limit=meta.size) != meta.sha256:
            raise ArchiveError(
                f"{root}: {rel} does not match its sha256 in the manifest (altered or corrupt); "
                "rebuild or re-download the archive"
            )
