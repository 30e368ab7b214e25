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
    assert len(image["explained"]) == 4 and image["outputs"][-1].endswith("chelsea_sheet.png")
    sheet = camtool.load_image(tmp_path / "chelsea_sheet.png")
    # 5 cells of 451x300 under 25-px captions, 6-px gaps: (5*451 + 6*6) x (300 + 25 + 2*6)
    assert sheet.shape == (3, 337, 2291)
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
    assert Image.open(tmp_path / "coffee_sheet.png").size == (
        3 * 600 + 4 * 6,
        2 * (400 + 33) + 3 * 6,
    )
    assert (tmp_path / "coffee_efficientnet_lite1_cam_967_espresso.png").exists()
    picture = camtool.explain(CAT, maps=2).sheet()
    assert picture.image.shape == (3, 337, 3 * 451 + 4 * 6)
    assert picture._repr_png_().startswith(b"\x89PNG")
