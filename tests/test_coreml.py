"""Apple/CoreML: the .mlpackage is converted and validated here; prediction needs macOS.

On Linux the tests check the package's spec (names, shapes, dtypes, image
input), weight compression, reproducible bytes, the clear "macOS only" path,
and the offline macOS arm64 wheels. The ``macos``-marked test runs the golden
check where CoreML can predict.
"""

from __future__ import annotations

import json
import platform
import tarfile
from pathlib import Path

import pytest

import edgeseg
from conftest import edgeseg_cli
from edgeseg import ConfigError, ConversionError

pytest.importorskip("coremltools", reason="coremltools is not installed (extra 'coreml')")
ct = pytest.importorskip("edgeseg.backends.coreml")._ct()
from edgeseg.backends.coreml import describe_package, validate_package  # noqa: E402

QUIET = {"report": lambda _line: None}
MACOS = platform.system() == "Darwin"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def apple(tmp_path_factory: pytest.TempPathFactory) -> dict[str, edgeseg.BuildResult]:
    out = tmp_path_factory.mktemp("apple")
    target = edgeseg.load_target("apple")
    palette = target.model_copy(update={"quantization": target.quantization.model_copy(
        update={"options": {"weight_compression": "palettize", "nbits": 4}})})
    image = target.model_copy(update={"backend_options": {**target.backend_options, "input_type": "image"}})
    return {
        "fp16": edgeseg.build(target="apple", out_dir=out / "fp16", **QUIET),
        "fp16-again": edgeseg.build(target="apple", out_dir=out / "again", **QUIET),
        "fp32": edgeseg.build(target="apple", precision="fp32", out_dir=out / "fp32", **QUIET),
        "int8": edgeseg.build(target="apple", precision="int8", calib_count=4, out_dir=out / "int8", **QUIET),
        "palette": edgeseg.build(target=palette, precision="int8", calib_count=4, out_dir=out / "palette", **QUIET),
        "image": edgeseg.build(target=image, out_dir=out / "image", **QUIET),
    }


def _weights(result: edgeseg.BuildResult) -> int:
    return result.manifest["files"]["end2end.mlpackage/Data/com.apple.CoreML/weights/weight.bin"]["size"]


def test_package_validated_against_the_model(apple: dict[str, edgeseg.BuildResult], tmp_path: Path) -> None:
    m = apple["fp16"].manifest
    b = m["backend"]
    assert b["net"] == "end2end.mlpackage" and b["format"] == "mlprogram" and b["compute_precision"] == "fp16"
    assert b["validation"] == {
        "passed": True,
        "inputs": [{"name": "input", "kind": "tensor", "shape": [1, 3, 256, 256], "dtype": "float32"}],
        "outputs": [{"name": "output", "kind": "tensor", "shape": [1, 2, 256, 256], "dtype": "float32"}],
    }
    assert {"end2end.mlpackage/Manifest.json", "end2end.mlpackage/Data/com.apple.CoreML/model.mlmodel"} <= set(m["files"])
    assert apple["fp32"].manifest["backend"]["compute_precision"] == "fp32"
    # the spec inside the archive is what the manifest says (re-read from the packed bytes)
    with tarfile.open(apple["fp16"].archive) as tar:
        tar.extractall(tmp_path, filter="data")
    assert describe_package(ct, tmp_path / "end2end.mlpackage") == {k: b["validation"][k] for k in ("inputs", "outputs")}
    with pytest.raises(ConversionError, match=r"output float32 \[1, 2, 256, 256\], expected float32 \[1, 3, 256, 256\]"):
        validate_package(ct, tmp_path / "end2end.mlpackage", [1, 3, 256, 256], [1, 3, 256, 256], "float32", image=False)
    with pytest.raises(ConversionError, match="input is tensor .* expected image"):
        validate_package(ct, tmp_path / "end2end.mlpackage", [1, 3, 256, 256], [1, 2, 256, 256], "float32", image=True)


def test_rebuild_gives_identical_bytes(apple: dict[str, edgeseg.BuildResult]) -> None:
    a, b = apple["fp16"], apple["fp16-again"]
    assert a.archive.read_bytes() == b.archive.read_bytes()
    assert "com.github.apple.coremltools.conversion_date" not in json.dumps(a.manifest)


