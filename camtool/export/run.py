"""An export run's state, shared by the local runner, the device runner and the Ray engine: the job
(:class:`ExportJob`, what :func:`camtool.export.export` was asked), its :class:`Plan` (decided
before any image is read), the :class:`Recorder` (the one place an image's outcome is written
down) and the :class:`ExportReport`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from camtool._version import __version__
from camtool.binding import BoundMethod, ModelSpec, bind_method
from camtool.errors import (
    EXIT_INTERRUPTED,
    CamtoolError,
    InvalidArgumentError,
    OutputWriteError,
    run_exit_code,
)
from camtool.export.manifest import MANIFEST, SUMMARY, remove_unfinished, restore_stems
from camtool.export.stages import (
    ExportOptions,
    Written,
)
from camtool.image import check_crop
from camtool.inputs import ExportFailure, InputItem, collect_inputs
from camtool.io.files import open_atomic
from camtool.journal import (
    JournalWriter,
    check_same_settings,
    earlier_journal,
    failed_record,
    image_record,
    now,
    run_record,
    settings_before,
    split_resumed,
    writing_record,
)
from camtool.labels import ClassesArg
from camtool.methods.base import Method
from camtool.models.loading import LoadedModel
from camtool.progress import ProgressBar

if TYPE_CHECKING:
    from camtool.export.device import Runner
    from camtool.export.ray_engine import RayOptions
    from camtool.export.stages import Decoder


@dataclass(frozen=True)
class ExportReport:
    """What an export did.

    Attributes:
        out_dir, manifest, summary: where the outputs, the JSON Lines manifest and the summary are.
        total: inputs found; exported: explained and written in this run; failed: inputs that
            could not be explained (this run and, with resume, earlier ones); skipped: inputs a
            resumed run found done already.
        seconds, images_per_second: wall time of this run and its throughput.
        load_seconds: the part of ``seconds`` spent loading the model and binding the method.
        failures: ``(input, reason)`` of every failed input.
        interrupted: the run was stopped (Ctrl-C) before it finished.
        excluded: inputs left out because they lie inside the output folder (never read as
            input).
        removed: unfinished files a killed earlier run had left, removed before this run.
    """

    out_dir: Path
    manifest: Path
    summary: Path
    total: int
    exported: int
    failed: int
    skipped: int
    seconds: float
    images_per_second: float
    failures: tuple[ExportFailure, ...] = field(default=())
    interrupted: bool = False
    excluded: tuple[str, ...] = field(default=())
    removed: int = 0
    load_seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 when every input was exported, 3 when some failed, 130 when interrupted."""
        return run_exit_code(self.failed, self.interrupted)


class ExportInterrupted(CamtoolError):
    """Ctrl-C stopped an export; everything finished so far is on disk and in the manifest."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, report: ExportReport) -> None:
        self.report = report
        done = report.exported + report.skipped
        super().__init__(
            report.out_dir,
            f"interrupted after {done} of {report.total} images; run the same command with "
            "--resume to finish",
        )


@dataclass(frozen=True)
class ExportJob:
    """One export as :func:`camtool.export.export` was asked for it (its options checked): the
    inputs and the output folder, the model, method and classes, how to render and write, and how
    to run (device, batch size, decoding workers and writers, the runner or the Ray engine).
    ``started`` is when the call began (``time.perf_counter``)."""

    inputs: Sequence[str | os.PathLike[str]]
    out: Path
    model: ModelSpec
    method: str | Method
    classes: ClassesArg
    maps: int
    crop: bool
    options: ExportOptions
    resume: bool
    device: str | None
    batch_size: int | None
    workers: int | None
    decoder: Decoder
    writers: int | None
    progress: bool
    model_options: dict[str, Any]
    started: float
    ray: RayOptions | None = None
    runner: Runner = "auto"


@dataclass
class Plan:
    """What an export run does, decided before any image is read: the bound method, the inputs
    (all, and those still to do), what a resumed run carries over, and the run's settings."""

    bound: BoundMethod
    items: list[InputItem]
    todo: list[InputItem]
    carried: list[dict[str, Any]]
    failures: list[ExportFailure]
    excluded: list[Path]
    settings: dict[str, Any]
    resumed: bool
    removed: int
    batch_size: int
    load_seconds: float


