"""MMSegmentation import (edgeseg.mmseg), the CLI's --mmseg-config, and the measured support matrix (edgeseg.matrix).

Real mmsegmentation 1.2.2 configs from the wheel, built with random weights
(no checkpoint is reachable); a checkpoint written here from one of them
carries the same weights into the CLI's process, so the archive can be
compared with that PyTorch model.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import edgeseg_cli

pytest.importorskip("mmseg", reason="mmseg is not installed (extra 'mmseg')")
torch = pytest.importorskip("torch", reason="torch is not installed (extra 'torch')")

import edgeseg  # noqa: E402
from edgeseg.errors import ConfigError, ConversionError  # noqa: E402
from edgeseg.mmseg import config_path, load_mmseg  # noqa: E402

BISENET = "bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024"


@pytest.fixture(scope="module")
def bisenet() -> tuple[object, edgeseg.ModelSpec]:
    torch.manual_seed(0)
    return load_mmseg(BISENET, input_size=(256, 512))


def test_spec_comes_from_the_config(bisenet) -> None:  # noqa: ANN001
    from mmseg.datasets import CityscapesDataset

    _, spec = bisenet
    assert list(spec.input.size) == [256, 512] and spec.input.layout == "NCHW"
    assert list(spec.input.mean) == [123.675, 116.28, 103.53] and list(spec.input.std) == [58.395, 57.12, 57.375]
    assert spec.input.color == "RGB"  # bgr_to_rgb=True in the config's SegDataPreProcessor
    assert list(spec.output.classes) == list(CityscapesDataset.METAINFO["classes"])
    assert [list(c) for c in spec.output.palette] == [list(c) for c in CityscapesDataset.METAINFO["palette"]]
    assert "random weights" in spec.description


def test_archive_names_and_random_weights_are_reproducible() -> None:
    """The model name is the config's {algorithm}_{components} (mmseg's naming convention), and two builds
    without a checkpoint get the same (seeded) weights, leaving the caller's random generator alone."""
    import torch

    from edgeseg.mmseg import model_name

    assert model_name("fast_scnn_8xb4-160k_cityscapes-512x1024") == "fast_scnn"
    assert model_name("pspnet_r50-d8_4xb2-40k_cityscapes-512x1024") == "pspnet_r50-d8"
    assert model_name("bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024") == "bisenetv2_fcn"
    assert model_name("my.config") == "my-config"
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, spec = load_mmseg("fast_scnn_8xb4-160k_cityscapes-512x1024", input_size=(128, 256))
    assert torch.rand(1) == expected_next  # the caller's generator is where it was
    b, _ = load_mmseg("fast_scnn_8xb4-160k_cityscapes-512x1024", input_size=(128, 256))
    assert spec.name == "fast_scnn"
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(v.float().std() > 0 for v in sa.values() if v.numel() > 1)  # random, not constant


def test_config_names_and_paths() -> None:
    path = config_path(BISENET)
    assert path.is_file() and path.parent.name == "bisenetv2" and path.parts[-3] == "configs"
    assert config_path(path) == path
    with pytest.raises(ConfigError, match="no MMSegmentation config"):
        config_path("not_a_config_1x1")


