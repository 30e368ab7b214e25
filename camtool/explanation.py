"""One call from images to explained predictions: :func:`explain` and the :class:`Explanation`.

This is the notebook-facing layer: an :class:`Explanation` shows itself in Jupyter (overlay and
top-k table), and gives access to the predictions, raw CAMs, heatmaps, boxes, and ``save``.
"""

from __future__ import annotations

import base64
import difflib
import html
import operator
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, SupportsIndex, cast, overload

import torch
from torch import Tensor, nn

from camtool.cards import ModelCard, find_card, is_card_name
from camtool.errors import ClassSelectionError
from camtool.geometry import FeatureGeometry
from camtool.image import Region
from camtool.io import ImageSource, encode_image, load_image, save_image, source_name
from camtool.methods.base import DEFAULT_METHOD, Explainer, MapBatch, Method, bind
from camtool.models import DEFAULT_MODEL, LoadedModel, load_model
from camtool.render import (
    DEFAULT_SCALE,
    Box,
    cam_to_box,
    draw_box,
    draw_legend,
    labelled_grid,
    normalize_cams,
    overlay,
    scale_range,
    upsample_cams,
)

#: Maps per row in a comparison sheet; more wrap onto further rows.
SHEET_MAPS_PER_ROW = 4

ModelSpec = str | ModelCard | nn.Module | LoadedModel


@dataclass(frozen=True)
class ClassScore:
    """One class of one image: its index, name, softmax probability and logit."""

    index: int
    name: str
    probability: float
    logit: float


