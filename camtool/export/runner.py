"""The local runner: :func:`export` (many images -> files + manifest, locked, resumable) and
:func:`explain_iter` (many images -> Explanations), arrangements of :mod:`camtool.export.stages`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from camtool._version import __version__
from camtool.allocator import keep_freed_memory
from camtool.binding import BoundMethod, ModelSpec, bind_method
from camtool.errors import (
    EXIT_INTERRUPTED,
    CamtoolError,
    InvalidArgumentError,
    OutputWriteError,
    run_exit_code,
)
from camtool.explanation import Explanation, build_explanation
from camtool.export.device import (
    CUDA_BATCH_SIZE,
    Runner,
    choose_runner,
    device_model_options,
    run_device,
)
from camtool.export.inputs import ExportFailure, InputItem, collect_inputs
from camtool.export.manifest import (
    MANIFEST,
    SUMMARY,
    ManifestWriter,
    check_same_settings,
    earlier_manifest,
    locked_output,
    remove_unfinished,
    restore_stems,
    split_resumed,
)
from camtool.export.ray_engine import Engine, RayOptions, check_engine
from camtool.export.stages import (
    Decoder,
    ExportOptions,
    Written,
    check_options,
    default_workers,
    explain_stream,
    render_and_write,
    single_threaded_opencv,
)
from camtool.io.files import open_atomic
from camtool.labels import ClassesArg
from camtool.methods.base import DEFAULT_METHOD, Method
from camtool.models.loading import DEFAULT_MODEL, LoadedModel
from camtool.progress import ProgressBar
from camtool.settings import DEFAULT_BOX_THRESHOLD, check_box_threshold, check_positive_int


def explain_iter(
    inputs: Sequence[str | os.PathLike[str]],
    model: ModelSpec = DEFAULT_MODEL,
    *,
    method: str | Method = DEFAULT_METHOD,
    classes: ClassesArg = None,
    maps: int = 1,
    top_k: int = 5,
    crop: bool = False,
    device: str | None = "auto",
    batch_size: int = 32,
    workers: int | None = None,
    box_threshold: float = DEFAULT_BOX_THRESHOLD,
    **model_options: Any,
) -> Iterator[Explanation | ExportFailure]:
    """Explain many images lazily: yield an :class:`Explanation` (or :class:`ExportFailure`) per
    input, as batches finish (not in input order; ``Explanation.source`` names the input).

    Takes the inputs of :func:`export` and the options of :func:`camtool.explain`.
    """
    keep_freed_memory()
    check_box_threshold(box_threshold)
    check_positive_int(batch_size, "batch_size")
    bound = bind_method(model, method, classes, device=device, **model_options)
    loaded = bound.model
    items, failures = collect_inputs(inputs)
    yield from failures
    workers = default_workers() if workers is None else workers
    for result in explain_stream(items, bound, maps, crop, batch_size, workers):
        source = str(items[result.index].path)
        if result.error is not None or result.out is None:
            yield ExportFailure(source, result.error or "unknown error")
        else:
            assert result.image is not None and result.region is not None
            yield build_explanation(
                loaded,
                result.out,
                result.row,
                source,
                result.image,
                result.region,
                top_k,
                box_threshold,
            )


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


def export(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    model: ModelSpec = DEFAULT_MODEL,
    *,
    method: str | Method = DEFAULT_METHOD,
    classes: ClassesArg = None,
    maps: int = 1,
    crop: bool = False,
    options: ExportOptions | None = None,
    resume: bool = False,
    device: str | None = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    decoder: Decoder = "threads",
    writers: int | None = None,
    progress: bool = False,
    runner: Runner = "auto",
    engine: Engine = "local",
    ray_address: str | None = None,
    ray_actors: int | None = None,
    **model_options: Any,
) -> ExportReport:
    """Explain every input image and write the results under ``out_dir``.

    For every input, ``out_dir`` mirrors its relative path: ``<stem>_<method>_<index>_<class>.<fmt>``
    per explained class (``_cam_``, ``_gradcam_``, ...; and, on request, its heatmap and raw maps,
    named as :mod:`camtool.naming` says: ``<stem>_heatmap_<index>_<class>.png`` and
    ``<stem>_cams.npy|npz`` for CAM). ``manifest.jsonl`` gets one line per input as it finishes (status,
    top-k predictions, explained classes with boxes, outputs, model and head, or the failure's
    reason) and ``summary.json`` the totals at the end.

    Args:
        inputs: files, folders, globs and ``@list.txt`` files (see :func:`collect_inputs`).
        out_dir: the output folder (created).
        model, method: as for :func:`camtool.explain`; ``model_options`` (weights, labels,
            dtype; layer, classifier for the method) as there.
        classes: fixed classes to explain (names or indices); default: each image's top ``maps``.
        crop: centre-crop instead of using the whole image.
        options: rendering and file options (:class:`ExportOptions`).
        resume: skip inputs the manifest already lists (done or failed) whose outputs exist;
            inputs are matched by resolved path, however they are spelled.
        batch_size: images per forward pass (default: 16 on the CPU, 64 on a GPU); workers: decoding workers (default: CPUs - 1, at
            most 8); decoder: ``"threads"`` or ``"processes"`` (a DataLoader); writers: threads
            that render and write (default: 2).
        progress: show a rich progress bar (images/s, ETA, failures).
        runner: ``"local"`` (decode and render on CPU threads), ``"device"`` (decode, render
            and box on the model's device, see :mod:`camtool.export.device`; on CUDA its
            defaults are bfloat16, 256 images per batch and one encoding thread per CPU but
            two) or ``"auto"`` (the device runner when the model runs on a CUDA GPU). The Ray
            engine's actors use the local runner's stages.
        engine: ``"local"`` (this process's threads) or ``"ray"``: decoding, explaining and
            rendering run in a pool of Ray actors (camtool's ``ray`` extra); this process
            lists the inputs, renames the finished files into place and writes the manifest.
        ray_address: the Ray cluster to use (``"auto"``, ``"ray://host:10001"``, ``host:6379``);
            None: the cluster this process is connected to, else ``RAY_ADDRESS``, else the one
            ``ray start`` last started here, else a new local one (see :class:`RayOptions`).
        ray_actors: actors in the pool (default: one per GPU of the cluster, or one per CPU
            when it has no GPUs).

    The output folder is locked for the run (another export into it fails with
    :class:`~camtool.errors.OutputBusyError`). Before the run, files that a killed earlier run
    left unfinished (temporary files, files written but not yet in the manifest) are removed.

    Raises:
        OutputWriteError: the output folder cannot be written (the run stops; the manifest keeps
            every finished image). ExportInterrupted: Ctrl-C (the same guarantee).
        OutputBusyError: another export is writing into ``out_dir``.
        InvalidArgumentError: every input lies inside ``out_dir`` (nothing to export).
        ManifestError: resuming from a manifest with a line camtool cannot read.
    """
    started = time.perf_counter()
    keep_freed_memory()
    options = check_options(options or ExportOptions())
    if batch_size is not None:
        check_positive_int(batch_size, "batch_size")
    ray = check_engine(engine, ray_address, ray_actors)
    out = Path(out_dir)
    with locked_output(out):
        return _export_locked(
            inputs, out, model, method, classes, maps, crop, options, resume, device, batch_size,
            workers, decoder, writers, progress, model_options, started, ray, runner,
        )  # fmt: skip


@dataclass
class _Plan:
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


def _plan(
    inputs: Sequence[str | os.PathLike[str]],
    out: Path,
    model: ModelSpec,
    method: str | Method,
    classes: ClassesArg,
    maps: int,
    crop: bool,
    options: ExportOptions,
    resume: bool,
    device: str | None,
    batch_size: int | None,
    model_options: dict[str, Any],
) -> _Plan:
    """Bind the method, list the inputs, check a resumed run's settings, and clean up what a
    killed earlier run left (the output folder's lock is held)."""
    loading = time.perf_counter()
    bound = bind_method(model, method, classes, device=device, **model_options)
    load_seconds = time.perf_counter() - loading
    loaded = bound.model
    excluded: list[Path] = []
    items, failures = collect_inputs(inputs, exclude=out, excluded=excluded)
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
        "classes": bound.classes, "maps": maps, "crop": crop,
        **{k: (str(v) if v is not None else None) for k, v in sorted(model_options.items())},
        **({"dtype": str(loaded.dtype).removeprefix("torch.")} if "dtype" in model_options else {}),
        **{k: v for k, v in asdict(options).items() if k != "quality"},
    }  # fmt: skip
    earlier = earlier_manifest(out / MANIFEST, resume)
    resumed = earlier if resume else None
    previous, runs = (resumed.by_path, resumed.runs) if resumed else ({}, [])
    if runs:
        check_same_settings(out / MANIFEST, runs[-1].get("settings") or {}, settings)
    removed = remove_unfinished(out, earlier)
    items = restore_stems(items, previous)
    todo, carried = split_resumed(items, resumed)
    size = batch_size or (16 if loaded.device.type == "cpu" else 64)
    return _Plan(
        bound, items, todo, carried, failures, excluded, settings, bool(runs), removed, size,
        load_seconds,
    )  # fmt: skip


class _Recorder:
    """The one place an image's outcome is recorded: its manifest lines (announced files, then
    done or failed) and the progress bar. Every finished image is recorded before a file-system
    error stops the run. :meth:`start` opens a run, :meth:`close` ends it (report and summary)
    whatever engine ran the images in between."""

    def __init__(self, manifest: ManifestWriter, bar: ProgressBar | None) -> None:
        self.manifest, self.bar = manifest, bar
        self.failed: list[ExportFailure] = []
        self.exported = 0
        self.head = ""

    @classmethod
    def start(cls, plan: _Plan, out: Path, resume: bool, progress: bool) -> _Recorder:
        """Open the run: its manifest header, the progress bar, the inputs that failed already
        (when listed, and those a resumed run carries over)."""
        explainer = plan.bound.explainer
        manifest = ManifestWriter(out / MANIFEST, append=resume)
        head = explainer.describe()
        try:
            manifest.write({"type": "run", "camtool": __version__, "started": _now(), "resumed": plan.resumed,
                            "cwd": os.getcwd(), "settings": plan.settings, "method": explainer.method, "head": head,
                            "head_detail": explainer.as_dict(), "excluded": [str(p) for p in plan.excluded],
                            "removed": plan.removed})  # fmt: skip
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
        where = {"path": item.resolved} if item is not None else {}
        self.manifest.write(
            {"type": "image", "input": failure.input, **where, "status": "failed", "error": failure.error}
        )  # fmt: skip
        if self.bar:
            self.bar.advance(failed=len(self.failed))

    def announcer(self, item: InputItem) -> Callable[[list[Path]], None]:
        """The callback that announces an image's files before they are written."""

        def announce(paths: list[Path]) -> None:
            self.manifest.write({"type": "writing", "input": str(item.path), "path": item.resolved,
                                 "outputs": [str(p) for p in paths]})  # fmt: skip

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
            self.manifest.write({"type": "image", "input": str(item.path), "path": item.resolved, "status": "ok",
                                 "output_stem": str(item.stem), **details, "outputs": [str(p) for p in paths]})  # fmt: skip
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
        plan: _Plan,
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
        _write_summary(report, plan.bound.model, plan.settings, self.head, device, engine, reason)
        return report


def _export_locked(
    inputs: Sequence[str | os.PathLike[str]],
    out: Path,
    model: ModelSpec,
    method: str | Method,
    classes: ClassesArg,
    maps: int,
    crop: bool,
    options: ExportOptions,
    resume: bool,
    device: str | None,
    batch_size: int | None,
    workers: int | None,
    decoder: Decoder,
    writers: int | None,
    progress: bool,
    model_options: dict[str, Any],
    started: float,
    ray: RayOptions | None = None,
    runner: Runner = "auto",
) -> ExportReport:
    """:func:`export`, once the output folder's lock is held."""
    plan_device = "cpu" if ray is not None else device  # on Ray the driver only names things
    if ray is None:
        model_options = device_model_options(runner, device, model_options)
    plan = _plan(inputs, out, model, method, classes, maps, crop, options, resume, plan_device,
                 batch_size, model_options)  # fmt: skip
    on_device = ray is None and choose_runner(runner, plan.bound.model.device) == "device"
    if on_device and batch_size is None and plan.bound.model.device.type == "cuda":
        plan.batch_size = CUDA_BATCH_SIZE
    recorder = _Recorder.start(plan, out, resume, progress)
    ran_on, engine = str(plan.bound.model.device), {"engine": "local"}
    stopped: BaseException | None = None
    with _interrupt_flag() as interrupted:
        try:
            if ray is not None:
                from camtool.export.ray_engine import run_on_ray

                ran_on, engine = run_on_ray(
                    plan, recorder, out, options, maps, crop, interrupted, ray,
                    (model, method, classes, device, model_options), batch_size,
                )  # fmt: skip
            elif on_device:
                threads = default_workers() if workers is None else workers
                run_device(plan, out, options, maps, crop, threads, writers, recorder, interrupted)
            else:
                _run_local(plan, recorder, out, options, maps, crop, workers, decoder, writers,
                           interrupted)  # fmt: skip
        except Exception as exc:
            stopped = exc
        except BaseException:  # a second Ctrl-C: stop at once (every line written is whole)
            recorder.manifest.close()
            raise
    report = recorder.close(plan, out, started, bool(interrupted), ran_on, engine, stopped)
    if stopped is not None:
        raise stopped
    if interrupted:
        raise ExportInterrupted(report)
    return report


def _run_local(
    plan: _Plan,
    recorder: _Recorder,
    out: Path,
    options: ExportOptions,
    maps: int,
    crop: bool,
    workers: int | None,
    decoder: Decoder,
    writers: int | None,
    interrupted: _Flag,
) -> None:
    """The local engine: decoding workers, one explaining thread, writer threads."""
    todo = plan.todo
    workers = default_workers() if workers is None else workers
    opencv_threads = single_threaded_opencv() if decoder == "threads" else None
    writer_pool = ThreadPoolExecutor(max_workers=writers or 2, thread_name_prefix="camtool-write")
    inflight: dict[Future[Written], InputItem] = {}
    stream = explain_stream(todo, plan.bound, maps, crop, plan.batch_size, workers, decoder)
    loaded = plan.bound.model
    try:
        for result in stream:
            if interrupted:
                break
            item = todo[result.index]
            if result.error is not None or result.out is None:
                recorder.failure(
                    ExportFailure(str(item.path), result.error or "unknown error"), item
                )
                continue
            job = writer_pool.submit(
                render_and_write, loaded, result, item, out, options, recorder.announcer(item)
            )
            inflight[job] = item
            if len(inflight) >= 2 * plan.batch_size:
                recorder.finish(wait(inflight, return_when=FIRST_COMPLETED).done, inflight)
        recorder.finish(wait(inflight).done, inflight)
    except BaseException as exc:
        recorder.drain(inflight)
        # A DataLoader worker killed by the same Ctrl-C surfaces as a RuntimeError.
        if not (interrupted and isinstance(exc, (KeyboardInterrupt, RuntimeError))):
            raise
    finally:
        stream.close()  # stops the decoding workers now, not at garbage collection
        writer_pool.shutdown(wait=True, cancel_futures=True)
        if opencv_threads is not None:
            from camtool.io.opencv import cv2

            cv2.setNumThreads(opencv_threads)


class _Flag:
    """A boolean set from a signal handler."""

    def __init__(self) -> None:
        self.set = False

    def __bool__(self) -> bool:
        return self.set


@contextmanager
def _interrupt_flag() -> Iterator[_Flag]:
    """Turn Ctrl-C into a flag the export loop checks between images, so that no image is ever
    left between 'files written' and 'manifest line written'. A second Ctrl-C stops at once."""
    flag = _Flag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.set:
            raise KeyboardInterrupt
        flag.set = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_summary(
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
        "finished": _now(), "model": model.name, "method": settings["method"], "head": head,
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
