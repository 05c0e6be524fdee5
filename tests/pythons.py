"""Device Pythons for tests/test_device_pythons.py: find them, give each an environment, run tests/runtime there.

The runtime (``runtime_py/edgeseg_runtime``, shipped in every archive) must run
on the Pythons its targets' devices have, not only on the host's 3.11.7:

* pyenv's **3.9** (the runtime's ``requires-python``) and **3.10** (JetPack 6),
  each in a venv from PyPI with :data:`REQUIREMENTS`: 3.9 gets the newest
  releases that still support it, 3.10 the runtime's declared floors
  (``numpy>=1.24``, ``pillow>=9.4``, ``onnxruntime>=1.17``);
* the emulated Debian 12 arm64 root's ``/usr/bin/python3`` (**3.11.2**, under
  qemu-user, tests/arm64.py), with the ``arm`` archive's own aarch64 wheels
  (numpy, Pillow, ncnn) and pytest's pure-Python wheels, installed by the
  device's pip (``--no-index --target``);
* the host's own Python, as a baseline.

Environments are cached under ``<tests cache>/pythons/<version>-<sha>``
(``~/.cache/edgeseg-tests``, or ``$EDGESEG_ARM64_CACHE``), ``<sha>`` hashing
the requirement list (for arm64: pytest's pin and the archive's wheel names and
sha256s), so a changed list gives a new folder; older folders of the same
version are removed. A folder is used only once its ``.complete`` marker exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from arm64 import cache_dir
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
RUNTIME_TESTS = REPO / "tests" / "runtime"

#: pip requirements of each pyenv Python's venv (exact pins; the cache key is their sha256)
REQUIREMENTS: dict[str, tuple[str, ...]] = {
    # newest releases with cp39 wheels (numpy 2.1, Pillow 12, onnxruntime 1.20 dropped 3.9)
    "3.9": ("numpy==2.0.2", "pillow==11.3.0", "onnxruntime==1.19.2", "pytest==8.4.2"),
    # JetPack 6's Python with the runtime's declared floors (runtime_py/pyproject.toml; Pillow 9.4 is Debian 12's)
    "3.10": ("numpy==1.24.4", "pillow==9.4.0", "onnxruntime==1.17.3", "pytest==8.4.2"),
}
#: what the emulated arm64 root gets besides the archive's own wheels (pure-Python wheels, downloaded here)
ARM64_PYTEST = ("pytest==8.4.2",)
ARM64_PYTHON = "/usr/bin/python3"
#: where the emulated root sees the test files, archive, photos and packages
ARM64_WORK = "/opt/edgeseg-runtime-tests"

PIP_TIMEOUT = 900
PYTEST_TIMEOUT = 900          # a pytest run of tests/runtime (seconds; ~10-40 s measured on x86_64)
ARM64_PYTEST_TIMEOUT = 1800   # the same under qemu (~100-400x slower per process)
ARM64_CLI_TIMEOUT = 900       # one runtime command under qemu (EDGESEG_TEST_TIMEOUT)


class PythonMissing(RuntimeError):
    """A device Python this test host must have (CI installs it) is not there."""


def _run(argv: list[str], timeout: float, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,  # type: ignore[call-overload]
                          check=False, **kw)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(map(str, argv[:6]))} ... exited {proc.returncode}:\n{tail}")
    return proc


def pyenv_root() -> Path:
    """``pyenv root`` (or ``$PYENV_ROOT``, or ``~/.pyenv``)."""
    exe = shutil.which("pyenv")
    if exe:
        proc = subprocess.run([exe, "root"], capture_output=True, text=True, timeout=30, check=False)
        if proc.returncode == 0 and proc.stdout.strip():
            return Path(proc.stdout.strip())
    return Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))


def find_pyenv_python(minor: str) -> Path:
    """The newest ``<pyenv root>/versions/<minor>.N/bin/python<minor>``.

    Raises:
        PythonMissing: none installed (with the command that installs it).
    """
    root = pyenv_root()
    found = []
    for exe in root.glob(f"versions/{minor}.*/bin/python{minor}"):
        m = re.fullmatch(rf"{re.escape(minor)}\.([0-9]+)", exe.parent.parent.name)
        if m and os.access(exe, os.X_OK):
            found.append((int(m.group(1)), exe))
    if not found:
        raise PythonMissing(
            f"no Python {minor} under {root}/versions: the runtime must be tested on it; install it with "
            f"'pyenv install {minor}' (CI has it; tests/pythons.py looks for versions/{minor}.*/bin/python{minor})"
        )
    return max(found)[1]


def interpreter(argv: list[str]) -> tuple[str, str]:
    """``(platform.python_version(), platform.machine())`` of the Python ``argv`` starts."""
    out = _run([*argv, "-c", "import platform; print(platform.python_version(), platform.machine())"], timeout=120)
    version, machine = out.stdout.split()
    return version, machine


def requirements_sha(lines: tuple[str, ...] | list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _cache_slot(version: str, lines: tuple[str, ...] | list[str]) -> tuple[Path, bool]:
    """``pythons/<version>-<sha>`` and whether it is complete; a half-made one and stale siblings are removed."""
    base = cache_dir() / "pythons"
    slot = base / f"{version}-{requirements_sha(lines)}"
    if (slot / ".complete").is_file():
        return slot, True
    shutil.rmtree(slot, ignore_errors=True)
    for stale in base.glob(f"{version}-*"):
        if stale != slot:
            shutil.rmtree(stale, ignore_errors=True)
    slot.mkdir(parents=True)
    return slot, False


@dataclass
class Env:
    """One interpreter ready for tests/runtime: ``argv`` runs its Python; ``setup_s`` what preparing it took."""

    name: str
    version: str
    machine: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cached: bool = True
    setup_s: float = 0.0
    site: Path | None = None  # arm64: the cached --target folder bound into the root


def pyenv_venv(minor: str) -> Env:
    """A venv of pyenv's ``minor`` Python with :data:`REQUIREMENTS` (cached)."""
    t0 = time.monotonic()
    exe = find_pyenv_python(minor)
    version, machine = interpreter([str(exe)])
    lines = REQUIREMENTS[minor]
    slot, cached = _cache_slot(version, lines)
    venv = slot / "venv"
    if not cached:
        (slot / "requirements.txt").write_text("\n".join(lines) + "\n")
        _run([str(exe), "-m", "venv", str(venv)], timeout=300)
        _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
              "--only-binary=:all:", "-r", str(slot / "requirements.txt")], timeout=PIP_TIMEOUT)
        (slot / ".complete").write_text("ok\n")
    return Env(f"pyenv {version}", version, machine, [str(venv / "bin" / "python")], cached=cached,
               setup_s=time.monotonic() - t0)


