"""edgeseg as a user installs it: wheels built from the repository, installed in fresh venvs outside the checkout.

* The host wheel ``edgeseg`` and the runtime wheel ``edgeseg-runtime`` own
  disjoint files: the runtime owns ``edgeseg_runtime`` and the ``edgeseg``
  command, the host registers its CLI under the ``edgeseg.cli`` entry point.
* ``pip install edgeseg-*.whl[openvino]`` in a fresh venv, then from a folder
  outside the checkout ``edgeseg build --target intel`` and ``edgeseg run``:
  the shipped target profiles travel in the wheel.
* The archive's own runtime wheel installs alone on a device venv, and next to
  the host without clobbering it.
* stdout carries results only: ``out=$(edgeseg build -t intel -p int8)`` is the
  archive path (NNCF's progress bars go to stderr).
* The core alone (no extra) at the lower ends of its ranges (``.ci/floors.txt``)
  passes the test suite, with every missing extra skipped and named.

The venvs install from PyPI through pip's cache (``.ci/constraints.txt`` keeps
torch and numpy inside what this machine kind can install).
"""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import HAS_OPENVINO, edgeseg_cli

REPO = Path(__file__).resolve().parent.parent
CONSTRAINTS = REPO / ".ci" / "constraints.txt"
FLOORS = REPO / ".ci" / "floors.txt"
NESTED = "EDGESEG_CORE_ONLY_RUN"  # set in the nested core-only pytest run: the venv-building tests skip there
PIP_TIMEOUT = 900

pytestmark = pytest.mark.skipif(bool(os.environ.get(NESTED)), reason="the nested core-only run does not build venvs")


def _run(argv: list[str | Path], timeout: float = 600, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,  # type: ignore[call-overload]
                          check=False, **kw)
    return proc


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"{' '.join(proc.args[:6])} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _make_venv(path: Path) -> Path:
    """A fresh venv (with pip) at ``path``; returns its bin folder."""
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path / "bin"


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH, no pytest or edgeseg variables of this run."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST", "EDGESEG_", "PYTHONPATH", "VIRTUAL_ENV", "COV_"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both wheels, built by ``pip wheel`` (isolated build, setuptools from PyPI) from a copy of the sources.

    A copy, so the checkout gets no ``build/`` folder.
    """
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for folder in ("edgeseg", "targets", "toolchains", "runtime_py"):
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    out = tmp_path_factory.mktemp("wheels")
    _ok(_run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, src, src / "runtime_py"],
             timeout=PIP_TIMEOUT, env=_clean_env()))
    found = {p.name.split("-")[0]: p for p in out.glob("*.whl")}
    assert set(found) == {"edgeseg", "edgeseg_runtime"}, sorted(found)
    return found


def _wheel_files(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _dist_info(files: dict[str, bytes], name: str) -> str:
    key = next(k for k in files if k.endswith(f".dist-info/{name}"))
    return files[key].decode()


def test_wheels_own_disjoint_files_and_one_console_script(wheels: dict[str, Path]) -> None:
    host, runtime = _wheel_files(wheels["edgeseg"]), _wheel_files(wheels["edgeseg_runtime"])
    host_modules = {n for n in host if not n.split("/")[0].endswith(".dist-info")}
    runtime_modules = {n for n in runtime if not n.split("/")[0].endswith(".dist-info")}
    assert host_modules and runtime_modules and not host_modules & runtime_modules
    assert all(n.startswith("edgeseg/") for n in host_modules), sorted(n for n in host_modules if not n.startswith("edgeseg/"))
    assert all(n.startswith("edgeseg_runtime/") for n in runtime_modules)

    # one console script, owned by the runtime; the host extends it through an entry point
    host_eps, runtime_eps = _dist_info(host, "entry_points.txt"), _dist_info(runtime, "entry_points.txt")
    assert "[console_scripts]" not in host_eps
    assert re.search(r"\[edgeseg\.cli\]\s*\nhost = edgeseg\.cli:main", host_eps), host_eps
    assert re.search(r"\[console_scripts\]\s*\nedgeseg = edgeseg_runtime\.cli:console", runtime_eps), runtime_eps

    # the host needs exactly this runtime; versions move together
    meta = email.parser.Parser().parsestr(_dist_info(host, "METADATA"))
    runtime_meta = email.parser.Parser().parsestr(_dist_info(runtime, "METADATA"))
    assert meta["Version"] == runtime_meta["Version"]
    assert f"edgeseg-runtime=={runtime_meta['Version']}" in meta.get_all("Requires-Dist")
    # ranges, not this machine's pins, in what users install
    requires = [r.split(";")[0] for r in meta.get_all("Requires-Dist")]  # the specifier, not the extra marker
    assert not [r for r in requires if "==" in r and not r.startswith("edgeseg-runtime")], requires
    assert not [r for r in requires if re.search(r"(numpy|setuptools)\s*<", r)], requires
    assert meta["License-Expression"] == "Apache-2.0"

    # the shipped profiles travel as package data
    shipped = {Path(n).stem for n in host if n.startswith("edgeseg/_shipped/targets/") and n.endswith(".toml")}
    assert shipped == {p.stem for p in (REPO / "targets").glob("*.toml")}
    toolchains = {Path(n).stem for n in host if n.startswith("edgeseg/_shipped/toolchains/")}
    assert toolchains == {p.stem for p in (REPO / "toolchains").glob("*.toml")}


@pytest.fixture(scope="module")
def host_venv(wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ``edgeseg-*.whl[openvino]`` installed from the wheels (no checkout on its path)."""
    if not HAS_OPENVINO:
        pytest.skip("openvino not installed here (pip install 'edgeseg[openvino]'): its wheels may not install either")
    bin_dir = _make_venv(tmp_path_factory.mktemp("host-venv") / "venv")
    _ok(_run([bin_dir / "python", "-m", "pip", "install", "-q", "-c", CONSTRAINTS, "--find-links", wheels["edgeseg"].parent,
              f"{wheels['edgeseg']}[openvino]"], timeout=PIP_TIMEOUT, env=_clean_env()))
    return bin_dir


