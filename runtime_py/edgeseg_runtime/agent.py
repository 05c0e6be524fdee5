"""The device side of ``edgeseg deploy``: ``python -m edgeseg_runtime.agent --root R COMMAND``.

The host runs this over SSH (``R/agent`` on ``PYTHONPATH``). Protocol, one
line each on stdout so the host can stream progress:

* ``. <text>``  a progress line;
* ``= <json>``  the result (last line; a record of :mod:`edgeseg_runtime.contract`), exit 0;
* ``! <json>``  ``{"error": "<one line>", "kind": "<exception class>"}``, exit 1 (refused or
  failed) or 2 (could not run: another install holds the lock, an internal error).

Commands: ``state``, ``install --manifest SHA256 [--allow-downgrade]
[--health-timeout S]``, ``rollback``, ``recover`` (run it at boot: it finishes
or discards a half-done install), ``prune --keep N``, and ``exec -- ARGS``
(the ``edgeseg`` runtime command of the current release; what ``R/bin/edgeseg`` calls),
``engine --archive A --out DIR`` (build this device's TensorRT engine for an
uploaded archive and verify it: ``edgeseg build --device``),
``mender-module [--dir D]`` (write the Mender update module for this root: :mod:`edgeseg_runtime.mender`).
Every command but ``state`` and ``exec`` holds ``R/lock`` while it runs (see
:mod:`edgeseg_runtime.install`). ``--plain`` prints for people instead
(``R/bin/edgeseg recover``): progress lines, a one-line result, errors as
``edgeseg: error: ...`` on stderr.

The agent outlives the host hanging up: SIGHUP is ignored and once stdout is
gone (the SSH link dropped) progress is no longer printed, so an install that
started finishes (or is discarded) as one whole step, never half-switched.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from .errors import EdgesegError
from .install import DeviceBusy, InstallRoot

__all__ = ["main"]

LOCKED = ("install", "rollback", "recover", "prune", "engine")


class _Out:
    """Writes the protocol (or plain lines); stops writing, without failing, once the reader is gone."""

    def __init__(self, plain: bool) -> None:
        self.plain = plain
        self.gone = False

    def _write(self, stream: Any, text: str) -> None:
        if self.gone:
            return
        try:
            stream.write(text + "\n")
            stream.flush()
        except (BrokenPipeError, OSError, ValueError):
            self.gone = True
            try:  # later writes (and the interpreter's final flush) go nowhere
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stream.fileno())
            except (OSError, ValueError):
                pass

    def say(self, line: str) -> None:
        self._write(sys.stdout, line if self.plain else f". {line}")

    def result(self, command: str, doc: dict[str, Any]) -> None:
        if not self.plain:
            self._write(sys.stdout, "= " + json.dumps(doc, sort_keys=True))
        elif command == "recover":
            self._write(sys.stdout, f"edgeseg: recover: {doc['status']}; current release is {doc.get('version') or 'none'}")
        else:
            self._write(sys.stdout, json.dumps(doc, sort_keys=True))

    def fail(self, error: str, kind: str) -> None:
        error = " ".join(error.split())  # one line, whatever the exception said
        if self.plain:
            self._write(sys.stderr, f"edgeseg: error: {error}")
        else:
            self._write(sys.stdout, "! " + json.dumps({"error": error, "kind": kind}))


def _survive_hangup() -> None:
    """Keep running when the SSH link drops: no death by SIGHUP; a closed pipe is an error we catch (not SIGPIPE)."""
    for name in ("SIGHUP", "SIGPIPE"):
        signum = getattr(signal, name, None)
        if signum is not None:
            try:
                signal.signal(signum, signal.SIG_IGN)
            except (OSError, ValueError):
                pass


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``PROG: error: MESSAGE (see PROG --help)``, exit 2.

    The idea of :class:`edgeseg_runtime.cli.OneLineParser`, copied: that module
    imports numpy, and the installer runs on the stdlib alone.
    """

    def error(self, message: str) -> Any:  # argparse API
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    # sub-commands' parsers are of the same class (add_subparsers takes type(parser)): one line there too
    parser = OneLineParser(prog="edgeseg-agent", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--root", required=True, help="install root on this device")
    parser.add_argument("--plain", action="store_true", help="print for people, not for the host")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("state", help="versions, stored files, partial uploads, free space (JSON)")
    p = sub.add_parser("install", help="install the release whose manifest.json has this sha256")
    p.add_argument("--manifest", required=True, metavar="SHA256")
    p.add_argument("--allow-downgrade", action="store_true")
    p.add_argument("--health-timeout", type=float, default=600.0, metavar="S")
    sub.add_parser("rollback", help="make the previous release current again")
    sub.add_parser("recover", help="finish or discard a half-done install, repair the root (run at boot)")
    p = sub.add_parser("prune", help="keep only the N newest releases (and current/previous)")
    p.add_argument("--keep", type=int, required=True)
    p = sub.add_parser("engine", help="build this device's TensorRT engine for an archive, verify it (JSON)")
    p.add_argument("--archive", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("mender-module", help="write the Mender update module that installs into this root")
    p.add_argument("--dir", default=None, metavar="D", help="modules folder (default: /usr/share/mender/modules/v3)")
    p = sub.add_parser("exec", help="run the current release's edgeseg runtime command")
    p.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _exec(root: str, run_args: list) -> int:
    """``R/bin/edgeseg ARGS``: replace this process by the current release's runtime, or say why not (exit 2)."""
    try:
        cmd, env = InstallRoot(root).exec_argv(run_args)
    except (EdgesegError, OSError) as exc:
        print(f"edgeseg: {exc}", file=sys.stderr)
        return 2
    os.execve(cmd[0], cmd, env)
    return 2  # not reached


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 done, 1 refused or failed, 2 could not run)."""
    args = _parser().parse_args(argv)
    if args.command == "exec":
        return _exec(args.root, args.args[1:] if args.args[:1] == ["--"] else args.args)
    _survive_hangup()
    out = _Out(args.plain)
    try:
        device = InstallRoot(args.root, report=out.say)
        if args.command == "state":
            result = device.state()
        elif args.command == "install":
            result = device.install(args.manifest, allow_downgrade=args.allow_downgrade,
                                    health_timeout=args.health_timeout)
        elif args.command == "rollback":
            result = device.rollback()
        elif args.command == "recover":
            result = device.recover()
        elif args.command == "mender-module":
            from .mender import MODULES_DIR, write_module

            path = write_module(args.root, args.dir or MODULES_DIR)
            out.say(f"wrote the Mender update module {path}")
            out.result(args.command, {"path": str(path), "python": sys.executable})
            return 0
        elif args.command == "prune":
            if args.keep < 1:
                raise EdgesegError("--keep must be at least 1")
            result = device.prune(args.keep)
        else:
            from pathlib import Path

            from .engine import build_on_device

            with device.lock("engine"):
                out.say("building the TensorRT engine (first build on a device takes minutes)")
                doc = build_on_device(Path(args.archive), Path(args.out))
            out.result(args.command, doc)
            return 0
    except DeviceBusy as exc:
        out.fail(str(exc), "DeviceBusy")
        return 2
    except EdgesegError as exc:
        out.fail(str(exc), type(exc).__name__)
        return 1
    except OSError as exc:
        out.fail(f"{exc.strerror or exc} ({exc.filename or args.root})", "OSError")
        return 1
    except Exception as exc:  # noqa: BLE001  a bug: one line for the host, never a traceback
        first = (str(exc).splitlines() or [""])[0][:200]
        out.fail(f"internal error in the installer ({type(exc).__name__}: {first}); please report it", "InternalError")
        return 2
    out.result(args.command, result.to_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main())
