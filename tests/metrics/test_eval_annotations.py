"""Ground-truth box files for ``camtool eval``: VOC, COCO and CSV files written here, read back;
every hostile or malformed entry refused with one line naming the file and the entry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from camtool.metrics.annotations import (
    MAX_BOXES,
    AnnotationError,
    GroundTruthBox,
    clip_box,
    fit_to_image,
    match_images,
    resolve_boxes,
)
from camtool.metrics.box_files import read_annotations
from tests.conftest import CAT, EXAMPLES

DATA = Path(__file__).parents[1] / "data" / "boxes"


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
    "underscore": (("1", "1_0", "20", "10"), "object 1 (Egyptian cat): ymin '1_0' is not a number"),
    "arabic digits": (
        ("1", "1", "\u0662\u0660", "10"),
        "object 1 (Egyptian cat): xmax '\u0662\u0660' is not a number",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_VOC_BOXES))
def test_bad_voc_boxes_are_refused_naming_the_object(tmp_path: Path, case: str) -> None:
    values, problem = BAD_VOC_BOXES[case]
    path = voc(tmp_path, "bad.xml", CAT_OBJECT + box_object(*values).replace("object 1", ""))
    assert refusal(path) == f"{path}: {problem.replace('object 1', 'object 2')}"


def test_a_box_one_pixel_over_the_edge_is_clipped() -> None:
    assert clip_box((-1, 0, 452, 300.5), (451, 300), "x") == (0.0, 0.0, 451.0, 300.0)


def test_a_box_of_another_declared_image_size_is_refused_or_rescaled(tmp_path: Path) -> None:
    """The size a VOC or COCO file declares against the real image's: refused naming the file
    and the entry, or with rescale scaled by the ratio of the sizes; a CSV box (no declared
    size) is only clipped."""
    path = voc(tmp_path, "big.xml", box_object("101", "51", "800", "600"), size=(
        "<size><width>902</width><height>600</height></size>"
    ))  # fmt: skip
    (box,) = read_annotations(path).boxes
    assert box.size == (902, 600)
    with pytest.raises(AnnotationError) as caught:
        fit_to_image(box, (451, 300))
    assert str(caught.value) == (
        f"{path}: object 1 (Egyptian cat): the file gives the image as 902x600 px but it is "
        "451x300 px, so its boxes would land in the wrong place (were they drawn on a resized "
        "copy? --rescale-boxes scales them to the image)"
    )
    assert fit_to_image(box, (451, 300), rescale=True) == (50.0, 25.0, 400.0, 300.0)
    assert fit_to_image(box, (902, 600)) == (100.0, 50.0, 800.0, 600.0)
    plain = GroundTruthBox("chelsea.png", "1", (0.0, 0.0, 451.5, 10.0), "b.csv", "line 2")
    assert fit_to_image(plain, (451, 300)) == (0.0, 0.0, 451.0, 10.0)


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
    "underscore": (
        "file,class,x1,y1,x2,y2\nchelsea.png,1,0,0,1_0,4\n",
        "line 2: x2 '1_0' is not a number",
    ),
    "many digits": (
        "file,class,x1,y1,x2,y2\nchelsea.png,1,0,0," + "9" * 5000 + ",4\n",
        "line 2: x2 is inf, not a finite number",
    ),
    "not utf-8": (
        "file,class,x1,y1,x2,y2\nchelsea.png,1,0,0,4,4\nkatze\udcfc.png,1,0,0,4,4\n",
        "CSV file is not utf-8-sig text (byte 50)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_bad_csv_rows_are_refused_naming_the_line(tmp_path: Path, case: str) -> None:
    text, problem = BAD_CSV[case]
    path = tmp_path / "boxes.csv"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    assert refusal(path).startswith(f"{path}: {problem}")


def test_csv_line_endings_and_byte_order_mark_read_as_before(tmp_path: Path) -> None:
    """The CSV is read a line at a time: CRLF, a lone CR (old Mac files), a byte-order mark and
    a quoted field over two lines still read as a whole-file reader reads them."""
    path = tmp_path / "boxes.csv"
    path.write_bytes(
        b"\xef\xbb\xbffile,class,x1,y1,x2,y2\r\nchelsea.png,285,0,0,4,4\r"
        b'"two\nlines.png",tabby,1,1,5,5\r\n\r\n coffee.png ,967,2,2,8,8'
    )
    boxes = read_annotations(path).boxes
    assert [(b.file, b.label, b.box, b.entry) for b in boxes] == [
        ("chelsea.png", "285", (0.0, 0.0, 4.0, 4.0), "line 2"),
        ("two\nlines.png", "tabby", (1.0, 1.0, 5.0, 5.0), "line 4"),
        ("coffee.png", "967", (2.0, 2.0, 8.0, 8.0), "line 6"),
    ]


def test_huge_numbers_are_one_line_naming_the_file(tmp_path: Path) -> None:
    """Integers past Python's int-str conversion limit (4300 digits) in a COCO file, and
    numbers of thousands of digits in CSV and VOC files, coordinates or classes."""
    path = tmp_path / "boxes.json"
    huge = "9" * 5000
    for where in ("bbox", "id", "image_id"):
        data = coco(path).read_text()
        replaced = {
            "bbox": data.replace("[0, 0, 405, 300]", f"[0, 0, {huge}, 300]"),
            "id": data.replace('"id": 31', f'"id": -{huge}'),
            "image_id": data.replace('"image_id": 1', f'"image_id": {huge}'),
        }[where]
        message = refusal(path, replaced.replace(", ", ",\n"))
        line = replaced.replace(", ", ",\n").split(huge)[0].count("\n") + 1
        assert (
            message == f"{path}: not valid JSON (line {line}: an integer of more than 4,300 digits)"
        )
    under_the_limit = "9" * 4000
    message = refusal(coco(path, annotations=[
        {"id": 5, "image_id": 1, "category_id": 7, "bbox": [0, 0, int(under_the_limit), 4]}
    ]))  # fmt: skip
    assert message == (
        f"{path}: annotation id 5: width 999999... (4000 digits) is beyond 1,000,000 pixels "
        "(not an image)"
    )
    for label, problem in (
        (huge, "class index out of range 0..999"),
        ("\u00b2", "unknown class name"),
    ):
        csv_path = tmp_path / "boxes.csv"
        csv_path.write_text(f"file,class,x1,y1,x2,y2\nchelsea.png,{label},0,0,4,4\n")
        with pytest.raises(AnnotationError) as caught:
            resolve_boxes(read_annotations(csv_path), imagenet_labels(), "efficientnet_lite0")
        shown = label if len(label) < 60 else f"{label[:40]}... (5,000 characters)"
        assert str(caught.value).startswith(
            f"{csv_path}: line 2: class {shown!r} is not one of the 1000 classes of "
            f"efficientnet_lite0 ({problem}"
        ), str(caught.value)
    xml = voc(tmp_path, "huge.xml", box_object("1", "1", "20", "10"), size=(
        f"<size><width>{huge}</width><height>300</height></size>"
    ))  # fmt: skip
    assert refusal(xml) == f"{xml}: <size>: image width is inf, not a finite number"


def test_a_file_without_boxes_is_refused_in_every_format(tmp_path: Path) -> None:
    """A VOC file without <object> is refused as a CSV or COCO file without boxes are, and so is
    a folder of VOC files none of which has a box; in a folder with boxes, a file without
    <object> gives its image none (as a COCO image without annotations)."""
    empty = voc(tmp_path, "empty.xml", "")
    assert refusal(empty) == f"{empty}: holds no boxes (no <object>)"
    with pytest.raises(AnnotationError) as caught:
        read_annotations(tmp_path)
    assert str(caught.value) == f"{tmp_path}: holds no boxes (no <object> in its 1 XML file)"
    voc(tmp_path, "cat.xml", CAT_OBJECT)
    assert [box.label for box in read_annotations(tmp_path).boxes] == ["Egyptian cat"]
    csv_path = tmp_path / "boxes.csv"
    assert refusal(csv_path, "file,class,x1,y1,x2,y2\n") == f"{csv_path}: holds no boxes"
    json_path = coco(tmp_path / "boxes.json", annotations=[])
    assert refusal(json_path) == f"{json_path}: holds no annotations"


def test_a_box_file_past_the_box_limit_is_refused_and_read_in_bounded_memory(
    tmp_path: Path,
) -> None:
    """A real CSV file of MAX_BOXES + 1 rows is refused, naming the file; another process reads
    it (a million boxes before the refusal) with a peak of memory far below the 670 MB that
    reading the file whole and one dict per box took."""
    path = tmp_path / "many.csv"
    with path.open("w") as handle:
        handle.write("file,class,x1,y1,x2,y2\n")
        handle.writelines(
            f"{i % 5000:04d}.png,285,{i % 300},{i % 200},{i % 300 + 9},{i % 200 + 7}\n"
            for i in range(MAX_BOXES + 1)
        )
    assert path.stat().st_size > 24_000_000
    script = (
        "import resource, sys\n"
        "from camtool.metrics.annotations import AnnotationError\n"
        "from camtool.metrics.box_files import read_annotations\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    read_annotations(sys.argv[1])\n"
        "except AnnotationError as exc:\n"
        "    print(exc)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    message, grown_mib = done.stdout.splitlines()
    assert message == f"{path}: holds more than 1,000,000 boxes, above the limit"
    assert int(grown_mib) < 400, f"reading a million boxes took {grown_mib} MiB more"


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
    twice = {"id": 31, "image_id": 1, "category_id": 8, "bbox": [0, 0, 40, 30]}
    data = json.loads(coco(path).read_text())
    message = refusal(coco(path, annotations=[*data["annotations"], twice]))
    assert message == f"{path}: annotation 2: id 31 is used twice (annotation 1 has it too)"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(AnnotationError, match=r"nested too deeply|not a COCO file"):
        read_annotations(path)


def test_long_ids_and_labels_are_clipped_in_messages(tmp_path: Path) -> None:
    """A 100,000-character annotation id or class name makes a short line, not a 100 kB one."""
    long = "x" * 100_000
    shown = f"{'x' * 40}... (100,000 characters)"
    bad = {"id": long, "image_id": 1, "category_id": 3, "bbox": [0, 0, 4, 4]}
    message = refusal(coco(tmp_path / "boxes.json", annotations=[bad]))
    assert message == (
        f"{tmp_path / 'boxes.json'}: annotation id {shown}: category_id 3 is not a category of "
        "this file"
    )
    ok = {"id": long, "image_id": 1, "category_id": 7, "bbox": [0, 0, 4, 4]}
    (box,) = read_annotations(coco(tmp_path / "boxes.json", annotations=[ok])).boxes
    assert box.entry == f"annotation id {shown}"  # as later errors name it (fit_to_image)
    path = voc(tmp_path, "pascal.xml", box_object("1", "1", "900", "20", name=long))
    assert refusal(path) == (
        f"{path}: object 1 ({shown}): box [0, 0, 900, 20] lies outside the image (451x300 px; a "
        "box may reach 1 px beyond its edges)"
    )


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
    with pytest.raises(AnnotationError, match="above the limit"):  # before reading it
        read_annotations(big.rename(tmp_path / "big.json"))
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