def plan_run(job: ExportJob) -> Plan:
    """Bind the method, list the inputs, check a resumed run's settings, and clean up what a
    killed earlier run left (the output folder's lock is held)."""
    out, options, model_options = job.out, job.options, job.model_options
    device = "cpu" if job.ray is not None else job.device  # on Ray the driver only names things
    loading = time.perf_counter()
    bound = bind_method(job.model, job.method, job.classes, device=device, **model_options)
    load_seconds = time.perf_counter() - loading
    loaded = bound.model
    check_crop(loaded.preprocessing, job.crop)  # once, before any image is read
    excluded: list[Path] = []
    items, failures = collect_inputs(job.inputs, exclude=out, excluded=excluded)
    if excluded and not items:
        subject = excluded[0] if len(excluded) == 1 else out
        what = "it lies" if len(excluded) == 1 else f"all {len(excluded)} inputs lie"
        raise InvalidArgumentError(
            subject,
            f"nothing to export: {what} inside the output folder {out}, which is never read "
            "as input",
        )
    settings = {
        "model": loaded.name, "weights": loaded.weights, "method": bound.explainer.method,
        "classes": bound.classes, "maps": job.maps, "crop": job.crop,
        **{k: (str(v) if v is not None else None) for k, v in sorted(model_options.items())},
        **({"dtype": str(loaded.dtype).removeprefix("torch.")} if "dtype" in model_options else {}),
        **{k: v for k, v in asdict(options).items() if k != "quality"},
    }  # fmt: skip
    earlier = earlier_journal(out / MANIFEST, job.resume)
    resumed = earlier if job.resume else None
    previous, runs = (resumed.by_path, resumed.runs) if resumed else ({}, [])
    if runs:
        check_same_settings(out / MANIFEST, settings_before(runs[-1]), settings)
    removed = remove_unfinished(out, earlier)
    items = restore_stems(items, previous)
    todo, carried = split_resumed(items, resumed)
    size = job.batch_size or (16 if loaded.device.type == "cpu" else 64)
    return Plan(
        bound, items, todo, carried, failures, excluded, settings, bool(runs), removed, size,
        load_seconds,
    )  # fmt: skip


