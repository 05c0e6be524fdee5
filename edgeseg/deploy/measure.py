"""Measure an installed archive on a device over SSH, for ``edgeseg compare --device``.

The device's own runtime does the work (``R/bin/edgeseg measure`` on the
current release, :mod:`edgeseg_runtime.measure`): the images are uploaded
into a scratch folder ``R/compare/<random>``, the label maps, raw outputs and
``measure.json`` come back, and the scratch folder is removed. The release
must be the archive being compared (same ``manifest.json`` sha256): compare
what the device really runs, installed and health-checked by ``edgeseg deploy``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgeseg_runtime.archive import MANIFEST_NAME, Archive, sha256_file
from edgeseg_runtime.measure import DONE_PREFIX, MEASURE_NAME

from ..errors import DeployError
from .device import push_agent, read_state
from .inventory import Device, Inventory
from .ssh import DeviceLink

__all__ = ["measure_on_device"]


def measure_on_device(
    archive_path: str | Path,
    device: Device,
    inventory: Inventory,
    images: Sequence[Path],
    out_dir: Path,
    *,
    runs: int = 20,
    warmup: int = 3,
    scores: bool = True,
    report: Callable[[str], None] | None = None,
    on_image: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``edgeseg measure`` for ``archive_path`` on ``device``; results land in ``out_dir``.

    Args:
        archive_path: the archive the device must be running (its current release).
        device, inventory: the device and the inventory (known_hosts).
        images: image files to upload (distinct stems).
        out_dir: local folder for ``<stem>.png``, ``<stem>.output.npy`` and ``measure.json``.
        runs, warmup, scores: as :func:`edgeseg_runtime.measure.measure`.
        report: progress lines.
        on_image: called with each image's name as the device finishes it.

    Returns:
        The device's ``measure.json`` document.

    Raises:
        DeployError: the device does not run this archive, the link died, or
            the measurement failed there (its last stderr lines).
    """
    say = report or (lambda _line: None)
    with Archive.open(archive_path) as archive:
        manifest_sha = sha256_file(archive.path(MANIFEST_NAME))
    out_dir.mkdir(parents=True, exist_ok=True)
    root = device.root
    with DeviceLink(device, inventory.known_hosts) as link:
        push_agent(link, say)
        current = read_state(link).current
        if current is None or current.manifest_sha256 != manifest_sha:
            running = f"release {current.version}" if current else "nothing"
            raise DeployError(
                f"{device.name} runs {running}, not {Path(archive_path).name}; install it first: "
                f"edgeseg deploy {archive_path} --device {device.name}"
            )
        scratch = f"{root}/compare/{secrets.token_hex(6)}"
        try:
            link.mkdirs(f"{scratch}/images", f"{scratch}/out")
            for image in images:
                link.upload(image, f"{scratch}/images/{image.name}", 0)
            say(f"{device.name}: {len(images)} images uploaded, measuring release {current.version}")
            argv = link.agent_argv(
                # the device's installed runtime may predate the positional ARCHIVE: the alias works in both
                "exec", "--", "measure", "--archive", current.slot, f"{scratch}/images", "--out", f"{scratch}/out",
                "--runs", str(runs), "--warmup", str(warmup), *([] if scores else ["--no-scores"]),
            )
            result = link.run(argv, on_line=lambda line: _progress(line, on_image))
            if result.exited != 0:
                tail = " | ".join(result.stderr.strip().splitlines()[-2:]) or f"exit {result.exited}"
                raise DeployError(f"{device.name}: edgeseg measure failed on the device ({tail})")
            for name in link.listdir(f"{scratch}/out"):
                link.download(f"{scratch}/out/{name}", out_dir / name)
        finally:
            try:
                link.run(["rm", "-rf", scratch])
            except DeployError:
                pass  # the link is gone: the error already raised is the one to report
    return json.loads((out_dir / MEASURE_NAME).read_text(encoding="utf-8"))


def _progress(line: str, on_image: Callable[[str], None] | None) -> None:
    if on_image is not None and line.startswith(DONE_PREFIX):
        on_image(line[len(DONE_PREFIX):])
