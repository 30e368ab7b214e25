"""Measuring one batch of an evaluation: each method's maps of the batch's images (one seam call per
method), then every measure on them (faithfulness curves and scores; with boxes, localization),
as one journal record per image. :class:`EvalRun` is what a running evaluation holds;
:func:`forward_passes_per_image` what measuring one image costs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from camtool.errors import (
    CamtoolError,
)
from camtool.image import resize_image
from camtool.inputs import ExportFailure, InputItem
from camtool.io.images import load_image
from camtool.journal import (
    image_record,
)
from camtool.metrics.annotations import AnnotationError, GroundTruthBox, fit_to_image
from camtool.metrics.perturbation import RISE_STEPS
from camtool.models.loading import LoadedModel


@dataclass
class EvalRun:
    """What one evaluation needs at hand while it runs."""

    model: LoadedModel
    methods: list[str]
    metrics: list[str]
    size: int
    steps: int | None
    road_percentages: tuple[float, ...]
    box_threshold: float
    batch_size: int
    boxes: dict[str, list[GroundTruthBox]] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)
    rescale_boxes: bool = False
    upsample: str = "placed"
    #: {resolved image path: {"from": declared [w, h], "to": real [w, h]}} of rescaled images.
    rescaled: dict[str, dict[str, list[int]]] = field(default_factory=dict)


#: Per image and method, its map (``Tensor[S,S]`` float32 at the evaluation's size) by method.
ImageMaps = dict[str, Tensor]


def forward_passes_per_image(run: EvalRun, boxed: bool) -> int:
    """The forward passes (one image through the network) that measuring one image costs, as
    :func:`measured_batches` runs them: the unperturbed image once; per method its maps (one
    pass, or what the explainer says: ``forward_passes_per_image``, Score-CAM's ``1 + C``), and
    the perturbed copies of each metric (deletion ``S``, insertion ``S + 1``, ROAD two per
    percentage, Average Drop two); with boxes (``boxed``) the localization error maps the top 5
    classes too. A batch adds a few shared passes (deletion's all-black image, Score-CAM's blank
    input); Score-CAM's shared masks take fewer."""
    pixels = run.size * run.size
    step = math.ceil(pixels / (run.steps or RISE_STEPS))
    steps = len(range(0, pixels, step))
    perturbed = {
        "deletion": steps, "insertion": steps + 1, "road": 2 * len(run.road_percentages),
        "average_drop": 2,
    }  # fmt: skip
    metrics = sum(perturbed.get(m, 0) for m in run.metrics)
    classes = min(5, len(run.model.labels)) if boxed and "localization" in run.metrics else 0
    total = 1
    for source in run.sources.values():
        explainer = getattr(source, "explainer", None)
        maps = int(getattr(explainer, "forward_passes_per_image", 1))
        total += maps * (1 + classes) + metrics
    return total


def measured_batches(
    run: EvalRun, items: list[InputItem]
) -> Iterator[tuple[list[dict[str, Any]], list[tuple[ExportFailure, InputItem]], list[ImageMaps]]]:
    """Decode, squeeze and measure ``items`` a batch at a time: ``(records, failures, maps)``
    each, ``maps`` the maps the records were measured on (one :data:`ImageMaps` per record)."""
    for begin in range(0, len(items), run.batch_size):
        chunk = items[begin : begin + run.batch_size]
        ready: list[tuple[InputItem, Tensor, tuple[int, int], list[list[float]]]] = []
        bad: list[tuple[ExportFailure, InputItem]] = []
        for item in chunk:
            try:
                image = load_image(item.path)
                height, width = int(image.shape[1]), int(image.shape[2])
                annotated = run.boxes.get(item.resolved, [])
                boxes = [
                    list(fit_to_image(b, (width, height), run.rescale_boxes)) for b in annotated
                ]
                sizes = {b.size for b in annotated} - {None, (width, height)}
                if sizes:  # only with rescale_boxes: else fit_to_image refused
                    declared = min(s for s in sizes if s is not None)
                    run.rescaled[item.resolved] = {"from": list(declared), "to": [width, height]}
            except AnnotationError as exc:
                bad.append((ExportFailure(str(item.path), f"{exc.subject}: {exc.problem}"), item))
                continue
            except CamtoolError as exc:
                bad.append((ExportFailure(str(item.path), exc.problem), item))
                continue
            pixels = resize_image(
                image, (run.size, run.size), run.model.preprocessing.interpolation
            )
            ready.append((item, pixels, (width, height), boxes))
        if ready:
            records, maps = _measure(run, ready)
            yield records, bad, maps
        else:
            yield [], bad, []


def _measure(
    run: EvalRun, ready: list[tuple[InputItem, Tensor, tuple[int, int], list[list[float]]]]
) -> tuple[list[dict[str, Any]], list[ImageMaps]]:
    """Every metric of every method on one batch; one record per image, and its maps."""
    from camtool.metrics import localization, perturbation
    from camtool.metrics.maps import pixel_forward
    from camtool.metrics.road import road as road_metric

    forward = pixel_forward(run.model)
    pixels = torch.stack([p for _, p, _, _ in ready]).float().div_(255)
    n, s = len(ready), run.size
    with torch.inference_mode():
        probabilities = forward(pixels).softmax(-1)
    top = probabilities.topk(min(5, probabilities.shape[-1]), dim=-1)
    annotated = [_annotated(run, item) for item, _, _, _ in ready]
    classes = torch.tensor(
        [a[0] if a else int(top.indices[i, 0]) for i, a in enumerate(annotated)], dtype=torch.int64
    )
    scaled: list[Tensor | None] = []
    for (item, _, (width, height), boxes), a in zip(ready, annotated, strict=True):
        if not a:
            scaled.append(None)
            continue
        chosen = [
            b for b, g in zip(boxes, run.boxes[item.resolved], strict=True) if g.index == a[0]
        ]
        t = torch.tensor(chosen, dtype=torch.float32)
        scaled.append(t * torch.tensor([s / width, s / height, s / width, s / height]))
    pixels_per_step = math.ceil(s * s / run.steps) if run.steps else None
    results: list[dict[str, dict[str, Any]]] = [{} for _ in range(n)]
    curves: list[dict[str, dict[str, list[float]]]] = [{} for _ in range(n)]
    with_boxes = [i for i in range(n) if scaled[i] is not None]
    kept: list[ImageMaps] = [{} for _ in range(n)]
    for method, source in run.sources.items():
        facts = source(pixels, classes)
        maps = facts.maps
        for i in range(n):
            kept[i][method] = maps[i].detach().float().cpu()
        values: dict[str, list[Any]] = {}
        for metric in ("deletion", "insertion"):
            if metric in run.metrics:
                curve = getattr(perturbation, metric)(
                    forward, pixels, maps, classes, pixels_per_step=pixels_per_step
                )
                values[metric] = curve.auc.tolist()
                for i in range(n):
                    curves[i].setdefault(method, {})[metric] = [
                        round(float(v), 5) for v in curve.scores[i]
                    ]
        if "road" in run.metrics:
            result = road_metric(forward, pixels, maps, classes, percentages=run.road_percentages)
            values["road_morf"] = result.morf_mean.tolist()
            values["road_lerf"] = result.lerf_mean.tolist()
        if "average_drop" in run.metrics:
            drop = perturbation.average_drop(forward, pixels, maps, classes)
            values["average_drop"] = drop.drop.tolist()
            values["increase_in_confidence"] = [100.0 * float(v) for v in drop.increase]
        if "completeness" in run.metrics and facts.bias is not None:
            values["completeness"] = perturbation.completeness(facts).residual.tolist()
        for i in range(n):
            results[i][method] = {k: _finite(v[i]) for k, v in values.items()}
        if with_boxes:
            gt = [t for t in scaled if t is not None]
            rows = torch.tensor(with_boxes)
            if "pointing_game" in run.metrics:
                hits = localization.pointing_game(maps[rows], gt).hit
                for j, i in enumerate(with_boxes):
                    results[i][method]["pointing_game"] = 100.0 * float(hits[j])
            if "localization" in run.metrics:
                k = int(top.indices.shape[1])
                top_classes = top.indices[rows].cpu()
                many = source(pixels[rows].repeat_interleave(k, dim=0), top_classes.flatten()).maps
                found = localization.localization_error(
                    many.view(len(with_boxes), k, s, s), top_classes, classes[rows], gt,
                    threshold=run.box_threshold,
                )  # fmt: skip
                for j, i in enumerate(with_boxes):
                    results[i][method]["top1_loc_error"] = 100.0 * (
                        1 - float(found.top1_correct[j])
                    )
                    results[i][method]["top5_loc_error"] = 100.0 * (
                        1 - float(found.top5_correct[j])
                    )
                    results[i][method]["top1_iou"] = float(found.iou[j, 0])
            if "max_box_acc" in run.metrics:
                acc = localization.max_box_accuracy(maps[rows], gt)
                for j, i in enumerate(with_boxes):
                    results[i][method]["max_box_acc"] = [
                        "".join("1" if c else "0" for c in acc.correct[j, :, d].tolist())
                        for d in range(acc.correct.shape[2])
                    ]
    labels = run.model.labels
    records = []
    for i, (item, _, (width, height), boxes) in enumerate(ready):
        records.append(image_record(str(item.path), item.resolved, {
            "output_stem": str(item.stem), "width": width, "height": height,
            "class": int(classes[i]), "class_name": labels[int(classes[i])],
            "class_source": "annotation" if annotated[i] else "prediction",
            "predictions": [{"index": int(c), "name": labels[int(c)], "probability": round(float(p), 6)}
                            for p, c in zip(top.values[i], top.indices[i], strict=True)],
            "boxes": [[round(v, 2) for v in b] for b, g in zip(boxes, run.boxes.get(item.resolved, []), strict=True)
                      if annotated[i] and g.index == annotated[i][0]],
            "results": results[i], "curves": curves[i],
        }))  # fmt: skip
        if item.resolved in run.rescaled:
            records[-1]["boxes_rescaled"] = run.rescaled.pop(item.resolved)
    return records, kept


def _annotated(run: EvalRun, item: InputItem) -> list[int]:
    """The annotated class of an image (the first its boxes name), as ``[index]``; ``[]``."""
    boxes = run.boxes.get(item.resolved)
    return [int(boxes[0].index)] if boxes and boxes[0].index is not None else []


def _finite(value: float) -> float | None:
    """JSON has no NaN: a value that is not finite is recorded as null (and left out of means)."""
    return float(value) if math.isfinite(float(value)) else None
