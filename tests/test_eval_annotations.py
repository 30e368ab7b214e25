"""Ground-truth box files for ``camtool eval``: VOC, COCO and CSV files written here, read back;
every hostile or malformed entry refused with one line naming the file and the entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from camtool.metrics.annotations import (
    AnnotationError,
    clip_box,
    match_images,
    read_annotations,
    resolve_boxes,
)
from tests.conftest import CAT, EXAMPLES

DATA = Path(__file__).parent / "data" / "boxes"


def imagenet_labels() -> list[str]:
    from importlib.resources import files

    return files("camtool").joinpath("data/imagenet1k.txt").read_text().splitlines()


def voc(
    folder: Path,
    name: str,
    objects: str,
    size: str = "<size><width>451</width><height>300</height><depth>3</depth></size>",
) -> Path:
    path = folder / name
    path.write_text(
        f"<annotation><folder>x</folder><filename>chelsea.png</filename>{size}{objects}</annotation>"
    )
    return path


def box_object(xmin: str, ymin: str, xmax: str, ymax: str, name: str = "Egyptian cat") -> str:
    return (
        f"<object><name>{name}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
        f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


CAT_OBJECT = box_object("1", "1", "405", "300")


def coco(path: Path, **changes: object) -> Path:
    data: dict[str, object] = {
        "images": [{"id": 1, "file_name": "chelsea.png", "width": 451, "height": 300}],
        "categories": [{"id": 7, "name": "Egyptian cat"}, {"id": 8, "name": "tabby"}],
        "annotations": [{"id": 31, "image_id": 1, "category_id": 7, "bbox": [0, 0, 405, 300]}],
    }
    data.update(changes)
    path.write_text(json.dumps(data))
    return path


def refusal(path: Path, text: str | None = None) -> str:
    """The error :func:`read_annotations` refuses ``path`` with (first written with ``text``)."""
    if text is not None:
        path.write_text(text)
    with pytest.raises(AnnotationError) as caught:
        read_annotations(path)
    return str(caught.value)


def test_the_three_formats_give_the_same_box(tmp_path: Path) -> None:
    (tmp_path / "boxes.csv").write_text(
        "file,class,x1,y1,x2,y2\nchelsea.png,Egyptian cat,0,0,405,300\n"
    )
    voc(tmp_path, "chelsea.xml", CAT_OBJECT)
    coco(tmp_path / "boxes.json")
    read = [read_annotations(tmp_path / n) for n in ("boxes.csv", "chelsea.xml", "boxes.json")]
    assert [a.format for a in read] == ["csv", "voc", "coco"]
    for found in read:
        (box,) = found.boxes
        assert (box.file, box.label, box.box) == (
            "chelsea.png",
            "Egyptian cat",
            (0.0, 0.0, 405.0, 300.0),
        )
    assert (
        read[1].boxes[0].size == (451, 300) and read[1].boxes[0].entry == "object 1 (Egyptian cat)"
    )
    assert read[2].boxes[0].entry == "annotation id 31"
    folder = read_annotations(tmp_path)  # a folder of VOC files
    assert folder.format == "voc" and len(folder.boxes) == 1
    resolved = resolve_boxes(read[0], imagenet_labels())
    assert resolved.boxes[0].index == 285


def test_the_committed_boxes_of_the_example_and_foolbox_photos() -> None:
    annotations = resolve_boxes(read_annotations(DATA / "photos.csv"), imagenet_labels())
    files = {b.file for b in annotations.boxes}
    assert len(files) == 24 and len(annotations.boxes) == 51
    matched, unmatched = match_images(annotations, [CAT, EXAMPLES / "coffee.png"])
    assert [b.index for b in matched[str(CAT.resolve())]] == [285]
    assert len(unmatched) == 22


HOSTILE_XML = {
    "billion laughs": (
        '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>\n'
        "<annotation><filename>&lol2;</filename></annotation>",
        "line 2: XML with a DOCTYPE declaration is refused",
    ),
    "external entity": (
        '<!doctype a [<!ENTITY x SYSTEM "file:///etc/passwd">]><annotation><filename>&x;</filename></annotation>',
        "line 1: XML with a DOCTYPE declaration is refused",
    ),
    "not xml": ("<annotation><filename>a</filename>", "not well-formed XML"),
    "wrong root": ("<html/>", "the root element is <html>, not <annotation>"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_XML))
def test_hostile_xml_is_refused_before_parsing(tmp_path: Path, case: str) -> None:
    text, problem = HOSTILE_XML[case]
    path = tmp_path / "bad.xml"
    message = refusal(path, text)
    assert message.startswith(f"{path}: {problem}")
    assert "\n" not in message


BAD_VOC_BOXES = {
    "huge": (
        ("1", "1", "1e300", "10"),
        "object 1 (Egyptian cat): xmax 1e+300 is beyond 1,000,000 pixels (not an image)",
    ),
    "many digits": (
        ("1", "1", "9" * 5000, "10"),
        "object 1 (Egyptian cat): xmax is inf, not a finite number",
    ),
    "nan": (("1", "1", "nan", "10"), "object 1 (Egyptian cat): xmax is nan, not a finite number"),
    "inf": (
        ("1", "-inf", "20", "10"),
        "object 1 (Egyptian cat): ymin is -inf, not a finite number",
    ),
    "negative": (
        ("-40", "1", "20", "10"),
        "object 1 (Egyptian cat): box [-41, 0, 20, 10] has a negative coordinate",
    ),
    "inverted": (
        ("30", "1", "20", "10"),
        "object 1 (Egyptian cat): box [29, 0, 20, 10] is empty or inverted (x2 <= x1 or y2 <= y1)",
    ),
    "outside": (
        ("1", "1", "460", "10"),
        "object 1 (Egyptian cat): box [0, 0, 460, 10] lies outside the image (451x300 px; a box may reach 1 px beyond its edges)",
    ),
    "text": (("1", "1", "wide", "10"), "object 1 (Egyptian cat): xmax 'wide' is not a number"),
}


@pytest.mark.parametrize("case", sorted(BAD_VOC_BOXES))
def test_bad_voc_boxes_are_refused_naming_the_object(tmp_path: Path, case: str) -> None:
    values, problem = BAD_VOC_BOXES[case]
    path = voc(tmp_path, "bad.xml", CAT_OBJECT + box_object(*values).replace("object 1", ""))
    assert refusal(path) == f"{path}: {problem.replace('object 1', 'object 2')}"


def test_a_box_one_pixel_over_the_edge_is_clipped() -> None:
    assert clip_box((-1, 0, 452, 300.5), (451, 300), "x") == (0.0, 0.0, 451.0, 300.0)


BAD_CSV = {
    "header": ("file,label,x1,y1,x2,y2\n", "line 1: the header lacks class"),
    "short row": (
        "file,class,x1,y1,x2,y2\na.png,1,2\n",
        "line 2: 3 fields, expected 6 as in the header",
    ),
    "nan": (
        "file,class,x1,y1,x2,y2\nchelsea.png,1,0,0,NaN,4\n",
        "line 2: x2 is nan, not a finite number",
    ),
    "negative": (
        "file,class,x1,y1,x2,y2\n\nchelsea.png,1,-5,0,4,4\n",
        "line 3: box [-5, 0, 4, 4] has a negative coordinate",
    ),
    "empty": ("", "line 1: empty file"),
    "no boxes": ("file,class,x1,y1,x2,y2\n", "holds no boxes"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_bad_csv_rows_are_refused_naming_the_line(tmp_path: Path, case: str) -> None:
    text, problem = BAD_CSV[case]
    path = tmp_path / "boxes.csv"
    assert refusal(path, text).startswith(f"{path}: {problem}")


def test_bad_coco_entries_are_refused_naming_the_annotation(tmp_path: Path) -> None:
    path = tmp_path / "boxes.json"
    cases = {
        "unknown image": (
            {"annotations": [{"id": 5, "image_id": 9, "category_id": 7, "bbox": [0, 0, 4, 4]}]},
            "annotation id 5: image_id 9 is not an image of this file",
        ),
        "unknown category": (
            {"annotations": [{"id": 5, "image_id": 1, "category_id": 3, "bbox": [0, 0, 4, 4]}]},
            "annotation id 5: category_id 3 is not a category of this file",
        ),
        "outside": (
            {"annotations": [{"id": 5, "image_id": 1, "category_id": 7, "bbox": [400, 0, 60, 4]}]},
            "annotation id 5: box [400, 0, 460, 4] lies outside the image (451x300 px",
        ),
        "negative size": (
            {"annotations": [{"id": 5, "image_id": 1, "category_id": 7, "bbox": [10, 0, -6, 4]}]},
            "annotation id 5: box [10, 0, 4, 4] is empty or inverted",
        ),
        "huge": (
            {"annotations": [{"id": 5, "image_id": 1, "category_id": 7, "bbox": [0, 0, 1e400, 4]}]},
            "annotation id 5: width is inf, not a finite number",
        ),
        "not lists": ({"images": {"a": 1}}, "not a COCO file: 'images' is not a list of objects"),
    }
    for changes, problem in cases.values():
        message = refusal(coco(path, **changes))
        assert message.startswith(f"{path}: {problem}"), message
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(AnnotationError, match=r"nested too deeply|not a COCO file"):
        read_annotations(path)


def test_a_class_that_is_not_the_models_names_the_file_and_entry(tmp_path: Path) -> None:
    path = voc(tmp_path, "pascal.xml", box_object("1", "1", "20", "20", name="cat"))
    with pytest.raises(AnnotationError) as caught:
        resolve_boxes(read_annotations(path), imagenet_labels(), "efficientnet_lite0")
    assert str(caught.value).startswith(
        f"{path}: object 1 (cat): class 'cat' is not one of the 1000 classes of efficientnet_lite0"
    )


def test_files_that_are_missing_too_large_or_of_an_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="no such file"):
        read_annotations(tmp_path / "none.csv")
    (tmp_path / "boxes.txt").write_text("x")
    with pytest.raises(AnnotationError, match="unknown annotation format"):
        read_annotations(tmp_path / "boxes.txt")
    big = tmp_path / "big.csv"
    with big.open("wb") as handle:
        handle.truncate((64 << 20) + 1)
    with pytest.raises(AnnotationError, match="above the limit"):
        read_annotations(big)
    with pytest.raises(AnnotationError, match=r"no Pascal VOC \.xml files"):
        read_annotations(tmp_path)


def test_matching_by_path_suffix_and_ambiguity(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.png").write_bytes(b"")
    (tmp_path / "boxes.csv").write_text(
        "file,class,x1,y1,x2,y2\na/x.png,1,0,0,2,2\nnone.png,1,0,0,2,2\n"
    )
    images = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"]
    matched, unmatched = match_images(read_annotations(tmp_path / "boxes.csv"), images)
    assert list(matched) == [str((tmp_path / "a" / "x.png").resolve())] and unmatched == [
        "none.png"
    ]
    (tmp_path / "boxes.csv").write_text("file,class,x1,y1,x2,y2\nx.png,1,0,0,2,2\n")
    with pytest.raises(AnnotationError, match=r"line 2: 'x\.png' matches 2 input images"):
        match_images(read_annotations(tmp_path / "boxes.csv"), images)