def test_int8_weight_compression_shrinks_weights(apple: dict[str, edgeseg.BuildResult]) -> None:
    fp16, lin, pal = _weights(apple["fp16"]), _weights(apple["int8"]), _weights(apple["palette"])
    assert apple["int8"].manifest["backend"]["weight_compression"]["mode"] == "linear_symmetric int8, per channel"
    assert apple["palette"].manifest["backend"]["weight_compression"]["mode"] == "k-means palettization, 4 bits"
    # int8 weights take about half the fp16 bytes, 4-bit palettes about a quarter (small tensors stay fp16)
    assert lin < 0.75 * fp16 and pal < lin, (fp16, lin, pal)
    assert apple["int8"].manifest["backend"]["validation"]["passed"] is True


def test_image_input_folds_normalize(apple: dict[str, edgeseg.BuildResult]) -> None:
    b = apple["image"].manifest["backend"]
    assert b["validation"]["inputs"] == [{"name": "input", "kind": "image", "shape": [1, 3, 256, 256], "color": "RGB"}]
    assert b["image_input"] == {"mean": [0.0, 0.0, 0.0], "std": [255.0, 255.0, 255.0], "color": "RGB"}


def test_image_input_refuses_per_channel_std(tmp_path: Path) -> None:
    target = edgeseg.load_target("apple")
    image = target.model_copy(update={"backend_options": {**target.backend_options, "input_type": "image"}})
    spec = edgeseg.load_spec(edgeseg.DEFAULT_SPEC, {"input": {"std": [58.4, 57.1, 57.4]}})
    with pytest.raises(ConfigError, match="one scale for all channels.*use input_type = 'tensor'"):
        edgeseg.build(edgeseg.DEFAULT_MODEL, spec=spec, target=image, out_dir=tmp_path, **QUIET)
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(MACOS, reason="on macOS prediction works: see test_golden_check_on_macos")
def test_linux_says_macos_only_and_check_is_pending(apple: dict[str, edgeseg.BuildResult]) -> None:
    m = apple["fp16"].manifest
    assert apple["fp16"].check is None and m["build_check"]["passed"] is None
    assert "CoreML prediction is only supported on macOS" in m["build_check"]["verdict"]
    assert m["backend"]["numeric_check"].startswith("pending")
    verify = edgeseg_cli("verify", apple["fp16"].archive)
    assert verify.returncode == 2  # could not run here, not a failed check
    assert verify.stderr.startswith("edgeseg: error: CoreML prediction is only supported on macOS (coremltools 9")
    assert verify.stderr.count("\n") == 1 and verify.stdout == ""  # one line, no page of coremltools import warnings
    info = edgeseg_cli("info", apple["fp16"].archive).stdout
    assert "validated   on the build host: input tensor float32 [1, 3, 256, 256]; output tensor float32 [1, 2, 256, 256]" in info
    assert "on device   coremltools prediction, compute units ALL (macOS only)" in info


def test_offline_archive_bundles_macos_arm64_wheels(tmp_path: Path) -> None:
    """``offline = true``: the archive carries macOS arm64 wheels for numpy, Pillow and coremltools (pip download)."""
    target = edgeseg.load_target("apple")
    offline = target.model_copy(update={"platform": target.platform.model_copy(update={"offline": True})})
    r = edgeseg.build(target=offline, out_dir=tmp_path, **QUIET)
    wheels = r.manifest["runtime"]["wheels"]
    names = {w.split("-")[0].lower() for w in wheels}
    assert {"numpy", "pillow", "coremltools"} <= names
    for w in wheels:
        tag = w.removesuffix(".whl").rsplit("-", 1)[-1]
        assert tag == "any" or "macosx" in tag and ("arm64" in tag or "universal2" in tag), w
        assert "cp311" in w or "py3" in w or "abi3" in w, w
    assert all(f"wheels/{w}" in r.manifest["files"] for w in wheels)
    numpy = next(w for w in wheels if w.startswith("numpy-"))
    assert tuple(int(x) for x in numpy.split("-")[1].split(".")[:2]) < (2, 4)  # coremltools 9 crashes with numpy 2.4
    assert "numpy<2.4" in r.manifest["runtime"]["requirements"]


@pytest.mark.macos
@pytest.mark.skipif(not MACOS, reason="CoreML prediction is only supported on macOS")
def test_golden_check_on_macos(apple: dict[str, edgeseg.BuildResult]) -> None:
    for key in ("fp16", "fp32", "int8", "image"):
        verify = edgeseg_cli("verify", apple[key].archive)
        assert verify.returncode == 0 and verify.stdout.startswith("PASS"), verify.stdout + verify.stderr
