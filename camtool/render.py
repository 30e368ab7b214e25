"""Heatmaps -> pixels: normalise, upsample, colour-map, blend, legends and captions (the CAM box
is in :mod:`camtool.boxes`).

Plain tensors in, plain tensors out: heatmaps are ``Tensor[H,W]`` (or ``[k,H,W]``) float in
[0, 1]; images and overlays are ``Tensor[3,H,W]`` uint8 RGB (:func:`overlay` also reads any
image :func:`camtool.explain` reads). Functions work on any device.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache, lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from camtool.errors import ImageReadError, InvalidArgumentError
from camtool.geometry import FeatureGeometry
from camtool.image import Layout, check_mask, resize_image
from camtool.io.images import ImageSource, load_image
from camtool.io.opencv import cv2
from camtool.settings import DEFAULT_UPSAMPLE, check_alpha, check_upsample

#: Colour maps by name: OpenCV's colour map, or None for ``gray`` (black to white). Names are
#: matched in any case (:func:`colormap_name`).
COLORMAPS: dict[str, int | None] = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "plasma": cv2.COLORMAP_PLASMA,
    "cividis": cv2.COLORMAP_CIVIDIS,
    "hot": cv2.COLORMAP_HOT,
    "parula": cv2.COLORMAP_PARULA,
    "twilight": cv2.COLORMAP_TWILIGHT,
    "rainbow": cv2.COLORMAP_RAINBOW,
    "bone": cv2.COLORMAP_BONE,
    "gray": None,
}


def colormap_name(name: str) -> str:
    """Return the :data:`COLORMAPS` name for ``name`` in any case (``"JET"`` -> ``"jet"``).

    Raises:
        InvalidArgumentError: a name that is not a colour map, listing the choices.
    """
    wanted = name.strip().lower() if isinstance(name, str) else name
    if wanted not in COLORMAPS:
        raise InvalidArgumentError(
            name, f"unknown colour map; choose one of {', '.join(COLORMAPS)}"
        )
    return wanted


@cache
def _colormap_table(name: str) -> np.ndarray:
    """The colour map ``name`` (any case) as OpenCV's user table: ``uint8 [256, 1, 3]`` BGR."""
    code = COLORMAPS[colormap_name(name)]
    levels = np.arange(256, dtype=np.uint8).reshape(256, 1)
    if code is None:  # gray: level -> (level, level, level)
        return np.ascontiguousarray(np.repeat(levels[:, :, None], 3, axis=2))
    return cv2.applyColorMap(levels, code).reshape(256, 1, 3)


#: How maps become colours: ``"joint"`` (the default) puts all maps of one image on one scale
#: (one minimum and maximum over all of them), so a class the model barely sees is drawn cooler
#: than the top class; ``"per-map"`` stretches each map to the full colour range on its own,
#: which shows each map's shape best but makes every map look equally strong.
SCALES: tuple[str, ...] = ("joint", "per-map")
DEFAULT_SCALE = "joint"


def check_scale(scale: str) -> str:
    """Return ``scale`` when it is one of :data:`SCALES`; raise ``InvalidArgumentError`` else."""
    if scale not in SCALES:
        raise InvalidArgumentError(scale, f"unknown scale; choose one of {', '.join(SCALES)}")
    return scale


def scale_range(cams: Tensor, scale: str = DEFAULT_SCALE) -> tuple[Tensor, Tensor]:
    """The values that become 0 and 1 when ``cams`` (``Tensor[k,h,w]``) are normalised.

    Returns:
        ``(low, high)``, each ``Tensor[k]`` float32: per map for ``"per-map"``, the same
        minimum and maximum over all ``k`` maps for ``"joint"``.
    """
    flat = cams.float().flatten(-2)
    low, high = flat.amin(dim=-1), flat.amax(dim=-1)
    if check_scale(scale) == "joint" and flat.numel():
        low = low.amin(dim=-1, keepdim=True).expand_as(low)
        high = high.amax(dim=-1, keepdim=True).expand_as(high)
    return low, high


