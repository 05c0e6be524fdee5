"""Unpacking an edgeseg ``.tar.gz`` without trusting it: a bounded, streaming tar reader.

An archive reaches a device as untrusted bytes, and CPython's :mod:`tarfile`
is not safe on them in the interpreters devices run: a negative member size
loops forever (CVE-2025-8194) and crafted pax headers take quadratic time
(CVE-2024-6232), both present in 3.11.7 and Debian 12's 3.11.2, whose
``extractall`` also lacks the ``filter=`` argument (PEP 706). So this module
reads the tar format itself, for the subset edgeseg writes, in one pass:

1. ``manifest.json`` must be the first member (``edgeseg build`` writes it
   first); it is read into memory (at most :attr:`Limits.manifest_bytes`) and
   validated (:class:`~edgeseg_runtime.contract.Manifest`) before anything is
   written to disk, and the listed sizes must fit the destination's free space;
2. ``manifest.sig`` (optional, at most :attr:`Limits.document_bytes`) may follow;
3. every further member must be a regular file listed in the manifest, seen
   once, with the listed size: an unlisted, duplicate, resized, linked or
   special member stops the reading at its header, before any of its bytes
   are written. Directory members are accepted only as parents of listed files.
   Each file is streamed to disk while its sha256 is computed, exactly its
   listed size, and compared at its end.

Headers are parsed by hand: ustar/GNU ``magic``, checksum, octal sizes only
(base-256 and negative sizes refused), POSIX pax ``x`` headers up to 64 KiB
parsed in linear time (``path`` and ``size`` honoured, sparse files refused),
global ``g`` headers and GNU long-name ``L``/``K`` records refused. Everything
read is bounded by the manifest's sizes, so time and memory are linear in the
archive's listed size: every header is a listed file, a listed file's folder
(once) or the signature, each with at most one pax header of at most 4 KiB.

Sources: POSIX.1-2017 ``pax`` (ustar header layout, extended header records
``"%d %s=%s\\n"``); GNU tar manual "Basic Tar Format"; RFC 1952 (gzip).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import shutil
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Tuple

from .contract import LIMITS, MANIFEST_NAME, SIGNATURE_NAME, Manifest, check_rel_path
from .errors import ArchiveError

__all__ = ["extract", "read_head", "Member"]

BLOCK = 512
#: largest pax extended header accepted (edgeseg writes one only for a name over 100 bytes: ~1 KiB at most)
MAX_PAX = 4096
#: bytes kept free on the destination beyond the unpacked size
SPACE_MARGIN = 1 << 20
_CHUNK = 1 << 20
_ZERO = bytes(BLOCK)


@dataclass(frozen=True)
class Member:
    """One tar member header: ``name`` (POSIX path), ``size`` in bytes, ``kind`` (``file`` | ``dir``)."""

    name: str
    size: int
    kind: str


class _Stream:
    """Exact reads from the (decompressed) tar stream; a short read is a truncated archive."""

    def __init__(self, fh: BinaryIO, where: str) -> None:
        self.fh, self.where = fh, where

    def read(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise ArchiveError(f"{self.where}: corrupt or truncated archive (it ends inside a member); "
                               "rebuild or re-download it")
        return data

    def skip_padding(self, size: int) -> None:
        pad = -size % BLOCK
        if pad:
            self.read(pad)


def _octal(field: bytes, what: str, where: str) -> int:
    """A tar numeric field: octal ASCII digits, NUL/space padded (base-256 and signs refused)."""
    text = field.rstrip(b"\x00 ").lstrip(b" ")
    if not text:
        return 0
    if not all(0x30 <= c <= 0x37 for c in text):
        raise ArchiveError(f"{where}: member header has a {what} that is not an octal number; corrupt or hostile archive")
    return int(text, 8)


def _checksum_ok(block: bytes, where: str) -> bool:
    stored = _octal(block[148:156], "checksum", where)
    head = block[:148] + b" " * 8 + block[156:]
    return stored == sum(head) or stored == sum(b - 256 if b > 127 else b for b in head)


def _parse_pax(data: bytes, where: str) -> dict[str, str]:
    """POSIX pax extended header records ``"<len> <key>=<value>\\n"``, in one linear pass."""
    out: dict[str, str] = {}
    i = 0
    while i < len(data):
        if data[i] == 0:  # NUL padding after the last record
            break
        space = data.find(b" ", i, i + 20)
        digits = data[i:space] if space > i else b""
        if not digits or not digits.isdigit():
            raise ArchiveError(f"{where}: malformed pax header (record length); corrupt or hostile archive")
        length = int(digits)
        end = i + length
        if length <= len(digits) + 1 or end > len(data) or data[end - 1] != 0x0A:
            raise ArchiveError(f"{where}: malformed pax header (record bounds); corrupt or hostile archive")
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq:
            raise ArchiveError(f"{where}: malformed pax header (no '='); corrupt or hostile archive")
        try:
            out[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise ArchiveError(f"{where}: pax header is not UTF-8; corrupt or hostile archive") from None
        i = end
    return out


def _headers(stream: _Stream) -> Iterator[Member]:
    """Member headers in order; the caller reads (or skips) each member's data before the next."""
    where = stream.where
    pax: dict[str, str] = {}
    pax_pending = False
    while True:
        block = stream.fh.read(BLOCK)
        if len(block) < BLOCK:
            raise ArchiveError(f"{where}: corrupt or truncated archive (no end-of-archive marker); "
                               "rebuild or re-download it")
        if block == _ZERO:
            return  # end of archive (a second zero block normally follows; nothing after it is read)
        if block[257:262] != b"ustar":
            raise ArchiveError(f"{where}: not a tar archive edgeseg can read (no ustar header); corrupt or truncated")
        if not _checksum_ok(block, where):
            raise ArchiveError(f"{where}: corrupt or truncated archive (header checksum); rebuild or re-download it")
        if block[156:157] in (b"x", b"X") or block[156:157] == b"g":
            size = _octal(block[124:136], "size", where)
            if block[156:157] == b"g" or size > MAX_PAX:
                raise ArchiveError(f"{where}: global or oversized pax header; edgeseg archives carry none")
            if pax_pending:
                raise ArchiveError(f"{where}: two pax headers in a row; corrupt or hostile archive")
            pax_pending = True
            pax = _parse_pax(stream.read(size), where)
            stream.skip_padding(size)
            if any(k.startswith("GNU.sparse") for k in pax):
                raise ArchiveError(f"{where}: a sparse member; edgeseg archives hold only regular files")
            continue
        kind = block[156:157]
        name = _member_name(block, pax, where)
        size = _octal(block[124:136], "size", where)
        if "size" in pax:
            raw = pax["size"]
            if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
                raise ArchiveError(f"{where}: member {name[:80]!r} has a pax size {raw[:20]!r}; corrupt or hostile archive")
            size = int(raw)
        pax, pax_pending = {}, False
        if kind in (b"0", b"\x00", b"7"):
            yield Member(name.rstrip("/") if kind != b"\x00" else name, size, "file")
        elif kind == b"5":
            yield Member(name.rstrip("/"), 0, "dir")
        else:
            what = {b"1": "link (hard link)", b"2": "link (symbolic link)", b"3": "character device", b"4": "block device",
                    b"6": "FIFO", b"L": "GNU long name", b"K": "GNU long link name"}.get(kind, f"type {kind!r} member")
            raise ArchiveError(f"{where}: member {name[:80]!r} is a {what}; edgeseg archives hold only regular files")


