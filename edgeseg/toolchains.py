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

A platform PyPI does not serve (32-bit ARM) also says how to make its wheels
(:mod:`edgeseg.crossbuild`): the cross compiler (``cc``, ``cxx``, ``flags``,
``multiarch``, ``cmake_toolchain``), the Debian release whose packages give
numpy and Pillow (``[debian]``), and the sources compiled here (``[[source]]``,
each a PyPI sdist pinned by URL and sha256)::

    cc = "arm-linux-gnueabihf-gcc"
    flags = "-march=armv7-a -mfloat-abi=hard -mfpu=neon"
    cmake_toolchain = "linux-armhf-py311.cmake"        # next to this file
    [debian]
    suite = "bookworm"
    arch = "armhf"
    packages = { numpy = "python3-numpy", pillow = "python3-pil" }
    [[source]]
    name = "ncnn"
    url = "https://files.pythonhosted.org/.../ncnn-1.0.20261020.tar.gz"
    sha256 = "ad8cdd63..."

Source of the tag rules: PEP 600 (manylinux_x_y), pip ``download --platform``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from ._profiles import find_profile
from ._schema import Strict, load_toml, validate

__all__ = ["DebianPackages", "Source", "Toolchain", "load_toolchain"]


class DebianPackages(Strict):
    """Debian packages that give the device's Python distributions (:func:`edgeseg.crossbuild.debian_wheels`)."""

    suite: str = "bookworm"
    arch: str  # Debian's architecture name (armhf, arm64)
    mirror: str = "http://deb.debian.org/debian"
    packages: dict[str, str] = Field(default_factory=dict)  # distribution -> Debian package


class Source(Strict):
    """A PyPI sdist compiled for the device (:func:`edgeseg.crossbuild.build_source`)."""

    name: Literal["ncnn"]
    version: str
    url: str = Field(pattern=r"^https://files\.pythonhosted\.org/")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    cmake_args: list[str] = Field(default_factory=list)


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
    flags: str = ""  # C/C++ flags for every compiled file (ISA, float ABI)
    multiarch: str = ""  # Debian multiarch triplet (arm-linux-gnueabihf)
    cmake_toolchain: str = ""  # CMake toolchain file, relative to this TOML
    debian: DebianPackages | None = None
    source: list[Source] = Field(default_factory=list)
    path: Path | None = Field(default=None, exclude=True)  # the TOML it was read from (set by load_toolchain)

    @property
    def cross(self) -> bool:
        """True when the device's wheels are (partly) made here rather than downloaded."""
        return bool(self.source or self.debian)


def load_toolchain(name_or_path: str | Path) -> Toolchain:
    """Load ``toolchains/<name>.toml`` (or a path to a TOML file).

    Raises:
        ConfigError: unknown name, invalid TOML, unknown key or bad value.
    """
    path = find_profile(name_or_path, "toolchains", "toolchain")
    tc = validate(Toolchain, load_toml(path, "toolchain"), str(path))
    return tc.model_copy(update={"path": path})
