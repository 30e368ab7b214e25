"""One call from images to explained predictions: :func:`explain` and the :class:`Explanation`.

This is the notebook-facing layer: an :class:`Explanation` shows itself in Jupyter (the overlay of
every explained class, captioned, and the top-k table), and gives access to the predictions, raw
CAMs, heatmaps, boxes, and ``save``.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypedDict, Unpack, overload

import numpy as np
import torch
from torch import Tensor, nn

from camtool.boxes import Box, draw_box_in_place, small_map_box
from camtool.errors import ClassSelectionError, InvalidArgumentError
from camtool.geometry import FeatureGeometry
from camtool.image import Layout, Region
from camtool.io.images import (
    Images,
    ImageSource,
    NamedImage,
    gather_images,
    preprocessed_batch,
    save_image,
    source_name,
)
from camtool.labels import ClassesArg, label_index, resolve_classes
from camtool.methods.base import DEFAULT_METHOD, Explainer, MapBatch, Method, bind
from camtool.models.cards import ModelCard, find_card, is_card_name
from camtool.models.loading import DEFAULT_MODEL, LoadedModel, load_model
from camtool.picture import Picture, figures_html
from camtool.render import (
    DEFAULT_SCALE,
    draw_legend,
    labelled_grid,
    normalize_cams,
    overlay,
    scale_range,
    upsample_cams,
)
from camtool.settings import DEFAULT_BOX_THRESHOLD, check_box_threshold, check_positive_int

#: Maps per row in a comparison sheet; more wrap onto further rows.
SHEET_MAPS_PER_ROW = 4

ModelSpec = str | ModelCard | nn.Module | LoadedModel


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
        model: the model's name; ``head``: what the maps were computed from (for CAM, the head:
            feature map -> classifier); ``method``: the method that made them (``"cam"``).
        predictions: the top-k classes, most probable first.
        explained: the classes that have maps, in the order of ``cams``/``heatmaps``/``boxes``.
        cams: ``Tensor[k,h,w]`` float32 raw CAMs at feature resolution: ``cams[i].mean() +
            bias[i]`` equals the logit of ``explained[i]``.
        bias: ``Tensor[k]`` float32, the classifier bias of each explained class.
        heatmaps: ``Tensor[k,H,W]`` float32 in [0, 1] at the image's resolution (0 outside
            ``region``), each map normalised on its own (see :meth:`scaled_heatmaps` for one
            scale shared by all maps).
        boxes: per explained class, the CAM box ``(x1, y1, x2, y2)`` in image pixels, or None.
        residual: ``max |mean(CAM) + bias - logit|`` over all classes for this image; None for
            maps that do not decompose the logit.
        region: the part of the image the network saw (all of it unless cropped).
        input_hw: (height, width) of the network input.
        geometry: where the feature cells sit on that input (heatmaps are aligned with it).
    """

    source: str
    image: Tensor
    model: str
    head: str
    method: str
    predictions: tuple[ClassScore, ...]
    explained: tuple[ClassScore, ...]
    cams: Tensor
    bias: Tensor
    heatmaps: Tensor
    boxes: tuple[Box | None, ...]
    residual: float | None
    region: Region
    input_hw: tuple[int, int]
    geometry: FeatureGeometry

    def _position(self, which: int | str) -> int:
        if isinstance(which, str):  # a label as --class takes it: exact, any case, or slug
            found = label_index(which, [score.name for score in self.explained])
            if found is None:
                raise ClassSelectionError(which, "is not one of the explained classes")
            return found
        if not -len(self.explained) <= which < len(self.explained):
            raise ClassSelectionError(which, f"only {len(self.explained)} classes were explained")
        return which

    def scaled_heatmaps(self, scale: str = DEFAULT_SCALE) -> Tensor:
        """The heatmaps on one colour scale: ``Tensor[k,H,W]`` float32 in [0, 1].

        ``"per-map"`` is :attr:`heatmaps` (each map stretched to [0, 1] on its own); ``"joint"``
        maps the lowest value of all ``k`` raw maps to 0 and the highest to 1, so maps of
        several classes compare (for decompositions the raw maps are in logit units).
        """
        if scale == "per-map" or len(self.cams) < 2:
            scale_range(self.cams, scale)  # checks the name
            return self.heatmaps
        own_low, own_high = scale_range(self.cams, "per-map")
        low, high = scale_range(self.cams, scale)
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

    def value_range(self, which: int | str = 0, scale: str = DEFAULT_SCALE) -> tuple[float, float]:
        """The raw map values that the coolest and the hottest colour stand for, in the map's
        units (logit units for decompositions) on ``scale``."""
        i = self._position(which)
        low, high = scale_range(self.cams, scale)
        return float(low[i]), float(high[i])

    def overlay(
        self,
        which: int | str = 0,
        alpha: float = 0.5,
        colormap: str = "jet",
        box: bool = False,
        scale: str = DEFAULT_SCALE,
        legend: bool = False,
    ) -> Picture:
        """Return the overlay of one explained class, a :class:`~camtool.picture.Picture` that
        shows itself in Jupyter; its ``tensor`` is ``Tensor[3,H,W]`` uint8 RGB, the image's size.

        Args:
            which: position in ``explained`` (0: the first) or the class's name.
            alpha: heatmap weight; colormap: a name from ``camtool.render.COLORMAPS``.
            box: draw the CAM box.
            scale: ``"joint"`` (one colour scale for all explained classes of this image) or
                ``"per-map"`` (each map stretched to the full colour range).
            legend: add a band below the image (``Tensor[3, H + legend_height(W), W]``, see
                :func:`camtool.render.legend_height`): the class and its probability, a colour
                bar and what its ends mean (for decompositions, their values in logit units).
        """
        i = self._position(which)
        x1, y1, x2, y2 = self.region.as_ints()
        mask = None
        if (x1, y1, x2, y2) != (0, 0, self.image.shape[2], self.image.shape[1]):
            mask = torch.zeros(self.image.shape[1:], dtype=torch.bool)
            mask[y1:y2, x1:x2] = True
        result = overlay(self.image, self.scaled_heatmaps(scale)[i], alpha, colormap, mask)
        found = self.boxes[i]
        if mask is not None or (box and found is not None):
            canvas = result.permute(1, 2, 0).cpu().numpy()  # a fresh image: draw on it in place
            if not canvas.flags.c_contiguous:
                canvas = np.ascontiguousarray(canvas)
            if mask is not None:
                draw_box_in_place(canvas, (x1, y1, x2, y2), (255, 255, 255), 1)
            if box and found is not None:
                draw_box_in_place(canvas, found)
            result = torch.from_numpy(canvas).permute(2, 0, 1).to(self.image.device)
        if legend:
            result = draw_legend(result, colormap, *self.legend_text(i, scale))
        return Picture(result)

    def legend_text(self, which: int | str = 0, scale: str = DEFAULT_SCALE) -> tuple[str, ...]:
        """``(caption, meaning, low, high)`` of the legend of one overlay (see :meth:`overlay`)."""
        i = self._position(which)
        score = self.explained[i]
        caption = f"{score.name}: probability {score.probability:.2f} ({self.method})"
        if self.residual is not None:  # a decomposition: the colours are logit contributions
            low, high = self.value_range(i, scale)
            return (
                caption,
                f"contribution to {score.name} (logit units)",
                f"{low:.2f}",
                f"{high:.2f}",
            )
        shared = " with the other maps" if scale == "joint" and len(self.explained) > 1 else ""
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

    def save(self, path: str | os.PathLike[str], which: int | str = 0, **options: Any) -> Path:
        """Write the overlay of one explained class (see :meth:`overlay` for options) to ``path``."""
        return save_image(path, self.overlay(which, **options).tensor)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready summary: predictions, explained classes with boxes, model, head."""
        return {
            "input": self.source,
            "width": int(self.image.shape[2]),
            "height": int(self.image.shape[1]),
            "model": self.model,
            "method": self.method,
            "head": self.head,
            "identity_residual": self.residual,
            "network_input": {"width": self.input_hw[1], "height": self.input_hw[0]},
            "feature_grid": {"width": int(self.cams.shape[-1]), "height": int(self.cams.shape[-2])},
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
            (self.overlay(i, box=True), f"{s.index} {s.name} {s.probability:.2f}")
            for i, s in enumerate(self.explained)
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
            f"{html.escape(self.head)}{residual_text(self.residual)}"
        )
        return (
            f"<div>{figures_html(figures)}<p>{about}</p><table><tr><th>class</th><th>name</th>"
            f"<th>probability</th><th>logit</th></tr>{rows}</table></div>"
        )


def describe_maps(ex: Explanation, verbose: bool = False) -> list[str]:
    """What an explanation's maps are, in plain sentences (what ``camtool explain`` prints).

    The feature grid and network input are this image's own. ``verbose`` adds the technical
    detail: what the method bound to (head or layer, as found on a probe image), the identity
    residual of decompositions, the network input.
    """
    if not ex.explained:
        return [f"No maps: {ex.head.removeprefix('no maps: ')}"]
    names = ", ".join(s.name for s in ex.explained)
    grid_h, grid_w = int(ex.cams.shape[-2]), int(ex.cams.shape[-1])
    kind = (
        "an exact decomposition of the class score"
        if ex.residual is not None
        else "not a decomposition of the class score"
    )
    noun = "Map" if len(ex.explained) == 1 else "Maps"
    lines = [
        f"{noun} of {names} made by {ex.method} ({kind}) on a grid of {grid_w}x{grid_h} "
        f"feature cells, upsampled to the image."
    ]
    if verbose:
        lines.append(f"  method: {ex.method}: {ex.head}")
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


def comparison_sheet(
    explanations: Sequence[Explanation],
    alpha: float = 0.5,
    colormap: str = "jet",
    box: bool = False,
    scale: str = DEFAULT_SCALE,
    legend: bool = False,
) -> Picture:
    """One row per explanation (per model or per method, say), each the input and its classes'
    overlays; an explanation with more than :data:`SHEET_MAPS_PER_ROW` maps wraps onto further
    rows (under a blank cell where the input is).

    Captions name the model and the method (when they differ between rows), the class and its
    probability. ``scale`` and ``legend`` are as for :meth:`Explanation.overlay`.
    """
    models = len({ex.model for ex in explanations}) > 1
    methods = len({ex.method for ex in explanations}) > 1
    tiles: list[Tensor] = []
    captions: list[str] = []
    per_row = min(SHEET_MAPS_PER_ROW, max(len(ex.explained) for ex in explanations))
    for ex in explanations:
        who = ": ".join([ex.model] * models + [ex.method] * methods)
        overlays = [
            ex.overlay(
                i, alpha=alpha, colormap=colormap, box=box, scale=scale, legend=legend
            ).tensor
            for i in range(len(ex.explained))
        ]
        names = [f"{who}: {s.name} {s.probability:.2f}" if who else f"{s.name} {s.probability:.2f}"
                 for s in ex.explained]  # fmt: skip
        blank = torch.full_like(ex.image, 255)
        for start in range(0, max(1, len(overlays)), max(1, per_row)):
            first = start == 0
            row = [ex.image if first else blank, *overlays[start : start + per_row]]
            text = [(f"{who}: input" if who else Path(ex.source).name) if first else ""]
            text += names[start : start + per_row]
            tiles += row + [blank] * (1 + per_row - len(row))
            captions += text + [""] * (1 + per_row - len(text))
    return Picture(labelled_grid(tiles, captions, 1 + per_row))


@lru_cache(maxsize=4)
def _cached_model(
    spec: str, stamps: tuple[int, ...], options: tuple[tuple[str, Any], ...]
) -> LoadedModel:
    return load_model(spec, **dict(options))


def _file_stamp(path: str | os.PathLike[str] | None) -> int:
    try:
        return Path(path).stat().st_mtime_ns if path else 0
    except OSError:
        return 0


def get_model(model: ModelSpec, device: str | None = "auto", **options: Any) -> LoadedModel:
    """Return a loaded model, as :func:`camtool.load_model` (same options).

    Models named by a string are cached, keyed by the name, the options and the modification
    times of the card and weights files, so repeated calls in a notebook do not reload them.
    """
    if not isinstance(model, str):
        return load_model(model, device=device, **options)
    card = find_card(model) if model.endswith(".toml") or is_card_name(model) else None
    stamps = (_file_stamp(card.path if card else model), _file_stamp(options.get("weights")))
    key = tuple(sorted({**options, "device": str(device)}.items()))
    return _cached_model(model, stamps, key)


@dataclass(frozen=True, eq=False)
class BoundMethod:
    """What every entry point starts from: a loaded model, a method bound to it, and the classes
    to map resolved to indices (None: each image's top predictions)."""

    model: LoadedModel
    explainer: Explainer
    classes: list[int] | None

    def __call__(self, batch: Tensor, maps: int = 1) -> MapBatch:
        """Map a preprocessed ``Tensor[N,3,h,w]`` batch: the fixed classes, else the top ``maps``."""
        return self.explainer(batch, self.classes, maps=maps)


def bind_method(
    model: ModelSpec | BoundMethod = DEFAULT_MODEL,
    method: str | Method = DEFAULT_METHOD,
    classes: ClassesArg = None,
    *,
    device: str | None = "auto",
    layer: str | None = None,
    classifier: str | None = None,
    target: str | None = None,
    **load_options: Any,
) -> BoundMethod:
    """Load ``model`` (cached, see :func:`get_model`), resolve ``classes`` against its labels and
    bind ``method`` to it (``layer``/``classifier`` override the method's discovery; ``target``
    is the score explained, see :func:`camtool.methods.bind`). A :class:`BoundMethod` is
    returned as it is (the other arguments are then ignored).

    Raises:
        camtool's typed errors: an unknown model, method or class; a model the method cannot
        explain (``UnsupportedModelError``, with the reason).
    """
    if isinstance(model, BoundMethod):
        return model
    loaded = get_model(model, device, **load_options)
    wanted = resolve_classes(classes, loaded.labels)
    explainer = bind(method, loaded, layer=layer, classifier=classifier, target=target)
    return BoundMethod(loaded, explainer, wanted)


class ExplainOptions(TypedDict, total=False):
    """The keyword options of :func:`explain` (one list for all its call forms)."""

    method: str | Method
    classes: ClassesArg
    maps: int
    top_k: int
    crop: bool
    device: str | None
    labels: str | None
    weights: str | None
    layer: str | None
    classifier: str | None
    target: str | None
    dtype: str | None
    batch_size: int
    box_threshold: float
    layout: Layout | None
    preprocessed: bool


@overload
def explain(
    images: list[ImageSource] | tuple[ImageSource, ...],
    model: ModelSpec | BoundMethod = ...,
    **options: Unpack[ExplainOptions],
) -> list[Explanation]: ...


@overload
def explain(
    images: Tensor | np.ndarray[Any, Any],
    model: ModelSpec | BoundMethod = ...,
    **options: Unpack[ExplainOptions],
) -> Any: ...  # one image: an Explanation; a batch: a list of them


@overload
def explain(
    images: ImageSource,
    model: ModelSpec | BoundMethod = ...,
    **options: Unpack[ExplainOptions],
) -> Explanation: ...


def explain(
    images: Images,
    model: ModelSpec | BoundMethod = DEFAULT_MODEL,
    *,
    method: str | Method = DEFAULT_METHOD,
    classes: ClassesArg = None,
    maps: int = 1,
    top_k: int = 5,
    crop: bool = False,
    device: str | None = "auto",
    labels: str | None = None,
    weights: str | None = None,
    layer: str | None = None,
    classifier: str | None = None,
    target: str | None = None,
    dtype: str | None = None,
    batch_size: int = 16,
    box_threshold: float = DEFAULT_BOX_THRESHOLD,
    layout: Layout | None = None,
    preprocessed: bool = False,
) -> Explanation | list[Explanation]:
    """Explain one image or several: predictions, maps, heatmaps and boxes.

    Args:
        images: one image: a path, a PIL image, or a tensor or numpy array ``[3,H,W]``,
            ``[H,W,3]`` or ``[H,W]`` (uint8, or float in [0, 1]); a list of images; or a batch,
            ``Tensor[N,3,H,W]`` or ``[N,H,W,3]`` (tensor or array), whose images are explained
            together (one forward pass per ``batch_size`` images).
        model: a model name (default: ``efficientnet_lite0``), card, ``nn.Module``, loaded model
            or :class:`BoundMethod` (which fixes method, classes and layers too).
        method: the method that makes the maps (``camtool.methods.method_names()``; default
            ``"auto"``: the first that can explain the model, exact methods first).
        classes: the classes to map: one class (an index, any integer-like, or a name) or several
            (a list, tuple or 1-D integer array/tensor of them; see
            :func:`camtool.labels.resolve_classes`); default: the top ``maps`` predictions.
        maps: how many top classes to map when ``classes`` is not given.
        top_k: how many predictions to report.
        crop: centre-crop like the classic evaluation transform instead of using the whole image.
        device: ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"``.
        labels: a label file overriding the model's class names.
        weights, dtype: as for :func:`camtool.load_model`.
        layer, classifier: module names that override the method's discovery.
        target: the score the maps explain, ``"logit"`` or ``"probability"`` (default: the
            method's own, the class logit except for Score-CAM; the exact methods decompose
            the logit and refuse ``"probability"``).
        batch_size: images per forward pass (images of equal input size are batched together).
        box_threshold: fraction of the map's maximum used for the CAM box, 0 < t < 1 (default
            0.2, the CAM paper's).
        layout: ``"CHW"`` or ``"HWC"``: where in-memory images keep their channels. By default
            the shape tells (the axis of length 1, 3 or 4); a shape that cannot tell (``[3,H,3]``)
            is refused with a request for ``layout``.
        preprocessed: ``images`` is already the network's input: a float ``Tensor[N,3,h,w]`` (or
            ``[3,h,w]``) resized and normalised as the model's preprocessing does
            (``model.preprocessing.prepare``). It goes into the network as it is (``crop`` does not
            apply); each explanation's ``image`` and overlays show it de-normalised, at the
            network's resolution.

    Returns:
        An :class:`Explanation` for one image, else a list in the input order (a batch's order).

    Raises:
        ImageReadError: an image that cannot be read or has a shape that is no image (the message
            names the argument, ``images`` or ``images[i]``, and the shape); InvalidArgumentError:
            a ``preprocessed`` batch of the wrong shape or dtype; and the errors of
            :func:`bind_method`.
    """
    check_box_threshold(box_threshold)
    check_positive_int(batch_size, "batch_size")
    bound = bind_method(
        model, method, classes, device=device, layer=layer, classifier=classifier,
        target=target, labels=labels, weights=weights, dtype=dtype,
    )  # fmt: skip
    loaded = bound.model
    if preprocessed:
        if crop:
            raise InvalidArgumentError("crop", "a preprocessed batch goes in as it is: no crop")
        batch, single = preprocessed_batch(images, loaded.preprocessing)
        name = source_name(images)
        height, width = batch.shape[2:]
        inputs = [
            NamedImage(name if single else f"{name}[{i}]", loaded.preprocessing.denormalize(x))
            for i, x in enumerate(batch)
        ]
        prepared = [(x, Region(0.0, 0.0, float(width), float(height))) for x in batch]
    else:
        inputs, single = gather_images(images, layout)
        prepared = [loaded.preprocessing.prepare(item.image, crop) for item in inputs]
    results: list[Explanation | None] = [None] * len(inputs)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (tensor, _) in enumerate(prepared):
        groups.setdefault(tuple(tensor.shape), []).append(i)
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            out = bound(torch.stack([prepared[i][0] for i in chunk]), maps)
            for row, i in enumerate(chunk):
                results[i] = build_explanation(
                    loaded, out, row, inputs[i].name, inputs[i].image, prepared[i][1],
                    top_k, box_threshold,
                )  # fmt: skip
    done = [r for r in results if r is not None]
    return done[0] if single else done


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
) -> Explanation:
    """Turn row ``row`` of a :class:`~camtool.methods.MapBatch` into the :class:`Explanation` of
    ``image`` (``Tensor[3,H,W]`` uint8): scores, heatmaps at image resolution, boxes."""
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
    if len(cams):  # a method that could not map this model gives predictions alone
        normalised = normalize_cams(cams)
        upsampled = upsample_cams(
            normalised, (input_hw[0], input_hw[1]), (y2 - y1, x2 - x1), out.geometry
        )
        if (x1, y1, x2, y2) == (0, 0, width, height):  # the whole image: no copy
            heatmaps = upsampled
        else:
            heatmaps = torch.zeros((cams.shape[0], height, width))
            heatmaps[:, y1:y2, x1:x2] = upsampled[:, : height - y1, : width - x1]
        for cam in normalised:  # the box of each heatmap, from a small map (same box, faster)
            found = small_map_box(
                cam, (input_hw[0], input_hw[1]), (y2 - y1, x2 - x1), out.geometry, box_threshold
            )
            boxes.append(None if found is None else _moved(found, x1, y1, width, height))
    return Explanation(
        source=source,
        image=image,
        model=model.name,
        head=out.summary,
        method=out.method,
        predictions=tuple(score(i) for i in top),
        explained=tuple(score(int(i)) for i in out.classes[row].tolist()),
        cams=cams,
        bias=out.bias[row].cpu().clone() if out.bias is not None else torch.zeros(len(cams)),
        heatmaps=heatmaps,
        boxes=tuple(boxes),
        residual=float(out.residual[row]) if out.residual is not None else None,
        region=region,
        input_hw=(input_hw[0], input_hw[1]),
        geometry=out.geometry,
    )
