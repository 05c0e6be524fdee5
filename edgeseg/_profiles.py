"""Finding the TOML profiles that ship in ``targets/`` and ``toolchains/``."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

__all__ = ["profile_dir", "find_profile", "list_profiles"]

_REPO = Path(__file__).resolve().parent.parent


def profile_dir(kind: str) -> Path:
    """Folder of ``kind`` profiles ("targets" or "toolchains").

    ``$EDGESEG_<KIND>_DIR`` when set, else the checkout's top-level folder
    (edgeseg is installed editable from its repository).
    """
    env = os.environ.get(f"EDGESEG_{kind.upper()}_DIR")
    if env:
        return Path(env)
    return _REPO / kind


def list_profiles(kind: str) -> list[str]:
    """Names of the available profiles of a kind."""
    return sorted(p.stem for p in profile_dir(kind).glob("*.toml"))


def find_profile(name_or_path: str | Path, kind: str, what: str) -> Path:
    """Resolve a profile name or a path to its TOML file.

    Raises:
        ConfigError: no such profile; lists the available ones.
    """
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.parent != Path("."):
        if not p.is_file():
            raise ConfigError(f"{what} file {p} does not exist")
        return p
    path = profile_dir(kind) / f"{name_or_path}.toml"
    if not path.is_file():
        available = ", ".join(list_profiles(kind)) or "none"
        raise ConfigError(f"unknown {what} {str(name_or_path)!r}; available: {available} (in {profile_dir(kind)})")
    return path
