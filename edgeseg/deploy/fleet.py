"""Fleet rollouts in waves: canary first, then growing shares, stopping when a wave fails too often.

:class:`Waves` are cumulative sizes: ``1,50%,100%`` (the CLI's ``--waves``,
parsed by :meth:`Waves.parse`) on 10 devices gives waves of 1, 4 and 5 devices (1 canary, then up to half the fleet, then the rest).
Devices go into waves in inventory order. Within a wave devices are updated
in parallel (one SSH connection each, a thread pool, as fabric's
``ThreadingGroup`` does for single commands). After each wave, when the
share of failed devices is above ``max_failure_rate``, the rollout stops and
later waves are not touched (their rows say ``skipped``). The model is the
phased rollouts of Mender / AWS IoT jobs (abort on failure threshold).

Ctrl-C (or SIGTERM) stops a rollout at once: the cancel token stops every
upload at its next chunk and closes every SSH link, devices not started yet
are never started (``cancel_futures``), and the interrupt is raised again
after at most :data:`CANCEL_GRACE` seconds, without waiting for a device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..errors import ConfigError
from .device import DeviceResult
from .inventory import Device
from .ssh import Cancel

__all__ = ["WaveSize", "Waves", "DEFAULT_WAVES", "parse_waves", "plan_waves", "Rollout", "rollout", "render_table",
           "run_parallel", "CANCEL_GRACE"]

#: seconds an interrupted rollout waits for its devices to notice before raising the interrupt again
CANCEL_GRACE = 1.5


def run_parallel(action: Callable[[Device], DeviceResult], devices: Iterable[Device], parallel: int,
                 cancel: Cancel | None = None) -> list[DeviceResult]:
    """``action`` on every device in a thread pool, rows in device order.

    On an interrupt (KeyboardInterrupt, or any BaseException in the waiting
    thread) the cancel token is fired, queued devices are cancelled, running
    ones get :data:`CANCEL_GRACE` seconds to stop, and the exception goes on
    (the pool is not waited for).
    """
    devices = list(devices)
    pool = ThreadPoolExecutor(max_workers=max(1, min(parallel, len(devices))))
    futures: list[Future[DeviceResult]] = []
    try:
        futures = [pool.submit(action, d) for d in devices]
        rows = [f.result() for f in futures]
    except BaseException:
        if cancel is not None:
            cancel.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
        wait_futures(futures, timeout=CANCEL_GRACE)
        raise
    pool.shutdown(wait=True)
    return rows


class WaveSize(NamedTuple):
    """One cumulative wave size: ``value`` devices, or ``value`` percent of the fleet when ``percent``."""

    value: float
    percent: bool

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else f"{self.value:g}"


def _check_size(size: WaveSize, shown: str | None = None) -> WaveSize:
    numeric = isinstance(size.value, (int, float)) and not isinstance(size.value, bool)
    if shown is None:
        shown = str(size) if numeric else repr(size.value)
    if not numeric or not math.isfinite(size.value):
        raise ConfigError(f"--waves: {shown!r} is not a finite number: a wave is a positive whole count or a "
                          "percentage in (0, 100]")
    if size.value <= 0 or (size.percent and size.value > 100) or (not size.percent and size.value != int(size.value)):
        raise ConfigError(f"--waves: {shown!r} must be a positive whole count or a percentage in (0, 100]")
    return size


def parse_waves(text: str) -> list[WaveSize]:
    """The CLI's ``"1,50%,100%"`` → ``[(1, False), (50, True), (100, True)]`` (value, is_percent).

    Raises:
        ConfigError: empty, non-numeric, not finite (``nan``, ``inf``, ``1e400``), non-positive, or a
            percentage over 100.
    """
    out = []
    for part in (p.strip() for p in text.split(",")):
        pct = part.endswith("%")
        try:
            value = float(part[:-1] if pct else part)
        except ValueError:
            raise ConfigError(f"--waves: {part!r} is not a device count or a percentage like 25%") from None
        out.append(_check_size(WaveSize(value, pct), part))
    if not out:
        raise ConfigError("--waves is empty")
    return out


@dataclass(frozen=True)
class Waves:
    """Cumulative wave sizes of a rollout (``Waves.parse("1,50%,100%")``: one canary, up to half, the rest).

    Raises:
        ConfigError: no sizes, or a size that is not a positive whole count or a percentage in (0, 100].
    """

    sizes: tuple[WaveSize, ...]

    def __post_init__(self) -> None:
        sizes = tuple(WaveSize(*size) for size in self.sizes)
        if not sizes:
            raise ConfigError("--waves is empty")
        for size in sizes:
            _check_size(size)
        object.__setattr__(self, "sizes", sizes)  # frozen: plain (value, percent) pairs become WaveSize

    @classmethod
    def parse(cls, text: str) -> Waves:
        """Waves from the CLI's text (:func:`parse_waves`)."""
        return cls(tuple(parse_waves(text)))

    def __str__(self) -> str:
        return ",".join(map(str, self.sizes))

    def plan(self, devices: Sequence[Device]) -> list[list[Device]]:
        """Split ``devices`` into waves (the last wave always reaches every device)."""
        n = len(devices)
        cuts = [min(n, math.ceil(n * value / 100) if pct else int(value)) for value, pct in self.sizes]
        cuts.append(n)
        plan, start = [], 0
        for cut in cuts:
            if cut > start:
                plan.append(list(devices[start:cut]))
                start = cut
        return plan


