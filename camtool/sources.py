"""What :func:`camtool.explain` takes as images, turned into single images.

One source (a path, a tensor or array holding one image, a PIL image), a list of sources, or a
batch (``Tensor[N,3,H,W]``, ``Tensor[N,H,W,3]``, or a numpy array of either layout) becomes a list
of named ``Tensor[3,H,W]`` uint8 images. A batch that is already the network's input (resized and
normalised) is checked here and kept as it is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from camtool.errors import ImageReadError, InvalidArgumentError
from camtool.image import Layout, Preprocessing, image_layout
from camtool.io import ImageSource, load_image, source_name

#: What the ``images`` argument of :func:`camtool.explain` accepts.
Images = ImageSource | Sequence[ImageSource]


@dataclass(frozen=True)
class NamedImage:
    """One input image: ``name`` (its path, or ``<Tensor>``, ``<Tensor>[2]`` for the third image
    of a batch, ...) and ``image``, ``Tensor[3,H,W]`` uint8 RGB on the CPU."""

    name: str
    image: Tensor


def is_batch(images: object) -> bool:
    """True for a four-axis tensor or numpy array (a batch of images)."""
    return isinstance(images, (Tensor, np.ndarray)) and images.ndim == 4


def gather_images(images: Images, layout: Layout | None = None) -> tuple[list[NamedImage], bool]:
    """Load every image of ``images``; return them with ``single``: whether one image (not a list
    or a batch) was given.

    Args:
        images: one source, a list or tuple of single-image sources, or a batch (four axes: the
            first counts the images, the other three are one image's, as for ``layout``).
        layout: ``"CHW"`` or ``"HWC"`` for in-memory images; by default the shape tells (see
            :func:`camtool.image.image_layout`; a batch's images share one layout).

    Raises:
        ImageReadError: an image that cannot be read, a shape that is neither an image nor a
            batch, a batch inside a list. In-memory images are named in the message as the
            argument (``images``, ``images[2]``), files by their path.
    """
    if is_batch(images):
        batch: Any = images
        try:
            found = image_layout(batch.shape[1:], layout, "images")
        except ImageReadError as exc:
            raise ImageReadError(
                "images", f"a batch of shape {list(batch.shape)}: {exc.problem}"
            ) from None
        name = source_name(batch)
        return [
            NamedImage(f"{name}[{i}]", _load(batch[i], f"images[{i}]", found))
            for i in range(len(batch))
        ], False
    if isinstance(images, (list, tuple)):
        loaded = []
        for i, source in enumerate(images):
            if is_batch(source):
                raise ImageReadError(
                    f"images[{i}]",
                    f"a list holds single images, got a batch of shape {list(source.shape)}: pass "
                    "the batch itself, not in a list",
                )
            loaded.append(NamedImage(source_name(source), _load(source, f"images[{i}]", layout)))
        return loaded, False
    if isinstance(images, (Tensor, np.ndarray)) and images.ndim not in (2, 3):
        kind = "tensor" if isinstance(images, Tensor) else "array"
        raise ImageReadError(
            "images",
            "expected an image [3,H,W], [H,W,3] or [H,W], or a batch [N,3,H,W] or [N,H,W,3], "
            f"got a {kind} of shape {list(images.shape)}",
        )
    return [NamedImage(source_name(images), _load(images, "images", layout))], True


def _load(source: ImageSource, label: str, layout: Layout | None) -> Tensor:
    """:func:`load_image`, with an in-memory image's errors naming it as ``label``."""
    if isinstance(source, (str, os.PathLike)):
        return load_image(source, layout=layout)
    try:
        return load_image(source, layout=layout)
    except ImageReadError as exc:
        raise type(exc)(label, exc.problem) from None


def preprocessed_batch(images: object, preprocessing: Preprocessing) -> tuple[Tensor, bool]:
    """Check a batch that is already the network's input; return it with ``single``.

    Args:
        images: ``Tensor[N,3,h,w]`` (or one ``Tensor[3,h,w]``) float, resized and normalised as
            ``preprocessing`` does (``preprocessing.prepare``).
        preprocessing: the model's; a model that takes one input size only needs that size.

    Returns:
        ``(batch, single)``: ``Tensor[N,3,h,w]`` float on the input's device.

    Raises:
        InvalidArgumentError: not a floating-point tensor of that shape, NaN or infinite values,
            a size the model does not take.
    """
    if not isinstance(images, Tensor):
        raise InvalidArgumentError(
            "images",
            "with preprocessed=True, expected a float Tensor[N,3,h,w] normalised for the model, "
            f"got {type(images).__name__}",
        )
    if images.device.type == "meta":
        raise InvalidArgumentError("images", "a meta tensor holds no values to explain")
    single = images.ndim == 3
    batch = images.detach()[None] if single else images.detach()
    if batch.ndim != 4 or batch.shape[1] != 3 or not batch.is_floating_point():
        raise InvalidArgumentError(
            "images",
            "with preprocessed=True, expected a float Tensor[N,3,h,w] normalised for the model, "
            f"got {str(images.dtype).removeprefix('torch.')} {list(images.shape)}",
        )
    if batch.numel() and not bool(torch.isfinite(batch).all()):
        raise InvalidArgumentError("images", "the preprocessed batch has NaN or infinite values")
    size = preprocessing.input_size
    if preprocessing.fixed_size and tuple(batch.shape[2:]) != (size, size):
        raise InvalidArgumentError(
            "images",
            f"this model takes {size}x{size} inputs only, got a batch of {list(images.shape)}",
        )
    return batch, single
