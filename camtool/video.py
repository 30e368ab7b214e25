"""Heatmaps on video: every frame explained in batches, optionally smoothed over time."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from camtool.binding import BoundMethod, ModelSpec, bind_method
from camtool.errors import UnsupportedModelError
from camtool.explanation import Explanation, build_explanation
from camtool.image import check_crop
from camtool.io.videos import VideoWriter, open_video
from camtool.labels import ClassesArg
from camtool.methods.base import DEFAULT_METHOD, Method
from camtool.models.loading import DEFAULT_MODEL
from camtool.progress import ProgressBar, current, reporting
from camtool.render import draw_label
from camtool.settings import (
    DEFAULT_BOX_THRESHOLD,
    DEFAULT_UPSAMPLE,
    check_box_threshold,
    check_positive_int,
    check_upsample,
)


@dataclass(frozen=True)
class VideoReport:
    """What :func:`explain_video` wrote: frames, their size and rate, and the throughput.

    ``expected_frames`` is the count the container announced (0 if unknown); fewer ``frames``
    means the video could not be decoded to its end.
    """

    source: Path
    output: Path
    frames: int
    expected_frames: int
    fps: float
    width: int
    height: int
    seconds: float

    @property
    def frames_per_second(self) -> float:
        """Frames explained and written per second of wall time."""
        return self.frames / self.seconds if self.seconds else 0.0


def explain_frames(
    frames: Iterable[Tensor],
    model: ModelSpec | BoundMethod,
    *,
    method: str | Method = DEFAULT_METHOD,
    classes: ClassesArg = None,
    crop: bool = False,
    batch_size: int = 16,
    smooth: int = 1,
    top_k: int = 5,
    source: str = "<frame>",
    box_threshold: float = DEFAULT_BOX_THRESHOLD,
    upsample: str = DEFAULT_UPSAMPLE,
) -> Iterator[Explanation]:
    """Explain a stream of ``Tensor[3,H,W]`` uint8 frames of one size, ``batch_size`` at a time.

    With ``smooth=N`` each frame's heatmaps are the mean of the last N frames' heatmaps (the
    first frame's are its own; the window starts again when the top class changes), which
    steadies flickering maps; CAMs, scores and boxes stay the frame's own. ``model`` is a loaded
    model (or any spec :func:`camtool.explain` takes, or a bound method); ``method`` makes the
    maps; ``box_threshold`` and ``upsample`` are as for :func:`camtool.explain`.

    Raises:
        InvalidArgumentError: (when called, before any frame is read) a ``batch_size`` that is no positive integer, a box threshold
            outside (0, 1), ``crop`` with a model whose ``crop_pct`` is above 1.
        UnsupportedModelError: the method cannot explain the model.
    """
    check_box_threshold(box_threshold)
    upsample = check_upsample(upsample)
    check_positive_int(batch_size, "batch_size")
    check_positive_int(top_k, "top_k")
    bound = model if isinstance(model, BoundMethod) else bind_method(model, method, classes)
    if bound.explainer.method == "none":
        raise UnsupportedModelError(bound.model.name, bound.explainer.describe())
    check_crop(bound.model.preprocessing, crop)
    return _explained_frames(
        frames, bound, crop, batch_size, smooth, top_k, source, (box_threshold, upsample)
    )


def _explained_frames(
    frames: Iterable[Tensor],
    bound: BoundMethod,
    crop: bool,
    batch_size: int,
    smooth: int,
    top_k: int,
    source: str,
    heatmaps: tuple[float, str],
) -> Iterator[Explanation]:
    recent: deque[Tensor] = deque(maxlen=max(1, smooth))
    index = 0
    shown: int | None = None

    def run(batch: list[Tensor]) -> Iterator[Explanation]:
        prepared = [bound.model.preprocessing.prepare(frame, crop) for frame in batch]
        out = bound(torch.stack([p[0] for p in prepared]), maps=1)
        nonlocal index, shown
        for row, (frame, (_, region)) in enumerate(zip(batch, prepared, strict=True)):
            ex = build_explanation(
                bound.model, out, row, f"{source}#{index}", frame, region, top_k, *heatmaps
            )
            index += 1
            if shown is not None and ex.explained[0].index != shown:
                recent.clear()  # another class now: do not blend its maps with the last one's
            shown = ex.explained[0].index
            recent.append(ex.heatmaps)
            if len(recent) > 1:
                ex = replace(ex, heatmaps=torch.stack(list(recent)).mean(dim=0))
            yield ex

    pending: list[Tensor] = []
    for frame in frames:
        pending.append(frame)
        if len(pending) == batch_size:
            yield from run(pending)
            pending = []
    if pending:
        yield from run(pending)


def explain_video(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    model: ModelSpec | BoundMethod = DEFAULT_MODEL,
    *,
    method: str | Method = DEFAULT_METHOD,
    classes: ClassesArg = None,
    crop: bool = False,
    batch_size: int = 16,
    smooth: int = 1,
    alpha: float = 0.5,
    colormap: str = "jet",
    box: bool = False,
    box_threshold: float = DEFAULT_BOX_THRESHOLD,
    upsample: str = DEFAULT_UPSAMPLE,
    device: str | None = "auto",
    progress: bool = False,
    **model_options: Any,
) -> VideoReport:
    """Write ``output``: the video at ``path`` with the heatmap of each frame's top class (or of
    ``classes[0]``) blended in and the class written on the frame; same frame rate and size
    (``box_threshold`` and ``upsample`` as for :func:`camtool.explain`).

    The file is written under a temporary name and renamed when complete.

    Raises:
        ImageReadError: the video cannot be opened or decoded.
        OutputWriteError: it cannot be written.
        InvalidArgumentError: as :func:`explain_frames` (before the video is opened).
    """
    started = time.perf_counter()
    check_box_threshold(box_threshold)
    upsample = check_upsample(upsample)
    check_positive_int(batch_size, "batch_size")
    bound = bind_method(model, method, classes, device=device, **model_options)
    check_crop(bound.model.preprocessing, crop)
    info, frames = open_video(path)
    writer = VideoWriter(output, info.fps, info.width, info.height)
    bar = ProgressBar("video", info.frames or None, "frames") if progress else None
    count = 0
    try:
        stream = explain_frames(frames, bound, crop=crop, batch_size=batch_size,
                                smooth=smooth, source=str(path), box_threshold=box_threshold,
                                upsample=upsample)  # fmt: skip
        with reporting(None if bar else current()):  # one live display: the frames' bar
            for ex in stream:
                score = ex.explained[0]
                agnostic = f" ({ex.method} map: class-agnostic)" if ex.class_agnostic else ""
                picture = ex.overlay(alpha=alpha, colormap=colormap, box=box, enlarge_tiny=False)
                frame = draw_label(
                    picture.tensor, f"{score.name} {score.probability:.2f}{agnostic}"
                )
                writer.write(frame)
                count += 1
                if bar:
                    bar.advance()
        written = writer.close()
    except BaseException:
        writer.discard()
        raise
    finally:
        if bar:
            bar.stop()
    seconds = time.perf_counter() - started
    return VideoReport(
        Path(path), written, count, info.frames, info.fps, info.width, info.height, seconds
    )
