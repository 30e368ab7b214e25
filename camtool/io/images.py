"""Images: files, tensors, arrays and PIL images <-> ``Tensor[3,H,W]`` uint8 RGB, and the sources
:func:`camtool.explain` takes. The only module (with :mod:`camtool.io.videos`) where OpenCV's BGR,
HWC arrays exist.

Images cross the module boundary as ``Tensor[3, H, W]`` of dtype ``uint8`` in RGB order, shown
the way a photo viewer shows them (EXIF orientation applied).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from camtool.errors import (
    CamtoolError,
    ImageReadError,
    ImageTooLargeError,
    InvalidArgumentError,
    OutputWriteError,
)
from camtool.image import CHANNEL_COUNTS, Layout, Preprocessing, image_layout
from camtool.io.files import read_file, write_bytes_atomic
from camtool.io.formats import FORMATS, ImageFormat, identify
from camtool.io.opencv import cv2

#: Images with more pixels than this are refused before they are decoded, instead of exhausting
#: memory (100 megapixels: a 300 MB image, plus heatmaps of the same size). Override with the
#: environment variable ``CAMTOOL_MAX_PIXELS`` or the ``max_pixels`` argument.
MAX_PIXELS = 100_000_000


def max_pixels_limit() -> int:
    """Return the pixel limit in force: ``CAMTOOL_MAX_PIXELS`` if set, else :data:`MAX_PIXELS`."""
    value = os.environ.get("CAMTOOL_MAX_PIXELS")
    return int(value) if value and value.isdigit() else MAX_PIXELS


#: An image file may hold at most this many bytes per allowed pixel (16-bit RGBA, uncompressed),
#: plus :data:`IMAGE_METADATA_BYTES`; see :func:`image_byte_limit`.
IMAGE_BYTES_PER_PIXEL = 8
IMAGE_METADATA_BYTES = 16 << 20


def image_byte_limit(max_pixels: int) -> int:
    """The most bytes an image file may hold under a pixel limit of ``max_pixels``."""
    return IMAGE_BYTES_PER_PIXEL * max_pixels + IMAGE_METADATA_BYTES


@cache
def readable_formats() -> tuple[ImageFormat, ...]:
    """The formats of :data:`camtool.formats.FORMATS` that the installed OpenCV can decode,
    probed once by asking OpenCV for a decoder for each format's signature."""
    readable = []
    with tempfile.TemporaryDirectory(prefix="camtool-probe-") as folder:
        for number, form in enumerate(FORMATS):
            probe = os.path.join(folder, f"probe{number}{form.suffixes[0]}")
            with open(probe, "wb") as handle:
                handle.write(form.sample + b"\0" * 64)
            if _decodes(probe, form):
                readable.append(form)
    return tuple(readable)


def _decodes(probe: str, form: ImageFormat) -> bool:
    """Whether OpenCV has a decoder for the signature in file ``probe``, or else decodes a tiny
    image it encoded in ``form``."""
    with suppress(cv2.error):
        if cv2.haveImageReader(probe):
            return True
    with suppress(cv2.error):
        ok, data = cv2.imencode(form.suffixes[0], np.zeros((2, 2, 3), np.uint8))
        return bool(ok) and cv2.imdecode(data, cv2.IMREAD_COLOR) is not None
    return False


def image_suffixes() -> frozenset[str]:
    """File name suffixes read as images (the folder walk's list): those of
    :func:`readable_formats`."""
    return frozenset(s for form in readable_formats() for s in form.suffixes)


ImageSource = str | os.PathLike[str] | Tensor | np.ndarray[Any, Any] | Any
"""Anything :func:`load_image` accepts: a path, a tensor or numpy array (``[3,H,W]``, ``[H,W,3]``
or ``[H,W]``), a PIL image."""


