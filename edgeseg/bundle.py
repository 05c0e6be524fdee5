"""Archive writing: manifest with every file's sha256, deterministic ``.tar.gz``.

Same staged files → byte-identical archive: members sorted by path, regular
files only, mode 0644, uid/gid 0, empty owner names, mtime fixed to
``$SOURCE_DATE_EPOCH`` (0 when unset; reproducible-builds.org convention),
gzip header without name or time. The archive is written to a temporary name
and renamed into place, so an interrupted build never leaves a partial archive
under the final name.
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

__all__ = ["write_manifest", "pack", "copy_runtime", "runtime_pyproject"]


def _files(stage: Path) -> list[Path]:
    return sorted(
        (p for p in stage.rglob("*") if p.is_file() and "__pycache__" not in p.parts),
        key=lambda p: p.relative_to(stage).as_posix(),
    )


def write_manifest(stage: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the ``files`` table (sha256 and size of every staged file) and write ``manifest.json``.

    Returns:
        The manifest as written.
    """
    files = {
        p.relative_to(stage).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in _files(stage)
        if p.name != MANIFEST_NAME
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


def runtime_pyproject(version: str, requirements: list[str]) -> str:
    """``pyproject.toml`` that makes the archive's ``runtime/`` folder pip-installable."""
    deps = ", ".join(json.dumps(r) for r in requirements)
    return (
        "[build-system]\n"
        'requires = ["setuptools>=70.1"]\n'
        'build-backend = "setuptools.build_meta"\n\n'
        "[project]\n"
        'name = "edgeseg-runtime"\n'
        f'version = "{version}"\n'
        'requires-python = ">=3.9"\n'
        f"dependencies = [{deps}]\n\n"
        "[project.scripts]\n"
        'edgeseg = "edgeseg_runtime.cli:main"\n\n'
        "[tool.setuptools.packages.find]\n"
        'include = ["edgeseg_runtime*"]\n'
    )


def copy_runtime(dest: Path, version: str, requirements: list[str]) -> None:
    """Copy the ``edgeseg_runtime`` package sources into ``dest`` (the archive's ``runtime/``)."""
    import edgeseg_runtime

    src = Path(edgeseg_runtime.__file__).resolve().parent
    for p in sorted(src.rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        out = dest / "edgeseg_runtime" / p.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, out)
    (dest / "pyproject.toml").write_text(runtime_pyproject(version, requirements), encoding="utf-8")
