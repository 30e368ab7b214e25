"""Explain named files into an output folder: what ``camtool explain`` does, as a library call.

Images get one overlay per explained class (and, on request, a comparison sheet); videos get an
overlaid video. This module owns the rules the command line relies on: output names (unique in
the folder, safe, at most 255 bytes: :mod:`camtool.naming`), and the per-input error policy (a
bad input is recorded and the others go on; a usage error, or a single input, stops the run).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

from camtool.binding import BoundMethod, ModelSpec, bind_method
from camtool.errors import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, CamtoolError, ImageReadError
from camtool.explaining import explain
from camtool.explanation import Explanation
from camtool.io.videos import VIDEO_SUFFIXES, video_info
from camtool.labels import ClassesArg, resolve_class
from camtool.methods.base import DEFAULT_METHOD, Method
from camtool.models.loading import DEFAULT_MODEL
from camtool.naming import NameRegistry, component, input_stems, overlay_tail, video_tail
from camtool.render import DEFAULT_SCALE, check_scale
from camtool.settings import (
    DEFAULT_ALPHA,
    DEFAULT_BOX_THRESHOLD,
    DEFAULT_COLORMAP,
    DEFAULT_IMAGE_FORMAT,
    DEFAULT_UPSAMPLE,
    check_box_threshold,
    check_upsample,
)
from camtool.sheet import comparison_sheet
from camtool.video import VideoReport, explain_video


def folder_problem(folder: str | os.PathLike[str]) -> str:
    """What an input that is a folder is told: explain takes files; export takes folders."""
    return (
        "is a folder; explain takes image and video files: `camtool export "
        f"{shlex.quote(str(folder))}` (camtool.export in Python) explains every image in it"
    )


#: The comparison sheet's file format and JPEG quality.
SHEET_FORMAT = "jpg"
SHEET_QUALITY = 90


@dataclass(frozen=True)
class Rendering:
    """How overlays look and are stored: opacity, colour map, CAM box, file format, colour
    scale (``"joint"`` or ``"per-map"``, see :meth:`Explanation.overlay`) and legend band."""

    alpha: float = DEFAULT_ALPHA
    colormap: str = DEFAULT_COLORMAP
    box: bool = False
    image_format: Literal["png", "jpg"] = DEFAULT_IMAGE_FORMAT
    scale: str = DEFAULT_SCALE
    legend: bool = False

    def __post_init__(self) -> None:
        check_scale(self.scale)

    def look(self) -> dict[str, Any]:
        """The keyword arguments of :meth:`Explanation.overlay` this rendering gives."""
        return {"alpha": self.alpha, "colormap": self.colormap, "box": self.box,
                "scale": self.scale, "legend": self.legend}  # fmt: skip


@dataclass(frozen=True)
class FileResult:
    """What became of one input: its explanations (one per model) and the files written for
    them, or the overlaid video, or the reason it failed.

    Attributes:
        input: the input as given.
        explanations: per model, the :class:`Explanation` (images only).
        outputs: per model, the files written for it (the sheet, if any, with the first model's).
        video: the video report (videos only).
        error: one line, when the input (or part of a video) could not be explained.
    """

    input: str
    explanations: tuple[Explanation, ...] = ()
    outputs: tuple[tuple[Path, ...], ...] = ()
    video: VideoReport | None = None
    error: str | None = None


@dataclass
class FilesReport:
    """Everything :func:`explain_files` did; ``exit_code`` follows camtool's policy: 0 when every
    input was explained, 3 when some failed and others were written, 1 when none was."""

    results: list[FileResult] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        failed = sum(r.error is not None for r in self.results)
        done = sum(bool(r.explanations) or r.video is not None for r in self.results)
        if not failed:
            return EXIT_OK
        return EXIT_PARTIAL if done else EXIT_ERROR


def explain_files(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None,
    models: Sequence[ModelSpec | BoundMethod] = (DEFAULT_MODEL,),
    *,
    method: str | Method | Sequence[str | Method] = DEFAULT_METHOD,
    classes: ClassesArg = None,
    maps: int = 1,
    top_k: int = 5,
    crop: bool = False,
    box_threshold: float = DEFAULT_BOX_THRESHOLD,
    upsample: str = DEFAULT_UPSAMPLE,
    rendering: Rendering | None = None,
    sheet: bool = False,
    smooth: int = 1,
    device: str | None = "auto",
    progress: bool = False,
    **model_options: Any,
) -> Iterator[FileResult]:
    """Explain image and video files, writing their pictures under ``out``; yield a
    :class:`FileResult` per input, in order.

    Overlays are ``<stem>_<method>_<index>_<class>.<format>`` (``<stem>_cam_285_...``,
    ``<stem>_gradcam_285_...``; ``<stem>_<model>_<method>_...`` when several models are
    compared), sheets ``<stem>_sheet.jpg`` (JPEG whatever the overlays' format: a sheet of
    photos is for looking at, and PNG would make it megabytes), videos ``<stem>_<method>.mp4`` (``.avi`` for
    .avi inputs and odd frame sizes, which MPEG-4 cannot hold). Stems are unique in
    the folder by construction (``a.png a.jpg`` -> ``a``, ``a_2``). ``out=None`` writes nothing
    for images (predictions and maps only; videos need a folder).

    Args:
        inputs: image or video files. models: one or more models.
        method: one method or several (each model is explained by each method: one sheet row
            per model and method, models outermost; videos use the first).
        classes, maps, top_k, crop, box_threshold, upsample, device: as for
            :func:`camtool.explain`;
            ``model_options`` (weights, labels, dtype, layer, classifier) too. Without
            ``classes``, the first model and method choose each image's top ``maps`` classes,
            and every other model and method maps those same classes (by index when the label
            sets are the same, else by name).
        rendering: overlay look and file format. sheet: also write the comparison sheet
            (input beside exactly the maps asked for; one row per model and method, wrapping
            after :data:`camtool.sheet.SHEET_MAPS_PER_ROW` maps). smooth: videos only, see
            :func:`camtool.explain_video`. progress: videos show a progress bar.

    Raises:
        CamtoolError: a usage error (an unknown model, method or class; a model the method
            cannot explain), or any error when there is a single input (a folder is an
            ``ImageReadError`` that points to :func:`camtool.export`). Other errors of one
            input are yielded as its ``FileResult.error`` and the run goes on.
    """
    rendering = rendering or Rendering()
    check_box_threshold(box_threshold)
    upsample = check_upsample(upsample)
    methods: list[str | Method] = (
        list(method) if isinstance(method, (list, tuple)) else [cast("str | Method", method)]
    )
    bound = [
        bind_method(m, chosen, classes, device=device, **model_options)
        for m in models
        for chosen in (methods[:1] if isinstance(m, BoundMethod) else methods)
    ]
    folder = Path(out) if out is not None else None
    files = NameRegistry()  # every file this run writes: no result overwrites another
    for path, stem in zip(inputs, input_stems(inputs), strict=True):
        try:
            if Path(path).is_dir():
                raise ImageReadError(path, folder_problem(path))
            if Path(path).suffix.lower() in VIDEO_SUFFIXES:
                yield _video(
                    Path(path), stem, folder, files, bound[0], crop, (box_threshold, upsample),
                    smooth, rendering, progress,
                )  # fmt: skip
            else:
                yield _image(
                    Path(path), stem, folder, files, bound, maps, top_k, crop,
                    (box_threshold, upsample), sheet, rendering,
                )  # fmt: skip
        except CamtoolError as exc:
            if exc.exit_code != EXIT_ERROR or len(inputs) == 1:
                raise
            yield FileResult(str(path), error=str(exc))


def _image(
    path: Path, stem: str, folder: Path | None, files: NameRegistry, bound: Sequence[BoundMethod],
    maps: int, top_k: int, crop: bool, heatmaps: tuple[float, str], sheet: bool,
    rendering: Rendering,
) -> FileResult:  # fmt: skip
    options: dict[str, Any] = {
        "maps": maps, "top_k": top_k, "crop": crop, "box_threshold": heatmaps[0],
        "upsample": heatmaps[1],
    }  # fmt: skip
    first = explain(path, bound[0], **options)
    results = [first] + [explain(path, same_classes(first, b), **options) for b in bound[1:]]
    written: list[list[Path]] = [[] for _ in results]
    several_models = len({b.model.name for b in bound}) > 1
    if folder is not None:
        for ex, outputs in zip(results, written, strict=True):
            prefix = f"{stem}_{component(ex.model)}" if several_models else stem
            for score in ex.explained:
                tail = overlay_tail(ex.method, score.index, score.name, rendering.image_format)
                outputs.append(
                    ex.save(folder / files.claim(prefix, tail), score, **rendering.look())
                )
        if sheet:  # a picture to look at, of photos: JPEG (the overlays keep their format)
            picture = comparison_sheet(results, **rendering.look())
            name = files.claim(stem, f"_sheet.{SHEET_FORMAT}")
            written[0].append(picture.save(folder / name, quality=SHEET_QUALITY))
    return FileResult(str(path), tuple(results), tuple(tuple(w) for w in written))


def same_classes(first: Explanation, bound: BoundMethod) -> BoundMethod:
    """``bound`` set to map the classes ``first`` explained (when it has no classes of its own):
    by index when both models have the same labels, else by name.

    Raises:
        ClassSelectionError: a class ``first`` explained is not among ``bound``'s labels.
    """
    if bound.classes is not None or not first.explained:
        return bound
    if _same_labels(first, bound):
        return replace(bound, classes=[s.index for s in first.explained])
    return replace(
        bound, classes=[resolve_class(s.name, bound.model.labels) for s in first.explained]
    )


def _same_labels(first: Explanation, bound: BoundMethod) -> bool:
    labels = bound.model.labels
    return all(s.index < len(labels) and labels[s.index] == s.name for s in first.explained)


def _video(
    path: Path, stem: str, folder: Path | None, files: NameRegistry, bound: BoundMethod,
    crop: bool, heatmaps: tuple[float, str], smooth: int, rendering: Rendering, progress: bool,
) -> FileResult:  # fmt: skip
    if folder is None:
        raise CamtoolError(path, "a video needs an output folder (--out) for its overlaid video")
    info = video_info(path)
    odd = info.width % 2 or info.height % 2
    suffix = "avi" if odd or path.suffix.lower() == ".avi" else "mp4"
    output = folder / files.claim(stem, video_tail(bound.explainer.method, suffix))
    report = explain_video(
        path, output, bound, crop=crop, smooth=smooth, alpha=rendering.alpha,
        colormap=rendering.colormap, box=rendering.box, box_threshold=heatmaps[0],
        upsample=heatmaps[1], progress=progress,
    )  # fmt: skip
    error = None
    if report.frames < report.expected_frames - 1:  # containers may count one frame extra
        error = (
            f"{path}: only {report.frames} of {report.expected_frames} frames could be decoded; "
            f"{report.output} holds those"
        )
    return FileResult(str(path), video=report, error=error)
