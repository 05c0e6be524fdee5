"""Shared helpers for the TOML-backed schemas (targets, model specs, toolchains)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError

__all__ = ["Strict", "load_toml", "validate"]

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for schema models: unknown keys are errors, instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def load_toml(path: Path, what: str) -> dict[str, Any]:
    """Read a TOML file.

    Raises:
        ConfigError: missing file or invalid TOML (with line and column).
    """
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def validate(model: type[M], data: dict[str, Any], source: str) -> M:
    """Validate ``data`` against ``model``, turning pydantic errors into one ConfigError line.

    Raises:
        ConfigError: naming the first offending key, e.g. ``targets/x.toml: input.size: ...``.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{source}: {loc}: {msg}{more}") from None
