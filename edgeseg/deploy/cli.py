"""Handlers of ``edgeseg keys | devices | deploy | rollback | status | recover``: thin calls of :mod:`edgeseg.deploy`.

Their arguments are declared in :mod:`edgeseg.cli` (building the parser must not
import this package: ``--help`` stays fast); :func:`edgeseg_runtime.cli.run_cli`
imports this module when one of these commands runs.

Exit codes: 0 every device ok; 1 a device failed or the rollout stopped; 2 bad usage/config (a missing
archive among them); 130 Ctrl-C, 128 + N signal N (SIGTERM, SIGHUP): links closed, one line, no waiting for a device.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeseg_runtime.cli import need_archive, print_json, say

__all__ = ["cmd_deploy", "cmd_devices_list", "cmd_devices_trust", "cmd_export_mender", "cmd_keys_new", "cmd_provision",
           "cmd_recover",
           "cmd_rollback", "cmd_status"]


def _print_rows(rows: list[Any], as_json: bool, title: str) -> int:
    from rich.console import Console

    from .fleet import render_table

    if as_json:
        print_json([r.to_dict() for r in rows])
    else:
        Console(soft_wrap=False).print(render_table(rows, title))
    return 0 if all(r.ok for r in rows) else 1


def cmd_keys_new(args: argparse.Namespace) -> int:
    from ..signing import new_keypair

    kp = new_keypair(args.out, args.name, overwrite=args.force)
    if args.json:
        print_json({"private": str(kp.private), "public": str(kp.public), "key_id": kp.key_id})
        return 0
    print(f"private key {kp.private} (keep it secret; build with --sign-key {kp.private})")
    print(f"public key  {kp.public} (key id {kp.key_id}; list it in trusted_keys of devices.toml)")
    return 0


def cmd_devices_list(args: argparse.Namespace) -> int:
    from .inventory import load_inventory

    inv = load_inventory(args.inventory)
    if args.json:
        print_json([{"name": d.name, "address": d.address, "target": d.target, "root": d.root, "groups": d.groups}
                    for d in inv.devices])
        return 0
    for d in inv.devices:
        print(f"{d.name:<16} {d.address:<28} target={d.target:<8} root={d.root}  groups={','.join(d.groups) or '-'}")
    return 0


def cmd_devices_trust(args: argparse.Namespace) -> int:
    from ..errors import DeployError
    from .inventory import load_inventory
    from .ssh import fetch_host_key, fingerprint, trust_host

    inv = load_inventory(args.inventory)
    device = inv.get(args.name)
    key = fetch_host_key(device)
    fp = fingerprint(key)
    print(f"{device.name} ({device.host}:{device.port}) host key {key.get_name()} {fp}")
    if args.fingerprint and args.fingerprint != fp:
        raise DeployError(f"{device.name}: host key is {fp}, not the expected {args.fingerprint}; not trusted")
    if not (args.yes or args.fingerprint):
        if not sys.stdin.isatty():
            raise DeployError("confirm the fingerprint with --fingerprint SHA256:... or --yes (no terminal to ask on)")
        if input("trust this key? [y/N] ").strip().lower() not in ("y", "yes"):
            print("not trusted")
            return 1
    trust_host(device, inv.known_hosts, key)
    print(f"added to {inv.known_hosts}")
    return 0


def _for_devices(action: Callable[..., Any], args: argparse.Namespace, title: str) -> int:
    from edgeseg_runtime.cli import _Terminated

    from . import for_devices
    from .inventory import load_inventory

    inv = load_inventory(args.inventory)
    try:
        rows = for_devices(action, inv, devices=args.device, group=args.group, report=say)
    except (KeyboardInterrupt, _Terminated) as exc:
        return _stopped(exc, "links closed" if title == "status" else
                        f"links closed; a device that had already started the {title} finishes it on its own "
                        "('edgeseg status' shows where each stands)")
    return _print_rows(rows, args.json, title)


def cmd_provision(args: argparse.Namespace) -> int:
    from functools import partial

    from .device import provision_device

    return _for_devices(partial(provision_device, mender=args.mender), args, "provision")


def cmd_export_mender(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from .mender import describe, export_mender

    need_archive(args.archive)
    if not args.device_types:
        raise ConfigError("give --device-type T (the device_type your Mender clients report; repeatable)")
    artifact = export_mender(args.archive, args.device_types, args.out, sign_key=args.sign_key, report=say)
    if args.json:
        print_json(artifact.to_dict())
    else:
        print(describe(artifact))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .device import device_status

    return _for_devices(device_status, args, "status")


def cmd_rollback(args: argparse.Namespace) -> int:
    from .device import rollback_device

    return _for_devices(rollback_device, args, "rollback")


def cmd_recover(args: argparse.Namespace) -> int:
    from .device import recover_device

    return _for_devices(recover_device, args, "recover")


def cmd_deploy(args: argparse.Namespace) -> int:
    from edgeseg_runtime.cli import _Terminated
    from rich.console import Console

    from . import deploy
    from .fleet import Waves, render_table
    from .inventory import load_inventory

    waves = Waves.parse(args.waves)  # the arguments first, then the files they name
    need_archive(args.archive)
    inv = load_inventory(args.inventory)
    try:
        result = deploy(
            args.archive, inv, devices=args.device, group=args.group, waves=waves,
            max_failure_rate=args.max_failure_rate, allow_downgrade=args.allow_downgrade, stage_only=args.stage_only,
            report=say,
        )
    except (KeyboardInterrupt, _Terminated) as exc:  # the archive's temporary folder is gone already
        return _stopped(exc, "uploads stopped and links closed; a device that had already started installing "
                        "finishes or discards that install on its own ('edgeseg status' shows which)")
    if args.json:
        print_json(result.to_dict())
    else:
        Console(soft_wrap=False).print(render_table(result.results, f"deploy {Path(args.archive).name}"))
        if result.stopped_at is not None:
            print(f"rollout stopped: {result.reason}")
    return 0 if result.ok else 1


def _stopped(exc: BaseException, what: str) -> int:
    """Ctrl-C (exit 130) or SIGTERM/SIGHUP (128 + N) during a device command: one line, without waiting for a device.

    The links are closed already (the cancel token), so the device threads end
    within moments; one still inside a blocking call is not waited for.
    """
    signum = getattr(exc, "signum", None)
    code, how = (130, "interrupted") if signum is None else (128 + signum, f"stopped by signal {signum}")
    print(f"edgeseg: {how}: {what}", file=sys.stderr, flush=True)
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.stdout.flush()
        os._exit(code)  # a worker still in a blocking call: the interpreter would wait for it at exit
    return code
