"""Deploying archives to devices over SSH: signed, atomic, verified, reversible.

Public surface::

    from edgeseg.deploy import Waves, load_inventory, deploy

    inv = load_inventory("devices.toml")
    rollout = deploy("dist/m-cpu-fp32.tar.gz", inv, group="lab")      # waves 1,50%,100%, per-device rows
    rollout = deploy("dist/m-cpu-fp32.tar.gz", inv, group="lab", waves=Waves.parse("2,100%"))
    rollout = deploy("dist/m-cpu-fp32.tar.gz", inv, devices=["cam-01"])

Modules: :mod:`.inventory` (``devices.toml``), :mod:`.ssh` (connections,
host keys, timeouts, resumable uploads), :mod:`.device` (one device),
:mod:`.fleet` (waves). The device side is :mod:`edgeseg_runtime.install`.
Needs ``pip install 'edgeseg[deploy]'`` (fabric, cryptography).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from edgeseg_runtime.archive import Archive

from .device import (
    DeviceResult,
    deploy_device,
    device_status,
    open_signed,
    provision_device,
    recover_device,
    rollback_device,
)
from .fleet import DEFAULT_WAVES, Rollout, Waves, WaveSize, plan_waves, render_table, rollout, run_parallel
from .inventory import Device, Inventory, load_inventory
from .ssh import Cancel

__all__ = [
    "Device",
    "DeviceResult",
    "Inventory",
    "Rollout",
    "Waves",
    "WaveSize",
    "DEFAULT_WAVES",
    "Cancel",
    "load_inventory",
    "deploy",
    "for_devices",
    "deploy_device",
    "rollback_device",
    "recover_device",
    "device_status",
    "provision_device",
    "open_signed",
    "plan_waves",
    "render_table",
    "rollout",
]

Report = Callable[[str], None]


def deploy(
    archive: str | Path | Archive,
    inventory: Inventory,
    *,
    devices: list[str] | None = None,
    group: str | None = None,
    waves: Waves = DEFAULT_WAVES,
    max_failure_rate: float = 0.0,
    allow_downgrade: bool = False,
    stage_only: bool = False,
    parallel: int = 8,
    report: Report | None = None,
    cancel: Cancel | None = None,
) -> Rollout:
    """Deploy ``archive`` to named devices or a group, in waves (see :func:`edgeseg.deploy.fleet.rollout`).

    The archive is opened and checked once, here, in the calling thread
    (:func:`~edgeseg.deploy.device.open_signed`: tar safety, every sha256, the
    signature's form), before any device is contacted; every device's worker
    gets that opened archive, and its temporary folder is removed when this
    returns or raises (Ctrl-C and SIGTERM included). An :class:`Archive`
    already opened is used as it is.

    Ctrl-C (KeyboardInterrupt), or any other exception reaching the waiting
    thread (the CLI turns SIGTERM/SIGHUP into one), fires ``cancel`` (one is
    made when none is given): uploads stop, links close, also one still
    connecting or waiting for the SSH banner, and the exception is raised
    again within about two seconds. A device that had started installing
    finishes or discards that install on its own.

    Raises:
        ConfigError: unknown device or group.
        ArchiveError: the archive is corrupt, tampered or unsafe (no device contacted).
        DeployError: the archive is unsigned; SignatureError: its signature is malformed.
        TypeError: ``waves`` is not a :class:`Waves` (the CLI parses ``"1,50%,100%"`` with :meth:`Waves.parse`).
        KeyboardInterrupt: interrupted (after cancelling).
    """
    targets = inventory.select(devices, group)
    plan_waves(targets, waves)  # TypeError for a wrong waves before unpacking anything
    cancel = cancel or Cancel()
    with _opened(archive) as opened:

        def one(device: Device) -> DeviceResult:
            return deploy_device(
                opened, device, inventory, allow_downgrade=allow_downgrade, stage_only=stage_only, report=report,
                cancel=cancel,
            )

        return rollout(targets, one, waves=waves, max_failure_rate=max_failure_rate, parallel=parallel,
                       report=report, cancel=cancel)


@contextmanager
def _opened(archive: str | Path | Archive) -> Iterator[Archive]:
    if isinstance(archive, Archive):
        yield archive
    else:
        with open_signed(archive) as opened:
            yield opened


def for_devices(
    action: Callable[..., DeviceResult],
    inventory: Inventory,
    *,
    devices: list[str] | None = None,
    group: str | None = None,
    parallel: int = 8,
    report: Report | None = None,
    cancel: Cancel | None = None,
) -> list[DeviceResult]:
    """Run one of the per-device commands (status, rollback, recover, provision) on many devices in parallel.

    ``action`` is called as ``action(device, inventory, report, cancel=cancel)``
    (:func:`device_status`, :func:`rollback_device`, :func:`recover_device`,
    :func:`provision_device`). An interrupt (Ctrl-C, or the CLI's SIGTERM/SIGHUP)
    fires ``cancel`` (one is made when none is given): every link closes, also
    one still connecting or waiting for the SSH banner, the devices not started
    yet are cancelled, and the interrupt is raised again without waiting for the others.
    """
    targets = inventory.select(devices, group)
    cancel = cancel or Cancel()
    return run_parallel(lambda d: action(d, inventory, report, cancel=cancel), targets, parallel, cancel)
