"""Graph rewrites that let pnnx (ncnn) and onnx2torch (LiteRT, CoreML) take what TensorFlow-style models
contain: DepthToSpace in DCR mode, and Slice with constant arguments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from edgeseg_runtime.archive import Archive
from edgeseg_runtime.segmentor import Segmentor

from edgeseg import build
from edgeseg.export import dcr_to_crd
from edgeseg.spec import load_spec


def _net(path: Path, *, grouped: bool = False, slice_end: int = -2) -> Path:
    """Conv 3→8 (stride 2) → DepthToSpace(2, DCR) → Conv 2→2 → Slice (drop the last ``-slice_end`` rows and
    columns, then pad back with a constant Pad): logits [1, 2, 64, 64] for a [1, 3, 64, 64] input, with
    random seeded weights. ``grouped``: the first conv has 2 groups (cannot be permuted: a Gather is used)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    groups = 2 if grouped else 1
    w1 = rng.standard_normal((8, 2 if grouped else 3, 3, 3)).astype(np.float32)
    w0 = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)  # grouped: 2 groups need an even input (3→4 first)
    b1 = rng.standard_normal(8).astype(np.float32)
    w2 = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    nodes = []
    first = "input"
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(np.array([0, 0], np.int64), "starts"),
             numpy_helper.from_array(np.array([slice_end, slice_end], np.int64), "ends"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
             numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, -slice_end, -slice_end], np.int64), "pads")]
    if grouped:
        inits.append(numpy_helper.from_array(w0, "w0"))
        nodes.append(helper.make_node("Conv", ["input", "w0"], ["c0"], name="conv0"))
        first = "c0"
    nodes += [
        helper.make_node("Conv", [first, "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 2],
                         group=groups),
        helper.make_node("DepthToSpace", ["c1"], ["d2s"], name="d2s", blocksize=2, mode="DCR"),
        helper.make_node("Conv", ["d2s", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Slice", ["c2", "starts", "ends", "axes"], ["cut"], name="cut"),
        helper.make_node("Pad", ["cut", "pads"], ["logits"], name="pad", mode="edge"),
    ]
    graph = helper.make_graph(nodes, "d2s", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, 64, 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("grouped", [False, True])
def test_dcr_becomes_crd_with_the_same_numbers(tmp_path: Path, grouped: bool) -> None:
    import onnx
    import onnxruntime as ort

    src = _net(tmp_path / "m.onnx", grouped=grouped)
    model = onnx.load(str(src))
    assert dcr_to_crd(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ("Gather" in ops) == grouped  # folded into the conv's weights unless grouped
    d2s = next(n for n in model.graph.node if n.op_type == "DepthToSpace")
    assert next(a.s for a in d2s.attribute if a.name == "mode") == b"CRD"
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    want = ort.InferenceSession(str(src)).run(None, {"input": x})[0]
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert dcr_to_crd(model) == 0  # nothing left to rewrite


@pytest.mark.slow
@pytest.mark.parametrize(("target", "module"), [("arm", "ncnn"), ("tflite", "litert_torch")])
def test_dcr_and_constant_slice_convert_for_ncnn_and_litert(tmp_path: Path, target: str, module: str,
                                                            photos: dict[str, Path]) -> None:
    """pnnx could not load a DCR DepthToSpace and onnx2torch refused it; torch.export stopped at a Slice
    with constant arguments (".numpy() is not supported for tensor subclasses"). Both build now, and the
    converted model gives the original graph's labels."""
    import onnxruntime as ort

    pytest.importorskip(module, reason=f"{module} is not installed (its extra)")
    src = _net(tmp_path / "m.onnx")
    spec = load_spec(None, {"name": "d2s", "input": {"mean": 127.5, "std": 64.0},
                            "output": {"kind": "logits", "classes": ["a", "b"]}})
    result = build(src, target=target, spec=spec, precision="fp32", out_dir=tmp_path / "dist",
                   golden=[photos["astronaut"]], report=lambda _l: None)
    assert result.check is not None and result.check.passed
    sess = ort.InferenceSession(str(src))
    with Archive.open(result.archive) as archive, Segmentor(archive) as seg:
        for path in photos.values():
            rgb = seg.load(path)
            tensor = seg.prepare(rgb)
            got = seg.infer(tensor)
            want = sess.run(None, {"input": tensor})[0]  # the original DCR graph
            assert np.mean(got.argmax(1) == want.argmax(1)) > 0.999


def test_pnnx_failure_names_the_onnx_ops_nodes_and_fix(tmp_path: Path) -> None:
    """A threshold folded into the graph (--with-argmax) leaves torch.gt/Tensor.to that ncnn has no layer for:
    the one-line error names them as the shared ONNX's Greater and Cast nodes, and the fix."""
    pytest.importorskip("pnnx", reason="pnnx is not installed (extra 'ncnn')")
    from conftest import edgeseg_cli

    proc = edgeseg_cli("build", "-t", "arm", "--with-argmax", "-o", tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == ("edgeseg: error: pnnx left ops ncnn has no layer for: Tensor.to (ONNX Cast 'edgeseg_labels'); "
                         "torch.gt (ONNX Greater 'edgeseg_threshold'); fix: build without --with-argmax (edgeseg "
                         "arg-maxes or thresholds the scores after inference, on every backend)"), lines[-1]
    assert "Traceback" not in proc.stderr and not list(tmp_path.glob("*.tar.gz"))


def test_onnx2torch_failure_names_the_op_version_nodes_and_fix() -> None:
    """onnx2torch (LiteRT, CoreML) has no ReduceMean-18 converter: the error names the op, its opset version,
    the nodes, and the fix; an op it does convert passes."""
    import importlib.util

    if importlib.util.find_spec("onnx2torch") is None:  # not importorskip: edgeseg imports it (torchvision stand-in)
        pytest.skip("onnx2torch is not installed (extra 'tflite')")
    from onnx import TensorProto, helper, numpy_helper

    from edgeseg.backends.onnx_torch import onnx_to_torch
    from edgeseg.errors import ConversionError

    def model(opset: int) -> object:
        axes = [numpy_helper.from_array(np.array([2, 3], np.int64), "axes")] if opset >= 18 else []
        mean = helper.make_node("ReduceMean", ["x", *(["axes"] if axes else [])], ["m"], name="/pool/ReduceMean_3",
                                keepdims=1, **({} if axes else {"axes": [2, 3]}))
        graph = helper.make_graph([mean, helper.make_node("Add", ["x", "m"], ["y"], name="/add")], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])], axes)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)

    with pytest.raises(ConversionError) as info:
        onnx_to_torch(model(18), "tflite")
    assert str(info.value).startswith("onnx2torch has no converter for ONNX ReduceMean version 18: nodes "
                                      "'/pool/ReduceMean_3'; fix: export at opset 17"), str(info.value)
    import torch

    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    got = onnx_to_torch(model(17), "tflite")(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, x + x.mean(axis=(2, 3), keepdims=True), atol=1e-6)


def test_an_onnx_op_pnnx_passes_through_is_named(tmp_path: Path) -> None:
    """pnnx copies an ONNX op it cannot read (ConvTranspose with auto_pad) into the ncnn param under its ONNX
    name; ncnn has no such layer: the build stops with the op and node named, not at load time on a device."""
    pytest.importorskip("pnnx", reason="pnnx is not installed (extra 'ncnn')")
    import onnx
    from conftest import edgeseg_cli
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 2, 2, 2)).astype(np.float32), "w")
    up = helper.make_node("ConvTranspose", ["input", "w"], ["up"], name="decoder/up", strides=[2, 2],
                          auto_pad="SAME_UPPER")
    pool = helper.make_node("AveragePool", ["up"], ["logits"], name="pool", kernel_shape=[2, 2], strides=[2, 2])
    graph = helper.make_graph([up, pool], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, 32, 32])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), tmp_path / "m.onnx")
    proc = edgeseg_cli("build", "-t", "arm", "-p", "fp32", "-m", tmp_path / "m.onnx", "--output-kind", "logits",
                       "--classes", "a,b", "-o", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "pnnx left ops ncnn has no layer for: ConvTranspose (ONNX ConvTranspose 'decoder/up')"), proc.stderr


def test_a_reshape_ncnn_cannot_hold_says_why() -> None:
    from onnx import TensorProto, helper, numpy_helper

    from edgeseg.backends.unsupported import pnnx_unsupported

    def model(shape: list[int]):  # noqa: ANN202
        graph = helper.make_graph(
            [helper.make_node("Reshape", ["input", "shape"], ["output"], name="/window")], "g",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 4, 4])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(np.array(shape, np.int64), "shape")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    six = pnnx_unsupported(model([1, 8, 2, 2, 2, 2]), ["Tensor.reshape"])
    assert six.endswith("because: Reshape '/window' makes a 6-D tensor ([1, 8, 4, 4] -> [1, 8, 2, 2, 2, 2]), and an ncnn "
                        "blob has at most 4 axes after a batch axis of 1"), six
    batch = pnnx_unsupported(model([4, 8, 2, 2]), ["Tensor.reshape"])
    assert "makes a tensor whose first (batch) axis changes ([1, 8, 4, 4] -> [4, 8, 2, 2])" in batch
    plain = pnnx_unsupported(model([1, 8, 16]), ["Tensor.reshape"])
    assert plain == "pnnx left ops ncnn has no layer for: Tensor.reshape (ONNX Reshape '/window')"
