"""Rendering on the device for the device runner, and the files each image becomes.

:func:`paint` turns one batch's maps into overlays and heatmaps on the maps' device, images of
one size and region at a time (one upsample, one table lookup, one blend for all of them), and
starts one copy of all of it to the host (on its own CUDA stream, into pinned memory, so the next
batch computes meanwhile). :func:`write_painted`, on a CPU thread, waits for that copy, finds the
CAM boxes from small maps (:func:`camtool.boxes.small_map_box`), draws boxes and legends,
encodes and writes the image's files and returns its :class:`~camtool.explanation.Explanation`
for the manifest.

Every formula is the one :func:`camtool.explanation.build_explanation`,
:meth:`~camtool.explanation.Explanation.scaled_heatmaps` and
:meth:`~camtool.explanation.Explanation.overlay` apply on the CPU, so on CPU tensors both
runners write the same pixels and the same manifest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from camtool.boxes import Box, draw_box, scaled_box, small_map_box
from camtool.explanation import ClassScore, Explanation
from camtool.export.stages import (
    ExportOptions,
    Written,
    encoded_files,
    write_files,
    written_or_refused,
)
from camtool.geometry import FeatureGeometry
from camtool.image import Region, enlarge
from camtool.inputs import InputItem
from camtool.methods.base import MapBatch
from camtool.models.loading import LoadedModel
from camtool.render import (
    colormap_colors,
    draw_legend,
    normalize_cams,
    placement,
    upsample_weights,
)
from camtool.settings import DEFAULT_BOX_THRESHOLD, DEFAULT_UPSAMPLE


@dataclass(frozen=True)
class PaintedRow:
    """Where one image's pixels lie in a :class:`Painted` chunk's host buffer."""

    item: InputItem
    row: int  # the image's row in the batch
    height: int
    width: int
    region: Region
    overlays: int  # offset of uint8 [k,3,H,W]
    heatmaps: int  # offset of uint8 [k,H,W] (only with ``options.heatmap``)


@dataclass(frozen=True)
class Painted:
    """One chunk's results on the host (once ``ready`` is waited for): the pixels in one flat
    uint8 buffer, the maps' numbers, and where each image's pixels lie."""

    buffer: Tensor  # uint8 [total]
    logits: Tensor  # float32 [N,K]
    classes: Tensor  # int64 [N,k]
    maps: Tensor  # float32 [N,k,h,w]
    bias: Tensor | None
    residual: Tensor | None
    method: str
    summary: str
    geometry: FeatureGeometry
    input_hw: tuple[int, int]
    rows: tuple[PaintedRow, ...]
    ready: Any = None  # a torch.cuda.Event recorded after the copy, or None
    upsample: str = DEFAULT_UPSAMPLE  # how the maps were resized (ExportOptions.upsample)
    class_agnostic: bool = False  # the method gives every class the same map

    def wait(self) -> None:
        """Block until the copy to the host has finished."""
        if self.ready is not None:
            self.ready.synchronize()


@cache
def _lut(colormap: str, device: torch.device) -> Tensor:
    """The colour map as ``Tensor[256, 3]`` uint8 RGB on ``device``."""
    return torch.tensor(colormap_colors(colormap, 256), dtype=torch.uint8, device=device)


def paint(
    out: MapBatch,
    items: Sequence[InputItem],
    images: Sequence[Tensor],
    regions: Sequence[Region],
    options: ExportOptions,
    copy_stream: Any = None,
) -> Painted:
    """Render a batch on its device and start the copy to the host.

    Args:
        out: the batch's maps (``maps: Tensor[N,k,h,w]`` float32 on the device).
        items, images, regions: per row, the input, its ``Tensor[3,H,W]`` uint8 image on the
            device and the region the network saw.
        options: alpha, colour map, scale, box threshold, heatmap outputs.
        copy_stream: a ``torch.cuda.Stream`` for the device-to-host copy (None on the CPU).
    """
    maps = out.maps
    count = int(maps.shape[1])
    groups: dict[tuple[int, int, tuple[int, int, int, int]], list[int]] = {}
    for row, (image, region) in enumerate(zip(images, regions, strict=True)):
        groups.setdefault((int(image.shape[1]), int(image.shape[2]), region.as_ints()), []).append(
            row
        )
    pieces: list[Tensor] = []
    placed: list[PaintedRow] = []
    offset = 0
    for (height, width, box), rows in groups.items():
        stacked = torch.stack([images[r] for r in rows])
        overlays, grays = _paint_group(maps[rows], stacked, box, out, options)
        sizes = (count * 3 * height * width, count * height * width)
        for j, row in enumerate(rows):
            base = offset + j * sizes[0]
            gray_at = offset + len(rows) * sizes[0] + j * sizes[1]
            placed.append(PaintedRow(items[row], row, height, width, regions[row], base, gray_at))
        group = [overlays.reshape(-1)] + ([grays.reshape(-1)] if grays is not None else [])
        pieces += group
        offset += sum(int(p.numel()) for p in group)
    placed.sort(key=lambda r: r.row)
    flat = torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.uint8, device=maps.device)
    numbers = [out.logits.float(), out.classes, maps.float(), out.bias, out.residual]
    (buffer, logits, classes, cams, bias, residual), ready = _to_host([flat, *numbers], copy_stream)
    assert buffer is not None and logits is not None and classes is not None and cams is not None
    return Painted(
        buffer, logits, classes, cams, bias, residual, out.method, out.summary,
        out.geometry, out.input_hw, tuple(placed), ready, options.upsample, out.class_agnostic,
    )  # fmt: skip


def _paint_group(
    cams: Tensor,
    images: Tensor,
    box: tuple[int, int, int, int],
    out: MapBatch,
    options: ExportOptions,
) -> tuple[Tensor, Tensor | None]:
    """Overlays ``uint8 [n,k,3,H,W]`` and (with ``options.heatmap``) heatmaps ``uint8 [n,k,H,W]`` of ``n`` images of one size and region,
    from their maps ``cams: Tensor[n,k,h,w]`` and ``images: Tensor[n,3,H,W]`` uint8."""
    n, count = int(cams.shape[0]), int(cams.shape[1])
    height, width = int(images.shape[2]), int(images.shape[3])
    x1, y1, x2, y2 = box
    heat = torch.zeros((n, count, height, width), device=cams.device)
    if count:  # as build_explanation: each map normalised, upsampled into the region
        up = _upsampled(normalize_cams(cams), out, (y2 - y1, x2 - x1), options.upsample)
        heat[..., y1:y2, x1:x2] = up[..., : height - y1, : width - x1]
    scaled = _scaled(heat, cams, box, options.scale)
    levels = (scaled.clamp(0, 1) * 255).round_().long()
    colour = _lut(options.colormap, cams.device)[levels].permute(0, 1, 4, 2, 3)  # [n,k,3,H,W]
    pixels = images[:, None].float()
    blended = pixels * (1 - options.alpha) + colour.float() * options.alpha
    if (x1, y1, x2, y2) != (0, 0, width, height):  # a crop: the rest of the image stays as it is
        inside = torch.zeros((height, width), dtype=torch.bool, device=cams.device)
        inside[y1:y2, x1:x2] = True
        blended = torch.where(inside, blended, pixels)
    overlays = blended.round_().clamp_(0, 255).to(torch.uint8)
    grays = (scaled * 255).round().to(torch.uint8) if options.heatmap else None
    return overlays, grays


@lru_cache(maxsize=64)
def _weights(
    feature_hw: tuple[int, int],
    input_hw: tuple[int, int],
    out_hw: tuple[int, int],
    geometry: FeatureGeometry,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """:func:`~camtool.render.upsample_weights` on ``device``, moved there once per size."""
    wy, wx = upsample_weights(feature_hw, input_hw, out_hw, geometry)
    return torch.from_numpy(wy).to(device), torch.from_numpy(wx).to(device)


def _upsampled(normalised: Tensor, out: MapBatch, out_hw: tuple[int, int], upsample: str) -> Tensor:
    """:func:`~camtool.render.upsample_cams` of ``Tensor[n,k,h,w]`` maps -> ``[n,k,*out_hw]``
    float32: ``Wy @ map @ Wx.T`` with the weights kept on the device. On the CPU image by image,
    so the sums run in the order :func:`~camtool.explanation.build_explanation` runs them and
    the values are the same to the bit; elsewhere all maps at once."""
    feature_hw = (int(normalised.shape[-2]), int(normalised.shape[-1]))
    geometry = placement(upsample, out.geometry, out.input_hw, feature_hw) or out.geometry
    wy, wx = _weights(feature_hw, out.input_hw, out_hw, geometry, normalised.device)
    if normalised.device.type == "cpu":
        return torch.stack([torch.matmul(wy, maps.float() @ wx.T) for maps in normalised])
    return torch.matmul(wy, normalised.float() @ wx.T)


def _scaled(heat: Tensor, cams: Tensor, box: tuple[int, int, int, int], scale: str) -> Tensor:
    """:meth:`Explanation.scaled_heatmaps` for ``n`` images at once: ``heat: Tensor[n,k,H,W]``
    per-map heatmaps of ``cams: Tensor[n,k,h,w]`` -> the same on ``scale``."""
    if scale == "per-map" or cams.shape[1] < 2:
        return heat
    flat = cams.float().flatten(-2)
    own_low, own_high = flat.amin(dim=-1), flat.amax(dim=-1)  # [n,k]
    low = own_low.amin(dim=-1, keepdim=True)
    span = own_high.amax(dim=-1, keepdim=True) - low  # [n,1]
    factor = ((own_high - own_low) / span)[..., None, None]
    shift = ((own_low - low) / span)[..., None, None]
    x1, y1, x2, y2 = box
    scaled = torch.zeros_like(heat)
    scaled[..., y1:y2, x1:x2] = (heat[..., y1:y2, x1:x2] * factor + shift).clamp_(0, 1)
    return torch.where(span[..., None, None] > 0, scaled, torch.zeros_like(scaled))


def _to_host(tensors: list[Tensor | None], copy_stream: Any) -> tuple[list[Tensor | None], Any]:
    """Copies of ``tensors`` on the host. On CUDA they are queued on ``copy_stream`` into pinned
    memory and an event is returned to wait for; on the CPU the tensors are returned as they are."""
    if copy_stream is None:
        return [t.cpu() if t is not None else None for t in tensors], None
    copy_stream.wait_stream(torch.cuda.current_stream(copy_stream.device))
    copies: list[Tensor | None] = []
    with torch.cuda.stream(copy_stream):
        for tensor in tensors:
            if tensor is None:
                copies.append(None)
                continue
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            tensor.record_stream(copy_stream)  # not reused before the copy has read it
            copies.append(host)
        ready = torch.cuda.Event()
        ready.record(copy_stream)
    return copies, ready


def _boxes(
    cams: Tensor, painted: Painted, row: PaintedRow, threshold: float
) -> tuple[Box | None, ...]:
    """Each map's CAM box, from a small map as :func:`~camtool.explanation.build_explanation`
    finds it (:func:`~camtool.boxes.small_map_box`), in image pixels."""
    if not len(cams):
        return ()
    x1, y1, x2, y2 = row.region.as_ints()
    boxes: list[Box | None] = []
    feature_hw = (int(cams.shape[-2]), int(cams.shape[-1]))
    geometry = placement(painted.upsample, painted.geometry, painted.input_hw, feature_hw)
    for cam in normalize_cams(cams):
        found = small_map_box(cam, painted.input_hw, (y2 - y1, x2 - x1), geometry, threshold)
        boxes.append(
            None
            if found is None
            else (found[0] + x1, found[1] + y1, min(found[2] + x1, row.width),
                  min(found[3] + y1, row.height))
        )  # fmt: skip
    return tuple(boxes)


def explanation_of(
    painted: Painted,
    row: PaintedRow,
    model: LoadedModel,
    top_k: int,
    box_threshold: float = DEFAULT_BOX_THRESHOLD,
) -> Explanation:
    """The image's :class:`Explanation`, as :func:`~camtool.explanation.build_explanation`
    makes it but without pixels: ``image`` holds only the image's shape (no memory) and
    ``heatmaps`` is empty; predictions, classes, CAMs, boxes and the rest are complete."""
    j = row.row
    logits = painted.logits[j]
    probs = logits.softmax(-1)

    def score(index: int) -> ClassScore:
        return ClassScore(index, model.labels[index], float(probs[index]), float(logits[index]))

    top = logits.topk(max(1, min(top_k, logits.numel()))).indices.tolist()
    cams = painted.maps[j].clone()
    count = len(cams)
    return Explanation(
        source=str(row.item.path),
        image=torch.empty((), dtype=torch.uint8).expand(3, row.height, row.width),
        model=model.name,
        made_from=painted.summary,
        method=painted.method,
        predictions=tuple(score(i) for i in top),
        explained=tuple(score(int(i)) for i in painted.classes[j].tolist()),
        maps=cams,
        bias=painted.bias[j].clone() if painted.bias is not None else torch.zeros(count),
        heatmaps=torch.empty((count, 0, 0)),
        boxes=_boxes(cams, painted, row, box_threshold),
        residual=float(painted.residual[j]) if painted.residual is not None else None,
        region=row.region,
        input_hw=(painted.input_hw[0], painted.input_hw[1]),
        geometry=painted.geometry,
        upsample=painted.upsample,
        class_agnostic=painted.class_agnostic,
    )


def write_painted(
    painted: Painted,
    row: PaintedRow,
    model: LoadedModel,
    out_dir: Path,
    options: ExportOptions,
    announce: Callable[[list[Path]], None] | None = None,
) -> Written:
    """On a writer thread: one image's files, as :func:`camtool.export.stages.render_and_write`
    writes them (same names, formats, boxes, legends; announced, then written atomically, all or
    none). Returns ``(explanation, files, None)`` or ``(None, [], reason)``; a refusal by the file
    system (full disk, read-only folder) is raised."""

    def write() -> tuple[Explanation, list[Path]]:
        painted.wait()
        ex = explanation_of(painted, row, model, options.top_k, options.box_threshold)
        return ex, _write(painted, row, ex, out_dir, options, announce)

    return written_or_refused(row.item, write)


def _write(
    painted: Painted,
    row: PaintedRow,
    ex: Explanation,
    out_dir: Path,
    options: ExportOptions,
    announce: Callable[[list[Path]], None] | None,
) -> list[Path]:
    count, height, width = len(ex.explained), row.height, row.width
    overlays = painted.buffer[row.overlays : row.overlays + count * 3 * height * width]
    overlays = overlays.view(count, 3, height, width)
    grays = painted.buffer[row.heatmaps : row.heatmaps + count * height * width]
    x1, y1, x2, y2 = row.region.as_ints()
    factor = ex.overlay_scale  # as Explanation.overlay: a tiny image is enlarged

    def overlay(i: int) -> Tensor:
        picture = enlarge(overlays[i], factor)
        if (x1, y1, x2, y2) != (0, 0, width, height):
            picture = draw_box(picture, scaled_box((x1, y1, x2, y2), factor), (255, 255, 255), 1)
        found = ex.boxes[i]
        if options.box and found is not None:
            picture = draw_box(picture, scaled_box(found, factor))
        if options.legend:
            picture = draw_legend(
                picture, options.colormap, *ex.legend_text(ex.explained[i], options.scale)
            )
        return picture

    def heatmap(i: int) -> Tensor:
        return grays.view(count, height, width)[i]

    files = encoded_files(ex, row.item.stem, out_dir, options, overlay, heatmap)
    return write_files(files, announce)
