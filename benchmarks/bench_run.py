#!/usr/bin/env python3
"""``edgeseg run`` throughput, end to end from the command line, against a baseline commit of the runtime.

Writes 200 real photos (scikit-image's colour photos and edgeseg's sample
images, cycled) at mixed sizes (long side 320..2048 px, seeded) as PNG and
JPEG into a temporary folder, builds the default model's ``cpu`` archive, and
times ``python -m edgeseg_runtime run ARCHIVE FOLDER --out OUT`` as a whole
(start-up, archive opening, decoding, segmentation, PNG writing), with this
checkout's runtime (``PYTHONPATH=<repo>/runtime_py``).

The baseline is the runtime of ``--baseline-ref`` (default c7195f3) checked out
with ``git worktree add`` (kept in ``--baseline-dir`` for later runs) and
run the same way on the same archive and photos. Baseline and current runs
alternate (baseline, current, baseline, current for ``--rounds 2``), after one
untimed warm-up run of each on a few photos. Prints images/s per run, the
medians and current/baseline (goal >= 1.6, PASS/FAIL; the exit status is 0
either way). Without git or the ref, the baseline is one line and skipped.
When the current CLI takes ``--threads``, ``--threads 1`` and ``--threads 2``
are timed the same way.

    python benchmarks/bench_run.py [--images 200] [--rounds 2] [--baseline-ref c7195f3] [--baseline-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import edgeseg

REPO = Path(__file__).resolve().parent.parent
GOAL = 1.6
SKIMAGE_PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "retina", "hubble_deep_field",
                  "immunohistochemistry", "stereo_motorcycle"]


def photos() -> list[tuple[str, Image.Image]]:
    """Real photos: scikit-image's colour ones that load here, then edgeseg's sample images."""
    found = []
    try:
        from skimage import data
    except ImportError:
        data = None
    for name in SKIMAGE_PHOTOS if data else []:
        try:
            img = getattr(data, name)()
        except Exception:  # noqa: BLE001, S112  a photo that needs a download (pooch) here
            continue
        img = img[0] if isinstance(img, tuple) else img  # stereo_motorcycle: (left, right, disparity)
        found.append((name, Image.fromarray(np.asarray(img)).convert("RGB")))
    for path in sorted(edgeseg.SAMPLE_IMAGES.glob("*")):
        found.append((f"sample_{path.stem}", Image.open(path).copy()))
    return found


def write_images(folder: Path, count: int) -> tuple[int, int]:
    """``count`` photos at seeded long sides in 320..2048, PNG and JPEG alternately; returns (files, megapixels)."""
    folder.mkdir(parents=True)
    sources = photos()
    rng = random.Random(0)
    pixels = 0
    for i in range(count):
        name, img = sources[i % len(sources)]
        long_side = rng.randint(320, 2048)
        scale = long_side / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        out = img.resize(size, Image.Resampling.LANCZOS)
        if i % 2:
            jpeg = out if out.mode in ("L", "RGB") else out.convert("RGB")
            jpeg.save(folder / f"{i:03d}_{name}.jpg", quality=90)
        else:
            out.save(folder / f"{i:03d}_{name}.png")
        pixels += size[0] * size[1]
    return count, pixels // 1_000_000


def cli_help(runtime: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "edgeseg_runtime", "run", "--help"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(runtime)}, timeout=120, check=False)
    return proc.stdout


def which_runtime(runtime: Path) -> str:
    """Where ``import edgeseg_runtime`` lands with PYTHONPATH=runtime (a check that the right code is timed)."""
    proc = subprocess.run([sys.executable, "-c", "import edgeseg_runtime; print(edgeseg_runtime.__file__)"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(runtime)}, timeout=120,
                          check=False)
    return proc.stdout.strip() or proc.stderr.strip()[-200:]


def timed_run(runtime: Path, archive: Path, images: Path, out: Path, extra: list[str]) -> float | str:
    """Seconds for one ``edgeseg run`` over ``images``, or the error's last line."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "edgeseg_runtime", "run", str(archive), str(images), "--out", str(out), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(runtime)}, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:300]
    return seconds


