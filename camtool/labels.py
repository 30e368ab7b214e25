"""Class names: from what a user types (``285``, ``Egyptian cat``, ``egyptian_cat``) to a class
index, suggestions for a name that matches none, and searching a model's labels.

One rule everywhere (``--class``, ``classes=``, ``camtool classes``): a class is an index, its
exact label, its label in any case, or the label's slug, the form camtool writes into file names
(:func:`camtool.naming.slug`: ``Egyptian cat`` -> ``egyptian_cat``).
"""

from __future__ import annotations

import difflib
import operator
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import SupportsIndex

from camtool.errors import ClassSelectionError
from camtool.naming import slug

#: What ``classes=`` takes: one class (an index or a name) or several (a list, a tuple, a 1-D
#: integer array or tensor); see :func:`resolve_classes`.
ClassesArg = SupportsIndex | str | Sequence[SupportsIndex | str] | None

#: How many labels containing the typed name, and how many close spellings, a message lists.
SHOWN_CONTAINING = 8
SHOWN_CLOSE = 3


@dataclass(frozen=True)
class ClassName:
    """One class of a label set: its index and its label."""

    index: int
    name: str


def resolve_class(spec: int | str | SupportsIndex, labels: Sequence[str]) -> int:
    """Return the class index for ``spec``.

    ``spec`` is, in this order: an index (anything integer-like: ``int``, ``numpy.int64``, a
    one-element integer tensor, or a string of digits; booleans and floats are refused), a label
    exactly as written, a label in any case, or a label's slug (``egyptian_cat``, the form in
    camtool's file names). Blanks around a string are ignored.

    Raises:
        ClassSelectionError: an index out of range; a name that several labels share in the
            form it matched (listed with their indices); an unknown name (with the labels that
            contain it, then close spellings); something that is neither an integer nor a string.
    """
    if not isinstance(spec, str):
        if isinstance(spec, bool) or type(spec).__name__ == "bool_" or _is_bool_tensor(spec):
            raise ClassSelectionError(spec, "a class is an integer index or a name, not a boolean")
        _check_has_values(spec, ())
        try:
            index = operator.index(spec)
        except TypeError:
            raise ClassSelectionError(
                spec, f"a class is an integer index or a name, not {type(spec).__name__}"
            ) from None
        return _checked_index(spec, index, labels)
    wanted = spec.strip()
    if wanted.isdecimal():  # what int() reads ("²" is isdigit() but no int); never 5000 digits
        start = next((i for i, c in enumerate(wanted) if unicodedata.decimal(c)), len(wanted))
        digits = wanted[start:] or "0"  # "000...0" of any length is class 0
        return _checked_index(spec, int(digits) if len(digits) <= 30 else len(labels), labels)
    found = label_index(spec, labels)
    if found is None:
        raise ClassSelectionError(spec, f"unknown class name{_hint(wanted, labels)}")
    return found


def resolve_classes(classes: ClassesArg | object, labels: Sequence[str]) -> list[int] | None:
    """Return the class indices that ``classes`` asks for, or None when it asks for none.

    ``classes`` is one class (an ``int``, a ``str``, a numpy or torch integer scalar, a 0-d
    integer array or tensor) or several (a list, tuple or range of them, or a 1-D integer numpy
    array or tensor); each is resolved by :func:`resolve_class`. A string is one class, never a
    sequence of characters (``"285"`` is class 285). A class asked for twice (by name and by
    index, say) is mapped once, where it first appears. None or an empty collection (an empty
    array or tensor of any dtype too): None (each image's top predictions).

    Raises:
        ClassSelectionError: anything else (a float, a set, a dict, bytes, a 2-D or float array,
            a meta or sparse tensor), saying what was given; and the errors of
            :func:`resolve_class`.
    """
    if classes is None:
        return None
    if isinstance(classes, str):
        return [resolve_class(classes, labels)]
    shape = getattr(classes, "shape", None)
    if shape is not None and hasattr(classes, "dtype"):  # a numpy array or a torch tensor
        return _resolve_array(classes, tuple(shape), labels)
    if isinstance(classes, (list, tuple, range)):
        return list(dict.fromkeys(resolve_class(c, labels) for c in classes)) or None
    if isinstance(classes, (bytes, bytearray, set, frozenset, dict)) or not hasattr(
        classes, "__index__"
    ):
        raise ClassSelectionError(
            _shown(classes),
            "classes is a class (an index or a name) or a list of them, "
            f"not {type(classes).__name__}",
        )
    return [resolve_class(classes, labels)]


