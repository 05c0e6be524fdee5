"""fp16/int8 builds of the default model: quantized for real, measured by the accuracy gate, verified, cached."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

import edgeseg
from edgeseg.errors import AccuracyError, ConfigError
from edgeseg_runtime.archive import Archive
from edgeseg_runtime.images import load_image
from edgeseg_runtime.segmentor import Segmentor

from conftest import QUANTIZED_BUILDS as BUILDS
from conftest import edgeseg_cli, needs_openvino

QUIET = {"report": lambda _line: None}


def _labels(archive: Path, images: list[Path]) -> list[np.ndarray]:
    with Archive.open(archive) as a, Segmentor(a) as seg:
        return [seg.segment(load_image(p)).labels for p in images]


@pytest.mark.parametrize(("target", "precision"), [b for b in BUILDS if b[1] != "fp32"])
def test_gate_figures_are_real_and_verify_passes(
    quantized: dict, archives: dict[str, Path], target: str, precision: str
) -> None:
    result = quantized[(target, precision)]
    acc = result.manifest["quantization"]["accuracy"]
    from edgeseg.accuracy import DEFAULT_EVAL
    from edgeseg_runtime.images import iter_image_paths

    images = sorted(iter_image_paths([DEFAULT_EVAL]))  # the shipped default evaluation set
    assert len(images) >= 24
    assert acc["passed"] and acc["precision"] == precision and acc["evaluation_set"]["images"] == len(images)
    assert acc["evaluation_set"]["source"] == "edgeseg default eval set" and acc["worst_class"]["iou"] >= 0.90
    assert result.manifest["target"]["precision"] == precision and result.archive.name.endswith(f"-{precision}.tar.gz")
    # recompute the pixel agreement independently: both archives through the runtime on the evaluation photos
    ref = _labels(archives["cpu"], images)
    got = _labels(result.archive, images)
    agree = sum(int((a == b).sum()) for a, b in zip(got, ref, strict=True)) / sum(a.size for a in ref)
    assert agree == pytest.approx(acc["pixel_agreement"], abs=1e-6) and agree >= 0.98
    proc = edgeseg_cli("verify", result.archive)
    assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stdout + proc.stderr


def test_onnxruntime_models_are_really_fp16_and_int8(quantized: dict) -> None:
    with Archive.open(quantized[("cpu", "fp16")].archive) as a:
        m16 = onnx.load(str(a.path("end2end.onnx")))
    weights16 = [t for t in m16.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert len(weights16) > 40
    assert m16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 I/O kept
    assert m16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT

    with Archive.open(quantized[("cpu", "int8")].archive) as a:
        m8 = onnx.load(str(a.path("end2end.onnx")))
        details = a.manifest["backend"]
    ops = [n.op_type for n in m8.graph.node]
    assert ops.count("QuantizeLinear") > 50 and ops.count("DequantizeLinear") > 50
    int8_weights = [t for t in m8.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    floats = {t.name for t in m8.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    (deconv,) = [n for n in m8.graph.node if n.op_type == "ConvTranspose"]  # the spec's keep_float: fp32 weights
    assert deconv.input[1] in floats
    # every Conv's weights go through DequantizeLinear, except the Convs the mixed-precision search kept in float
    search = quantized[("cpu", "int8")].manifest["quantization"]["search"]
    kept = set(details["kept_float"])
    assert set(search["kept_float"]) <= kept
    convs = [n for n in m8.graph.node if n.op_type == "Conv"]
    float_convs = [n for n in convs if n.input[1] in floats]
    assert {n.name for n in float_convs} <= kept
    assert 0 < len(convs) - len(float_convs) and len(float_convs) <= len(search["kept_float"])
    assert len(int8_weights) >= len(convs) - len(float_convs)  # s8 weights for the rest
    assert details["format"] == "QDQ" and details["weight_type"] == "int8" and details["per_channel"] is True


@needs_openvino
def test_openvino_int8_ir_has_int8_weights(quantized: dict) -> None:
    """The stock intel int8 misses the budget with plain NNCF quantization; the search's NNCF accuracy control,
    driven by the gate's own budget, reverts layers until it holds."""
    from edgeseg.backends.openvino import fake_quantize_names

    result = quantized[("intel", "int8")]
    with Archive.open(result.archive) as a:
        xml = a.path("end2end.xml").read_text()
        assert a.manifest["backend"]["quantizer"] == "nncf.quantize_with_accuracy_control"
        quantizers = fake_quantize_names(a.path("end2end.xml"))
    reverted = result.manifest["quantization"]["search"]["kept_float"]  # the plain int8 IR's quantizers NNCF removed
    assert reverted and quantizers and not set(reverted) & set(quantizers)
    assert 'element_type="i8"' in xml and "FakeQuantize" in xml
    q = result.manifest["quantization"]
    assert q["search"]["method"] == "nncf accuracy control" and q["search"]["first"].startswith("FAIL")
    assert q["search"]["passed"] and q["accuracy"]["passed"] and q["accuracy"]["worst_class"]["iou"] >= 0.90
    assert q["accuracy"]["miou_drop"] <= q["accuracy"]["budget"]["max_miou_drop"]


