"""Progress of long computations: the library's seam, and a rich bar for long runs.

The seam: a computation that runs many forward passes (Score-CAM's masked inputs, the
perturbation steps of ``camtool.evaluate``) says what it is about to do as a :class:`Work` (a
name, a unit, a total) and how far it got, by calling the current :data:`ProgressCallback` with
``(work, done)``. Nobody listening costs nothing and prints nothing. A caller listens by passing
its own callback to :func:`camtool.evaluate` (``progress=``) or, for anything else
(:func:`camtool.explain`, an explainer called directly), inside :func:`reporting`::

    def show(work, done):
        print(f"{work.name}: {done}/{work.total} {work.unit}")

    with camtool.progress.reporting(show):
        camtool.explain("cat.jpg", method="scorecam")

The first call of a work has ``done == 0``; ``done`` only grows; the last call has ``done ==
work.total``. The same work may be sent again with another total once the exact count is known
(Score-CAM shares one masked input between channels with the same grid), and with ``seconds``,
an estimate of the whole work's wall time, once its rate has been measured.

:class:`WorkBars` draws works as rich progress bars (what ``progress=True`` and the command line
show); :class:`ProgressBar` counts the items of other long runs (export, video, gallery, fit).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from itertools import count
from typing import Any

from camtool.errors import InvalidArgumentError


@dataclass(frozen=True)
class Work:
    """What a long computation is about to do.

    Attributes:
        name: who does it, as a person reads it (``"Score-CAM"``, ``"eval"``).
        unit: what is counted, plural (``"forward passes"``: one image through the network).
        total: how many units in all (an estimate until the work is done).
        per_image: units per image (None when the work has no images).
        images: the images the work covers.
        seconds: the estimated wall time of the whole work (None until a rate was measured).
        detail: a short note that changes as the work goes on (``"3/4 images, 0 failed"``).
        serial: tells runs of the same work apart (a new :class:`Meter` gets a new number).
    """

    name: str
    unit: str
    total: int
    per_image: int | None = None
    images: int = 0
    seconds: float | None = None
    detail: str = ""
    serial: int = 0


#: ``callback(work, done)``: ``done`` of ``work.total`` units are finished (see the module).
ProgressCallback = Callable[[Work, int], None]

_CURRENT: ContextVar[ProgressCallback | None] = ContextVar("camtool_progress", default=None)


@contextmanager
def reporting(callback: ProgressCallback | None) -> Iterator[None]:
    """Send the progress of the long computations inside the block to ``callback`` (None: to
    nobody, also when an outer block listens).

    Raises:
        InvalidArgumentError: a ``callback`` that is neither callable nor None (on entry, not at
            the first report).
    """
    if callback is not None and not callable(callback):
        raise InvalidArgumentError(
            "callback", f"expected a callable(work, done) or None, got {type(callback).__name__}"
        )
    token = _CURRENT.set(callback)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current() -> ProgressCallback | None:
    """The callback that listens now (None: nobody)."""
    return _CURRENT.get()


_SERIALS = count(1)

#: How long a work runs after its first step before its rate is measured and its wall time
#: estimated.
ESTIMATE_AFTER_SECONDS = 0.5


class Meter:
    """Counts the units of one :class:`Work` and tells the callback (if any) as they finish.

    A computation makes one per work: ``Meter(Work(...))`` (the current callback by default)
    sends ``done == 0``; :meth:`advance` sends each step. The work's ``seconds``, the wall time
    estimated from the rate after the first step, is set once: by the first step that ends
    :data:`ESTIMATE_AFTER_SECONDS` after the first one with 2% of the work (at least 8 units)
    done since, or by the last step. ``started``
    (default: now) is when the work began, before the meter was made.
    """

    def __init__(
        self, work: Work, callback: ProgressCallback | None = None, started: float | None = None
    ) -> None:
        self.callback = callback if callback is not None else current()
        self.work = replace(work, serial=next(_SERIALS))
        self.done = 0
        self.started = time.perf_counter() if started is None else started
        self._first: tuple[float, int] | None = None  # (clock, done) after the first step
        self._tell()

    def _estimate(self, now: bool) -> None:
        """Set the work's ``seconds`` once: the time so far plus the units left at the rate
        measured after the first step (which pays for warming up: the first pass through a
        network is slow), ``now`` or after :data:`ESTIMATE_AFTER_SECONDS`."""
        clock = time.perf_counter()
        if self._first is None:
            self._first = (clock, self.done)
            return
        first_clock, first_done = self._first
        if self.work.seconds is not None or self.done <= first_done:
            return
        enough = self.done - first_done >= max(8, self.work.total // 50)
        if now or (enough and clock - first_clock >= ESTIMATE_AFTER_SECONDS):
            rate = (clock - first_clock) / (self.done - first_done)
            left = rate * (self.work.total - self.done)
            self.work = replace(self.work, seconds=clock - self.started + left)

    def _tell(self) -> None:
        if self.callback is not None:
            self.callback(self.work, self.done)

    def advance(self, units: int = 1) -> None:
        """``units`` more units are finished (past the estimated total, the total grows)."""
        self.done += int(units)
        if self.done > self.work.total:
            self.work = replace(self.work, total=self.done)
        if units:
            self._estimate(self.done >= self.work.total)
        self._tell()

    def retotal(self, total: int) -> None:
        """A better estimate of the total (never below what is done): send the work again."""
        total = max(self.done, int(total))
        if total != self.work.total:
            seconds = self.work.seconds
            scaled = None if seconds is None else seconds * total / max(1, self.work.total)
            self.work = replace(self.work, total=total, seconds=scaled)
            self._tell()

    def note(self, detail: str) -> None:
        """Change the work's ``detail`` and send it again."""
        if detail != self.work.detail:
            self.work = replace(self.work, detail=detail)
            self._tell()

    def finish(self) -> None:
        """The work is done: its total is what was counted."""
        self.retotal(self.done)


