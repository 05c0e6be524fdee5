#!/usr/bin/env python3
"""edgeseg's runtime vs the MMDeploy C++ SDK (``mmdeploy_runtime.Segmentor``) on the same archives, in lockstep.

Builds ``cpu`` (ONNX Runtime fp32) archives of BiSeNetV2 and Fast-SCNN from
their MMSegmentation configs at a 512x1024 input (seeded random weights: no
checkpoint is reachable), plus the embedded default model, and times each on
a 512x512 photo (scikit-image's astronaut) and a 2048x1024 one (coffee,
upscaled with LANCZOS), decoded once and kept in memory on both sides.

The SDK (PyPI ``mmdeploy-runtime==1.3.1``) needs numpy < 2, so it runs in a
venv of its own (the one ``tests/test_mmdeploy_sdk.py`` makes, same path and
recipe), as a long-lived server process reading one command per line on
stdin. The runs alternate round by round: edgeseg's bare inference (the
runner on an already prepared tensor), edgeseg end to end
(``seg.segment(rgb)``: labels at the image's size), then one SDK call
(``sdk(bgr)``) followed by the argmax of its ``(C, H, W)`` scores (the SDK
returns scores when the model has no argmax; edgeseg's label map includes
it, so the SDK side is timed with it). Medians over ``--runs`` rounds after
``--warmup`` untimed ones. While one side runs the other waits on a pipe, so
they do not compete for cores.

Prints one row per model and image: edgeseg and SDK medians, SDK/edgeseg
(> 1: edgeseg is faster), edgeseg end-to-end/bare, and the share of
identical labels (plus the largest score difference). Then the goals, each
PASS or FAIL (the exit status is 0 either way):

* SDK/edgeseg >= 1.5 for BiSeNetV2 and Fast-SCNN at both sizes;
* labels >= 99.9 % identical to the SDK's;
* end-to-end/bare <= 1.15 for BiSeNetV2 at 2048x1024, <= 1.5 for the default model at 512x512.

Random-weight mmseg models have near-tied class scores, so the one grey level
by which OpenCV's fixed-point resize (SDK) and edgeseg's float resize differ
can flip labels there (see tests/test_mmdeploy_sdk.py); the score difference
column tells that apart from a real mismatch.

    python benchmarks/bench_sdk.py [--runs 40] [--warmup 5] [--threads N] [--sdk-venv PATH]

``--threads`` sets ONNX Runtime's ``intra_op_num_threads`` for edgeseg only:
the SDK's Python API has no thread setting (its bundled ONNX Runtime 1.15
uses its default, one thread per core, as edgeseg does without ``--threads``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from edgeseg_runtime import Archive, Segmentor
from edgeseg_runtime.images import load_image
from PIL import Image

import edgeseg

SDK = "mmdeploy-runtime==1.3.1"
MODELS = [  # (row name, mmseg config or None for the embedded default model)
    ("BiSeNetV2", "bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024"),
    ("Fast-SCNN", "fast_scnn_8xb4-160k_cityscapes-512x1024"),
    ("default", None),
]
MMSEG_INPUT = (512, 1024)  # (H, W) the mmseg models are exported at

# The SDK side: one command per line on stdin, one reply per line on stdout prefixed with "@@ "
# (the SDK's own log lines go to the same stdout and are skipped by the reader).
SDK_SERVER = r'''
import sys, time, traceback
import numpy as np
from PIL import Image
from mmdeploy_runtime import Segmentor

def reply(text):
    sys.stdout.write("@@ " + text + "\n")
    sys.stdout.flush()

models, images = {}, {}
for line in sys.stdin:
    cmd, *args = line.rstrip("\n").split("\t")
    try:
        if cmd == "model":          # model NAME DIR
            models[args[0]] = Segmentor(model_path=args[1], device_name="cpu", device_id=0)
            reply("ok")
        elif cmd == "image":        # image KEY PATH: decoded once, BGR as cv2.imread gives it
            rgb = np.asarray(Image.open(args[1]).convert("RGB"))
            images[args[0]] = np.ascontiguousarray(rgb[..., ::-1])
            reply("ok")
        elif cmd == "run":          # run NAME KEY N: per call "total_ms,argmax_ms"
            seg, bgr, out = models[args[0]], images[args[1]], []
            for _ in range(int(args[2])):
                t0 = time.perf_counter()
                res = np.asarray(seg(bgr))
                t1 = time.perf_counter()
                labels = res.argmax(0) if res.ndim == 3 else res
                t2 = time.perf_counter()
                out.append(f"{(t2 - t0) * 1e3:.4f},{(t2 - t1) * 1e3:.4f}")
            reply(" ".join(out))
        elif cmd == "save":         # save NAME KEY PATH: the raw result, (C, H, W) scores or (H, W) labels
            np.save(args[2], np.asarray(models[args[0]](images[args[1]])))
            reply("ok")
        elif cmd == "quit":
            reply("ok")
            break
        else:
            reply("error unknown command " + cmd)
    except Exception as exc:  # one line back to the benchmark
        reply("error " + (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300])
'''


class SdkError(RuntimeError):
    """The SDK server failed or went away."""


class SdkServer:
    """The SDK server process in its venv: ``call("run", name, key, "1")`` -> the reply line."""

    def __init__(self, python: Path, folder: Path) -> None:
        script = folder / "sdk_server.py"
        script.write_text(SDK_SERVER)
        self.log = (folder / "sdk_server.log").open("w")
        self.proc = subprocess.Popen([str(python), "-u", str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1)

    def call(self, *words: str) -> str:
        assert self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write("\t".join(words) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise SdkError(f"the SDK process exited ({self.proc.poll()})") from None
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                text = line[3:].rstrip("\n")
                if text.startswith("error"):
                    raise SdkError(text[6:])
                return text
        raise SdkError(f"the SDK process exited ({self.proc.wait()}); see its log {self.log.name}")

    def close(self) -> None:
        with contextlib.suppress(SdkError, OSError, ValueError):
            self.call("quit")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
        self.log.close()


def sdk_python(venv: Path) -> Path | None:
    """The SDK venv's Python, made once as tests/test_mmdeploy_sdk.py makes it; None (said) when it cannot be."""
    python = venv / "bin" / "python"
    if (venv / ".complete").is_file():
        return python
    print(f"making the MMDeploy SDK venv once in {venv} ({SDK} from PyPI) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True,
                       timeout=300)
        proc = subprocess.run([str(python), "-m", "pip", "install", "-q", SDK, "numpy<2", "pillow"],
                              capture_output=True, text=True, timeout=1200, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"MMDeploy SDK: no venv ({type(exc).__name__}: {str(exc)[:200]}); SDK columns skipped")
        return None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        print(f"MMDeploy SDK: installing {SDK} failed ({last[:200]}); SDK columns skipped")
        return None
    (venv / ".complete").write_text("ok\n")
    return python


