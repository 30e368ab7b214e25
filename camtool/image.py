"""Image transforms for the network input: :class:`Preprocessing` (whole image or centre crop),
the :class:`Region` of the image the network saw, antialiased uint8 resizing, and the
enlargement of tiny images' overlays.

Importing this module imports no torch (a model card holds a :class:`Preprocessing`, and
``camtool classes`` reads cards without torch); the functions that touch pixels import it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast, get_args

if TYPE_CHECKING:  # torch is imported where pixels are touched: reading a card needs none
    from torch import Tensor

#: The longest side of the network input, in multiples of the model's input size.
MAX_ASPECT = 8

#: The largest input size (pixels on the shorter side) camtool accepts: 4x the largest ImageNet
#: classifiers' (EfficientNet-B7: 600, timm's 1024-px models); the long side may be MAX_ASPECT x.
MAX_INPUT_SIZE = 4096

#: The smallest ``crop_pct`` (the part of the image's shorter side that ``--crop`` keeps).
MIN_CROP_PCT = 0.1

#: The longest the shorter side may be resized to for ``--crop`` (``input_size / crop_pct``):
#: a square image then holds at most 100 megapixels, camtool's default pixel limit
#: (:data:`camtool.io.MAX_PIXELS`).
MAX_CROP_RESIZE = 10_000

#: The ranges of the per-channel ``mean`` (in [0, 1] pixel units) and ``std`` (a divisor: 1/255
#: for networks that take 0..255 pixel values, 1 at most for [0, 1] pixels; 10 leaves room).
MEAN_RANGE = (0.0, 1.0)
STD_RANGE = (0.001, 10.0)

#: Where an in-memory image keeps its colour channels: first (``[C,H,W]``, torch's way) or last
#: (``[H,W,C]``, numpy's, PIL's and OpenCV's way).
Layout = Literal["CHW", "HWC"]

#: Channel counts an in-memory image may have: gray, RGB, RGBA (alpha is dropped).
CHANNEL_COUNTS = (1, 3, 4)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Region:
    """The part of the original image the network saw, in original pixels (x2, y2 exclusive)."""

    x1: float
    y1: float
    x2: float
    y2: float

    def as_ints(self) -> tuple[int, int, int, int]:
        """Return the region rounded to whole pixels."""
        return round(self.x1), round(self.y1), round(self.x2), round(self.y2)


@dataclass(frozen=True)
class Preprocessing:
    """How images are turned into the network's input.

    By default the whole image is used: it is resized (keeping its aspect ratio) so that its
    shorter side is ``input_size``, and nothing is cropped. With ``crop=True`` the classic
    evaluation transform is used instead: shorter side to ``input_size / crop_pct``, then a centre
    crop of ``input_size`` x ``input_size``. ``fixed_size``: the network takes only
    ``input_size`` x ``input_size`` inputs, so the whole image is squeezed to that square.
    """

    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    crop_pct: float = 0.875
    fixed_size: bool = False

    def __post_init__(self) -> None:
        from camtool.errors import InvalidArgumentError

        check_input_size(self.input_size)
        check_crop_pct(self.input_size, self.crop_pct)
        for name, values in (("mean", self.mean), ("std", self.std)):
            problem = normalization_problem(name, values)
            if problem is not None:
                raise InvalidArgumentError(name, problem)

    def resized_size(self, height: int, width: int, crop: bool = False) -> tuple[int, int]:
        """Return the (height, width) the image is resized to before any crop.

        The shorter side becomes the input size, unless that would make the longer side more
        than :data:`MAX_ASPECT` times the input size (a panorama): then the longer side is capped
        there, which bounds the network's input however elongated the image is. A network that
        takes one input size only (``fixed_size``, e.g. a vision transformer with a fixed position
        embedding) gets the whole image squeezed to ``input_size`` x ``input_size``.

        Raises:
            InvalidArgumentError: ``crop`` with a ``crop_pct`` above 1 (timm's VOLO models), whose
                centre crop would be larger than the resized image.
        """
        if self.fixed_size and not crop:
            return self.input_size, self.input_size
        check_crop(self, crop)
        short = int(self.input_size / self.crop_pct) if crop else self.input_size
        scale = short / min(height, width)
        if not crop:
            scale = min(scale, MAX_ASPECT * self.input_size / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def prepare(self, image: Tensor, crop: bool = False) -> tuple[Tensor, Region]:
        """Resize and normalise one image.

        Args:
            image: ``Tensor[3,H,W]`` uint8 RGB, on any device.
            crop: use the centre crop instead of the whole image.

        Returns:
            ``(tensor, region)``: ``Tensor[3,h,w]`` float32 on the image's device, normalised for
            the network, and the :class:`Region` of the original image that it shows.
        """
        height, width = image.shape[-2:]
        rh, rw = self.resized_size(height, width, crop)
        resized = resize_image(image, (rh, rw), self.interpolation)
        region = Region(0.0, 0.0, float(width), float(height))
        if crop:
            top, left = (rh - self.input_size) // 2, (rw - self.input_size) // 2
            resized = resized[:, top : top + self.input_size, left : left + self.input_size]
            sy, sx = height / rh, width / rw
            region = Region(
                left * sx, top * sy, (left + self.input_size) * sx, (top + self.input_size) * sy
            )
        return self.normalize(resized), region

    def normalize(self, pixels: Tensor) -> Tensor:
        """Map uint8 pixels ``Tensor[..., 3, h, w]`` to the network's float32 input."""
        import torch

        mean = torch.tensor(self.mean, device=pixels.device).mul_(255).view(3, 1, 1)
        std = torch.tensor(self.std, device=pixels.device).mul_(255).view(3, 1, 1)
        # a fresh buffer (never the caller's), normalised in place: one buffer, not three
        return pixels.to(torch.float32, copy=True).sub_(mean).div_(std)

    def denormalize(self, batch: Tensor) -> Tensor:
        """Undo :meth:`normalize`: the network's input ``Tensor[..., 3, h, w]`` (any float dtype)
        back to uint8 pixels of the same shape, on the CPU (rounded, clipped to 0..255)."""
        import torch

        batch = batch.detach().float().cpu()
        mean = torch.tensor(self.mean).mul_(255).view(3, 1, 1)
        std = torch.tensor(self.std).mul_(255).view(3, 1, 1)
        return (batch * std + mean).round_().clamp_(0, 255).to(torch.uint8)


def image_layout(shape: Sequence[int], layout: str | None, name: str) -> Layout:
    """Tell where the channels of a three-axis image ``shape`` are.

    The rule: channels are the axis of length 1, 3 or 4 (gray, RGB, RGBA). If only the first
    axis can be channels the image is ``"CHW"``; if only the last, ``"HWC"``. When both can (a
    ``[3,H,3]`` image, say) the shape does not tell, and ``layout`` must: it is checked against the
    shape whenever it is given.

    Args:
        shape: the three sizes of the image.
        layout: ``"CHW"``, ``"HWC"`` or None (tell by the shape).
        name: the input, for error messages.

    Raises:
        ImageReadError: no axis can be channels, both can and ``layout`` is None, or ``layout``
            is unknown or contradicts the shape.
    """
    from camtool.errors import ImageReadError

    sizes = [int(n) for n in shape]
    if layout is not None and layout not in get_args(Layout):
        raise ImageReadError(name, f"layout must be 'CHW' or 'HWC', not {layout!r}")
    first, last = sizes[0] in CHANNEL_COUNTS, sizes[-1] in CHANNEL_COUNTS
    if (layout == "CHW" and not first) or (layout == "HWC" and not last):
        raise ImageReadError(
            name, f"layout={layout!r} needs 1, 3 or 4 channels on that axis, got shape {sizes}"
        )
    if layout is not None:
        return cast(Layout, layout)
    if first and last:
        raise ImageReadError(
            name,
            f"shape {sizes} could be [C,H,W] or [H,W,C]: say which with layout='CHW' or "
            "layout='HWC'",
        )
    if not (first or last):
        raise ImageReadError(
            name,
            f"expected 1, 3 or 4 channels first ([3,H,W]) or last ([H,W,3]), got shape {sizes}",
        )
    return "CHW" if first else "HWC"


def check_crop(preprocessing: Preprocessing, crop: bool) -> None:
    """Refuse ``crop`` for a model whose ``crop_pct`` is above 1 (timm's VOLO models): its
    centre crop would be larger than the resized image. Every entry point (explain, explain_iter,
    export, video) asks once, before it reads any image, so that a run fails once and not per
    image; :meth:`Preprocessing.resized_size` asks too.

    Raises:
        InvalidArgumentError: naming ``crop`` and the model's ``crop_pct``.
    """
    if crop and preprocessing.crop_pct > 1:
        from camtool.errors import InvalidArgumentError

        raise InvalidArgumentError(
            "crop",
            f"this model's crop_pct is {preprocessing.crop_pct:g} (above 1): its centre crop "
            "would pad the image, which camtool does not do; use the whole image (no crop)",
        )


def check_input_size(size: int) -> None:
    """Refuse an input size below 1 px or above :data:`MAX_INPUT_SIZE` px (a hand-built test
    network may take 2x2 images; model cards ask for at least 16).

    Raises:
        InvalidArgumentError: with the bounds.
    """
    from camtool.errors import InvalidArgumentError

    if size < 1:
        raise InvalidArgumentError(size, f"input size {size} is too small: use at least 1 px")
    if size > MAX_INPUT_SIZE:
        raise InvalidArgumentError(
            size,
            f"input size {size} is too large: camtool takes at most {MAX_INPUT_SIZE} px (an "
            f"image's long side may reach {MAX_ASPECT}x that)",
        )


def crop_pct_problem(input_size: int, crop_pct: object, largest: float | None = 1.0) -> str | None:
    """What is wrong with ``crop_pct`` for ``input_size``, or None: it must be a finite number
    from :data:`MIN_CROP_PCT` to ``largest`` (None: no upper bound; timm's VOLO models use
    1.15), and ``input_size / crop_pct`` (the shorter side ``--crop`` resizes to) at most
    :data:`MAX_CROP_RESIZE` px."""
    top = math.inf if largest is None else largest
    if (
        isinstance(crop_pct, bool)
        or not isinstance(crop_pct, int | float)
        or not MIN_CROP_PCT <= crop_pct <= top  # False for NaN too
        or not math.isfinite(crop_pct)
    ):
        wanted = (
            f"a finite number of at least {MIN_CROP_PCT:g}"
            if largest is None
            else f"a number from {MIN_CROP_PCT:g} to {largest:g}"
        )
        return f"crop_pct must be {wanted}, not {crop_pct!r:.40}"
    short = int(input_size / crop_pct)
    if short > MAX_CROP_RESIZE:
        return (
            f"crop_pct {crop_pct:g} at input size {input_size} would resize images to a shorter "
            f"side of {short} px for the crop, above camtool's limit of {MAX_CROP_RESIZE} px "
            f"({MAX_CROP_RESIZE**2 // 1_000_000} megapixels for a square image): use a crop_pct "
            f"of at least {input_size / MAX_CROP_RESIZE:.4g}"
        )
    return None


def normalization_problem(name: str, values: object) -> str | None:
    """What is wrong with a ``mean`` or ``std`` (``name``), or None: it must be 3 finite numbers
    in :data:`MEAN_RANGE` or :data:`STD_RANGE`."""
    low, high = MEAN_RANGE if name == "mean" else STD_RANGE
    if (
        not isinstance(values, list | tuple)
        or len(values) != 3
        or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and low <= v <= high
            for v in values
        )
    ):
        return f"{name} must be 3 numbers from {low:g} to {high:g}, not {values!r:.60}"
    return None


