"""Device wheels made on this host (issue 25): ncnn compiled for armhf, Debian's numpy/Pillow repacked, the cache.

The compiler is Debian's real ``arm-linux-gnueabihf-g++`` (crossbuild-essential-armhf),
the source ncnn's PyPI sdist, the packages Debian 12's armhf ones. A wrapper put
first on ``PATH`` records every compiler call, to prove what the cache saves.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import zipfile
from pathlib import Path

import pytest

from edgeseg.crossbuild import build, build_source, ncnn_layers_of
from edgeseg.errors import ConfigError, ToolchainError
from edgeseg.toolchains import load_toolchain

pytestmark = pytest.mark.slow
pytest.importorskip("auditwheel", reason="auditwheel is not installed (extra 'cross')")
CXX = "arm-linux-gnueabihf-g++"
needs_compiler = pytest.mark.skipif(shutil.which(CXX) is None,
                                    reason=f"{CXX} not found (apt-get install crossbuild-essential-armhf)")
#: the embedded default model's ncnn layers (as in its arm/armhf archive)
LAYERS = ["BinaryOp", "Concat", "Convolution", "ConvolutionDepthWise", "Deconvolution", "HardSwish", "Input", "Interp",
          "Permute", "Pooling", "Reshape", "Sigmoid", "Split"]


def _wrap_compilers(folder: Path, log: Path, monkeypatch: pytest.MonkeyPatch, version: str | None = None) -> None:
    """Put logging wrappers of the armhf gcc/g++ first on PATH.

    With ``version``: ``--version`` prints it, and every other call fails after being logged (a compile
    attempted, not carried out).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("arm-linux-gnueabihf-gcc", CXX):
        real = shutil.which(name)
        tail = f'if [ "$1" = --version ]; then echo "{version}"; exit 0; fi\nexit 1\n' if version else f'exec {real} "$@"\n'
        script = folder / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n{tail}')
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


@needs_compiler
def test_second_build_takes_the_cache_and_does_not_compile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tc = load_toolchain("linux-armhf-py311")
    src = tc.source[0]
    first = build_source(tc, src, LAYERS)  # compiles (~5 min cold) unless an earlier test or run did
    wheel_sha = hashlib.sha256(first.wheel.read_bytes()).hexdigest()
    assert first.info["wheel_sha256"] == wheel_sha and first.info["how"] == "compiled"
    assert first.info["sha256"] == src.sha256 and first.info["compiler"].startswith(CXX)
    assert first.wheel.name.startswith(f"ncnn-{src.version}-cp311-cp311-manylinux_2_") and first.wheel.name.endswith(
        "_armv7l.whl")
    with zipfile.ZipFile(first.wheel) as zf:
        names = zf.namelist()
        so = zf.read("ncnn/ncnn.cpython-311-arm-linux-gnueabihf.so")
    assert so[:4] == b"\x7fELF" and so[4] == 1 and int.from_bytes(so[18:20], "little") == 40  # ELF32, EM_ARM
    assert any(n.startswith("ncnn.libs/libgomp") for n in names)  # OpenMP runtime grafted by auditwheel

    log = tmp_path / "calls.log"
    _wrap_compilers(tmp_path / "bin", log, monkeypatch)
    again = build_source(tc, src, LAYERS)
    assert again.cached and again.wheel == first.wheel
    assert hashlib.sha256(again.wheel.read_bytes()).hexdigest() == wheel_sha
    assert log.read_text().splitlines() == [f"{CXX} --version"]  # the key's compiler version, nothing compiled

    # another compiler version is another key: the cache is missed and CMake starts compiling (with a compiler
    # that fails every compile, so the attempt is logged and stops at configure)
    log.unlink()
    _wrap_compilers(tmp_path / "bin2", log, monkeypatch, version="arm-linux-gnueabihf-g++ (a newer one) 99.0")
    with pytest.raises(ToolchainError, match="cmake configure failed"):
        build_source(tc, src, LAYERS)
    calls = log.read_text().splitlines()
    assert calls[0] == f"{CXX} --version" and len(calls) > 1, calls


def test_layers_of_a_param_file_and_refusals(tmp_path: Path) -> None:
    param = tmp_path / "m.param"
    param.write_text("7767517\n3 3\nInput in0 0 1 in0\nConvolution conv 1 1 in0 a 0=8\nSigmoid sig 1 1 a out0\n")
    assert ncnn_layers_of([param]) == ["Convolution", "Input", "Sigmoid"]
    bad = tmp_path / "bad.param"
    bad.write_text("not ncnn\n")
    with pytest.raises(ConfigError, match="magic 7767517"):
        ncnn_layers_of([bad])
    with pytest.raises(ConfigError, match="builds nothing here"):
        build("linux-aarch64-py311", "ncnn")
    with pytest.raises(ConfigError, match="does not build 'onnxruntime'; it builds: ncnn, numpy, pillow"):
        build("linux-armhf-py311", "onnxruntime")


@needs_compiler
def test_debian_numpy_and_pillow_become_self_contained_armv7l_wheels() -> None:
    built = {b.wheel.name.split("-")[0].lower(): b for b in build("linux-armhf-py311", "all", LAYERS)
             if b.info["how"] == "repacked"}
    assert set(built) == {"numpy", "pillow"}
    numpy, pillow = built["numpy"], built["pillow"]
    assert numpy.wheel.name.startswith("numpy-1.24.2-cp311-cp311-manylinux_2_") and "_armv7l" in numpy.wheel.name
    assert numpy.info["source"].startswith("Debian bookworm armhf python3-numpy 1:1.24.2")
    with zipfile.ZipFile(numpy.wheel) as zf:
        names = zf.namelist()
        assert "numpy-1.24.2.dist-info/METADATA" in names and "numpy/core/_multiarray_umath.cpython-311-arm-linux-gnueabihf.so" in names
        assert {n.split("/")[1].split("-")[0] for n in names if n.startswith("numpy.libs/")} >= {"libblas", "liblapack"}
    with zipfile.ZipFile(pillow.wheel) as zf:
        names = zf.namelist()
        assert "PIL/_imaging.cpython-311-arm-linux-gnueabihf.so" in names
        assert any(n.startswith("Pillow.libs/libjpeg") for n in names)  # Debian's libjpeg62-turbo grafted
    cached = json.loads((numpy.wheel.parent / "build.json").read_text())
    assert cached["wheel_sha256"] == hashlib.sha256(numpy.wheel.read_bytes()).hexdigest()