def normalize_cams(cams: Tensor, scale: str = "per-map") -> Tensor:
    """Min-max normalise the maps of ``Tensor[..., k, h, w]`` to [0, 1] (a flat map becomes 0).

    ``scale="per-map"`` normalises each map on its own; ``"joint"`` uses one minimum and maximum
    over the ``k`` maps (the last three dimensions), so the maps stay comparable.
    """
    if check_scale(scale) == "joint" and cams.ndim >= 3:
        return normalize_cams(cams.flatten(-3)[..., None, :], "per-map").view_as(cams)
    flat = cams.float().flatten(-2)
    low = flat.amin(dim=-1, keepdim=True)
    span = flat.amax(dim=-1, keepdim=True) - low
    normalised = (flat - low) / span.clamp(min=torch.finfo(torch.float32).tiny)
    return normalised.where(span > 0, torch.zeros_like(normalised)).view_as(cams)


def upsample_cams(
    cams: Tensor,
    input_hw: tuple[int, int],
    out_hw: tuple[int, int],
    geometry: FeatureGeometry | None = None,
    upsample: str = DEFAULT_UPSAMPLE,
) -> Tensor:
    """Resize maps from feature resolution to the pixels of the image the network saw.

    ``upsample="placed"``: each cell's value is placed at the centre of its receptive field
    (``geometry``, measured while the network ran; by default cells are assumed to tile the
    input from its top-left). The maps are upsampled over the whole cell grid, shifted to where
    the grid really lies, and cut to the input's extent, rather than stretched over it.
    ``upsample="stretch"``: the grid is stretched over the whole image (``geometry`` is not
    used), exactly as ``cv2.resize(cam, (W, H))`` (bilinear) and
    ``F.interpolate(cams, (H, W), mode="bilinear", align_corners=False)`` do.

    Args:
        cams: ``Tensor[k,h,w]`` float.
        input_hw: (height, width) of the network input the maps come from.
        out_hw: (height, width) in pixels of the image part that input shows.
        geometry: where the cells sit on the input (see :class:`camtool.geometry.FeatureGeometry`).
        upsample: ``"placed"`` or ``"stretch"`` (see :data:`camtool.settings.UPSAMPLES`).

    Returns:
        ``Tensor[k,*out_hw]`` float32, bilinear, edge values held beyond the outer cell centres.

    Raises:
        InvalidArgumentError: an unknown ``upsample``.
    """
    feature_hw = (int(cams.shape[-2]), int(cams.shape[-1]))
    placed = placement(upsample, geometry, (int(input_hw[0]), int(input_hw[1])), feature_hw)
    wy, wx = _weight_tensors(feature_hw, tuple(input_hw), tuple(out_hw), placed)
    # Separable: mix columns on the small map first, then rows ([k,h,w] -> [k,h,W] -> [k,H,W]).
    return torch.matmul(wy.to(cams.device), cams.float() @ wx.to(cams.device).T)


def placement(
    upsample: str,
    geometry: FeatureGeometry | None,
    input_hw: tuple[int, int],
    feature_hw: tuple[int, int],
) -> FeatureGeometry | None:
    """The geometry that upsampling ``upsample`` uses: ``geometry`` itself for ``"placed"``,
    :meth:`~camtool.geometry.FeatureGeometry.stretched` for ``"stretch"`` (pass it to
    :func:`upsample_weights` or :func:`camtool.boxes.small_map_box`).

    Raises:
        InvalidArgumentError: an unknown ``upsample``.
    """
    if check_upsample(upsample) == "stretch":
        return FeatureGeometry.stretched(input_hw, feature_hw)
    return geometry


@lru_cache(maxsize=64)
def _weight_tensors(
    feature_hw: tuple[int, int],
    input_hw: tuple[int, int],
    out_hw: tuple[int, int],
    geometry: FeatureGeometry | None,
) -> tuple[Tensor, Tensor]:
    """:func:`upsample_weights` as CPU tensors, kept for the next image of the same size."""
    wy, wx = upsample_weights(feature_hw, input_hw, out_hw, geometry)
    return torch.from_numpy(wy), torch.from_numpy(wx)


