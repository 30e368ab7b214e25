"""Pictures to look at: :class:`Picture`, an RGB image that shows itself in Jupyter, and the row
of captioned figures the notebook view of an explanation is made of."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from camtool.errors import InvalidArgumentError
from camtool.image import resize_image
from camtool.io.images import encode_image, save_image

#: The longest side of a picture embedded in a notebook's HTML view (larger ones are scaled down
#: for the view only, so that a 12-megapixel photo does not put megabytes in the notebook).
VIEW_SIDE = 768


@dataclass(frozen=True, eq=False, repr=False)
class Picture:
    """An image to look at; it shows itself in Jupyter (as one PNG).

    Attributes:
        tensor: ``Tensor[3,H,W]`` uint8 RGB on the CPU, the pixels.
    """

    tensor: Tensor

    def __post_init__(self) -> None:
        t = self.tensor
        if not isinstance(t, Tensor) or t.ndim != 3 or t.shape[0] != 3 or t.dtype != torch.uint8:
            got = f"{t.dtype} {list(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
            raise InvalidArgumentError("tensor", f"expected a uint8 Tensor[3,H,W], got {got}")
        object.__setattr__(self, "tensor", t.detach().cpu())

    @property
    def image(self) -> Tensor:
        """The same pixels as :attr:`tensor` (an older name)."""
        return self.tensor

    @property
    def width(self) -> int:
        """Width in pixels."""
        return int(self.tensor.shape[2])

    @property
    def height(self) -> int:
        """Height in pixels."""
        return int(self.tensor.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels, as PIL gives it."""
        return self.width, self.height

    def save(self, path: str | os.PathLike[str], quality: int = 95) -> Path:
        """Write the picture (PNG, JPEG, ... by the suffix; ``quality`` for JPEG); return the path."""
        return save_image(path, self.tensor, quality)

    def png(self) -> bytes:
        """The picture encoded as PNG."""
        return encode_image(self.tensor, ".png")

    def _repr_png_(self) -> bytes:
        return self.png()

    def __repr__(self) -> str:
        return f"Picture({self.width}x{self.height})"


def figures_html(figures: Sequence[tuple[Picture, str]], max_side: int = VIEW_SIDE) -> str:
    """A row of captioned pictures as HTML, each embedded once as a JPEG ``data:`` URL (quality
    90, and scaled down to ``max_side`` pixels on its longest side: a view that keeps notebooks
    small; the pictures themselves are unchanged)."""
    cells = []
    for picture, caption in figures:
        pixels = picture.tensor
        longest = max(picture.width, picture.height)
        if longest > max_side:
            scale = max_side / longest
            size = (max(1, round(picture.height * scale)), max(1, round(picture.width * scale)))
            pixels = resize_image(pixels, size, "bilinear")
        data = base64.b64encode(encode_image(pixels, ".jpg", quality=90)).decode("ascii")
        cells.append(
            "<figure style='margin:0 8px 8px 0'>"
            f"<img src='data:image/jpeg;base64,{data}' style='max-width:480px'/>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return f"<div style='display:flex;flex-wrap:wrap'>{''.join(cells)}</div>"