def source_name(source: ImageSource) -> str:
    """Return a short name for an image source: the path for files, else its type in brackets."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"<{type(source).__name__}>"


def load_image(
    source: ImageSource, max_pixels: int | None = None, layout: Layout | None = None
) -> Tensor:
    """Load an image from a path, a tensor, a numpy array or a PIL image.

    Args:
        source: a file path; a tensor or a numpy array holding one RGB image, channels first
            (``[3,H,W]``) or last (``[H,W,3]``), or a gray ``[H,W]`` one (uint8, uint16 divided
            by 257, float in [0, 1], or another integer type whose values lie in 0..255; booleans
            are refused; a fourth channel, alpha, is dropped); or a PIL image of any mode (modes
            ``I`` and ``F`` carry no range: it is taken from the values, see
            :func:`_pil_to_image`). NaN or infinite pixels are refused.
        max_pixels: refuse images with more pixels (default: :func:`max_pixels_limit`).
        layout: ``"CHW"`` or ``"HWC"`` for a tensor or an array; by default the shape tells (the
            axis of length 1, 3 or 4 holds the channels), and a shape that does not (``[3,H,3]``)
            is refused with a request for ``layout`` (see :func:`camtool.image.image_layout`).

    Returns:
        ``Tensor[3,H,W]`` uint8, RGB.

    Raises:
        ImageReadError: the source is missing, empty, truncated, not an image, or of an
            unsupported layout; :class:`ImageTooLargeError` above the pixel limit.
    """
    limit = max_pixels_limit() if max_pixels is None else max_pixels
    name = source_name(source)
    if isinstance(source, (str, os.PathLike)):
        image = _read_image_file(Path(source), limit)
    elif isinstance(source, Tensor):
        image = _tensor_to_image(source, name, layout)
    elif isinstance(source, np.ndarray):
        image = _array_to_image(source, name, layout)
    elif hasattr(source, "convert") and hasattr(source, "mode"):  # a PIL image
        image = _pil_to_image(source, name, limit)
    else:
        raise ImageReadError(name, "not a path, tensor, numpy array or PIL image")
    _check_pixels(name, image.shape[-2], image.shape[-1], limit)
    return image


def _pil_to_image(picture: Any, name: str, limit: int) -> Tensor:
    """A PIL image as ``Tensor[3,H,W]`` uint8. Its pixels are decoded here (a lazily opened file
    is read now), after its size passed the pixel limit. Modes ``I`` (32-bit integers) and ``F``
    (floats) carry no range, so it is taken from the values: ``I`` in 0..255 is 8-bit and in
    0..65535 16-bit; ``F`` in [0, 1] is a fraction and in [0, 255] 8-bit; others are refused.
    ``I;16`` modes are 16-bit."""
    from PIL import ImageOps

    width, height = picture.size
    _check_pixels(name, height, width, limit)
    try:
        picture.load()
        picture = ImageOps.exif_transpose(picture)  # as a photo viewer shows it
        if picture.mode in ("I;16", "I;16B", "I;16L"):
            return _array_to_image(np.asarray(picture).astype(np.uint16), name)
        if picture.mode in ("I", "F"):
            return _array_to_image(_scaled_by_range(np.asarray(picture), picture.mode, name), name)
        return _array_to_image(np.asarray(picture.convert("RGB")), name)
    except (MemoryError, CamtoolError):  # camtool's own refusals (a range, NaN) as they are
        raise
    except Exception as exc:  # PIL's decoders raise many types (OSError, AssertionError, ...)
        why = str(exc) or ("its file is closed" if _pil_file_closed(picture) else "")
        raise ImageReadError(
            name, f"cannot decode the PIL image: {why or type(exc).__name__}"
        ) from None


def _pil_file_closed(picture: Any) -> bool:
    """Whether a lazily opened PIL image has lost its file (opened in a ``with`` block that has
    ended, or closed) before its pixels were read."""
    return getattr(picture, "fp", None) is None and getattr(picture, "_im", None) is None


def _scaled_by_range(values: np.ndarray[Any, Any], mode: str, name: str) -> np.ndarray[Any, Any]:
    """Mode ``I`` pixels as uint8 (0..255) or uint16 (0..65535); mode ``F`` as floats in
    [0, 1], by the range of the values (see :func:`_pil_to_image`)."""
    if values.size and not np.isfinite(values).all():
        raise ImageReadError(name, "image has NaN or infinite pixels")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode == "F":
        if low >= 0 and high <= 1:
            return values
        if low >= 0 and high <= 255:
            return values / 255.0
        raise ImageReadError(
            name, f"mode F pixels must lie in [0, 1] or [0, 255], not [{low:g}, {high:g}]"
        )
    if low >= 0 and high <= 255:
        return values.astype(np.uint8)
    if low >= 0 and high <= 65535:
        return values.astype(np.uint16)
    raise ImageReadError(name, f"mode I pixels must lie in 0..65535, not {low:g}..{high:g}")


def _check_pixels(name: str, height: int, width: int, limit: int) -> None:
    if height * width > limit:
        raise ImageTooLargeError(
            name,
            f"image is {width}x{height} = {height * width / 1e6:.0f} megapixels, above the limit "
            f"of {limit / 1e6:.0f} (set CAMTOOL_MAX_PIXELS to raise it)",
        )
    if height < 1 or width < 1:
        raise ImageReadError(name, f"image has no pixels ({width}x{height})")


def _read_image_file(path: Path, limit: int) -> Tensor:
    data = read_file(path, image_byte_limit(limit))
    if not data:
        raise ImageReadError(path, "file is empty")
    form = identify(data)
    if form is None:
        raise ImageReadError(path, "not an image file that OpenCV can decode")
    if form not in readable_formats():
        raise ImageReadError(path, f"this OpenCV build cannot decode {form.name} images")
    width, height = form.size(data, path)
    _check_pixels(str(path), height, width, limit)
    form.check(data, path)
    try:
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error as exc:
        if "MAX_IMAGE_PIXELS" in str(exc):  # cv2 was loaded before camtool set its ceiling
            raise ImageTooLargeError(
                path,
                "image is above OpenCV's own pixel limit (OpenCV was loaded before camtool; set "
                "OPENCV_IO_MAX_IMAGE_PIXELS before importing cv2 to raise it)",
            ) from None
        array = None
    if array is None:
        raise ImageReadError(path, f"not a {form.name} file that OpenCV can decode")
    rgb = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    return _array_to_image(rgb, str(path))


def _tensor_to_image(tensor: Tensor, name: str, layout: str | None = None) -> Tensor:
    if tensor.device.type == "meta" or tensor.layout != torch.strided:
        what = "a meta tensor" if tensor.device.type == "meta" else f"a {tensor.layout} tensor"
        raise ImageReadError(name, f"{what} holds no pixels to read; pass a dense tensor")
    t = tensor.detach()
    if t.ndim == 2:
        t, layout = t.unsqueeze(0), "CHW"
    if t.ndim != 3 or not {t.shape[0], t.shape[2]} & set(CHANNEL_COUNTS):
        raise ImageReadError(
            name,
            "expected a tensor of shape [3, H, W], [H, W, 3] or [H, W] (one image), got "
            f"{list(tensor.shape)}",
        )
    if image_layout(t.shape, layout, name) == "HWC":
        t = t.permute(2, 0, 1)
    t = t[:3] if t.shape[0] == 4 else t.expand(3, -1, -1) if t.shape[0] == 1 else t
    return _to_uint8(t, name).cpu().contiguous()


def _array_to_image(array: np.ndarray[Any, Any], name: str, layout: str | None = "HWC") -> Tensor:
    """An image array as ``Tensor[3,H,W]`` uint8; ``layout`` as for :func:`load_image` (arrays
    decoded by camtool itself are ``[H,W,C]``)."""
    if array.dtype.kind not in "biuf":
        raise ImageReadError(
            name, f"unsupported pixel type {array.dtype} (pixels are integers or floats)"
        )
    if array.ndim == 2:
        array, layout = array[:, :, None], "HWC"
    if array.ndim != 3 or not {array.shape[0], array.shape[2]} & set(CHANNEL_COUNTS):
        raise ImageReadError(
            name,
            "expected an array of shape [H, W, 3], [3, H, W] or [H, W] (one image), got "
            f"{list(array.shape)}",
        )
    if image_layout(array.shape, layout, name) == "CHW":
        array = array.transpose(1, 2, 0)
    pixels = array[:, :, :3]
    if not (pixels.flags.c_contiguous and pixels.flags.writeable):
        pixels = np.array(pixels, order="C")  # torch.from_numpy wants its own writable copy
    t = torch.from_numpy(pixels).permute(2, 0, 1)
    if t.shape[0] == 1:
        return _to_uint8(t.expand(3, -1, -1), name).contiguous()
    # Kept channels-last (a [3,H,W] view of the [H,W,3] pixels): no transposing copy here, and
    # the uint8 resize for the network and the OpenCV overlay read it as it is, ~2 ms faster
    # per 640x480 photo than through a channels-first copy.
    return _to_uint8(t, name)


def _to_uint8(t: Tensor, name: str) -> Tensor:
    """Pixels as uint8: uint8 as they are, uint16 divided by 257, floats in [0, 1] times 255,
    other integers when they lie in 0..255; booleans, and other integers outside 0..255, are
    refused (no silent clamping or wrapping)."""
    if t.dtype == torch.uint8:
        return t
    if t.dtype == torch.uint16:
        return (t.to(torch.int32) // 257).to(torch.uint8)
    if t.dtype == torch.bool:
        raise ImageReadError(
            name, "bool pixels are no image: pass uint8 (0..255), uint16, or float in [0, 1]"
        )
    if t.is_floating_point():
        if t.numel() and not bool(torch.isfinite(t).all()):
            raise ImageReadError(name, "image has NaN or infinite pixels")
        if t.numel() and (float(t.min()) < -1e-3 or float(t.max()) > 1 + 1e-3):
            raise ImageReadError(
                name, "float pixels must lie in [0, 1] (divide 0..255 values by 255)"
            )
        return (t.float().clamp(0, 1) * 255).round().to(torch.uint8)
    dtype = str(t.dtype).removeprefix("torch.")
    if t.is_complex() or not dtype.startswith(("int", "uint")):
        raise ImageReadError(name, f"unsupported pixel type {dtype}")
    wide = t.double() if dtype in ("uint32", "uint64") else t  # torch has no min of those
    low, high = (int(wide.min()), int(wide.max())) if t.numel() else (0, 0)
    if low < 0 or high > 255:
        raise ImageReadError(
            name,
            f"{dtype} pixels must lie in 0..255, found {low}..{high} (pass uint8, uint16 for "
            "16-bit, or float in [0, 1])",
        )
    return t.to(torch.uint8)


def image_to_bgr_array(image: Tensor) -> np.ndarray[Any, Any]:
    """Return a ``Tensor[3,H,W]`` uint8 RGB image as an OpenCV ``[H,W,3]`` BGR array
    (a ``Tensor[H,W]`` gray image as an ``[H,W]`` array)."""
    if image.ndim == 2:
        return np.ascontiguousarray(image.cpu().numpy())
    pixels = image.permute(1, 2, 0).cpu().numpy()
    if pixels.flags.c_contiguous:  # stored channels-last (decoded images, overlays): one pass
        return cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    return np.ascontiguousarray(pixels[:, :, ::-1])


def encode_image(image: Tensor, suffix: str, quality: int = 95) -> bytes:
    """Encode a ``Tensor[3,H,W]`` uint8 RGB image as PNG or JPEG bytes, by ``suffix`` (".png")."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if suffix.lower() in (".jpg", ".jpeg") else []
    try:
        ok, buffer = cv2.imencode(suffix.lower(), image_to_bgr_array(image), params)
    except cv2.error:
        ok = False
    if not ok:
        raise OutputWriteError(suffix, f"OpenCV cannot encode this image as {suffix.lower()}")
    return bytes(buffer)


def save_image(path: str | os.PathLike[str], image: Tensor, quality: int = 95) -> Path:
    """Write a ``Tensor[3,H,W]`` uint8 RGB (or ``Tensor[H,W]`` gray) image; the format follows
    the suffix (.png, .jpg, ...).

    The file is written under a temporary name and renamed, so it is never seen half-written.
    """
    path = Path(path)
    if (
        not (image.ndim == 2 or (image.ndim == 3 and image.shape[0] == 3))
        or image.dtype != torch.uint8
    ):
        raise OutputWriteError(
            path,
            f"expected a uint8 tensor of shape [3, H, W] or [H, W], got {image.dtype} {list(image.shape)}",
        )
    try:
        data = encode_image(image, path.suffix or ".png", quality)
    except OutputWriteError as exc:
        raise OutputWriteError(path, exc.problem) from None
    write_bytes_atomic(path, data)
    return path


# --------------------------------------------------------------------------------------------
# The sources camtool.explain takes


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