def upsample_weights(
    feature_hw: tuple[int, int],
    input_hw: tuple[int, int],
    out_hw: tuple[int, int],
    geometry: FeatureGeometry | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`upsample_cams` as two matrices: ``up = Wy @ cam @ Wx.T`` for a ``[h,w]`` map.

    Bilinear upsampling is separable, so each output row (column) is a fixed mix of at most two
    map rows (columns); the matrices hold those weights, with the same grid placement, edge
    holding and cut as :func:`upsample_cams`. Any rows or columns of the upsampled map can then
    be computed alone, without the rest (``Wy[rows] @ cam @ Wx[cols].T``).

    Returns:
        ``(Wy, Wx)``: ``float32 [out_h, h]`` and ``float32 [out_w, w]``.
    """
    geometry = geometry or FeatureGeometry.uniform(input_hw, feature_hw)
    matrices = []
    for axis in (0, 1):
        cells, out = feature_hw[axis], out_hw[axis]
        scale = out / input_hw[axis]
        stride, origin = geometry.stride[axis], geometry.origin[axis]
        grid = max(1, round(cells * stride * scale))
        shift = round((origin - stride / 2) * scale)
        # Output pixel p shows grid pixel clamp(p - shift), whose source position is torch's
        # bilinear rule without corner alignment: (g + 0.5) * cells / grid - 0.5, held at 0.
        g = np.clip(np.arange(out) - shift, 0, grid - 1)
        source = np.maximum((g + 0.5) * (cells / grid) - 0.5, 0.0)
        low = np.minimum(source.astype(np.int64), cells - 1)
        high = np.minimum(low + 1, cells - 1)
        frac = source - low
        weights = np.zeros((out, cells), dtype=np.float64)
        rows = np.arange(out)
        np.add.at(weights, (rows, low), 1 - frac)
        np.add.at(weights, (rows, high), frac)
        matrices.append(weights.astype(np.float32))
    return matrices[0], matrices[1]


@cache
def _colormap_lut(name: str) -> Tensor:
    """The colour map ``name`` as ``Tensor[256, 3]`` uint8 RGB."""
    return torch.from_numpy(_colormap_table(name).reshape(256, 3)[:, ::-1].copy())


def colormap_colors(name: str, count: int = 16) -> list[tuple[int, int, int]]:
    """``count`` RGB colours of a colour map, evenly spaced from its lowest value to its highest
    (for legends drawn elsewhere, an HTML page's gradient, say)."""
    lut = _colormap_lut(name)
    picks = torch.linspace(0, 255, max(2, count)).round().long()
    return [(int(r), int(g), int(b)) for r, g, b in lut[picks].tolist()]


def _check_finite(heatmap: Tensor) -> None:
    """Refuse a heatmap with NaN or infinite values (they have no colour)."""
    if heatmap.is_floating_point() and not bool(torch.isfinite(heatmap).all()):
        raise InvalidArgumentError("heatmap", "has NaN or infinite values")


def colorize(heatmap: Tensor, colormap: str = "jet") -> Tensor:
    """Colour a ``Tensor[H,W]`` heatmap in [0, 1] with a colour map: ``Tensor[3,H,W]`` uint8 RGB.

    Raises:
        InvalidArgumentError: a heatmap that is not 2-D, or holds NaN or infinite values.
    """
    if heatmap.ndim != 2:
        raise InvalidArgumentError("heatmap", f"expected shape [H, W], got {list(heatmap.shape)}")
    _check_finite(heatmap)
    lut = _colormap_lut(colormap).to(heatmap.device)
    index = (heatmap.float().clamp(0, 1) * 255).round().long()
    return lut[index].permute(2, 0, 1)


def overlay(
    image: ImageSource,
    heatmap: Tensor | np.ndarray[Any, Any],
    alpha: float = 0.5,
    colormap: str = "jet",
    mask: Tensor | None = None,
    layout: Layout | None = None,
) -> Tensor:
    """Blend a coloured heatmap onto an image.

    Args:
        image: what :func:`camtool.explain` takes as one image: a path, a PIL image, or a tensor
            or numpy array ``[3,H,W]``, ``[H,W,3]`` or ``[H,W]`` (uint8, or float in [0, 1]);
            read by :func:`camtool.io.images.load_image`.
        heatmap: ``[h,w]`` (or ``[1,h,w]``) float in [0, 1], a tensor or a numpy array, of any
            size: a map of another size is stretched over the image (bilinear, as
            ``cv2.resize`` does; :func:`upsample_cams` with ``upsample="stretch"``).
        alpha: weight of the heatmap, in [0, 1].
        colormap: a name from :data:`COLORMAPS`, in any case.
        mask: optional ``[H,W]`` tensor or numpy array, bool or of 0s and 1s; outside it (0,
            False) the image is left as it is.
        layout: ``"CHW"`` or ``"HWC"`` for an image whose shape cannot tell (``[3,H,3]``).

    Returns:
        ``Tensor[3,H,W]`` uint8 RGB: ``(1 - alpha) * image + alpha * colour``.

    Raises:
        ImageReadError: an image that cannot be read (named ``image``).
        InvalidArgumentError: an alpha that is no number in [0, 1]; a heatmap that is no 2-D
            map or holds NaN or infinite values; a mask of another size, or not of 0s and 1s.
    """
    alpha = check_alpha(alpha)
    image = _image_of(image, layout)
    heatmap = _heatmap_of(heatmap, (int(image.shape[1]), int(image.shape[2])), image.device)
    if mask is not None:
        mask = check_mask(mask, (int(image.shape[1]), int(image.shape[2])))
    if image.device.type == "cpu" and heatmap.device.type == "cpu":
        blended = _overlay_with_opencv(image, heatmap, alpha, colormap)
        if mask is not None:
            outside = ~mask.cpu().numpy()
            pixels = blended.permute(1, 2, 0).numpy()
            pixels[outside] = image.permute(1, 2, 0).numpy()[outside]
        return blended
    colour = colorize(heatmap, colormap).float()
    blended = image.float() * (1 - alpha) + colour * alpha
    if mask is not None:
        blended = torch.where(mask.to(blended.device), blended, image.float())
    return blended.round_().clamp_(0, 255).to(torch.uint8)


def _image_of(image: ImageSource, layout: Layout | None) -> Tensor:
    """``image`` as ``Tensor[3,H,W]`` uint8 (a uint8 one as it is), by :func:`load_image`."""
    if (  # as before: a uint8 [3,H,W] tensor is used as it is, on its device
        isinstance(image, Tensor) and image.dtype == torch.uint8 and layout != "HWC"
        and image.ndim == 3 and image.shape[0] == 3
    ):  # fmt: skip
        return image
    try:
        return load_image(image, layout=layout)
    except ImageReadError as exc:  # a file is named by its path, anything else as the argument
        if isinstance(image, (str, os.PathLike)):
            raise
        raise type(exc)("image", exc.problem) from None


def _heatmap_of(
    heatmap: Tensor | np.ndarray[Any, Any], image_hw: tuple[int, int], device: torch.device
) -> Tensor:
    """``heatmap`` as ``Tensor[H,W]`` float on ``device``, stretched to ``image_hw`` when its
    size differs."""
    if isinstance(heatmap, np.ndarray):
        if heatmap.dtype.kind not in "biuf":
            raise InvalidArgumentError("heatmap", f"unsupported type {heatmap.dtype}")
        heatmap = torch.from_numpy(np.asarray(heatmap, dtype=np.float32))
    if not isinstance(heatmap, Tensor):
        raise InvalidArgumentError(
            "heatmap", f"expected a tensor or numpy array, got {type(heatmap).__name__}"
        )
    if heatmap.ndim == 3 and heatmap.shape[0] == 1:
        heatmap = heatmap[0]
    if heatmap.ndim != 2 or heatmap.numel() == 0:
        raise InvalidArgumentError("heatmap", f"expected shape [H, W], got {list(heatmap.shape)}")
    _check_finite(heatmap)
    heatmap = heatmap.detach().to(device)
    if tuple(heatmap.shape) != image_hw:
        hw = (int(heatmap.shape[0]), int(heatmap.shape[1]))
        heatmap = upsample_cams(heatmap[None], hw, image_hw, None, "stretch")[0]
    return heatmap.float()


def _overlay_with_opencv(image: Tensor, heatmap: Tensor, alpha: float, colormap: str) -> Tensor:
    """The same blend as :func:`overlay` on the CPU with OpenCV, in three passes over the pixels
    (levels, colour table, ``addWeighted`` in place) and no copy of the image when it is
    stored channels-last (as decoded images are): ~6x faster than indexing float tensors."""
    heat = np.ascontiguousarray(heatmap.detach().float().numpy())
    # round(clamp(h, 0, 1) * 255), computed in float32 and rounded half to even as torch does
    # (OpenCV saturates to 0..255; the second term is nil).
    levels = cv2.addWeighted(heat, 255.0, heat, 0.0, 0.0, dtype=cv2.CV_8U)
    blended = cv2.applyColorMap(levels, _colormap_table_rgb(colormap))  # RGB, [H,W,3]
    pixels = image.permute(1, 2, 0).numpy()
    if not pixels.flags.c_contiguous:
        pixels = np.ascontiguousarray(pixels)
    cv2.addWeighted(pixels, 1 - alpha, blended, alpha, 0.0, dst=blended)
    return torch.from_numpy(blended).permute(2, 0, 1)


@cache
def _colormap_table_rgb(name: str) -> np.ndarray:
    """:func:`_colormap_table` in RGB order: ``uint8 [256, 1, 3]``."""
    return np.ascontiguousarray(_colormap_table(name)[:, :, ::-1])


def fit_within(tile: Tensor, side: int) -> Tensor:
    """``tile`` (``Tensor[3,H,W]`` uint8) shrunk, antialiased, to at most ``side`` px on its
    longer side; returned as it is when it fits."""
    height, width = int(tile.shape[1]), int(tile.shape[2])
    factor = side / max(height, width)
    if factor >= 1:
        return tile
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    return resize_image(tile, size, "bilinear")


def labelled_grid(
    tiles: Sequence[Tensor], captions: Sequence[str], columns: int | None = None, gap: int = 6
) -> Tensor:
    """Lay out images in a grid, each under a caption, on a white background.

    Args:
        tiles: ``Tensor[3,H,W]`` uint8 images (any sizes; each cell is as large as the largest).
        captions: one line of text per tile (non-ASCII characters are shown as ``?``).
        columns: tiles per row (default: all in one row).

    Returns:
        ``Tensor[3,H',W']`` uint8 RGB.
    """
    if not tiles or len(tiles) != len(captions):
        raise InvalidArgumentError(
            "tiles", f"need as many captions as tiles, got {len(tiles)} and {len(captions)}"
        )
    columns = max(1, min(columns or len(tiles), len(tiles)))
    rows = -(-len(tiles) // columns)
    cell_h = max(int(t.shape[1]) for t in tiles)
    cell_w = max(int(t.shape[2]) for t in tiles)
    band = max(20, cell_h // 12)
    scale = band / 36
    height = rows * (cell_h + band) + (rows + 1) * gap
    width = columns * cell_w + (columns + 1) * gap
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for index, (tile, caption) in enumerate(zip(tiles, captions, strict=True)):
        top = gap + (index // columns) * (cell_h + band + gap)
        left = gap + (index % columns) * (cell_w + gap)
        text, size = _fit_text(
            caption.encode("ascii", "replace").decode("ascii"), cell_w - 4, scale
        )
        cv2.putText(canvas, text, (left + 2, top + int(band * 0.75)), cv2.FONT_HERSHEY_SIMPLEX, size,
                    (0, 0, 0), max(1, round(size * 1.5)), cv2.LINE_AA)  # fmt: skip

        h, w = int(tile.shape[1]), int(tile.shape[2])
        canvas[top + band : top + band + h, left : left + w] = tile.permute(1, 2, 0).cpu().numpy()
    return torch.from_numpy(canvas).permute(2, 0, 1).contiguous()


def _fit_text(text: str, width: int, scale: float) -> tuple[str, float]:
    """Shrink the font (to half at most), then shorten the text with '...', to fit ``width``."""

    def wide(candidate: str, size: float) -> int:
        return int(
            cv2.getTextSize(candidate, cv2.FONT_HERSHEY_SIMPLEX, size, max(1, round(size * 1.5)))[
                0
            ][0]
        )

    size = scale
    while wide(text, size) > width and size > scale / 2:
        size *= 0.9
    while len(text) > 1 and wide(text, size) > width:
        text = text[:-4] + "..." if len(text) > 4 else text[:-1]
    return text, size


def legend_height(width: int) -> int:
    """Height in pixels of the legend band under an overlay ``width`` pixels wide: three rows
    (caption, colour bar, its meaning) of ``max(14, round(width / 24))`` px each."""
    return 3 * max(14, round(width / 24))


def draw_legend(
    image: Tensor, colormap: str, caption: str, meaning: str, low: str = "low", high: str = "high"
) -> Tensor:
    """Return ``image`` (``Tensor[3,H,W]`` uint8) with a legend band added below it:
    ``Tensor[3, H + legend_height(W), W]``.

    The band holds ``caption`` (the class and its probability, say), a bar of the colour map from
    its lowest colour (left) to its highest (right), and under the bar ``low`` at its left end,
    ``high`` at its right end and ``meaning`` between them (non-ASCII characters become ``?``).
    """
    lut = _colormap_lut(colormap).numpy()
    width = int(image.shape[2])
    row = legend_height(width) // 3
    band = np.full((3 * row, width, 3), 255, dtype=np.uint8)
    pad = max(1, row // 6)
    bar = np.linspace(0, 255, max(1, width - 2 * pad)).round().astype(np.intp)
    band[row + pad : 2 * row - pad, pad : pad + len(bar)] = lut[bar][None]
    scale = row / 32

    def text(line: str, left: int, top: int, room: int, align: str = "left") -> int:
        shown, size = _fit_text(line.encode("ascii", "replace").decode("ascii"), room, scale)
        thickness = max(1, round(size * 1.5))
        (wide, _), _ = cv2.getTextSize(shown, cv2.FONT_HERSHEY_SIMPLEX, size, thickness)
        x = (
            left
            if align == "left"
            else left + (room - wide) // 2
            if align == "centre"
            else left + room - wide
        )
        cv2.putText(band, shown, (x, top + int(row * 0.72)), cv2.FONT_HERSHEY_SIMPLEX, size,
                    (0, 0, 0), thickness, cv2.LINE_AA)  # fmt: skip
        return int(wide)

    room = width - 2 * pad
    text(caption, pad, 0, room)
    used = text(low, pad, 2 * row, room // 4) + 2 * pad
    used = max(used, text(high, pad, 2 * row, room, "right") + 2 * pad)
    if room - 2 * used > 4 * row:  # too narrow an image shows the range alone
        text(meaning, pad + used, 2 * row, room - 2 * used, "centre")
    pixels = np.concatenate([image.permute(1, 2, 0).cpu().numpy(), band], axis=0)
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).to(image.device)


def draw_label(image: Tensor, text: str) -> Tensor:
    """Return a copy of ``image`` (``Tensor[3,H,W]`` uint8) with ``text`` on a dark band at the
    top left (non-ASCII characters are shown as ``?``)."""
    height, width = int(image.shape[1]), int(image.shape[2])
    scale = max(0.4, min(height, width) / 500)
    thickness = max(1, round(scale * 1.6))
    text = text.encode("ascii", "replace").decode("ascii")
    (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    canvas = np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())
    pad = max(2, text_h // 3)
    cv2.rectangle(canvas, (0, 0), (text_w + 2 * pad, text_h + baseline + 2 * pad), (0, 0, 0), -1)
    cv2.putText(canvas, text, (pad, pad + text_h), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                thickness, cv2.LINE_AA)  # fmt: skip
    return torch.from_numpy(canvas).permute(2, 0, 1).contiguous().to(image.device)