def baseline_checkout(ref: str, where: Path) -> Path | None:
    """The ref's runtime_py in a git worktree at ``where`` (made when missing); None (said) when it cannot be."""
    git = shutil.which("git")
    if git is None:
        print("baseline: skipped (no git)")
        return None
    probe = subprocess.run([git, "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        print(f"baseline: skipped (no commit {ref} in {REPO})")
        return None
    commit = probe.stdout.strip()
    if where.is_dir():
        head = subprocess.run([git, "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=False)
        if head.returncode == 0 and head.stdout.strip() == commit:
            return where / "runtime_py"
        print(f"baseline: skipped ({where} exists and is not a checkout of {ref}; remove it or give --baseline-dir)")
        return None
    made = subprocess.run([git, "-C", str(REPO), "worktree", "add", "--detach", str(where), commit],
                          capture_output=True, text=True, check=False)
    if made.returncode != 0:
        print(f"baseline: skipped (git worktree add failed: {(made.stderr.strip().splitlines() or ['?'])[-1]})")
        return None
    return where / "runtime_py"


def alternate(label_runs: list[tuple[str, Path, list[str]]], archive: Path, images: Path, warm: Path, out: Path,
              rounds: int, count: int) -> dict[str, list[float]]:
    """Each (label, runtime, extra args) once per round, in order, after one untimed warm-up run of each on ``warm``.

    Returns images/s per label; a label whose run fails is one line and dropped.
    """
    rates: dict[str, list[float]] = {label: [] for label, _, _ in label_runs}
    alive = list(label_runs)
    for label, runtime, extra in label_runs:
        result = timed_run(runtime, archive, warm, out, extra)
        if isinstance(result, str):
            print(f"{label}: skipped ({result})")
            alive.remove((label, runtime, extra))
            rates.pop(label)
    for r in range(rounds):
        for label, runtime, extra in list(alive):
            result = timed_run(runtime, archive, images, out, extra)
            if isinstance(result, str):
                print(f"{label}: failed ({result})")
                alive.remove((label, runtime, extra))
                rates.pop(label)
                continue
            rates[label].append(count / result)
            print(f"  round {r + 1}  {label:<22} {result:7.2f} s  {count / result:7.1f} images/s", flush=True)
    return rates


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=200, help="photos to write and segment")
    ap.add_argument("--rounds", type=int, default=2, help="timed runs of each runtime, alternating")
    ap.add_argument("--baseline-ref", default="c7195f3", help="git commit of the baseline runtime ('' to skip)")
    ap.add_argument("--baseline-dir", type=Path, default=None,
                    help="where its worktree is (made once; default /tmp/baseline-<ref>)")
    args = ap.parse_args()
    current = REPO / "runtime_py"
    baseline = None
    if args.baseline_ref:
        baseline = baseline_checkout(args.baseline_ref, args.baseline_dir or Path(f"/tmp/baseline-{args.baseline_ref}"))
    else:
        print("baseline: skipped (--baseline-ref '')")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        count, mpix = write_images(folder / "images", args.images)
        warm = folder / "warm"
        warm.mkdir()
        for path in sorted((folder / "images").iterdir())[:4]:
            shutil.copy(path, warm / path.name)
        archive = edgeseg.build(target="cpu", out_dir=folder / "dist", report=lambda _l: None).archive
        print(f"{count} photos ({mpix} megapixels, PNG and JPEG, long side 320..2048) and {archive.name} "
              f"ready in {time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPUs", flush=True)
        print(f"current : {which_runtime(current)}")
        runs: list[tuple[str, Path, list[str]]] = []
        if baseline is not None:
            print(f"baseline: {which_runtime(baseline)} ({args.baseline_ref})")
            runs.append((f"baseline {args.baseline_ref}", baseline, []))
        runs.append(("current", current, []))
        out = folder / "out"
        print(f"\nedgeseg run, {count} photos, {args.rounds} alternating round(s)")
        rates = alternate(runs, archive, folder / "images", warm, out, args.rounds, count)
        threads: dict[str, list[float]] = {}
        if "--threads" in cli_help(current):
            print("\nedgeseg run --threads 1 vs --threads 2 (current)")
            threads = alternate([("current --threads 1", current, ["--threads", "1"]),
                                 ("current --threads 2", current, ["--threads", "2"])],
                                archive, folder / "images", warm, out, args.rounds, count)
        else:
            print("\n--threads: skipped (the current 'edgeseg run' does not take it)")
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\nmedian images/s (load average {load})")
    for label, values in {**rates, **threads}.items():
        if values:
            print(f"  {label:<22} {statistics.median(values):7.1f}")
    base = rates.get(f"baseline {args.baseline_ref}") if baseline is not None else None
    if base and rates.get("current"):
        ratio = statistics.median(rates["current"]) / statistics.median(base)
        rounds = " ".join(f"{c / b:.2f}" for c, b in zip(rates["current"], base, strict=False))
        print(f"  current/baseline       {ratio:7.2f}   goal >= {GOAL}: {verdict(ratio >= GOAL)}  "
              f"(per round: {rounds})")
    if threads.get("current --threads 1") and threads.get("current --threads 2"):
        ratio = statistics.median(threads["current --threads 2"]) / statistics.median(threads["current --threads 1"])
        print(f"  threads 2 / threads 1  {ratio:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