def _member_name(block: bytes, pax: dict[str, str], where: str) -> str:
    if "path" in pax:
        return pax["path"]
    raw = block[0:100].split(b"\x00", 1)[0]
    if block[257:263] == b"ustar\x00":  # POSIX: a prefix field extends the name
        prefix = block[345:500].split(b"\x00", 1)[0]
        if prefix:
            raw = prefix + b"/" + raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ArchiveError(f"{where}: member name {raw[:80]!r} is not UTF-8; corrupt or hostile archive") from None


def _open(path: Path, where: str) -> Tuple[BinaryIO, BinaryIO]:
    """The raw file and a stream of its tar bytes (gunzipped when it is gzip)."""
    try:
        raw = open(path, "rb")
    except OSError as exc:
        raise ArchiveError(f"{where}: cannot read ({exc.strerror or exc})") from None
    magic = raw.read(6)
    raw.seek(0)
    if magic[:2] == b"\x1f\x8b":
        return raw, gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00" or magic[:4] == b"\x28\xb5\x2f\xfd":
        raw.close()
        raise ArchiveError(f"{where}: compressed with bzip2, xz or zstd; edgeseg archives are .tar.gz")
    return raw, raw


def _write_member(stream: _Stream, dest: Path, name: str, size: int, sha256: str) -> None:
    """Stream ``size`` bytes into a new file ``dest/name``, hashing them; refuse a mismatch."""
    target = dest / name
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
    digest = hashlib.sha256()
    with os.fdopen(fd, "wb") as out:
        left = size
        while left:
            chunk = stream.read(min(_CHUNK, left))
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    if digest.hexdigest() != sha256:
        raise ArchiveError(f"{stream.where}: {name} does not match its sha256 in the manifest (altered or corrupt); "
                           "rebuild or re-download the archive")


