"""invoke tasks: thin wrappers over edgeseg's command line (``edgeseg.cli.main([...])``) or its Python API.

    invoke build --target intel            # archive of the embedded default model
    invoke build --target cpu --precision int8 [--calib DIR] [--eval DIR]
    invoke build --target cpu --model m.onnx --spec m.toml
    invoke test [--fast]                   # the test suite (CI runs it without --fast)
    invoke deploy --target cpu --device cam-01   # build (signed with $EDGESEG_SIGNING_KEY) and deploy over SSH
    invoke deploy --archive A.tar.gz --group lab
    invoke export --archive A.tar.gz --device-type raspberrypi4 [--sign-key mender.key]   # a Mender artifact
    invoke compare --images DIR [--masks DIR] [--max-drop 1 --max-gain 0.5]   # cpu vs intel report
    invoke bench                           # runtime overhead; fp16/int8 vs fp32; vs the MMDeploy SDK; run throughput
    invoke matrix [--full]                 # MMSegmentation models x backends, measured -> docs/support-matrix.md
    invoke toolchain --what ncnn --toolchain linux-armhf-py311   # armhf device wheels, compiled/repacked here
    invoke convert-default-model           # re-create the embedded ONNX from mediapipe==0.10.14

Every task option is a flag (``--target T``), none positional: invoke gives a
positional parameter the next word, so ``invoke build --help`` used to run a
build for the target ``--help``. ``invoke TASK --help`` (or ``invoke --help
TASK``) shows a task's options. A required option that is missing is one line
and exit 2, as in the CLI.

Errors are one line with the CLI's exit codes (:func:`edgeseg.cli.exit_code`: 1 a failed check, 2 otherwise).
"""

from __future__ import annotations

import sys

from invoke import Exit, task


def _fail(exc: Exception) -> Exit:
    """An edgeseg error as one line and the CLI's exit code, not a traceback."""
    from edgeseg.cli import exit_code

    return Exit(f"edgeseg: error: {exc}", code=exit_code(exc))


def _missing(task_name: str, option: str) -> Exit:
    """A required option not given: one line, exit 2 (invoke itself would take any next word as its value)."""
    return Exit(f"invoke {task_name}: error: give {option} (see invoke {task_name} --help)", code=2)


def _cli(*args: object, **options: object) -> None:
    """``edgeseg ARGS --option value ...`` in this process; its exit code (when not 0) becomes the task's.

    ``options``: ``name=value`` becomes ``--name value`` (underscores as dashes);
    ``True`` becomes ``--name`` alone; None and False are left out.
    """
    from edgeseg.cli import main

    argv = [str(a) for a in args]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not None and value is not False:
            argv += [flag, str(value)]
    code = main(argv)
    if code:
        raise Exit(code=code)


@task(
    auto_shortflags=False,  # long flags only: short ones would contradict the CLI's (-i, -a)
    help={
        "target": "target profile name (see 'edgeseg targets') or .toml path (required)",
        "model": "ONNX or TorchScript file (default: the embedded default model)",
        "spec": "model spec TOML (needed with --model)",
        "out": "output folder (default: dist)",
        "with-argmax": "fold argmax into the shared ONNX",
        "precision": "fp32 | fp16 | int8 (default: the profile's)",
        "calib": "int8 calibration image folder (default: embedded photos)",
        "calib-count": "calibration images to sample (default: the profile's)",
        "eval": "evaluation set for the accuracy gate: DIR/images (+ DIR/masks)",
        "recalibrate": "ignore the cached calibration and search results",
        "no-search": "int8 missing the accuracy budget stops at once (no mixed-precision search)",
        "release-version": "version devices compare on update (default: the spec's)",
        "sign-key": "Ed25519 signing key (default: $EDGESEG_SIGNING_KEY)",
        "device": "TensorRT targets: build the engine on this device over SSH into <archive>-<device>.tar.gz",
        "inventory": "device inventory for --device (default: devices.toml)",
        "json": "print the archive path and the gates' figures as JSON",
    }
)
def build(  # noqa: ANN201
    c, target=None, model=None, spec=None, out="dist", with_argmax=False,  # noqa: ANN001
    precision=None, calib=None, calib_count=None, eval=None, recalibrate=False,  # noqa: ANN001, A002
    release_version=None, sign_key=None, device=None, inventory="devices.toml", json=False,  # noqa: ANN001
    no_search=False,  # noqa: ANN001
):
    """Build <out>/<model>-<target>-<precision>.tar.gz (edgeseg build); prints its path on the last line."""
    if not target:
        raise _missing("build", "--target NAME")
    _cli("build", target=target, model=model, spec=spec, out=out, with_argmax=with_argmax, precision=precision,
         calib=calib, calib_count=calib_count, eval=eval, recalibrate=recalibrate, release_version=release_version,
         sign_key=sign_key, device=device, inventory=inventory if device else None, json=json, no_search=no_search)


