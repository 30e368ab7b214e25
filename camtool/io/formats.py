"""Image file formats camtool reads: their names, suffixes, signatures and pixel sizes.

Every format here has a header reader that returns the image's size without decoding it, so
that the pixel limit (``max_pixels``) is checked for every file before a decoder allocates
anything. A file whose signature matches no format here is not decoded at all. Which of these
formats the installed OpenCV can decode is probed at run time (see
:func:`camtool.io.image_suffixes`), so the folder walk and the reader agree on one list.

Pure Python on purpose: no decoder runs while a header is read.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from camtool.errors import ImageReadError

Size = tuple[int, int]
"""``(width, height)`` in pixels."""


@dataclass(frozen=True)
class ImageFormat:
    """One image file format: its name, the file suffixes that mean it, a sample of its
    signature (enough for a decoder to recognise it), a test for its signature, and its header
    reader (cheap: it runs before the pixel limit is checked), and a check of the whole file
    that runs after it, before the decoder (for formats whose decoder prints complaints)."""

    name: str
    suffixes: tuple[str, ...]
    sample: bytes  # the start of a real file (some decoders look past the first bytes)
    matches: Callable[[bytes], bool]
    size: Callable[[bytes, Path], Size]
    check: Callable[[bytes, Path], None] = lambda data, path: None


def _png_size(data: bytes, path: Path) -> Size:
    """The IHDR's (width, height), once its checksum holds."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageReadError(path, "corrupt PNG (no header)")
    if zlib.crc32(data[12:29]) != struct.unpack(">I", data[29:33])[0]:
        raise ImageReadError(path, "corrupt PNG (bad checksum in its IHDR chunk)")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _png_check(data: bytes, path: Path) -> None:
    """Walk the PNG chunks (checking each CRC) up to IEND and check the image data the way
    libpng would (it prints its own complaints before OpenCV gives up)."""
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    rows = _PngRows(width, height, depth, colour, interlace, path)
    pos = 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            break
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(data[pos + 4 : end - 4]) != crc:
            raise ImageReadError(
                path, f"corrupt PNG (bad checksum in its {kind.decode('latin-1')} chunk)"
            )
        if kind == b"IDAT":
            rows.feed(data[pos + 8 : end - 4])
        if kind == b"IEND":
            rows.finish()
            return
        pos = end
    raise ImageReadError(path, "truncated PNG (the image data ends early)")


class _PngRows:
    """Inflate a PNG's image data a megabyte at a time, keeping none of it: the stream must be
    sound (its checksum included), hold every row, and (for images that are not interlaced)
    start every row with a known filter type."""

    def __init__(
        self, width: int, height: int, depth: int, colour: int, interlace: int, path: Path
    ) -> None:
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 0)
        self.row = (width * channels * depth + 7) // 8 + 1
        self.expected = self.row * height if interlace == 0 else None
        self.inflate = zlib.decompressobj()
        self.seen = 0
        self.path = path

    def feed(self, chunk: bytes) -> None:
        try:
            while chunk and not self.inflate.eof:
                out = self.inflate.decompress(chunk, 1 << 20)
                chunk = self.inflate.unconsumed_tail
                if self.expected is not None:
                    first = -self.seen % self.row
                    if max(out[first :: self.row], default=0) > 4:
                        raise ImageReadError(
                            self.path, "corrupt PNG (a row has an unknown filter type)"
                        )
                self.seen += len(out)
        except zlib.error:
            raise ImageReadError(
                self.path, "corrupt PNG (its image data does not inflate)"
            ) from None

    def finish(self) -> None:
        if not self.inflate.eof or (self.expected is not None and self.seen < self.expected):
            raise ImageReadError(self.path, "corrupt PNG (its image data is incomplete)")


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes, path: Path) -> Size:
    """Read the frame header; check that the image data ends with an EOI marker (OpenCV fills
    the missing part of a truncated JPEG with grey)."""
    pos, size = 2, None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageReadError(path, "corrupt JPEG (bad marker)")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            size = (width, height)
        if marker == 0xDA:  # start of scan: the image data follows, it must end with EOI
            if size is None:
                raise ImageReadError(path, "corrupt JPEG (no frame header)")
            if data.rfind(b"\xff\xd9", pos + 2 + length) < 0:
                raise ImageReadError(path, "truncated JPEG (the image data ends early)")
            return size
        pos += 2 + length
    raise ImageReadError(path, "truncated JPEG (no image data)")


def _unpack(fmt: str, data: bytes, offset: int, path: Path, name: str) -> tuple[int, ...]:
    try:
        return struct.unpack_from(fmt, data, offset)
    except struct.error:
        raise ImageReadError(path, f"corrupt {name} (the header ends early)") from None


