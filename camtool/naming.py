"""Output file names: every path component camtool derives from data goes through here.

Names come from data camtool does not control: input file stems, model card names, class names
from label files. Three rules keep them safe and distinct:

- :func:`component` turns any text into one path component: never a separator, ``.`` or ``..``,
  NUL or a control character, never empty.
- :func:`fit` keeps a file name within :data:`NAME_MAX` bytes (what file systems hold per name):
  a longer one keeps a prefix, adds a short hash of the whole name and keeps its tail (the part
  camtool adds, e.g. ``_cam_281_tabby.png``), deterministically.
- The parts camtool adds after a stem name the method (:func:`overlay_tail` and its siblings:
  ``_cam_281_tabby.png``, ``_gradcam_281_tabby.png``), so two methods never share a name.
- :class:`NameRegistry` makes names unique: a name already taken (compared case-insensitively,
  as case-insensitive file systems do) gets ``_2``, ``_3``, ...
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import PurePath

#: The longest file name, in bytes, that common file systems (ext4, APFS, NTFS in UTF-16 units) hold.
NAME_MAX = 255

#: How many hex digits of the full name's sha256 a shortened name carries.
HASH_DIGITS = 10

#: The longest tail (suffix) a shortened name keeps whole; a longer one keeps its extension only.
MAX_TAIL = 96

_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")


#: Characters that move the cursor, change a terminal's state or reorder the text shown: C0 and
#: C1 control characters (ESC starts the sequences that set a window's title or clear the
#: screen) and the Unicode bidirectional marks (LRM, RLM, ALM U+061C), overrides and isolates.
#: Newline and tab are kept.
INVISIBLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(text: str, one_line: bool = False) -> str:
    """``text`` as it may be shown on a terminal: every control character (see
    :data:`INVISIBLE`) written as its escape (``"\\x1b]0;title\\x07"`` for ESC ] 0 ; ... BEL),
    so a label, a card's name or a file name shows what it holds and cannot drive the terminal.
    Newlines and tabs are kept, unless ``one_line`` (an error message, a label on its line):
    then they are escaped too (``\\x0a``), so no data can start a line of its own."""
    shown = INVISIBLE.sub(_escaped, text)
    return _LINE_BREAKS.sub(_escaped, shown) if one_line else shown


_LINE_BREAKS = re.compile(r"[\t\n]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _size(text: str) -> int:
    """Bytes of ``text`` as a file name (undecodable bytes from ``os.fsdecode`` count as one)."""
    return len(text.encode("utf-8", "surrogateescape"))


def component(text: str, fallback: str = "_") -> str:
    """Return ``text`` as one safe path component.

    Separators (``/`` and ``\\``), NUL and control characters become ``_``; a name of dots only
    (``.``, ``..``) gets a ``_`` in front; an empty name becomes ``fallback``. The result is not
    shortened (see :func:`fit`).
    """
    name = _UNSAFE.sub("_", text)
    if not name:
        return fallback
    if name.strip(".") == "":
        return f"_{name}"
    return name


def slug(text: str, fallback: str = "class") -> str:
    """A class name as a file-name part: ``"tiger cat"`` -> ``"tiger_cat"`` (ASCII letters and
    digits, ``_`` between words; ``fallback`` when nothing is left)."""
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_") or fallback


def _prefix(text: str, limit: int) -> str:
    """The longest prefix of ``text`` of at most ``limit`` bytes (never half a character)."""
    out, used = [], 0
    for char in text:
        size = _size(char)
        if used + size > limit:
            break
        out.append(char)
        used += size
    return "".join(out)


def fit(stem: str, tail: str = "", limit: int = NAME_MAX) -> str:
    """Return the file name ``stem + tail`` made safe (:func:`component`) and at most ``limit``
    bytes in UTF-8.

    A name that is too long keeps as much of ``stem`` as fits, then ``~`` and the first
    :data:`HASH_DIGITS` hex digits of the sha256 of the whole name, then ``tail`` (or, when
    ``tail`` is longer than :data:`MAX_TAIL` bytes, only its extension). The same input always
    gives the same name, and two different long names get different ones.
    """
    stem, tail = component(stem), _UNSAFE.sub("_", tail)
    name = stem + tail
    if _size(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:HASH_DIGITS]
    if _size(tail) > MAX_TAIL:
        dot = tail.rfind(".")
        tail = tail[dot:] if dot >= 0 and _size(tail[dot:]) <= 16 else ""
    room = limit - _size(tail) - len(digest) - 1
    return f"{_prefix(stem, room)}~{digest}{tail}"


class NameRegistry:
    """Names already taken in one folder; :meth:`claim` returns a free one.

    Comparison is case-insensitive (``A.png`` and ``a.png`` are one file on macOS and Windows).
    """

    def __init__(self, taken: Iterable[str] = ()) -> None:
        self._taken = {name.lower() for name in taken}

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._taken

    def reserve(self, name: str) -> None:
        """Mark ``name`` as taken (a name an earlier run already used, say)."""
        self._taken.add(name.lower())

    def claim(self, name: str, tail: str = "") -> str:
        """Return ``name + tail`` if it is free, else ``name_2 + tail``, ``name_3 + tail``, ...
        (each fitted to :data:`NAME_MAX` bytes), and mark the returned name as taken.

        ``name`` may be a relative path (``folder/stem``): only its last part is changed.
        """
        folder, _, last = name.rpartition("/")
        base = f"{folder}/" if folder else ""
        n = 1
        candidate = base + fit(last, tail)
        while candidate.lower() in self._taken:
            n += 1
            candidate = base + fit(f"{last}_{n}", tail)
        self._taken.add(candidate.lower())
        return candidate


def input_stems(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Return a distinct, safe file-name stem per input: its file stem, or ``<stem>_2``,
    ``<stem>_3``, ... when taken already (``a.png a.jpg`` -> ``a``, ``a_2``; ``a_2.png a.png
    a.jpg`` -> ``a_2``, ``a``, ``a_3``). The rule of :meth:`NameRegistry.claim`, as in export."""
    names = NameRegistry()
    return [names.claim(component(PurePath(os.fspath(p)).stem, "image")) for p in paths]


