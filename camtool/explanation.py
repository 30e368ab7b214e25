"""The result of explaining one image, whatever the method: :class:`Explanation` (predictions, raw
maps, heatmaps at the image's resolution, boxes; it shows itself in a notebook and saves its
overlays), built from a method's :class:`~camtool.methods.MapBatch` by
:func:`build_explanation` (the comparison sheet of several is :mod:`camtool.sheet`).
"""

from __future__ import annotations

import html
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from camtool.boxes import Box, draw_box_in_place, scaled_box, small_map_box
from camtool.errors import ClassSelectionError
from camtool.geometry import FeatureGeometry
from camtool.image import Region, enlarge, enlargement
from camtool.io.images import (
    save_image,
)
from camtool.labels import map_position
from camtool.methods.base import MapBatch
from camtool.models.loading import LoadedModel
from camtool.picture import Picture, figures_html
from camtool.render import (
    DEFAULT_SCALE,
    draw_legend,
    normalize_cams,
    overlay,
    placement,
    scale_range,
    upsample_cams,
)
from camtool.settings import DEFAULT_BOX_THRESHOLD, DEFAULT_UPSAMPLE
from camtool.sheet import comparison_sheet


@dataclass(frozen=True)
class ClassScore:
    """One class of one image: its ``index``, ``name`` (its label), softmax ``probability`` and
    ``logit``. The same four names are the keys of the JSON output and of an export's manifest."""

    index: int
    name: str
    probability: float
    logit: float