def _gif_size(data: bytes, path: Path) -> Size:
    width, height = _unpack("<HH", data, 6, path, "GIF")
    return width, height


def _bmp_size(data: bytes, path: Path) -> Size:
    (header,) = _unpack("<I", data, 14, path, "BMP")
    if header == 12:  # OS/2 1.x core header
        width, height = _unpack("<HH", data, 18, path, "BMP")
    else:
        width, height = _unpack("<ii", data, 18, path, "BMP")
    return abs(width), abs(height)


def _webp_size(data: bytes, path: Path) -> Size:
    kind = data[12:16]
    if kind == b"VP8 ":
        width, height = _unpack("<HH", data, 26, path, "WebP")
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L":
        (bits,) = _unpack("<I", data, 21, path, "WebP")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if kind == b"VP8X":
        if len(data) < 30:
            raise ImageReadError(path, "corrupt WebP (the header ends early)")
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    raise ImageReadError(path, "corrupt WebP (unknown image chunk)")


_PNM_TOKEN = re.compile(rb"(?:\s|#[^\n]*\n?)*(\S+)")


def _pnm_size(data: bytes, path: Path) -> Size:
    """P1-P6 and PF/Pf: magic, width and height as ASCII tokens (comments allowed);
    P7 (PAM): WIDTH and HEIGHT lines."""
    head = data[:4096]
    if head.startswith(b"P7"):
        found = dict(re.findall(rb"^(WIDTH|HEIGHT)\s+(\d+)", head, re.MULTILINE))
        if b"WIDTH" not in found or b"HEIGHT" not in found:
            raise ImageReadError(path, "corrupt PAM (no WIDTH or HEIGHT)")
        return int(found[b"WIDTH"]), int(found[b"HEIGHT"])
    tokens, pos = [], 2
    for _ in range(2):
        match = _PNM_TOKEN.match(head, pos)
        if match is None or not match.group(1).isdigit():
            raise ImageReadError(path, "corrupt PNM (no width and height)")
        tokens.append(int(match.group(1)))
        pos = match.end()
    return tokens[0], tokens[1]


def _sun_size(data: bytes, path: Path) -> Size:
    width, height = _unpack(">II", data, 4, path, "Sun raster")
    return width, height


def _hdr_size(data: bytes, path: Path) -> Size:
    """Radiance HDR: header lines, a blank line, then e.g. ``-Y 480 +X 640``."""
    end = data.find(b"\n\n", 0, 65536)
    line = data[end + 2 : data.find(b"\n", end + 2, end + 200)] if end >= 0 else b""
    match = re.fullmatch(rb"\s*([-+])([XY]) (\d+) ([-+])([XY]) (\d+)\s*", line)
    if match is None or match.group(2) == match.group(5):
        raise ImageReadError(path, "corrupt HDR (no resolution line)")
    first, second = int(match.group(3)), int(match.group(6))
    return (second, first) if match.group(2) == b"Y" else (first, second)


def _tiff_size(data: bytes, path: Path) -> Size:
    """The first image's ImageWidth and ImageLength tags (OpenCV decodes the first page)."""
    order = "<" if data[:2] == b"II" else ">"
    big = _unpack(order + "H", data, 2, path, "TIFF")[0] == 43
    if big:
        (ifd,) = _unpack(order + "Q", data, 8, path, "TIFF")
        (count,) = _unpack(order + "Q", data, ifd, path, "TIFF")
        first, step = ifd + 8, 20
    else:
        (ifd,) = _unpack(order + "I", data, 4, path, "TIFF")
        (count,) = _unpack(order + "H", data, ifd, path, "TIFF")
        first, step = ifd + 2, 12
    found: dict[int, int] = {}
    for entry in range(first, first + step * min(count, 4096), step):
        tag, kind = _unpack(order + "HH", data, entry, path, "TIFF")
        if tag in (256, 257):
            value = entry + (12 if big else 8)
            code = "H" if kind == 3 else ("Q" if kind == 16 else "I")
            found[tag] = _unpack(order + code, data, value, path, "TIFF")[0]
    if 256 not in found or 257 not in found:
        raise ImageReadError(path, "corrupt TIFF (no image width or length)")
    return found[256], found[257]


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """ISO base media (and JPEG 2000) boxes between ``start`` and ``end``: (type, body start,
    body end)."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1 and pos + 16 <= end:
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header:
            return
        yield kind, pos + header, min(pos + size, end)
        pos += size


def _jp2_size(data: bytes, path: Path) -> Size:
    if data.startswith(b"\xff\x4f\xff\x51"):  # a bare codestream: the SIZ segment
        x, y, x0, y0 = _unpack(">IIII", data, 8, path, "JPEG 2000")
        return x - x0, y - y0
    for kind, start, end in _boxes(data, 0, len(data)):
        if kind == b"jp2h":
            for inner, body, _ in _boxes(data, start, end):
                if inner == b"ihdr":
                    height, width = _unpack(">II", data, body, path, "JPEG 2000")
                    return width, height
    raise ImageReadError(path, "corrupt JPEG 2000 (no image header)")


def _avif_size(data: bytes, path: Path) -> Size:
    """The largest ``ispe`` (image spatial extent) property of the file's items."""
    sizes = []
    for kind, start, end in _boxes(data, 0, len(data)):
        if kind == b"meta":  # a full box: 4 bytes of version and flags
            for prop, pstart, pend in _boxes(data, start + 4, end):
                if prop == b"iprp":
                    for group, gstart, gend in _boxes(data, pstart, pend):
                        if group == b"ipco":
                            sizes += [
                                struct.unpack_from(">II", data, body + 4)
                                for item, body, bend in _boxes(data, gstart, gend)
                                if item == b"ispe" and bend - body >= 12
                            ]
    if not sizes:
        raise ImageReadError(path, "corrupt AVIF (no image size)")
    width, height = max(sizes, key=lambda s: s[0] * s[1])
    return width, height