@contextlib.contextmanager
def quiet_build(folder: Path) -> Iterator[None]:
    """File descriptors 1 and 2 into a file while building (torch's ONNX export can dump whole graphs on either);
    its tail on stderr when the build fails."""
    log = folder / "build-output.log"
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with log.open("ab") as f:
        for fd in saved:
            os.dup2(f.fileno(), fd)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            if failed:
                sys.stderr.write(log.read_text(errors="replace")[-2000:])


def build_archives(folder: Path) -> dict[str, Path]:
    """``{row name: cpu archive}``; a model that cannot be built is one line and left out."""
    archives = {}
    for name, config in MODELS:
        t0 = time.perf_counter()
        try:
            with quiet_build(folder):
                if config is None:
                    result = edgeseg.build(target="cpu", out_dir=folder / "dist", report=lambda _l: None)
                else:
                    from edgeseg.mmseg import load_mmseg

                    module, spec = load_mmseg(config, input_size=MMSEG_INPUT)
                    result = edgeseg.build(module, spec=spec, target="cpu", out_dir=folder / "dist",
                                           report=lambda _l: None)
        except edgeseg.EdgesegError as exc:
            print(f"{name}: not built ({exc})")
            continue
        archives[name] = result.archive
        print(f"built {result.archive.name} in {time.perf_counter() - t0:.1f} s", flush=True)
    return archives


def make_images(folder: Path) -> dict[str, Path]:
    """The two photos as PNG: astronaut 512x512, coffee upscaled to 2048x1024 (LANCZOS)."""
    from skimage import data

    images = {"512x512": folder / "astronaut_512x512.png", "2048x1024": folder / "coffee_2048x1024.png"}
    Image.fromarray(data.astronaut()).save(images["512x512"])
    Image.fromarray(data.coffee()).resize((2048, 1024), Image.Resampling.LANCZOS).save(images["2048x1024"])
    return images


