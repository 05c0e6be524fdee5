"""Remote engine build: ``edgeseg build --target jetson --device NAME`` (:func:`build_for_device`).

A TensorRT engine only runs on the TensorRT version and GPU it was built on,
so for a fleet of identical devices it pays to build it once, on one of them,
and ship it. :func:`build_engine_on_device`:

1. uploads the archive into a scratch folder ``R/engine-build/<random>``;
2. the device's agent builds (or reuses) its engine with the device's
   TensorRT and runs the golden check on it
   (:func:`edgeseg_runtime.engine.build_on_device`); a device without TensorRT
   says so in one line and nothing else happens;
3. the engine and its key come back over SFTP and the scratch folder goes;
4. :func:`attach_engine` writes ``<model>-<target>-<precision>-<device>.tar.gz``:
   the same archive plus ``engines/<key>.engine``, listed under
   ``backend.prebuilt_engines`` with its key, the device's golden check as the
   build check, re-signed. Devices whose key matches use it as it is; others
   build their own (the runner says why).

:func:`build_for_device` is the whole workflow (the CLI's and invoke's
``build --device``): check that the target builds on a device and that the
device exists, :func:`edgeseg.build` the generic archive, then the above.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeseg_runtime.archive import Archive

from ..bundle import pack, write_manifest
from ..errors import ConfigError, DeployError
from ..signing import sign_stage
from .device import push_agent
from .inventory import DEFAULT_INVENTORY, Device, Inventory, load_inventory
from .ssh import DeviceLink

if TYPE_CHECKING:
    from ..build import BuildResult
    from ..targets import Target

__all__ = ["DeviceBuild", "build_for_device", "device_for_build", "build_engine_on_device", "attach_engine"]


@dataclass(frozen=True)
class DeviceBuild:
    """What :func:`build_for_device` made.

    Attributes:
        generic: the build of the generic archive (each device builds its own engine from it).
        archive: ``<generic archive stem>-<device>.tar.gz``, carrying the engine built on the device.
    """

    generic: BuildResult
    archive: Path


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def device_for_build(
    target: str | Path | Target, device: str, inventory: str | Path | Inventory = DEFAULT_INVENTORY
) -> tuple[Inventory, Device]:
    """Step 1 of :func:`build_for_device`: the target builds on a device, and the device is in the inventory.

    Returns:
        The inventory (loaded) and the device's entry.

    Raises:
        ConfigError: the target is built here, not on a device; no such inventory or device.
    """
    from ..backends import get_backend
    from ..targets import Target, load_target

    profile = target if isinstance(target, Target) else load_target(target)
    if get_backend(profile).capabilities.build_on != "device":
        name = profile.name if isinstance(target, Target) else str(target)
        raise ConfigError(f"--device: target {name!r} is built here, not on a device (only TensorRT targets are)")
    inv = inventory if isinstance(inventory, Inventory) else load_inventory(inventory)
    return inv, inv.get(device)


def build_for_device(
    model: Any = None,
    *,
    target: str | Path | Target,
    device: str,
    inventory: str | Path | Inventory = DEFAULT_INVENTORY,
    out_dir: str | Path = "dist",
    sign_key: str | Path | None = None,
    report: Callable[[str], None] | None = None,
    **build_options: Any,
) -> DeviceBuild:
    """Build the archive, then its TensorRT engine on ``device`` over SSH, into a device-specific archive.

    Args:
        model: as :func:`edgeseg.build`.
        target: a target whose backend builds on the device (TensorRT: ``jetson``).
        device: the device's name in ``inventory``.
        inventory: ``devices.toml`` (path) or a loaded :class:`Inventory`.
        out_dir: folder for both archives.
        sign_key: signs both manifests (None: ``$EDGESEG_SIGNING_KEY``, else unsigned).
        report: progress lines (None: the build's progress display, the device's lines on stderr).
        **build_options: the other keywords of :func:`edgeseg.build` (``spec``, ``precision``, ...).

    Returns:
        A :class:`DeviceBuild`.

    Raises:
        ConfigError: the target is built here, not on a device; unknown device
            (both before building anything).
        DeployError: the device could not build the engine or it missed the golden check.
        EdgesegError: the build itself failed (as :func:`edgeseg.build`).
    """
    from ..build import build
    from ..signing import default_sign_key

    inv, entry = device_for_build(target, device, inventory)  # before building anything
    generic = build(model, target=target, out_dir=out_dir, sign_key=sign_key, report=report, **build_options)
    say = report or _stderr_line
    say(f"generic archive (engine built on each device): {generic.archive}")
    archive = build_engine_on_device(generic.archive, entry, inv, Path(out_dir), sign_key=default_sign_key(sign_key),
                                     report=say)
    return DeviceBuild(generic, archive)


def attach_engine(
    archive_path: Path, engine: Path, result: dict[str, Any], device: str, dest: Path, sign_key: str | Path | None
) -> Path:
    """Write a copy of ``archive_path`` that carries a device-built engine.

    Args:
        archive_path: the TensorRT archive the engine was built from.
        engine: the ``<key>.engine`` file.
        result: the device's answer (:func:`edgeseg_runtime.engine.build_on_device`):
            ``key``, ``parts``, ``verify``.
        device: the device's name (recorded, and part of the file name).
        dest: folder for the new archive.
        sign_key: Ed25519 key to sign the new manifest; None leaves it unsigned.

    Returns:
        Path of ``<archive stem>-<device>.tar.gz`` in ``dest``.

    Raises:
        ArchiveError: the source archive is corrupt or altered.
    """
    key = str(result["key"])
    with Archive.open(archive_path) as archive, tempfile.TemporaryDirectory(prefix="edgeseg-engine-") as tmp:
        stage = Path(tmp) / "stage"
        shutil.copytree(archive.root, stage)
        (stage / "manifest.sig").unlink(missing_ok=True)
        (stage / "engines").mkdir(exist_ok=True)
        rel = f"engines/{key}.engine"
        shutil.copyfile(engine, stage / rel)
        # the new document: the validated one with the engine listed (write_manifest lists the files again)
        doc = {k: v for k, v in archive.manifest.doc.items() if k != "files"}
        backend = dict(archive.manifest.backend.details)
        others = [e for e in backend.get("prebuilt_engines", []) if e.get("key") != key]
        backend["prebuilt_engines"] = [*others, {"file": rel, "key": key, "parts": result["parts"], "device": device}]
        doc["backend"] = backend
        verify = result["verify"]
        doc["build_check"] = {
            "passed": verify["passed"], "verdict": f"on {device}: {verify['verdict']}", "images": verify["images"],
            "device": device,
        }
        write_manifest(stage, doc)
        if sign_key is not None:
            sign_stage(stage, sign_key)
        name = archive_path.name.removesuffix(".tar.gz")
        out = Path(dest) / f"{name}-{device}.tar.gz"
        pack(stage, out)
    return out


def build_engine_on_device(
    archive_path: str | Path,
    device: Device,
    inventory: Inventory,
    dest: Path,
    *,
    sign_key: str | Path | None = None,
    timeout: float = 3600.0,
    report: Callable[[str], None] | None = None,
) -> Path:
    """Build ``archive_path``'s TensorRT engine on ``device`` and return the device-specific archive.

    Args:
        archive_path: a TensorRT archive (``edgeseg build --target jetson``).
        device, inventory: the device and the inventory (known_hosts).
        dest: folder for the new archive.
        sign_key: signs the new manifest (None = unsigned).
        timeout: seconds the device may take (engine builds take minutes).
        report: progress lines.

    Raises:
        DeployError: the link died, or the device could not build (no TensorRT
            there, parser or builder error): its one-line reason.
        ArchiveError: the archive is corrupt.
    """
    say = report or (lambda _line: None)
    archive_path = Path(archive_path)
    with Archive.open(archive_path) as archive:
        if archive.manifest.backend.name != "tensorrt":
            raise DeployError(f"{archive_path.name} is a {archive.manifest.backend.name} archive; "
                              "--device builds TensorRT engines only (jetson targets)")
    scratch = f"{device.root}/engine-build/{secrets.token_hex(6)}"
    with DeviceLink(device, inventory.known_hosts) as link, tempfile.TemporaryDirectory(prefix="edgeseg-engine-") as tmp:
        push_agent(link, say)
        try:
            link.mkdirs(f"{scratch}/out")
            link.upload(archive_path, f"{scratch}/{archive_path.name}", 0)
            say(f"{device.name}: archive uploaded; building the TensorRT engine there")
            result = link.agent("engine", "--archive", f"{scratch}/{archive_path.name}", "--out", f"{scratch}/out",
                                on_line=lambda line: say(f"{device.name}: {line}"), timeout=timeout)
            engine = Path(tmp) / result["engine"]
            link.download(f"{scratch}/out/{result['engine']}", engine)
        finally:
            try:
                link.run(["rm", "-rf", scratch])
            except DeployError:
                pass  # the link is gone: the error already raised is the one to report
        say(f"{device.name}: engine {result['key'][:12]} ({result['source']}); {result['verify']['verdict']}")
        if not result["verify"]["passed"]:
            raise DeployError(f"{device.name}: the engine built there misses the golden check, no archive written: "
                              f"{result['verify']['verdict']}")
        out = attach_engine(archive_path, engine, result, device.name, dest, sign_key)
    say(f"device-specific archive: {out} ({json.dumps(result['parts'].get('gpu', {}))})")
    return out
