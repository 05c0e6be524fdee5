"""What the on-device installer answers: typed, validated, frozen records (both sides of ``edgeseg deploy``).

The agent (:mod:`edgeseg_runtime.agent`) prints one of these as JSON (``= {...}``)
and the host (:mod:`edgeseg.deploy.device`) reads it back with
:meth:`Record.from_dict`, which checks every field's type, so a field the host
relies on is never a ``KeyError`` or a string where a number was meant::

    DeviceState      versions, stored files, uploads in progress, free space, problems
    InstallResult    installed | unchanged, with the health check (Health)
    RollbackResult   rolled back
    RecoverResult    clean | finished | discarded | repaired
    PruneResult      the slots removed
    Journal          the install in progress (``R/journal.json``) and its phase

Standard library only; runs on Python 3.9+ (annotations use ``typing`` names,
which :func:`typing.get_type_hints` resolves there).
"""

# typing's Optional/Tuple/Dict on purpose: Record.from_dict resolves these annotations at run time on Python 3.9
# ruff: noqa: UP006, UP035, UP045, PYI019, TRY004
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any, Dict, Literal, Optional, Tuple, TypeVar, Union, get_args, get_origin, get_type_hints

__all__ = [
    "JOURNAL_PHASES",
    "DeviceState",
    "Health",
    "InstallResult",
    "InstallStatus",
    "Journal",
    "JournalPhase",
    "LockHolder",
    "Part",
    "PruneResult",
    "Record",
    "RecoverResult",
    "RecoverStatus",
    "Release",
    "RollbackResult",
]

InstallStatus = Literal["installed", "unchanged"]
RecoverStatus = Literal["clean", "finished", "discarded", "repaired"]
JournalPhase = Literal["assemble", "dependencies", "health", "switch", "prune"]
JOURNAL_PHASES = get_args(JournalPhase)

R = TypeVar("R", bound="Record")
_HINTS: Dict[type, Dict[str, Any]] = {}


def _hints(cls: type) -> Dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls, vars(sys.modules[cls.__module__]))
    return _HINTS[cls]


