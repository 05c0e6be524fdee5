"""Archive writing: manifest with every file's sha256, deterministic ``.tar.gz``.

Same staged files → byte-identical archive: ``manifest.json`` first (the
device reads it before anything else, see :mod:`edgeseg_runtime.tarball`),
``manifest.sig`` second when signed, then the other files sorted by path;
regular files only, mode 0644, uid/gid 0, empty owner names, mtime fixed to
``$SOURCE_DATE_EPOCH`` (0 when unset; reproducible-builds.org convention),
gzip header without name or time. The archive is written to a temporary name
and renamed into place, so an interrupted build never leaves a partial archive
under the final name.

The archive's ``runtime/`` holds the runtime's sources (run in place with
``PYTHONPATH=runtime python -B``, as the device installer does) and a wheel of
them (``pip install runtime/edgeseg_runtime-*.whl``): pip installs a wheel
without writing anything next to it, whereas building from a source folder
leaves ``build/`` and ``*.egg-info`` inside the archive, which then no longer
holds exactly its listed files.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

from edgeseg_runtime.archive import MANIFEST_NAME, sha256_file
from edgeseg_runtime.contract import SIGNATURE_NAME

__all__ = ["write_manifest", "pack", "copy_runtime", "runtime_wheel"]


def _files(stage: Path) -> list[Path]:
    """Staged files in archive order: manifest, signature, then the rest by path."""
    first = {MANIFEST_NAME: 0, SIGNATURE_NAME: 1}
    return sorted(
        (p for p in stage.rglob("*") if p.is_file() and "__pycache__" not in p.parts),
        key=lambda p: (first.get(p.relative_to(stage).as_posix(), 2), p.relative_to(stage).as_posix()),
    )


def write_manifest(stage: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the ``files`` table (sha256 and size of every staged file) and write ``manifest.json``.

    Returns:
        The manifest as written.
    """
    files = {
        p.relative_to(stage).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in _files(stage)
        if p.relative_to(stage).as_posix() not in (MANIFEST_NAME, SIGNATURE_NAME)
    }
    full = {**manifest, "files": files}
    (stage / MANIFEST_NAME).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return full


def pack(stage: Path, dest: Path) -> Path:
    """Pack a staged folder into a deterministic ``.tar.gz`` at ``dest`` (atomically).

    Returns:
        ``dest``.
    """
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial")
    try:
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=mtime, compresslevel=9) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for p in _files(stage):
                    info = tarfile.TarInfo(p.relative_to(stage).as_posix())
                    info.size = p.stat().st_size
                    info.mtime = mtime
                    info.mode = 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    with open(p, "rb") as fh:
                        tar.addfile(info, fh)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


#: fixed timestamp of wheel members (the earliest a zip can hold): a rebuild gives the same bytes
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def runtime_wheel(dest_dir: Path, version: str, requirements: list[str]) -> Path:
    """Write the runtime as a deterministic pure-Python wheel ``edgeseg_runtime-<version>-py3-none-any.whl``.

    Members sorted, fixed timestamps and modes, ``RECORD`` with urlsafe-base64
    sha256 digests; the console script ``edgeseg`` runs ``edgeseg_runtime.cli:console``.

    Returns:
        The wheel's path.

    Source: PEP 427 (wheel format), PEP 376 (RECORD), core metadata 2.1 (PEP 566).
    """
    import base64
    import hashlib
    import zipfile

    import edgeseg_runtime

    src = Path(edgeseg_runtime.__file__).resolve().parent
    dist = f"edgeseg_runtime-{version}"
    members: dict[str, bytes] = {
        f"edgeseg_runtime/{p.relative_to(src).as_posix()}": p.read_bytes()
        for p in sorted(src.rglob("*.py")) if "__pycache__" not in p.parts
    }
    meta = ["Metadata-Version: 2.1", "Name: edgeseg-runtime", f"Version: {version}", "Requires-Python: >=3.9",
            "Summary: Minimal on-device runtime for edgeseg archives (numpy + Pillow + one backend)",
            *(f"Requires-Dist: {r}" for r in requirements)]
    members[f"{dist}.dist-info/METADATA"] = ("\n".join(meta) + "\n").encode()
    members[f"{dist}.dist-info/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: edgeseg\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    members[f"{dist}.dist-info/entry_points.txt"] = b"[console_scripts]\nedgeseg = edgeseg_runtime.cli:console\n"

    def record_line(name: str, data: bytes) -> str:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        return f"{name},sha256={digest},{len(data)}"

    record = [record_line(n, d) for n, d in sorted(members.items())] + [f"{dist}.dist-info/RECORD,,"]
    members[f"{dist}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in sorted(members.items()):
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data, compresslevel=9)
    return path


def copy_runtime(dest: Path, version: str, requirements: list[str]) -> None:
    """Copy the ``edgeseg_runtime`` sources into ``dest`` (the archive's ``runtime/``) and add its wheel."""
    import edgeseg_runtime

    src = Path(edgeseg_runtime.__file__).resolve().parent
    for p in sorted(src.rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        out = dest / "edgeseg_runtime" / p.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, out)
    runtime_wheel(dest, version, requirements)
