"""The local runner: :func:`export` (many images -> files + manifest, locked, resumable) and
:func:`explain_iter` (many images -> Explanations), arrangements of :mod:`camtool.export.stages`.
A run's state (the job, its plan, the recorder, the report) is :mod:`camtool.export.run`'s, which
the device runner and the Ray engine share.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any

from camtool.allocator import keep_freed_memory
from camtool.binding import ModelSpec, bind_method, with_layer_names
from camtool.explanation import Explanation, build_explanation
from camtool.export.device import (
    CUDA_BATCH_SIZE,
    Runner,
    choose_runner,
    device_model_options,
    run_device,
)
from camtool.export.ray_engine import Engine, check_engine
from camtool.export.run import ExportInterrupted, ExportJob, ExportReport, Plan, Recorder, plan_run
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
from camtool.image import check_crop
from camtool.inputs import ExportFailure, InputItem, collect_inputs
from camtool.journal import (
    InterruptFlag,
    interrupt_flag,
    locked_output,
)
from camtool.labels import ClassesArg
from camtool.methods.base import DEFAULT_METHOD, Method
from camtool.models.loading import DEFAULT_MODEL
from camtool.settings import (
    DEFAULT_BOX_THRESHOLD,
    DEFAULT_UPSAMPLE,
    check_box_threshold,
    check_positive_int,
    check_upsample,
)


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
    upsample: str = DEFAULT_UPSAMPLE,
    **model_options: Any,
) -> Iterator[Explanation | ExportFailure]:
    """Explain many images lazily: yield an :class:`Explanation` (or :class:`ExportFailure`) per
    input, as batches finish (not in input order; ``Explanation.source`` names the input).

    Takes the inputs of :func:`export` and the options of :func:`camtool.explain`.
    """
    keep_freed_memory()
    check_box_threshold(box_threshold)
    upsample = check_upsample(upsample)
    check_positive_int(batch_size, "batch_size")
    check_positive_int(maps, "maps")
    check_positive_int(top_k, "top_k")
    bound = bind_method(model, method, classes, device=device, **model_options)
    loaded = bound.model
    check_crop(loaded.preprocessing, crop)  # once, not per image
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
                upsample,
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
        model: as for :func:`camtool.explain`.
        method: as for :func:`camtool.explain`; ``model_options`` (weights, labels, dtype;
            layer, classifier for the method) as there too.
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
    check_positive_int(maps, "maps")
    ray = check_engine(engine, ray_address, ray_actors)
    out = Path(out_dir)
    with locked_output(out):
        job = ExportJob(
            inputs, out, model, method, classes, maps, crop, options, resume, device, batch_size,
            workers, decoder, writers, progress, with_layer_names(model, model_options), started,
            ray, runner,
        )  # fmt: skip
        return _export_locked(job)


def _export_locked(job: ExportJob) -> ExportReport:
    """:func:`export`, once the output folder's lock is held."""
    ray, out, options, maps, crop = job.ray, job.out, job.options, job.maps, job.crop
    if ray is None:
        job = replace(
            job, model_options=device_model_options(job.runner, job.device, job.model_options)
        )
    plan = plan_run(job)
    on_device = ray is None and choose_runner(job.runner, plan.bound.model.device) == "device"
    if on_device and job.batch_size is None and plan.bound.model.device.type == "cuda":
        plan.batch_size = CUDA_BATCH_SIZE
    recorder = Recorder.start(plan, out, job.resume, job.progress)
    ran_on, engine = str(plan.bound.model.device), {"engine": "local"}
    stopped: BaseException | None = None
    with interrupt_flag() as interrupted:
        try:
            if ray is not None:
                from camtool.export.ray_engine import run_on_ray

                ran_on, engine = run_on_ray(
                    plan, recorder, out, options, maps, crop, interrupted, ray,
                    (job.model, job.method, job.classes, job.device, job.model_options),
                    job.batch_size,
                )  # fmt: skip
            elif on_device:
                threads = default_workers() if job.workers is None else job.workers
                run_device(
                    plan, out, options, maps, crop, threads, job.writers, recorder, interrupted
                )
            else:
                _run_local(plan, recorder, out, options, maps, crop, job.workers, job.decoder,
                           job.writers, interrupted)  # fmt: skip
        except Exception as exc:
            stopped = exc
        except BaseException:  # a second Ctrl-C: stop at once (every line written is whole)
            recorder.manifest.close()
            raise
    report = recorder.close(plan, out, job.started, bool(interrupted), ran_on, engine, stopped)
    if stopped is not None:
        raise stopped
    if interrupted:
        raise ExportInterrupted(report)
    return report


def _run_local(
    plan: Plan,
    recorder: Recorder,
    out: Path,
    options: ExportOptions,
    maps: int,
    crop: bool,
    workers: int | None,
    decoder: Decoder,
    writers: int | None,
    interrupted: InterruptFlag,
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