@dataclass
class Row:
    model: str
    image: str
    e2e: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    sdk: list[float] = field(default_factory=list)
    argmax: list[float] = field(default_factory=list)
    agreement: float | None = None
    score_diff: float | None = None

    @staticmethod
    def med(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    def ratio(self, a: list[float], b: list[float]) -> float | None:
        return self.med(a) / self.med(b) if a and b else None


def _ms(t0: int, t1: int) -> float:
    return (t1 - t0) / 1e6


def measure(seg: Segmentor, sdk: SdkServer | None, name: str, key: str, rgb: np.ndarray, runs: int, warmup: int,
            row: Row) -> bool:
    """Rounds of: edgeseg bare, edgeseg end to end, one SDK call (+argmax). False: the SDK failed (one line said)."""
    clock = time.perf_counter_ns
    tensor = seg.prepare(rgb)
    alive = True
    for i in range(warmup + runs):
        t0 = clock()
        seg.infer(tensor)
        t1 = clock()
        seg.segment(rgb)
        t2 = clock()
        sdk_ms = None
        if sdk is not None:
            try:
                total, argmax = sdk.call("run", name, key, "1").split(",")
                sdk_ms = (float(total), float(argmax))
            except SdkError as exc:
                print(f"MMDeploy SDK failed on {name} {key}: {exc}; SDK columns skipped from here")
                sdk.close()
                sdk, alive = None, False
        if i >= warmup:
            row.bare.append(_ms(t0, t1))
            row.e2e.append(_ms(t1, t2))
            if sdk_ms:
                row.sdk.append(sdk_ms[0])
                row.argmax.append(sdk_ms[1])
    return alive


def compare_outputs(seg: Segmentor, sdk: SdkServer, name: str, key: str, rgb: np.ndarray, folder: Path,
                    row: Row) -> None:
    """Label agreement and largest score difference with the SDK, once (not timed)."""
    path = folder / f"sdk-{name}-{key}.npy"
    sdk.call("save", name, key, str(path))
    res = np.load(path)
    path.unlink()
    ours = seg.segment(rgb, scores=res.ndim == 3)
    labels = res.argmax(0) if res.ndim == 3 else res
    if labels.shape != ours.labels.shape:
        print(f"{name} {key}: the SDK's labels are {labels.shape}, edgeseg's {ours.labels.shape}")
        return
    row.agreement = float(np.mean(labels == ours.labels))
    if ours.scores is not None and ours.scores.shape == res.shape:
        row.score_diff = float(np.abs(ours.scores - res).max())


def _fmt(value: float | None, spec: str, width: int) -> str:
    return f"{value:{spec}}".rjust(width) if value is not None else "-".rjust(width)


def print_table(rows: list[Row], runs: int, threads: str) -> None:
    """The table; without any SDK figure (no SDK here), its columns are left out."""
    with_sdk = any(r.sdk for r in rows)
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\nmedians over {runs} lockstep rounds; ONNX Runtime threads: edgeseg {threads}"
          f"{', SDK its default' if with_sdk else ''}; {os.cpu_count()} CPUs, load average {load}")
    head = f"{'model':<10} {'image':<9} {'edgeseg ms':>10} {'bare ms':>9} "
    if with_sdk:
        head += f"{'SDK ms (+argmax)':>17} {'of it argmax':>12} {'SDK/edgeseg':>11} "
    head += f"{'e2e/bare':>8}"
    if with_sdk:
        head += f" {'labels = SDK':>12} {'max |dscore|':>12}"
    print(head)
    print("-" * len(head))
    for r in rows:
        line = f"{r.model:<10} {r.image:<9} {_fmt(r.med(r.e2e), '.1f', 10)} {_fmt(r.med(r.bare), '.1f', 9)} "
        if with_sdk:
            line += (f"{_fmt(r.med(r.sdk), '.1f', 17)} {_fmt(r.med(r.argmax), '.1f', 12)} "
                     f"{_fmt(r.ratio(r.sdk, r.e2e), '.2f', 11)} ")
        line += _fmt(r.ratio(r.e2e, r.bare), ".3f", 8)
        if with_sdk:
            agreement = "-".rjust(12) if r.agreement is None else f"{r.agreement * 100:11.3f}%"
            line += f" {agreement} {_fmt(r.score_diff, '.1e', 12)}"
        print(line)


