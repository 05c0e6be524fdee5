"""The ``edgeseg`` Mender update module: Mender's deployment states, carried out by edgeseg's installer.

Mender (an over-the-air update system: server, ``mender`` client on each
device) hands the payload of an artifact of type ``edgeseg`` to the program
``/usr/share/mender/modules/v3/edgeseg``, calling it once per state as
``edgeseg STATE FILES`` (``FILES``: the payload's working folder, with
``header/``, ``files/`` holding the payload and ``tmp/`` for the module).
That program is a two-line shell script (:func:`module_script`, written by
``edgeseg devices provision --mender`` or ``python -m edgeseg_runtime.agent
--root R mender-module``) that runs :func:`main` with the installer the
device already has (``R/agent``). Mender's state decides, edgeseg's
installer (:class:`~edgeseg_runtime.install.InstallRoot`) does the work:

=======================  =======================================================
state                    what happens on the device
=======================  =======================================================
``SupportsRollback``     prints ``Yes``
``NeedsArtifactReboot``  prints ``No``: switching a model needs no reboot
``Download``             nothing: the client stores the payload in ``FILES/files``
``ArtifactInstall``      :meth:`~InstallRoot.stage_archive`: signature, contract and
                         version checked before anything is unpacked, then the
                         slot is assembled and health-checked, ``current`` unchanged
``ArtifactCommit``       :meth:`~InstallRoot.commit_staged`: ``current`` switches
``ArtifactRollback``     :meth:`~InstallRoot.discard_staged`: the staged slot goes
                         (or a cut commit is switched back)
``ArtifactFailure``      as ``ArtifactRollback``: the journal ends clean
``Cleanup``              a slot still staged (neither committed nor rolled back) goes
other states             nothing (reboot states never come: no reboot is asked for)
=======================  =======================================================

A failed check or health check fails ``ArtifactInstall`` (exit 1, one line on
stderr, which Mender puts in the deployment log): Mender reports the deployment
as failed and the device keeps its release. Progress goes to stderr; stdout
carries only the answers to the two query states.

``FILES/tmp/edgeseg-state`` remembers between states what this deployment
did (``staging``, ``staged``, ``unchanged``, ``committed``, with the version
and the manifest's sha256), so commit, rollback and cleanup touch only the
slot this deployment staged. A signal (``systemctl stop mender-client``,
Ctrl-C) during ``ArtifactInstall`` discards what it had done (the health check
is stopped too) and exits 128 + N; commit and rollback ignore signals (they
take moments and are never left half-done).

Source: Mender documentation, "Update Modules" (protocol v3: states, the
``FILES`` tree, query states' answers on stdout, exit status as the verdict),
and the ``mender-client`` 3.4 it was tested against (Debian 12).

Standard library only (runs where the installer runs); Python 3.9+.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import EdgesegError
from .install import DeviceBusy, InstallRoot

__all__ = ["MODULES_DIR", "MODULE_NAME", "main", "module_script", "write_module"]

#: the artifact payload type, and the module's file name under :data:`MODULES_DIR`
MODULE_NAME = "edgeseg"
#: where ``mender-client`` 3.x looks for update modules (fixed in the client; not configurable)
MODULES_DIR = "/usr/share/mender/modules/v3"
STATE_FILE = "edgeseg-state"
_QUERIES = {"SupportsRollback": "Yes", "NeedsArtifactReboot": "No"}


def module_script(root: str | Path, python: str | None = None) -> str:
    """The text of ``MODULES_DIR/edgeseg``: runs this module with the device's installer (``R/agent``).

    Args:
        root: the device's edgeseg install root ``R``.
        python: the interpreter that runs the installer (default: this one).
    """
    root_q = shlex.quote(str(Path(root).absolute()))
    py = shlex.quote(python or sys.executable)
    agent = shlex.quote(str(Path(root).absolute() / "agent"))
    return (
        "#!/bin/sh\n"
        "# edgeseg's Mender update module (protocol v3): mender runs it as 'edgeseg STATE FILES'.\n"
        "# Written by the edgeseg installer; the install root and Python below are this device's.\n"
        f"PYTHONPATH={agent}; export PYTHONPATH\n"
        "PYTHONDONTWRITEBYTECODE=1; export PYTHONDONTWRITEBYTECODE\n"
        f'exec {py} -m edgeseg_runtime.mender --root {root_q} "$@"\n'
    )


def write_module(root: str | Path, modules_dir: str | Path = MODULES_DIR) -> Path:
    """Write (atomically, mode 0755) the update module for install root ``root`` into ``modules_dir``.

    Returns:
        The module's path.

    Raises:
        OSError: the folder cannot be written (not root, read-only file system).
    """
    folder = Path(modules_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MODULE_NAME
    tmp = folder / f".{MODULE_NAME}.{os.getpid()}.new"
    tmp.write_text(module_script(root), encoding="utf-8")
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


def _payload(files: Path) -> Path:
    """The one edgeseg archive in ``FILES/files``."""
    folder = files / "files"
    try:
        names = sorted(entry.name for entry in os.scandir(folder))
    except OSError:
        names = []
    if len(names) != 1 or not (folder / names[0]).is_file() or (folder / names[0]).is_symlink():
        raise EdgesegError(f"the artifact's payload must be one edgeseg archive (.tar.gz); found {len(names)} files "
                           "(make it with 'edgeseg export mender')")
    return folder / names[0]


def _state_path(files: Path) -> Path:
    return files / "tmp" / STATE_FILE


def _remembered(files: Path) -> tuple[str, str, str | None]:
    """``(what, version, manifest sha256)`` this deployment did so far (``what`` empty: nothing staged by it)."""
    try:
        what, version, manifest = (_state_path(files).read_text(encoding="utf-8").split() + ["", "", ""])[:3]
    except (OSError, UnicodeDecodeError):
        return "", "", None
    return what, version, (manifest if len(manifest) == 64 else None)


def _remember(files: Path, what: str, version: str, manifest: str) -> None:
    path = _state_path(files)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(f"{what} {version} {manifest}\n", encoding="utf-8")
    os.replace(tmp, path)


def _say(line: str) -> None:
    print(f"edgeseg: {line}", file=sys.stderr, flush=True)


class Stopped(BaseException):
    """SIGTERM/SIGINT/SIGHUP during ``ArtifactInstall`` (``systemctl stop mender-client``, Ctrl-C)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop_on_signals() -> None:
    def stop(signum: int, _frame: Any) -> None:
        raise Stopped(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)