def _resolve_array(
    array: object, shape: tuple[int, ...], labels: Sequence[str]
) -> list[int] | None:
    """The classes of a numpy array or a torch tensor: a 0-d or 1-D integer one; an empty one
    (of any dtype, like ``[]``) asks for none."""
    if 0 in shape:
        return None
    dtype = str(getattr(array, "dtype", "")).removeprefix("torch.")
    integer = dtype.startswith(("int", "uint")) and "bool" not in dtype
    kind = "tensor" if type(array).__module__.startswith("torch") else "array"
    if len(shape) > 1 or not integer:
        raise ClassSelectionError(
            f"<{kind} {dtype} {list(shape)}>",
            "classes as an array or a tensor must be 0-d or 1-D with an integer dtype",
        )
    _check_has_values(array, shape)
    values = array.tolist()  # type: ignore[attr-defined]  # numpy and torch both have it
    found = (_checked_index(v, int(v), labels) for v in (values if shape else [values]))
    return list(dict.fromkeys(found)) or None


def _check_has_values(value: object, shape: tuple[int, ...]) -> None:
    """Refuse a torch tensor whose values cannot be read: a meta one (shapes only), a sparse
    one."""
    if getattr(value, "is_meta", False) is True:
        what = "a meta tensor"
    elif str(getattr(value, "layout", "torch.strided")) != "torch.strided":
        what = f"a {str(getattr(value, 'layout', '')).removeprefix('torch.')} tensor"
    else:
        return
    dtype = str(getattr(value, "dtype", "")).removeprefix("torch.")
    raise ClassSelectionError(
        f"<tensor {dtype} {list(shape)}>",
        f"{what} holds no class indices to read; pass a list or a dense tensor",
    )


