"""The device side of ``edgeseg deploy``: ``python -m edgeseg_runtime.agent --root R COMMAND``.

The host runs this over SSH (``R/agent`` on ``PYTHONPATH``). Protocol, one
line each on stdout so the host can stream progress:

* ``. <text>``  a progress line;
* ``= <json>``  the result (last line), exit 0;
* ``! <json>``  ``{"error": "<one line>", "kind": "<exception class>"}``, exit 1.

Commands: ``state``, ``install --manifest SHA256 [--allow-downgrade]
[--health-timeout S]``, ``rollback``, ``recover`` (run it at boot: it finishes
or discards a half-done install), ``prune --keep N``, and ``exec -- ARGS``
(the ``edgeseg`` runtime command of the current release; what ``R/bin/edgeseg`` calls),
``engine --archive A --out DIR`` (build this device's TensorRT engine for an
uploaded archive and verify it: ``edgeseg build --device``).
See :mod:`edgeseg_runtime.install` for what each does on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from .errors import EdgesegError
from .install import Device

__all__ = ["main"]


def _say(line: str) -> None:
    print(f". {line}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 done, 1 refused or failed)."""
    parser = argparse.ArgumentParser(prog="edgeseg-agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="install root on this device")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("state", help="versions, stored files, partial uploads, free space (JSON)")
    p = sub.add_parser("install", help="install the release whose manifest.json has this sha256")
    p.add_argument("--manifest", required=True, metavar="SHA256")
    p.add_argument("--allow-downgrade", action="store_true")
    p.add_argument("--health-timeout", type=float, default=600.0, metavar="S")
    sub.add_parser("rollback", help="make the previous release current again")
    sub.add_parser("recover", help="finish or discard a half-done install (run at boot)")
    p = sub.add_parser("prune", help="keep only the N newest releases (and current/previous)")
    p.add_argument("--keep", type=int, required=True)
    p = sub.add_parser("engine", help="build this device's TensorRT engine for an archive, verify it (JSON)")
    p.add_argument("--archive", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("exec", help="run the current release's edgeseg runtime command")
    p.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    try:
        device = Device(args.root, report=_say)
        if args.command == "exec":
            run_args = args.args[1:] if args.args[:1] == ["--"] else args.args
            cmd, env = device.exec_argv(run_args)
            os.execve(cmd[0], cmd, env)
        if args.command == "state":
            result = device.state()
        elif args.command == "install":
            result = device.install(args.manifest, allow_downgrade=args.allow_downgrade, health_timeout=args.health_timeout)
        elif args.command == "rollback":
            result = device.rollback()
        elif args.command == "recover":
            result = device.recover()
        elif args.command == "engine":
            from pathlib import Path

            from .engine import build_on_device

            _say("building the TensorRT engine (first build on a device takes minutes)")
            result = build_on_device(Path(args.archive), Path(args.out))
        else:
            result = {"removed": device.prune(args.keep)}
    except EdgesegError as exc:
        print("! " + json.dumps({"error": str(exc), "kind": type(exc).__name__}), flush=True)
        return 1
    except OSError as exc:
        print("! " + json.dumps({"error": f"{exc.strerror or exc} ({exc.filename or args.root})", "kind": "OSError"}), flush=True)
        return 1
    print("= " + json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