def method_part(method: str) -> str:
    """A method's registry name as a file-name part: ``cam``, ``gradcam``, ``gradcampp`` (for
    ``gradcam++``), ``integrated-head``: ASCII letters, digits and ``-``, distinct per method."""
    return re.sub(r"[^0-9a-z-]+", "_", method.lower().replace("+", "p")).strip("_") or "map"


def overlay_tail(method: str, index: int, label: str, suffix: str) -> str:
    """``_<method>_<index>_<label>.<suffix>``: what an overlay's name adds to its stem
    (``_cam_285_egyptian_cat.png``, ``_gradcam_285_egyptian_cat.png``)."""
    return f"_{method_part(method)}_{index}_{slug(label)}.{suffix}"


def heatmap_tail(method: str, index: int, label: str) -> str:
    """What a bare heatmap's name adds: ``_heatmap_<index>_<label>.png`` for CAM,
    ``_<method>_heatmap_<index>_<label>.png`` for the other methods."""
    part = "" if method == "cam" else f"_{method_part(method)}"
    return f"{part}_heatmap_{index}_{slug(label)}.png"


def raw_tail(method: str, suffix: str) -> str:
    """What the raw maps' file name adds: ``_cams.<suffix>`` for CAM, ``_<method>_maps.<suffix>``
    for the other methods."""
    return f"_cams.{suffix}" if method == "cam" else f"_{method_part(method)}_maps.{suffix}"


def video_tail(method: str, suffix: str) -> str:
    """What an overlaid video's name adds: ``_cam.mp4``, ``_gradcam.mp4``, ..."""
    return f"_{method_part(method)}.{suffix}"
