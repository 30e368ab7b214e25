"""Reading ground-truth box files: Pascal VOC XML (a file or a folder), COCO JSON and CSV
(``file,class,x1,y1,x2,y2``) -> :class:`~camtool.metrics.annotations.GroundTruthBox` tuples, every
bad entry one :class:`~camtool.metrics.annotations.AnnotationError` naming the file and the entry.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from camtool.io.files import MAX_TEXT_BYTES, open_regular_file
from camtool.metrics.annotations import (
    MAX_VOC_FILES,
    AnnotationError,
    Annotations,
    GroundTruthBox,
    check_box_count,
    checked_box,
    clipped,
    coordinate,
    declared_size,
    read_text,
    relative_error,
)


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
                    coordinate(row[column[i]], where, CSV_HEADER[i]) for i in range(2, 6)
                )
                if len(shared) > 1 << 16:  # a million boxes repeat their values: keep 65,536
                    shared.clear()
                keep = shared.setdefault
                box = checked_box(
                    (keep(x1, x1), keep(y1, y1), keep(x2, x2), keep(y2, y2)), where, None
                )
                boxes.append(
                    GroundTruthBox(keep(file, file), keep(label, label), box, source, entry)
                )
                check_box_count(path, len(boxes))
        except csv.Error as exc:
            raise AnnotationError(path, f"line {reader.line_num}: not valid CSV ({exc})") from None
        except AnnotationError as exc:
            raise relative_error(exc, path) from None
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
    text = read_text(path, "Pascal VOC file")
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
        size = declared_size(
            element.findtext("width"), element.findtext("height"), f"{path}: <size>"
        )
    boxes = []
    try:
        for number, obj in enumerate(root.iter("object"), 1):
            label = (obj.findtext("name") or "").strip()
            entry = f"object {number}" + (f" ({clipped(label)})" if label else "")
            where = f"{path}: {entry}"
            if not label:
                raise AnnotationError(where, "<name> is missing or empty")
            bnd = obj.find("bndbox")
            if bnd is None:
                raise AnnotationError(where, "<bndbox> is missing")
            values = [
                coordinate(bnd.findtext(k), where, k) for k in ("xmin", "ymin", "xmax", "ymax")
            ]
            # VOC pixels are 1-based and xmax/ymax inclusive: the box covers columns
            # xmin-1 .. xmax-1, i.e. [xmin-1, xmax) in camtool's convention.
            box = (values[0] - 1, values[1] - 1, values[2], values[3])
            boxes.append(
                GroundTruthBox(file, label, checked_box(box, where, size), str(path), entry, size)
            )
            check_box_count(path, len(boxes))
    except AnnotationError as exc:
        raise relative_error(exc, path) from None
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
        check_box_count(folder, len(boxes))
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
    text = read_text(path, "COCO file")
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
            entry = (
                f"annotation id {clipped(str(ident))}" if _is_id(ident) else f"annotation {number}"
            )
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
                coordinate(v, where, n)
                for v, n in zip(bbox, ("x", "y", "width", "height"), strict=True)
            )
            file, size = images[image_id]
            box = checked_box((x, y, x + w, y + h), where, size)
            boxes.append(GroundTruthBox(file, categories[category_id], box, str(path), entry, size))
            check_box_count(path, len(boxes))
    except AnnotationError as exc:
        raise relative_error(exc, path) from None
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
        images[ident] = (name.strip(), declared_size(item.get("width"), item.get("height"), where))
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