@needs_openvino
def test_intel_fp32_uses_its_own_tolerance(quantized: dict) -> None:
    result = quantized[("intel", "fp32")]
    assert result.manifest["target"]["tolerance"]["atol"] == 1e-4 and "quantization" not in result.manifest  # fp32: no gate
    assert result.check is not None and result.check.passed


def test_rebuild_uses_the_calibration_cache(quantized: dict, tmp_path: Path) -> None:
    first = quantized[("cpu", "int8")]
    assert first.calibration_cache == "miss"
    again = edgeseg.build(target="cpu", precision="int8", out_dir=tmp_path / "a", **QUIET)
    assert again.calibration_cache == "hit"
    assert again.archive.read_bytes() == first.archive.read_bytes()
    forced = edgeseg.build(target="cpu", precision="int8", out_dir=tmp_path / "b", recalibrate=True, **QUIET)
    assert forced.calibration_cache == "miss"
    fewer = edgeseg.build(target="cpu", precision="int8", out_dir=tmp_path / "c", calib_count=16, **QUIET)
    cal = fewer.manifest["quantization"]["calibration"]
    assert fewer.calibration_cache == "miss" and cal["count"] == 16 and cal["sha256"] != first.manifest["quantization"]["calibration"]["sha256"]


@pytest.mark.parametrize("target", ["cpu", pytest.param("intel", marks=needs_openvino)])
def test_bad_calibration_fails_the_gate_and_writes_nothing(target: str, tmp_path: Path) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    Image.new("RGB", (320, 240)).save(calib / "black.png")
    out = tmp_path / "dist"
    proc = edgeseg_cli("build", "--target", target, "--precision", "int8", "--calib", calib, "--out", out, "--no-search")
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "build stopped, no archive written: FAIL: int8 vs fp32" in line and "pixel agreement" in line and "< 98.00%" in line
    assert "--calib DIR" in line  # says what to try
    assert not out.exists() or not any(out.iterdir())