def _shown(value: object) -> str:
    """A short ``repr`` of a value a user passed, for a message."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def label_index(name: str, labels: Sequence[str]) -> int | None:
    """The index of the label ``name`` names: exactly as written, else in any case, else as a
    slug (``egyptian_cat``); None when it names none. Blanks around ``name`` are ignored.

    Raises:
        ClassSelectionError: several labels match in the first form that matches at all (two
            labels that differ only in case, say), listed with their indices.
    """
    wanted = name.strip()
    for form in (_exact, str.lower, _slug):
        key = form(wanted)
        found = [i for i, label in enumerate(labels) if key and form(label) == key]
        if len(found) == 1:
            return found[0]
        if found:
            listed = ", ".join(f"{i} {labels[i]!r}" for i in found)
            raise ClassSelectionError(
                name, f"ambiguous class name: {listed}; give the index or the exact label"
            )
    return None


def map_position(which: int | str, mapped: Sequence[tuple[int, str]], why_none: str = "") -> int:
    """The position of one map among maps of the classes ``mapped`` (``(index, name)`` each, in
    the maps' order), from a class name (as ``--class`` takes it), a class index or a position.

    An integer is a position (0: the first map; negative from the end) or a mapped class's
    index: when it is both and they name the same map, that map; when they name two maps it is
    refused, as is an integer that is neither. A string of digits is a class index (``"2"`` is
    class 2, as ``--class 2`` takes it), never a position.

    Raises:
        ClassSelectionError: a name that is not mapped; a float, a boolean or anything else that
            is neither a string nor an integer; an integer that is neither a position nor
            a mapped class, or is ambiguous (the message names both maps); no maps at all
            (``why_none`` says why).
    """
    shown = ", ".join(f"{index} ({name})" for index, name in mapped) or "none"
    if isinstance(which, str) and which.strip().isdecimal():  # "2" is class 2, as --class takes it
        wanted = int(which.strip()) if len(which.strip()) <= 30 else -1
        found = next((i for i, (index, _) in enumerate(mapped) if index == wanted), None)
        if found is None:
            raise ClassSelectionError(which, f"is not one of the mapped classes: {shown}")
        return found
    if isinstance(which, str):
        found = label_index(which, [name for _, name in mapped])
        if found is None:
            raise ClassSelectionError(which, f"is not one of the mapped classes: {shown}")
        return found
    if (
        isinstance(which, bool)
        or type(which).__name__ == "bool_"
        or not hasattr(which, "__index__")
    ):
        raise ClassSelectionError(
            _shown(which),
            "a map is a class (its name or index) or a position, an integer; "
            f"not {type(which).__name__}",
        )
    which = operator.index(which)
    count = len(mapped)
    if not count:
        raise ClassSelectionError(which, f"has no map: {why_none or 'no maps were made'}")
    same = [i for i, (index, _) in enumerate(mapped) if index == which]
    if -count <= which < count:
        here = which % count
        if same and same[0] != here:
            raise ClassSelectionError(
                which,
                f"is ambiguous: map {here} is class {mapped[here][0]} ({mapped[here][1]}), but "
                f"class {which} ({mapped[same[0]][1]}) is map {same[0]}; pass the class's name, "
                f"or explained[{here}] for map {here}",
            )
        return here
    if same:
        return same[0]
    raise ClassSelectionError(
        which, f"is neither a map position (0..{count - 1}) nor a mapped class: {shown}"
    )


def suggest_classes(spec: str, labels: Sequence[str]) -> tuple[list[ClassName], list[ClassName]]:
    """The classes a name that matches none may have meant: those whose label contains it (as a
    whole word first, then anywhere; compared as slugs, so case, blanks and ``_`` do not
    matter), and then close spellings (``difflib``'s ratio, at least 0.6) not listed already.

    Returns:
        ``(containing, close)``: every label containing ``spec``, in that order, and at most
        :data:`SHOWN_CLOSE` close ones, best first.
    """
    key = slug(spec, fallback="")
    words, anywhere = [], []
    if key:
        for i, label in enumerate(labels):
            name = slug(label, fallback="")
            if f"_{key}_" in f"_{name}_":
                words.append(ClassName(i, label))
            elif key in name:
                anywhere.append(ClassName(i, label))
    containing = words + anywhere
    taken = {c.index for c in containing}
    lowered = [label.lower() for label in labels]
    close: list[ClassName] = []
    for match in difflib.get_close_matches(
        spec.strip().lower(), lowered, n=len(labels), cutoff=0.6
    ):
        index = lowered.index(match)
        if index not in taken and len(close) < SHOWN_CLOSE:
            taken.add(index)
            close.append(ClassName(index, labels[index]))
    return containing, close


def match_classes(labels: Sequence[str], query: str | None = None) -> list[ClassName]:
    """The classes of ``labels`` whose label contains ``query`` (in any case, or as a slug:
    ``tiger_cat`` finds ``tiger cat``) or whose index it is; every class when ``query`` is None
    or blank. In index order."""
    every = [ClassName(i, label) for i, label in enumerate(labels)]
    if query is None or not query.strip():
        return every
    text, key = query.strip().lower(), slug(query, fallback="")
    return [
        c
        for c in every
        if (text.isdigit() and c.index == int(text))
        or text in c.name.lower()
        or (key and key in slug(c.name, fallback=""))
    ]


def _exact(text: str) -> str:
    return text


def _slug(text: str) -> str:
    return slug(text, fallback="")


def _hint(spec: str, labels: Sequence[str]) -> str:
    containing, close = suggest_classes(spec, labels)
    shown = [repr(c.name) for c in containing[:SHOWN_CONTAINING] + close]
    if not shown:
        return ""
    more = len(containing) - SHOWN_CONTAINING
    extra = f" ({more} more contain {spec!r})" if more > 0 else ""
    return f"; did you mean {', '.join(shown)}?{extra}"


def _is_bool_tensor(spec: object) -> bool:
    return (
        type(spec).__module__.startswith("torch")
        and str(getattr(spec, "dtype", "")) == "torch.bool"
    )


def _checked_index(spec: object, index: int, labels: Sequence[str]) -> int:
    if not 0 <= index < len(labels):
        raise ClassSelectionError(spec, f"class index out of range 0..{len(labels) - 1}")
    return index
