"""What ``camtool explain`` prints when it compares methods (the top-k table once per image and
model), how every view says that Eigen-CAM's map is class-agnostic, and the one-line error that
sends a folder to ``camtool export``. Real processes at 80 columns, the real default model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import camtool
from camtool.cli import app
from camtool.explanation import describe_maps
from tests.conftest import CAT, EXAMPLES, camtool_cli


def test_comparing_methods_prints_the_top_k_table_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    args = ["--method", "cam", "--method", "eigencam", "--maps", "2", "-o", str(tmp_path)]
    done = camtool_cli("explain", str(CAT), *args)
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    assert lines[0] == f"{CAT} (451x300 px), efficientnet_lite0"
    assert sum(line.startswith("┏") for line in lines) == 1  # one table, not one per method
    assert lines[4:6] == [
        "│ 1 │ Egyptian cat ◀ map │   285 │      0.4528 │ 7.994 │",
        "│ 2 │ tiger cat ◀ map    │   282 │      0.1630 │ 6.972 │",
    ]
    assert lines[10:] == [
        "Maps of Egyptian cat, tiger cat made by cam (an exact decomposition of the class",
        "score) on a grid of 11x7 feature cells, upsampled to the image.",
        "Wrote:",
        f"  {tmp_path}/chelsea_cam_285_egyptian_cat.png",
        f"  {tmp_path}/chelsea_cam_282_tiger_cat.png",
        "One map for every class (class-agnostic: Egyptian cat, tiger cat get the same ",
        "map) made by eigencam (not a decomposition of the class score) on a grid of 11x7",
        "feature cells, upsampled to the image.",
        "Wrote:",
        f"  {tmp_path}/chelsea_eigencam_285_egyptian_cat.png",
        f"  {tmp_path}/chelsea_eigencam_282_tiger_cat.png",
    ]


def test_every_view_of_an_eigencam_map_says_it_is_class_agnostic() -> None:
    ex = camtool.explain(CAT, method="eigencam", classes=[285, 282])
    cam = camtool.explain(CAT, method="cam", classes=[285, 282])
    assert ex.class_agnostic and not cam.class_agnostic
    assert (ex.to_dict()["class_agnostic"], cam.to_dict()["class_agnostic"]) == (True, False)
    assert ex.legend_text(1) == (
        "tiger cat: probability 0.16 (eigencam)",
        "eigencam map, class-agnostic (any class), normalised",
        "low",
        "high",
    )
    assert describe_maps(ex)[0].startswith(
        "One map for every class (class-agnostic: Egyptian cat, tiger cat get the same map)"
    )
    assert describe_maps(cam)[0].startswith("Maps of Egyptian cat, tiger cat made by cam")

    result = CliRunner().invoke(
        app, ["explain", str(CAT), "--method", "eigencam", "--method", "gradcam", "--json"]
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [(m["method"], m["class_agnostic"]) for m in doc["models"]] == [
        ("eigencam", True),
        ("gradcam", False),
    ]
    assert [i["class_agnostic"] for i in doc["images"]] == [True, False]
    assert doc["models"][0]["head_detail"]["class_agnostic"] is True
    assert camtool.methods.get_method("eigencam").class_agnostic


def test_a_console_table_of_eigencam_marks_its_map_class_agnostic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    done = camtool_cli("explain", str(CAT), "--method", "eigencam", "-k", "2", "-o", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "│ 1 │ Egyptian cat ◀ map (class-agnostic) │   285 │" in done.stdout
    assert "│ 2 │ tiger cat                           │   282 │" in done.stdout


@pytest.mark.parametrize("extra", [[], [str(CAT)]])
def test_a_folder_given_to_explain_points_to_export(
    tmp_path: Path, extra: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    done = camtool_cli("explain", str(EXAMPLES), *extra, "--json")
    line = (
        f"Error: {EXAMPLES}: is a folder; explain takes image and video files: "
        f"`camtool export {EXAMPLES}` (camtool.export in Python) explains every image in it\n"
    )
    assert done.stderr == line
    assert done.returncode == (3 if extra else 1)  # with a file beside it: that file is explained
    if extra:
        assert [i["input"] for i in json.loads(done.stdout)["images"]] == [str(CAT)]
