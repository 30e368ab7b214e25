"""``camtool.evaluate``: every chosen metric for every chosen method over a folder of images.

The driver behind ``camtool eval``. Images come as export takes them (files, folders, globs,
``@list.txt``); each is squeezed to one square network input (``size`` x ``size``, by default
the model's input size, no crop, so no annotated box is cut off) so that images batch; maps are
made at that size and ground-truth boxes are scaled by the same factors (``size / width``
horizontally, ``size / height`` vertically). A VOC or COCO file declares each image's size: an
image of another size fails (its boxes would land in the wrong place; the other images go on,
exit code 3), unless ``rescale_boxes=True`` scales its boxes to the real size (recorded as
``boxes_rescaled`` in the image's record). Each image is explained for its annotated class
when it has boxes (the first class its boxes name, with the boxes of that class), else for its
top-1 predicted class.

Per-image results go to ``OUT/results.jsonl`` as each batch finishes (whole lines, appended: the
machinery of the export manifest), so an interrupted run resumes with ``resume=True``; a resumed
run with other settings is refused. At the end :mod:`camtool.metrics.report` writes
``results.json``, ``results.csv``, the curve plots, the best and worst overlays and
``index.html``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from camtool.allocator import keep_freed_memory
from camtool.binding import ModelSpec, get_model
from camtool.errors import (
    EXIT_INTERRUPTED,
    CamtoolError,
    InvalidArgumentError,
    NotDecompositionError,
    run_exit_code,
)
from camtool.inputs import ExportFailure, InputItem, collect_inputs
from camtool.journal import (
    JournalWriter,
    check_same_settings,
    earlier_journal,
    failed_record,
    interrupt_flag,
    locked_output,
    run_record,
    settings_before,
    split_resumed,
)
from camtool.metrics.annotations import match_images, resolve_boxes
from camtool.metrics.box_files import read_annotations
from camtool.metrics.kept_maps import KeptMaps
from camtool.metrics.measuring import EvalRun, forward_passes_per_image, measured_batches
from camtool.metrics.summaries import Summary
from camtool.models.loading import DEFAULT_MODEL
from camtool.progress import Meter, ProgressCallback, Work, WorkBars, current, reporting
from camtool.settings import (
    DEFAULT_BOX_THRESHOLD,
    DEFAULT_UPSAMPLE,
    check_box_threshold,
    check_positive_int,
    check_upsample,
)

RESULTS = "results.jsonl"

#: The metrics ``evaluate`` knows, in report order. The last three need ground-truth boxes.
METRICS: tuple[str, ...] = (
    "deletion", "insertion", "road", "average_drop", "completeness",
    "pointing_game", "localization", "max_box_acc",
)  # fmt: skip
BOX_METRICS: tuple[str, ...] = ("pointing_game", "localization", "max_box_acc")

#: The methods ``evaluate`` runs when none are named.
DEFAULT_METHODS: tuple[str, ...] = ("cam",)

#: Default ROAD percentages for ``evaluate`` (the paper's 10%, 20%, ..., 90%).
ROAD_PERCENTAGES: tuple[float, ...] = tuple(p / 10 for p in range(1, 10))


@dataclass(frozen=True)
class EvalReport:
    """What an evaluation did and found.

    Attributes:
        out_dir: the report folder (None when nothing was written); files: the paths written
            (``results.json``, ``results.csv``, ``index.html``, plots, overlays).
        summaries: one :class:`Summary` per method and measure.
        records: the per-image results (the lines of ``results.jsonl``), done images only.
        total, evaluated, skipped, failed: inputs found; evaluated in this run; done already
            (resume); could not be evaluated (with ``failures``).
        settings: every protocol setting of the run (JSON-ready).
        seconds: wall time; interrupted: stopped by Ctrl-C.
        not_applicable: the metrics that did not apply to some methods, with those methods
            (``{"completeness": ("gradcam",)}``: Grad-CAM's maps decompose no logit).
    """

    out_dir: Path | None
    summaries: tuple[Summary, ...]
    records: tuple[dict[str, Any], ...]
    total: int
    evaluated: int
    skipped: int
    failed: int
    settings: dict[str, Any]
    seconds: float
    failures: tuple[ExportFailure, ...] = ()
    files: tuple[Path, ...] = ()
    interrupted: bool = False
    unmatched_boxes: tuple[str, ...] = ()
    not_applicable: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def rescaled(self) -> tuple[str, ...]:
        """The inputs whose boxes were scaled from the size their file declares to the image's
        (``rescale_boxes=True``)."""
        return tuple(r["input"] for r in self.records if r.get("boxes_rescaled"))

    @property
    def exit_code(self) -> int:
        """0 when every input was evaluated, 3 when some failed, 130 when interrupted."""
        return run_exit_code(self.failed, self.interrupted)

    def summary(self, method: str, measure: str) -> Summary:
        """The :class:`Summary` of one method and measure (KeyError if it was not measured)."""
        for s in self.summaries:
            if (s.method, s.measure) == (method, measure):
                return s
        raise KeyError((method, measure))


class EvalInterrupted(CamtoolError):
    """Ctrl-C stopped an evaluation; every finished image is in ``results.jsonl``."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, report: EvalReport) -> None:
        self.report = report
        done = report.evaluated + report.skipped
        super().__init__(
            report.out_dir,
            f"interrupted after {done} of {report.total} images; run the same command with "
            "--resume to finish",
        )


def check_metrics(metrics: Sequence[str] | None, with_boxes: bool) -> list[str]:
    """The metrics to run, in report order: all of :data:`METRICS` by default (without boxes, all
    but the box metrics).

    Raises:
        InvalidArgumentError: an unknown name; a box metric asked for without boxes.
    """
    if not metrics:
        return [m for m in METRICS if with_boxes or m not in BOX_METRICS]
    for name in metrics:
        if name not in METRICS:
            raise InvalidArgumentError(name, f"unknown metric; choose from {', '.join(METRICS)}")
        if name in BOX_METRICS and not with_boxes:
            raise InvalidArgumentError(
                name, "needs ground-truth boxes: give them with --boxes (VOC, COCO or CSV)"
            )
    return [m for m in METRICS if m in metrics]


def evaluate(
    images: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    methods: Sequence[str] = DEFAULT_METHODS,
    boxes: str | os.PathLike[str] | None = None,
    metrics: Sequence[str] | None = None,
    model: ModelSpec = DEFAULT_MODEL,
    *,
    size: int | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    steps: int | None = None,
    road_percentages: Sequence[float] = ROAD_PERCENTAGES,
    box_threshold: float = DEFAULT_BOX_THRESHOLD,
    batch_size: int = 8,
    device: str | None = "auto",
    progress: bool | ProgressCallback = False,
    report: bool = True,
    rescale_boxes: bool = False,
    upsample: str = DEFAULT_UPSAMPLE,
    **model_options: Any,
) -> EvalReport:
    """Measure how faithful (and, with boxes, how well localized) each method's maps are.

    Args:
        images: files, folders, globs, ``@list.txt`` (as :func:`camtool.export`).
        methods: method names (``cam``, ``gradcam``, ...), each bound to the model; a string
            is one name.
        boxes: ground-truth boxes, a Pascal VOC XML file or folder, a COCO JSON or a CSV
            (:mod:`camtool.metrics.annotations`); without them only the faithfulness metrics run.
        metrics: names from :data:`METRICS`, a string being one name (default: all that
            apply; completeness applies to exact methods only).
        model: as for :func:`camtool.explain`; ``model_options`` (weights, labels, dtype) too.
        size: the square network input every image is squeezed to (default: the model's).
        out: the report folder (``results.jsonl``, ``results.json``, ``results.csv``, plots,
            overlays, ``index.html``); None: compute only, write nothing.
        resume: continue an interrupted run in ``out`` (refused when the settings differ).
        steps: deletion/insertion steps (default: the paper's 224 steps of ``H*W/224`` pixels).
        road_percentages: ROAD's fractions removed; box_threshold: the CAM box's threshold for
            the localization error.
        batch_size: images per batch (their perturbed copies go through the network together).
        progress: how the run reports its progress, in forward passes (one image through the
            network: the maps, every perturbed copy; see :func:`forward_passes_per_image`):
            True draws a rich bar and, when the run will take more than a few seconds, its cost
            first; a :data:`~camtool.progress.ProgressCallback` is called with ``(work, done)``;
            False: the callback of an enclosing :func:`camtool.progress.reporting`, if any.
        report: write the report files at the end (the overlays of the worst and best images
            use the maps of the measuring pass: no image is mapped twice).
        rescale_boxes: scale the boxes of an image whose size is not the one its VOC or COCO
            file declares (drawn on a resized copy) to the real size, and say so in its record
            (``boxes_rescaled``) and the settings; by default such an image fails.
        upsample: how maps are resized to the image before they are measured, ``"placed"`` or
            ``"stretch"`` (see :func:`camtool.render.upsample_cams`).

    Returns:
        :class:`EvalReport` (exit code 0, or 3 when some inputs failed).

    Raises:
        AnnotationError: a bad annotation file (before anything is written).
        InvalidArgumentError: an unknown metric or method; a box metric without boxes; a
            ``batch_size`` or ``size`` that is no positive integer; a ``progress`` that is no
            bool or callable; ``images`` that are no paths; resuming with other settings.
        NotDecompositionError: ``completeness`` named with no exact method (cam,
            integrated-head) to apply to; with some, it applies to those (see
            ``EvalReport.not_applicable``).
        OutputBusyError: another run writes into ``out``.
        EvalInterrupted: Ctrl-C (every finished image is kept; resume to finish).
    """
    started = time.perf_counter()
    keep_freed_memory()
    images = _image_paths(images)
    methods = [methods] if isinstance(methods, str) else methods  # one name, as --method takes
    metrics = [metrics] if isinstance(metrics, str) else metrics
    check_box_threshold(box_threshold)
    upsample = check_upsample(upsample)
    check_positive_int(batch_size, "batch_size")  # -1 ran no batch at all and said nothing
    if size is not None:
        check_positive_int(size, "size")  # 0 fell back to the model's size and said nothing
    if steps is not None and (isinstance(steps, bool) or steps < 1):
        raise InvalidArgumentError(steps, "steps must be at least 1")
    if not isinstance(progress, bool) and not callable(progress):
        raise InvalidArgumentError(
            "progress", f"expected True, False or a callable(work, done), got {progress!r}"
        )
    if not methods:
        raise InvalidArgumentError("methods", "name at least one method (cam, gradcam, ...)")
    annotations = read_annotations(boxes) if boxes is not None else None
    chosen = check_metrics(metrics, annotations is not None)
    chosen, _ = _completeness_applies(chosen, list(methods), bool(metrics))  # before the model
    loaded = get_model(model, device, **model_options)
    size = int(size or loaded.preprocessing.input_size)
    from camtool.image import check_input_size
    from camtool.metrics.maps import method_maps

    check_input_size(size)
    sources = {}
    for name in dict.fromkeys(methods):
        source = method_maps(loaded, name, upsample=upsample)
        sources[source.method] = source
    chosen, not_applicable = _completeness_applies(chosen, list(sources), bool(metrics))
    run = EvalRun(loaded, list(sources), chosen, size, steps, tuple(road_percentages),
               box_threshold, batch_size, sources=sources,
               rescale_boxes=bool(rescale_boxes), upsample=upsample)  # fmt: skip
    items, failures = collect_inputs(images, exclude=out)
    unmatched: list[str] = []
    if annotations is not None:
        annotations = resolve_boxes(annotations, loaded.labels, loaded.name)
        run.boxes, unmatched = match_images(annotations, [i.path for i in items])
    settings = _settings(run, boxes)
    if out is None:
        return _evaluate(run, items, failures, None, settings, False, progress, report,
                         unmatched, started, not_applicable)  # fmt: skip
    folder = Path(out)
    with locked_output(folder, "eval"):
        return _evaluate(run, items, failures, folder, settings, resume, progress, report,
                         unmatched, started, not_applicable)  # fmt: skip


def _image_paths(images: object) -> list[str | os.PathLike[str]]:
    """``images`` as a list of paths, folders, globs or ``@list.txt`` names.

    Raises:
        InvalidArgumentError: anything else (an in-memory image, say), naming ``images``.
    """
    if isinstance(images, (str, os.PathLike)):
        return [images]
    if isinstance(images, (list, tuple)) and all(isinstance(i, (str, os.PathLike)) for i in images):
        return list(images)
    what = type(images).__name__ if not isinstance(images, (list, tuple)) else "a list of those"
    raise InvalidArgumentError(
        "images",
        f"expected files, folders, globs or @list.txt names, got {what}; explain in-memory "
        "images with camtool.explain",
    )


def _completeness_applies(
    chosen: list[str], methods: Sequence[object], asked: bool
) -> tuple[list[str], dict[str, tuple[str, ...]]]:
    """Completeness holds for the exact methods only (their maps decompose the logit). Return
    the metrics to run and ``{"completeness": (methods it does not apply to,)}`` (empty when it
    applies to all or is not run). A method given as an object, or ``"auto"``, is judged once
    bound (its registry name).

    Raises:
        NotDecompositionError: completeness asked for (``asked``: metrics were named) with no
            method it applies to.
    """
    from camtool.methods.base import EXACT_METHODS

    if "completeness" not in chosen:
        return chosen, {}
    names = [m for m in methods if isinstance(m, str) and m != "auto"]
    inexact = tuple(m for m in names if m not in EXACT_METHODS)
    if not inexact or len(names) < len(methods):
        return chosen, {}
    if len(inexact) < len(methods):
        return chosen, {"completeness": inexact}
    if not asked:  # "all that apply": it applies to none
        return [m for m in chosen if m != "completeness"], {}
    raise NotDecompositionError(
        "completeness",
        f"applies only to exact methods ({', '.join(EXACT_METHODS)}), whose maps decompose the "
        f"logit; the maps of {', '.join(inexact)} do not: add --method cam or drop the metric",
    )


def _images_note(done: int, total: int, failed: int) -> str:
    return f"{done}/{total} img, {failed} failed"


@contextmanager
def _counting_passes(module: nn.Module, meter: Meter | None) -> Iterator[None]:
    """Advance ``meter`` by the images of each batch that has gone through ``module`` (no
    meter: nothing)."""
    if meter is None:
        yield
        return

    def count(_module: nn.Module, args: tuple[Any, ...], _output: Any) -> None:
        first = args[0] if args else None
        meter.advance(int(first.shape[0]) if isinstance(first, Tensor) and first.ndim else 1)

    handle = module.register_forward_hook(count)
    try:
        yield
    finally:
        handle.remove()


def _settings(run: EvalRun, boxes: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Every setting a resumed run must share, JSON-ready."""
    digest = None
    if boxes is not None and Path(boxes).is_file():
        with Path(boxes).open("rb") as handle:  # a chunk at a time: a box file may be 64 MiB
            digest = hashlib.file_digest(handle, "sha256").hexdigest()[:16]
    # Recorded only when set, so that a run of an earlier camtool (which never rescaled) resumes.
    rescale = {"rescale_boxes": True} if run.rescale_boxes else {}
    return {
        "model": run.model.name, "weights": run.model.weights,
        "dtype": str(run.model.dtype).removeprefix("torch."),
        "methods": run.methods, "metrics": run.metrics, "size": run.size,
        "resize": f"each image squeezed to {run.size}x{run.size} (no crop); boxes scaled alike",
        "steps": run.steps or 224,
        "road_percentages": list(run.road_percentages), "box_threshold": run.box_threshold,
        "boxes": None if boxes is None else os.path.abspath(boxes), "boxes_sha256": digest,
        "class": "the annotated class where an image has boxes, else the top-1 prediction",
        "score": "softmax probability of the class",
        "upsample": run.upsample,
        **rescale,
    }  # fmt: skip


def _evaluate(
    run: EvalRun,
    items: list[InputItem],
    failures: list[ExportFailure],
    out: Path | None,
    settings: dict[str, Any],
    resume: bool,
    progress: bool | ProgressCallback,
    write_report: bool,
    unmatched: list[str],
    started: float,
    not_applicable: dict[str, tuple[str, ...]] | None = None,
) -> EvalReport:
    records: list[dict[str, Any]] = []
    writer = None
    todo: list[InputItem] = items
    carried: list[dict[str, Any]] = []
    if out is not None:
        earlier = earlier_journal(out / RESULTS, resume)
        resumed = earlier if resume else None
        if resumed is not None and resumed.runs:
            check_same_settings(out / RESULTS, settings_before(resumed.runs[-1]), settings)
        todo, carried = split_resumed(items, resumed)
        if resumed is not None:
            wanted = {i.resolved for i in items}
            records = [
                r for p, r in resumed.by_path.items() if r.get("status") == "ok" and p in wanted
            ]
        writer = JournalWriter(out / RESULTS, append=resume)
        writer.write(run_record(settings, bool(resume)))
    failed = [ExportFailure(r["input"], r["error"]) for r in carried] + list(failures)
    if writer is not None:
        for failure in failures:
            writer.write(failed_record(failure.input, failure.error))
    bars = WorkBars() if progress is True else None
    callback = bars if bars is not None else progress if callable(progress) else current()
    costs = {boxed: forward_passes_per_image(run, boxed) for boxed in (False, True)}

    def cost(items: list[InputItem]) -> int:
        return sum(costs[bool(run.boxes.get(i.resolved))] for i in items)

    meter = None
    finished = len(items) - len(todo)
    if callback is not None:
        work = Work(
            "eval", "forward passes", cost(todo), per_image=cost(todo) // max(1, len(todo)),
            images=len(todo), detail=_images_note(finished, len(items), len(failed)),
        )  # fmt: skip
        meter = Meter(work, callback)
    kept = KeptMaps()
    evaluated = processed = 0
    with (
        interrupt_flag() as interrupted,
        _counting_passes(run.model.module, meter),
        reporting(None),  # the methods' own work (Score-CAM's passes) is counted here
    ):
        try:
            for done, bad, maps in measured_batches(run, todo):
                for failure, item in bad:
                    failed.append(failure)
                    if writer is not None:
                        writer.write(failed_record(failure.input, failure.error, item.resolved))
                for record, image_maps in zip(done, maps, strict=True):
                    if writer is not None:
                        writer.write(record)
                    records.append(record)
                    kept.offer(record, image_maps)
                    evaluated += 1
                processed += len(done) + len(bad)
                finished += len(done) + len(bad)
                if meter is not None:  # the estimate of what is left, now that this is known
                    meter.retotal(meter.done + cost(todo[processed:]))
                    meter.note(_images_note(finished, len(items), len(failed)))
                if interrupted:
                    break
        except KeyboardInterrupt:
            if not interrupted:
                raise
        finally:
            if writer is not None:
                writer.close()
            if meter is not None and not interrupted:
                meter.finish()
            if bars is not None:
                bars.close()
    from camtool.metrics.report import write_report_files
    from camtool.metrics.summaries import summarize

    summaries = summarize(records, run.methods, run.metrics)
    report = EvalReport(
        out, tuple(summaries), tuple(records), len(items), evaluated,
        len(items) - len(todo) - len(carried), len(failed), settings,
        time.perf_counter() - started, tuple(failed), (), bool(interrupted), tuple(unmatched),
        dict(not_applicable or {}),
    )  # fmt: skip
    if out is not None and write_report and not interrupted:
        files = write_report_files(report, run.model, run.sources, kept.maps)
        report = replace(report, files=tuple(files))
    if interrupted:
        raise EvalInterrupted(report)
    return report
