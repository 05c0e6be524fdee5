"""invoke tasks: thin wrappers over edgeseg's Python API.

    invoke build --target intel            # archive of the embedded default model
    invoke build --target cpu --model m.onnx --spec m.toml
    invoke test [--fast]                   # the test suite (CI runs it without --fast)
    invoke bench                           # runtime overhead vs bare inference, cpu and intel
    invoke convert-default-model           # re-create the embedded ONNX from mediapipe==0.10.14
"""

from __future__ import annotations

import sys

from invoke import task


@task(
    help={
        "target": "target profile name (targets/<name>.toml) or path",
        "model": "ONNX or TorchScript file (default: the embedded default model)",
        "spec": "model spec TOML (needed with --model)",
        "out": "output folder (default: dist)",
        "with-argmax": "fold argmax into the shared ONNX",
    }
)
def build(c, target, model=None, spec=None, out="dist", with_argmax=False):  # noqa: ANN001, ANN201
    """Build <out>/<model>-<target>.tar.gz; prints its path on the last line."""
    import edgeseg

    result = edgeseg.build(model, target=target, spec=spec, out_dir=out, with_argmax=with_argmax)
    print(result.archive)


@task(help={"fast": "skip tests marked slow", "k": "pytest -k expression"})
def test(c, fast=False, k=None):  # noqa: ANN001, ANN201
    """Run the test suite."""
    args = [sys.executable, "-m", "pytest"]
    if fast:
        args += ["-m", "not slow"]
    if k:
        args += ["-k", k]
    c.run(" ".join(f"'{a}'" for a in args), pty=False)


@task(help={"runs": "timed iterations per case", "targets": "comma-separated targets"})
def bench(c, runs=200, targets="cpu,intel"):  # noqa: ANN001, ANN201
    """Runtime end-to-end time per image vs the backend's bare inference (benchmarks/bench_runtime.py)."""
    c.run(f"'{sys.executable}' benchmarks/bench_runtime.py --runs {int(runs)} --targets {targets}", pty=False)


@task(name="convert-default-model", help={"work": "working folder to keep (default: temporary)"})
def convert_default_model(c, work=None):  # noqa: ANN001, ANN201
    """Re-create the embedded default model and the LiteRT reference masks (needs PyPI)."""
    extra = f" --work '{work}'" if work else ""
    c.run(f"'{sys.executable}' scripts/convert_default_model.py{extra}", pty=False)
