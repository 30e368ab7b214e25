"""The pictures people read and the terminal output: colour scales, legends, box lines, sheets
that wrap and compare models or methods, plain terminal output at 80 columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import camtool
from camtool.boxes import box_width
from camtool.cli import app
from camtool.image import resize_image
from camtool.render import colormap_colors, legend_height
from tests.conftest import CAT, COFFEE

runner = CliRunner()
TENCH = 0  # a class the cat photo gives a probability of about 0


@pytest.fixture(scope="module")
def cat_two_classes() -> camtool.Explanation:
    return camtool.explain(CAT, classes=[285, TENCH])


# -- colour scale ------------------------------------------------------------------------------


def test_joint_scale_draws_an_unlikely_class_cooler_than_the_top_class(
    cat_two_classes: camtool.Explanation, tmp_path: Path
) -> None:
    ex = cat_two_classes
    assert ex.explained[1].probability < 0.001
    per_map = ex.scaled_heatmaps("per-map")
    joint = ex.scaled_heatmaps("joint")
    assert torch.equal(per_map, ex.heatmaps)
    assert per_map[1].max() > 0.95  # alone, the tench map is stretched as hot as the cat's
    assert joint.max() > 0.95 and joint[0].max() > 0.95
    assert joint[1].max() < 0.6 * joint[0].max()  # on one scale it is much cooler
    # exact CAM: one range in logit units for both maps, from the raw maps themselves
    low, high = ex.value_range(1, "joint")
    assert (low, high) == ex.value_range("Egyptian cat", "joint")  # 0 is a map and a class
    assert low == pytest.approx(float(ex.cams.min())) and high == pytest.approx(
        float(ex.cams.max())
    )

    args = ["explain", str(CAT), "-c", "285", "-c", str(TENCH), "--json"]
    for scale in ("joint", "per-map"):
        result = runner.invoke(app, [*args, "--scale", scale, "-o", str(tmp_path / scale)])
        assert result.exit_code == 0, result.stderr
    tench = "chelsea_cam_0_tench.png"
    # per-map keeps the earlier pictures byte for byte: each map stretched on its own
    assert torch.equal(
        camtool.load_image(tmp_path / "per-map" / tench), camtool.overlay(ex.image, ex.heatmaps[1])
    )
    written = camtool.load_image(tmp_path / "joint" / tench)
    assert torch.equal(written, camtool.overlay(ex.image, joint[1]))
    # jet: the hottest pixels are red; the joint tench overlay has far fewer of them
    red = lambda image: int(((image[0] > 200) & (image[2] < 100)).sum())  # noqa: E731
    assert red(written) < red(camtool.load_image(tmp_path / "per-map" / tench)) / 4


def test_an_unknown_scale_is_refused(cat_two_classes: camtool.Explanation) -> None:
    with pytest.raises(camtool.InvalidArgumentError, match="unknown scale"):
        cat_two_classes.overlay(scale="global")


# -- legend and box line --------------------------------------------------------------------------


def test_box_line_scales_with_the_image_and_the_legend_band(tmp_path: Path) -> None:
    assert [box_width(27, 40), box_width(300, 451), box_width(600, 800)] == [1, 2, 3]
    canvas = camtool.draw_box(torch.zeros((3, 27, 40), dtype=torch.uint8), (5, 5, 30, 20))
    assert int((canvas[1] == 255).sum()) == 2 * 25 + 2 * 15 - 4  # a 1-px outline

    small = tmp_path / "small.png"
    camtool.save_image(small, resize_image(camtool.load_image(CAT), (27, 40), "bilinear"))
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", str(small), "-o", str(out), "--legend", "--json"])
    assert result.exit_code == 0, result.stderr
    (image,) = json.loads(result.stdout)["images"]
    (path,) = image["outputs"]
    assert (image["width"], image["height"], image["overlay_scale"]) == (40, 27, 9)
    with_legend = camtool.load_image(path)
    assert legend_height(40 * 9) == 45
    # a tiny input is enlarged 9 times (to a short side of 243 px), then the legend band added
    assert with_legend.shape == (3, 27 * 9 + 45, 40 * 9)

    cat = camtool.explain(CAT)
    plain = cat.overlay(0).tensor
    drawn = cat.overlay(0, legend=True).tensor
    band = legend_height(451)
    assert band == 57 and drawn.shape == (3, 300 + band, 451)
    assert torch.equal(drawn[:, :300], plain)  # the overlay itself is untouched
    row = band // 3
    bar = drawn[:, 300 + row + row // 2]  # the middle line of the colour bar
    first, last = colormap_colors("jet", 2)
    pad = max(1, row // 6)
    assert tuple(bar[:, pad].tolist()) == first and tuple(bar[:, 451 - pad - 1].tolist()) == last
    assert int(drawn[:, 300 : 300 + row].min()) < 80  # the caption's dark text
    assert int(drawn[:, 300 + 2 * row :].min()) < 80  # the range under the bar
    low, high = cat.value_range(0)
    assert cat.legend_text(0)[2:] == (f"{low:.2f}", f"{high:.2f}")
    assert "logit units" in cat.legend_text(0)[1]


# -- sheets -------------------------------------------------------------------------------------


def test_a_sheet_wraps_after_4_maps_and_follows_maps(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["explain", str(CAT), "--maps", "6", "--sheet", "-o", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    (image,) = json.loads(result.stdout)["images"]
    assert len(image["explained"]) == 6
    sheet = camtool.load_image(tmp_path / "chelsea_sheet.jpg")
    # input + 4 maps per row, 2 rows of 451x300 cells under 25-px captions, 6-px gaps
    assert sheet.shape == (3, 2 * (300 + 25) + 3 * 6, 5 * 451 + 6 * 6)

    result = runner.invoke(
        app, ["explain", str(CAT), "--maps", "2", "-k", "5", "--sheet", "-o", str(tmp_path / "b")]
    )
    assert result.exit_code == 0, result.stderr
    assert camtool.load_image(tmp_path / "b" / "chelsea_sheet.jpg").shape == (
        3,
        337,
        3 * 451 + 4 * 6,
    )


def test_a_sheet_with_a_row_per_method(tmp_path: Path) -> None:
    args = ["explain", str(CAT), "--method", "cam", "--method", "gradcam", "--maps", "2"]
    result = runner.invoke(app, [*args, "--sheet", "-o", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.stderr
    images = json.loads(result.stdout)["images"]
    assert [i["method"] for i in images] == ["cam", "gradcam"]
    assert [e["index"] for e in images[0]["explained"]] == [
        e["index"] for e in images[1]["explained"]
    ]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len([n for n in names if n.startswith("chelsea_cam_")]) == 2
    assert len([n for n in names if n.startswith("chelsea_gradcam_")]) == 2
    sheet = camtool.load_image(tmp_path / "chelsea_sheet.jpg")
    assert sheet.shape == (3, 2 * (300 + 25) + 3 * 6, 3 * 451 + 4 * 6)


def test_a_sheet_of_two_models_maps_the_same_classes_in_each_row(tmp_path: Path) -> None:
    args = ["explain", str(COFFEE), "-m", "efficientnet_lite0", "-m", "efficientnet_lite1"]
    result = runner.invoke(app, [*args, "--maps", "3", "--sheet", "-o", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.stderr
    first, second = json.loads(result.stdout)["images"]
    assert (first["model"], second["model"]) == ("efficientnet_lite0", "efficientnet_lite1")
    chosen = [p["index"] for p in first["predictions"][:3]]  # the first model's top 3
    assert [e["index"] for e in first["explained"]] == chosen
    assert [e["index"] for e in second["explained"]] == chosen
    assert [p["index"] for p in second["predictions"][:3]] != chosen  # lite1 ranks them otherwise


@pytest.mark.parametrize(
    "args",
    [
        ["export", str(CAT), "-o", "OUT", "-m", "efficientnet_lite0", "-m", "efficientnet_lite1"],
        ["export", str(CAT), "-o", "OUT", "--method", "cam", "--method", "gradcam"],
        ["inspect", "efficientnet_lite0", "efficientnet_lite1"],
    ],
)
def test_several_models_or_methods_are_refused_where_they_make_no_sense(
    args: list[str], tmp_path: Path
) -> None:
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "camtool.cli", *args], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


# -- terminal output ----------------------------------------------------------------------------


def terminal(*args: str) -> list[str]:
    """``camtool ARGS`` in a terminal 80 columns wide: its stdout lines."""
    env = {**os.environ, "COLUMNS": "80", "LINES": "50", "TERM": "dumb"}
    result = subprocess.run(
        [sys.executable, "-m", "camtool.cli", *args], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


JARGON = ("residual", "probe", "forward_features", "->")


def test_explain_speaks_plainly_at_80_columns_and_never_breaks_a_path(tmp_path: Path) -> None:
    out = tmp_path / ("a_folder_with_a_long_name_" * 3)
    lines = terminal("explain", str(CAT), "-o", str(out))
    written = str(out / "chelsea_cam_285_egyptian_cat.png")
    assert f"  {written}" in lines  # whole, on its own line, however long
    assert f"{CAT} (451x300 px), efficientnet_lite0" in lines
    assert all(len(line) <= 80 for line in lines if str(CAT) not in line and written not in line)
    text = "\n".join(lines)
    assert not any(word in text for word in JARGON)
    # the feature grid of this image (337x224 px at the network): 11x7, not the 7x7 of a probe
    assert "on a grid of 11x7 feature cells" in " ".join(lines)

    verbose = "\n".join(terminal("explain", str(CAT), "-o", str(out), "-v"))
    assert "identity residual on this image" in verbose and "forward_features -> _fc" in verbose
    assert "network input: 337x224 px" in verbose


def test_models_and_inspect_fit_80_columns() -> None:
    lines = terminal("models")
    assert all(len(line) <= 80 for line in lines)
    assert any(line.split()[:3] == ["efficientnet_lite0", "224", "installed"] for line in lines)

    lines = terminal("inspect", "efficientnet_lite0")
    weights = [line for line in lines if line.startswith("weights: ")]
    assert len(weights) == 1 and weights[0].endswith(".pth")  # the path whole, never cut
    assert all(len(line) <= 80 for line in lines if line not in weights)
    text = "\n".join(lines)
    assert not any(word in text for word in ("residual", "probe", "->"))
    assert "1280 channels, 7x7 cells for a 224 px square image" in text
    verbose = "\n".join(terminal("inspect", "efficientnet_lite0", "-v"))
    assert "probe residual" in verbose and "forward_features -> _fc" in verbose


def test_json_gives_the_head_as_structure_and_the_images_own_feature_grid(tmp_path: Path) -> None:
    result = runner.invoke(app, ["explain", str(CAT), "--json", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    detail = doc["head_detail"]
    assert detail["features"] == "forward_features" and detail["classifier"] == "_fc"
    assert doc["models"][0]["head_detail"] == detail
    assert doc["rendering"]["scale"] == "joint"
    (image,) = doc["images"]
    assert image["feature_grid"] == {"width": 11, "height": 7}
    assert image["network_input"] == {"width": 337, "height": 224}