@dataclass(frozen=True, eq=False)
class Explanation:
    """The explained prediction of one image.

    Attributes:
        source: the input's path, or ``<Tensor>``/``<ndarray>``/... for in-memory images
            (``<Tensor>[2]``: the third image of a batch).
        image: ``Tensor[3,H,W]`` uint8 RGB, the input as loaded (for a ``preprocessed`` batch:
            the network's input, de-normalised, at the network's resolution).
        model: the model's name; ``made_from``: what the maps were computed from (for CAM, the
            head: feature map -> classifier; for Grad-CAM, the layer); ``method``: the method
            that made them (``"cam"``).
        predictions: the top-k classes, most probable first.
        explained: the classes that have maps, in the order of ``maps``/``heatmaps``/``boxes``.
        maps: ``Tensor[k,h,w]`` float32, the method's raw maps at feature resolution (for the
            exact methods ``maps[i].mean() + bias[i]`` equals the logit of ``explained[i]``).
        bias: ``Tensor[k]`` float32, the classifier bias of each explained class.
        heatmaps: ``Tensor[k,H,W]`` float32 in [0, 1] at the image's resolution (0 outside
            ``region``), each map normalised on its own (see :meth:`scaled_heatmaps` for one
            scale shared by all maps).
        boxes: per explained class, the CAM box ``(x1, y1, x2, y2)`` in image pixels, or None.
        residual: ``max |mean(CAM) + bias - logit|`` over all classes for this image; None for
            maps that do not decompose the logit.
        region: the part of the image the network saw (all of it unless cropped).
        input_hw: (height, width) of the network input.
        geometry: where the feature cells sit on that input (heatmaps are aligned with it
            when ``upsample`` is ``"placed"``).
        upsample: how the maps were resized to the image: ``"placed"`` (each cell at the centre
            of its receptive field) or ``"stretch"`` (the grid stretched over the image, as
            ``cv2.resize`` does); see :func:`camtool.render.upsample_cams`.
        class_agnostic: the method gives every class the same map (Eigen-CAM); every view of
            the maps says so.
    """

    source: str
    image: Tensor
    model: str
    made_from: str
    method: str
    predictions: tuple[ClassScore, ...]
    explained: tuple[ClassScore, ...]
    maps: Tensor
    bias: Tensor
    heatmaps: Tensor
    boxes: tuple[Box | None, ...]
    residual: float | None
    region: Region
    input_hw: tuple[int, int]
    geometry: FeatureGeometry
    upsample: str = DEFAULT_UPSAMPLE
    class_agnostic: bool = False

    @property
    def cams(self) -> Tensor:
        """Deprecated name of :attr:`maps` (which holds every method's maps, not only CAMs);
        warns once, and goes in the next release."""
        _deprecated("Explanation.cams", "Explanation.maps")
        return self.maps

    @property
    def head(self) -> str:
        """Deprecated name of :attr:`made_from`; warns once, and goes in the next release."""
        _deprecated("Explanation.head", "Explanation.made_from")
        return self.made_from

    def position(self, which: int | str | ClassScore | None = None) -> int:
        """The position in :attr:`explained` (and ``maps``, ``heatmaps``, ``boxes``) of a map.

        ``which`` is a class of ``explained`` (a :class:`ClassScore` of it, its name as
        ``--class`` takes it, or its class index), or a position (0: the first map; negative
        from the end); None: the first map. An integer that is both a position and an explained
        class's index is one map when they agree; when they name two maps it is refused.

        Raises:
            ClassSelectionError: a class that has no map; an integer that is neither; an
                ambiguous integer (the message names both maps).
        """
        if which is None:  # the first map
            which = self.explained[0] if self.explained else 0
        if isinstance(which, ClassScore):
            if which not in self.explained:
                shown = ", ".join(f"{s.index} ({s.name})" for s in self.explained) or "none"
                raise ClassSelectionError(which.name, f"has no map here (mapped: {shown})")
            return self.explained.index(which)
        mapped = [(s.index, s.name) for s in self.explained]
        return map_position(which, mapped, self.made_from)

    @property
    def overlay_scale(self) -> int:
        """How many times overlays are larger than :attr:`image` along each side: 1, or for an
        image whose shorter side is below :data:`camtool.image.MIN_OVERLAY_SIDE` px, the whole
        factor that brings it there (:func:`camtool.image.enlargement`)."""
        return enlargement(int(self.image.shape[1]), int(self.image.shape[2]))

    def scaled_heatmaps(self, scale: str = DEFAULT_SCALE) -> Tensor:
        """The heatmaps on one colour scale: ``Tensor[k,H,W]`` float32 in [0, 1].

        ``"per-map"`` is :attr:`heatmaps` (each map stretched to [0, 1] on its own); ``"joint"``
        maps the lowest value of all ``k`` raw maps to 0 and the highest to 1, so maps of
        several classes compare (for decompositions the raw maps are in logit units).
        """
        if scale == "per-map" or len(self.maps) < 2:
            scale_range(self.maps, scale)  # checks the name
            return self.heatmaps
        own_low, own_high = scale_range(self.maps, "per-map")
        low, high = scale_range(self.maps, scale)
        span = (high - low)[0]
        if span <= 0:
            return torch.zeros_like(self.heatmaps)
        # Upsampling commutes with an affine change of scale, so the per-map heatmaps can be
        # rescaled here instead of upsampling again: v = low_i + h * (high_i - low_i).
        factor = ((own_high - own_low) / span)[:, None, None]
        shift = ((own_low - low) / span)[:, None, None]
        x1, y1, x2, y2 = self.region.as_ints()
        scaled = torch.zeros_like(self.heatmaps)
        inside = self.heatmaps[:, y1:y2, x1:x2]
        scaled[:, y1:y2, x1:x2] = (inside * factor + shift).clamp_(0, 1)
        return scaled

    def value_range(
        self, which: int | str | ClassScore | None = None, scale: str = DEFAULT_SCALE
    ) -> tuple[float, float]:
        """The raw map values that the coolest and the hottest colour stand for, in the map's
        units (logit units for decompositions) on ``scale``."""
        i = self.position(which)
        low, high = scale_range(self.maps, scale)
        return float(low[i]), float(high[i])

    def overlay(
        self,
        which: int | str | ClassScore | None = None,
        alpha: float = 0.5,
        colormap: str = "jet",
        box: bool = False,
        scale: str = DEFAULT_SCALE,
        legend: bool = False,
        enlarge_tiny: bool = True,
    ) -> Picture:
        """Return the overlay of one explained class, a :class:`~camtool.picture.Picture` that
        shows itself in Jupyter; its ``tensor`` is ``Tensor[3,H,W]`` uint8 RGB, the image's size
        (an image whose shorter side is below :data:`camtool.image.MIN_OVERLAY_SIDE` px is
        enlarged :attr:`overlay_scale` times, each pixel a block, so that it can be seen).

        Args:
            which: the map: a class of ``explained`` (its ``ClassScore``, name or class index)
                or a position in it; default: the first map; see :meth:`position`.
            alpha: heatmap weight; colormap: a name from ``camtool.render.COLORMAPS``.
            box: draw the CAM box.
            scale: ``"joint"`` (one colour scale for all explained classes of this image) or
                ``"per-map"`` (each map stretched to the full colour range).
            legend: add a band below the image (``Tensor[3, H + legend_height(W), W]``, see
                :func:`camtool.render.legend_height`): the class and its probability, a colour
                bar and what its ends mean (for decompositions, their values in logit units).
            enlarge_tiny: enlarge a tiny image's overlay (False: the image's size, as videos keep).
        """
        i = self.position(which)
        height, width = int(self.image.shape[1]), int(self.image.shape[2])
        x1, y1, x2, y2 = self.region.as_ints()
        mask = None
        if (x1, y1, x2, y2) != (0, 0, width, height):
            mask = torch.zeros(self.image.shape[1:], dtype=torch.bool)
            mask[y1:y2, x1:x2] = True
        result = overlay(self.image, self.scaled_heatmaps(scale)[i], alpha, colormap, mask)
        factor = self.overlay_scale if enlarge_tiny else 1  # tiny: every pixel a visible block
        result = enlarge(result, factor)
        found = self.boxes[i]
        if mask is not None or (box and found is not None):
            canvas = result.permute(1, 2, 0).cpu().numpy()  # a fresh image: draw on it in place
            if not canvas.flags.c_contiguous:
                canvas = np.ascontiguousarray(canvas)
            if mask is not None:
                draw_box_in_place(canvas, scaled_box((x1, y1, x2, y2), factor), (255, 255, 255), 1)
            if box and found is not None:
                draw_box_in_place(canvas, scaled_box(found, factor))
            result = torch.from_numpy(canvas).permute(2, 0, 1).to(self.image.device)
        if legend:
            result = draw_legend(result, colormap, *self.legend_text(self.explained[i], scale))
        return Picture(result)

    def legend_text(
        self, which: int | str | ClassScore | None = None, scale: str = DEFAULT_SCALE
    ) -> tuple[str, ...]:
        """``(caption, meaning, low, high)`` of the legend of one overlay (see :meth:`overlay`)."""
        i = self.position(which)
        score = self.explained[i]
        caption = f"{score.name}: probability {score.probability:.2f} ({self.method})"
        if self.residual is not None:  # a decomposition: the colours are logit contributions
            low, high = self.value_range(score, scale)
            return (
                caption,
                f"contribution to {score.name} (logit units)",
                f"{low:.2f}",
                f"{high:.2f}",
            )
        shared = " with the other maps" if scale == "joint" and len(self.explained) > 1 else ""
        if self.class_agnostic:
            return (
                caption,
                f"{self.method} map, class-agnostic (any class), normalised",
                "low",
                "high",
            )
        return caption, f"{self.method} map of {score.name}, normalised{shared}", "low", "high"

    def sheet(
        self,
        alpha: float = 0.5,
        colormap: str = "jet",
        box: bool = False,
        scale: str = DEFAULT_SCALE,
        legend: bool = False,
    ) -> Picture:
        """The input beside the overlay of every explained class, captioned: "where does the
        model look for *dog* versus *cat*" in one picture (shows itself in Jupyter)."""
        return comparison_sheet(
            [self], alpha=alpha, colormap=colormap, box=box, scale=scale, legend=legend
        )

    def save(
        self,
        path: str | os.PathLike[str],
        which: int | str | ClassScore | None = None,
        **options: Any,
    ) -> Path:
        """Write the overlay of one explained class (see :meth:`overlay` for options) to ``path``."""
        return save_image(path, self.overlay(which, **options).tensor)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready summary: predictions, explained classes with boxes, model, method and
        what the maps were made from (``made_from``; also as ``head``, its old key, for one
        release)."""
        return {
            "input": self.source,
            "width": int(self.image.shape[2]),
            "height": int(self.image.shape[1]),
            "model": self.model,
            "method": self.method,
            "class_agnostic": self.class_agnostic,
            "made_from": self.made_from,
            "head": self.made_from,  # the old key, kept for one release
            "identity_residual": self.residual,
            "network_input": {"width": self.input_hw[1], "height": self.input_hw[0]},
            "feature_grid": {"width": int(self.maps.shape[-1]), "height": int(self.maps.shape[-2])},
            "upsample": self.upsample,
            "overlay_scale": self.overlay_scale,
            "predictions": [vars(p) for p in self.predictions],
            "explained": [
                {**vars(score), "box": list(box) if box else None}
                for score, box in zip(self.explained, self.boxes, strict=True)
            ],
        }

    def __repr__(self) -> str:
        """One short line: the input, its size, model, method and explained classes."""
        name = Path(self.source).name if not self.source.startswith("<") else "image"
        name = name if len(name) <= 32 else name[:31] + "~"
        head = (
            f"Explanation({name} {self.image.shape[2]}x{self.image.shape[1]}, "
            f"model {self.model}, method {self.method}, classes ["
        )
        items = [f"{s.index} {s.name} {s.probability:.2f}" for s in self.explained]
        shown = items[:1]
        for item in items[1:]:
            tail = ", ...])" if len(shown) + 2 < len(items) else "])"
            if len(head + ", ".join([*shown, item]) + tail) > 120:
                break
            shown.append(item)
        rest = ", ..." if len(shown) < len(items) else ""
        return head + ", ".join(shown) + rest + "])"

    def _repr_html_(self) -> str:
        """The notebook view: each explained class's overlay (with its box) captioned with the
        class and its probability, each picture embedded once; then the top-k table."""
        figures = [
            (self.overlay(s, box=True), f"{s.index} {s.name} {s.probability:.2f}")
            for s in self.explained
        ] or [(Picture(self.image), "input (no maps)")]
        rows = "".join(
            f"<tr><td>{p.index}</td><td>{html.escape(p.name)}</td>"
            f"<td>{p.probability:.3f}</td><td>{p.logit:.2f}</td></tr>"
            for p in self.predictions
        )
        name = self.source if not self.source.startswith("<") else "image"
        about = (
            f"{html.escape(name)} ({self.image.shape[2]}x{self.image.shape[1]}): "
            f"{html.escape(self.method)} maps, {html.escape(self.model)}: "
            f"{html.escape(self.made_from)}{residual_text(self.residual)}"
        )
        return (
            f"<div>{figures_html(figures)}<p>{about}</p><table><tr><th>class</th><th>name</th>"
            f"<th>probability</th><th>logit</th></tr>{rows}</table></div>"
        )


_WARNED: set[str] = set()


def _deprecated(old: str, new: str) -> None:
    """Warn once per process that ``old`` is deprecated in favour of ``new``."""
    if old not in _WARNED:
        _WARNED.add(old)
        warnings.warn(
            f"{old} is deprecated and goes in the next release; use {new}",
            DeprecationWarning,
            stacklevel=3,
        )


def describe_maps(ex: Explanation, verbose: bool = False) -> list[str]:
    """What an explanation's maps are, in plain sentences (what ``camtool explain`` prints).

    The feature grid and network input are this image's own. ``verbose`` adds the technical
    detail: what the method bound to (head or layer, as found on a probe image), the identity
    residual of decompositions, the network input.
    """
    if not ex.explained:
        return [f"No maps: {ex.made_from.removeprefix('no maps: ')}"]
    names = ", ".join(s.name for s in ex.explained)
    grid_h, grid_w = int(ex.maps.shape[-2]), int(ex.maps.shape[-1])
    kind = (
        "an exact decomposition of the class score"
        if ex.residual is not None
        else "not a decomposition of the class score"
    )
    subject = f"{'Map' if len(ex.explained) == 1 else 'Maps'} of {names}"
    if ex.class_agnostic:  # the same map for every class: say so
        verb = "gets" if len(ex.explained) == 1 else "get"
        subject = f"One map for every class (class-agnostic: {names} {verb} the same map)"
    lines = [
        f"{subject} made by {ex.method} ({kind}) on a grid of {grid_w}x{grid_h} feature "
        "cells, upsampled to the image."
    ]
    if verbose:
        lines.append(f"  method: {ex.method}: {ex.made_from}")
        lines.append(
            f"  network input: {ex.input_hw[1]}x{ex.input_hw[0]} px, feature grid "
            f"{grid_w}x{grid_h} (width x height)"
        )
        if ex.residual is not None:
            lines.append(
                f"  identity residual on this image: {ex.residual:.1e} "
                "(max |mean(map) + bias - logit| over all classes)"
            )
    return lines


def residual_text(residual: float | None) -> str:
    """``", identity residual 1.2e-06"`` for decompositions, ``""`` for other maps."""
    return "" if residual is None else f", identity residual {residual:.1e}"


def _moved(box: Box, dx: int, dy: int, width: int, height: int) -> Box:
    """``box`` moved by ``(dx, dy)`` and cut to a ``width`` x ``height`` image."""
    return box[0] + dx, box[1] + dy, min(box[2] + dx, width), min(box[3] + dy, height)


def build_explanation(
    model: LoadedModel,
    out: MapBatch,
    row: int,
    source: str,
    image: Tensor,
    region: Region,
    top_k: int = 5,
    box_threshold: float = DEFAULT_BOX_THRESHOLD,
    upsample: str = DEFAULT_UPSAMPLE,
) -> Explanation:
    """Turn row ``row`` of a :class:`~camtool.methods.MapBatch` into the :class:`Explanation` of
    ``image`` (``Tensor[3,H,W]`` uint8): scores, heatmaps at image resolution (resized as
    ``upsample`` says, see :func:`camtool.render.upsample_cams`), boxes."""
    input_hw = out.input_hw
    logits = out.logits[row].cpu()
    probs = logits.softmax(-1)

    def score(index: int) -> ClassScore:
        return ClassScore(index, model.labels[index], float(probs[index]), float(logits[index]))

    top = logits.topk(max(1, min(top_k, logits.numel()))).indices.tolist()
    cams = out.maps[row].cpu().clone()  # a normal tensor, not an inference-mode one
    x1, y1, x2, y2 = region.as_ints()
    height, width = image.shape[1:]
    heatmaps = torch.zeros((0, height, width))
    boxes: list[Box | None] = []
    net_hw = (int(input_hw[0]), int(input_hw[1]))
    placed = placement(upsample, out.geometry, net_hw, (int(cams.shape[-2]), int(cams.shape[-1])))
    if len(cams):  # a method that could not map this model gives predictions alone
        normalised = normalize_cams(cams)
        upsampled = upsample_cams(normalised, net_hw, (y2 - y1, x2 - x1), placed, "placed")
        if (x1, y1, x2, y2) == (0, 0, width, height):  # the whole image: no copy
            heatmaps = upsampled
        else:
            heatmaps = torch.zeros((cams.shape[0], height, width))
            heatmaps[:, y1:y2, x1:x2] = upsampled[:, : height - y1, : width - x1]
        for cam in normalised:  # the box of each heatmap, from a small map (same box, faster)
            found = small_map_box(cam, net_hw, (y2 - y1, x2 - x1), placed, box_threshold)
            boxes.append(None if found is None else _moved(found, x1, y1, width, height))
    return Explanation(
        source=source,
        image=image,
        model=model.name,
        made_from=out.summary,
        method=out.method,
        predictions=tuple(score(i) for i in top),
        explained=tuple(score(int(i)) for i in out.classes[row].tolist()),
        maps=cams,
        bias=out.bias[row].cpu().clone() if out.bias is not None else torch.zeros(len(cams)),
        heatmaps=heatmaps,
        boxes=tuple(boxes),
        residual=float(out.residual[row]) if out.residual is not None else None,
        region=region,
        input_hw=(input_hw[0], input_hw[1]),
        geometry=out.geometry,
        upsample=upsample,
        class_agnostic=out.class_agnostic,
    )
