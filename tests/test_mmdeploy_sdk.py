"""MMDeploy SDK compatibility, checked by the real SDK: ``mmdeploy_runtime.Segmentor`` runs edgeseg's ONNX Runtime archives unchanged.

The SDK (PyPI ``mmdeploy-runtime==1.3.1``, cp311 wheel) needs numpy < 2 (with
numpy 2 it silently returns constant arrays), so it runs in its own venv,
created once under ``~/.cache/edgeseg-tests`` (``EDGESEG_SDK_VENV`` to put it
elsewhere) from PyPI. Its bundled ONNX Runtime 1.15 reads ONNX IR <= 9; the
Net task's name must be deploy.json's model name; the output is ``output``.
The SDK's label maps (argmax of its resized scores) are compared with
``edgeseg run``'s on real photos.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edgeseg
from conftest import edgeseg_cli

pytestmark = pytest.mark.slow
SDK = "mmdeploy-runtime==1.3.1"
SDK_SCRIPT = '''
import sys, numpy as np
from PIL import Image
from mmdeploy_runtime import Segmentor
seg = Segmentor(model_path=sys.argv[1], device_name="cpu", device_id=0)
for path in sys.argv[3:]:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    res = np.asarray(seg(np.ascontiguousarray(rgb[..., ::-1])))  # BGR, as cv2.imread gives it
    labels = res.argmax(0) if res.ndim == 3 else res
    np.save(f"{sys.argv[2]}/{path.rsplit('/', 1)[-1].rsplit('.', 1)[0]}.npy", labels.astype(np.int32))
'''


@pytest.fixture(scope="module")
def sdk_python() -> Path:
    venv = Path(os.environ.get("EDGESEG_SDK_VENV", Path.home() / ".cache" / "edgeseg-tests" / "mmdeploy-sdk-1.3.1"))
    python = venv / "bin" / "python"
    if not (venv / ".complete").is_file():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True)
        proc = subprocess.run([str(python), "-m", "pip", "install", "-q", SDK, "numpy<2", "pillow"], capture_output=True, text=True)
        assert proc.returncode == 0, f"installing {SDK} failed: {proc.stderr[-500:]}"
        (venv / ".complete").write_text("ok\n")
    return python


def _sdk_agrees_with_run(python: Path, archive: Path, photos: list[Path], tmp: Path) -> list[float]:
    unpacked = tmp / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")  # the SDK reads the archive folder as it is
    (tmp / "sdk").mkdir()
    script = tmp / "sdk_run.py"
    script.write_text(SDK_SCRIPT)
    proc = subprocess.run([str(python), str(script), str(unpacked), str(tmp / "sdk"), *map(str, photos)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-800:]
    run = edgeseg_cli("run", "--archive", archive, *photos, "--out", tmp / "run")
    assert run.returncode == 0, run.stderr
    agreement = []
    for photo in photos:
        sdk = np.load(tmp / "sdk" / f"{photo.stem}.npy")
        ours = np.asarray(Image.open(tmp / "run" / f"{photo.stem}.png"))
        assert sdk.shape == ours.shape
        assert len(np.unique(sdk)) > 1, "the SDK returned a constant map"  # numpy 2 symptom
        agreement.append(float(np.mean(sdk == ours)))
    return agreement


def test_sdk_runs_the_default_model_archive(sdk_python: Path, archives: dict[str, Path], photos: dict[str, Path], tmp_path: Path) -> None:
    agreement = _sdk_agrees_with_run(sdk_python, archives["cpu"], [photos["astronaut"], photos["camera"]], tmp_path)
    assert min(agreement) >= 0.999, agreement


def test_sdk_runs_an_mmseg_model_archive(sdk_python: Path, photos: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("mmseg")
    from edgeseg.mmseg import load_mmseg

    module, spec = load_mmseg("bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024", input_size=(256, 512))
    archive = edgeseg.build(module, spec=spec, target="cpu", out_dir=tmp_path / "dist", report=lambda _l: None).archive
    with tarfile.open(archive) as tar:
        import onnx

        model = onnx.load_from_string(tar.extractfile("end2end.onnx").read())
    assert model.ir_version <= 9 and [o.name for o in model.graph.output] == ["output"]
    agreement = _sdk_agrees_with_run(sdk_python, archive, list(photos.values()), tmp_path)
    assert min(agreement) >= 0.999, agreement