@task(
    auto_shortflags=False,  # long flags only: short ones would contradict the CLI's (-i, -a)
    help={
        "target": "build the default model for this target first (with --archive: not needed)",
        "archive": "deploy this archive instead of building one",
        "device": "device name from the inventory",
        "group": "deploy to a group, in waves",
        "inventory": "device inventory (default: devices.toml)",
        "waves": "cumulative wave sizes (default 1,50%,100%)",
        "max-failure-rate": "stop when a wave's failed share is above this (default 0)",
    }
)
def deploy(c, target=None, archive=None, device=None, group=None, inventory="devices.toml",  # noqa: ANN001, ANN201
           waves="1,50%,100%", max_failure_rate=0.0):  # noqa: ANN001
    """Deploy an archive (or build one for --target) to a device or group over SSH; prints the per-device table."""
    import edgeseg

    if archive is None:
        if target is None:
            raise _missing("deploy", "--target NAME (to build) or --archive FILE")
        try:
            archive = edgeseg.build(target=target).archive
        except edgeseg.EdgesegError as exc:
            raise _fail(exc) from None
    _cli("deploy", archive, inventory=inventory, device=device, group=group, waves=waves,
         max_failure_rate=max_failure_rate)


@task(
    auto_shortflags=False,
    help={
        "what": "ncnn, numpy, pillow or all (required)",
        "toolchain": "toolchain profile, e.g. linux-armhf-py311 (required)",
        "layers": "ncnn: only these layer types, comma-separated (default all)",
        "param": "ncnn: only the layers this .param file uses",
        "jobs": "parallel compile jobs (default: the CPUs)",
    },
)
def toolchain(c, what=None, toolchain=None, layers=None, param=None, jobs=None):  # noqa: ANN001, ANN201
    """Device wheels PyPI lacks (armhf): 'edgeseg toolchain build WHAT --toolchain T' (cached)."""
    if what is None:
        raise _missing("toolchain", "--what ncnn|numpy|pillow|all")
    if toolchain is None:
        raise _missing("toolchain", "--toolchain NAME")
    _cli("toolchain", "build", what, toolchain=toolchain, layers=layers, param=param, jobs=jobs)


@task(
    auto_shortflags=False,
    help={
        "archive": "signed archive to wrap (required)",
        "device-type": "Mender device type(s) it installs on, comma-separated (required)",
        "sign-key": "RSA or ECDSA P-256 private key (PEM) for Mender's signature",
        "out": "artifact to write (default: next to the archive, <name>.mender)",
    },
)
def export(c, archive=None, device_type=None, sign_key=None, out=None):  # noqa: ANN001, ANN201
    """A Mender artifact of a signed archive (payload type edgeseg): 'edgeseg export mender'."""
    if archive is None:
        raise _missing("export", "--archive FILE")
    if device_type is None:
        raise _missing("export", "--device-type T")
    types = [t for t in str(device_type).split(",") if t]
    args: list[object] = ["export", "mender", archive]
    for t in types:
        args += ["--device-type", t]
    _cli(*args, sign_key=sign_key, out=out)


@task(
    auto_shortflags=False,  # long flags only: short ones would contradict the CLI's (-i, -a)
    help={
        "images": "image folder or dataset root (images/+masks/, Cityscapes, ADE20K, VOC) (required)",
        "archives": "comma-separated archives (default: build the default model for --targets)",
        "targets": "targets to build when no --archives (default cpu,intel; cpu fp32 is the reference)",
        "masks": "ground-truth mask folder",
        "label-map": "dataset id -> model id, e.g. 15=1,*=0",
        "limit": "only the first N images",
        "device": "NAME[=ARCHIVE]: run that archive on the device over SSH",
        "inventory": "device inventory (default: devices.toml)",
        "max-drop": "fail when mIoU drops more than this many points vs fp32",
        "max-gain": "fail when mIoU gains more than this many points vs fp32",
        "out": "report folder (default: report)",
    }
)
def compare(c, images=None, archives=None, targets="cpu,intel", masks=None, label_map=None, limit=None,  # noqa: ANN001, ANN201
            device=None, inventory="devices.toml", max_drop=None, max_gain=None, out="report"):  # noqa: ANN001
    """Run archives on the same images; write report.json/.md/.html with accuracy vs fp32, latency, memory, size."""
    import edgeseg

    if not images:
        raise _missing("compare", "--images DIR")
    if archives:
        paths = archives.split(",")
    else:
        names = [t for t in targets.split(",") if t]
        try:
            paths = [edgeseg.build(target="cpu", precision="fp32").archive]
            paths += [edgeseg.build(target=t).archive for t in names if t != "cpu"]
        except edgeseg.EdgesegError as exc:
            raise _fail(exc) from None
    _cli("compare", *paths, images=images, inventory=inventory, out=out, masks=masks, label_map=label_map,
         limit=limit, device=device, max_drop=max_drop, max_gain=max_gain)


