"""Jetson/TensorRT: archive layout, engine cache keys, the "TensorRT missing" path, the explicit fallback.

TensorRT cannot be installed here (its PyPI packages fetch the real wheels
from NVIDIA's index), so the engine build and runner are covered by the
``tensorrt``-marked tests at the end, which skip when ``import tensorrt``
fails. Nothing here pretends to build an engine.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edgeseg
from conftest import edgeseg_cli
from edgeseg import ConfigError
from edgeseg.backends.tensorrt import engine_shapes
from edgeseg.calibration import load_calibration
from edgeseg.deploy.engine import attach_engine
from edgeseg.signing import new_keypair
from edgeseg_runtime.archive import Archive, sha256_file
from edgeseg_runtime.calibration import load_compact
from edgeseg_runtime.engine import EngineCache, EngineSettings, engine_key
from edgeseg_runtime.errors import ToolchainError
from edgeseg_runtime.pipeline import parse_pipeline
from edgeseg_runtime.signing import load_public_key, verify_manifest

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
QUIET = {"report": lambda _line: None}


def _settings(**kw: object) -> EngineSettings:
    base: dict[str, object] = {"precision": "fp16", "input_name": "input", "min_shape": (1, 3, 256, 256),
                               "opt_shape": (1, 3, 256, 256), "max_shape": (1, 3, 256, 256)}
    return EngineSettings(**{**base, **kw})  # type: ignore[arg-type]


GPU = {"compute_capability": "8.7", "name": "Orin"}


def test_engine_key_changes_with_every_part_and_only_then() -> None:
    key, parts = engine_key(_settings(), "a" * 64, "10.3.0", GPU)
    assert engine_key(_settings(), "a" * 64, "10.3.0", dict(GPU))[0] == key  # same inputs, same key
    assert parts["tensorrt"] == "10.3.0" and parts["gpu"] == GPU and parts["shapes"]["opt"] == [1, 3, 256, 256]
    variants = [
        engine_key(_settings(), "a" * 64, "10.3.1", GPU),  # TensorRT version
        engine_key(_settings(), "a" * 64, "10.3.0", {**GPU, "compute_capability": "7.2"}),  # GPU
        engine_key(_settings(precision="fp32"), "a" * 64, "10.3.0", GPU),
        engine_key(_settings(opt_shape=(1, 3, 512, 512), max_shape=(1, 3, 512, 512)), "a" * 64, "10.3.0", GPU),
        engine_key(_settings(), "b" * 64, "10.3.0", GPU),  # ONNX
        engine_key(_settings(workspace_mb=2048), "a" * 64, "10.3.0", GPU),
        engine_key(_settings(dla_core=0), "a" * 64, "10.3.0", GPU),
        engine_key(_settings(sparsity=True), "a" * 64, "10.3.0", GPU),
        engine_key(_settings(precision="int8", calibration_sha256="c" * 64), "a" * 64, "10.3.0", GPU),
        engine_key(_settings(precision="int8", calibration_sha256="d" * 64), "a" * 64, "10.3.0", GPU),
    ]
    keys = [key] + [k for k, _ in variants]
    assert len(set(keys)) == len(keys)
    # the calibration digest is no part of a float engine's key
    assert engine_key(_settings(calibration_sha256="c" * 64), "a" * 64, "10.3.0", GPU)[0] == key


def test_engine_cache_keeps_checks_and_estimates(tmp_path: Path) -> None:
    """The cache stores opaque plan bytes by key, refuses altered ones, and remembers build times."""
    cache = EngineCache(tmp_path / "engines")
    assert cache.load("k1") is None and cache.last_build_seconds() is None
    payload = os.urandom(4096)
    path = cache.store("k1", {"tensorrt": "10.3.0"}, payload, 93.4)
    assert path == tmp_path / "engines" / "k1.engine" and cache.load("k1") == payload
    meta = json.loads((tmp_path / "engines" / "k1.json").read_text())
    assert meta["sha256"] == sha256_file(path) and meta["size"] == 4096 and meta["parts"] == {"tensorrt": "10.3.0"}
    assert cache.last_build_seconds() == 93.4
    assert cache.load("k2") is None  # another key: a rebuild
    path.write_bytes(payload[:-1] + bytes([payload[-1] ^ 1]))  # one bit flipped on disk
    assert cache.load("k1") is None
    assert not list((tmp_path / "engines").glob(".*.tmp"))  # atomic writes leave no temporaries
    (tmp_path / "not-a-folder").write_text("x")  # unwritable even for root
    with pytest.raises(ToolchainError, match="cannot write the TensorRT engine into .*EDGESEG_ENGINE_CACHE"):
        EngineCache(tmp_path / "not-a-folder" / "engines").store("k", {}, b"x", 1.0)


def test_optimisation_profile_shapes() -> None:
    jetson = edgeseg.load_target("jetson")
    assert engine_shapes([1, 3, 256, 256], jetson) == {k: [1, 3, 256, 256] for k in ("min_shape", "opt_shape", "max_shape")}
    with pytest.raises(ConfigError, match="dynamic .* set \\[backend_options\\] min_shape, opt_shape, max_shape"):
        engine_shapes([1, 3, "H", "W"], jetson)
    dyn = jetson.model_copy(update={"backend_options": {"min_shape": [256, 256], "opt_shape": [512, 512], "max_shape": [1024, 1024]}})
    assert engine_shapes([1, 3, "H", "W"], dyn)["max_shape"] == [1, 3, 1024, 1024]
    with pytest.raises(ConfigError, match="for dynamic models"):
        engine_shapes([1, 3, 256, 256], dyn)
    bad = jetson.model_copy(update={"backend_options": {"min_shape": [512, 512], "opt_shape": [256, 256], "max_shape": [1024, 1024]}})
    with pytest.raises(ConfigError, match="min_shape <= opt_shape <= max_shape"):
        engine_shapes([1, 3, "H", "W"], bad)


@pytest.fixture(scope="module")
def jetson(tmp_path_factory: pytest.TempPathFactory) -> dict[str, edgeseg.BuildResult]:
    out = tmp_path_factory.mktemp("jetson")
    target = edgeseg.load_target("jetson")
    fallback = target.model_copy(update={"fallback_backend": "onnxruntime",
                                         "fallback_options": {"providers": ["CPUExecutionProvider"]}})
    return {
        "fp16": edgeseg.build(target="jetson", out_dir=out / "fp16", **QUIET),
        "int8": edgeseg.build(target="jetson", precision="int8", calib_count=8, out_dir=out / "int8", **QUIET),
        "fallback": edgeseg.build(target=fallback, out_dir=out / "fallback", **QUIET),
    }


@pytest.mark.slow
def test_jetson_archive_carries_onnx_and_builder_settings(jetson: dict[str, edgeseg.BuildResult]) -> None:
    r = jetson["fp16"]
    m = r.manifest
    assert m["backend"]["net"] == "end2end.onnx" and m["backend"]["engine_built_on"] == "device"
    assert m["backend"]["engine"] == {"precision": "fp16", "input": "input", "min_shape": [1, 3, 256, 256],
                                      "opt_shape": [1, 3, 256, 256], "max_shape": [1, 3, 256, 256]}
    assert m["target"]["backend_options"] == {"workspace_mb": 1024, "dla_core": -1, "sparsity": False, "optimization_level": 3}
    assert m["files"]["end2end.onnx"]["sha256"] == m["provenance"]["shared_onnx_sha256"]  # the shared ONNX, unchanged
    assert not any(f.endswith((".engine", ".plan")) for f in m["files"])  # nothing built on the host
    # TensorRT comes from JetPack: named, never pip-installed from the archive's requirements
    assert not any(req.startswith("tensorrt") for req in m["runtime"]["requirements"])
    assert "JetPack" in m["backend"]["requirement"]
    assert r.check is None and m["build_check"]["passed"] is None
    assert "TensorRT is not installed here" in m["build_check"]["verdict"]


@pytest.mark.slow
def test_int8_calibration_set_travels_exactly(jetson: dict[str, edgeseg.BuildResult]) -> None:
    """The device's calibration tensors equal, bit for bit, what the host's calibration set gives."""
    r = jetson["int8"]
    engine = r.manifest["backend"]["engine"]
    assert engine["calibration"] == "calibration/calibration.npz" and engine["calibration_method"] == "entropy"
    assert r.manifest["quantization"]["accuracy"]["passed"] is None  # gate pending: the device calibrates
    with Archive.open(r.archive) as archive:
        pre, _ = parse_pipeline(archive.pipeline)
        device_side = list(load_compact(archive.path(engine["calibration"]), pre))
        cal = r.manifest["quantization"]["calibration"]
        host = load_calibration(None, archive.pipeline, archive.manifest["model"]["input"]["shape"], count=cal["count"],
                                seed=cal["seed"], exclude=[p for p in edgeseg.SAMPLE_IMAGES.iterdir()])
    assert engine["calibration_sha256"] == cal["sha256"] == host.digest
    host_side = list(host.tensors())
    assert len(device_side) == len(host_side) == 8
    assert all(np.array_equal(a, b) for a, b in zip(device_side, host_side, strict=True))


@pytest.mark.slow
def test_without_tensorrt_verify_and_run_say_so(jetson: dict[str, edgeseg.BuildResult], photos: dict[str, Path], tmp_path: Path) -> None:
    if HAS_TRT:
        pytest.skip("TensorRT is installed here")
    archive = jetson["fp16"].archive
    info = edgeseg_cli("info", archive)
    assert info.returncode == 0
    for line in ("engine      built on the device by TensorRT on first install", "engine key  TensorRT version + GPU compute "
                 "capability + precision + shapes + ONNX sha256", "untested    the engine build and runner never ran"):
        assert line in info.stdout
    verify = edgeseg_cli("verify", archive)
    assert verify.returncode == 2  # could not run (the backend is missing), not a failed check
    assert verify.stderr.startswith("edgeseg: error: TensorRT is not installed here (No module named 'tensorrt')")
    assert verify.stderr.count("\n") == 1 and verify.stdout == ""
    run = edgeseg_cli("run", archive, photos["astronaut"], "--out", tmp_path)
    assert run.returncode == 2 and "TensorRT is not installed here" in run.stderr and not any(tmp_path.iterdir())


@pytest.mark.slow
def test_fallback_is_explicit_and_said(jetson: dict[str, edgeseg.BuildResult], archives: dict[str, Path],
                                       photos: dict[str, Path], tmp_path: Path) -> None:
    if HAS_TRT:
        pytest.skip("TensorRT is installed here: no fallback happens")
    r = jetson["fallback"]
    fb = r.manifest["backend"]["fallback"]
    assert fb == {"name": "onnxruntime", "net": "end2end.onnx", "weights": "", "options": {"providers": ["CPUExecutionProvider"]},
                  "requirement": "onnxruntime>=1.17"}
    assert "onnxruntime>=1.17" in r.manifest["runtime"]["requirements"]
    assert "fallback    onnxruntime on end2end.onnx when tensorrt is missing" in edgeseg_cli("info", r.archive).stdout
    verify = edgeseg_cli("verify", r.archive)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.startswith("PASS") and "(onnxruntime, fallback for tensorrt fp16)" in verify.stdout
    assert "TensorRT is not installed here" in verify.stderr and "running the profile's fallback_backend onnxruntime" in verify.stderr
    # the fallback's label maps are the cpu archive's
    for name, archive in (("fb", r.archive), ("cpu", archives["cpu"])):
        assert edgeseg_cli("run", archive, photos["astronaut"], photos["rocket"], "--out", tmp_path / name).returncode == 0
    for stem in ("astronaut", "rocket"):
        a, b = (np.asarray(Image.open(tmp_path / d / f"{stem}.png")) for d in ("fb", "cpu"))
        assert np.array_equal(a, b)
    # the plain jetson profile has no fallback: it never runs anything else
    assert "fallback" not in jetson["fp16"].manifest["backend"]


@pytest.mark.slow
def test_attach_engine_relists_and_resigns(jetson: dict[str, edgeseg.BuildResult], tmp_path: Path) -> None:
    """The device-specific archive: the engine file is listed with its sha256, the manifest re-signed.

    The bytes stand for a device's plan only as an opaque payload: this checks the archive, not TensorRT.
    """
    pytest.importorskip("cryptography", reason="cryptography is not installed (extra 'deploy'): no signed archives")
    keys = new_keypair(tmp_path)
    payload = tmp_path / "k.engine"
    payload.write_bytes(os.urandom(2048))
    verdict = {"passed": True, "verdict": "PASS: 3/3 golden images", "images": []}
    result = {"key": "ab" * 16, "parts": {"tensorrt": "10.3.0", "gpu": GPU}, "verify": verdict}
    out = attach_engine(jetson["fp16"].archive, payload, result, "orin1", tmp_path / "dist", keys.private)
    assert out.name == "selfie_segmentation-jetson-fp16-orin1.tar.gz"
    with Archive.open(out) as archive:  # every file checked against the new manifest
        m = archive.manifest
        assert m["files"][f"engines/{'ab' * 16}.engine"]["sha256"] == sha256_file(payload)
        assert m["backend"]["prebuilt_engines"] == [{"file": f"engines/{'ab' * 16}.engine", "key": "ab" * 16,
                                                     "parts": result["parts"], "device": "orin1"}]
        assert m["build_check"]["device"] == "orin1" and m["build_check"]["verdict"].startswith("on orin1: PASS")
        key_id, pub = load_public_key(keys.public)
        assert verify_manifest(archive.path("manifest.json").read_bytes(), archive.path("manifest.sig").read_bytes(),
                               {key_id: pub}) == key_id
    info = edgeseg_cli("info", out).stdout
    assert "prebuilt    engines/abababab" in info and "Orin sm 8.7, TensorRT 10.3.0" in info


# ----------------------------------------------------------------- where TensorRT is installed
@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed (import tensorrt fails)")
def test_engine_built_once_then_cached(jetson: dict[str, edgeseg.BuildResult], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeseg_runtime.segmentor import Segmentor
    from edgeseg_runtime.verify import verify_archive

    monkeypatch.setenv("EDGESEG_ENGINE_CACHE", str(tmp_path / "engines"))
    with Archive.open(jetson["fp16"].archive) as archive:
        with Segmentor(archive) as seg:
            assert seg.runner.source == "built"  # type: ignore[attr-defined]
            report = verify_archive(archive, seg)
        assert report.passed, report.verdict()
        with Segmentor(archive) as seg:
            assert seg.runner.source == "cache"  # type: ignore[attr-defined]
    assert len(list((tmp_path / "engines").glob("*.engine"))) == 1


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed (import tensorrt fails)")
def test_int8_engine_calibrates_on_device(jetson: dict[str, edgeseg.BuildResult], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeseg_runtime.verify import verify_archive

    monkeypatch.setenv("EDGESEG_ENGINE_CACHE", str(tmp_path / "engines"))
    with Archive.open(jetson["int8"].archive) as archive:
        report = verify_archive(archive)
    assert report.passed, report.verdict()
    assert len(list((tmp_path / "engines").glob("*.calib"))) == 1
