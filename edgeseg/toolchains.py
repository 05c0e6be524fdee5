"""Toolchain profiles (``toolchains/*.toml``): a device platform's facts.

A toolchain says what a device runs, so that the build can pick wheels and
compilers for it::

    name = "linux-x86_64-py311"
    os = "linux"
    arch = "x86_64"
    python = "3.11"
    libc = "glibc"
    glibc = "2.36"
    pip_platforms = ["manylinux_2_36_x86_64", ..., "manylinux2014_x86_64"]   # every tag, pip does not widen them
    cc = ""                                                                  # optional cross compiler

Source of the tag rules: PEP 600 (manylinux_x_y), pip ``download --platform``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ._profiles import find_profile
from ._schema import Strict, load_toml, validate

__all__ = ["Toolchain", "load_toolchain"]


class Toolchain(Strict):
    """One device platform."""

    name: str
    description: str = ""
    os: Literal["linux", "macos", "ios", "android", "windows"]
    arch: Literal["x86_64", "aarch64", "arm64", "armv7l"]
    python: str = Field(pattern=r"^3\.\d+$")
    libc: Literal["glibc", "musl", "darwin", "bionic", "msvc"] = "glibc"
    glibc: str | None = Field(default=None, pattern=r"^2\.\d+$")
    pip_platforms: list[str] = Field(min_length=1)
    cc: str = ""
    cxx: str = ""


def load_toolchain(name_or_path: str | Path) -> Toolchain:
    """Load ``toolchains/<name>.toml`` (or a path to a TOML file).

    Raises:
        ConfigError: unknown name, invalid TOML, unknown key or bad value.
    """
    path = find_profile(name_or_path, "toolchains", "toolchain")
    return validate(Toolchain, load_toml(path, "toolchain"), str(path))