def test_ground_truth_masks_give_miou_side_by_side(quantized: dict, archives: dict[str, Path], voc_person: Path, tmp_path: Path) -> None:
    result = edgeseg.build(target="cpu", precision="fp16", eval_set=voc_person, out_dir=tmp_path, **QUIET)
    gt = result.manifest["quantization"]["accuracy"]["vs_ground_truth"]
    assert set(gt) == {"fp32", "fp16"}
    # fp32 person IoU by hand from the fp32 archive's labels and the mask
    labels = _labels(archives["cpu"], [voc_person / "images" / "voc.png"])[0]
    truth = np.asarray(Image.open(voc_person / "masks" / "voc.png"))
    inter, union = np.sum((labels == 1) & (truth == 1)), np.sum((labels == 1) | (truth == 1))
    assert gt["fp32"]["iou"]["person"] == pytest.approx(inter / union, abs=1e-6)
    acc = result.manifest["quantization"]["accuracy"]
    assert acc["drop_basis"] == "vs ground truth"
    assert acc["miou_drop"] == pytest.approx(100 * (gt["fp32"]["miou"] - gt["fp16"]["miou"]), abs=1e-3)
    # int8 on this crowded photo, without the search: the gate measures it against the same masks and refuses it
    with pytest.raises(AccuracyError, match=r"mIoU vs ground truth fp32 \d+\.\d\d / int8 \d+\.\d\d.*\(vs ground truth\)"):
        edgeseg.build(target="cpu", precision="int8", eval_set=voc_person, search=False, out_dir=tmp_path / "x", **QUIET)
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_bad_evaluation_sets_are_refused(voc_person: Path, photos: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "colour"
    shutil.copytree(voc_person, bad)
    Image.open(bad / "images" / "voc.png").save(bad / "masks" / "voc.png")  # an RGB "mask"
    with pytest.raises(ConfigError, match="mask mode RGB; masks must be single-channel class-id PNGs"):
        edgeseg.build(target="cpu", precision="fp16", eval_set=bad, out_dir=tmp_path, **QUIET)
    ids = tmp_path / "ids"
    shutil.copytree(voc_person, ids)
    Image.fromarray(np.full((375, 500), 7, np.uint8)).save(ids / "masks" / "voc.png")
    with pytest.raises(ConfigError, match=r"class id 7 but the model has 2 classes"):
        edgeseg.build(target="cpu", precision="fp16", eval_set=ids, out_dir=tmp_path, **QUIET)
    missing = tmp_path / "missing"
    shutil.copytree(voc_person, missing)
    shutil.copyfile(photos["rocket"], missing / "images" / "rocket.png")
    with pytest.raises(ConfigError, match=r"no mask for 1 image\(s\), e.g. rocket.png \(plain layout\)"):
        edgeseg.build(target="cpu", precision="fp16", eval_set=missing, out_dir=tmp_path, **QUIET)
    with pytest.raises(ConfigError, match="--calib/--eval apply to fp16/int8 builds"):
        edgeseg.build(target="cpu", eval_set=voc_person, out_dir=tmp_path, **QUIET)


def test_cli_build_int8_with_calibration_folder(tmp_path: Path) -> None:
    from edgeseg.calibration import DEFAULT_CALIBRATION

    proc = edgeseg_cli("build", "-t", "cpu", "-p", "int8", "--calib", DEFAULT_CALIBRATION, "--calib-count", "24", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    archive = Path(proc.stdout.strip().splitlines()[-1])
    assert archive.name == "selfie_segmentation-cpu-int8.tar.gz"
    with Archive.open(archive) as a:
        q = a.manifest["quantization"]
    assert q["calibration"]["count"] == 24 and q["accuracy"]["passed"] is True
    assert json.loads(json.dumps(q))["accuracy"]["budget"] == {"min_class_iou": 0.9, "max_miou_drop": 5.0,
                                                               "min_pixel_agreement": 0.98}
    info = edgeseg_cli("info", archive).stdout
    assert "calibration 24 images" in info and f"pixel agreement {q['accuracy']['pixel_agreement']:.2%}" in info


# ------------------------------------------------------------------ profiles are model-independent; old opsets
def _brightness_net(path: Path, opset: int, hostile: bool = False) -> Path:
    """A 2-class NCHW net at ``opset`` that no edgeseg file names: class 1 where a 3x3 patch's mean is above 0.5.

    Conv(3->4, 3x3) + Relu + Conv(4->2, 1x1): no ConvTranspose, no Sigmoid (what the default model keeps in float).

    ``hostile``: a fifth, dead channel of huge range (1e4 x the patch mean) after the first Conv. fp32 ignores it
    (its weight in the second Conv is 0), but int8 activations are quantized per tensor, so the range it sets
    leaves the four real channels a step of ~40 for values below 1: int8 sees only "dark". A layer a search must
    keep in float.
    """
    from onnx import TensorProto, helper, numpy_helper

    c = 5 if hostile else 4
    w1 = np.full((c, 3, 3, 3), 1 / 27, np.float32)
    w1[4:] *= 1e4
    b1 = np.array([0.0, -0.25, -0.5, -0.75, 0.0][:c], np.float32)
    w2 = np.zeros((2, c, 1, 1), np.float32)
    w2[1, :4, 0, 0] = 1.0  # sum of the ramps: increasing in the patch mean
    b2 = np.array([0.625, 0.0], np.float32)  # class 0's constant logit = the ramps' sum at a mean of 0.5
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Conv", ["r", "w2", "b2"], ["logits"])],
        "hostile" if hostile else "brightness",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 96, 96])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, 96, 96])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7 if opset < 15 else 8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_stock_cpu_profile_quantizes_any_model_and_upgrades_old_opsets(tmp_path: Path) -> None:
    """The cpu profile names no op of any model (the default model's keep_float is in its spec), and an opset-12
    model, whose DequantizeLinear has no per-channel axis, is upgraded to 13 before QDQ and the upgrade recorded."""
    net = _brightness_net(tmp_path / "bright.onnx", 12)
    spec = tmp_path / "bright.toml"
    spec.write_text('name = "bright"\n[input]\nsize = [96, 96]\nstd = [255.0, 255.0, 255.0]\n'
                    '[output]\nkind = "logits"\nclasses = ["dark", "bright"]\n')
    result = edgeseg.build(net, spec=spec, target="cpu", precision="int8", out_dir=tmp_path / "dist", **QUIET)
    assert result.manifest["quantization"]["accuracy"]["passed"]
    backend = result.manifest["backend"]
    assert backend["opset_upgraded"] == {"from": 12, "to": 13} and backend["kept_float"] == []
    with Archive.open(result.archive) as a:
        m8 = onnx.load(str(a.path("end2end.onnx")))
    assert next(o.version for o in m8.opset_import if o.domain in ("", "ai.onnx")) >= 13
    deq = [n for n in m8.graph.node if n.op_type == "DequantizeLinear" and any(at.name == "axis" for at in n.attribute)]
    assert deq  # per-channel weights: what opset 12 could not express
    # the default model keeps its own float ops through its spec, with the same stock profile
    default = edgeseg.build(target="cpu", precision="int8", out_dir=tmp_path / "default", **QUIET)
    from edgeseg.backends.onnxruntime import name_nodes

    src = name_nodes(onnx.load(str(edgeseg.DEFAULT_MODEL)))
    wanted = [n.name for n in src.graph.node if n.op_type in ("ConvTranspose", "Sigmoid")]
    kept = default.manifest["backend"]["kept_float"]
    assert wanted and set(kept) == set(wanted) | set(default.manifest["quantization"]["search"]["kept_float"])
    assert "opset_upgraded" not in default.manifest["backend"]