def test_cli_refuses_mixed_model_sources(tmp_path: Path) -> None:
    both = edgeseg_cli("build", "--target", "cpu", "--mmseg-config", BISENET, "--color", "BGR", "--out", tmp_path)
    assert both.returncode == 2 and "only --input-size applies" in both.stderr
    stray = edgeseg_cli("build", "--target", "cpu", "--checkpoint", tmp_path / "x.pth", "--out", tmp_path)
    assert stray.returncode == 2 and "--checkpoint goes with --mmseg-config" in stray.stderr
    missing = edgeseg_cli("build", "--target", "cpu", "--mmseg-config", BISENET, "--checkpoint", tmp_path / "x.pth", "--out", tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert not list(tmp_path.glob("*.tar.gz"))


def _pytorch_labels(module, spec, photo: Path) -> np.ndarray:  # noqa: ANN001
    """PyTorch's label map for ``photo``, with edgeseg's own pre/post-processing around the module."""
    from edgeseg_runtime.images import load_image
    from edgeseg_runtime.pipeline import Postprocess

    from edgeseg.pipeline import stretch_to

    rgb = load_image(photo)
    with torch.no_grad():
        logits = module(torch.from_numpy(stretch_to(spec, *spec.input.size)(rgb))).numpy()
    return Postprocess(len(spec.output.classes), False)(logits, *rgb.shape[:2])[0]


@pytest.mark.slow
def test_build_from_config_and_checkpoint_for_intel_agrees_with_pytorch(bisenet, photos: dict[str, Path], tmp_path: Path) -> None:  # noqa: ANN001
    pytest.importorskip("openvino", reason="openvino is not installed (extra 'openvino')")
    module, spec = bisenet
    ckpt = tmp_path / "bisenetv2.pth"
    torch.save({"state_dict": module.model.state_dict(), "meta": {}}, ckpt)
    proc = edgeseg_cli("build", "--mmseg-config", config_path(BISENET), "--checkpoint", ckpt, "--input-size", "256x512",
                       "--target", "intel", "--out", tmp_path / "dist")
    assert proc.returncode == 0, proc.stderr
    archive = next((tmp_path / "dist").glob("bisenetv2_fcn-intel-*.tar.gz"))  # the config's model name
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        pipeline = json.load(tar.extractfile("pipeline.json"))
    assert manifest["provenance"]["exporter"] == "torchscript"
    _, resize, normalize, *_ = pipeline["pipeline"]["tasks"][0]["transforms"]
    assert resize["size"] == [512, 256] and normalize["mean"] == list(spec.input.mean) and normalize["to_rgb"] is True
    run = edgeseg_cli("run", archive, *photos.values(), "--out", tmp_path / "run")
    assert run.returncode == 0, run.stderr
    for name, photo in photos.items():
        ours = np.asarray(Image.open(tmp_path / "run" / f"{name}.png"))
        ref = _pytorch_labels(module, spec, photo)
        assert ours.shape == ref.shape
        assert np.mean(ours == ref) >= 0.99, name  # OpenVINO fp16 vs PyTorch fp32, random weights


def test_config_built_from_mmdetection_modules_says_so() -> None:
    import importlib.util

    from edgeseg.errors import ToolchainError

    if importlib.util.find_spec("mmdet") is not None:
        pytest.skip("MMDetection is installed here")
    with pytest.raises(ToolchainError, match=r"MMDetection modules \(mmdet\.\*\)"):
        load_mmseg("mask2former_r50_8xb2-90k_cityscapes-512x1024", input_size=(64, 128))


def _psamask_kernel(x: np.ndarray, psa_type: str, hm: int, wm: int) -> np.ndarray:
    """mmcv's CPU kernel (``psamask_collect_forward`` / ``psamask_distribute_forward``), loop for loop."""
    n, _, h, w = x.shape
    out = np.zeros((n, h * w, h, w), np.float32)
    flat = out.reshape(-1)
    for b in range(n):
        for y in range(h):
            for z in range(w):
                for i in range(max(0, (hm - 1) // 2 - y), min(hm, h + (hm - 1) // 2 - y)):
                    for j in range(max(0, (wm - 1) // 2 - z), min(wm, w + (wm - 1) // 2 - z)):
                        q = (i + y - (hm - 1) // 2) * w + (j + z - (wm - 1) // 2)
                        p = y * w + z
                        at = (b * h * w + q) * h * w + p if psa_type == "collect" else (b * h * w + p) * h * w + q
                        flat[at] = x[b, i * wm + j, y, z]
    return out


@pytest.mark.parametrize("psa_type", ["collect", "distribute"])
@pytest.mark.parametrize(("h", "w", "hm", "wm"), [(4, 5, 7, 9), (6, 3, 5, 5), (3, 4, 3, 3)])
def test_psamask_in_plain_pytorch_matches_mmcvs_kernel(psa_type: str, h: int, w: int, hm: int, wm: int) -> None:
    from edgeseg.mmseg import psamask

    x = np.random.default_rng(0).standard_normal((2, hm * wm, h, w)).astype(np.float32)
    got = psamask(torch.from_numpy(x), psa_type, (hm, wm)).numpy()
    np.testing.assert_array_equal(got, _psamask_kernel(x, psa_type, hm, wm))


@pytest.mark.slow
def test_psanet_exports_and_agrees_with_pytorch(tmp_path: Path) -> None:
    import onnxruntime as ort

    from edgeseg.export import export_shared

    module, spec = load_mmseg("psanet_r50-d8_4xb2-40k_cityscapes-512x1024", input_size=(64, 128))
    shared = export_shared(module, spec, tmp_path)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 128)).astype(np.float32)
    got = ort.InferenceSession(str(shared.path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    assert np.abs(got - ref).max() <= 1e-4 * (ref.max() - ref.min())


def test_model_that_calls_a_compiled_op_fails_with_one_clear_line() -> None:
    import importlib.util

    from mmcv.ops import PSAMask

    from edgeseg.mmseg import WholeInference, _mmseg

    if importlib.util.find_spec("mmcv._ext") is not None:
        pytest.skip("mmcv with compiled ops is installed")
    _mmseg()  # mmcv's compiled ops stand in for the import (mmcv-lite has none)

    class CompiledOpNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mask = PSAMask("collect", (3, 3))  # mmcv's own op, not the plain-PyTorch forward load_mmseg gives it

        def encode_decode(self, x, _metas):  # noqa: ANN001, ANN202
            return self.mask(x.repeat(1, 3, 1, 1))

    with pytest.raises(ConversionError, match=r"^this model calls mmcv's compiled op 'psamask_forward', which mmcv-lite"):
        WholeInference(CompiledOpNet())(torch.zeros(1, 3, 4, 4))


@pytest.mark.slow
def test_fast_matrix_measures_exporter_shape_and_onnxruntime(tmp_path: Path) -> None:
    common = ("--backends", "onnxruntime,tflite,coreml", "--size", "128x256", "--runs", "2", "--out", tmp_path)
    first = edgeseg_cli("matrix", "--models", "BiSeNetV2", *common)
    assert first.returncode == 0, first.stderr
    before = json.loads((tmp_path / "support-matrix.json").read_text())["models"]
    # a second run keeps the measured row (--resume) and measures the new model in a worker process (--jobs)
    proc = edgeseg_cli("matrix", "--models", "BiSeNetV2,Fast-SCNN", "--resume", "--jobs", "2", *common)
    assert proc.returncode == 0, proc.stderr
    assert "resuming: 1 of 2 models" in proc.stderr
    doc = json.loads((tmp_path / "support-matrix.json").read_text())
    assert doc["meta"]["models_done"] == "2/2" and doc["models"][0] == before[0]  # kept as measured, latencies included
    rows = {r["model"]: r for r in doc["models"]}
    assert list(rows) == ["BiSeNetV2", "Fast-SCNN"]
    # BiSeNetV2: the TorchScript exporter takes it and the dynamic-H/W graph is right at another size
    assert rows["BiSeNetV2"]["exporter"] == "torchscript" and rows["BiSeNetV2"]["shape"] == "dynamic"
    # Fast-SCNN: non-global AdaptiveAvgPool2d, which the TorchScript exporter refuses unless it is rewritten as
    # plain pooling at the static size (checked against PyTorch at export); a dynamic export keeps it: static only
    assert rows["Fast-SCNN"]["exporter"] == "torchscript" and rows["Fast-SCNN"]["shape"] == "static"
    assert rows["Fast-SCNN"]["rewrites"].startswith("adaptive_avg_pool2d x3; max abs diff vs PyTorch")
    for row in rows.values():
        # well-conditioned: rounding the input, or one of 8 sampled layers, to fp16 moves PyTorch little
        assert 0 < row["fp16_input_rel"] < 5e-3 and len(row["fp16_layer_rel"]) == 8  # of those the forward calls
        assert max(row["fp16_layer_rel"].values()) < 5e-3
        cell = row["cells"]["onnxruntime"]["fp32"]
        assert cell["status"] == "Y" and cell["label_agreement"] >= 0.99 and cell["max_abs_diff"] < 1e-3
        assert cell["latency_ms"] > 0 and cell["size_mb"] > 0
    # the ONNX -> PyTorch path of LiteRT and CoreML takes TorchScript-exported mmseg graphs
    # (Resize sizes given as keyword arguments are frozen; initializers folded)
    lite = rows["BiSeNetV2"]["cells"]["tflite"]["fp32"]
    assert lite["status"] == "Y" and lite["rel_diff"] <= 1e-3, lite
    coreml = rows["BiSeNetV2"]["cells"]["coreml"]["fp32"]
    assert coreml["status"] == "?" and coreml["convert_ok"] and "macOS" in coreml["error"], coreml
    md = (tmp_path / "support-matrix.md").read_text()
    assert "| Model | Export | Shape | ONNX Runtime | LiteRT | CoreML |" in md
    assert "| Fast-SCNN | torchscript | static | Y" in md and "random weights" in md
    bad = edgeseg_cli("matrix", "--models", "NoSuchNet", "--out", tmp_path / "bad")
    assert bad.returncode == 2 and "unknown model 'NoSuchNet'" in bad.stderr


def _winner(t: torch.Tensor) -> torch.Tensor:
    """One-hot of the channel argmax: a discrete choice, like PointRend's top-k."""
    return torch.nn.functional.one_hot(t.argmax(1), t.shape[1]).permute(0, 3, 1, 2).float()


class _Choice(torch.nn.Module):
    """An identity 1x1 conv and a channel choice, the choice made on the input or on the conv's output."""

    def __init__(self, choose_on_input: bool) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.conv.bias.zero_()
        self.choose_on_input = choose_on_input

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.conv(_winner(t)) if self.choose_on_input else _winner(self.conv(t))


def test_fp16_sensitivity_tells_where_a_single_rounding_moves_the_model() -> None:
    from edgeseg.matrix import _mismatch, fp16_sensitivity

    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (1, 3, 8, 8)).astype(np.float32)
    x[:, 1] = x[:, 0] + 1e-5  # channel 1 beats channel 0 by less than fp16 resolves: rounding ties them

    def moves(module: torch.nn.Module) -> tuple[float, dict[str, float]]:
        with torch.no_grad():
            ref = module(torch.from_numpy(x)).numpy()
        return fp16_sensitivity(module.eval(), x, ref)

    smooth = moves(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)))
    assert 1e-6 < smooth[0] < 1e-3 and list(smooth[1]) == ["0", "2"] and 0 < max(smooth[1].values()) < 1e-3
    # the choice is made after the conv: rounding the input or the conv's output flips it (a whole one-hot step)
    assert moves(_Choice(choose_on_input=False)) == (1.0, {"conv": 1.0})
    # made on the input: only the input's rounding flips it; the conv then sees exact one-hots (0 and 1 are fp16)
    assert moves(_Choice(choose_on_input=True)) == (1.0, {"conv": 0.0})

    anywhere = _mismatch(0.594, "fp16", 0.528, {"a": 0.273, "b": 0.0, "c": 0.387})
    assert anywhere == ("logits differ from PyTorch by 59.4% of their range; rounding one of 3 sampled layers alone "
                        "moves PyTorch by a median 27.3% (conditioning: no few fp32 layers fix it)")
    input_only = _mismatch(0.056, "fp16", 0.015, {"a": 7e-4, "b": 9e-4})
    assert input_only == ("logits differ from PyTorch by 5.6% of their range; rounding only its input moves PyTorch "
                          "1.5% (one of 2 sampled inner layers ≤ 0.09%)")
    # a well-conditioned model's fp16 N, and any fp32 N, get no such reason
    plain = "logits differ from PyTorch by 5.6% of their range"
    assert _mismatch(0.056, "fp16", 1e-4, {"a": 1e-4}) == _mismatch(0.056, "fp32", 0.015, {"a": 0.3}) == plain


def test_matrix_counts_and_mmdeploys_cells(tmp_path: Path) -> None:
    from edgeseg.matrix import MMDEPLOY_Y, SEED_MODELS, Cell, ModelRow, summary, write_matrix

    assert set(MMDEPLOY_Y) <= set(SEED_MODELS) and MMDEPLOY_Y["PSPNet"] >= {"onnxruntime", "ncnn"}
    y = Cell("Y", True, 1.0, 1e-6, 1e-6, 1.0, 1.0)
    rows = [
        ModelRow("PSPNet", "p", (8, 8), True, True, "torchscript", measured="2026-12-01",
                 cells={"ncnn": {"fp32": y, "fp16": Cell("N", True, error="logits differ")}}),
        ModelRow("FastFCN", "f", (8, 8), True, True, "torchscript", measured="2026-11-21",
                 cells={"ncnn": {"fp32": Cell("N", error="pnnx left ops ncnn has no layer for: X")}}),
        ModelRow("DMNet", "d", (8, 8), True, True, "torchscript", cells={"ncnn": {"fp32": Cell("?", True, error="x")}}),
        ModelRow("PSANet", "s", (8, 8), error="compiled op"),
    ]
    counts = summary(rows, ["ncnn"])["ncnn"]
    # DMNet: MMDeploy says N for ncnn, so it is not held to it; PSANet did not export: not counted
    assert counts == {"exported": 3, "fp32_y": 1, "fp16_measured": 1, "fp16_y": 0, "converts": 2, "mmdeploy_y": 2,
                      "mmdeploy_y_here": 1, "mmdeploy_not_y": {"FastFCN": "N: pnnx left ops ncnn has no layer for: X"}}
    md = write_matrix(rows, tmp_path, meta={"date": "2026-12-01"})[1].read_text()
    assert "| ncnn | 1/3 | 2/3 | 0/1 | 1/2 | FastFCN: N: pnnx left ops ncnn has no layer for: X |" in md
    assert "rows measured 2026-11-21 to 2026-12-01" in md
