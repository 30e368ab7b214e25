"""Files <-> tensors. The only module where OpenCV's BGR, HWC arrays exist.

Images cross the module boundary as ``Tensor[3, H, W]`` of dtype ``uint8`` in RGB order, shown
the way a photo viewer shows them (EXIF orientation applied).
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

from camtool.errors import CamtoolError, ImageReadError, ImageTooLargeError, OutputWriteError
from camtool.formats import FORMATS, ImageFormat, identify

#: Images with more pixels than this are refused before they are decoded, instead of exhausting
#: memory (100 megapixels: a 300 MB image, plus heatmaps of the same size). Override with the
#: environment variable ``CAMTOOL_MAX_PIXELS`` or the ``max_pixels`` argument.
MAX_PIXELS = 100_000_000


def max_pixels_limit() -> int:
    """Return the pixel limit in force: ``CAMTOOL_MAX_PIXELS`` if set, else :data:`MAX_PIXELS`."""
    value = os.environ.get("CAMTOOL_MAX_PIXELS")
    return int(value) if value and value.isdigit() else MAX_PIXELS


#: OpenCV's own pixel limit, set far above any ``max_pixels`` so that camtool's limit is the only
#: one that decides: camtool reads every format's size from its header before decoding (see
#: :mod:`camtool.formats`). OpenCV reads this variable once, when it is loaded.
OPENCV_PIXEL_CEILING = 1 << 40
os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(OPENCV_PIXEL_CEILING)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from camtool.image import CHANNEL_COUNTS, Layout, image_layout  # noqa: E402

# OpenCV's own log lines (a truncated BMP, a bad TIFF) would break the one-line error contract.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

#: Text files camtool reads (label files, ``@list`` files, model cards) may hold at most this many
#: bytes (64 MiB: a list of about a million paths).
MAX_TEXT_BYTES = 64 << 20

#: An image file may hold at most this many bytes per allowed pixel (16-bit RGBA, uncompressed),
#: plus :data:`IMAGE_METADATA_BYTES`; see :func:`image_byte_limit`.
IMAGE_BYTES_PER_PIXEL = 8
IMAGE_METADATA_BYTES = 16 << 20

_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def image_byte_limit(max_pixels: int) -> int:
    """The most bytes an image file may hold under a pixel limit of ``max_pixels``."""
    return IMAGE_BYTES_PER_PIXEL * max_pixels + IMAGE_METADATA_BYTES


def read_file(
    path: str | os.PathLike[str],
    max_bytes: int,
    error: type[CamtoolError] = ImageReadError,
    what: str = "image file",
) -> bytes:
    """Read a whole regular file of at most ``max_bytes`` bytes: the one way camtool reads files.

    The file is opened without blocking (opening a FIFO never waits for a writer) and the
    *opened descriptor* is checked, so a name swapped for a FIFO or a device between a check
    and the read cannot get past it. Reading stops past ``max_bytes`` (``/dev/zero`` or a file
    that grows while it is read).

    Args:
        path: the file. max_bytes: the size limit. error: the :class:`CamtoolError` subclass to
            raise. what: what the file should be, for messages ("label file").

    Raises:
        ``error``: missing, unreadable, not a regular file, or above the size limit.
    """
    fd = _open_regular_fd(path, error, what)
    try:
        info = os.fstat(fd)
        if info.st_size > max_bytes:
            raise error(path, _too_big(info.st_size, max_bytes))
        chunks, total = [], 0
        while chunk := os.read(fd, min(1 << 24, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise error(path, _too_big(total, max_bytes))
        return b"".join(chunks)
    except OSError as exc:
        raise error(path, f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _open_regular_fd(path: str | os.PathLike[str], error: type[CamtoolError], what: str) -> int:
    """Open ``path`` for reading without blocking and check the opened descriptor: a regular
    file, else ``error`` (a FIFO, a device, a directory, ...). The caller closes the descriptor."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise error(path, "no such file") from None
    except PermissionError:
        raise error(path, "permission denied") from None
    except OSError as exc:  # a socket (ENXIO), a loop of links, ...
        try:
            mode = os.stat(path).st_mode
        except OSError:
            mode = stat.S_IFREG
        raise error(
            path, _not_regular(mode, what) or f"cannot read: {exc.strerror or exc}"
        ) from None
    try:
        problem = _not_regular(os.fstat(fd).st_mode, what)
    except OSError as exc:
        problem = f"cannot read: {exc.strerror or exc}"
    if problem:
        os.close(fd)
        raise error(path, problem)
    return fd


