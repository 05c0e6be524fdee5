"""The shared export: spec checked against the graph, NHWC/probability normalization, PyTorch inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edgeseg
from conftest import edgeseg_cli, needs_torch
from edgeseg import ConfigError
from edgeseg.export import export_shared
from edgeseg.spec import load_spec

DEFAULT = edgeseg.DEFAULT_MODEL


def _spec(**changes: dict) -> edgeseg.ModelSpec:
    return load_spec(edgeseg.DEFAULT_SPEC, changes)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"output": {"classes": ["a", "b", "c"], "palette": [[0, 0, 0], [1, 1, 1], [2, 2, 2]]}}, "1-channel probability output means 2 classes; the spec lists 3"),
        ({"input": {"layout": "NCHW"}}, r"spec says input layout NCHW with 3 channels \(RGB\) but model input 'input_1' "
         r"\[1, 256, 256, 3\] has 256 at axis 1; is it NHWC\?"),
        ({"input": {"color": "GRAY", "mean": 0.0, "std": 255.0}}, r"with 1 channel \(GRAY\) but model input 'input_1' \[1, 256, 256, 3\] has 3 at "
         r"axis 3; set input.color"),
        ({"input": {"mean": [1, 2]}}, r"input.mean has 2 values for 3 channels"),
        ({"input": {"color": "RAW"}}, r"color = 'RAW' needs channels"),
        ({"input": {"dtype": "uint16"}}, r"dtype = 'uint16' needs one channel"),
        ({"input": {"size": [128, 128]}}, r"spec input.size \[128, 128\] but the model takes \[256, 256\]"),
        ({"output": {"kind": "labels"}}, "spec says output kind 'labels' but 'activation_10' is floating point"),
        ({"output": {"kind": "logits"}}, r"has 1 channels at axis 3 \(NHWC\) but the spec lists 2 classes"),
        ({"input": {"name": "image"}}, "model has no input named 'image'"),
        ({"input": {"min_side": 900, "max_side": 800}}, "input.min_side 900 is larger than input.max_side 800"),
        ({"input": {"min_side": 512}, "inference": {"mode": "slide", "stride": [128, 128]}},
         "slide' runs windows of input.size: drop input.min_side"),
    ],
)
def test_spec_contradicting_model_is_refused(overrides, message, tmp_path: Path) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match=message):
        export_shared(DEFAULT, _spec(**overrides), tmp_path)


def test_nhwc_probability_model_normalized(tmp_path: Path) -> None:
    import onnxruntime as ort

    shared = export_shared(DEFAULT, _spec(), tmp_path)
    assert shared.input_shape == [1, 3, 256, 256] and shared.output_shape == [1, 2, 256, 256]
    x = np.random.default_rng(0).random((1, 256, 256, 3), dtype=np.float32)
    p = ort.InferenceSession(str(DEFAULT), providers=["CPUExecutionProvider"]).run(None, {"input_1": x})[0]
    out = ort.InferenceSession(str(shared.path), providers=["CPUExecutionProvider"]).run(
        None, {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))}
    )[0]
    np.testing.assert_allclose(out[:, 1], p[..., 0], atol=1e-6)
    np.testing.assert_allclose(out[:, 0], 1 - p[..., 0], atol=1e-6)


def test_threshold_without_argmax_is_in_the_scores(tmp_path: Path) -> None:
    """A threshold other than 0.5 needs no arg-max folding: scores [2t - p, p] arg-max to p > t, before and
    after bilinear resizing (both scores are linear in p), so --probs and the score check keep working."""
    import onnxruntime as ort
    from edgeseg_runtime.pipeline import Postprocess

    shared = export_shared(DEFAULT, _spec(output={"threshold": 0.3}), tmp_path)
    assert shared.output_dtype == "float32" and shared.output_shape == [1, 2, 256, 256]
    photo = Image.open(edgeseg.SAMPLE_IMAGES / "astronaut.png").convert("RGB").resize((256, 256))
    x = (np.asarray(photo, dtype=np.float32) / 255)[None]  # a real person: both classes present
    p = ort.InferenceSession(str(DEFAULT), providers=["CPUExecutionProvider"]).run(None, {"input_1": x})[0][..., 0]
    out = ort.InferenceSession(str(shared.path), providers=["CPUExecutionProvider"]).run(
        None, {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]
    np.testing.assert_allclose(out[:, 1], p, atol=1e-6)
    np.testing.assert_allclose(out[:, 0], 0.6 - p, atol=1e-6)
    labels, _ = Postprocess(num_classes=2, with_argmax=False)(out, 256, 256)
    assert 0.05 < np.mean(p[0] > 0.3) < 0.95  # both classes present: the check below can fail
    np.testing.assert_array_equal(labels, (p[0] > 0.3).astype(np.uint8))
    big, scores = Postprocess(num_classes=2, with_argmax=False)(out, 600, 500, want_scores=True)
    np.testing.assert_array_equal(big, (scores[1] > 0.3).astype(np.uint8))  # the resized p thresholded at 0.3


def test_threshold_folded_with_argmax(tmp_path: Path) -> None:
    import onnxruntime as ort

    shared = export_shared(DEFAULT, _spec(output={"threshold": 0.3}), tmp_path, with_argmax=True)
    assert shared.output_dtype == "int64" and shared.output_shape == [1, 1, 256, 256]
    x = np.random.default_rng(1).random((1, 256, 256, 3), dtype=np.float32)
    p = ort.InferenceSession(str(DEFAULT), providers=["CPUExecutionProvider"]).run(None, {"input_1": x})[0]
    labels = ort.InferenceSession(str(shared.path), providers=["CPUExecutionProvider"]).run(
        None, {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))}
    )[0]
    assert np.array_equal(labels[0, 0], (p[0, ..., 0] > 0.3).astype(np.int64))


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "model file is empty"), (b"this is not onnx at all", "not a valid ONNX model"), (b"PK\x03\x04garbage", None),
     (b"\x1c\x00\x00\x00TFL3\x14\x00", "not a valid TensorFlow Lite model (truncated: 10 bytes")],
)
def test_bad_model_files(content: bytes, message: str | None, tmp_path: Path) -> None:
    """Said in one line, with a spec or without one (the file is read before a missing spec is reported)."""
    for suffix in (".onnx", ".tflite"):
        path = tmp_path / f"m{suffix}"
        path.write_bytes(content)
        for spec in (["--spec", edgeseg.DEFAULT_SPEC], []):
            proc = edgeseg_cli("build", "--target", "cpu", "--model", path, *spec, "--out", tmp_path / "d")
            assert proc.returncode == 2
            assert proc.stderr.count("\n") == 1, proc.stderr  # one line
            if message and (spec or (suffix == ".onnx" and b"TFL3" not in content)):  # else: "a spec is needed"
                assert message in proc.stderr, (suffix, spec, proc.stderr)
            assert not (tmp_path / "d").exists()


def test_missing_model_and_spec(tmp_path: Path) -> None:
    proc = edgeseg_cli("build", "--target", "cpu", "--model", tmp_path / "nope.onnx", "--spec", edgeseg.DEFAULT_SPEC)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = edgeseg_cli("build", "--target", "cpu", "--model", DEFAULT)
    assert proc.returncode == 2 and "a model spec is needed" in proc.stderr


# ---------------------------------------------------------------- PyTorch inputs


def _tiny_net():  # noqa: ANN202
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Tiny(nn.Module):
        """Conv encoder, bilinear upsample back to the input size: logits [N, 3, H, W]."""

        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))

        def forward(self, x):  # noqa: ANN001, ANN202
            return nn.functional.interpolate(self.body(x), size=x.shape[-2:], mode="bilinear", align_corners=False)

    return Tiny().eval()


TINY_SPEC = {
    "name": "tiny",
    "input": {"layout": "NCHW", "size": [64, 96], "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]},
    "output": {"kind": "logits", "classes": ["a", "b", "c"]},
}


@needs_torch
@pytest.mark.slow
def test_nn_module_build_agrees_with_pytorch(tmp_path: Path, photos: dict[str, Path]) -> None:
    import torch

    from edgeseg_runtime import Archive, Segmentor, load_image

    net = _tiny_net()
    result = edgeseg.build(net, target="cpu", spec=load_spec(None, TINY_SPEC), out_dir=tmp_path, report=lambda _l: None)
    assert result.archive.name == "tiny-cpu-fp32.tar.gz" and result.check is not None and result.check.passed
    rgb = load_image(photos["astronaut"])
    with Archive.open(result.archive) as archive, Segmentor(archive) as seg:
        x = seg.prepare(rgb)
        with torch.no_grad():
            logits = net(torch.from_numpy(x)).numpy()
        out = seg.infer(x)
        np.testing.assert_allclose(out, logits, atol=1e-4)
        labels = seg.segment(rgb).labels
    assert labels.shape == rgb.shape[:2] and set(np.unique(labels)) <= {0, 1, 2}


@needs_torch
@pytest.mark.slow
def test_torchscript_file_with_argmax(tmp_path: Path, photos: dict[str, Path]) -> None:
    import torch

    ts = tmp_path / "tiny.pt"
    torch.jit.trace(_tiny_net(), torch.zeros(1, 3, 64, 96)).save(str(ts))
    spec = tmp_path / "tiny.toml"
    spec.write_text(
        'name = "tiny"\n[input]\nsize = [64, 96]\nstd = [255.0, 255.0, 255.0]\n'
        '[output]\nkind = "logits"\nclasses = ["a", "b", "c"]\n'
    )
    proc = edgeseg_cli("build", "--target", "cpu", "--model", ts, "--spec", spec, "--with-argmax", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    archive = Path(proc.stdout.strip().splitlines()[-1])
    proc = edgeseg_cli("run", archive, photos["rocket"], "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    proc = edgeseg_cli("run", archive, photos["rocket"], "--out", tmp_path / "o", "--probs")
    assert proc.returncode == 2 and "argmax folded in" in proc.stderr
    proc = edgeseg_cli("verify", archive)
    assert proc.returncode == 0 and proc.stdout.startswith("PASS")
