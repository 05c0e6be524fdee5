"""Static-shape variants: a small PSPNet-style net (non-global AdaptiveAvgPool2d) at two sizes, and the dynamic-export check."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

import edgeseg
from conftest import needs_torch
from edgeseg.errors import ConfigError, ConversionError
from edgeseg.targets import load_target
from edgeseg_runtime.archive import Archive
from edgeseg_runtime.images import load_image
from edgeseg_runtime.segmentor import Segmentor, nearest_variant

SHAPES = [(192, 192), (192, 288)]
QUIET = {"report": lambda _line: None}


def test_nearest_variant_prefers_aspect_then_size() -> None:
    shapes = [(512, 512), (512, 1024), (1024, 2048), (256, 256)]
    assert nearest_variant(shapes, 480, 500) == (512, 512)  # square photo, near 512
    assert nearest_variant(shapes, 200, 210) == (256, 256)  # square and small
    assert nearest_variant(shapes, 1000, 2000) == (1024, 2048)  # 2:1, large
    assert nearest_variant(shapes, 400, 820) == (512, 1024)  # 2:1, small
    assert nearest_variant(shapes, 427, 640) == (512, 1024)  # 1.5:1 is nearer 2:1 than 1:1 on a log scale
    assert nearest_variant(shapes, 500, 640) == (512, 512)  # 1.28:1 is nearer 1:1
    assert nearest_variant([(192, 192), (192, 288)], 427, 640) == (192, 288)


def _psp_module():  # noqa: ANN202
    import torch
    import torch.nn.functional as F
    from torch import nn

    class TinyPSP(nn.Module):
        """Conv stem, PSP pyramid (AdaptiveAvgPool2d bins 1/2/3/6), 3-class head; fixed random weights."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
            self.bins = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(16, 4, 1)) for b in (1, 2, 3, 6))
            self.head = nn.Conv2d(32, 3, 1)

        def forward(self, x):  # noqa: ANN001, ANN202
            f = self.stem(x)
            size = f.shape[2:]
            pyramid = [f] + [F.interpolate(b(f), size=size, mode="bilinear", align_corners=False) for b in self.bins]
            return F.interpolate(self.head(torch.cat(pyramid, 1)), size=x.shape[2:], mode="bilinear", align_corners=False)

    return TinyPSP().eval()


def _spec() -> edgeseg.ModelSpec:
    return edgeseg.load_spec(None, {
        "name": "tinypsp", "version": "1.0.0",
        "input": {"size": list(SHAPES[0]), "layout": "NCHW", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]},
        "output": {"kind": "logits", "classes": ["a", "b", "c"]},
    })


def _target(name: str, **update: object):  # noqa: ANN202
    t = load_target(name)
    return t.model_copy(update={"input": t.input.model_copy(update=update)})


@pytest.fixture(scope="module")
def psp_archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, edgeseg.BuildResult]:
    pytest.importorskip("torch", reason="torch is not installed (extra 'torch')")
    out = tmp_path_factory.mktemp("psp")
    targets = ["cpu"] + (["arm"] if _has("pnnx") else [])
    return {t: edgeseg.build(_psp_module(), spec=_spec(), target=_target(t, shapes=SHAPES), out_dir=out, **QUIET) for t in targets}


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@needs_torch
def test_variants_are_laid_out_one_model_per_shape(psp_archives) -> None:  # noqa: ANN001
    for name, result in psp_archives.items():
        backend = result.manifest["backend"]
        assert [v["shape"] for v in backend["variants"]] == [list(s) for s in SHAPES]
        assert result.manifest["model"]["input"]["variants"] == [list(s) for s in SHAPES]
        assert backend["net"] == backend["variants"][0]["net"]
        with tarfile.open(result.archive) as tar:
            names = tar.getnames()
        for v in backend["variants"]:
            h, w = v["shape"]
            assert v["net"].startswith(f"variants/{h}x{w}/") and v["net"] in names, name
        if name == "arm":  # each param file is static at its own size
            with tarfile.open(result.archive) as tar:
                params = [tar.extractfile(v["net"]).read().decode() for v in backend["variants"]]
            assert params[0] != params[1]


@needs_torch
@pytest.mark.parametrize("target", ["cpu", "arm"])
def test_each_size_runs_at_its_variant_and_agrees_with_pytorch(target: str, psp_archives, photos) -> None:  # noqa: ANN001
    """astronaut (square) runs at 192x192, rocket (427x640) at 192x288; labels match the PyTorch module there."""
    import torch

    if target not in psp_archives:
        pytest.skip("pnnx not installed")
    module = _psp_module()
    with Archive.open(psp_archives[target].archive) as archive, Segmentor(archive) as seg:
        for photo, want in (("astronaut", (192, 192)), ("rocket", (192, 288))):
            rgb = load_image(photos[photo])
            assert seg.variant_for(*rgb.shape[:2]) == want
            tensor = seg.prepare(rgb)
            assert tensor.shape == (1, 3, *want)
            got = seg.infer(tensor)
            with torch.no_grad():
                ref = module(torch.from_numpy(tensor)).numpy()
            agreement = float(np.mean(got.argmax(1) == ref.argmax(1)))
            assert agreement >= 0.999, f"{target}/{photo}: {agreement:.4%}"
            assert np.abs(got - ref).max() < (2e-2 if target == "arm" else 1e-4)


@needs_torch
def test_unsafe_dynamic_export_is_detected_and_reported(psp_archives, tmp_path: Path) -> None:  # noqa: ANN001
    check = psp_archives["cpu"].manifest["provenance"]["dynamic_export_check"]
    assert check["safe"] is False and check["probe"] == list(SHAPES[1])
    assert check["max_abs_diff"] > 1e-3 or check["error"]
    with pytest.raises(ConversionError, match="dynamic-shape export is wrong at 192x288.*needs static shapes"):
        edgeseg.build(_psp_module(), spec=_spec(), target=_target("cpu", dynamic=True), out_dir=tmp_path, **QUIET)
    assert not list(tmp_path.glob("*.tar.gz"))


@needs_torch
def test_safe_dynamic_export_passes_its_check(tmp_path: Path) -> None:
    """A net with only global pooling exports dynamic H/W correctly: the check says so and the build goes on."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1)).eval()
    result = edgeseg.build(net, spec=_spec(), target=_target("cpu", dynamic=True), out_dir=tmp_path, **QUIET)
    check = result.manifest["provenance"]["dynamic_export_check"]
    assert check["safe"] is True and check["max_abs_diff"] <= 1e-3 and check["probe"] == [192, 288]
    assert result.manifest["model"]["input"]["shape"][2:] != [192, 192]  # dynamic dims stay symbolic


def test_static_onnx_cannot_make_other_sizes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="other sizes need a PyTorch model or an ONNX with dynamic H/W"):
        edgeseg.build(target=_target("cpu", shapes=[(256, 256), (256, 384)]), out_dir=tmp_path, **QUIET)


def test_several_shapes_refused_where_this_version_cannot(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="int8"):
        edgeseg.build(target=_target("cpu", shapes=[(256, 256), (256, 384)]), precision="int8", out_dir=tmp_path, **QUIET)


@needs_torch
def test_verify_passes_on_the_variant_archive(psp_archives) -> None:  # noqa: ANN001
    from conftest import edgeseg_cli

    for result in psp_archives.values():
        proc = edgeseg_cli("verify", result.archive)
        assert proc.returncode == 0 and proc.stdout.startswith("PASS"), proc.stdout + proc.stderr
        manifest = json.loads(tarfile.open(result.archive).extractfile("manifest.json").read())
        assert manifest["build_check"]["passed"] is True