def _read_manifest(stream: _Stream, members: Iterator[Member]) -> Tuple[Manifest, bytes]:
    """The first member, which must be ``manifest.json``, read and validated (nothing written)."""
    where = stream.where
    first = next(members, None)
    if first is None:
        raise ArchiveError(f"{where}: no {MANIFEST_NAME}; not an edgeseg archive")
    if first.name != MANIFEST_NAME or first.kind != "file":
        raise ArchiveError(
            f"{where}: the first member is {first.name[:80]!r}, not {MANIFEST_NAME}; "
            "not an edgeseg archive (or repacked by hand: open the unpacked folder instead)"
        )
    if first.size > LIMITS.manifest_bytes:
        raise ArchiveError(f"{where}: {MANIFEST_NAME} is {first.size:,} bytes, over the limit of {LIMITS.manifest_bytes:,}")
    manifest_bytes = stream.read(first.size)
    stream.skip_padding(first.size)
    return Manifest.parse(manifest_bytes, f"{where}: {MANIFEST_NAME}"), manifest_bytes


def read_head(path: Path) -> Tuple[Manifest, bytes, Optional[bytes]]:
    """``manifest.json`` and ``manifest.sig`` of an archive, read without writing anything.

    What a device checks (signature, contract, version) before it unpacks a
    byte: the two members ``edgeseg build`` writes first. The rest of the
    archive is not read.

    Returns:
        ``(manifest, manifest bytes, manifest.sig bytes or None)``.

    Raises:
        ArchiveError: not an edgeseg archive, corrupt headers, an invalid manifest.
    """
    with _reading(path) as stream:
        members = _headers(stream)
        manifest, manifest_bytes = _read_manifest(stream, members)
        second = next(members, None)
        sig: bytes | None = None
        if second is not None and second.name == SIGNATURE_NAME and second.kind == "file":
            if second.size > LIMITS.document_bytes:
                raise ArchiveError(f"{stream.where}: an oversized {SIGNATURE_NAME}; corrupt or hostile archive")
            sig = stream.read(second.size)
        return manifest, manifest_bytes, sig