def _labels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.mark.slow
def test_wheel_install_builds_and_runs_outside_the_checkout(host_venv: Path, tmp_path: Path) -> None:
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = _clean_env()
    edgeseg = host_venv / "edgeseg"

    where = _ok(_run([host_venv / "python", "-c", "import edgeseg, edgeseg_runtime; print(edgeseg.__file__); "
                      "print(edgeseg_runtime.__file__)"], cwd=work, env=env)).stdout.split()
    assert all(str(REPO) not in p and "site-packages" in p for p in where), where

    targets = _ok(_run([edgeseg, "targets"], cwd=work, env=env)).stdout
    assert {line.split()[0] for line in targets.splitlines()} == {p.stem for p in (REPO / "targets").glob("*.toml")}

    build = _ok(_run([edgeseg, "build", "--target", "intel"], cwd=work, env=env, timeout=900))
    assert build.stdout.strip().splitlines() == ["dist/selfie_segmentation-intel-fp16.tar.gz"], build.stdout
    archive = work / "dist" / "selfie_segmentation-intel-fp16.tar.gz"
    assert archive.is_file()

    photo = work / "astronaut.png"  # a photo of the installed package, as a user would have one
    shutil.copy(Path(where[0]).parent / "data" / "images" / "astronaut.png", photo)
    _ok(_run([edgeseg, "run", archive, photo, "-o", work / "out"], cwd=work, env=env))
    theirs = _labels(work / "out" / "astronaut.png")
    # the same archive through this checkout's edgeseg: the same label map
    mine = tmp_path / "mine"
    _ok(edgeseg_cli("run", archive, photo, "-o", mine))
    ours = _labels(mine / "astronaut.png")
    assert theirs.shape == ours.shape == (320, 320)
    assert (theirs == ours).mean() >= 0.999
    assert 0.3 < (theirs == 1).mean() < 0.8  # the astronaut is a person
    assert _run([edgeseg, "verify", archive], cwd=work, env=env).returncode == 0

    # a user's own profile: by path from anywhere, and by name from $EDGESEG_TARGETS_DIR next to the shipped ones
    mine_dir = tmp_path / "profiles"
    mine_dir.mkdir()
    text = (REPO / "targets" / "cpu.toml").read_text().replace('name = "cpu"', 'name = "mycpu"')
    (mine_dir / "mycpu.toml").write_text(text)
    listed = _ok(_run([edgeseg, "targets"], cwd=work, env={**env, "EDGESEG_TARGETS_DIR": str(mine_dir)})).stdout
    assert {"mycpu", "cpu", "intel"} <= {line.split()[0] for line in listed.splitlines()}
    by_path = _ok(_run([edgeseg, "build", "--target", mine_dir / "mycpu.toml", "-o", "d2"], cwd=work, env=env, timeout=900))
    assert by_path.stdout.strip() == "d2/selfie_segmentation-mycpu-fp32.tar.gz"


