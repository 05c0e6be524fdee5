"""Deploying archives to devices over SSH: signed, atomic, verified, reversible.

Public surface::

    from edgeseg.deploy import load_inventory, deploy, rollback, status

    inv = load_inventory("devices.toml")
    rollout = deploy("dist/m-cpu-fp32.tar.gz", inv, group="lab")      # waves, per-device rows
    rollout = deploy("dist/m-cpu-fp32.tar.gz", inv, devices=["cam-01"])

Modules: :mod:`.inventory` (``devices.toml``), :mod:`.ssh` (connections,
host keys, timeouts, resumable uploads), :mod:`.device` (one device),
:mod:`.fleet` (waves). The device side is :mod:`edgeseg_runtime.install`.
Needs ``pip install 'edgeseg[deploy]'`` (fabric, cryptography).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .device import (
    DeviceResult,
    deploy_device,
    device_status,
    provision_device,
    recover_device,
    rollback_device,
)
from .fleet import Rollout, plan_waves, render_table, rollout
from .inventory import Device, Inventory, load_inventory

__all__ = [
    "Device",
    "DeviceResult",
    "Inventory",
    "Rollout",
    "load_inventory",
    "deploy",
    "for_devices",
    "deploy_device",
    "rollback_device",
    "recover_device",
    "device_status",
    "provision_device",
    "plan_waves",
    "render_table",
    "rollout",
]

Report = Callable[[str], None]


def deploy(
    archive: str | Path,
    inventory: Inventory,
    *,
    devices: list[str] | None = None,
    group: str | None = None,
    waves: str = "1,50%,100%",
    max_failure_rate: float = 0.0,
    allow_downgrade: bool = False,
    stage_only: bool = False,
    parallel: int = 8,
    report: Report | None = None,
) -> Rollout:
    """Deploy ``archive`` to named devices or a group, in waves (see :func:`edgeseg.deploy.fleet.rollout`).

    Raises:
        ConfigError: unknown device or group, bad waves.
    """
    targets = inventory.select(devices, group)

    def one(device: Device) -> DeviceResult:
        return deploy_device(
            archive, device, inventory, allow_downgrade=allow_downgrade, stage_only=stage_only, report=report
        )

    return rollout(targets, one, waves=waves, max_failure_rate=max_failure_rate, parallel=parallel, report=report)


def for_devices(
    action: Callable[[Device, Inventory, Report | None], DeviceResult],
    inventory: Inventory,
    *,
    devices: list[str] | None = None,
    group: str | None = None,
    parallel: int = 8,
    report: Report | None = None,
) -> list[DeviceResult]:
    """Run one of the per-device commands (status, rollback, recover, provision) on many devices in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    targets = inventory.select(devices, group)
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(targets)))) as pool:
        return list(pool.map(lambda d: action(d, inventory, report), targets))
