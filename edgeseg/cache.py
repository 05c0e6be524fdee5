"""Cache of calibrated (quantized) models, so a rebuild does not recalibrate.

An entry is the model files a backend wrote for an int8 build plus
``entry.json`` (the :class:`~edgeseg.backends.ModelFiles` record, the files'
sha256 and the key's parts). The key
is the sha256 of a JSON document of everything the result depends on: shared
ONNX sha256, calibration set digest (pre-processing + image list and
contents), method and options, backend and its version, precision.

Location: ``$EDGESEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgeseg``, else
``~/.cache/edgeseg`` (XDG Base Directory spec); entries live in
``quantized/<key>/``. Entries are written to a temporary folder and renamed
into place, so an interrupted build never leaves a half entry; an entry whose
files no longer match their sha256 is ignored (and replaced).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgeseg_runtime.archive import sha256_file

from .backends import ModelFiles
from .cache_dir import cache_root

__all__ = ["cache_root", "cache_key", "QuantCache"]


def cache_key(parts: dict[str, Any]) -> str:
    """sha256 hex of ``parts`` as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class QuantCache:
    """Quantized-model entries under ``<root>/quantized/<key>/``.

    Args:
        root: cache folder; None = :func:`cache_root`.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.dir = (root or cache_root()) / "quantized"

    def fetch(self, key: str, out_dir: Path) -> ModelFiles | None:
        """Copy a cached entry's files into ``out_dir``.

        Returns:
            The entry's :class:`ModelFiles`, or None when there is no valid entry.
        """
        entry = self.dir / key
        try:
            meta = json.loads((entry / "entry.json").read_text(encoding="utf-8"))
            digests: dict[str, str] = meta["sha256"]
            files = ModelFiles(net=meta["net"], weights=meta["weights"], files=tuple(meta["files"]), details=meta["details"])
            if set(digests) != set(files.files) or any(sha256_file(entry / n) != d for n, d in digests.items()):
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        for name in files.files:
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(entry / name, out_dir / name)
        return files

    def fetch_json(self, name: str) -> dict[str, Any] | None:
        """A small JSON document stored with :meth:`store_json` (None when missing or unreadable)."""
        try:
            doc = json.loads((self.dir / f"{name}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def store_json(self, name: str, doc: dict[str, Any]) -> None:
        """Save a small JSON document (a mixed-precision search outcome) atomically next to the entries."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{name}.{os.getpid()}.tmp"
        try:
            tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str), encoding="utf-8")
            os.replace(tmp, self.dir / f"{name}.json")
        finally:
            tmp.unlink(missing_ok=True)

    def store(self, key: str, out_dir: Path, files: ModelFiles, parts: dict[str, Any]) -> Path:
        """Save the model files a backend wrote into ``out_dir`` as the entry for ``key``; returns its folder."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=self.dir))
        try:
            for name in files.files:
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(out_dir / name, tmp / name)
            meta = {
                "net": files.net,
                "weights": files.weights,
                "files": list(files.files),
                "details": files.details,
                "sha256": {n: sha256_file(tmp / n) for n in files.files},
                "key_parts": parts,
            }
            (tmp / "entry.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str), encoding="utf-8")
            final = self.dir / key
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            return final
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
