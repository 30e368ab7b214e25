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

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from camtool.errors import CamtoolError, ClassSelectionError
from camtool.io.files import read_text_file

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


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of a box file (a byte-order mark dropped), within the text-file limit.

    Raises:
        AnnotationError: not a readable regular file, too large, or not UTF-8.
    """
    return read_text_file(path, AnnotationError, what, "utf-8-sig")


def coordinate(value: Any, where: str, name: str) -> float:
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


def checked_box(box: Box, where: str, size: tuple[int, int] | None) -> Box:
    """A box with positive width and height, inside the declared image size (with
    :data:`BOX_TOLERANCE`, then clipped)."""
    x1, y1, x2, y2 = box
    if min(box) < -BOX_TOLERANCE:
        raise AnnotationError(where, f"box {shown_box(box)} has a negative coordinate")
    if x2 <= x1 or y2 <= y1:
        raise AnnotationError(
            where, f"box {shown_box(box)} is empty or inverted (x2 <= x1 or y2 <= y1)"
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
            f"box {shown_box(box)} lies outside the image ({width}x{height} px; a box may reach "
            f"{BOX_TOLERANCE:g} px beyond its edges)",
        )
    clipped = (max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise AnnotationError(where, f"box {shown_box(box)} has no pixel inside the image")
    return clipped


def fit_to_image(box: GroundTruthBox, size: tuple[int, int], rescale: bool = False) -> Box:
    """``box.box`` in pixels of the real image, of ``size`` = ``(width, height)``, clipped to it.

    A VOC or COCO file declares the size of the image its boxes were drawn on. When that is not
    the real image's size (the boxes were drawn on a resized copy, say), the boxes would land in
    the wrong place: refused, or with ``rescale`` scaled by the ratio of the two sizes (width
    and height apart). A declared size that is the real one with width and height swapped is an
    orientation mismatch (a photo whose EXIF orientation turns it, boxes drawn on its stored
    pixels), which scaling cannot fix: refused, with ``rescale`` too.

    Raises:
        AnnotationError: another declared size (without ``rescale``; a swapped one always),
            naming the file and the entry; a box outside the image (:func:`clip_box`).
    """
    coordinates = box.box
    if box.size is not None and box.size != size:
        (declared_width, declared_height), (width, height) = box.size, size
        if (declared_width, declared_height) == (height, width):  # no resized copy: turned
            raise AnnotationError(
                box.source,
                f"{box.entry}: the file gives the image as {declared_width}x{declared_height} px "
                f"but it is {width}x{height} px: width and height swapped, an orientation "
                "mismatch (its boxes were drawn on the stored, unrotated pixels; camtool turns "
                "the image as its EXIF orientation says), so they would land in the wrong place, "
                "and --rescale-boxes cannot fix that",
            )
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


def shown_box(box: Box) -> str:
    """``[x1, y1, x2, y2]`` as a message shows a box."""
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def declared_size(width: Any, height: Any, where: str) -> tuple[int, int]:
    """An image size a box file declares, ``(width, height)`` in whole pixels.

    Raises:
        AnnotationError: not a positive whole number (naming ``where``).
    """
    w, h = coordinate(width, where, "image width"), coordinate(height, where, "image height")
    if w < 1 or h < 1 or w != int(w) or h != int(h):
        raise AnnotationError(where, f"image size {w:g}x{h:g} is not a positive whole number")
    return int(w), int(h)


def check_box_count(source: Path, count: int) -> None:
    """Refuse a box source past :data:`MAX_BOXES` boxes (``AnnotationError`` naming it)."""
    if count > MAX_BOXES:
        raise AnnotationError(source, f"holds more than {MAX_BOXES:,} boxes, above the limit")


def relative_error(exc: AnnotationError, path: Path) -> AnnotationError:
    """Errors raised with ``"<file>: <entry>"`` as their subject read ``<file>: <entry>: ...``;
    keep them as one subject (the file) and one problem."""
    prefix = f"{path}: "
    if exc.subject and exc.subject.startswith(prefix):
        return AnnotationError(path, f"{exc.subject[len(prefix) :]}: {exc.problem}")
    return exc


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
                    f"{box.entry}: class {clipped(box.label)!r} is not one of the {len(labels)} "
                    f"classes of {model} ({exc.problem})",
                ) from None
        resolved.append(replace(box, index=cache[box.label]))
    return replace(annotations, boxes=tuple(resolved))


def clipped(text: str) -> str:
    """A value as a message shows it: whole up to 60 characters, else its first 40 and its
    length (a 100,000-character label or id must not make a 100 kB error line)."""
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