def duration(seconds: float) -> str:
    """``"12 s"``, ``"3.5 min"``, ``"2.0 h"``: a wall time as a person reads it."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def cost_text(work: Work) -> str:
    """What ``work`` costs in one line: ``"Score-CAM: 1,281 forward passes per image, about
    9 s"`` (the images and the total when there are several images)."""
    if work.per_image is not None and work.images > 1:
        text = (
            f"{work.name}: {work.per_image:,} {work.unit} per image, "
            f"{work.total:,} for {work.images:,} images"
        )
    elif work.per_image is not None:
        text = f"{work.name}: {work.per_image:,} {work.unit} per image"
    else:
        text = f"{work.name}: {work.total:,} {work.unit}"
    return text if work.seconds is None else f"{text}, about {duration(work.seconds)}"


#: A work estimated to take longer than this many seconds gets its cost line (:class:`WorkBars`).
COST_LINE_SECONDS = 3.0


class WorkBars:
    """A :data:`ProgressCallback` that draws each piece of work as a rich progress bar, in its unit
    (``Score-CAM ━━━━ 412/1,281 passes 380 passes/s 0:00:01 ETA 0:00:02``), and prints the
    work's :func:`cost_text` once, above the bars, when its estimated wall time passes
    :data:`COST_LINE_SECONDS` (``cost_lines=False``: never). Runs of the same work (one per
    image) add up on one bar. As a context manager, it stops the bars' live display at the end.
    """

    def __init__(self, console: Any = None, cost_lines: bool = True) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=10), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), TextColumn("{task.fields[detail]}"),
            console=console,
        )  # fmt: skip
        self.cost_lines = cost_lines
        self.tasks: dict[str, dict[str, Any]] = {}
        self.started = False

    def __enter__(self) -> WorkBars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, work: Work, done: int) -> None:
        """Show that ``done`` of ``work.total`` units are finished."""
        state = self.tasks.get(work.name)
        if state is None:
            if not self.started:
                self.progress.start()
                self.started = True
            task = self.progress.add_task(work.name, total=work.total, rate="", detail="")
            state = self.tasks[work.name] = {
                "task": task, "serial": work.serial, "base_total": 0, "base_done": 0,
                "total": 0, "done": 0, "cost": False, "clock": time.perf_counter(),
            }  # fmt: skip
        elif work.serial != state["serial"]:  # the next run of the same work: add it on
            state["base_total"] += state["total"]
            state["base_done"] += state["done"]
            state["serial"] = work.serial
        state["total"], state["done"] = work.total, done
        completed = state["base_done"] + done
        elapsed = max(1e-9, time.perf_counter() - state["clock"])
        unit = work.unit.split()[-1]
        rate = f"{completed / elapsed:,.0f} {unit}/s" if completed else ""
        self.progress.update(
            state["task"], total=state["base_total"] + work.total, completed=completed,
            rate=rate, detail=work.detail,
        )  # fmt: skip
        late = work.seconds is not None and work.seconds > COST_LINE_SECONDS
        if self.cost_lines and late and not state["cost"]:
            state["cost"] = True
            self.progress.console.print(cost_text(work), markup=False, highlight=False)

    def close(self) -> None:
        """Leave the finished bars on the terminal."""
        if self.started:
            self.progress.stop()
            self.started = False


class ProgressBar:
    """``label ━━━━ 12/40 35.2 img/s 0:00:01 ETA 0:00:03 0 failed`` on the terminal."""

    def __init__(
        self, label: str, total: int | None, unit: str, done: int = 0, failed: int = 0
    ) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
            TextColumn(f"{{task.fields[rate]}} {unit}/s"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), TextColumn("[red]{task.fields[failed]} failed"),
        )  # fmt: skip
        self.started = time.perf_counter()
        self.first = done
        self.task = self.progress.add_task(
            label, total=total, completed=done, rate="-", failed=failed
        )
        self.progress.start()

    def advance(self, failed: int = 0) -> None:
        """One more item done (``failed``: the failure count so far)."""
        task = self.progress.tasks[0]
        rate = (task.completed + 1 - self.first) / max(1e-9, time.perf_counter() - self.started)
        self.progress.update(self.task, advance=1, rate=f"{rate:.1f}", failed=failed)

    def stop(self) -> None:
        """Leave the finished bar on the terminal."""
        self.progress.stop()