@contextmanager
def _reading(path: Path, disk_full: str = "") -> Iterator[_Stream]:
    """The archive as a tar stream; read errors become one :class:`ArchiveError` line, the files are closed on exit.

    ``disk_full``: the message for ENOSPC/EDQUOT (writing while reading, :func:`extract`); "" = a read error.
    """
    where = str(path)
    raw, fh = _open(path, where)
    try:
        yield _Stream(fh, where)
    except OSError as exc:
        if disk_full and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ArchiveError(f"{where}: {disk_full}") from None
        raise ArchiveError(f"{where}: corrupt or truncated archive ({exc.strerror or exc}); rebuild or re-download it") from None
    except (EOFError, zlib.error) as exc:
        raise ArchiveError(f"{where}: corrupt or truncated archive ({exc}); rebuild or re-download it") from None
    finally:
        fh.close()
        raw.close()


def extract(path: Path, dest: Path) -> Tuple[Manifest, bytes, Optional[bytes]]:
    """Unpack an edgeseg archive into the empty folder ``dest``, checking it against its manifest as it goes.

    Args:
        path: ``.tar.gz`` (or uncompressed ``.tar``) written by ``edgeseg build``.
        dest: an empty folder private to the caller (removed by the caller on error).

    Returns:
        ``(manifest, manifest bytes, manifest.sig bytes or None)``; ``dest`` then
        holds exactly the listed files plus ``manifest.json`` (and ``manifest.sig``).

    Raises:
        ArchiveError: truncated or corrupt stream, a header edgeseg does not
            write, a member that is not listed / listed twice / of another size
            or sha256 / missing, an invalid manifest, or too little free space.
    """
    where = str(path)
    with _reading(path, f"disk full while unpacking into {dest.parent}; free space or set TMPDIR") as stream:
        members = _headers(stream)
        manifest, manifest_bytes = _read_manifest(stream, members)
        free = shutil.disk_usage(dest).free
        if manifest.total_bytes + SPACE_MARGIN > free:
            raise ArchiveError(f"{where}: unpacking needs {manifest.total_bytes / 1e6:.1f} MB, {dest.parent} has "
                               f"{free / 1e6:.1f} MB free; free space or set TMPDIR to a larger disk")
        sig: bytes | None = None
        seen: set[str] = set()
        seen_dirs: set[str] = set()
        parents = {"/".join(rel.split("/")[:i]) for rel in manifest.files for i in range(1, rel.count("/") + 1)}
        for member in members:
            if member.name == SIGNATURE_NAME and member.kind == "file":
                if sig is not None or member.size > LIMITS.document_bytes:
                    raise ArchiveError(f"{where}: a second or oversized {SIGNATURE_NAME}; corrupt or hostile archive")
                sig = stream.read(member.size)
                stream.skip_padding(member.size)
                continue
            name = check_rel_path(member.name, f"{where}: member")
            if member.kind == "dir":
                if name not in parents or name in seen_dirs:
                    raise ArchiveError(f"{where}: folder {name[:80]!r} holds no listed file or appears twice "
                                       "(tampered archive?)")
                seen_dirs.add(name)
                continue
            entry = manifest.files.get(name)
            if entry is None:
                raise ArchiveError(f"{where}: member {name[:80]!r} is not listed in the manifest (tampered archive?); "
                                   "nothing of it was unpacked")
            if name in seen:
                raise ArchiveError(f"{where}: member {name[:80]!r} appears twice (tampered archive?)")
            if member.size != entry.size:
                raise ArchiveError(f"{where}: {name} is {member.size:,} bytes in the archive but {entry.size:,} in the "
                                   "manifest (altered or corrupt); rebuild or re-download the archive")
            seen.add(name)
            _write_member(stream, dest, name, member.size, entry.sha256)
            stream.skip_padding(member.size)
        missing = sorted(manifest.files.keys() - seen)
        if missing:
            raise ArchiveError(f"{where}: {missing[0]} is missing (truncated or altered archive); rebuild or re-download it")
        (dest / MANIFEST_NAME).write_bytes(manifest_bytes)
        if sig is not None:
            (dest / SIGNATURE_NAME).write_bytes(sig)
        return manifest, manifest_bytes, sig
