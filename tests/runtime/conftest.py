"""The runtime's own tests, on one interpreter, against one archive built by the host.

``tests/test_device_pythons.py`` runs ``<python> -B -m pytest tests/runtime`` under
each device Python (pyenv 3.9 and 3.10, the emulated Debian 12 arm64 root's 3.11.2,
the host's own) with:

* ``EDGESEG_TEST_ARCHIVE``: a ``.tar.gz`` written by ``edgeseg build``;
* ``EDGESEG_TEST_IMAGES``: a folder of photos (any size and format the runtime reads);
* ``EDGESEG_TEST_TIMEOUT`` (optional): seconds per runtime command (default 300;
  the emulated arm64 root needs more).

Only the standard library, numpy, Pillow, pytest and the archive's backend are
imported here, never the host package ``edgeseg``. At start-up
(:func:`pytest_configure`) the runtime's sources are read out of the ``.tar.gz``
(``tarfile``, reading only: no ``extractall``, whose ``filter=`` Debian 12's 3.11.2
lacks), used once to open the archive with its own reader (``Archive.open``, every
sha256 checked) and copy the checked tree to a temporary folder, then forgotten.
From then on ``edgeseg_runtime`` is imported from ``<unpacked>/runtime``, in this
process and in every ``python -B -m edgeseg_runtime`` it starts: the tests prove
what ships, not the repository's copy. ``-B`` everywhere: a ``__pycache__`` in the
unpacked archive would make it invalid.

Tests marked ``extended`` are left out on the emulated arm64 root (``-m "not
extended"``), where every process is ~100-400x slower.

Without ``EDGESEG_TEST_ARCHIVE`` (the host's own ``pytest`` run) nothing here is
collected: ``tests/test_device_pythons.py`` runs these tests, the host's Python included.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ARCHIVE_ENV = "EDGESEG_TEST_ARCHIVE"
IMAGES_ENV = "EDGESEG_TEST_IMAGES"
TIMEOUT_ENV = "EDGESEG_TEST_TIMEOUT"

if not os.environ.get(ARCHIVE_ENV):
    collect_ignore_glob = ["test_*.py"]


@dataclass(frozen=True)
class Shipped:
    """The archive under test: the ``.tar.gz``, its checked unpacked copy and the photos."""

    archive: Path
    unpacked: Path
    images: Path
    timeout: float

    @property
    def runtime(self) -> Path:
        """The archive's ``runtime/`` folder (what ``PYTHONPATH`` names)."""
        return self.unpacked / "runtime"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment of a runtime process: the archive's runtime first on ``PYTHONPATH``, no bytecode written."""
        paths = [str(self.runtime)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONDONTWRITEBYTECODE": "1", **extra}

    def python(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """``<this python> -B ARGS`` with the archive's runtime importable (a timeout always)."""
        return subprocess.run([sys.executable, "-B", *args], capture_output=True, text=True, env=self.env(),
                              cwd=cwd, timeout=self.timeout, check=False)

    def cli(self, *args: Any) -> subprocess.CompletedProcess:
        """``python -B -m edgeseg_runtime ARGS``: the device-side command, real exit code and output."""
        return self.python("-m", "edgeseg_runtime", *map(str, args))

    def photos(self) -> list[Path]:
        suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
        return sorted(p for p in self.images.iterdir() if p.suffix.lower() in suffixes)


_STATE: dict[str, Any] = {}


def _read_runtime_sources(archive: Path, into: Path) -> None:
    """Copy ``runtime/edgeseg_runtime/**.py`` out of the ``.tar.gz`` into ``into`` (reading members only)."""
    found = 0
    with tarfile.open(archive, "r:gz") as tf:
        for member in tf:
            parts = member.name.split("/")
            if not (member.isfile() and parts[:2] == ["runtime", "edgeseg_runtime"] and member.name.endswith(".py")):
                continue
            assert all(p not in ("", ".", "..") for p in parts), member.name
            dest = into.joinpath(*parts[1:])
            dest.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(member)
            assert src is not None, member.name
            dest.write_bytes(src.read())
            found += 1
    assert found, f"{archive}: no runtime/edgeseg_runtime/*.py in the archive"


def _forget_runtime() -> None:
    for name in [m for m in sys.modules if m == "edgeseg_runtime" or m.startswith("edgeseg_runtime.")]:
        del sys.modules[name]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "extended: beyond the smallest end-to-end set; left out under qemu "
                            "(-m 'not extended')")
    archive_env = os.environ.get(ARCHIVE_ENV)
    if not archive_env:
        return
    archive = Path(archive_env).resolve()
    images = Path(os.environ.get(IMAGES_ENV, "")).resolve()
    if not archive.is_file() or not archive.name.endswith(".tar.gz"):
        raise pytest.UsageError(f"{ARCHIVE_ENV}={archive_env}: not a .tar.gz written by edgeseg build")
    if not os.environ.get(IMAGES_ENV) or not images.is_dir():
        raise pytest.UsageError(f"{IMAGES_ENV}={os.environ.get(IMAGES_ENV)!r}: not a folder of photos")
    sys.dont_write_bytecode = True  # the archive's runtime/ is imported below: no __pycache__ inside it
    _forget_runtime()
    work = Path(tempfile.mkdtemp(prefix="edgeseg-runtime-tests-"))  # removed by pytest_unconfigure
    _STATE["work"] = work
    boot = work / "bootstrap"
    _read_runtime_sources(archive, boot)
    sys.path.insert(0, str(boot))
    try:
        from edgeseg_runtime.archive import Archive

        with Archive.open(archive) as opened:  # the archive's own reader: every member's sha256 checked
            shutil.copytree(opened.root, work / "unpacked")
    except Exception as exc:  # noqa: BLE001  nothing else can run: say why in one place, with where it broke
        shutil.rmtree(work, ignore_errors=True)
        raise pytest.UsageError(
            f"the archive's own runtime cannot open {archive.name} on Python {sys.version.split()[0]} "
            f"({type(exc).__name__}: {exc})\n{''.join(traceback.format_exc(limit=-4))}"
        ) from None
    finally:
        sys.path.remove(str(boot))
        _forget_runtime()
        shutil.rmtree(boot, ignore_errors=True)
    shipped = Shipped(archive=archive, unpacked=work / "unpacked", images=images,
                      timeout=float(os.environ.get(TIMEOUT_ENV, "300")))
    sys.path.insert(0, str(shipped.runtime))
    import edgeseg_runtime

    where = Path(edgeseg_runtime.__file__).resolve().parent
    if where != (shipped.runtime / "edgeseg_runtime").resolve():
        raise pytest.UsageError(f"edgeseg_runtime imported from {where}, not from the archive's runtime/")
    _STATE["shipped"] = shipped


def pytest_unconfigure(config: pytest.Config) -> None:
    work = _STATE.pop("work", None)
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)


def pytest_report_header(config: pytest.Config) -> str | None:
    shipped = _STATE.get("shipped")
    if shipped is None:
        return None
    return f"edgeseg archive under test: {shipped.archive.name} (runtime imported from its runtime/)"


@pytest.fixture(scope="session")
def shipped() -> Shipped:
    """The archive under test (see the module docstring)."""
    return _STATE["shipped"]


def display_size(path: Path) -> tuple[int, int]:
    """(width, height) of a photo as shown: EXIF orientations 5-8 turn it by 90 degrees (read with Pillow)."""
    from PIL import Image

    with Image.open(path) as img:
        w, h = img.size
        orientation = img.getexif().get(0x0112, 1)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


@pytest.fixture(scope="session")
def shown_size() -> Callable[[Path], tuple[int, int]]:
    """:func:`display_size`: what a label map of the photo must measure."""
    return display_size


@pytest.fixture(scope="session")
def manifest(shipped: Shipped) -> Any:
    """The archive's ``manifest.json``, parsed by the archive's own :class:`~edgeseg_runtime.contract.Manifest`."""
    from edgeseg_runtime.contract import Manifest

    return Manifest.parse((shipped.unpacked / "manifest.json").read_bytes())