#: one canary, then up to half the fleet, then the rest
DEFAULT_WAVES = Waves.parse("1,50%,100%")


def plan_waves(devices: Sequence[Device], waves: Waves) -> list[list[Device]]:
    """Split ``devices`` into waves (:meth:`Waves.plan`)."""
    return _waves(waves).plan(devices)


def _waves(waves: Waves) -> Waves:
    if not isinstance(waves, Waves):
        raise TypeError(f"waves takes a Waves, not {waves!r}: Waves.parse({str(waves)!r}) parses the CLI's text")
    return waves


@dataclass
class Rollout:
    """Outcome of :func:`rollout`.

    Attributes:
        results: one row per device, in wave order (``skipped`` for waves not run).
        waves: device names per wave.
        stopped_at: index of the wave that stopped the rollout (None = all ran).
        reason: why it stopped.
    """

    results: list[DeviceResult] = field(default_factory=list)
    waves: list[list[str]] = field(default_factory=list)
    stopped_at: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.stopped_at is None and all(r.ok for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "waves": self.waves, "stopped_at": self.stopped_at, "reason": self.reason,
            "results": [r.to_dict() for r in self.results],
        }


def rollout(
    devices: Sequence[Device],
    action: Callable[[Device], DeviceResult],
    *,
    waves: Waves = DEFAULT_WAVES,
    max_failure_rate: float = 0.0,
    parallel: int = 8,
    report: Callable[[str], None] | None = None,
    cancel: Cancel | None = None,
) -> Rollout:
    """Run ``action`` on every device, wave by wave.

    Args:
        devices: the fleet, in rollout order.
        action: deploys to one device and returns its row (never raises).
        waves: cumulative wave sizes (:class:`Waves`).
        max_failure_rate: in [0, 1]; a wave whose failed share is above it stops the rollout.
        parallel: devices updated at once within a wave.
        report: progress lines.
        cancel: fired on an interrupt (the actions' links close, uploads stop).

    Raises:
        ConfigError: bad ``max_failure_rate``.
        TypeError: ``waves`` is not a :class:`Waves`.
    """
    if not 0.0 <= max_failure_rate <= 1.0:
        raise ConfigError(f"--max-failure-rate must be in [0, 1], got {max_failure_rate}")
    report = report or (lambda _line: None)
    plan = _waves(waves).plan(devices)
    out = Rollout(waves=[[d.name for d in w] for w in plan])
    for i, wave in enumerate(plan):
        if out.stopped_at is not None:
            out.results += [DeviceResult(d.name, "skipped", error="rollout stopped before this wave") for d in wave]
            continue
        report(f"wave {i + 1}/{len(plan)}: {', '.join(d.name for d in wave)}")
        rows = run_parallel(action, wave, parallel, cancel)
        out.results += rows
        failed = [r for r in rows if not r.ok]
        rate = len(failed) / len(rows)
        report(f"wave {i + 1}: {len(rows) - len(failed)}/{len(rows)} ok")
        if rate > max_failure_rate:
            out.stopped_at = i
            out.reason = (
                f"wave {i + 1} failed on {len(failed)}/{len(rows)} devices ({rate:.0%} > {max_failure_rate:.0%}): "
                + "; ".join(r.error for r in failed)
            )
            report(f"rollout stopped: {out.reason}")
    return out


def render_table(results: Sequence[DeviceResult], title: str = "") -> Any:
    """A rich Table: device, before → after, result, time, bytes sent (of a full transfer), reason."""
    from rich.table import Table

    table = Table(title=title or None)
    for col, justify in (("device", "left"), ("before", "left"), ("after", "left"), ("result", "left"),
                         ("time", "right"), ("sent", "right"), ("note", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in results:
        sent = f"{r.bytes_sent / 1e6:.2f} MB" + (f" of {r.bytes_total / 1e6:.2f}" if r.bytes_total else "")
        style = {"failed": "red", "problem": "red", "skipped": "yellow"}.get(r.status, "green")
        table.add_row(
            r.device, r.before or "-", r.after or "-", f"[{style}]{r.status}[/{style}]",
            f"{r.seconds:.1f} s", sent if r.bytes_total else "-", r.error or _health_note(r.details),
        )
    return table


def _health_note(details: dict[str, Any]) -> str:
    health = details.get("health")
    if not health:
        return ""
    note = f"health {'PASS' if health.get('passed') else 'FAIL'} in {health.get('seconds', 0):.1f} s"
    if health.get("latency_ms") is not None:
        note += f", {health['latency_ms']:.1f} ms/image"
    return note
