"""Comparison sheets: the input beside several classes' (or models') overlays, labelled."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image
from typer.testing import CliRunner

import camtool
from camtool.cli import app
from tests.conftest import CAT, COFFEE

runner = CliRunner()


def test_sheet_of_the_top_4_classes(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["explain", str(CAT), "--maps", "4", "--sheet", "-o", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    (image,) = json.loads(result.stdout)["images"]
    assert len(image["explained"]) == 4 and image["outputs"][-1].endswith("chelsea_sheet.jpg")
    written = camtool.load_image(tmp_path / "chelsea_sheet.jpg")  # JPEG: close to the picture
    # 5 cells of 451x300 under 25-px captions, 6-px gaps: (5*451 + 6*6) x (300 + 25 + 2*6)
    assert written.shape == (3, 337, 2291)
    sheet = camtool.explain(CAT, maps=4).sheet().tensor
    assert float((written.float() - sheet.float()).abs().mean()) < 2.0
    band, gap = 25, 6
    assert torch.equal(
        sheet[:, gap + band : gap + band + 300, gap : gap + 451], camtool.load_image(CAT)
    )
    first_overlay = camtool.load_image(tmp_path / "chelsea_cam_285_egyptian_cat.png")
    left = 2 * gap + 451
    assert torch.equal(sheet[:, gap + band : gap + band + 300, left : left + 451], first_overlay)
    assert int(sheet[:, gap : gap + band, gap : gap + 451].min()) < 100  # a caption was drawn


def test_sheet_comparing_two_models_and_in_python(tmp_path: Path) -> None:
    args = [
        "explain",
        str(COFFEE),
        "-m",
        "efficientnet_lite0",
        "-m",
        "efficientnet_lite1",
        "--maps",
        "2",
        "--sheet",
    ]
    result = runner.invoke(app, [*args, "-o", str(tmp_path)])
    assert result.exit_code == 0, result.stderr
    assert Image.open(tmp_path / "coffee_sheet.jpg").size == (
        3 * 600 + 4 * 6,
        2 * (400 + 33) + 3 * 6,
    )
    assert (tmp_path / "coffee_efficientnet_lite1_cam_967_espresso.png").exists()
    picture = camtool.explain(CAT, maps=2).sheet()
    assert picture.image.shape == (3, 337, 3 * 451 + 4 * 6)
    assert picture._repr_png_().startswith(b"\x89PNG")


def cell(sheet: torch.Tensor, row: int, column: int, size: tuple[int, int]) -> torch.Tensor:
    """The picture in one cell of a sheet of ``size`` (height, width) cells, 25-px captions."""
    height, width = size
    top, left = 6 + row * (height + 25 + 6) + 25, 6 + column * (width + 6)
    return sheet[:, top : top + height, left : left + width]


def test_a_sheet_shows_the_input_once_and_a_class_agnostic_map_once() -> None:
    explanations = [
        camtool.explain(CAT, method=method, classes=[285, 282])
        for method in ("cam", "eigencam", "gradcam")
    ]
    sheet = camtool.comparison_sheet(explanations).tensor
    assert sheet.shape == (3, 3 * (300 + 25) + 4 * 6, 3 * 451 + 4 * 6)  # 3 rows of 1 + 2 cells
    assert torch.equal(cell(sheet, 0, 0, (300, 451)), camtool.load_image(CAT))
    for row in (1, 2):  # later rows: no second copy of the input, only the row's name above
        assert int(cell(sheet, row, 0, (300, 451)).min()) == 255
    eigencam = explanations[1]
    assert torch.equal(cell(sheet, 1, 1, (300, 451)), eigencam.overlay(0).tensor)
    assert int(cell(sheet, 1, 2, (300, 451)).min()) == 255  # its one map is shown once
    assert torch.equal(cell(sheet, 2, 2, (300, 451)), explanations[2].overlay(1).tensor)


def test_a_large_photo_makes_cells_of_at_most_800_px() -> None:
    photo = (
        torch.nn.functional.interpolate(
            camtool.load_image(COFFEE)[None].float(), size=(1200, 1800), mode="bilinear"
        )[0]
        .round()
        .to(torch.uint8)
    )
    ex = camtool.explain(photo, maps=2)
    sheet = ex.sheet().tensor
    band = max(20, 533 // 12)
    assert sheet.shape == (3, 533 + band + 2 * 6, 3 * 800 + 4 * 6)


def test_a_sheet_of_four_methods_is_a_jpeg_of_a_sensible_size(tmp_path: Path) -> None:
    methods = [arg for m in ("cam", "gradcam", "eigencam", "layercam") for arg in ("--method", m)]
    args = ["explain", str(COFFEE), *methods, "--maps", "2", "--sheet", "-o", str(tmp_path)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    sheet = tmp_path / "coffee_sheet.jpg"
    assert sheet.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG; the overlays stay PNG
    assert 200_000 < sheet.stat().st_size < 1_000_000  # was 5.1 MB: PNG, the input in every row
    assert Image.open(sheet).size == (3 * 600 + 4 * 6, 4 * (400 + 33) + 5 * 6)
    assert (tmp_path / "coffee_eigencam_967_espresso.png").read_bytes()[:4] == b"\x89PNG"


def test_a_row_of_another_image_shows_that_image() -> None:
    cat, coffee = camtool.explain(CAT), camtool.explain(COFFEE)
    sheet = camtool.comparison_sheet([cat, coffee]).tensor
    band = max(20, 400 // 12)  # cells as large as the largest tile: 600x400
    top = 6 + 400 + band + 6 + band
    assert torch.equal(sheet[:, top : top + 400, 6 : 6 + 600], camtool.load_image(COFFEE))