@pytest.mark.slow
def test_runtime_wheel_installs_alone_and_next_to_the_host(host_venv: Path, tmp_path: Path,
                                                          archives: dict[str, Path]) -> None:
    env = _clean_env()  # and cwd=tmp_path: `python -c` puts the folder it runs in on sys.path
    archive = archives["cpu"]
    folder = tmp_path / "unpacked"
    folder.mkdir()
    _ok(_run(["tar", "-xzf", archive, "-C", folder]))
    wheel = next((folder / "runtime").glob("edgeseg_runtime-*.whl"))

    # alone, on a device venv: the runtime's command, no host commands
    device = _make_venv(tmp_path / "device")
    _ok(_run([device / "python", "-m", "pip", "install", "-q", "-c", CONSTRAINTS, wheel],
             timeout=PIP_TIMEOUT, env=env, cwd=tmp_path))
    usage = _ok(_run([device / "edgeseg", "--help"], env=env, cwd=tmp_path)).stdout
    assert "verify" in usage and "build" not in usage and "deploy" not in usage
    assert _run([device / "edgeseg", "verify", archive], env=env, cwd=tmp_path).returncode == 0
    assert _run([device / "python", "-c", "import edgeseg"], env=env, cwd=tmp_path).returncode != 0

    # next to the host: replacing the runtime keeps the host's command and package
    _ok(_run([host_venv / "python", "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", wheel],
             timeout=PIP_TIMEOUT, env=env, cwd=tmp_path))
    assert "build" in _ok(_run([host_venv / "edgeseg", "--help"], env=env, cwd=tmp_path)).stdout
    _ok(_run([host_venv / "python", "-m", "pip", "check"], env=env, cwd=tmp_path))
    # removing the host leaves a working runtime (its files were never the host's)
    _ok(_run([host_venv / "python", "-m", "pip", "uninstall", "-y", "-q", "edgeseg"], env=env, cwd=tmp_path))
    usage = _ok(_run([host_venv / "edgeseg", "--help"], env=env, cwd=tmp_path)).stdout
    assert "verify" in usage and "build" not in usage
    assert _run([host_venv / "edgeseg", "verify", archive], env=env, cwd=tmp_path).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino not installed (pip install 'edgeseg[openvino]')")
@pytest.mark.parametrize("target", ["intel", "cpu"])
def test_stdout_carries_only_the_archive_path_of_an_int8_build(target: str, tmp_path: Path) -> None:
    proc = edgeseg_cli("build", "--target", target, "--precision", "int8", "-o", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [str(tmp_path / f"selfie_segmentation-{target}-int8.tar.gz")], proc.stdout
    assert "accuracy gate" in proc.stderr  # progress is still shown, on stderr
    if target == "intel":  # -q: errors only, NNCF's progress bars included
        quiet = edgeseg_cli("-q", "build", "--target", target, "--precision", "int8", "--recalibrate", "-o", tmp_path)
        assert quiet.returncode == 0 and quiet.stdout == proc.stdout and quiet.stderr == "", quiet.stderr[-2000:]


@pytest.mark.slow
def test_core_only_suite_passes_at_the_dependency_floors(tmp_path: Path) -> None:
    """``pip install edgeseg`` with no extra, every core dependency at its lowest allowed version: pytest passes."""
    bin_dir = _make_venv(tmp_path / "floors")
    env = _clean_env()
    _ok(_run([bin_dir / "python", "-m", "pip", "install", "-q", "-c", FLOORS, "-e", REPO / "runtime_py", "-e", REPO,
              "pytest"], timeout=PIP_TIMEOUT, env=env))
    versions = _ok(_run([bin_dir / "python", "-m", "pip", "freeze"], env=env)).stdout.lower()
    for line in FLOORS.read_text().splitlines():
        pin = line.split("#")[0].strip().lower()
        if pin:
            assert pin in versions, f"{pin} not installed:\n{versions}"
    for extra in ("openvino", "ncnn", "torch", "fabric", "matplotlib", "hypothesis", "skimage"):
        assert _run([bin_dir / "python", "-c", f"import {extra}"], env=env).returncode != 0, f"{extra} is installed"

    proc = _run([bin_dir / "python", "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--durations=10",
                 "-o", "addopts=", REPO / "tests"], cwd=tmp_path, env={**env, NESTED: "1"}, timeout=1800)
    tail = proc.stdout[-6000:]
    print(tail)
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 50, summary
    assert "error" not in summary
    skips = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skips, "a core-only run skips the tests of the extras"
    # every skip names what is missing
    vague = [s for s in skips if not re.search(r"not installed|No module named|could not import|needs|no |only|macOS|GPU|"
                                               r"TensorRT|nested", s)]
    assert not vague, vague
