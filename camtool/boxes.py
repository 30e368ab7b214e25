"""The CAM box: the bounding box of the largest connected part of a map above a fraction of its
maximum (the CAM paper's localisation box), found on a full-size heatmap (:func:`cam_to_box`) or
from the small map at feature resolution (:func:`small_map_box`), and drawn on an image
(:func:`draw_box`).

Heatmaps are ``Tensor[H,W]`` float; images are ``Tensor[3,H,W]`` uint8 RGB; boxes are
``(x1, y1, x2, y2)`` in image pixels (:data:`Box`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from camtool.errors import InvalidArgumentError
from camtool.geometry import FeatureGeometry
from camtool.io.opencv import cv2
from camtool.render import upsample_weights
from camtool.settings import DEFAULT_BOX_THRESHOLD, check_box_threshold

Box = tuple[int, int, int, int]
"""``(x1, y1, x2, y2)`` in image pixels; ``x2`` and ``y2`` are exclusive."""


def cam_to_box(heatmap: Tensor, threshold: float = DEFAULT_BOX_THRESHOLD) -> Box | None:
    """Return the CAM paper's box: keep pixels at or above ``threshold`` x the map's maximum,
    take the largest connected component, and return its bounding box.

    Args:
        heatmap: ``Tensor[H,W]`` float.
        threshold: fraction of the maximum, 0 < threshold < 1 (the paper uses 0.2).

    Returns:
        ``(x1, y1, x2, y2)`` in pixels with x2/y2 exclusive, or None for a map with no positive pixel.

    Raises:
        InvalidArgumentError: a threshold outside (0, 1).
    """
    check_box_threshold(threshold)
    peak = float(heatmap.max())
    if peak <= 0:
        return None
    mask = (heatmap >= threshold * peak).to(torch.uint8).cpu().numpy()
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[largest, :4])
    return x, y, x + w, y + h


def draw_box(
    image: Tensor, box: Box, color: tuple[int, int, int] = (0, 255, 0), width: int | None = None
) -> Tensor:
    """Return a copy of ``image`` (``Tensor[3,H,W]`` uint8) with ``box`` outlined in ``color`` (RGB).

    The line is :func:`box_width` pixels wide unless ``width`` is given.
    """
    canvas = np.array(image.permute(1, 2, 0).cpu().numpy(), order="C")  # always a copy
    draw_box_in_place(canvas, box, color, width)
    return torch.from_numpy(canvas).permute(2, 0, 1).to(image.device)


def draw_box_in_place(
    canvas: np.ndarray,
    box: Box,
    color: tuple[int, int, int] = (0, 255, 0),
    width: int | None = None,
) -> None:
    """:func:`draw_box` on a ``uint8 [H,W,3]`` array (C-contiguous), changing it."""
    width = width or box_width(int(canvas.shape[0]), int(canvas.shape[1]))
    x1, y1, x2, y2 = box
    cv2.rectangle(canvas, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), color, width)


def scaled_box(box: Box, factor: int) -> Box:
    """``box`` in the pixels of the image enlarged ``factor`` times (see
    :func:`camtool.image.enlarge`)."""
    return box[0] * factor, box[1] * factor, box[2] * factor, box[3] * factor


def box_width(height: int, width: int) -> int:
    """The CAM box's line width for an image: ``max(1, round(min(height, width) / 200))`` px
    (1 px up to 299 px, 2 px at 300-499 px, 3 px at 500-699 px, ...)."""
    return max(1, round(min(height, width) / 200))


def small_map_box(
    cam: Tensor,
    input_hw: tuple[int, int],
    out_hw: tuple[int, int],
    geometry: FeatureGeometry | None = None,
    threshold: float = DEFAULT_BOX_THRESHOLD,
    factor: int = 4,
) -> Box | None:
    """:func:`cam_to_box` of the upsampled map, computed from a small map instead of the full one.

    The map is evaluated at ``factor`` samples per feature cell and axis (plus the rows and
    columns where the upsampled map can peak, so the maximum is exact), the largest 8-connected
    component above ``threshold`` x the maximum is found on that small map, and each of its four
    edges is then placed to the pixel by evaluating only the strip of full-size pixels between
    the last sample inside and the first sample outside. The values are those of
    :func:`~camtool.render.upsample_cams` (:func:`~camtool.render.upsample_weights`), so on a
    640x480 photo the cost is a few thousand pixels instead of 307,200.

    Args:
        cam: ``Tensor[h,w]`` float, the map at feature resolution, as it is upsampled (for the
            box of a normalised heatmap, the normalised map).
        input_hw, out_hw, geometry: as for :func:`~camtool.render.upsample_cams`.
        threshold: fraction of the maximum, 0 < threshold < 1.
        factor: samples per feature cell and axis on the small map (at least 1).

    Returns:
        ``(x1, y1, x2, y2)`` in pixels of ``out_hw`` (x2/y2 exclusive), or None when the map has
        no positive value.

    The box equals :func:`cam_to_box` of ``upsample_cams(cam, ...)`` to within rounding (a pixel
    whose value lies within float32 rounding of the threshold may count differently: 1 px at
    most) except in two cases the small map cannot see: two parts above the threshold that touch
    (or almost touch) only between samples, which the full map joins or splits differently, or
    two components of nearly equal area, where the small map may pick the other one; a part
    thinner than the sample spacing (``out / (factor * cells)`` px) that lies wholly between
    samples is missed. Then the box can differ by more; raise ``factor`` to shrink those cases.
    """
    check_box_threshold(threshold)
    if factor < 1:
        raise InvalidArgumentError(factor, "factor must be at least 1")
    values = cam.detach().float().cpu().numpy()
    height, width = out_hw
    if values.ndim != 2 or height < 1 or width < 1:
        raise InvalidArgumentError("cam", f"expected shape [h, w], got {list(values.shape)}")
    plan = _box_plan((values.shape[0], values.shape[1]), input_hw, out_hw, geometry, factor)
    wy, wx, ys, xs = plan.wy, plan.wx, plan.ys, plan.xs
    small = wy[ys] @ values @ wx[xs].T
    peak = float(small.max())
    if peak <= 0:
        return None
    level = np.float32(threshold * peak)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        (small >= level).astype(np.uint8), connectivity=8
    )
    if count < 2:
        return None
    # Each sample stands for the pixels nearer to it than to its neighbours: weigh areas by that.
    areas = np.bincount(labels.ravel(), weights=plan.share, minlength=count)
    largest = 1 + int(np.argmax(areas[1:]))
    j1, i1, w, h = (int(v) for v in stats[largest, :4])
    i2, j2 = i1 + h - 1, j1 + w - 1  # inclusive sample indices
    inside = labels == largest
    # The full-size rows and columns from the component's outer samples to their outer neighbours.
    rows = np.arange(ys[i1 - 1] + 1 if i1 else 0, ys[i2 + 1] if i2 + 1 < len(ys) else height)
    cols = np.arange(xs[j1 - 1] + 1 if j1 else 0, xs[j2 + 1] if j2 + 1 < len(xs) else width)
    sample_rows, sample_cols = ys[i1 : i2 + 1] - rows[0], xs[j1 : j2 + 1] - cols[0]

    def reach(strip_rows: np.ndarray, strip_cols: np.ndarray, seeds: tuple[np.ndarray, np.ndarray],
              axis: int, last: bool) -> int:  # fmt: skip
        """The outermost row (axis 0) or column (axis 1) of the strip's pixels above the level
        that connect, inside the strip, to one of the component's samples (``seeds``)."""
        above = (wy[strip_rows] @ values @ wx[strip_cols].T) >= level
        found, strip_labels = cv2.connectedComponents(above.astype(np.uint8), connectivity=8)
        keep = np.zeros(found, dtype=bool)
        keep[strip_labels[seeds]] = True
        keep[0] = False
        hits = np.flatnonzero(keep[strip_labels].any(axis=1 - axis))
        return int((strip_rows if axis == 0 else strip_cols)[hits[-1] if last else hits[0]])

    def line(values: np.ndarray, picked: np.ndarray, at: int) -> tuple[np.ndarray, np.ndarray]:
        return np.full(int(picked.sum()), at), values[picked]

    top, bottom = rows[rows <= ys[i1]], rows[rows >= ys[i2]]
    left, right = cols[cols <= xs[j1]], cols[cols >= xs[j2]]
    y1 = reach(top, cols, line(sample_cols, inside[i1, j1 : j2 + 1], len(top) - 1), 0, False)
    y2 = reach(bottom, cols, line(sample_cols, inside[i2, j1 : j2 + 1], 0), 0, True) + 1
    seeds_x1 = line(sample_rows, inside[i1 : i2 + 1, j1], len(left) - 1)[::-1]
    x1 = reach(rows, left, (seeds_x1[0], seeds_x1[1]), 1, False)
    seeds_x2 = line(sample_rows, inside[i1 : i2 + 1, j2], 0)[::-1]
    x2 = reach(rows, right, (seeds_x2[0], seeds_x2[1]), 1, True) + 1
    return x1, y1, x2, y2


