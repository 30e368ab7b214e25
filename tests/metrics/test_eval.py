"""``camtool.evaluate`` and ``camtool eval`` end to end on the pretrained default model: real
photos, real boxes, the files of the report (JSON, CSV, PNG curves, overlays, HTML in Chromium),
resuming, and the command's exit codes and one-line errors. Cheap protocol settings (small
input size, few deletion steps, one ROAD percentage) keep it fast; the measures themselves are
tested in the metrics' own tests."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import pytest
import torch
from typer.testing import CliRunner

import camtool
import camtool.progress
from camtool.cli import app
from camtool.errors import InvalidArgumentError, NotDecompositionError, OutputBusyError
from camtool.metrics.evaluate import METRICS, EvalReport, evaluate
from camtool.metrics.kept_maps import KeptMaps
from camtool.progress import Work
from tests.conftest import CAT, COFFEE
from tests.export.test_gallery import browse, elements

runner = CliRunner()
BOXES = Path(__file__).parents[1] / "data" / "boxes" / "photos.csv"
HOSTILE = "<img src=x onerror=alert(1)>.png"
CHEAP: dict[str, Any] = {"size": 64, "steps": 4}
NO_ROAD = [m for m in METRICS if m != "road"]  # ROAD's imputation is slow: tested alone


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    shutil.copy(CAT, folder / "chelsea.png")
    shutil.copy(COFFEE, folder / "coffee.png")
    shutil.copy(CAT, folder / HOSTILE)
    (folder / "broken.jpg").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def evaluated(photos: Path, lite0: camtool.LoadedModel) -> EvalReport:
    out = photos.parent / "report"
    return evaluate(
        [photos], ["cam", "gradcam"], BOXES, NO_ROAD, "efficientnet_lite0", out=out, **CHEAP
    )


def test_evaluate_measures_every_method_and_writes_the_report(evaluated: EvalReport) -> None:
    assert evaluated.exit_code == 3 and evaluated.failed == 1 and evaluated.evaluated == 3
    assert evaluated.failures[0].input.endswith("broken.jpg")
    out = evaluated.out_dir
    assert out is not None
    chelsea = next(r for r in evaluated.records if r["input"].endswith("chelsea.png"))
    assert (chelsea["class"], chelsea["class_source"]) == (285, "annotation")
    assert chelsea["boxes"] == [[0.0, 0.0, 405.0, 300.0]]
    assert chelsea["results"]["cam"]["pointing_game"] == 100.0  # the map's peak is on the cat
    assert chelsea["results"]["cam"]["completeness"] < 1e-3  # CAM decomposes the logit
    assert "completeness" not in chelsea["results"]["gradcam"]  # Grad-CAM does not claim to
    hostile = next(r for r in evaluated.records if r["input"].endswith(HOSTILE))
    assert (
        hostile["class_source"] == "prediction" and "pointing_game" not in hostile["results"]["cam"]
    )

    data = json.loads((out / "results.json").read_text())
    deletion = data["results"]["cam"]["deletion"]
    assert deletion["n"] == 3 and deletion["better"] == "lower"
    assert deletion["low"] <= deletion["mean"] <= deletion["high"] and 0 <= deletion["mean"] <= 1
    assert data["results"]["cam"]["pointing_game"]["n"] == 2  # only the images with boxes
    assert data["settings"]["size"] == 64 and data["settings"]["steps"] == 4
    assert "road" not in data["settings"]["metrics"] and "road_morf" not in data["results"]["cam"]
    assert data["interval"].startswith("95% percentile bootstrap over images (1000 resamples")
    assert data["failed"] == 1 and data["failures"][0]["error"].startswith("not an image file")
    assert (
        "top1_loc_error" in data["results"]["gradcam"] and "max_box_acc" in data["results"]["cam"]
    )

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 6 and {r["method"] for r in rows} == {"cam", "gradcam"}
    cat_row = next(r for r in rows if r["input"].endswith("chelsea.png") and r["method"] == "cam")
    assert (cat_row["class_name"], cat_row["width"], cat_row["pointing_game"]) == (
        "Egyptian cat",
        "451",
        "100",
    )

    for metric in ("deletion", "insertion"):
        plot = cv2.imread(str(out / f"curves_{metric}.png"))
        assert plot.shape == (480, 720, 3) and (plot != 255).any()
    overlay = cv2.imread(str(out / "overlays" / "cam" / "chelsea_cam.png"))
    assert overlay.shape == (300, 451, 3)  # the original image's size
    lines = (out / "results.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["type"] == "run" and len(lines) == 1 + 4


def test_the_report_page_in_chromium(evaluated: EvalReport, tmp_path: Path) -> None:
    assert evaluated.out_dir is not None
    page = evaluated.out_dir / "index.html"
    assert HOSTILE not in page.read_text() and "https://" not in page.read_text()
    dom = browse(page, "", tmp_path / "profile", "--dump-dom")
    assert "Egyptian cat" in dom and "1 failed inputs" in dom
    tags = elements(dom)
    assert not any("onerror" in dict(attrs) for _, attrs in tags)  # the name stayed text
    links = [dict(attrs).get("href") or "" for tag, attrs in tags if tag == "a"]
    assert "overlays/cam/chelsea_cam.png" in links and "results.json" in links
    images = [dict(attrs) for tag, attrs in tags if tag == "img"]
    assert any(i.get("src") == "curves_deletion.png" for i in images)
    assert any((i.get("alt") or "").startswith("worst pointing_game") for i in images) or any(
        (i.get("alt") or "").startswith("best pointing_game") for i in images
    )
    assert dom.count('class="ranking"') >= 8


def test_resume_skips_finished_images_and_refuses_other_settings(tmp_path: Path) -> None:
    out = tmp_path / "report"
    first = evaluate([CAT], ["cam"], metrics=["deletion"], out=out, report=False, **CHEAP)
    assert first.evaluated == 1
    with (out / "results.jsonl").open("a") as handle:
        handle.write('{"type": "image", "input": "torn')  # a run killed mid-line
    again = evaluate([CAT, COFFEE], ["cam"], metrics=["deletion"], out=out, resume=True, **CHEAP)
    assert (again.evaluated, again.skipped, again.exit_code) == (1, 1, 0)
    assert again.summary("cam", "deletion").n == 2
    assert len(list(csv.DictReader((out / "results.csv").open()))) == 2
    with pytest.raises(InvalidArgumentError, match=r"steps: 4 -> 8"):
        evaluate([CAT], ["cam"], metrics=["deletion"], out=out, resume=True, size=64, steps=8)


def test_road_through_evaluate_in_memory() -> None:
    found = evaluate(CAT, ["cam"], metrics=["road"], size=32, road_percentages=(0.5,))
    assert found.out_dir is None and found.files == ()
    morf, lerf = found.summary("cam", "road_morf"), found.summary("cam", "road_lerf")
    assert morf.n == 1 and 0 <= morf.mean <= 1 and 0 <= lerf.mean <= 1
    assert found.settings["road_percentages"] == [0.5]


def test_cli_eval_prints_the_table_and_exits_zero(tmp_path: Path) -> None:
    args = ["eval", str(CAT), "--method", "cam", "--metric", "deletion", "--size", "64"]
    result = runner.invoke(app, [*args, "--steps", "2", "-o", str(tmp_path / "r")])
    assert result.exit_code == 0, result.stderr
    assert "deletion" in result.stdout and "cam" in result.stdout and "evaluated 1" in result.stdout
    assert (tmp_path / "r" / "index.html").exists()


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--boxes", "{tmp}/none.csv"], 1, "Error: {tmp}/none.csv: no such file"),
        (["--metric", "pointing_game"], 2, "Error: pointing_game: needs ground-truth boxes"),
        (["--metric", "speed"], 2, "Error: speed: unknown metric; choose from deletion"),
        (
            ["--boxes", "{tmp}/bad.csv"],
            1,
            "Error: {tmp}/bad.csv: line 2: class 'kitten' is not one of the 1000 classes of efficientnet_lite0",
        ),
        (
            ["--boxes", "{tmp}/out.csv", "--metric", "pointing_game"],
            3,
            "Error: {cat}: {tmp}/out.csv: line 2: box [0, 0, 900, 10] lies outside the image (451x300 px",
        ),
        (["--method", "nope"], 2, "Error: nope: unknown method"),
    ],
)
def test_cli_eval_errors_are_one_line(
    tmp_path: Path, extra: list[str], code: int, message: str
) -> None:
    (tmp_path / "bad.csv").write_text("file,class,x1,y1,x2,y2\nchelsea.png,kitten,0,0,10,10\n")
    (tmp_path / "out.csv").write_text("file,class,x1,y1,x2,y2\nchelsea.png,285,0,0,900,10\n")
    args = [a.format(tmp=tmp_path) for a in extra]
    base = ["eval", str(CAT), "-q", "--size", "64", "--steps", "2", "-o", str(tmp_path / "r")]
    result = runner.invoke(app, [*base, *args])
    assert result.exit_code == code, result.stderr
    assert result.stderr.startswith(message.format(tmp=tmp_path, cat=CAT)), result.stderr
    assert result.stderr.count("\n") == 1


def test_an_image_of_another_size_than_its_file_declares_fails_or_is_rescaled(
    tmp_path: Path,
) -> None:
    """Boxes drawn on a copy of chelsea.png twice as large (902x600; they fit the real 451x300
    image too, so nothing else would notice): that image fails naming the file and the entry,
    the others go on (exit 3); rescale_boxes=True halves them and the report says so."""
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "chelsea.png", "width": 902, "height": 600}],
        "categories": [{"id": 7, "name": "Egyptian cat"}],
        "annotations": [{"id": 31, "image_id": 1, "category_id": 7, "bbox": [0, 0, 400, 290]}],
    }))  # fmt: skip
    wanted = ["pointing_game"]
    found = evaluate([CAT, COFFEE], ["cam"], boxes, wanted, out=tmp_path / "r", **CHEAP)
    assert (found.exit_code, found.failed, found.evaluated) == (3, 1, 1)
    assert found.failures[0].input == str(CAT)
    assert found.failures[0].error == (
        f"{boxes}: annotation id 31: the file gives the image as 902x600 px but it is 451x300 "
        "px, so its boxes would land in the wrong place (were they drawn on a resized copy? "
        "--rescale-boxes scales them to the image)"
    )
    assert found.rescaled == () and "rescale_boxes" not in found.settings

    out = tmp_path / "rescaled"
    again = evaluate([CAT, COFFEE], ["cam"], boxes, wanted, out=out, rescale_boxes=True, **CHEAP)
    assert (again.exit_code, again.evaluated, again.rescaled) == (0, 2, (str(CAT),))
    cat = next(r for r in again.records if r["input"] == str(CAT))
    assert cat["boxes"] == [[0.0, 0.0, 200.0, 145.0]]
    assert cat["boxes_rescaled"] == {"from": [902, 600], "to": [451, 300]}
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert lines[0]["settings"]["rescale_boxes"] is True
    assert [r.get("boxes_rescaled") for r in lines[1:]] == [cat["boxes_rescaled"], None]
    data = json.loads((out / "results.json").read_text())
    assert data["boxes_rescaled"] == [str(CAT)] and data["settings"]["rescale_boxes"] is True


def test_cli_eval_refuses_or_rescales_voc_boxes_of_another_size(tmp_path: Path) -> None:
    xml = tmp_path / "chelsea.xml"
    xml.write_text(
        "<annotation><filename>chelsea.png</filename><size><width>225</width><height>150"
        "</height></size><object><name>Egyptian cat</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>200</xmax><ymax>150</ymax></bndbox></object></annotation>"
    )
    base = ["eval", str(CAT), "--boxes", str(xml), "--metric", "pointing_game", "--size", "64"]
    result = runner.invoke(app, [*base, "-q", "-o", str(tmp_path / "r")])
    assert result.exit_code == 3, result.stderr
    assert result.stderr == (
        f"Error: {CAT}: {xml}: object 1 (Egyptian cat): the file gives the image as 225x150 px "
        "but it is 451x300 px, so its boxes would land in the wrong place (were they drawn on a "
        "resized copy? --rescale-boxes scales them to the image)\n"
    )
    result = runner.invoke(app, [*base, "-q", "--rescale-boxes", "-o", str(tmp_path / "s")])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == (
        "rescaled the boxes of 1 image to the image size (their annotation declares another; "
        "see boxes_rescaled in results.jsonl)\n"
    )
    record = json.loads((tmp_path / "s" / "results.jsonl").read_text().splitlines()[1])
    assert record["boxes_rescaled"] == {"from": [225, 150], "to": [451, 300]}
    assert record["boxes"] == [[0.0, 0.0, 400.89, 300.0]]


def test_voc_boxes_of_a_photo_turned_by_its_exif_orientation_are_refused_not_rescaled(
    tmp_path: Path,
) -> None:
    """Stored 451x300 with EXIF orientation 6 (turned a quarter): camtool reads it 300x451, as a
    viewer shows it. A VOC file made on the stored pixels declares 451x300: width and height
    swapped. Scaling x by 300/451 and y by 451/300 would put the boxes in the wrong place."""
    from PIL import Image

    photo = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(CAT).convert("RGB").save(photo, exif=exif.tobytes())
    assert camtool.load_image(photo).shape == (3, 451, 300)
    xml = tmp_path / "turned.xml"
    xml.write_text(
        "<annotation><filename>turned.jpg</filename><size><width>451</width><height>300"
        "</height></size><object><name>Egyptian cat</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>200</xmax><ymax>150</ymax></bndbox></object></annotation>"
    )
    problem = (
        f"{xml}: object 1 (Egyptian cat): the file gives the image as 451x300 px but it is "
        "300x451 px: width and height swapped, an orientation mismatch (its boxes were drawn on "
        "the stored, unrotated pixels; camtool turns the image as its EXIF orientation says), so "
        "they would land in the wrong place, and --rescale-boxes cannot fix that"
    )
    base = ["eval", str(photo), "--boxes", str(xml), "--metric", "pointing_game", "--size", "64"]
    for extra in ([], ["--rescale-boxes"]):
        result = runner.invoke(app, [*base, *extra, "-q", "-o", str(tmp_path / f"r{len(extra)}")])
        assert result.exit_code == 3, result.stderr
        assert result.stderr == f"Error: {photo}: {problem}\n"
    found = evaluate(photo, ["cam"], xml, ["pointing_game"], size=64, rescale_boxes=True)
    assert (found.exit_code, found.evaluated, found.rescaled) == (3, 0, ())
    assert [(f.input, f.error) for f in found.failures] == [(str(photo), problem)]


def test_a_folder_held_by_a_running_eval_names_eval_in_the_refusal(tmp_path: Path) -> None:
    """A real `camtool eval` process holds the report folder: a second eval (or an export) into
    it is refused with one line that names the command and the pid holding it."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4000):
        os.link(COFFEE if i % 2 else CAT, folder / f"img{i:04d}.png")
    out = tmp_path / "report"
    args = ["eval", str(folder), "-o", str(out), "--metric", "deletion", "--size", "32"]
    first = subprocess.Popen(
        [sys.executable, "-m", "camtool.cli", *args, "--steps", "2", "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 180
        results = out / "results.jsonl"
        while first.poll() is None and time.time() < deadline:
            if results.exists() and results.read_text().count("\n") >= 2:
                break
            time.sleep(0.05)
        assert first.poll() is None, "the first eval ended too early for this test"
        busy = f"{out}: is being written by another camtool eval (pid {first.pid})"
        with pytest.raises(OutputBusyError) as caught:
            evaluate(CAT, ["cam"], metrics=["deletion"], out=out, **CHEAP)
        assert str(caught.value) == busy
        result = runner.invoke(app, ["export", str(CAT), "-o", str(out), "-q"])
        assert (result.exit_code, result.stderr) == (1, f"Error: {busy}\n")
        assert first.poll() is None, "the first eval ended too early for this test"
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_a_batch_size_that_is_no_positive_integer_is_refused(size: object, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        evaluate([CAT], ["cam"], out=tmp_path / "out", batch_size=size)  # type: ignore[arg-type]
    assert str(caught.value) == f"batch_size: expected a positive integer, got {size!r}"
    assert not (tmp_path / "out").exists()


def test_eval_counts_its_forward_passes_and_the_report_maps_no_image_again(
    tmp_path: Path, lite0: camtool.LoadedModel
) -> None:
    for method in ("cam", "scorecam"):
        camtool.methods.bind(method, lite0)  # bound (and probed) before the count starts
    rows: list[int] = []
    handle = lite0.module.register_forward_hook(
        lambda _m, args, _out: rows.append(int(args[0].shape[0]))
    )
    events: list[tuple[Work, int]] = []
    try:
        report = evaluate(
            [CAT, COFFEE], ["cam", "scorecam"], metrics=["deletion"], model=lite0,
            out=tmp_path / "r", progress=lambda work, done: events.append((work, done)), **CHEAP,
        )  # fmt: skip
    finally:
        handle.remove()
    first, last = events[0], events[-1]
    # per image: the image; CAM's map and deletion's 4 steps; Score-CAM's 1 + 1280 and 4 steps
    assert (first[0].name, first[0].unit, first[0].per_image) == ("eval", "forward passes", 1291)
    assert first[1] == 0 and first[0].total == 2 * 1291
    assert [d for _, d in events] == sorted(d for _, d in events)
    assert last[0].detail == "2/2 img, 0 failed"
    # every pass of the whole run, the report's overlays included, is one the measuring counted
    assert sum(rows) == last[1] == last[0].total
    overlays = sorted(p.name for p in (tmp_path / "r" / "overlays" / "scorecam").iterdir())
    assert overlays == ["chelsea_scorecam.png", "coffee_scorecam.png"]
    assert report.files and report.exit_code == 0


def test_kept_maps_are_those_of_the_images_a_ranking_can_still_show() -> None:
    kept = KeptMaps()
    for i, value in enumerate([0.5, 0.1, 0.9, 0.4, 0.6, 0.3, 0.7, 0.2]):
        record = {
            "input": f"{i}.png",
            "path": f"/p/{i}.png",
            "results": {"cam": {"deletion": value}},
        }
        kept.offer(record, {"cam": torch.full((2, 2), float(i))})
    # the 3 lowest (0.1, 0.2, 0.3) and 3 highest (0.9, 0.7, 0.6) deletion areas, nothing else
    assert sorted(path for _, path in kept.maps) == [f"/p/{i}.png" for i in (1, 2, 4, 5, 6, 7)]
    assert float(kept.get("cam", "/p/6.png")[0, 0]) == 6.0 and kept.get("cam", "/p/0.png") is None


def test_cli_eval_prints_the_cost_and_a_table_of_measures_by_method_at_80_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(camtool.progress, "COST_LINE_SECONDS", 0.0)  # whatever this CPU's speed
    args = ["eval", str(CAT), str(COFFEE), "--boxes", str(BOXES), "--size", "64", "--steps", "2"]
    for metric in ("deletion", "average_drop", "pointing_game"):
        args += ["--metric", metric]
    out = tmp_path / "r"
    result = runner.invoke(
        app, [*args, "--method", "cam", "--method", "gradcam", "-o", str(out)],
        env={"COLUMNS": "80"},
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    # per image: the image, then per method its map, 2 deletion steps, 2 Average Drop passes
    assert lines[0].startswith("eval: 11 forward passes per image, 22 for 2 images, about ")
    assert f"report: {out / 'index.html'}" == lines[-1]  # a path is never broken
    assert all(len(line) <= 80 for line in lines[:-1]) and "…" not in result.stdout  # none cut
    header = next(line for line in lines if "measure" in line)
    assert [c.strip() for c in header.split("┃")[1:4]] == ["measure", "cam", "gradcam"]
    rows = {
        line.split("│")[1].strip(): line
        for line in lines
        if line.startswith("│ ") and line.split("│")[1].strip()
    }
    assert list(rows) == [
        "deletion ↓",
        "average_drop ↓",
        "increase_in_confidence ↑",
        "pointing_game ↑",
    ]
    cells = [c.strip() for c in rows["pointing_game ↑"].split("│")[2:4]]
    assert cells == ["50.0%", "50.0%"]  # the peak is on the cat, not on the coffee's box
    intervals = [line for line in lines if line.startswith("│ ") and not line.split("│")[1].strip()]
    assert intervals[0].split("│")[2].strip().startswith("[")  # the interval under each mean


def test_the_report_page_fits_1400_px_and_shows_its_settings_as_a_table(
    evaluated: EvalReport, tmp_path: Path
) -> None:
    assert evaluated.out_dir is not None
    text = (evaluated.out_dir / "index.html").read_text()
    assert "site-packages" not in text and str(Path(sys.prefix)) not in text
    probe = evaluated.out_dir / "probe.html"  # the page, and a script that measures it after
    measure = (
        "<script>const s = document.querySelector('#summary table');"
        "document.body.dataset.probe = [document.documentElement.scrollWidth,"
        " document.documentElement.clientWidth, s.offsetWidth].join(' ');</script>"
    )
    probe.write_text(text.replace("</body></html>", measure + "</body></html>"))
    dom = browse(probe, "", tmp_path / "profile", "--window-size=1400,900", "--dump-dom")
    page_width, view_width, table_width = map(
        int, dom.split('data-probe="')[1].split('"')[0].split()
    )
    assert page_width <= view_width and table_width < view_width  # nothing sticks out
    tags = elements(dom)
    assert ("table", [("id", "settings")]) in tags
    settings = dom.split('id="settings">')[1].split("</table>")[0]
    assert "<th>weights</th><td>efficientnet-lite0-57934424.pth (installed)</td>" in settings
    assert "<th>methods</th><td>cam, gradcam</td>" in settings
    assert "The green box is the ground truth" in dom
    summary = dom.split('id="summary">')[1].split("</table>")[0]
    assert "<th>measure</th><th>cam</th><th>gradcam</th>" in summary  # methods are the columns
    assert 'title="deletion AUC (probability, RISE); lower is better">deletion ↓' in summary
    assert "pointing_game ↑" in summary


def test_completeness_with_no_exact_method_is_refused_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "r"
    with pytest.raises(NotDecompositionError) as caught:
        evaluate([CAT], ["gradcam"], metrics=["completeness"], out=out, **CHEAP)
    assert str(caught.value) == (
        "completeness: applies only to exact methods (cam, integrated-head), whose maps "
        "decompose the logit; the maps of gradcam do not: add --method cam or drop the metric"
    )
    assert not out.exists()  # was an empty table, "evaluated 1" and a blank results.csv
    base = ["eval", str(CAT), "--size", "64", "--steps", "2", "-o", str(out)]
    result = runner.invoke(app, [*base, "--metric", "completeness", "--method", "gradcam"])
    assert result.exit_code == 2, result.stderr
    assert result.stderr == f"Error: {caught.value}\n" and not out.exists()
    # "All that apply" with no exact method: completeness is not run, nothing is refused.
    found = evaluate([CAT], ["gradcam"], metrics=None, **CHEAP)
    assert "completeness" not in found.settings["metrics"] and found.not_applicable == {}


def test_completeness_with_exact_and_other_methods_says_where_it_does_not_apply(
    tmp_path: Path,
) -> None:
    found = evaluate([CAT], ["gradcam", "cam"], metrics="completeness", out=tmp_path / "r", **CHEAP)
    assert [(s.method, s.measure) for s in found.summaries] == [("cam", "completeness")]
    assert found.summaries[0].mean < 1e-4
    assert found.not_applicable == {"completeness": ("gradcam",)}
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert data["not_applicable"] == {"completeness": ["gradcam"]}
    base = ["eval", str(CAT), "--size", "64", "--steps", "2", "-q", "-o", str(tmp_path / "c")]
    result = runner.invoke(
        app, [*base, "--metric", "completeness", "--method", "gradcam", "--method", "cam"],
        env={"COLUMNS": "80"},
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stdout == (
        "completeness: not measured for gradcam: no exact decomposition of the logit\n"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"size": 0}, "size: expected a positive integer, got 0"),  # fell back to the default
        ({"size": -3}, "size: expected a positive integer, got -3"),
        ({"progress": 42}, "progress: expected True, False or a callable(work, done), got 42"),
    ],
)
def test_a_size_or_progress_of_the_wrong_kind_is_refused(
    options: dict[str, Any], message: str, tmp_path: Path
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        evaluate([CAT], ["cam"], out=tmp_path / "out", **{"steps": 2, **options})
    assert str(caught.value) == message
    assert not (tmp_path / "out").exists()


def test_one_metric_or_method_may_be_a_string_and_in_memory_images_are_refused() -> None:
    found = evaluate(CAT, "cam", metrics="deletion", **CHEAP)  # was "d: unknown metric"
    assert found.settings["metrics"] == ["deletion"] and found.settings["methods"] == ["cam"]
    assert [(s.method, s.measure) for s in found.summaries] == [("cam", "deletion")]
    pixels = cv2.imread(str(CAT))
    with pytest.raises(InvalidArgumentError) as caught:
        evaluate(pixels, ["cam"], metrics=["deletion"], **CHEAP)  # type: ignore[arg-type]
    assert str(caught.value) == (
        "images: expected files, folders, globs or @list.txt names, got ndarray; explain "
        "in-memory images with camtool.explain"
    )
    with pytest.raises(InvalidArgumentError, match=r"^images: .*, got a list of those; expl"):
        evaluate([CAT, pixels], ["cam"], metrics=["deletion"], **CHEAP)  # type: ignore[list-item]