def check_crop_pct(input_size: int, crop_pct: float) -> None:
    """Refuse a ``crop_pct`` that :func:`crop_pct_problem` finds wrong (with no upper bound:
    model cards allow 1 at most, timm's configs up to 1.15).

    Raises:
        InvalidArgumentError: with the bounds.
    """
    from camtool.errors import InvalidArgumentError

    problem = crop_pct_problem(input_size, crop_pct, largest=None)
    if problem is not None:
        raise InvalidArgumentError(crop_pct, problem)


def resize_image(image: Tensor, size: tuple[int, int], interpolation: str = "bicubic") -> Tensor:
    """Resize ``Tensor[3,H,W]`` uint8 to ``size`` with antialiasing (as PIL does); uint8 out.

    On the CPU torch resizes uint8 images natively (5x faster than through float32, and the
    same result as torchvision's ``resize``); elsewhere through float32, rounded.
    """
    import torch
    import torch.nn.functional as F

    if tuple(image.shape[-2:]) == size:
        return image
    if image.device.type == "cpu":
        return F.interpolate(
            image[None], size=size, mode=interpolation, antialias=True, align_corners=False
        )[0]
    resized = F.interpolate(
        image[None].float(), size=size, mode=interpolation, antialias=True, align_corners=False
    )
    return resized[0].round_().clamp_(0, 255).to(torch.uint8)