class Recorder:
    """The one place an image's outcome is recorded: its manifest lines (announced files, then
    done or failed) and the progress bar. Every finished image is recorded before a file-system
    error stops the run. :meth:`start` opens a run, :meth:`close` ends it (report and summary)
    whatever engine ran the images in between."""

    def __init__(self, manifest: JournalWriter, bar: ProgressBar | None) -> None:
        self.manifest, self.bar = manifest, bar
        self.failed: list[ExportFailure] = []
        self.exported = 0
        self.head = ""

    @classmethod
    def start(cls, plan: Plan, out: Path, resume: bool, progress: bool) -> Recorder:
        """Open the run: its manifest header, the progress bar, the inputs that failed already
        (when listed, and those a resumed run carries over)."""
        explainer = plan.bound.explainer
        manifest = JournalWriter(out / MANIFEST, append=resume)
        head = explainer.describe()
        try:
            manifest.write(
                run_record(
                    plan.settings, plan.resumed, method=explainer.method, made_from=head, head=head,
                    head_detail=explainer.as_dict(), excluded=[str(p) for p in plan.excluded],
                    removed=plan.removed,
                )
            )  # fmt: skip
            total, todo = len(plan.items), plan.todo
            done_before = len(plan.carried) + len(plan.failures)
            bar = (
                ProgressBar("export", total, "img", total - len(todo), done_before)
                if progress
                else None
            )
            recorder = cls(manifest, bar)
            recorder.head = head
            recorder.failed += [ExportFailure(r["input"], r["error"]) for r in plan.carried]
            for failure in plan.failures:
                recorder.failure(failure)
        except BaseException:
            manifest.close()
            raise
        return recorder

    def failure(self, failure: ExportFailure, item: InputItem | None = None) -> None:
        """Record an input that could not be explained or written."""
        self.failed.append(failure)
        path = item.resolved if item is not None else None
        self.manifest.write(failed_record(failure.input, failure.error, path))
        if self.bar:
            self.bar.advance(failed=len(self.failed))

    def announcer(self, item: InputItem) -> Callable[[list[Path]], None]:
        """The callback that announces an image's files before they are written."""

        def announce(paths: list[Path]) -> None:
            self.manifest.write(writing_record(str(item.path), item.resolved, paths))

        return announce

    def finish(
        self, done: set[Future[Written]], inflight: dict[Future[Written], InputItem]
    ) -> None:
        """Record every finished image; then raise the first file-system error among them."""
        error: OutputWriteError | None = None
        for future in done:
            item = inflight.pop(future)
            try:
                ex, paths, reason = future.result()
                if ex is None:
                    self.failure(ExportFailure(str(item.path), reason or "unknown error"), item)
                    continue
                self.done(item, ex.to_dict(), paths)
            except OutputWriteError as exc:
                error = error or exc
                continue
        if error is not None:
            raise error

    def done(self, item: InputItem, details: dict[str, Any], paths: list[Path]) -> None:
        """Record an image whose files are in place (``details``: its
        :meth:`Explanation.to_dict`); if the manifest cannot take the line, remove the files."""
        try:
            self.manifest.write(
                image_record(
                    str(item.path), item.resolved, {"output_stem": str(item.stem), **details}, paths
                )
            )
        except OutputWriteError:
            for path in paths:  # files the manifest cannot list must not stay
                path.unlink(missing_ok=True)
            raise
        self.exported += 1
        if self.bar:
            self.bar.advance(failed=len(self.failed))

    def drain(self, inflight: dict[Future[Written], InputItem]) -> None:
        """Let the writes in flight complete and record them (a write error is dropped here)."""
        with contextlib.suppress(CamtoolError, OSError):
            self.finish(wait(inflight).done, inflight)

    def close(
        self,
        plan: Plan,
        out: Path,
        started: float,
        interrupted: bool,
        device: str,
        engine: dict[str, Any],
        stopped: BaseException | None = None,
    ) -> ExportReport:
        """End the run: close the manifest and the bar, write ``summary.json`` (also when the run
        stopped on an error: ``stopped`` says why) and return the report."""
        self.manifest.close()
        if self.bar:
            self.bar.stop()
        failed = list(plan.failures) + [f for f in self.failed if f not in plan.failures]
        seconds = time.perf_counter() - started
        total, exported = len(plan.items), self.exported
        report = ExportReport(
            out, out / MANIFEST, out / SUMMARY, total, exported, len(failed),
            total - len(plan.todo) - len(plan.carried), seconds,
            exported / seconds if seconds else 0.0, tuple(failed), interrupted,
            tuple(str(p) for p in plan.excluded), plan.removed, plan.load_seconds,
        )  # fmt: skip
        reason = None if stopped is None else (str(stopped) or type(stopped).__name__)
        write_summary(report, plan.bound.model, plan.settings, self.head, device, engine, reason)
        return report


def write_summary(
    report: ExportReport,
    model: LoadedModel,
    settings: dict[str, Any],
    head: str,
    device: str,
    engine: dict[str, Any],
    stopped: str | None,
) -> None:
    summary = {
        "camtool": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "finished": now(), "model": model.name, "method": settings["method"], "made_from": head, "head": head,
        "device": device, **engine,
        "settings": settings, "total": report.total, "exported": report.exported,
        "failed": report.failed, "skipped": report.skipped, "seconds": round(report.seconds, 3),
        "load_seconds": round(report.load_seconds, 3),
        "images_per_second": round(report.images_per_second, 2), "interrupted": report.interrupted,
        "stopped": stopped,
        "failures": [asdict(f) for f in report.failures],
        "excluded": {"reason": "inside the output folder, which is never read as input",
                     "inputs": list(report.excluded)},
        "removed_unfinished": report.removed,
    }  # fmt: skip
    try:
        with open_atomic(report.summary) as handle:
            handle.write(json.dumps(summary, indent=2).encode("utf-8"))
    except OutputWriteError:
        pass  # the manifest already holds every result; a full disk must not hide that