@dataclass(frozen=True, eq=False)
class Explanation:
    """The explained prediction of one image.

    Attributes:
        source: the input's path, or ``<Tensor>``/``<ndarray>``/... for in-memory images.
        image: ``Tensor[3,H,W]`` uint8 RGB, the input as loaded.
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
        if isinstance(which, str):
            for i, score in enumerate(self.explained):
                if score.name.lower() == which.lower():
                    return i
            raise ClassSelectionError(which, "is not one of the explained classes")
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
    ) -> Tensor:
        """Return the overlay of one explained class: ``Tensor[3,H,W]`` uint8 RGB.

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
        if mask is not None:
            result = draw_box(result, (x1, y1, x2, y2), (255, 255, 255), 1)
        found = self.boxes[i]
        if box and found is not None:
            result = draw_box(result, found)
        if legend:
            result = draw_legend(result, colormap, *self.legend_text(i, scale))
        return result

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
        return save_image(path, self.overlay(which, **options))

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

    def _repr_png_(self) -> bytes:
        picture = self.overlay(0, box=True) if self.explained else self.image
        return encode_image(picture, ".png")

    def _repr_html_(self) -> str:
        png = base64.b64encode(self._repr_png_()).decode("ascii")
        rows = "".join(
            f"<tr><td>{p.index}</td><td>{html.escape(p.name)}</td>"
            f"<td>{p.probability:.3f}</td><td>{p.logit:.2f}</td></tr>"
            for p in self.predictions
        )
        mapped = (
            f"{html.escape(self.method)} map of <b>{html.escape(self.explained[0].name)}</b> "
            f"({html.escape(self.model)}: {html.escape(self.head)}{residual_text(self.residual)})"
            if self.explained
            else f"({html.escape(self.model)}: {html.escape(self.head)})"
        )
        return (
            f"<div><img src='data:image/png;base64,{png}' style='max-width:480px'/>"
            f"<p>{html.escape(self.source)}: {mapped}</p><table><tr><th>class</th><th>name</th>"
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


@dataclass(frozen=True, eq=False)
class Picture:
    """An image to look at: ``image`` is ``Tensor[3,H,W]`` uint8 RGB; shows itself in Jupyter."""

    image: Tensor

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the picture (PNG, JPEG, ... by the suffix)."""
        return save_image(path, self.image)

    def _repr_png_(self) -> bytes:
        return encode_image(self.image, ".png")


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
            ex.overlay(i, alpha=alpha, colormap=colormap, box=box, scale=scale, legend=legend)
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


def resolve_class(spec: int | str | SupportsIndex, labels: Sequence[str]) -> int:
    """Return the class index for an index or a class name (any case).

    An index is anything integer-like (``int``, ``numpy.int64``, a one-element integer tensor:
    whatever has ``__index__``) or a string of digits; booleans and floats are refused.

    Raises:
        ClassSelectionError: an index out of range, an unknown name (with close names), or
            something that is neither an integer nor a string.
    """
    if not isinstance(spec, str):
        if isinstance(spec, bool) or type(spec).__name__ == "bool_" or _is_bool_tensor(spec):
            raise ClassSelectionError(spec, "a class is an integer index or a name, not a boolean")
        try:
            index = operator.index(spec)
        except TypeError:
            raise ClassSelectionError(
                spec, f"a class is an integer index or a name, not {type(spec).__name__}"
            ) from None
        return _checked_index(spec, index, labels)
    if spec.strip().isdigit():
        return _checked_index(spec, int(spec), labels)
    wanted = spec.strip().lower()
    lowered = [label.lower() for label in labels]
    if wanted in lowered:
        return lowered.index(wanted)
    close = difflib.get_close_matches(wanted, lowered, n=3, cutoff=0.6)
    hint = (
        f"; did you mean {', '.join(repr(labels[lowered.index(c)]) for c in close)}?"
        if close
        else ""
    )
    raise ClassSelectionError(spec, f"unknown class name{hint}")


def _is_bool_tensor(spec: object) -> bool:
    return isinstance(spec, torch.Tensor) and spec.dtype == torch.bool


def _checked_index(spec: object, index: int, labels: Sequence[str]) -> int:
    if not 0 <= index < len(labels):
        raise ClassSelectionError(spec, f"class index out of range 0..{len(labels) - 1}")
    return index


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
    classes: Sequence[int | str | SupportsIndex] | None = None,
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
    wanted = [resolve_class(c, loaded.labels) for c in classes] if classes else None
    explainer = bind(method, loaded, layer=layer, classifier=classifier, target=target)
    return BoundMethod(loaded, explainer, wanted)


@overload
def explain(
    images: list[ImageSource] | tuple[ImageSource, ...],
    model: ModelSpec | BoundMethod = ...,
    *,
    method: str | Method = ...,
    classes: Sequence[int | str | SupportsIndex] | None = ...,
    maps: int = ...,
    top_k: int = ...,
    crop: bool = ...,
    device: str | None = ...,
    labels: str | None = ...,
    weights: str | None = ...,
    layer: str | None = ...,
    classifier: str | None = ...,
    target: str | None = ...,
    dtype: str | None = ...,
    batch_size: int = ...,
    box_threshold: float = ...,
) -> list[Explanation]: ...


@overload
def explain(
    images: ImageSource,
    model: ModelSpec | BoundMethod = ...,
    *,
    method: str | Method = ...,
    classes: Sequence[int | str | SupportsIndex] | None = ...,
    maps: int = ...,
    top_k: int = ...,
    crop: bool = ...,
    device: str | None = ...,
    labels: str | None = ...,
    weights: str | None = ...,
    layer: str | None = ...,
    classifier: str | None = ...,
    target: str | None = ...,
    dtype: str | None = ...,
    batch_size: int = ...,
    box_threshold: float = ...,
) -> Explanation: ...


def explain(
    images: ImageSource | Sequence[ImageSource],
    model: ModelSpec | BoundMethod = DEFAULT_MODEL,
    *,
    method: str | Method = DEFAULT_METHOD,
    classes: Sequence[int | str | SupportsIndex] | None = None,
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
    box_threshold: float = 0.2,
) -> Explanation | list[Explanation]:
    """Explain one image or several: predictions, maps, heatmaps and boxes.

    Args:
        images: one image source (path, ``Tensor[3,H,W]``, numpy RGB array, PIL image) or a list.
        model: a model name (default: ``efficientnet_lite0``), card, ``nn.Module``, loaded model
            or :class:`BoundMethod` (which fixes method, classes and layers too).
        method: the method that makes the maps (``camtool.methods.method_names()``; default
            ``"auto"``: the first that can explain the model, exact methods first).
        classes: classes to map, by index (any integer-like) or name; default: the top ``maps``
            predictions.
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
        box_threshold: fraction of the map's maximum used for the CAM box.

    Returns:
        An :class:`Explanation` for a single source, else a list in the input order.
    """
    single = not isinstance(images, (list, tuple))
    sources: list[ImageSource] = [images] if single else list(cast(Sequence[ImageSource], images))
    bound = bind_method(
        model, method, classes, device=device, layer=layer, classifier=classifier,
        target=target, labels=labels, weights=weights, dtype=dtype,
    )  # fmt: skip
    loaded = bound.model
    pictures = [load_image(source) for source in sources]
    prepared = [loaded.preprocessing.prepare(picture, crop) for picture in pictures]
    results: list[Explanation | None] = [None] * len(sources)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (tensor, _) in enumerate(prepared):
        groups.setdefault(tuple(tensor.shape), []).append(i)
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            out = bound(torch.stack([prepared[i][0] for i in chunk]), maps)
            for row, i in enumerate(chunk):
                results[i] = build_explanation(
                    loaded, out, row, source_name(sources[i]), pictures[i], prepared[i][1],
                    top_k, box_threshold,
                )  # fmt: skip
    done = [r for r in results if r is not None]
    return done[0] if single else done


def build_explanation(
    model: LoadedModel,
    out: MapBatch,
    row: int,
    source: str,
    image: Tensor,
    region: Region,
    top_k: int = 5,
    box_threshold: float = 0.2,
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
    heatmaps = torch.zeros((cams.shape[0], height, width))
    if len(cams):  # a method that could not map this model gives predictions alone
        upsampled = upsample_cams(
            normalize_cams(cams), (input_hw[0], input_hw[1]), (y2 - y1, x2 - x1), out.geometry
        )
        heatmaps[:, y1:y2, x1:x2] = upsampled[:, : height - y1, : width - x1]
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
        boxes=tuple(cam_to_box(h, box_threshold) for h in heatmaps),
        residual=float(out.residual[row]) if out.residual is not None else None,
        region=region,
        input_hw=(input_hw[0], input_hw[1]),
        geometry=out.geometry,
    )
