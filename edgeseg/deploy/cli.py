"""``edgeseg keys | devices | deploy | rollback | status | recover``: thin argument parsing over :mod:`edgeseg.deploy`.

Exit codes: 0 every device ok; 1 a device failed or the rollout stopped; 2 bad usage/config;
130 Ctrl-C, 128 + N signal N (SIGTERM, SIGHUP): links closed, one line, no waiting for a device.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["add_commands"]


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _inventory_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inventory", "-i", type=Path, default=Path("devices.toml"),
                   help="device inventory (default: %(default)s; format in edgeseg/deploy/inventory.py)")


def _select_args(p: argparse.ArgumentParser) -> None:
    _inventory_arg(p)
    p.add_argument("--device", "-d", action="append", metavar="NAME", help="device name (repeatable)")
    p.add_argument("--group", "-g", metavar="G", help="every device of a group")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def _print_rows(rows: list[Any], as_json: bool, title: str) -> int:
    from rich.console import Console

    from .fleet import render_table

    if as_json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
    else:
        Console(soft_wrap=False).print(render_table(rows, title))
    return 0 if all(r.ok for r in rows) else 1


def cmd_keys_new(args: argparse.Namespace) -> int:
    from ..signing import new_keypair

    kp = new_keypair(args.out, args.name, overwrite=args.force)
    print(f"private key {kp.private} (keep it secret; build with --sign-key {kp.private})")
    print(f"public key  {kp.public} (key id {kp.key_id}; list it in trusted_keys of devices.toml)")
    return 0


def cmd_devices_list(args: argparse.Namespace) -> int:
    from .inventory import load_inventory

    inv = load_inventory(args.inventory)
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
        rows = for_devices(action, inv, devices=args.device, group=args.group, report=_say)
    except (KeyboardInterrupt, _Terminated) as exc:
        return _stopped(exc, "links closed" if title == "status" else
                        f"links closed; a device that had already started the {title} finishes it on its own "
                        "('edgeseg status' shows where each stands)")
    return _print_rows(rows, args.json, title)


def cmd_provision(args: argparse.Namespace) -> int:
    from .device import provision_device

    return _for_devices(provision_device, args, "provision")


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

    inv = load_inventory(args.inventory)
    waves = Waves.parse(args.waves)
    try:
        result = deploy(
            args.archive, inv, devices=args.device, group=args.group, waves=waves,
            max_failure_rate=args.max_failure_rate, allow_downgrade=args.allow_downgrade, stage_only=args.stage_only,
            report=_say,
        )
    except (KeyboardInterrupt, _Terminated) as exc:  # the archive's temporary folder is gone already
        return _stopped(exc, "uploads stopped and links closed; a device that had already started installing "
                        "finishes or discards that install on its own ('edgeseg status' shows which)")
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
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


def add_commands(sub: Any) -> None:
    """Add the deployment commands to the host CLI's sub-parsers."""
    p = sub.add_parser("keys", help="signing keys", description="Ed25519 keys that sign archives (devices check them).")
    ks = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    q = ks.add_parser("new", help="create a key pair", description="Write NAME.key (private, 0600) and NAME.pem (public).")
    q.add_argument("--out", "-o", type=Path, default=Path("keys"), help="folder (default: %(default)s)")
    q.add_argument("--name", default="edgeseg-signing", help="file name stem (default: %(default)s)")
    q.add_argument("--force", action="store_true", help="replace existing files")
    q.set_defaults(func=cmd_keys_new)

    p = sub.add_parser("devices", help="device inventory: list, trust host keys, provision",
                       description="Devices of devices.toml.")
    ds = p.add_subparsers(dest="devices_command", metavar="ACTION", required=True)
    q = ds.add_parser("list", help="list the inventory")
    _inventory_arg(q)
    q.set_defaults(func=cmd_devices_list)
    q = ds.add_parser("trust", help="add a device's SSH host key to known_hosts (explicitly)",
                      description="Read the device's host key, print its fingerprint, and add it to the inventory's "
                      "known_hosts after you confirm (--yes) or when it equals --fingerprint.")
    _inventory_arg(q)
    q.add_argument("name", help="device name")
    q.add_argument("--fingerprint", metavar="SHA256:...", help="expected fingerprint (from the device's console)")
    q.add_argument("--yes", action="store_true", help="trust without asking")
    q.set_defaults(func=cmd_devices_trust)
    q = ds.add_parser("provision", help="install root, installer and trusted signing keys on devices",
                      description="Create the install root, push the installer, and the inventory's trusted_keys.")
    _select_args(q)
    q.set_defaults(func=cmd_provision)

    p = sub.add_parser(
        "deploy", help="install a signed archive on devices over SSH (waves, health check, atomic switch)",
        description="Upload what each device lacks (resumable, content-addressed), verify the signature and every "
        "checksum on the device, install into a new release slot, run the health check (golden verify, latency "
        "budget), then switch atomically. A failure leaves the device on its version. With --group: waves, "
        "stopping when a wave's failure rate passes --max-failure-rate.",
    )
    p.add_argument("archive", type=Path, help="signed archive from 'edgeseg build --sign-key'")
    _select_args(p)
    p.add_argument("--waves", default="1,50%,100%", help="cumulative wave sizes (default: %(default)s)")
    p.add_argument("--max-failure-rate", type=float, default=0.0, metavar="R",
                   help="stop when a wave's failed share is above R in [0, 1] (default: %(default)s)")
    p.add_argument("--allow-downgrade", action="store_true", help="install a lower version than installed")
    p.add_argument("--stage-only", action="store_true", help="upload only; a later deploy installs without sending")
    p.set_defaults(func=cmd_deploy)

    for name, func, text in (
        ("status", cmd_status, "what each device runs: current/previous release, free space"),
        ("rollback", cmd_rollback, "make each device's previous release current again"),
        ("recover", cmd_recover, "finish or discard a half-done install (after a power loss)"),
    ):
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        _select_args(p)
        p.set_defaults(func=func)
