"""A rich progress bar for long runs: items per second, ETA and a failure count."""

from __future__ import annotations

import time


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