def _avif_matches(data: bytes) -> bool:
    if data[4:8] != b"ftyp":
        return False
    (size,) = struct.unpack_from(">I", data, 0)
    brands = data[8 : min(size, 256)]
    return any(brands[i : i + 4] in (b"avif", b"avis") for i in range(0, len(brands) - 3, 4))


_AVIF_SAMPLE = b"\x00\x00\x00 ftypavif\x00\x00\x00\x00avifmif1miafMA1B\x00\x00\x00\xebmeta"
_WEBP_SAMPLE = (
    b"RIFF<\x01\x00\x00WEBPVP8L0\x01\x00\x00/\x07\xc0\x01\x00\xff\xe16\x00\x00\xb2\x89\xedd"
)

#: The formats camtool reads, when the installed OpenCV can decode them.
FORMATS: tuple[ImageFormat, ...] = (
    ImageFormat("PNG", (".png",), b"\x89PNG\r\n\x1a\n", lambda d: d[:8] == b"\x89PNG\r\n\x1a\n", _png_size, _png_check),
    ImageFormat("JPEG", (".jpg", ".jpeg", ".jpe"), b"\xff\xd8\xff\xe0", lambda d: d[:3] == b"\xff\xd8\xff", _jpeg_size),
    ImageFormat("BMP", (".bmp", ".dib"), b"BM" + b"\x00" * 12 + b"\x28", lambda d: d[:2] == b"BM", _bmp_size),
    ImageFormat("WebP", (".webp",), _WEBP_SAMPLE, lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP", _webp_size),
    ImageFormat("TIFF", (".tif", ".tiff"), b"II*\x00", lambda d: d[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), _tiff_size),
    ImageFormat("JPEG 2000", (".jp2", ".j2k"), b"\x00\x00\x00\x0cjP  \r\n\x87\n", lambda d: d[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or d[:4] == b"\xff\x4f\xff\x51", _jp2_size),
    ImageFormat("PNM", (".pbm", ".pgm", ".ppm", ".pnm", ".pxm", ".pam", ".pfm"), b"P6\n8 8\n255\n", lambda d: d[:1] == b"P" and d[1:2] in b"1234567Ff" and d[2:3].isspace(), _pnm_size),
    ImageFormat("Sun raster", (".sr", ".ras"), b"\x59\xa6\x6a\x95", lambda d: d[:4] == b"\x59\xa6\x6a\x95", _sun_size),
    ImageFormat("Radiance HDR", (".hdr", ".pic"), b"#?RADIANCE\n", lambda d: d[:10] == b"#?RADIANCE" or d[:6] == b"#?RGBE", _hdr_size),
    ImageFormat("GIF", (".gif",), b"GIF89a", lambda d: d[:6] in (b"GIF87a", b"GIF89a"), _gif_size),
    ImageFormat("AVIF", (".avif",), _AVIF_SAMPLE, _avif_matches, _avif_size),
)  # fmt: skip


def identify(data: bytes) -> ImageFormat | None:
    """Return the format whose signature ``data`` starts with, or None."""
    return next((f for f in FORMATS if f.matches(data)), None)
