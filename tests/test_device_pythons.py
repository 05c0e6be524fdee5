"""The runtime's tests (tests/runtime) under every Python a device runs, against archives built here.

``runtime_py/pyproject.toml`` says ``requires-python >=3.9`` and the targets name
3.10 (JetPack 6) and 3.11 (Debian 12 / Raspberry Pi OS, 3.11.2): each of them runs
``python -B -m pytest tests/runtime`` in its own environment (tests/pythons.py),
with the runtime imported from the archive's own ``runtime/``:

* pyenv's 3.9 and 3.10 (a failure when missing: CI has them), the ``cpu`` archive;
* the emulated Debian 12 arm64 root's ``/usr/bin/python3`` 3.11.2 under qemu-user,
  the ``arm`` archive (ncnn) with its own aarch64 wheels, the smallest set
  (``-m "not extended"``: one golden verify, one run, info, the parsers);
* the host's Python, the baseline.

Each prints one line: interpreter, pytest's summary, seconds (environment, tests).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pythons
from arm64 import arm64_rootfs, can_emulate

import edgeseg

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pythons.write_photos(tmp_path_factory.mktemp("device-photos"))


@pytest.fixture(scope="module")
def cpu_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return edgeseg.build(target="cpu", out_dir=tmp_path_factory.mktemp("dist-cpu"), report=lambda _l: None).archive


def _check(name: str, outcome: pythons.Outcome, setup_s: float, cached: bool, *, least: int) -> None:
    summary = outcome.summary
    got = pythons.counts(summary)
    print(f"\n{name}: {summary or 'no pytest summary'}; environment {setup_s:.1f} s "
          f"({'cached' if cached else 'created'}), tests {outcome.seconds:.1f} s")
    assert outcome.returncode == 0, f"{name}: tests/runtime exited {outcome.returncode}:\n{outcome.output[-6000:]}"
    assert got.get("passed", 0) >= least, summary
    assert not (got.get("failed") or got.get("error") or got.get("errors") or got.get("xpassed")), summary
    assert not got.get("skipped"), f"{name}: something was skipped: {summary}\n{outcome.output[-3000:]}"


@pytest.mark.parametrize("minor", ["3.9", "3.10"])
def test_runtime_tests_on_pyenv_python(minor: str, cpu_archive: Path, photos_dir: Path, tmp_path: Path) -> None:
    try:
        env = pythons.pyenv_venv(minor)
    except pythons.PythonMissing as exc:
        pytest.fail(str(exc))
    assert env.version.startswith(f"{minor}.") and env.machine == "x86_64", (env.version, env.machine)
    outcome = pythons.run_runtime_tests(env, cpu_archive, photos_dir, tmp_path)
    _check(f"{env.name} [{', '.join(pythons.REQUIREMENTS[minor])}]", outcome, env.setup_s, env.cached, least=40)


def test_runtime_tests_on_the_host_python(cpu_archive: Path, photos_dir: Path, tmp_path: Path) -> None:
    env = pythons.host_env()
    outcome = pythons.run_runtime_tests(env, cpu_archive, photos_dir, tmp_path)
    _check(env.name, outcome, env.setup_s, env.cached, least=40)


@pytest.mark.parametrize(("arch", "target", "machine"), [("arm64", "arm", "aarch64"), ("armhf", "armhf", "armv7l")])
def test_runtime_tests_on_debian12_arm_pythons(arch: str, target: str, machine: str, photos_dir: Path,
                                               tmp_path: Path) -> None:
    """armhf: a 32-bit numpy (intp = int32) with Debian's own numpy 1.24.2 and Pillow 9.4.0 (the archive's wheels)."""
    why = can_emulate(arch)
    if why:
        pytest.skip(f"the {arch} root cannot run here: {why}")  # CI sets EDGESEG_REQUIRE_ALL: a failure there
    try:
        import pnnx  # noqa: F401  the arm targets convert with pnnx (pip install 'edgeseg[ncnn]')
    except ImportError:
        pytest.skip("pnnx is not installed (extra 'ncnn'): the arm archives need it on the host")
    if arch == "armhf":
        pytest.importorskip("auditwheel", reason="auditwheel is not installed (extra 'cross'): the armhf wheels need it")
    archive = edgeseg.build(target=target, out_dir=tmp_path / "dist", report=lambda _l: None).archive
    rootfs = arm64_rootfs(tmp_path / "rootfs", arch=arch)
    env = pythons.arm64_site(rootfs, archive, tmp_path, arch=arch)
    assert env.version.startswith("3.11.") and env.machine == machine, (env.version, env.machine)
    outcome = pythons.run_runtime_tests_arm64(env, rootfs, archive, photos_dir)
    assert f"platform linux -- Python {env.version}, " in outcome.output, outcome.output[-3000:]
    _check(env.name, outcome, env.setup_s, env.cached, least=25)