def write_photos(folder: Path) -> Path:
    """Real photos (edgeseg/data/images) in the shapes devices meet: RGB and grey PNG, odd-sized JPEG, EXIF-rotated
    JPEG (orientation 6: shown 90 degrees turned), RGBA PNG."""
    images = REPO / "edgeseg" / "data" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(images / "astronaut.png") as astronaut, Image.open(images / "camera.png") as camera, \
            Image.open(images / "rocket.png") as rocket:
        astronaut.save(folder / "p1-astronaut.png")
        camera.save(folder / "p2-camera-grey.png")
        rocket.crop((7, 11, 308, 198)).save(folder / "p3-rocket-301x187.jpg", quality=90)
        exif = Image.Exif()
        exif[0x0112] = 6
        astronaut.resize((240, 150)).save(folder / "p4-astronaut-exif6.jpg", quality=90, exif=exif)
        rgba = camera.convert("RGB").resize((257, 129)).convert("RGBA")
        rgba.putalpha(128)
        rgba.save(folder / "p5-camera-rgba.png")
    return folder


_SUMMARY = re.compile(r"^=+ (.+ in [0-9.]+s.*?) =+$")


def summary_line(output: str) -> str:
    """pytest's last ``==== 12 passed, 1 xfailed in 3.21s ====`` line, without the rule ("" when none)."""
    found = [m.group(1) for m in map(_SUMMARY.match, output.splitlines()) if m]
    return found[-1] if found else ""


def counts(summary: str) -> dict[str, int]:
    """``{"passed": 12, "xfailed": 1, ...}`` of a summary line."""
    words = r"([0-9]+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)"
    return {word: int(n) for n, word in re.findall(words, summary)}


@dataclass
class Outcome:
    returncode: int
    output: str
    seconds: float

    @property
    def summary(self) -> str:
        return summary_line(self.output)


def run_runtime_tests(env: Env, archive: Path, images: Path, workdir: Path, *extra: str) -> Outcome:
    """``<python> -B -m pytest tests/runtime`` with the archive and photos (a fresh TMPDIR under ``workdir``)."""
    tmp = workdir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHON"))}
    child_env.update({"EDGESEG_TEST_ARCHIVE": str(archive), "EDGESEG_TEST_IMAGES": str(images), "TMPDIR": str(tmp),
                      "PYTHONDONTWRITEBYTECODE": "1", **env.env})
    t0 = time.monotonic()
    proc = subprocess.run([*env.argv, "-B", "-m", "pytest", str(RUNTIME_TESTS), *extra],
                          capture_output=True, text=True, env=child_env, cwd=REPO, timeout=PYTEST_TIMEOUT,
                          check=False)
    return Outcome(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0)


