"""Finding the TOML profiles: the user's (``$EDGESEG_TARGETS_DIR``), then those shipped with edgeseg.

The shipped profiles are ``targets/*.toml`` and ``toolchains/*.toml`` at the
top of the checkout; a wheel carries them as package data of
``edgeseg._shipped.targets`` / ``edgeseg._shipped.toolchains`` (see
``pyproject.toml``), read with :mod:`importlib.resources`.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from .errors import ConfigError

__all__ = ["profile_dirs", "find_profile", "list_profiles", "shipped_dir"]

_CHECKOUT = Path(__file__).resolve().parent.parent


def shipped_dir(kind: str) -> Path:
    """Folder of the ``kind`` profiles shipped with edgeseg ("targets" or "toolchains").

    The checkout's top-level folder when edgeseg runs from its repository
    (editable install), else the package data of an installed wheel.
    """
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / kind).is_dir():
        return _CHECKOUT / kind
    return Path(str(resources.files("edgeseg").joinpath("_shipped", kind)))


def profile_dirs(kind: str) -> list[Path]:
    """Folders searched for ``kind`` profiles, first match wins: ``$EDGESEG_<KIND>_DIR`` (when set), then the shipped ones."""
    env = os.environ.get(f"EDGESEG_{kind.upper()}_DIR")
    return ([Path(env)] if env else []) + [shipped_dir(kind)]


def list_profiles(kind: str) -> list[str]:
    """Names of the available profiles of a kind (the user's and the shipped ones)."""
    return sorted({p.stem for d in profile_dirs(kind) for p in d.glob("*.toml")})


def find_profile(name_or_path: str | Path, kind: str, what: str) -> Path:
    """Resolve a profile name or a path (``./mine.toml``, anything with a folder or ``.toml``) to its TOML file.

    Raises:
        ConfigError: no such profile; lists the available ones and where they were looked for.
    """
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.parent != Path("."):
        if not p.is_file():
            raise ConfigError(f"{what} file {p} does not exist")
        return p
    dirs = profile_dirs(kind)
    for d in dirs:
        path = d / f"{name_or_path}.toml"
        if path.is_file():
            return path
    available = ", ".join(list_profiles(kind)) or "none"
    where = " and ".join(str(d) for d in dirs)
    raise ConfigError(f"unknown {what} {str(name_or_path)!r}; available: {available} (in {where})")
