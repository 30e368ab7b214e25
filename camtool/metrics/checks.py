"""Input checks shared by the metrics: precise, typed errors naming the argument and what is wrong
with its shape, dtype or values (like torchvision's ``draw_*`` utilities)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from camtool.errors import InvalidArgumentError


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"shape {list(value.shape)}, dtype {str(value.dtype).removeprefix('torch.')}"
    return f"a {type(value).__name__}"


def check_images(images: object, name: str = "images") -> Tensor:
    """``images`` must be a float ``Tensor[N,3,H,W]`` with values in [0, 1] (pixels, RGB, not
    normalised for a model) and N >= 1."""
    if not isinstance(images, Tensor):
        raise InvalidArgumentError(
            name, f"expected a float Tensor[N,3,H,W], got {_describe(images)}"
        )
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] < 1:
        raise InvalidArgumentError(
            name, f"expected a float Tensor[N,3,H,W] with N >= 1, got {_describe(images)}"
        )
    if not images.is_floating_point():
        raise InvalidArgumentError(
            name,
            f"expected float pixels in [0, 1] (divide uint8 images by 255), got {_describe(images)}",
        )
    if images.numel() and (
        not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1
    ):
        raise InvalidArgumentError(name, "pixel values must be finite and in [0, 1]")
    return images


def check_maps(maps: object, n: int, hw: tuple[int, int] | None, name: str = "maps") -> Tensor:
    """``maps`` must be a float ``Tensor[N,H,W]`` (one map per image, at the image's resolution
    when ``hw`` is given) with finite values."""
    if not isinstance(maps, Tensor) or maps.ndim != 3 or not maps.is_floating_point():
        raise InvalidArgumentError(name, f"expected a float Tensor[N,H,W], got {_describe(maps)}")
    if maps.shape[0] != n:
        raise InvalidArgumentError(name, f"holds {maps.shape[0]} maps for {n} images")
    if hw is not None and tuple(maps.shape[1:]) != hw:
        raise InvalidArgumentError(
            name,
            f"maps are {maps.shape[1]}x{maps.shape[2]} (HxW) but the images are {hw[0]}x{hw[1]}; "
            "upsample them to the image (method_maps does)",
        )
    if not torch.isfinite(maps).all():
        raise InvalidArgumentError(name, "maps hold NaN or infinite values")
    return maps


def check_classes(classes: object, n: int, name: str = "classes") -> Tensor:
    """``classes`` must be an integer ``Tensor[N]`` of non-negative class indices."""
    if not isinstance(classes, Tensor) or classes.ndim != 1:
        raise InvalidArgumentError(name, f"expected an int64 Tensor[N], got {_describe(classes)}")
    if classes.is_floating_point() or classes.is_complex() or classes.dtype == torch.bool:
        raise InvalidArgumentError(
            name, f"expected integer class indices, got {_describe(classes)}"
        )
    if classes.shape[0] != n:
        raise InvalidArgumentError(name, f"holds {classes.shape[0]} classes for {n} images")
    if classes.numel() and classes.min() < 0:
        raise InvalidArgumentError(name, "class indices must be >= 0")
    return classes.long()


def check_class_range(classes: Tensor, count: int, name: str = "classes") -> None:
    """Every class index must be below ``count`` (the network's K)."""
    if classes.numel() and int(classes.max()) >= count:
        raise InvalidArgumentError(
            name, f"class index {int(classes.max())} is out of range 0..{count - 1}"
        )


def check_boxes(boxes: object, n: int, name: str = "boxes") -> list[Tensor]:
    """``boxes`` must be a sequence of N float ``Tensor[M_i,4]`` (``x1, y1, x2, y2`` in pixels,
    x2/y2 exclusive, ``x1 <= x2``, ``y1 <= y2``), at least one box per image."""
    if isinstance(boxes, Tensor):
        if boxes.ndim == 3:
            boxes = list(boxes)
        else:
            raise InvalidArgumentError(
                name, f"expected N tensors [M_i,4] (or a Tensor[N,M,4]), got {_describe(boxes)}"
            )
    if not isinstance(boxes, Sequence):
        raise InvalidArgumentError(
            name, f"expected a sequence of N Tensor[M_i,4], got {_describe(boxes)}"
        )
    if len(boxes) != n:
        raise InvalidArgumentError(name, f"holds boxes for {len(boxes)} images, not {n}")
    checked = []
    for i, item in enumerate(boxes):
        where = f"{name}[{i}]"
        if not isinstance(item, Tensor):
            item = torch.as_tensor(item, dtype=torch.float32)
        if item.ndim == 1 and item.shape[0] == 4:
            item = item[None]
        if item.ndim != 2 or item.shape[1] != 4:
            raise InvalidArgumentError(
                where, f"expected a Tensor[M,4] (x1, y1, x2, y2), got {_describe(item)}"
            )
        if item.shape[0] == 0:
            raise InvalidArgumentError(where, "no ground-truth box for this image")
        item = item.float()
        if not torch.isfinite(item).all():
            raise InvalidArgumentError(where, "box coordinates must be finite")
        if (item[:, 2] < item[:, 0]).any() or (item[:, 3] < item[:, 1]).any():
            raise InvalidArgumentError(
                where, "a box has x2 < x1 or y2 < y1 (expected x1, y1, x2, y2)"
            )
        checked.append(item)
    return checked


def check_fractions(values: Sequence[float], name: str) -> tuple[float, ...]:
    """A non-empty increasing sequence of numbers in (0, 1)."""
    out = tuple(float(v) for v in values)
    if not out or any(not 0 < v < 1 for v in out) or list(out) != sorted(set(out)):
        raise InvalidArgumentError(name, "expected increasing fractions strictly between 0 and 1")
    return out


def descending_ranks(maps: Tensor) -> Tensor:
    """``Tensor[N,H*W]`` int64: each pixel's rank when the map's values are sorted from the
    highest down (0: most important). Ties are broken deterministically in raster order: of two
    equal values, the pixel with the smaller row-major index (``y * W + x``) ranks first."""
    flat = maps.flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def normalize_maps(maps: Tensor) -> Tensor:
    """Min-max normalise each map of ``Tensor[N,H,W]`` to [0, 1] (a constant map becomes 0)."""
    flat = maps.float().flatten(1)
    low = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - low
    out = (flat - low) / torch.where(span > 0, span, torch.ones_like(span))
    return out.where(span > 0, torch.zeros_like(out)).view_as(maps)
