"""Localization measures: the pointing game (Zhang et al., 2016), the CAM paper's top-1/top-5
localization error (Zhou et al., 2016) and MaxBoxAcc (Choe et al., 2020).

Boxes are ``(x1, y1, x2, y2)`` in image pixels with x2/y2 exclusive (camtool's
:data:`~camtool.boxes.Box` convention): a box covers the pixel columns ``x1 <= x < x2`` and rows
``y1 <= y < y2``, and its area is ``(x2 - x1) * (y2 - y1)``. Ground truth comes as one
``Tensor[M_i,4]`` per image (the boxes of the class being evaluated, at least one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from camtool.boxes import Box, cam_to_box
from camtool.errors import InvalidArgumentError
from camtool.io.opencv import cv2
from camtool.metrics.checks import check_boxes, check_fractions, normalize_maps
from camtool.settings import DEFAULT_BOX_THRESHOLD, check_box_threshold

#: The pointing game's tolerance: a hit within 15 pixels of a ground-truth box (Zhang et al.).
POINTING_TOLERANCE = 15

#: The IoU at which a box counts as correct (CAM paper, ILSVRC).
IOU_THRESHOLD = 0.5

#: MaxBoxAccV2's IoU thresholds (Choe et al. 2020).
MAXBOXACC_IOUS: tuple[float, ...] = (0.3, 0.5, 0.7)

#: MaxBoxAcc's map thresholds: 0, 0.01, ..., 0.99 (the reference code's ``cam_curve_interval``).
MAXBOXACC_THRESHOLDS: tuple[float, ...] = tuple(i / 100 for i in range(100))


@dataclass(frozen=True)
class PointingResult:
    """Pointing game per image: ``hit`` ``Tensor[N]`` bool; ``point`` ``Tensor[N,2]`` int64, the
    map's maximum as ``(x, y)``; ``peaks`` ``Tensor[N]`` int64, how many pixels share the maximum
    value (1 unless the map has a plateau at its top)."""

    hit: Tensor
    point: Tensor
    peaks: Tensor
    protocol: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        """Hits / images."""
        return float(self.hit.float().mean())


@dataclass(frozen=True)
class LocalizationResult:
    """The CAM paper's localization per image.

    Attributes:
        top1_correct, top5_correct: ``Tensor[N]`` bool (errors are their complements' means).
        iou: ``Tensor[N,k]`` float32, the best IoU of each predicted class's box with the
            ground-truth boxes (0 when the map gives no box).
        boxes: per image, per predicted class, the box made from its map (or None).
        protocol: every setting, JSON-ready.
    """

    top1_correct: Tensor
    top5_correct: Tensor
    iou: Tensor
    boxes: tuple[tuple[Box | None, ...], ...]
    protocol: dict[str, Any] = field(default_factory=dict)

    @property
    def top1_error(self) -> float:
        """Top-1 localization error, in [0, 1]."""
        return 1.0 - float(self.top1_correct.float().mean())

    @property
    def top5_error(self) -> float:
        """Top-5 localization error, in [0, 1]."""
        return 1.0 - float(self.top5_correct.float().mean())


@dataclass(frozen=True)
class MaxBoxAccResult:
    """MaxBoxAcc (Choe et al. 2020).

    Attributes:
        thresholds: ``Tensor[T]`` float32, the map thresholds tried.
        iou_thresholds: ``Tensor[D]`` float32.
        correct: ``Tensor[N,T,D]`` bool, per image whether its box at threshold ``t`` reaches IoU
            ``d`` with a ground-truth box.
        box_accuracy: ``Tensor[T,D]`` float32, ``correct``'s mean over images.
        max_box_accuracy: ``Tensor[D]`` float32, the best threshold's accuracy per IoU threshold.
        best_threshold: ``Tensor[D]`` float32, that threshold (the lowest among equals).
        value: the headline number: the mean of ``max_box_accuracy`` over the IoU thresholds
            (MaxBoxAccV2), or its value at IoU 0.5 (version 1).
        protocol: every setting, JSON-ready.
    """

    thresholds: Tensor
    iou_thresholds: Tensor
    correct: Tensor
    box_accuracy: Tensor
    max_box_accuracy: Tensor
    best_threshold: Tensor
    value: float
    protocol: dict[str, Any] = field(default_factory=dict)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """``Tensor[A,B]`` float32: the IoU of every box of ``boxes1`` (``Tensor[A,4]``) with every box
    of ``boxes2`` (``Tensor[B,4]``), ``(x1, y1, x2, y2)`` with x2/y2 exclusive; 0 where the union
    is empty."""
    for name, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4:
            shape = list(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
            raise InvalidArgumentError(
                name, f"expected a Tensor[M,4] (x1, y1, x2, y2), got {shape}"
            )
    a, b = boxes1.double(), boxes2.double()
    area_a = ((a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0))[:, None]
    area_b = ((b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0))[None, :]
    low = torch.maximum(a[:, None, :2], b[None, :, :2])
    high = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (high - low).clamp(min=0).prod(dim=-1)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union)).float()


def _check_maps(maps: object, name: str = "maps", ndim: int = 3) -> Tensor:
    if not isinstance(maps, Tensor) or maps.ndim != ndim or not maps.is_floating_point():
        shape = (
            f"shape {list(maps.shape)}, dtype {maps.dtype}"
            if isinstance(maps, Tensor)
            else type(maps).__name__
        )
        want = "Tensor[N,H,W]" if ndim == 3 else "Tensor[N,k,H,W]"
        raise InvalidArgumentError(name, f"expected a float {want}, got {shape}")
    if not torch.isfinite(maps).all():
        raise InvalidArgumentError(name, "maps hold NaN or infinite values")
    return maps


def pointing_game(
    maps: Tensor, boxes: Sequence[Tensor] | Tensor, *, tolerance: int = POINTING_TOLERANCE
) -> PointingResult:
    """The pointing game: a hit when the map's maximum lies inside a ground-truth box of the class
    enlarged by ``tolerance`` pixels on every side (``x1 - t <= x < x2 + t``, same for y).

    Ties: when several pixels share the maximum, the first in raster order (row-major: the
    top-most, then left-most) is the point (``peaks`` counts them); a constant map points nowhere
    and counts as a miss.

    Args:
        maps: ``Tensor[N,H,W]`` float at the image's resolution; boxes: per image a
            ``Tensor[M_i,4]`` (x1, y1, x2, y2), at least one box.
    """
    maps = _check_maps(maps)
    n, _, width = maps.shape
    gt = check_boxes(boxes, n)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise InvalidArgumentError("tolerance", f"expected pixels >= 0, got {tolerance!r}")
    flat = maps.detach().float().cpu().flatten(1)
    top = flat.max(dim=1)
    peaks = (flat == top.values[:, None]).sum(dim=1)
    flat_constant = flat.min(dim=1).values == top.values
    index = top.indices  # the first maximum (torch.max documents it)
    xs, ys = index % width, index // width
    hits = []
    for i in range(n):
        b = gt[i]
        inside = (
            (b[:, 0] - tolerance <= xs[i]) & (xs[i] < b[:, 2] + tolerance)
            & (b[:, 1] - tolerance <= ys[i]) & (ys[i] < b[:, 3] + tolerance)
        )  # fmt: skip
        hits.append(bool(inside.any()) and not bool(flat_constant[i]))
    protocol = {
        "metric": "pointing_game", "paper": "Zhang et al. 2016", "tolerance_px": tolerance,
        "hit": "maximum inside a ground-truth box enlarged by the tolerance on every side",
        "ties": "first maximum in raster order; a constant map is a miss",
    }  # fmt: skip
    return PointingResult(torch.tensor(hits), torch.stack([xs, ys], dim=1), peaks, protocol)


def maps_to_boxes(maps: Tensor, threshold: float = DEFAULT_BOX_THRESHOLD) -> list[Box | None]:
    """The CAM paper's box of each map of ``Tensor[N,H,W]``: min-max normalise the map to [0, 1]
    (as camtool renders it), keep pixels at or above ``threshold`` (20%) of the maximum, and take
    the bounding box of the largest 8-connected component (:func:`camtool.boxes.cam_to_box`)."""
    check_box_threshold(threshold)
    normalised = normalize_maps(_check_maps(maps).detach().cpu())
    return [cam_to_box(m, threshold) for m in normalised]


def localization_error(
    maps: Tensor,
    classes: Tensor,
    labels: Tensor,
    boxes: Sequence[Tensor] | Tensor,
    *,
    threshold: float = DEFAULT_BOX_THRESHOLD,
    iou_threshold: float = IOU_THRESHOLD,
) -> LocalizationResult:
    """Top-1 and top-5 localization error as the CAM paper (ILSVRC's localization task) defines it.

    Each image's top-k predicted classes (``classes`` ``Tensor[N,k]`` int64, most probable first,
    k >= 1; top-5 needs k = 5) have maps (``maps`` ``Tensor[N,k,H,W]``); each map gives a box
    (:func:`maps_to_boxes`). Top-1 is correct when the first class is the ground-truth label
    (``labels`` ``Tensor[N]``) and its box has IoU >= 0.5 with some ground-truth box; top-5 when
    one of the k classes is the label and its box has IoU >= 0.5.
    """
    maps = _check_maps(maps, ndim=4)
    n, k = int(maps.shape[0]), int(maps.shape[1])
    if (
        not isinstance(classes, Tensor)
        or tuple(classes.shape) != (n, k)
        or classes.is_floating_point()
    ):
        got = list(classes.shape) if isinstance(classes, Tensor) else type(classes).__name__
        raise InvalidArgumentError(
            "classes", f"expected an int64 Tensor[{n},{k}] (top-k per image), got {got}"
        )
    if not isinstance(labels, Tensor) or tuple(labels.shape) != (n,) or labels.is_floating_point():
        got = list(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise InvalidArgumentError("labels", f"expected an int64 Tensor[{n}], got {got}")
    if not 0 < iou_threshold <= 1:
        raise InvalidArgumentError("iou_threshold", "expected a value in (0, 1]")
    gt = check_boxes(boxes, n)
    found = maps_to_boxes(maps.flatten(0, 1), threshold)
    ious = torch.zeros((n, k))
    for i in range(n):
        for j in range(k):
            box = found[i * k + j]
            if box is not None:
                ious[i, j] = box_iou(torch.tensor([box], dtype=torch.float32), gt[i]).max()
    hit = (classes.cpu() == labels.cpu()[:, None]) & (ious >= iou_threshold)
    protocol = {
        "metric": "localization_error", "paper": "Zhou et al. 2016 (CAM), ILSVRC", "k": k,
        "box": f"min-max normalised map >= {threshold} x max, largest 8-connected component",
        "box_threshold": threshold, "iou_threshold": iou_threshold,
        "top1": "top-1 class is the label and its box has IoU >= iou_threshold with a gt box",
        "top5": f"one of the top {k} classes is the label and its box has IoU >= iou_threshold",
    }  # fmt: skip
    boxes_out = tuple(tuple(found[i * k : (i + 1) * k]) for i in range(n))
    return LocalizationResult(hit[:, 0], hit.any(dim=1), ious, boxes_out, protocol)


def _component_boxes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``[C,4]`` (x1, y1, x2, y2) and pixel counts ``[C]`` of the 8-connected components."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    stats = stats[1:count]
    boxes = np.stack(
        [stats[:, 0], stats[:, 1], stats[:, 0] + stats[:, 2], stats[:, 1] + stats[:, 3]], axis=1
    )
    return boxes, stats[:, cv2.CC_STAT_AREA]


def max_box_accuracy(
    maps: Tensor,
    boxes: Sequence[Tensor] | Tensor,
    *,
    thresholds: Sequence[float] = MAXBOXACC_THRESHOLDS,
    iou_thresholds: Sequence[float] = MAXBOXACC_IOUS,
    version: int = 2,
) -> MaxBoxAccResult:
    """MaxBoxAcc (Choe et al., "Evaluating Weakly Supervised Object Localization Methods Right").

    Each map is min-max normalised to [0, 1]; at each threshold ``t`` the pixels above it
    (``> t``) form a mask; BoxAcc(t, d) is the fraction of images whose box(es) reach IoU >= d with
    a ground-truth box; MaxBoxAcc(d) is its maximum over ``t``.

    ``version=2`` (MaxBoxAccV2, the paper's recommendation, the default): the boxes of *all*
    8-connected components are candidates (the best match counts), and the result is the mean of
    MaxBoxAcc over the IoU thresholds 0.3, 0.5, 0.7. ``version=1``: the box of the largest
    component only, and the result is MaxBoxAcc at IoU 0.5 (``iou_thresholds`` then defaults to
    (0.5,)).

    Args:
        maps: ``Tensor[N,H,W]`` float; boxes: per image ``Tensor[M_i,4]``.
        thresholds: the map thresholds (default 0, 0.01, ..., 0.99).
    """
    maps = _check_maps(maps)
    n = int(maps.shape[0])
    gt = check_boxes(boxes, n)
    if version not in (1, 2):
        raise InvalidArgumentError("version", f"expected 1 or 2, got {version!r}")
    if version == 1 and tuple(iou_thresholds) == MAXBOXACC_IOUS:
        iou_thresholds = (IOU_THRESHOLD,)
    taus = tuple(float(t) for t in thresholds)
    if not taus or any(not 0 <= t < 1 for t in taus) or list(taus) != sorted(set(taus)):
        raise InvalidArgumentError("thresholds", "expected increasing thresholds in [0, 1)")
    deltas = check_fractions([d for d in iou_thresholds if d < 1], "iou_thresholds") + tuple(
        float(d) for d in iou_thresholds if d == 1
    )
    normalised = normalize_maps(maps.detach().cpu()).numpy()
    delta_t = torch.tensor(deltas, dtype=torch.float32)
    correct = torch.zeros((n, len(taus), len(deltas)), dtype=torch.bool)
    for i in range(n):
        for t, tau in enumerate(taus):
            mask = (normalised[i] > tau).astype(np.uint8)
            found, areas = _component_boxes(mask)
            if len(found) == 0:
                continue
            if version == 1:
                found = found[[int(np.argmax(areas))]]
            best = box_iou(torch.from_numpy(found).float(), gt[i]).max()
            correct[i, t] = best >= delta_t
    accuracy = correct.float().mean(dim=0)  # [T, D]
    best_value, best_index = accuracy.max(dim=0)
    thresholds_t = torch.tensor(taus, dtype=torch.float32)
    value = float(best_value.mean())
    protocol = {
        "metric": "max_box_accuracy", "paper": "Choe et al. 2020", "version": version,
        "map": "min-max normalised to [0, 1] per image", "mask": "normalised map > threshold",
        "thresholds": list(taus), "iou_thresholds": list(deltas),
        "boxes": "every 8-connected component (best match)" if version == 2
        else "largest 8-connected component",
        "value": "mean over iou_thresholds of the max over thresholds" if version == 2
        else "max over thresholds at IoU 0.5",
    }  # fmt: skip
    return MaxBoxAccResult(
        thresholds_t,
        delta_t,
        correct,
        accuracy,
        best_value,
        thresholds_t[best_index],
        value,
        protocol,
    )