def print_goals(rows: list[Row]) -> None:
    """Each goal PASS or FAIL next to its figure (n/a: not measured here; SDK goals left out without the SDK)."""
    by = {(r.model, r.image): r for r in rows}
    goals: list[tuple[str, float | None, bool | None]] = []
    if any(r.sdk for r in rows):
        for model in ("BiSeNetV2", "Fast-SCNN"):
            for image in ("512x512", "2048x1024"):
                r = by.get((model, image))
                v = r.ratio(r.sdk, r.e2e) if r else None
                goals.append((f"SDK/edgeseg >= 1.5     {model} {image}", v, None if v is None else v >= 1.5))
        for r in rows:
            v = None if r.agreement is None else r.agreement * 100
            goals.append((f"labels >= 99.9 % = SDK {r.model} {r.image}", v, None if v is None else round(v, 6) >= 99.9))
    for model, image, limit in (("BiSeNetV2", "2048x1024", 1.15), ("default", "512x512", 1.5)):
        r = by.get((model, image))
        v = r.ratio(r.e2e, r.bare) if r else None
        goals.append((f"e2e/bare <= {limit:<4}       {model} {image}", v, None if v is None else v <= limit))
    print("\ngoals")
    for text, value, ok in goals:
        verdict = "n/a " if ok is None else ("PASS" if ok else "FAIL")
        print(f"  {verdict}  {text:<44} {'-' if value is None else f'{value:.3f}'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=40, help="timed lockstep rounds per model and image")
    ap.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    ap.add_argument("--threads", type=int, default=None,
                    help="edgeseg's ONNX Runtime intra_op_num_threads (default: the profile's)")
    ap.add_argument("--sdk-venv", type=Path, default=Path(os.environ.get(
        "EDGESEG_SDK_VENV", Path.home() / ".cache" / "edgeseg-tests" / "mmdeploy-sdk-1.3.1")),
        help="the SDK's venv, made once when missing (default: the tests' one, $EDGESEG_SDK_VENV)")
    args = ap.parse_args()
    options = {"intra_op_num_threads": args.threads} if args.threads is not None else {}
    python = sdk_python(args.sdk_venv)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        archives = build_archives(folder)
        images = make_images(folder)
        sdk: SdkServer | None = None
        in_sdk: set[str] = set()  # the models the SDK loaded
        if python is not None:
            try:
                sdk = SdkServer(python, folder)
                for key, path in images.items():
                    sdk.call("image", key, str(path))
            except (SdkError, OSError) as exc:
                print(f"MMDeploy SDK: could not start ({exc}); SDK columns skipped")
                if sdk is not None:
                    sdk.close()
                sdk = None
        for name, archive in archives.items() if sdk is not None else ():
            unpacked = folder / "unpacked" / name  # the SDK reads the archive folder as it is
            with tarfile.open(archive) as tar:
                tar.extractall(unpacked, filter="data")
            try:
                sdk.call("model", name, str(unpacked))
                in_sdk.add(name)
            except SdkError as exc:
                print(f"MMDeploy SDK: {name} not loaded ({exc}); its SDK columns skipped")
        decoded = {key: load_image(path) for key, path in images.items()}
        try:
            for name, archive in archives.items():
                with Archive.open(archive) as opened, Segmentor(opened, options) as seg:
                    for key, rgb in decoded.items():
                        if name == "default" and key != "512x512":
                            continue
                        row = Row(name, key)
                        theirs = sdk if name in in_sdk else None
                        alive = measure(seg, theirs, name, key, rgb, args.runs, args.warmup, row)
                        if theirs is not None and not alive:  # it failed and was closed
                            sdk = None
                        elif theirs is not None:
                            try:
                                compare_outputs(seg, sdk, name, key, rgb, folder, row)
                            except SdkError as exc:
                                print(f"MMDeploy SDK: no outputs for {name} {key} ({exc})")
                        rows.append(row)
                        print(f"measured {name} {key}", flush=True)
        finally:
            if sdk is not None:
                sdk.close()
    print_table(rows, args.runs, str(args.threads) if args.threads is not None else "profile default")
    print_goals(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