def _convert(tp: Any, value: Any, where: str) -> Any:
    """``value`` checked against the annotation ``tp`` (JSON lists become tuples); ValueError naming ``where``."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where}: {str(value)[:40]!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
        return {k: _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, Record):
        return tp.from_dict(value, where)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise ValueError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {type(value).__name__}")
    return value


class Record:
    """Base of the records: ``to_dict()`` (JSON-ready) and ``from_dict()`` (validated)."""

    def to_dict(self) -> Dict[str, Any]:
        """The record as plain JSON types (nested records as objects, tuples as lists)."""
        return _plain(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls: type[R], doc: Any, where: str = "") -> R:
        """Build and check a record from parsed JSON.

        Raises:
            ValueError: not an object, a missing or unknown key, or a value of the wrong type (one line).
        """
        name = where or cls.__name__
        if not isinstance(doc, dict):
            raise ValueError(f"{name}: expected an object, got {type(doc).__name__}")
        hints = _hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(doc) - set(fields)
        if unknown:
            raise ValueError(f"{name}: unknown key {min(unknown)!r}")
        values = {}
        for key, f in fields.items():
            if key not in doc:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                    raise ValueError(f"{name}.{key}: missing")
                continue
            values[key] = _convert(hints[key], doc[key], f"{name}.{key}")
        return cls(**values)


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}  # type: ignore[arg-type]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Release(Record):
    """A release link (``current`` / ``previous``): its slot, version, manifest sha256 and target.

    ``broken`` is True when the link names a slot that is missing or has no
    readable manifest (``version`` and ``target`` are then None when unknown).
    """

    version: Optional[str]
    slot: str
    manifest_sha256: Optional[str]
    target: Optional[str] = None
    broken: bool = False


@dataclass(frozen=True)
class Part(Record):
    """An upload in ``incoming/<sha256>-<size>.<session>.part``.

    ``received`` bytes are there; ``complete`` when it has all ``size`` bytes
    and they hash to ``sha256`` (ready for an install to take); ``corrupt`` when
    it has ``size`` bytes or more that do not (the next install or ``recover``
    deletes it and the host sends the file again).
    """

    name: str
    sha256: str
    size: int
    received: int
    complete: bool = False
    corrupt: bool = False
    age_s: float = 0.0


@dataclass(frozen=True)
class LockHolder(Record):
    """Who holds ``R/lock`` (what its file says; only for messages)."""

    pid: int
    command: str
    since: float

    def describe(self) -> str:
        """``since 2025-01-02 10:11:12 UTC (pid 42, install)``."""
        import time

        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since)) if self.since > 0 else "an unknown time"
        return f"since {when} (pid {self.pid}, {self.command})"


@dataclass(frozen=True)
class Journal(Record):
    """``R/journal.json``: the install in progress, the phase it started, the version it replaces."""

    phase: JournalPhase
    version: Optional[str] = None
    manifest: Optional[str] = None
    old: Optional[str] = None


@dataclass(frozen=True)
class DeviceState(Record):
    """What the host reads before an upload (``agent state``; takes no lock, never changes anything).

    Attributes:
        agent, python, arch: installer version, the device's Python and machine.
        root: the install root.
        current, previous: the release links (None = no link).
        releases: installed slot versions, oldest first.
        store: sha256 of the received files.
        partials: bytes received per sha256 (largest upload in progress).
        parts: every upload in ``incoming/``.
        free_bytes: free space under the root.
        read_only: the root's file system is mounted read-only.
        trusted_keys: names of ``trusted_keys/*.pem`` (None: no ``cryptography`` here).
        journal: the install in progress (None = none, or unreadable: see ``journal_error``).
        journal_error: why ``journal.json`` could not be read (``recover`` discards it).
        version_floor: the highest release version ever installed here (anti-rollback).
        lock: the holder of ``R/lock`` while a state-changing command runs.
        problems: one line each for what needs attention (``edgeseg status`` shows them).
    """

    agent: str
    python: str
    arch: str
    root: str
    current: Optional[Release]
    previous: Optional[Release]
    releases: Tuple[str, ...]
    store: Tuple[str, ...]
    partials: Dict[str, int]
    parts: Tuple[Part, ...]
    free_bytes: int
    read_only: bool
    trusted_keys: Optional[Tuple[str, ...]]
    journal: Optional[Journal]
    journal_error: Optional[str]
    version_floor: Optional[str]
    lock: Optional[LockHolder]
    problems: Tuple[str, ...]

    @property
    def version(self) -> Optional[str]:
        """The current release version (None when nothing usable is current)."""
        return self.current.version if self.current and not self.current.broken else None


@dataclass(frozen=True)
class Health(Record):
    """The install's health check: verdict of ``verify`` (and of ``bench`` against the latency budget)."""

    passed: bool
    verdict: str
    seconds: float = 0.0
    latency_ms: Optional[float] = None


@dataclass(frozen=True)
class InstallResult(Record):
    """``agent install``: ``installed`` (switched) or ``unchanged`` (that manifest was already current)."""

    status: InstallStatus
    version: str
    previous: Optional[str]
    key_id: str
    health: Optional[Health] = None


@dataclass(frozen=True)
class RollbackResult(Record):
    """``agent rollback``: ``previous`` made current again."""

    status: Literal["rolled back"]
    version: str
    previous: Optional[str]


@dataclass(frozen=True)
class RecoverResult(Record):
    """``agent recover``: what it did (``notes``: one line per repair) and the current version after it."""

    status: RecoverStatus
    version: Optional[str]
    notes: Tuple[str, ...] = ()


@dataclass(frozen=True)
class PruneResult(Record):
    """``agent prune``: the slot versions removed."""

    removed: Tuple[str, ...]
