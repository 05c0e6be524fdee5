"""Progress for long host work (build steps, calibration, evaluation).

On a terminal: a rich progress display on stderr, one spinner per running
step, a bar with counts when the step goes through items, and one ``✓`` line
per finished step. When stderr is not a terminal (logs, CI): the ``✓`` lines
only. With a ``report`` callback (tests, API users): no output, one call per
finished step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["Reporter", "Steps", "Step"]

Reporter = Callable[[str], None]
T = TypeVar("T")


class Step:
    """A running step: set ``detail`` for its closing line; ``track`` items for a bar."""

    def __init__(self, progress: Any, task: Any) -> None:
        self.detail = ""
        self._progress = progress
        self._task = task

    def track(self, items: Iterable[T], total: int, what: str) -> Iterator[T]:
        """Yield ``items``, advancing the step's bar (``total`` items called ``what``)."""
        self.start(total, what)
        for item in items:
            yield item
            self.advance()

    def start(self, total: int, what: str) -> None:
        """Show a bar of ``total`` items called ``what`` (then call :meth:`advance` per item)."""
        if self._progress is not None:
            self._progress.update(self._task, total=total, completed=0, what=what)

    def say(self, what: str) -> None:
        """Show what the step is doing now (a long step without a count: a search's current trial)."""
        if self._progress is not None:
            self._progress.update(self._task, what=what)

    def advance(self) -> None:
        """One more item done."""
        if self._progress is not None:
            self._progress.advance(self._task)


class Steps:
    """Context for a sequence of steps; use ``with Steps(report) as steps: with steps.step(...)``."""

    def __init__(self, report: Reporter | None) -> None:
        self.report = report
        self._progress: Any = None
        self._console: Any = None

    def __enter__(self) -> Steps:
        if self.report is None:
            from rich.console import Console

            self._console = Console(stderr=True, soft_wrap=True)
        if self._console is not None and self._console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[what]}"),
                TimeElapsedColumn(),
                console=self._console,
                transient=True,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    @contextmanager
    def step(self, title: str) -> Iterator[Step]:
        start = time.perf_counter()
        task = self._progress.add_task(title, total=None, what="") if self._progress is not None else None
        step = Step(self._progress, task)
        try:
            yield step
        finally:
            if task is not None:
                self._progress.remove_task(task)
        line = f"{title} ({time.perf_counter() - start:.1f} s) {step.detail}".rstrip()
        if self._console is not None:
            from rich.markup import escape

            self._console.print(f"[green]✓[/green] {escape(line)}", highlight=False)
        elif self.report is not None:
            self.report(line)