def open_regular_file(
    path: str | os.PathLike[str], error: type[CamtoolError], what: str
) -> BinaryIO:
    """Open a regular file for reading in binary mode, refusing FIFOs, devices and directories
    on the opened descriptor (see :func:`read_file`), for readers that stream (weights, hashes,
    manifests) rather than read whole."""
    return os.fdopen(_open_regular_fd(path, error, what), "rb")


def _not_regular(mode: int, what: str) -> str | None:
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return f"is a directory, not {'an' if what[0] in 'aeiou' else 'a'} {what}"
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "a special file")
    return f"not a regular file ({kind})"


def _too_big(size: int, limit: int) -> str:
    return f"file holds more than {limit:,} bytes ({size:,} read), above the limit for it"


def read_text_file(
    path: str | os.PathLike[str], error: type[CamtoolError], what: str, encoding: str = "utf-8"
) -> str:
    """Read a regular text file of at most :data:`MAX_TEXT_BYTES` (see :func:`read_file`).

    Raises:
        ``error``: as :func:`read_file`, or the file is not valid text in ``encoding``.
    """
    data = read_file(path, MAX_TEXT_BYTES, error, what)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise error(path, f"{what} is not {encoding} text (byte {exc.start})") from None


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
            (``[3,H,W]``) or last (``[H,W,3]``), or a gray ``[H,W]`` one (uint8, uint16, or float
            in [0, 1]; a fourth channel, alpha, is dropped); or a PIL image of any mode (modes
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
    except MemoryError:
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
    if t.dtype == torch.uint8:
        return t
    if t.dtype == torch.uint16 or (t.dtype == torch.int32 and int(t.max()) > 255):
        return (t.to(torch.int32) // 257).to(torch.uint8)
    if t.is_floating_point():
        if t.numel() and not bool(torch.isfinite(t).all()):
            raise ImageReadError(name, "image has NaN or infinite pixels")
        if t.numel() and (float(t.min()) < -1e-3 or float(t.max()) > 1 + 1e-3):
            raise ImageReadError(
                name, "float pixels must lie in [0, 1] (divide 0..255 values by 255)"
            )
        return (t.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if t.dtype in (torch.int16, torch.int32, torch.int64, torch.bool):
        return t.clamp(0, 255).to(torch.uint8)
    raise ImageReadError(name, f"unsupported pixel type {t.dtype}")


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


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    with open_atomic(path) as handle:
        handle.write(data)


#: Temporary files are named ``.camtool-<8 random characters>.part``: one fixed-length pattern
#: (so a final name that fits the file system's limit always has a temporary name that fits too),
#: which an export recognises and removes after a crash.
TEMP_PREFIX = ".camtool-"
TEMP_SUFFIX = ".part"


@contextmanager
def open_atomic(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for writing; rename it to ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    with _open_part(Path(path), rename=True) as (handle, _):
        yield handle


def write_part(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path`` (named as :func:`open_atomic` names
    them) and return that file, complete, without renaming it: the caller renames it into place
    (``os.replace``), or an export's clean-up removes it.

    Raises:
        OutputWriteError: the folder or the file cannot be written (nothing is left behind).
    """
    with _open_part(Path(path), rename=False) as (handle, tmp):
        handle.write(data)
    return tmp


@contextmanager
def _open_part(path: Path, rename: bool) -> Iterator[tuple[BinaryIO, Path]]:
    """A new temporary file beside ``path``, open for writing: yields ``(handle, its path)``.
    After the block the file is closed and, with ``rename``, renamed to ``path``. On any
    exception the temporary file is removed (an ``OSError`` becomes :class:`OutputWriteError`).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A fixed short name: a final name of NAME_MAX bytes must still leave room for it.
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise OutputWriteError(
            path.parent, f"cannot write here: {exc.strerror or exc}", exc.errno
        ) from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            yield handle, Path(tmp)
        if rename:
            os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise OutputWriteError(path, f"cannot write: {exc.strerror or exc}", exc.errno) from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _remove_quietly(path: str) -> None:
    with suppress(OSError):
        os.unlink(path)


#: File name suffixes read as videos.
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
)


@dataclass(frozen=True)
class VideoInfo:
    """A video's frame rate, frame size and (as the container reports it) frame count."""

    fps: float
    width: int
    height: int
    frames: int


def open_video(path: str | os.PathLike[str]) -> tuple[VideoInfo, Iterator[Tensor]]:
    """Open a video: its :class:`VideoInfo` and an iterator of ``Tensor[3,H,W]`` uint8 RGB frames.

    Raises:
        ImageReadError: missing, unreadable or without a single decodable frame.
    """
    path = Path(path)
    capture = _open_capture(path)
    ok, first = capture.read() if capture.isOpened() else (False, None)
    if not ok or first is None:
        capture.release()
        raise ImageReadError(path, "not a video OpenCV can read (or no frame could be decoded)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    info = VideoInfo(
        float(fps), first.shape[1], first.shape[0], int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    )

    def frames() -> Iterator[Tensor]:
        try:
            frame = first
            while frame is not None:
                yield (
                    torch.from_numpy(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                    .permute(2, 0, 1)
                    .contiguous()
                )
                ok, frame = capture.read()
                if not ok:
                    break
        finally:
            capture.release()

    return info, frames()


def _open_capture(path: Path) -> Any:
    """A ``cv2.VideoCapture`` of a regular file, checked as :func:`read_file` checks files: the
    file is opened without blocking and its descriptor checked, and (where ``/proc`` exists)
    OpenCV opens that same descriptor, so no FIFO or device can be swapped in meanwhile."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        problem = _not_regular(os.fstat(fd).st_mode, "video file")
        if problem:
            raise ImageReadError(path, problem)
        same = f"/proc/self/fd/{fd}"
        return cv2.VideoCapture(same if os.path.exists(same) else str(path))
    finally:
        os.close(fd)


def video_info(path: str | os.PathLike[str]) -> VideoInfo:
    """A video's :class:`VideoInfo`, from its first frame (see :func:`open_video` for errors)."""
    info, frames = open_video(path)
    frames.close()  # type: ignore[attr-defined]
    return info


_VIDEO_PART = re.compile(re.escape(TEMP_PREFIX) + r"(\d+)" + re.escape(TEMP_SUFFIX) + r"\.\w+")


def remove_orphaned_videos(folder: Path) -> list[Path]:
    """Remove the unfinished videos (``.camtool-<pid>.part.<ext>``) in ``folder`` whose writing
    process no longer exists (a run killed with SIGKILL cannot remove its own); return them.
    A live process's file, and any other file, is left alone."""
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _VIDEO_PART.fullmatch(name)
        if match is None or _process_exists(int(match.group(1))):
            continue
        _remove_quietly(str(folder / name))
        removed.append(folder / name)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or a pid we cannot ask about): keep its file
    return True


class VideoWriter:
    """Write ``Tensor[3,H,W]`` uint8 RGB frames to a video (MPEG-4 in .mp4/.mov/.m4v, which needs
    even frame sizes; Motion-JPEG in .avi, any size), under a temporary name renamed on
    :meth:`close`; :meth:`discard` removes it."""

    def __init__(self, path: str | os.PathLike[str], fps: float, width: int, height: int) -> None:
        self.path = Path(path)
        # A fixed short temporary name (a long final name must still fit) that a killed run's
        # clean-up recognises; the suffix tells OpenCV the container.
        self.partial = self.path.with_name(
            f"{TEMP_PREFIX}{os.getpid()}{TEMP_SUFFIX}{self.path.suffix}"
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_orphaned_videos(self.path.parent)
        size = (width, height)
        if self.path.suffix.lower() == ".avi":  # OpenCV's own MJPEG writer keeps odd frame sizes
            fourcc = cv2.VideoWriter.fourcc(*"MJPG")
            self.writer = cv2.VideoWriter(
                str(self.partial), cv2.CAP_OPENCV_MJPEG, fourcc, fps, size
            )
        else:
            self.writer = cv2.VideoWriter(
                str(self.partial), cv2.VideoWriter.fourcc(*"mp4v"), fps, size
            )
        if not self.writer.isOpened():
            raise OutputWriteError(self.path, f"OpenCV cannot write {self.path.suffix} video here")

    def write(self, frame: Tensor) -> None:
        """Append one frame."""
        self.writer.write(image_to_bgr_array(frame))

    def close(self) -> Path:
        """Finish the file and move it into place."""
        self.writer.release()
        os.replace(self.partial, self.path)
        return self.path

    def discard(self) -> None:
        """Stop and delete the unfinished file."""
        self.writer.release()
        _remove_quietly(str(self.partial))