class _BoxPlan(NamedTuple):
    wy: np.ndarray  # float32 [out_h, h], see upsample_weights
    wx: np.ndarray  # float32 [out_w, w]
    ys: np.ndarray  # int64 sample rows of the small map
    xs: np.ndarray  # int64 sample columns
    share: np.ndarray  # float64 [len(ys) * len(xs)]: pixels each sample stands for


@lru_cache(maxsize=64)
def _box_plan(
    feature_hw: tuple[int, int],
    input_hw: tuple[int, int],
    out_hw: tuple[int, int],
    geometry: FeatureGeometry | None,
    factor: int,
) -> _BoxPlan:
    """What :func:`small_map_box` needs for one size of map and image (photos of one size
    share it)."""
    wy, wx = upsample_weights(feature_hw, input_hw, out_hw, geometry)
    ys, xs = _sample_points(wy, factor), _sample_points(wx, factor)
    share = np.outer(_sample_share(ys, out_hw[0]), _sample_share(xs, out_hw[1])).ravel()
    for array in (wy, wx, ys, xs, share):
        array.flags.writeable = False
    return _BoxPlan(wy, wx, ys, xs, share)


def _sample_share(points: np.ndarray, size: int) -> np.ndarray:
    """Pixels along one axis nearer to each sample point than to its neighbours: float64."""
    bounds = np.concatenate([[0.0], (points[1:] + points[:-1] + 1) / 2, [float(size)]])
    return np.diff(bounds)


def _sample_points(weights: np.ndarray, factor: int) -> np.ndarray:
    """Output pixels where one axis of the small map is sampled: ``factor`` per feature cell,
    evenly spread, plus the first and last pixel of each stretch between two cell centres
    (where the upsampled map, linear on each stretch, takes its extremes): sorted int64."""
    out, cells = weights.shape
    step = max(1.0, out / (factor * cells))
    even = np.floor(np.arange(step / 2, out, step)).astype(np.int64)
    # The stretch of a pixel: the pair of cells it mixes (its main cell when it holds one alone).
    stretch = np.argmax(weights > 0, axis=1) * (cells + 1) + (
        cells - np.argmax(weights[:, ::-1] > 0, axis=1)
    )
    ends = np.flatnonzero(np.diff(stretch) != 0)
    return np.unique(np.concatenate([even, ends, ends + 1, [0, out - 1]]).clip(0, out - 1))