def _finish_despite_signals() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # commit and rollback take moments: never half-done
        signal.signal(sig, signal.SIG_IGN)


def run_state(root: str | Path, state: str, files: Path) -> str | None:
    """Carry out one Mender state; returns the answer for stdout (query states) or None.

    Raises:
        DeviceBusy: another edgeseg command holds the install root's lock.
        EdgesegError: the state failed (refused archive, failed health check, nothing to commit).
        Stopped: a signal stopped ``ArtifactInstall`` (what it had done is discarded first).
    """
    if state in _QUERIES:
        return _QUERIES[state]
    device = InstallRoot(root, report=_say)
    what, version, manifest = _remembered(files)
    if state == "ArtifactInstall":
        from .errors import ArchiveError, InstallError
        from .tarball import read_head

        payload = _payload(files)
        try:
            head, mbytes, _sig = read_head(payload)
        except ArchiveError as exc:
            raise InstallError(f"refusing to install: {exc}") from None
        msha = hashlib.sha256(mbytes).hexdigest()
        _remember(files, "staging", head.release_version, msha)  # rollback then knows which install is this one's
        _stop_on_signals()
        result = device.stage_archive(payload)
        _finish_despite_signals()
        _remember(files, result.status, result.version, msha)
        if result.status == "unchanged":
            _say(f"version {result.version} is already current; nothing to install")
        return None
    _finish_despite_signals()
    if state == "ArtifactCommit":
        if what == "unchanged":
            return None
        if what not in ("staged", "committed") or manifest is None:
            from .errors import InstallError

            raise InstallError("this deployment staged nothing to commit (its ArtifactInstall did not stage a release)")
        result = device.commit_staged(manifest)
        _remember(files, "committed", result.version, manifest or "")
        _say(f"committed: current is {result.version}")
    elif state in ("ArtifactRollback", "ArtifactFailure") or (state == "Cleanup" and what in ("staging", "staged")):
        if what in ("staging", "staged"):
            undone = device.discard_staged(manifest)
            _remember(files, "discarded", version, manifest or "")
            if undone is not None:
                _say(f"{state}: current is {undone.version}")
        elif what == "committed" and state == "ArtifactRollback" and device.state().version == version:
            back = device.rollback()  # Mender rolls back after a commit (a failed ArtifactCommit_Leave script)
            _remember(files, "discarded", version, manifest or "")
            _say(f"{state}: current is {back.version}")
    return None


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line, exit 2 (this module must not import the agent: it imports this one)."""

    def error(self, message: str) -> Any:  # argparse API
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="edgeseg-mender-module", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--root", required=True, help="the device's edgeseg install root")
    parser.add_argument("state", help="the Mender state (ArtifactInstall, ArtifactCommit, ...)")
    parser.add_argument("files", nargs="?", default=".", help="the payload's working folder Mender passes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (what Mender runs): 0 done, 1 the state failed, 2 could not run (the lock is held, a bug)."""
    args: Any = _parser().parse_args(argv)
    try:
        answer = run_state(args.root, args.state, Path(args.files))
    except Stopped as exc:
        print(f"edgeseg: error: stopped by signal {exc.signum}; the install was discarded, the device keeps its "
              "release", file=sys.stderr)
        return 128 + exc.signum
    except DeviceBusy as exc:
        print(f"edgeseg: error: {exc}", file=sys.stderr)
        return 2
    except EdgesegError as exc:
        print(f"edgeseg: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"edgeseg: error: {exc.strerror or exc} ({exc.filename or args.root})", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001  a bug: one line in Mender's log, never a traceback
        first = (str(exc).splitlines() or [""])[0][:200]
        print(f"edgeseg: error: internal error in the update module ({type(exc).__name__}: {first}); please report it",
              file=sys.stderr)
        return 2
    if answer is not None:
        print(answer, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
