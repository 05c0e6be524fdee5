"""Shared helpers for the TOML-backed schemas (targets, model specs, toolchains)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError

__all__ = ["Strict", "load_toml", "validate"]

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for schema models: unknown keys are errors, types are strict, instances are frozen.

    Strict means a value must already have the key's type: ``keep_releases = "3"``,
    ``dynamic = "yes"`` or ``port = "42509"`` are errors, not silently converted
    (an integer is still accepted where a float is expected, and a TOML array
    where a tuple is, since :func:`validate` checks the document as JSON).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


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
        document = json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:  # a TOML date/time, NaN or inf where edgeseg takes none
        raise ConfigError(f"{source}: a value is not a plain number, string, boolean, array or table ({exc})") from None
    try:
        return model.model_validate_json(document)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{source}: {loc}: {msg}{more}") from None