def _hostile(tmp_path: Path) -> tuple[Path, Path]:
    """The hostile net and its spec."""
    net = _brightness_net(tmp_path / "hostile.onnx", 17, hostile=True)
    spec = tmp_path / "hostile.toml"
    spec.write_text('name = "hostile"\n[input]\nsize = [96, 96]\nstd = [255.0, 255.0, 255.0]\n'
                    '[output]\nkind = "logits"\nclasses = ["dark", "bright"]\n')
    return net, spec


def test_search_rescues_a_quantization_hostile_layer(tmp_path: Path) -> None:
    net, spec = _hostile(tmp_path)
    with pytest.raises(AccuracyError, match=r"class (dark|bright) IoU 0\.\d+ < 0\.90"):
        edgeseg.build(net, spec=spec, target="cpu", precision="int8", search=False, out_dir=tmp_path / "plain", **QUIET)
    assert not (tmp_path / "plain").exists() or not any((tmp_path / "plain").iterdir())
    result = edgeseg.build(net, spec=spec, target="cpu", precision="int8", out_dir=tmp_path / "dist", **QUIET)
    q = result.manifest["quantization"]
    search, acc = q["search"], q["accuracy"]
    assert search["passed"] and search["method"] == "activation ranking + bisection" and search["first"].startswith("FAIL")
    assert search["ranking"][0]["tensor"] in ("h", "r") and search["ranking"][0]["damage"] > 0.5
    assert search["kept_float"] and set(search["kept_float"]) <= set(result.manifest["backend"]["kept_float"])
    assert acc["passed"] and acc["worst_class"]["iou"] >= 0.90
    assert search["trials"][-1]["passed"] or any(t["passed"] for t in search["trials"])
    # the archive really runs the rescued model: labels agree with fp32 on a photo, verify passes
    proc = edgeseg_cli("verify", result.archive)
    assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stdout + proc.stderr
    # a rebuild takes the search's outcome from the cache (no trial runs again) and writes the same archive
    lines: list[str] = []
    again = edgeseg.build(net, spec=spec, target="cpu", precision="int8", out_dir=tmp_path / "again", report=lines.append)
    (said,) = [line for line in lines if "mixed precision: " in line]
    assert "(cached)" in said and "met the budget" in said, said
    assert again.archive.read_bytes() == result.archive.read_bytes()


