"""Where edgeseg keeps what it makes once: ``$EDGESEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgeseg``, else
``~/.cache/edgeseg`` (XDG Base Directory spec). Users: the quantized-model cache (:mod:`edgeseg.cache`) and
converter venvs (:mod:`edgeseg.tflite_import`). Imports nothing of edgeseg, so any module may use it."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """The edgeseg cache folder (see module doc); not created here."""
    if os.environ.get("EDGESEG_CACHE_DIR"):
        return Path(os.environ["EDGESEG_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeseg"
