"""Target profiles: shipped ones load, the schema carries future targets, bad ones are refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgeseg
from edgeseg import ConfigError, load_target
from edgeseg.errors import AccuracyError

BASE = """
schema_version = 1
name = "{name}"
backend = "{backend}"
precision = "{precision}"
{extra}
[platform]
os = "{os}"
arch = "{arch}"
[tolerance]
atol = 0.05
min_label_agreement = 0.98
{tail}
"""


def _write(tmp_path: Path, name: str = "t", backend: str = "onnxruntime", precision: str = "fp32", os: str = "linux",
           arch: str = "x86_64", extra: str = "", tail: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(BASE.format(name=name, backend=backend, precision=precision, os=os, arch=arch, extra=extra, tail=tail))
    return path


def test_shipped_targets_load() -> None:
    assert {"cpu", "intel", "jetson", "apple", "arm", "tflite"} <= set(edgeseg.list_targets())
    arm, tflite = load_target("arm"), load_target("tflite")
    for t in (arm, tflite):
        assert (t.platform.arch, t.platform.python, t.platform.toolchain, t.platform.offline) == (
            "aarch64", "3.11", "linux-aarch64-py311", True)
    assert (arm.backend, arm.precision, tflite.backend, tflite.precision) == ("ncnn", "fp16", "tflite", "fp16")
    jetson, apple = load_target("jetson"), load_target("apple")
    assert (jetson.backend, jetson.build_on, jetson.platform.arch, jetson.platform.python) == ("tensorrt", "device", "aarch64", "3.10")
    assert (apple.backend, apple.precision, apple.platform.os) == ("coreml", "fp16", "macos")
    cpu, intel = load_target("cpu"), load_target("intel")
    assert (cpu.backend, cpu.precision) == ("onnxruntime", "fp32")
    assert (intel.backend, intel.precision) == ("openvino", "fp16")
    assert intel.backend_options["inference_precision"] == "auto"  # fp16 compute where native (test_quantization)


@pytest.mark.parametrize(
    ("name", "backend", "precision", "os", "arch", "extra", "tail", "error", "match"),
    [
        ("arm", "ncnn", "fp16", "linux", "aarch64", "[input]\nshapes = [[512, 1024], [1024, 2048]]", "",
         ConfigError, "other sizes need a PyTorch model or an ONNX with dynamic H/W"),
        ("tflite", "tflite", "int8", "linux", "aarch64", "", "[quantization]\nmax_miou_drop = 1.0\nmin_pixel_agreement = 0.98",
         AccuracyError, "mIoU drop .* > 1.00 points"),
    ],
)
def test_written_arm_profiles_load_and_builds_refuse_what_they_cannot(
    tmp_path: Path, name, backend, precision, os, arch, extra, tail, error, match,  # noqa: ANN001
) -> None:
    """Profiles written by hand load; the static default model at other sizes, or a too-strict int8 gate, write nothing."""
    mod, needs = ("pnnx", "ncnn") if backend == "ncnn" else ("litert_torch", "tflite")
    pytest.importorskip(mod, reason=f"{mod} is not installed (extra '{needs}')")
    t = load_target(_write(tmp_path, name, backend, precision, os, arch, extra, tail))
    assert (t.backend, t.precision, t.platform.arch) == (backend, precision, arch)
    with pytest.raises(error, match=match):
        edgeseg.build(target=t, out_dir=tmp_path / "dist", search=False, report=lambda _l: None)  # the gate alone
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


def test_unknown_target_lists_available() -> None:
    with pytest.raises(ConfigError, match=r"unknown target 'nope'; available: .*cpu.*intel"):
        load_target("nope")


def test_unknown_key_rejected(tmp_path: Path) -> None:
    p = _write(tmp_path)
    p.write_text(p.read_text().replace('arch = "x86_64"', 'arch = "x86_64"\ncolour = "red"'))
    with pytest.raises(ConfigError, match=r"platform\.colour: unknown key"):
        load_target(p)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('precision = "fp32"', 'precision = "fp64"'), r"precision: Input should be 'fp32', 'fp16' or 'int8'"),
        (("atol = 0.05", "atol = -1"), r"tolerance\.atol: Input should be greater than or equal to 0"),
        (("min_label_agreement = 0.98", "min_label_agreement = 1.5"), r"tolerance\.min_label_agreement"),
        (('backend = "onnxruntime"', 'backend = "tvm"'), r"backend: Input should be"),
        (('name = "t"', 'name = "other"'), r"name = 'other' but the file is t\.toml"),
        (("[tolerance]", "[tolerance"), r"not valid TOML"),
    ],
)
def test_invalid_values(tmp_path: Path, change, message) -> None:  # noqa: ANN001
    p = _write(tmp_path)
    p.write_text(p.read_text().replace(*change))
    with pytest.raises(ConfigError, match=message):
        load_target(p)


def test_backend_options_checked_against_runner(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"backend_options\.device: unknown option \(known: allow_spinning, intra_op_num_threads"):
        load_target(_write(tmp_path, tail='[backend_options]\ndevice = "GPU"'))
    with pytest.raises(ConfigError, match=r"backend_options\.intra_op_num_threads: expected int"):
        load_target(_write(tmp_path, tail='[backend_options]\nintra_op_num_threads = "two"'))


def test_quantization_settings_the_backend_lacks(tmp_path: Path) -> None:
    from edgeseg.backends import get_backend

    t = load_target(_write(tmp_path, name="ov", backend="openvino", precision="int8", tail='[quantization]\ncalibration_method = "entropy"'))
    with pytest.raises(ConfigError, match="openvino has no 'entropy' calibration; use one of minmax, percentile"):
        get_backend(t)
    t = load_target(_write(tmp_path, name="o2", precision="int8", tail="[quantization.options]\npreset = \"mixed\""))
    with pytest.raises(ConfigError, match=r"quantization\.options\.preset: unknown option \(known: activation_type, reduce_range, weight_type\)"):
        get_backend(t)
    t = load_target(_write(tmp_path, name="o3", precision="int8", tail="[quantization.options]\nreduce_range = 1"))
    with pytest.raises(ConfigError, match=r"reduce_range: expected bool, got 1"):
        get_backend(t)


def test_other_precision_needs_its_own_tolerance(tmp_path: Path) -> None:
    t = load_target(_write(tmp_path))
    with pytest.raises(ConfigError, match=r"is fp32 and has no \[tolerance.int8\] for the golden check; add one to targets/t.toml"):
        t.with_precision("int8")
    cpu8 = load_target("cpu").with_precision("int8")
    assert (cpu8.precision, cpu8.tolerance.atol, cpu8.tolerance.min_label_agreement) == ("int8", 1.0, 0.95)
    assert set(cpu8.manifest_dict()["tolerance"]) == {"atol", "rtol", "min_label_agreement", "min_class_iou"}
    assert cpu8.tolerance.min_class_iou == 0.90  # int8 is held to every class's IoU, not only pixel agreement
    assert "min_class_iou" not in load_target("cpu").manifest_dict()["tolerance"]  # fp32: absent, not null
    assert load_target("cpu").with_precision(None).tolerance.atol == 1e-4


def test_toolchain_named_by_a_profile_must_exist_and_agree(tmp_path: Path) -> None:
    from edgeseg.toolchains import load_toolchain

    tc = load_toolchain("linux-x86_64-py311")
    assert (tc.os, tc.arch, tc.python) == ("linux", "x86_64", "3.11") and "manylinux2014_x86_64" in tc.pip_platforms
    p = _write(tmp_path)
    p.write_text(p.read_text().replace('arch = "x86_64"', 'arch = "x86_64"\ntoolchain = "linux-x86_64-py311"'))
    assert load_target(p).platform.toolchain == "linux-x86_64-py311"
    p.write_text(p.read_text().replace('arch = "x86_64"', 'arch = "aarch64"'))
    with pytest.raises(ConfigError, match=r"platform\.arch = 'aarch64' but toolchain 'linux-x86_64-py311' says 'x86_64'"):
        load_target(p)
    p.write_text(p.read_text().replace('toolchain = "linux-x86_64-py311"', 'toolchain = "riscv"'))
    with pytest.raises(ConfigError, match="unknown toolchain 'riscv'; available: linux-aarch64-jetpack6-py310, linux-aarch64-py311, linux-armhf-py311, linux-x86_64-py311, macos-arm64-py311"):
        load_target(p)