# ------------------------------------------------------------------ arm64 (qemu-user)
def chroot_argv(rootfs: Path, argv: list[str], env: dict[str, str], binds: dict[Path, str] | None = None) -> list[str]:
    """Run ``argv`` inside the arm64 root: a private mount and PID namespace with /proc and /dev, then ``chroot``
    with exactly ``env`` (the host's PIP_* and PYTHON* settings stay out). ``binds``: host folder -> path inside."""
    r = str(rootfs)
    mounts = [f"mount -t proc proc {r}/proc", f"mount --rbind /dev {r}/dev"]
    for host, inside in (binds or {}).items():
        mounts.append(f"mkdir -p {r}{inside} && mount --bind {host} {r}{inside}")
    env_args = [f"{k}={v}" for k, v in {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
                                        "LANG": "C.UTF-8", **env}.items()]
    script = " && ".join(mounts) + ' && exec chroot "$0" /usr/bin/env -i "$@"'
    return ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
            "sh", "-c", script, r, *env_args, *argv]


def arm64_wheel_lines(archive: Path) -> list[str]:
    """The archive's ``wheels/*.whl`` names and sha256s (read from its manifest: member order is manifest first)."""
    with tarfile.open(archive, "r:gz") as tf:
        first = tf.next()
        assert first is not None and first.name == "manifest.json"
        doc = json.loads(tf.extractfile(first).read())  # type: ignore[union-attr]
    return sorted(f"{rel} {meta['sha256']}" for rel, meta in doc["files"].items() if rel.startswith("wheels/"))


def arm64_site(rootfs: Path, archive: Path, workdir: Path, arch: str = "arm64") -> Env:
    """A ``--target`` folder with the archive's wheels (numpy, Pillow, ncnn) and pytest, installed by the
    ``arch`` root's own pip with ``--no-index`` (cached: bound into the root at ``ARM64_WORK/site``)."""
    t0 = time.monotonic()
    version, machine = interpreter(chroot_argv(rootfs, [ARM64_PYTHON], {}))
    from edgeseg_runtime.archive import Archive

    with Archive.open(archive) as opened:
        requirements = list(opened.manifest.runtime.requirements)
        lines = [f"platform {machine} cp311 {ARM64_PYTHON} pip --no-index --target", *ARM64_PYTEST, *requirements,
                 *arm64_wheel_lines(archive)]
        slot, cached = _cache_slot(version, lines)
        site = slot / "site"
        if not cached:
            wheels = workdir / "wheels"
            shutil.copytree(opened.root / "wheels", wheels)
            _run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:",
                  "--platform", "manylinux2014_aarch64", "--python-version", "3.11", "--implementation", "cp",
                  "--abi", "cp311", "-d", str(wheels), *ARM64_PYTEST], timeout=PIP_TIMEOUT)
            (slot / "requirements.txt").write_text("\n".join(lines) + "\n")
            site.mkdir()
            pip = [ARM64_PYTHON, "-m", "pip", "install", "-q", "--no-index", "--find-links", f"{ARM64_WORK}/wheels",
                   "--only-binary=:all:", "--no-compile", "--disable-pip-version-check", "--target",
                   f"{ARM64_WORK}/site", *requirements, *ARM64_PYTEST]
            _run(chroot_argv(rootfs, pip, {}, {wheels: f"{ARM64_WORK}/wheels", site: f"{ARM64_WORK}/site"}),
                 timeout=PIP_TIMEOUT)
            (slot / ".complete").write_text("ok\n")
    return Env(f"{arch} root {version} (qemu)", version, machine, [ARM64_PYTHON], cached=cached,
               setup_s=time.monotonic() - t0, site=site)


def run_runtime_tests_arm64(env: Env, rootfs: Path, archive: Path, images: Path) -> Outcome:
    """``/usr/bin/python3 -B -m pytest tests/runtime -m "not extended"`` inside the arm64 root."""
    work = rootfs / ARM64_WORK.lstrip("/")
    (work / "tests").mkdir(parents=True, exist_ok=True)
    shutil.copytree(RUNTIME_TESTS, work / "tests" / "runtime", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(archive, work / archive.name)
    shutil.copytree(images, work / "images")
    inner = {"PYTHONPATH": f"{ARM64_WORK}/site", "PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": "/tmp",
             "EDGESEG_TEST_ARCHIVE": f"{ARM64_WORK}/{archive.name}", "EDGESEG_TEST_IMAGES": f"{ARM64_WORK}/images",
             "EDGESEG_TEST_TIMEOUT": str(ARM64_CLI_TIMEOUT)}
    argv = [ARM64_PYTHON, "-B", "-m", "pytest", f"{ARM64_WORK}/tests/runtime", "-m", "not extended"]
    t0 = time.monotonic()
    assert env.site is not None
    proc = subprocess.run(chroot_argv(rootfs, argv, inner, {env.site: f"{ARM64_WORK}/site"}),
                          capture_output=True, text=True, timeout=ARM64_PYTEST_TIMEOUT, check=False)
    return Outcome(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0)


def host_env() -> Env:
    return Env(f"host {platform.python_version()}", platform.python_version(), platform.machine(), [sys.executable])