@task(auto_shortflags=False, help={"fast": "skip tests marked slow", "k": "pytest -k expression"})
def test(c, fast=False, k=None):  # noqa: ANN001, ANN201
    """Run the test suite."""
    args = [sys.executable, "-m", "pytest"]
    if fast:
        args += ["-m", "not slow"]
    if k:
        args += ["-k", k]
    c.run(" ".join(f"'{a}'" for a in args), pty=False)


@task(auto_shortflags=False, help={"runs": "timed iterations per case", "targets": "comma-separated targets"})
def bench(c, runs=200, targets="cpu,intel"):  # noqa: ANN001, ANN201
    """Runtime overhead vs bare inference, fp16/int8 vs fp32, ncnn/LiteRT vs ONNX Runtime, edgeseg vs the MMDeploy SDK,
    'edgeseg run' throughput vs a baseline commit (benchmarks/)."""
    c.run(f"'{sys.executable}' benchmarks/bench_runtime.py --runs {int(runs)} --targets {targets}", pty=False)
    c.run(f"'{sys.executable}' benchmarks/bench_quantization.py --runs {max(10, int(runs) // 4)}", pty=False)
    c.run(f"'{sys.executable}' benchmarks/bench_arm.py --runs {int(runs)}", pty=False, warn=True)  # needs [ncnn,tflite]
    # needs [mmseg] and PyPI once (the MMDeploy SDK's venv, shared with tests/test_mmdeploy_sdk.py)
    c.run(f"'{sys.executable}' benchmarks/bench_sdk.py --runs {max(10, int(runs) // 5)}", pty=False, warn=True)
    c.run(f"'{sys.executable}' benchmarks/bench_run.py", pty=False, warn=True)  # edgeseg run vs the c7195f3 runtime
    c.run(f"'{sys.executable}' benchmarks/bench_stream.py", pty=False, warn=True)  # needs the runtime's [video] (PyAV)


@task(auto_shortflags=False, help={"full": "every seed architecture x every backend x fp32,fp16 (else 5 small models, ONNX Runtime fp32)",
            "models": "comma-separated architectures", "backends": "comma-separated backends",
            "precisions": "comma-separated precisions (fp32,fp16)", "out": "output folder",
            "jobs": "models measured at once (worker processes)", "resume": "keep the models already measured in <out>"})
def matrix(c, full=False, models=None, backends=None, precisions=None, out="docs", jobs=1, resume=False):  # noqa: ANN001, ANN201
    """Measure the MMSegmentation support matrix into <out>/support-matrix.{json,md} (edgeseg matrix; needs edgeseg[mmseg])."""
    _cli("matrix", full=full, models=models, backends=backends, precisions=precisions, out=out, jobs=jobs,
         resume=resume)


@task(name="convert-default-model", auto_shortflags=False, help={"work": "working folder to keep (default: temporary)"})
def convert_default_model(c, work=None):  # noqa: ANN001, ANN201
    """Re-create the embedded default model and the LiteRT reference masks (needs PyPI)."""
    extra = f" --work '{work}'" if work else ""
    c.run(f"'{sys.executable}' scripts/convert_default_model.py{extra}", pty=False)


@task(auto_shortflags=False, help={"build": "write the site into build/site (mkdocs build --strict) instead of serving it",
            "addr": "address to serve on (default: 127.0.0.1:8000)"})
def docs(c, build=False, addr="127.0.0.1:8000"):  # noqa: ANN001, ANN201
    """The documentation site (needs edgeseg[docs]): serve docs/ with live reload, or --build it (warnings fail)."""
    if build:
        c.run(f"'{sys.executable}' -m mkdocs build --strict", pty=False, env={"NO_MKDOCS_2_WARNING": "1"})
    else:
        c.run(f"'{sys.executable}' -m mkdocs serve --dev-addr '{addr}'", pty=False, env={"NO_MKDOCS_2_WARNING": "1"})