#: Overlays of an image whose shorter side is below this many pixels (a 28x28 Fashion-MNIST
#: digit, say) are enlarged by a whole factor to reach it, so that they and their legends can
#: be read; never beyond :data:`MAX_ENLARGED_SIDE` pixels on the longer side.
MIN_OVERLAY_SIDE = 224
MAX_ENLARGED_SIDE = 4096


def enlargement(height: int, width: int) -> int:
    """The whole factor by which overlays of a ``height`` x ``width`` image are enlarged: the
    least that brings the shorter side to :data:`MIN_OVERLAY_SIDE` (1 for larger images), held
    to :data:`MAX_ENLARGED_SIDE` pixels on the longer side."""
    short, long = max(1, min(height, width)), max(1, height, width)
    return max(1, min(-(-MIN_OVERLAY_SIDE // short), MAX_ENLARGED_SIDE // long))


def enlarge(image: Tensor, factor: int) -> Tensor:
    """``image`` (``Tensor[3,H,W]`` uint8) enlarged ``factor`` times, nearest neighbour (each
    pixel becomes a ``factor`` x ``factor`` block, so the pixels stay visible):
    ``Tensor[3, H * factor, W * factor]``."""
    if factor == 1:
        return image
    return image.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2).contiguous()


def check_mask(mask: object, image_hw: tuple[int, int]) -> Tensor:
    """Return ``mask`` as ``Tensor[H,W]`` bool (on the device it came on; CPU for an array).

    Args:
        mask: a tensor or numpy array of the image's size ``image_hw``, bool or of 0s and 1s.
        image_hw: (height, width) of the image.

    Raises:
        InvalidArgumentError: anything else, naming the argument ``mask``.
    """
    import numpy as np
    import torch

    from camtool.errors import InvalidArgumentError

    if isinstance(mask, np.ndarray):
        if mask.dtype.kind not in "biuf":
            raise InvalidArgumentError("mask", f"unsupported type {mask.dtype}")
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, torch.Tensor):
        raise InvalidArgumentError(
            "mask", f"expected a tensor or numpy array [H, W], got {type(mask).__name__}"
        )
    if tuple(mask.shape) != image_hw:
        raise InvalidArgumentError(
            "mask", f"shape {list(mask.shape)} does not match the image's {list(image_hw)}"
        )
    if mask.dtype != torch.bool:
        if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
            raise InvalidArgumentError("mask", "expected bools or 0s and 1s")
        mask = mask != 0
    return mask.detach()