def test_tflite_search_keeps_the_hostile_op_in_float(tmp_path: Path) -> None:
    """LiteRT: the same hostile layer, ranked on the int8 model's ops and kept in float by a no_quantize rule."""
    pytest.importorskip("litert_torch", reason="litert_torch is not installed (extra 'tflite')")
    from ai_edge_litert.interpreter import Interpreter

    net, spec = _hostile(tmp_path)
    with pytest.raises(AccuracyError, match=r"class (dark|bright) IoU 0\.\d+ < 0\.90"):
        edgeseg.build(net, spec=spec, target="tflite", precision="int8", search=False, out_dir=tmp_path / "plain", **QUIET)
    result = edgeseg.build(net, spec=spec, target="tflite", precision="int8", out_dir=tmp_path / "dist", **QUIET)
    q = result.manifest["quantization"]
    search, acc = q["search"], q["accuracy"]
    assert search["passed"] and search["method"] == "activation ranking + bisection" and search["first"].startswith("FAIL")
    worst = search["ranking"][0]
    assert "ReLU" in worst["tensor"] and worst["damage"] > 0.5  # the Relu after the huge-range Conv
    assert worst["tensor"] in search["kept_float"] == result.manifest["backend"]["kept_float"]
    assert acc["passed"] and acc["worst_class"]["iou"] >= 0.90
    with Archive.open(result.archive) as a:
        tensors = Interpreter(model_path=str(a.path("end2end.tflite"))).get_tensor_details()
    kept = {name for scope in search["kept_float"] for name in tensors_of(scope, tensors)}
    dtypes = {d["name"]: np.dtype(d["dtype"]) for d in tensors}
    assert kept and all(dtypes[n] == np.float32 for n in kept)  # the kept ops compute in float
    assert sum(dt == np.int8 for dt in dtypes.values()) >= 2  # the rest stays int8
    proc = edgeseg_cli("verify", result.archive)
    assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stdout + proc.stderr


def tensors_of(scope: str, tensors: list[dict]) -> list[str]:
    """The tensor names an op scope (``'<name>;<name>;'``) lists, read against the model's tensor names."""
    names = sorted({d["name"] for d in tensors}, key=len, reverse=True)
    found, rest = [], scope
    while rest:
        name = next(n for n in names if rest.startswith(n + ";"))
        found.append(name)
        rest = rest[len(name) + 1:]
    return found


@needs_openvino
def test_openvino_fp16_computes_fp16_only_where_the_cpu_has_it(archives: dict[str, Path], quantized: dict) -> None:
    """intel fp16: inference_precision "auto" = f16 where OpenVINO lists FP16 for the device, else f32 (said);
    fp32 and int8 archives record f32, comparable with the reference."""
    import openvino as ov

    native = "FP16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    with Archive.open(archives["intel"]) as a, Segmentor(a) as seg:
        assert a.manifest.target.backend_options["inference_precision"] == "auto"
        assert seg.runner.compute_precision == ("f16" if native else "f32")
    for key in (("intel", "int8"), ("intel", "fp32")):
        assert quantized[key].manifest["target"]["backend_options"]["inference_precision"] == "f32", key


def test_int8_archive_with_a_broken_layer_fails_verify(quantized: dict, tmp_path: Path) -> None:
    """The int8 golden check holds labels, not scores (atol 1.0 on probabilities checks nothing): a layer whose
    weights went wrong after the build (here: one Conv's weight scale negated) fails, the worst class's IoU said."""
    import hashlib
    import tarfile

    from onnx import numpy_helper

    folder = tmp_path / "broken"
    with tarfile.open(quantized[("cpu", "int8")].archive) as tar:
        tar.extractall(folder, filter="data")
    (folder / "manifest.sig").unlink(missing_ok=True)
    ok = edgeseg_cli("verify", folder, "--json")
    doc = json.loads(ok.stdout)
    assert ok.returncode == 0 and doc["tolerance"]["min_class_iou"] == 0.9 and doc["worst_class_iou"] >= 0.9, ok.stdout
    from edgeseg_runtime.contract import VerifyOutcome

    read = VerifyOutcome.from_dict(doc, "edgeseg verify --json")  # what the installer's health check reads
    assert (read.worst_class, read.worst_class_iou) == (doc["worst_class"], doc["worst_class_iou"])
    model = onnx.load(str(folder / "end2end.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    quantized_convs = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in producers
                       and producers[n.input[1]].op_type == "DequantizeLinear"]  # the search kept others in float
    weight_dq = producers[quantized_convs[len(quantized_convs) // 2].input[1]]  # one in the middle: its weights' scale
    scale = inits[weight_dq.input[1]]
    scale.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(scale), scale.name))
    onnx.save(model, str(folder / "end2end.onnx"))
    manifest = json.loads((folder / "manifest.json").read_text())
    data = (folder / "end2end.onnx").read_bytes()
    manifest["files"]["end2end.onnx"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    bad = edgeseg_cli("verify", folder)
    assert bad.returncode == 1 and bad.stdout.startswith("FAIL"), bad.stdout + bad.stderr
    import re

    found = re.search(r"worst class (\w+) IoU (\d\.\d+) \(min 0\.90\)", bad.stdout)
    assert found and float(found.group(2)) < 0.90, bad.stdout
