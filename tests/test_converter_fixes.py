"""Workarounds for what the PyPI converters get wrong or refuse, each checked against PyTorch or ONNX Runtime.

- static exports: non-global adaptive average pooling as plain pooling (TorchScript exporter instead of dynamo);
- pnnx (ncnn): ReduceSum with its axes as an input, and ``F.normalize`` over a non-channel axis;
- onnx2torch / LiteRT: ``Clip`` with an empty max, Expand/Squeeze/Unsqueeze/Gather with constant inputs, padded
  ConvTranspose, a 1x1 convolution of a 1x1 input, ``c - x`` / ``c / x`` / ``1 / x``, a convolution with computed
  weights, and transposed-view weights (written transposed by litert-torch).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_torch
from edgeseg.errors import ConversionError
from edgeseg.spec import load_spec

torch = pytest.importorskip("torch", reason="torch is not installed (extra 'torch')")
F = torch.nn.functional


def _spec(size: tuple[int, int], classes: int = 3):  # noqa: ANN202
    return load_spec(None, {
        "name": "tiny", "version": "1.0.0",
        "input": {"size": list(size), "layout": "NCHW", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
        "output": {"kind": "logits", "classes": [f"c{i}" for i in range(classes)]},
    })


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.abs(got.astype(np.float64) - ref).max() / max(float(ref.max() - ref.min()), 1e-12))


@needs_torch
@pytest.mark.parametrize("size", [(32, 64), (31, 45), (7, 5), (6, 9)])
@pytest.mark.parametrize("out", [2, 3, 6, (3, None), (None, 4), (5, 7)])
def test_adaptive_pooling_rewrite_equals_pytorch(size: tuple[int, int], out: object) -> None:
    from collections import Counter

    from edgeseg.torch_rewrites import static_rewrites

    x = torch.randn(2, 4, *size, generator=torch.Generator().manual_seed(1))
    ref = F.adaptive_avg_pool2d(x, out)
    done: Counter[str] = Counter()
    with static_rewrites(done):
        got = F.adaptive_avg_pool2d(x, out)
        assert torch.nn.AdaptiveAvgPool2d(out)(x).shape == ref.shape  # the module goes through the function too
    assert F.adaptive_avg_pool2d is not None and torch.equal(F.adaptive_avg_pool2d(x, out), ref)  # restored after
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) <= 1e-6 * float(ref.abs().max())
    assert done["adaptive_avg_pool2d"] == (0 if ref.shape[-2:] == x.shape[-2:] else 2)


class _Pyramid(torch.nn.Module):
    """Conv stem and PSP-style bins 1/2/3/6 at a size none of 3, 6 divides; fixed random weights."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 8, 3, 2, 1)
        self.bins = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(b), torch.nn.Conv2d(8, 2, 1))
                                        for b in (1, 2, 3, 6))
        self.head = torch.nn.Conv2d(16, 3, 1)

    def forward(self, x):  # noqa: ANN001, ANN201
        f = self.stem(x)
        pyramid = [f] + [F.interpolate(b(f), size=f.shape[2:], mode="bilinear", align_corners=False) for b in self.bins]
        return F.interpolate(self.head(torch.cat(pyramid, 1)), size=x.shape[2:], mode="bilinear", align_corners=False)


