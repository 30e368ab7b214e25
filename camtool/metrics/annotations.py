"""Ground-truth boxes for ``camtool eval``: Pascal VOC XML, COCO JSON and CSV files, read safely.

Three formats, one result (:class:`Annotations`, a tuple of :class:`GroundTruthBox`):

- **Pascal VOC** XML, one file per image or a folder of them: ``<filename>``, ``<size>``, and
  per ``<object>`` its ``<name>`` and ``<bndbox>`` (``xmin ymin xmax ymax``, 1-based and
  inclusive as VOC writes them: pixel ``xmin`` is column ``xmin - 1``);
- **COCO** JSON: ``images`` (``id``, ``file_name``, ``width``, ``height``), ``categories``
  (``id``, ``name``) and ``annotations`` (``image_id``, ``category_id``, ``bbox`` as
  ``[x, y, width, height]``);
- **CSV**: a header ``file,class,x1,y1,x2,y2`` and one box per row, in pixels of the original
  image, ``x2``/``y2`` exclusive (camtool's box convention).

Every box is stored as ``(x1, y1, x2, y2)`` floats in pixels of the original image with
``x2``/``y2`` exclusive. Classes are kept as written (an index or a name) and resolved against a
model's labels by :func:`resolve_boxes` (the rule of ``--class``: :func:`camtool.labels.resolve_class`);
a name that is not one of the model's classes is an error naming the file and the entry.

Hostile files are refused before anything is computed, each with one line naming the file and
the entry: a file larger than :data:`camtool.io.MAX_TEXT_BYTES` (by its size, before it is
read), XML with a DOCTYPE (which is where entity definitions live: no entity expansion and no
external entity can happen, because no DOCTYPE ever reaches the parser), JSON nested deeper than
Python can parse or holding an integer of more digits than Python converts (4300), coordinates
that are not plain decimal numbers (``1_0``, ``0x10``, non-ASCII digits), not finite or beyond
:data:`MAX_COORDINATE`, empty or inverted boxes, boxes outside the image by more than
:data:`BOX_TOLERANCE` pixels, annotations of an image or a category that the file does not
define, COCO ids used twice, a file that holds no box, and more than :data:`MAX_BOXES` boxes
(a CSV file is read row by row, so it is refused at the first row past the limit).

The image size a VOC or COCO file declares is kept with each box (:attr:`GroundTruthBox.size`):
``camtool eval`` compares it with the real image (:func:`fit_to_image`).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from camtool.errors import CamtoolError, ClassSelectionError
from camtool.io.files import MAX_TEXT_BYTES, open_regular_file, read_text_file

#: A box may reach this many pixels beyond the image's edges (annotation tools round outwards);
#: it is then clipped to the image. Further out is an error.
BOX_TOLERANCE = 1.0

#: No coordinate or image side may exceed this many pixels (camtool reads at most 100 megapixels).
MAX_COORDINATE = 1_000_000.0

#: At most this many boxes in one annotation set (a CSV row, a VOC object, a COCO annotation
#: each hold one).
MAX_BOXES = 1_000_000

#: At most this many XML files in a Pascal VOC folder.
MAX_VOC_FILES = 200_000

Box = tuple[float, float, float, float]


class AnnotationError(CamtoolError):
    """An annotation file camtool cannot use: the subject is the file, the problem names the
    entry (``line 4``, ``object 2``, ``annotation id 17``) and what is wrong with it."""


@dataclass(frozen=True, slots=True)
class GroundTruthBox:
    """One annotated box.

    Attributes:
        file: the image as the annotation names it (a file name or a relative path).
        label: the class as written (a name, or an index as text).
        box: ``(x1, y1, x2, y2)`` in pixels of the original image, ``x2``/``y2`` exclusive.
        source: the annotation file; entry: where in it (``line 4``, ``object 2``, ...).
        size: ``(width, height)`` the annotation declares for the image (VOC, COCO), else None.
        index: the class index, once resolved against a model's labels (:func:`resolve_boxes`).
    """

    file: str
    label: str
    box: Box
    source: str
    entry: str
    size: tuple[int, int] | None = None
    index: int | None = None

    @property
    def where(self) -> str:
        """``<file>: <entry>``, the start of every message about this box."""
        return f"{self.source}: {self.entry}"


@dataclass(frozen=True)
class Annotations:
    """The boxes of an annotation file (or a VOC folder): ``format`` is ``voc``, ``coco`` or
    ``csv``; ``boxes`` in file order."""

    source: str
    format: str
    boxes: tuple[GroundTruthBox, ...]


def read_annotations(path: str | os.PathLike[str]) -> Annotations:
    """Read boxes from a Pascal VOC XML file or folder, a COCO JSON file, or a CSV file (by its
    suffix: ``.xml`` or a folder, ``.json``, ``.csv``).

    Raises:
        AnnotationError: a missing or unreadable file, an unknown suffix, or any hostile or
            malformed entry (one line naming the file and the entry).
    """
    path = Path(path)
    if path.is_dir():
        boxes = read_voc_folder(path)
        return Annotations(str(path), "voc", boxes)
    suffix = path.suffix.lower()
    if suffix == ".xml":
        return Annotations(str(path), "voc", read_voc(path))
    if suffix == ".json":
        return Annotations(str(path), "coco", read_coco(path))
    if suffix == ".csv":
        return Annotations(str(path), "csv", read_csv(path))
    if not path.exists():
        raise AnnotationError(path, "no such file")
    raise AnnotationError(
        path,
        "unknown annotation format: use Pascal VOC (.xml, or a folder of them), COCO (.json) "
        "or CSV (.csv with file,class,x1,y1,x2,y2)",
    )


def _text(path: Path, what: str) -> str:
    return read_text_file(path, AnnotationError, what, "utf-8-sig")


def _number(value: Any, where: str, name: str) -> float:
    """A finite coordinate within :data:`MAX_COORDINATE` (ints, floats, or their text)."""
    if isinstance(value, bool):
        raise AnnotationError(where, f"{name} is a boolean, not a number")
    if isinstance(value, str):
        value = value.strip()
        # float() reads "1_0" as 10 and the digits of every script: plain ASCII decimals only
        # (NaN and infinities pass here and are refused below as not finite).
        if not value.isascii() or "_" in value:
            raise AnnotationError(where, f"{name} {value[:40]!r} is not a number")
    if isinstance(value, int) and abs(value) > MAX_COORDINATE:  # before float(): may overflow
        digits = str(abs(value))
        shown = digits if len(digits) <= 20 else f"{digits[:6]}... ({len(digits)} digits)"
        raise AnnotationError(
            where,
            f"{name} {'-' if value < 0 else ''}{shown} is beyond {MAX_COORDINATE:,.0f} pixels "
            "(not an image)",
        )
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        shown = str(value)[:40]
        raise AnnotationError(where, f"{name} {shown!r} is not a number") from None
    if not math.isfinite(number):
        raise AnnotationError(where, f"{name} is {number}, not a finite number")
    if abs(number) > MAX_COORDINATE:
        raise AnnotationError(
            where, f"{name} {number:g} is beyond {MAX_COORDINATE:,.0f} pixels (not an image)"
        )
    return number


def _checked_box(box: Box, where: str, size: tuple[int, int] | None) -> Box:
    """A box with positive width and height, inside the declared image size (with
    :data:`BOX_TOLERANCE`, then clipped)."""
    x1, y1, x2, y2 = box
    if min(box) < -BOX_TOLERANCE:
        raise AnnotationError(where, f"box {_shown(box)} has a negative coordinate")
    if x2 <= x1 or y2 <= y1:
        raise AnnotationError(
            where, f"box {_shown(box)} is empty or inverted (x2 <= x1 or y2 <= y1)"
        )
    if size is not None:
        return clip_box(box, size, where)
    return box


def clip_box(box: Box, size: tuple[int, int], where: str) -> Box:
    """``box`` clipped to an image of ``size`` = ``(width, height)``.

    Raises:
        AnnotationError: the box reaches more than :data:`BOX_TOLERANCE` px beyond the image,
            or nothing of it is left inside.
    """
    width, height = size
    x1, y1, x2, y2 = box
    if (
        x1 < -BOX_TOLERANCE
        or y1 < -BOX_TOLERANCE
        or x2 > width + BOX_TOLERANCE
        or y2 > height + BOX_TOLERANCE
    ):
        raise AnnotationError(
            where,
            f"box {_shown(box)} lies outside the image ({width}x{height} px; a box may reach "
            f"{BOX_TOLERANCE:g} px beyond its edges)",
        )
    clipped = (max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise AnnotationError(where, f"box {_shown(box)} has no pixel inside the image")
    return clipped


def fit_to_image(box: GroundTruthBox, size: tuple[int, int], rescale: bool = False) -> Box:
    """``box.box`` in pixels of the real image, of ``size`` = ``(width, height)``, clipped to it.

    A VOC or COCO file declares the size of the image its boxes were drawn on. When that is not
    the real image's size (the boxes were drawn on a resized copy, say), the boxes would land in
    the wrong place: refused, or with ``rescale`` scaled by the ratio of the two sizes (width
    and height apart).

    Raises:
        AnnotationError: another declared size (without ``rescale``), naming the file and the
            entry; a box outside the image (:func:`clip_box`).
    """
    coordinates = box.box
    if box.size is not None and box.size != size:
        (declared_width, declared_height), (width, height) = box.size, size
        if not rescale:
            raise AnnotationError(
                box.source,
                f"{box.entry}: the file gives the image as {declared_width}x{declared_height} px "
                f"but it is {width}x{height} px, so its boxes would land in the wrong place "
                "(were they drawn on a resized copy? --rescale-boxes scales them to the image)",
            )
        sx, sy = width / declared_width, height / declared_height
        x1, y1, x2, y2 = coordinates
        coordinates = (x1 * sx, y1 * sy, x2 * sx, y2 * sy)
    return clip_box(coordinates, size, box.where)


def _shown(box: Box) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def _size(width: Any, height: Any, where: str) -> tuple[int, int]:
    w, h = _number(width, where, "image width"), _number(height, where, "image height")
    if w < 1 or h < 1 or w != int(w) or h != int(h):
        raise AnnotationError(where, f"image size {w:g}x{h:g} is not a positive whole number")
    return int(w), int(h)


def _too_many(source: Path, count: int) -> None:
    if count > MAX_BOXES:
        raise AnnotationError(source, f"holds more than {MAX_BOXES:,} boxes, above the limit")


# --------------------------------------------------------------------------------------------
# CSV

CSV_HEADER = ("file", "class", "x1", "y1", "x2", "y2")


def read_csv(path: str | os.PathLike[str]) -> tuple[GroundTruthBox, ...]:
    """Boxes from a CSV file: a header ``file,class,x1,y1,x2,y2`` (other columns are ignored,
    in any order), then one box per row.

    The file is read a line at a time, never whole: a file larger than
    :data:`camtool.io.MAX_TEXT_BYTES` is refused by its size before anything is read, and
    reading stops at the first row past :data:`MAX_BOXES`.

    Raises:
        AnnotationError: a missing column, a short row, or a bad box (naming the line).
    """
    path = Path(path)
    source = str(path)
    csv.field_size_limit(1 << 20)
    with open_regular_file(path, AnnotationError, "CSV file") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > MAX_TEXT_BYTES:
            raise AnnotationError(path, _too_big(size))
        reader = csv.reader(_csv_lines(handle, path))
        try:
            header = next(reader, None)
            if header is None:
                raise AnnotationError(
                    path, "line 1: empty file (expected the header file,class,x1,y1,x2,y2)"
                )
            names = [h.strip().lower() for h in header]
            missing = [c for c in CSV_HEADER if c not in names]
            if missing:
                raise AnnotationError(
                    path,
                    f"line 1: the header lacks {', '.join(missing)} (expected "
                    "file,class,x1,y1,x2,y2)",
                )
            column = [names.index(name) for name in CSV_HEADER]
            boxes = []
            shared: dict[Any, Any] = {}  # one object per equal file name, class, coordinate
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                entry = f"line {line}"
                if len(row) < len(names):
                    raise AnnotationError(
                        path, f"{entry}: {len(row)} fields, expected {len(names)} as in the header"
                    )
                file, label = row[column[0]].strip(), row[column[1]].strip()
                if not file or not label:
                    raise AnnotationError(path, f"{entry}: empty file or class")
                where = f"{source}: {entry}"
                x1, y1, x2, y2 = (
                    _number(row[column[i]], where, CSV_HEADER[i]) for i in range(2, 6)
                )
                if len(shared) > 1 << 16:  # a million boxes repeat their values: keep 65,536
                    shared.clear()
                keep = shared.setdefault
                box = _checked_box(
                    (keep(x1, x1), keep(y1, y1), keep(x2, x2), keep(y2, y2)), where, None
                )
                boxes.append(
                    GroundTruthBox(keep(file, file), keep(label, label), box, source, entry)
                )
                _too_many(path, len(boxes))
        except csv.Error as exc:
            raise AnnotationError(path, f"line {reader.line_num}: not valid CSV ({exc})") from None
        except AnnotationError as exc:
            raise _relative(exc, path) from None
        except OSError as exc:
            raise AnnotationError(path, f"cannot read: {exc.strerror or exc}") from None
    if not boxes:
        raise AnnotationError(path, "holds no boxes")
    return tuple(boxes)


#: Where a lone carriage return ends a line (old Mac files): split after it.
_LONE_CR = re.compile(r"(?<=\r)(?!\n)")


def _csv_lines(handle: BinaryIO, path: Path) -> Iterator[str]:
    """The lines of an open CSV file as text, one at a time, as ``open(newline="")`` would give
    them (``\\r\\n``, ``\\n`` and a lone ``\\r`` end a line and are kept), UTF-8 with an optional
    byte-order mark, and never more than :data:`camtool.io.MAX_TEXT_BYTES` bytes in all (a file
    that grows while it is read is stopped there)."""
    offset = 0
    while line := handle.readline(MAX_TEXT_BYTES + 1 - offset):
        try:
            text = line.decode("utf-8-sig" if offset == 0 else "utf-8")
        except UnicodeDecodeError as exc:
            raise AnnotationError(
                path, f"CSV file is not utf-8-sig text (byte {offset + exc.start})"
            ) from None
        offset += len(line)
        if offset > MAX_TEXT_BYTES:
            raise AnnotationError(path, _too_big(offset))
        if "\r" in text:
            yield from (part for part in _LONE_CR.split(text) if part)
        else:
            yield text


def _too_big(size: int) -> str:
    return (
        f"file holds more than {MAX_TEXT_BYTES:,} bytes ({size:,}), above the limit for a box file"
    )


def _relative(exc: AnnotationError, path: Path) -> AnnotationError:
    """Errors raised with ``"<file>: <entry>"`` as their subject read ``<file>: <entry>: ...``;
    keep them as one subject (the file) and one problem."""
    prefix = f"{path}: "
    if exc.subject and exc.subject.startswith(prefix):
        return AnnotationError(path, f"{exc.subject[len(prefix) :]}: {exc.problem}")
    return exc


# --------------------------------------------------------------------------------------------
# Pascal VOC

_DOCTYPE = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def read_voc(path: str | os.PathLike[str]) -> tuple[GroundTruthBox, ...]:
    """Boxes from one Pascal VOC XML file (its ``<object>`` elements; ``<difficult>1`` objects
    are kept: the measures here do not use difficulty).

    Raises:
        AnnotationError: a DOCTYPE or ENTITY declaration (refused before parsing), malformed
            XML, a missing element, no ``<object>`` at all (as a CSV or COCO file without boxes),
            or a bad box (naming the object).
    """
    boxes = _voc_boxes(Path(path))
    if not boxes:
        raise AnnotationError(path, "holds no boxes (no <object>)")
    return boxes


def _voc_boxes(path: Path) -> tuple[GroundTruthBox, ...]:
    """The boxes of one VOC file, none when it has no ``<object>`` (:func:`read_voc`)."""
    import xml.etree.ElementTree as ET

    path = Path(path)
    text = _text(path, "Pascal VOC file")
    found = _DOCTYPE.search(text)
    if found:
        line = text.count("\n", 0, found.start()) + 1
        raise AnnotationError(
            path,
            f"line {line}: XML with a {found[1].upper()} declaration is refused (entity "
            "definitions can expand without bound or read other files)",
        )
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise AnnotationError(path, f"not well-formed XML ({exc})") from None
    if root.tag != "annotation":
        raise AnnotationError(path, f"the root element is <{root.tag}>, not <annotation>")
    file = (root.findtext("filename") or "").strip()
    if not file:
        raise AnnotationError(path, "<filename> is missing or empty")
    size = None
    element = root.find("size")
    if element is not None:
        size = _size(element.findtext("width"), element.findtext("height"), f"{path}: <size>")
    boxes = []
    try:
        for number, obj in enumerate(root.iter("object"), 1):
            label = (obj.findtext("name") or "").strip()
            entry = f"object {number}" + (f" ({label})" if label else "")
            where = f"{path}: {entry}"
            if not label:
                raise AnnotationError(where, "<name> is missing or empty")
            bnd = obj.find("bndbox")
            if bnd is None:
                raise AnnotationError(where, "<bndbox> is missing")
            values = [_number(bnd.findtext(k), where, k) for k in ("xmin", "ymin", "xmax", "ymax")]
            # VOC pixels are 1-based and xmax/ymax inclusive: the box covers columns
            # xmin-1 .. xmax-1, i.e. [xmin-1, xmax) in camtool's convention.
            box = (values[0] - 1, values[1] - 1, values[2], values[3])
            boxes.append(
                GroundTruthBox(file, label, _checked_box(box, where, size), str(path), entry, size)
            )
            _too_many(path, len(boxes))
    except AnnotationError as exc:
        raise _relative(exc, path) from None
    return tuple(boxes)


def read_voc_folder(folder: str | os.PathLike[str]) -> tuple[GroundTruthBox, ...]:
    """Boxes from every ``*.xml`` file in ``folder`` (not recursive), in name order.

    A file without ``<object>`` gives its image no boxes (as a COCO image without annotations);
    a folder whose files hold no box at all is refused, as a single such file is.

    Raises:
        AnnotationError: no XML file, too many, no box in any of them, or a file that
            :func:`read_voc` refuses for another reason.
    """
    folder = Path(folder)
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".xml")
    except OSError as exc:
        raise AnnotationError(folder, f"cannot list folder: {exc.strerror or exc}") from None
    if not files:
        raise AnnotationError(folder, "no Pascal VOC .xml files in this folder")
    if len(files) > MAX_VOC_FILES:
        raise AnnotationError(folder, f"holds more than {MAX_VOC_FILES:,} XML files")
    boxes: list[GroundTruthBox] = []
    for file in files:
        boxes.extend(_voc_boxes(file))
        _too_many(folder, len(boxes))
    if not boxes:
        count = f"{len(files)} XML file" + ("" if len(files) == 1 else "s")
        raise AnnotationError(folder, f"holds no boxes (no <object> in its {count})")
    return tuple(boxes)


# --------------------------------------------------------------------------------------------
# COCO


def read_coco(path: str | os.PathLike[str]) -> tuple[GroundTruthBox, ...]:
    """Boxes from a COCO JSON file (``images``, ``categories``, ``annotations``; ``bbox`` is
    ``[x, y, width, height]``). The class of a box is its category's name.

    Raises:
        AnnotationError: not JSON, a missing list, an annotation of an image or category the
            file does not define, a duplicate id, or a bad box (naming the annotation).
    """
    path = Path(path)
    text = _text(path, "COCO file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, f"not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise AnnotationError(path, "JSON nested too deeply") from None
    except ValueError:  # an integer past Python's int-str conversion limit (4300 digits)
        raise AnnotationError(path, _long_integer(text)) from None
    if not isinstance(data, dict):
        raise AnnotationError(path, "not a COCO file: the top level is not an object")
    lists = {}
    for key in ("images", "annotations", "categories"):
        value = data.get(key)
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise AnnotationError(path, f"not a COCO file: {key!r} is not a list of objects")
        lists[key] = value
    try:
        images = _coco_images(path, lists["images"])
        categories = _coco_categories(path, lists["categories"])
        boxes = []
        seen: dict[Any, int] = {}
        for number, item in enumerate(lists["annotations"], 1):
            ident = item.get("id")
            if _is_id(ident):
                if ident in seen:  # its box would count twice
                    raise AnnotationError(
                        f"{path}: annotation {number}",
                        f"id {_short(ident)} is used twice (annotation {seen[ident]} has it too)",
                    )
                seen[ident] = number
            entry = f"annotation id {ident}" if _is_id(ident) else f"annotation {number}"
            where = f"{path}: {entry}"
            image_id, category_id = item.get("image_id"), item.get("category_id")
            if not _is_id(image_id) or image_id not in images:
                raise AnnotationError(
                    where, f"image_id {_short(image_id)} is not an image of this file"
                )
            if not _is_id(category_id) or category_id not in categories:
                raise AnnotationError(
                    where, f"category_id {_short(category_id)} is not a category of this file"
                )
            bbox = item.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4:
                raise AnnotationError(where, "bbox is not a list [x, y, width, height]")
            x, y, w, h = (
                _number(v, where, n)
                for v, n in zip(bbox, ("x", "y", "width", "height"), strict=True)
            )
            file, size = images[image_id]
            box = _checked_box((x, y, x + w, y + h), where, size)
            boxes.append(GroundTruthBox(file, categories[category_id], box, str(path), entry, size))
            _too_many(path, len(boxes))
    except AnnotationError as exc:
        raise _relative(exc, path) from None
    if not boxes:
        raise AnnotationError(path, "holds no annotations")
    return tuple(boxes)


def _long_integer(text: str) -> str:
    """The problem of a JSON text that ``json.loads`` refused for an integer of more digits than
    Python converts (``sys.get_int_max_str_digits()``, 4300 by default), with the line of the
    first run of that many digits."""
    limit = sys.get_int_max_str_digits()
    found = re.search(rf"(?<!\d)\d{{{limit + 1}}}", text, re.ASCII) if limit else None
    where = f"line {text.count(chr(10), 0, found.start()) + 1}: " if found else ""
    return f"not valid JSON ({where}an integer of more than {limit:,} digits)"


def _is_id(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def _short(value: Any) -> str:
    return json.dumps(value)[:40] if not isinstance(value, float) else repr(value)


def _coco_images(path: Path, items: list[dict[str, Any]]) -> dict[Any, tuple[str, tuple[int, int]]]:
    images: dict[Any, tuple[str, tuple[int, int]]] = {}
    for number, item in enumerate(items, 1):
        ident = item.get("id")
        where = f"{path}: image {number}"
        if not _is_id(ident):
            raise AnnotationError(where, "has no id")
        if ident in images:
            raise AnnotationError(where, f"id {_short(ident)} is used twice")
        name = item.get("file_name")
        if not isinstance(name, str) or not name.strip():
            raise AnnotationError(where, "has no file_name")
        images[ident] = (name.strip(), _size(item.get("width"), item.get("height"), where))
    return images


def _coco_categories(path: Path, items: list[dict[str, Any]]) -> dict[Any, str]:
    categories: dict[Any, str] = {}
    for number, item in enumerate(items, 1):
        ident, name = item.get("id"), item.get("name")
        where = f"{path}: category {number}"
        if not _is_id(ident) or ident in categories:
            raise AnnotationError(where, "has no id, or an id used twice")
        if not isinstance(name, str) or not name.strip():
            raise AnnotationError(where, "has no name")
        categories[ident] = name.strip()
    return categories


# --------------------------------------------------------------------------------------------
# Classes and images


def resolve_boxes(
    annotations: Annotations, labels: Sequence[str], model: str = "the model"
) -> Annotations:
    """The same boxes with ``index`` set: each label resolved against the model's ``labels``
    (an index, or a name as ``--class`` takes it).

    Raises:
        AnnotationError: a label that is not one of the model's classes (naming the file, the
            entry and the label).
    """
    resolved = []
    cache: dict[str, int] = {}
    from camtool.labels import resolve_class

    for box in annotations.boxes:
        if box.label not in cache:
            try:
                cache[box.label] = resolve_class(box.label, labels)
            except ClassSelectionError as exc:
                raise AnnotationError(
                    box.source,
                    f"{box.entry}: class {_clipped(box.label)!r} is not one of the {len(labels)} "
                    f"classes of {model} ({exc.problem})",
                ) from None
        resolved.append(replace(box, index=cache[box.label]))
    return replace(annotations, boxes=tuple(resolved))


def _clipped(text: str) -> str:
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text):,} characters)"


def match_images(
    annotations: Annotations, images: Iterable[str | os.PathLike[str]]
) -> tuple[dict[str, list[GroundTruthBox]], list[str]]:
    """Which boxes belong to which input image.

    An annotation's file matches an image when it is the image's resolved path (absolute) or
    the end of it, whole path parts only (``chelsea.png`` and ``examples/chelsea.png`` both
    match ``/data/examples/chelsea.png``).

    Returns:
        ``({resolved image path: its boxes}, [annotated files that match no input])``.

    Raises:
        AnnotationError: an annotated file that matches two inputs (name the entry; give
            a longer path in the annotation).
    """
    by_name: dict[str, list[str]] = {}
    for image in images:
        real = os.path.realpath(image)
        by_name.setdefault(os.path.basename(real), []).append(real)
    matched: dict[str, list[GroundTruthBox]] = {}
    unmatched: list[str] = []
    seen: dict[str, str | None] = {}
    for box in annotations.boxes:
        if box.file not in seen:
            seen[box.file] = _match_one(box, by_name)
            if seen[box.file] is None:
                unmatched.append(box.file)
        target = seen[box.file]
        if target is not None:
            matched.setdefault(target, []).append(box)
    return matched, unmatched


def _match_one(box: GroundTruthBox, by_name: dict[str, list[str]]) -> str | None:
    text = box.file.replace("\\", "/")
    if os.path.isabs(text):
        real = os.path.realpath(text)
        return real if real in by_name.get(os.path.basename(real), []) else None
    parts = [p for p in PurePosixPath(text).parts if p not in (".", "")]
    if not parts:
        return None
    tail = "/" + "/".join(parts)
    found = [p for p in by_name.get(parts[-1], []) if p.replace(os.sep, "/").endswith(tail)]
    if len(found) > 1:
        raise AnnotationError(
            box.source,
            f"{box.entry}: {box.file!r} matches {len(found)} input images ({found[0]}, "
            f"{found[1]}); give a longer path in the annotation",
        )
    return found[0] if found else None
