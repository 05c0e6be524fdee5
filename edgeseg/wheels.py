"""Dependency wheels for offline devices (profile ``[platform] offline = true``).

At build time, ``pip download`` fetches the runtime's requirements as wheels
for the device's platform (its toolchain's Python version and every pip
platform tag spelled out: pip does not widen tags by itself, and with too few
it silently picks old versions) into the archive's ``wheels/``. The device
installs them with ``pip install --no-index --find-links wheels``
(:mod:`edgeseg_runtime.install`), so it needs no index at all.

Source: pip's ``download`` documentation (``--platform``, ``--python-version``,
``--only-binary=:all:``) and PEP 600 for manylinux tags.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .errors import ConfigError, ToolchainError
from .targets import Target
from .toolchains import load_toolchain

__all__ = ["fetch_wheels", "pip_download_argv"]


def pip_download_argv(requirements: list[str], target: Target, dest: Path) -> list[str]:
    """The ``pip download`` command for a target's platform.

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
    return argv + list(requirements)


def fetch_wheels(requirements: list[str], target: Target, dest: Path) -> list[Path]:
    """Download the wheels of ``requirements`` (and their dependencies) for ``target``'s platform.

    Args:
        requirements: pip requirement strings (the runtime's).
        target: profile whose ``platform.toolchain`` gives Python version and tags.
        dest: folder to fill (created).

    Returns:
        The wheel files, sorted by name.

    Raises:
        ConfigError: no toolchain in the profile.
        ToolchainError: pip failed (no index reachable, no wheel for the
            platform); carries pip's last lines.
    """
    dest.mkdir(parents=True, exist_ok=True)
    argv = pip_download_argv(requirements, target, dest)
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " | ".join(line for line in proc.stderr.strip().splitlines() if "WARNING" not in line)[-600:]
        raise ToolchainError(f"pip download of the device's wheels failed ({' '.join(argv[2:4])} ...): {tail}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ToolchainError(f"pip download wrote no wheels into {dest}")
    return wheels
