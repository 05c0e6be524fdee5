"""Dependency wheels for offline devices (profile ``[platform] offline = true``).

At build time, ``pip download`` fetches the runtime's requirements as wheels
for the device's platform (its toolchain's Python version and every pip
platform tag spelled out: pip does not widen tags by itself, and with too few
it silently picks old versions) into the archive's ``wheels/``. The device
installs them with ``pip install --no-index --find-links wheels``
(:mod:`edgeseg_runtime.install`), so it needs no index at all.

A toolchain PyPI does not serve (``[[source]]``/``[debian]``, e.g. 32-bit ARM)
gets its wheels from :func:`edgeseg.crossbuild.provide` (compiled or repacked
here, cached) and pip resolves the requirements among those alone
(``--no-index --find-links``), so no wheel of another build can slip in.

Source: pip's ``download`` documentation (``--platform``, ``--python-version``,
``--only-binary=:all:``) and PEP 600 for manylinux tags.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError, ToolchainError
from .targets import Target
from .toolchains import load_toolchain

__all__ = ["fetch_wheels", "pip_download_argv"]


def pip_download_argv(requirements: list[str], target: Target, dest: Path, find_links: list[Path] = ()) -> list[str]:
    """The ``pip download`` command for a target's platform (only ``find_links`` folders when given).

    Raises:
        ConfigError: the profile names no toolchain (needed for the platform tags).
    """
    if target.platform.toolchain is None:
        raise ConfigError(f"target {target.name!r}: offline = true needs [platform] toolchain for the wheel tags")
    tc = load_toolchain(target.platform.toolchain)
    argv = [
        sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet",
        "--only-binary=:all:", "--implementation", "cp", "--python-version", tc.python, "--dest", str(dest),
    ]
    for tag in tc.pip_platforms:
        argv += ["--platform", tag]
    if find_links:
        argv.append("--no-index")
        for folder in sorted(set(find_links)):
            argv += ["--find-links", str(folder)]
    return argv + list(requirements)


def fetch_wheels(requirements: list[str], target: Target, dest: Path, ncnn_params: list[Path] | None = None,
                 report: Callable[[str], None] = lambda _l: None) -> tuple[list[Path], list[dict[str, Any]]]:
    """The wheels of ``requirements`` (and their dependencies) for ``target``'s platform.

    Args:
        requirements: pip requirement strings (the runtime's).
        target: profile whose ``platform.toolchain`` gives Python version and tags.
        dest: folder to fill (created).
        ncnn_params: for a toolchain that compiles ncnn, the archive's ``.param`` files: only their
            layers are compiled (:func:`edgeseg.crossbuild.ncnn_layers_of`); None compiles all.
        report: progress lines of a cross build.

    Returns:
        The wheel files sorted by name, and the ``build.json`` of each wheel made here (empty when
        all came from the index).

    Raises:
        ConfigError: no toolchain in the profile.
        ToolchainError: pip failed (no index reachable, no wheel for the
            platform; carries pip's last lines), or a cross build failed.
    """
    dest.mkdir(parents=True, exist_ok=True)
    tc = load_toolchain(target.platform.toolchain) if target.platform.toolchain else None
    built: list[dict[str, Any]] = []
    links: list[Path] = []
    if tc is not None and tc.cross:
        from .crossbuild import ncnn_layers_of, provide

        layers = ncnn_layers_of(ncnn_params) if ncnn_params else None
        made = provide(tc, layers, report)
        built = [b.info for b in made]
        links = [b.wheel.parent for b in made]
    argv = pip_download_argv(requirements, target, dest, links)
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " | ".join(line for line in proc.stderr.strip().splitlines() if "WARNING" not in line)[-600:]
        raise ToolchainError(f"pip download of the device's wheels failed ({' '.join(argv[2:4])} ...): {tail}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ToolchainError(f"pip download wrote no wheels into {dest}")
    return wheels, [info for info in built if info["wheel"] in {w.name for w in wheels}]