@needs_torch
def test_static_export_rewrites_adaptive_pooling_and_matches_pytorch(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from edgeseg.export import export_shared

    module, spec = _Pyramid().eval(), _spec((44, 68))  # stem output 22x34: bins 3 and 6 do not divide it
    shared = export_shared(module, spec, tmp_path / "static")
    assert shared.exporter == "torchscript", "the TorchScript exporter refuses non-dividing adaptive pooling unrewritten"
    assert shared.rewrites.startswith("adaptive_avg_pool2d x3; max abs diff vs PyTorch")
    ops = {n.op_type for n in onnx.load(str(shared.path)).graph.node}
    assert "AveragePool" in ops and "ReduceMean" in ops and not ops & {"Unsqueeze", "Where", "GatherND"}
    x = np.random.default_rng(3).standard_normal((1, 3, 44, 68)).astype(np.float32)
    got = ort.InferenceSession(str(shared.path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    assert _rel(got, ref) < 1e-5
    # a dynamic export keeps PyTorch's op (the sizes would be baked in): the dynamo exporter, no rewrite
    dynamic = export_shared(module, spec, tmp_path / "dynamic", dynamic=True)
    assert dynamic.exporter == "dynamo" and dynamic.rewrites == ""


@needs_torch
def test_a_wrong_rewrite_is_caught_by_the_check_against_pytorch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeseg import torch_rewrites
    from edgeseg.export import export_shared

    monkeypatch.setattr(torch_rewrites, "adaptive_bins", lambda n, m: [(i * n // m, i * n // m + 1) for i in range(m)])
    with pytest.raises(ConversionError, match=r"static-shape rewrite of adaptive_avg_pool2d x3 changed the model's output"):
        export_shared(_Pyramid().eval(), _spec((44, 68)), tmp_path)


class _Reductions(torch.nn.Module):
    """What pnnx 20261020 converted wrong: a sum over W (ReduceSum, axes as an input), L2 normalization over
    the flattened spatial axis of a 3-D tensor and L1 normalization over W (both ``F.normalize``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, 1, 1)

    def forward(self, x):  # noqa: ANN001, ANN201
        f = self.conv(x)
        n, c, h, w = f.shape
        flat = F.normalize(f.reshape(n, c, h * w), dim=2).reshape(n, c, h, w)
        return torch.cat([f.sum(3, keepdim=True).expand(n, c, h, w) / w, flat * h, F.normalize(f, p=1, dim=3)], 1)


def _onnx(module: torch.nn.Module, size: tuple[int, int], path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """The module exported (TorchScript exporter, opset 17), a seeded input, and ONNX Runtime's output for it."""
    import onnxruntime as ort

    with torch.no_grad():
        torch.onnx.export(module, (torch.zeros(1, 3, *size),), str(path), opset_version=17, input_names=["input"],
                          output_names=["output"], dynamo=False)
    x = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    return path, x, ref


def _convert_and_run(onnx_path: Path, target_name: str, x: np.ndarray, out: Path) -> tuple[np.ndarray, dict]:
    from edgeseg_runtime.runners import runner_class

    from edgeseg.backends import get_backend
    from edgeseg.targets import load_target

    target = load_target(target_name).with_precision("fp32")
    out.mkdir()
    files = get_backend(target).convert(onnx_path, target, out)
    with runner_class(target.backend)(out, {"net": files.net, "weights": files.weights, **files.details},
                                      dict(target.backend_options)) as runner:
        return runner.infer({"input": x})["output"], files.details


@needs_torch
@pytest.mark.skipif(importlib.util.find_spec("pnnx") is None or importlib.util.find_spec("ncnn") is None,
                    reason="pnnx/ncnn not installed (extra 'ncnn')")
def test_pnnx_rewrites_give_onnxruntimes_numbers(tmp_path: Path) -> None:
    import onnx

    from edgeseg.backends.ncnn import rewrite_for_pnnx

    path, x, ref = _onnx(_Reductions().eval(), (12, 20), tmp_path / "reductions.onnx")
    got, details = _convert_and_run(path, "arm", x, tmp_path / "ncnn")
    assert details["onnx_rewrites"] == {"ReduceSum -> ReduceMean x count": 1, "F.normalize's Clip -> Max": 2}
    assert _rel(got, ref) < 1e-5
    # the rewritten graph itself computes the same as the original (ONNX Runtime on both)
    import onnxruntime as ort

    model = onnx.load(str(path))
    rewrite_for_pnnx(model)
    same = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert _rel(same, ref) < 1e-6


class _LiteRTTraps(torch.nn.Module):
    """What LiteRT's path refused: a padded ConvTranspose (ERFNet), GCNet's context block (attention pooling to
    ``(1, C, 1, 1)`` by a matmul, then 1x1 convs of that 1x1 input), ``clamp(min=)`` (an empty Clip max), and
    Expand/Unsqueeze/Squeeze whose shapes and axes are graph inputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, 2, 1)
        self.up = torch.nn.ConvTranspose2d(4, 4, 3, 2, 1, output_padding=1)
        self.mask = torch.nn.Conv2d(4, 1, 1)
        self.mix = torch.nn.Sequential(torch.nn.Conv2d(4, 2, 1), torch.nn.LayerNorm([2, 1, 1]), torch.nn.ReLU(),
                                       torch.nn.Conv2d(2, 4, 1))

    def forward(self, x):  # noqa: ANN001, ANN201
        f = self.up(self.conv(x))
        n, c, h, w = f.shape
        weights = self.mask(f).view(n, 1, h * w).softmax(2).unsqueeze(-1)
        gate = self.mix(torch.matmul(f.view(n, c, h * w).unsqueeze(1), weights).view(n, c, 1, 1))
        norm = f / f.norm(dim=1, keepdim=True).clamp(min=1e-6)
        squeezed = f.mean(1).unsqueeze(1).squeeze(1).unsqueeze(1).expand(-1, 4, -1, -1)
        return torch.cat([f + gate, norm, squeezed], 1)


class _OneMinus(torch.nn.Module):
    """What LiteRT converted wrong: ``1 - sigmoid(conv(x))`` (PIDNet's boundary attention) came out as
    ``sigmoid - 1``. (In some larger graphs the same op converts right.)"""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, 1, 1)

    def forward(self, x):  # noqa: ANN001, ANN201
        return 1 - torch.sigmoid(self.conv(x))


class _Reciprocal(_OneMinus):
    """``1 / (|conv(x)| + 2)``, which LiteRT converted as its denominator."""

    def forward(self, x):  # noqa: ANN001, ANN201
        return torch.reciprocal(self.conv(x).abs() + 2)


@needs_torch
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("litert_torch") is None, reason="litert-torch not installed (extra 'tflite')")
@pytest.mark.parametrize(("module", "rewrites"), [
    (_LiteRTTraps, {"padded ConvTranspose as unpadded + crop": 1, "1x1 Conv of a 1x1 input as multiply + sum": 2}),
    (_OneMinus, {"constant - x, constant / x with x first": 1}),
    (_Reciprocal, {"constant - x, constant / x with x first": 1}),
], ids=["refused", "one-minus", "reciprocal"])
def test_litert_workarounds_give_onnxruntimes_numbers(tmp_path: Path, module: type, rewrites: dict[str, int]) -> None:
    """Each workaround is applied because it was needed (the 1x1-conv one after the converter refused, the operand
    one after the float model came out off) and the result has ONNX Runtime's numbers."""
    path, x, ref = _onnx(module().eval(), (16, 24), tmp_path / "net.onnx")
    got, details = _convert_and_run(path, "tflite", x, tmp_path / "litert")
    assert details["rewrites"] == rewrites, details
    assert _rel(got, ref) < 1e-5


class _ComputedFilter(torch.nn.Module):
    """DMNet's dynamic convolution: per-image depthwise 3x3 filters computed from pooled features (ONNX Conv whose
    weights are a graph value, which onnx2torch's Conv converter cannot read)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, 1, 1)
        self.filters = torch.nn.Conv2d(4, 4 * 9, 1)

    def forward(self, x):  # noqa: ANN001, ANN201
        f = self.conv(x)
        w = self.filters(F.adaptive_avg_pool2d(f, 1)).reshape(4, 1, 3, 3)
        return F.conv2d(f, w, padding=1, groups=4)


class _Attention(torch.nn.Module):
    """``nn.MultiheadAttention`` over patch tokens (SegFormer, Segmenter): its q/k/v split is an ONNX Gather with a
    constant index, which litert-torch refused ("Abstract tracer value encountered where concrete value is
    expected")."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch = torch.nn.Conv2d(3, 32, 4, 4)
        self.norm = torch.nn.LayerNorm(32)
        self.attn = torch.nn.MultiheadAttention(32, 2)

    def forward(self, x):  # noqa: ANN001, ANN201
        f = self.patch(x)
        n, c, h, w = f.shape
        t = self.norm(f.flatten(2).transpose(1, 2)).transpose(0, 1)
        return self.attn(t, t, t, need_weights=False)[0].permute(1, 2, 0).reshape(n, c, h, w)


class _Projections(torch.nn.Module):
    """Attention with q/k/v as ``matmul(t, W) + b`` on 3-D tokens (Segmenter's export): folded to ``Gemm`` with
    ``transB = 0``, which onnx2torch sets up as ``nn.Linear`` with a transposed view of ``W``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch = torch.nn.Conv2d(3, 64, 4, 4)
        self.w = torch.nn.ParameterList(torch.nn.Parameter(torch.randn(64, 64) / 8) for _ in range(3))
        self.b = torch.nn.ParameterList(torch.nn.Parameter(torch.randn(64)) for _ in range(3))

    def forward(self, x):  # noqa: ANN001, ANN201
        f = self.patch(x)
        n, c, h, w = f.shape
        t = f.flatten(2).permute(2, 0, 1)
        q, k, v = (torch.matmul(t, w) + b for w, b in zip(self.w, self.b))
        a = torch.softmax(torch.matmul(q.transpose(0, 1), k.permute(1, 2, 0)), -1)
        return torch.matmul(a, v.transpose(0, 1)).permute(0, 2, 1).reshape(n, c, h, w)


@needs_torch
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("litert_torch") is None, reason="litert-torch not installed (extra 'tflite')")
@pytest.mark.parametrize("module", [_ComputedFilter, _Attention, _Projections], ids=["computed-filter", "attention",
                                                                                    "projections"])
def test_litert_converts_attention_and_computed_filters(tmp_path: Path, module: type) -> None:
    """DMNet's, SegFormer's and Segmenter's patterns convert to LiteRT with ONNX Runtime's numbers (they were: a
    KeyError, "Abstract tracer value", and logits 75 % of their range off)."""
    path, x, ref = _onnx(module().eval(), (32, 64), tmp_path / "net.onnx")
    got, details = _convert_and_run(path, "tflite", x, tmp_path / "litert")
    assert "rewrites" not in details, details
    assert _rel(got, ref) < 1e-5


@needs_torch
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("litert_torch") is None, reason="litert-torch not installed (extra 'tflite')")
def test_litert_conversion_that_comes_out_wrong_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the contiguous copy, litert-torch writes the transposed-view weights transposed: the float check
    sees it and the conversion stops with the figure instead of writing a model that computes something else."""
    import edgeseg.backends.onnx_torch as onnx_torch

    monkeypatch.setattr(onnx_torch, "contiguous_weights", lambda module: 0)
    path, x, _ref = _onnx(_Projections().eval(), (32, 64), tmp_path / "net.onnx")
    with pytest.raises(ConversionError, match=r"litert-torch converted the model wrong: its outputs are \d+\.\d% of"):
        _convert_and_run(path, "tflite", x, tmp_path / "litert")
    assert list((tmp_path / "litert").iterdir()) == []  # the wrong model is not left behind
