"""Reading and decoding for the device runner: file bytes on CPU threads, plain JPEGs decoded in
batches on the device (TorchCodec, else torchvision's decoder), everything else by OpenCV on the
CPU, exactly as :func:`camtool.io.load_image` decodes it (and with its error messages).

A JPEG is *plain* when the device decoder gives the same pixels as OpenCV: baseline or
progressive Huffman coding, one or three components (not CMYK/YCCK), no EXIF rotation. Any
other file, and any file the device decoder refuses, is decoded on the CPU: it never fails the run.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from camtool.errors import CamtoolError
from camtool.inputs import InputItem
from camtool.io.files import read_file
from camtool.io.formats import identify
from camtool.io.images import image_byte_limit, load_image, max_pixels_limit

#: Decodes a list of JPEG files' bytes on a device: ``Tensor[3,H,W]`` uint8 RGB each.
JpegDecoder = Callable[[Sequence[bytes], torch.device], list[torch.Tensor]]

#: JPEG frame markers the device decoders read like OpenCV: baseline, extended and progressive
#: Huffman coding.
_PLAIN_FRAMES = (0xC0, 0xC1, 0xC2)
_OTHER_FRAMES = frozenset(range(0xC3, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_decoder(prefer: str | None = None) -> JpegDecoder | None:
    """The device JPEG decoder: TorchCodec's ``decode_jpeg`` (``camtool[gpu]``), else
    torchvision's, else None (every file is then decoded on the CPU). ``prefer``:
    ``"torchvision"`` skips TorchCodec."""
    codec = _torchcodec_decoder() if prefer != "torchvision" else None
    if codec is not None:
        return codec
    try:
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_jpeg as vision_decode
    except Exception:
        return None

    def decode_with_torchvision(datas: Sequence[bytes], device: torch.device) -> list[torch.Tensor]:
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its codecs
            return list(vision_decode(tensors, mode=ImageReadMode.RGB, device=device))

    return decode_with_torchvision


def _torchcodec_decoder() -> JpegDecoder | None:
    try:
        from torchcodec.decoders import decode_jpeg
    except Exception:  # not installed, or its FFmpeg libraries are missing
        return None

    def decode_with_torchcodec(datas: Sequence[bytes], device: torch.device) -> list[torch.Tensor]:
        return list(decode_jpeg(list(datas), mode="RGB", device=device))

    return decode_with_torchcodec


@dataclass(frozen=True)
class Read:
    """One input after the reader thread: the bytes of a plain JPEG to decode on the device
    (with its size), or the image decoded on the CPU, or why it cannot be read."""

    index: int
    data: bytes | None = None
    size: tuple[int, int] = (0, 0)  # (height, width) of ``data``
    image: torch.Tensor | None = None  # Tensor[3,H,W] uint8 on the CPU
    error: str | None = None


def read_one(index: int, item: InputItem, decoder: JpegDecoder | None, decode_here: bool) -> Read:
    """Read one input (on a reader thread): a plain JPEG's bytes (decoded here when
    ``decode_here``, on the CPU), else the image as OpenCV decodes it, else the reason."""
    if decoder is not None:
        try:
            data = read_file(item.path, image_byte_limit(max_pixels_limit()))
            size = plain_jpeg_size(data, item)
            if size is not None:
                if not decode_here:
                    return Read(index, data=data, size=size)
                (image,) = decoder([data], torch.device("cpu"))
                if tuple(image.shape) == (3, *size):
                    return Read(index, image=image)
        except Exception:  # the CPU decoder below says what is wrong, in camtool's words
            pass
    return cpu_read(index, item)


def cpu_read(index: int, item: InputItem) -> Read:
    """Decode ``item`` with OpenCV (:func:`camtool.io.load_image`), as the local runner does."""
    try:
        return Read(index, image=load_image(item.path))
    except CamtoolError as exc:
        return Read(index, error=str(exc))
    except Exception as exc:  # a decoder crash on one file must not end the run
        return Read(index, error=f"{item.path}: {type(exc).__name__}: {exc}")


def plain_jpeg_size(data: bytes, item: InputItem) -> tuple[int, int] | None:
    """``(height, width)`` of a complete JPEG the device decoders read as OpenCV does, within
    the pixel limit; None for anything else (left to the CPU decoder)."""
    form = identify(data)
    if form is None or form.name != "JPEG":
        return None
    width, height = form.size(data, item.path)  # raises for truncated or corrupt files
    if not 0 < width * height <= max_pixels_limit():
        return None
    return (height, width) if _plain(data) else None


def _plain(data: bytes) -> bool:
    """Walk the JPEG's markers up to its frame header: a plain frame with 1 or 3 components and
    no EXIF orientation other than 1."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        exif = marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\x00\x00"
        if exif and _orientation(data[pos + 10 : pos + 2 + length]) != 1:
            return False
        if marker in _PLAIN_FRAMES:
            return pos + 9 < len(data) and data[pos + 9] in (1, 3)
        if marker in _OTHER_FRAMES or marker == 0xDA:
            return False
        pos += 2 + length
    return False


def _orientation(tiff: bytes) -> int:
    """The EXIF orientation tag of IFD0 (1 when absent; 0 when the block cannot be read)."""
    try:
        order = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
            tag, kind = struct.unpack_from(order + "HH", tiff, entry)
            if tag == 0x0112:
                return int(struct.unpack_from(order + "H", tiff, entry + 8)[0]) if kind == 3 else 0
        return 1
    except (KeyError, struct.error):
        return 0


def decode_on_device(
    reads: Sequence[Read],
    items: Sequence[InputItem],
    decoder: JpegDecoder | None,
    device: torch.device,
) -> list[torch.Tensor | str]:
    """Per read: ``Tensor[3,H,W]`` uint8 on ``device``, or the reason it cannot be decoded.

    The JPEG bytes among ``reads`` are decoded in one call on ``device``; if the decoder refuses
    the batch, one file at a time; a file it refuses (or decodes to the wrong size) is decoded
    on the CPU instead."""
    results: list[torch.Tensor | str] = []
    jpegs = [r for r in reads if r.data is not None]
    decoded: dict[int, torch.Tensor | None] = {}
    if jpegs and decoder is not None:
        try:
            decoded = dict(
                zip(
                    [r.index for r in jpegs],
                    decoder([r.data for r in jpegs if r.data], device),
                    strict=True,
                )
            )
        except Exception:
            for read in jpegs:
                try:
                    decoded[read.index] = decoder([read.data or b""], device)[0]
                except Exception:
                    decoded[read.index] = None
    for read in reads:
        if read.data is not None:
            image = decoded.get(read.index)
            if image is not None and tuple(image.shape) == (3, *read.size):
                results.append(image)
                continue
            read = cpu_read(read.index, items[read.index])
        if read.image is not None:
            results.append(read.image.to(device, non_blocking=True))
        else:
            results.append(read.error or f"{items[read.index].path}: cannot be decoded")
    return results
