"""``classes=`` in the Python API: one class or several, in every form a notebook holds them,
and a typed error that says what was given for anything else (issue 22, item 5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import camtool
from camtool.binding import bind_method
from camtool.errors import ClassSelectionError
from camtool.labels import map_position, resolve_class, resolve_classes
from tests.conftest import CAT

LABELS = camtool.class_names()  # the default model's 1,000 ImageNet classes
NAMES = [c.name for c in LABELS]


@pytest.mark.parametrize(
    ("given", "indices"),
    [
        ("285", [285]),  # a string is one class, never its characters (was 2, 8, 5)
        ("tabby", [281]),  # was an error on "t"
        (" Egyptian cat ", [285]),
        (285, [285]),  # was a bare TypeError
        (np.int64(285), [285]),
        (torch.tensor(285), [285]),
        (np.array(285), [285]),
        (np.array([285, 281]), [285, 281]),  # was numpy's ValueError
        (torch.tensor([285, 281]), [285, 281]),
        (np.array([7], dtype=np.uint8), [7]),
        ([285, "tabby", np.int32(282)], [285, 281, 282]),
        (("285",), [285]),
        (range(3), [0, 1, 2]),
        (None, None),
        ([], None),
        (np.array([], dtype=np.int64), None),
        (np.array([]), None),  # float64, as np.array([]) makes it: empty means none too
        (torch.tensor([]), None),
        (np.zeros((0, 3)), None),
        ("0" * 40, [0]),  # class 0, not out of range: leading zeros are no digits of the index
        ("0" * 5000 + "285", [285]),
        ("\u0660" * 40 + "\u0663", [3]),  # Arabic-Indic digits, which int() reads too
    ],
)
def test_one_class_or_several_in_any_integer_or_name_form(given: object, indices: object) -> None:
    assert resolve_classes(given, NAMES) == indices


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (2.5, "2.5: classes is a class (an index or a name) or a list of them, not float"),
        ({285}, "{285}: classes is a class (an index or a name) or a list of them, not set"),
        (b"285", "b'285': classes is a class (an index or a name) or a list of them, not bytes"),
        ({285: 1}, "{285: 1}: classes is a class (an index or a name) or a list of them, not dict"),
        (
            np.array([[285]]),
            "<array int64 [1, 1]>: classes as an array or a tensor must be 0-d or 1-D with an "
            "integer dtype",
        ),
        (
            torch.tensor([2.0]),
            "<tensor float32 [1]>: classes as an array or a tensor must be 0-d or 1-D with an "
            "integer dtype",
        ),
        (
            np.array([True]),
            "<array bool [1]>: classes as an array or a tensor must be 0-d or 1-D with an "
            "integer dtype",
        ),
        (True, "True: a class is an integer index or a name, not a boolean"),
        (np.array([1000]), "1000: class index out of range 0..999"),
        ([285, 1.5], "1.5: a class is an integer index or a name, not float"),
        ("0" * 40 + "1000", f"{'0' * 40}1000: class index out of range 0..999"),
        (
            torch.tensor([285, 281], device="meta"),
            "<tensor int64 [2]>: a meta tensor holds no class indices to read; pass a list or a "
            "dense tensor",
        ),
        (
            [torch.tensor(285, device="meta")],
            "<tensor int64 []>: a meta tensor holds no class indices to read; pass a list or a "
            "dense tensor",
        ),
        (
            torch.tensor([285, 281]).to_sparse(),
            "<tensor int64 [2]>: a sparse_coo tensor holds no class indices to read; pass a list "
            "or a dense tensor",
        ),
    ],
)
def test_anything_else_is_a_class_selection_error_saying_what_was_given(
    given: object, message: str
) -> None:
    with pytest.raises(ClassSelectionError) as caught:
        resolve_classes(given, NAMES)
    assert str(caught.value) == message


def test_explain_maps_the_class_a_string_names_on_the_cat_photo() -> None:
    bound = bind_method("efficientnet_lite0", "cam", "285", device="cpu")
    assert bound.classes == [285]
    ex = camtool.explain(CAT, bound)
    assert [s.index for s in ex.explained] == [285]
    assert ex.explained[0].name == "Egyptian cat"
    ex = camtool.explain(CAT, classes=np.array([285, 281]), device="cpu")
    assert [s.index for s in ex.explained] == [285, 281] and ex.cams.shape[0] == 2
    with pytest.raises(ClassSelectionError, match=r"^\{285\}: classes is a class"):
        camtool.explain(CAT, classes={285}, device="cpu")


def test_a_map_is_chosen_by_class_or_position_and_an_ambiguous_integer_is_refused(
    tmp_path: Path,
) -> None:
    ex = camtool.explain(CAT, classes=[285, 281], device="cpu")
    first, second = ex.overlay(0).tensor, ex.overlay(1).tensor
    assert not torch.equal(first, second)
    assert torch.equal(ex.overlay(285).tensor, first)  # class 285 (was "only 2 classes")
    assert torch.equal(ex.overlay(281).tensor, second)
    assert torch.equal(ex.overlay("tabby").tensor, second)
    assert torch.equal(ex.overlay(ex.explained[1]).tensor, second)
    assert torch.equal(ex.overlay(-1).tensor, second)
    assert ex.legend_text(281)[0].startswith("tabby: probability")
    saved = camtool.load_image(ex.save(tmp_path / "tabby.png", 281))
    assert torch.equal(saved, second)
    with pytest.raises(
        ClassSelectionError,
        match=r"^282: is neither a map position \(0\.\.1\) nor a mapped class: "
        r"285 \(Egyptian cat\), 281 \(tabby\)$",
    ):
        ex.overlay(282)
    with pytest.raises(ClassSelectionError, match=r"^tiger cat: is not one of the mapped classes"):
        ex.overlay("tiger cat")
    # Classes 1 and 0 mapped in that order: 0 is map 0 (goldfish) and class 0 (tench, map 1).
    fish = camtool.explain(CAT, classes=[1, 0], device="cpu")
    with pytest.raises(
        ClassSelectionError,
        match=r"^0: is ambiguous: map 0 is class 1 \(goldfish\), but class 0 "
        r"\(tench\) is map 1; pass the class's name, or explained\[0\] for map 0$",
    ):
        fish.overlay(0)
    assert torch.equal(fish.overlay("tench").tensor, fish.overlay(fish.explained[1]).tensor)
    assert len(fish.sheet().tensor.shape) == 3  # internal callers pass the ClassScore
    same = camtool.explain(CAT, classes=[0, 1], device="cpu")  # positions and classes agree
    assert torch.equal(same.overlay(1).tensor, same.overlay("goldfish").tensor)


def test_a_name_several_labels_share_exactly_is_refused_as_ambiguous() -> None:
    labels = ["crane", "Cat", "cat", "crane"]  # the attack's label file
    with pytest.raises(
        ClassSelectionError,
        match=r"^crane: ambiguous class name: 0 'crane', 3 'crane'; give the index or the exact",
    ):
        resolve_class("crane", labels)
    assert resolve_class("cat", labels) == 2  # one exact match still wins over case
    assert resolve_class("3", labels) == 3
    mapped = [(0, "crane"), (3, "crane")]
    with pytest.raises(ClassSelectionError, match=r"^crane: ambiguous class name: 0 'crane'"):
        map_position("crane", mapped)


def test_a_class_asked_for_twice_is_mapped_once_in_first_order() -> None:
    assert resolve_classes(["tabby", 285, 281, "285"], NAMES) == [281, 285]
    assert resolve_classes(np.array([285, 285, 7]), NAMES) == [285, 7]
    ex = camtool.explain(CAT, classes=["Egyptian cat", 285, "tabby"], device="cpu")
    assert [s.index for s in ex.explained] == [285, 281] and ex.maps.shape[0] == 2


def test_position_takes_a_string_of_digits_as_a_class_and_refuses_other_types() -> None:
    ex = camtool.explain(CAT, classes=[285, 281], device="cpu")
    assert ex.position("281") == 1 and ex.position(" 285 ") == 0  # as --class "281" takes it
    assert ex.position(np.int64(1)) == 1  # an integer-like value is a position, as an int is
    with pytest.raises(ClassSelectionError, match=r"^1: is not one of the mapped classes: 285 \("):
        ex.position("1")  # digits are a class, never a position (was refused as a name too)
    for bad, kind in [(1.0, "float"), (True, "bool"), ([1], "list")]:
        with pytest.raises(ClassSelectionError, match=rf"or a position, an integer; not {kind}$"):
            ex.position(bad)  # type: ignore[arg-type]
        with pytest.raises(ClassSelectionError, match=rf"not {kind}$"):
            ex.overlay(bad)  # type: ignore[arg-type]
