"""The library's progress (:mod:`camtool.progress`) on the terminal: a rich bar per long computation,
in its own unit, and its cost line when it will take more than a few seconds."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from camtool.cli.console import console
from camtool.progress import ProgressCallback, WorkBars, reporting


@contextmanager
def shown_progress(show: bool = True) -> Iterator[ProgressCallback | None]:
    """Inside the block, every long computation of the library draws its bar on the console
    (and prints its cost line first when it is estimated to take more than
    :data:`camtool.progress.COST_LINE_SECONDS`); yields the callback (None when not ``show``:
    nothing is drawn)."""
    if not show:
        with reporting(None):
            yield None
        return
    with WorkBars(console) as bars, reporting(bars):
        yield bars
