"""Class names and command-line options: what a user types, how camtool reads it, and the one-line
errors when it cannot (through the real ``camtool`` entry point, on the real default model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer.main
from PIL import Image
from typer.testing import CliRunner

import camtool
from camtool.cli import app
from camtool.export import read_manifest
from camtool.labels import resolve_class, suggest_classes
from camtool.models.network import resolve_device, resolve_dtype
from camtool.render import colorize, overlay
from camtool.settings import DEFAULT_OUT_DIR, parse_device, parse_dtype
from tests.conftest import CAT

runner = CliRunner()
CAMTOOL = [sys.executable, "-m", "camtool.cli"]


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


# -- 1: classes by index, label, any case, or the slug camtool writes into file names ------------

CAT_LINE = (
    "Error: cat: unknown class name; did you mean 'tiger cat', 'Persian cat', 'Siamese cat', "
    "'Egyptian cat', 'Madagascar cat', 'oystercatcher', 'polecat', 'catamaran', 'crate', "
    "'oxcart', 'castle'?\n"
)


def test_the_file_name_form_of_a_class_selects_it(tmp_path: Path) -> None:
    code, out, err = run("explain", str(CAT), "-c", "egyptian_cat", "-c", "Tiger Cat", "--json",
                         "-o", str(tmp_path))  # fmt: skip
    assert code == 0, err
    image = json.loads(out)["images"][0]
    assert [e["index"] for e in image["explained"]] == [285, 282]
    names = [Path(p).name for p in image["outputs"]]
    assert names == ["chelsea_cam_285_egyptian_cat.png", "chelsea_cam_282_tiger_cat.png"]
    # the name camtool wrote selects the same class again
    again = names[0].removeprefix("chelsea_cam_285_").removesuffix(".png")
    code, out, _ = run("explain", str(CAT), "-c", again, "--json")
    assert code == 0 and json.loads(out)["images"][0]["explained"][0]["index"] == 285


def test_an_unknown_class_lists_the_labels_containing_it_first(tmp_path: Path) -> None:
    code, _, err = run("explain", str(CAT), "-c", "cat", "-o", str(tmp_path))
    assert (code, err) == (2, CAT_LINE)
    assert list(tmp_path.iterdir()) == []


def test_a_name_two_labels_share_is_an_error_listing_both(lite0: camtool.LoadedModel) -> None:
    labels = lite0.labels
    assert resolve_class("Cardigan", labels) == 264  # exact label: the dog
    assert resolve_class("cardigan", labels) == 474  # exact label: the sweater
    code, _, err = run("explain", str(CAT), "-c", "CARDIGAN")
    assert (code, err) == (
        2,
        "Error: CARDIGAN: ambiguous class name: 264 'Cardigan', 474 'cardigan'; give the index "
        "or the exact label\n",
    )
    assert resolve_class(" EGYPTIAN CAT ", labels) == 285
    assert resolve_class("egyptian-cat", labels) == 285
    assert resolve_class("285", labels) == 285
    containing, close = suggest_classes("cat", labels)
    assert [c.index for c in containing[:5]] == [282, 283, 284, 285, 383]  # whole word first
    assert [c.name for c in containing[5:]] == ["oystercatcher", "polecat", "catamaran"]
    assert [c.name for c in close] == ["crate", "oxcart", "castle"]


def test_the_classes_command_lists_and_searches(lite0: camtool.LoadedModel) -> None:
    code, out, err = run("classes", "efficientnet_lite0", "cat")
    assert code == 0, err
    assert out == (
        "143  oystercatcher\n282  tiger cat\n283  Persian cat\n284  Siamese cat\n"
        "285  Egyptian cat\n358  polecat\n383  Madagascar cat\n484  catamaran\n"
    )
    code, out, _ = run("classes", "efficientnet_lite0", "egyptian_cat", "--json")
    assert code == 0 and json.loads(out) == [{"index": 285, "name": "Egyptian cat"}]
    code, out, _ = run("classes")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 1000 and lines[0] == "  0  tench"
    assert lines[999] == "999  toilet tissue"
    code, out, err = run("classes", "efficientnet_lite0", "zebrafish")
    assert (code, out, err) == (1, "", "Error: zebrafish: no class of efficientnet_lite0 matches\n")
    # the library function behind it, on a loaded model too
    assert camtool.class_names(lite0, "285") == [camtool.ClassName(285, "Egyptian cat")]
    assert camtool.class_names(query="tiger cat") == [camtool.ClassName(282, "tiger cat")]


# -- 2: flags are flags -----------------------------------------------------------------------


def test_help_shows_flags_without_a_value() -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    for command in [[], *[[name] for name in group.commands]]:
        code, out, _ = run(*command, "--help")
        assert code == 0 and "<bool>" not in out, command
    code, out, _ = run("explain", "--help")
    box = next(line for line in out.splitlines() if "--box " in line)
    assert box.split("│")[1].split() == ["--box", "Draw", "the", "CAM", "box", "(see"]


@pytest.mark.parametrize("word", ["true", "false", "False", "1"])
def test_a_value_after_a_flag_is_a_usage_error(
    tmp_path: Path, word: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run("explain", str(CAT), "--box", word)
    assert (code, err) == (
        2,
        f"Error: --box: is a flag and takes no value ({word!r} is not an input): write --box to "
        "turn it on, leave it out to keep it off\n",
    )
    code, _, err = run("explain", str(CAT), "--box=true")
    assert (code, err) == (2, "Error: --box: is a flag and takes no value (write --box alone)\n")
    assert list(tmp_path.iterdir()) == []


def test_a_file_named_true_after_a_flag_is_an_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Image.open(CAT).resize((64, 43)).save(tmp_path / "true", format="PNG")
    code, out, err = run("explain", "--json", "true")
    assert code == 0, err
    assert json.loads(out)["images"][0]["input"] == "true"


# -- 3: devices and dtypes ----------------------------------------------------------------------

CHOICES = "choose cpu, cuda, cuda:N (the N-th GPU), mps or auto"


@pytest.mark.parametrize(
    ("spec", "line"),
    [
        ("gpu", f"Error: --device gpu: not a device: {CHOICES}\n"),
        ("", f"Error: --device '': not a device: {CHOICES}\n"),
        ("bogus", f"Error: --device bogus: not a device: {CHOICES}\n"),
        ("cuda:x", f"Error: --device cuda:x: not a device: {CHOICES}\n"),
        ("meta", f"Error: --device meta: device 'meta' holds no data (shapes only): {CHOICES}\n"),
    ],
)
def test_an_invalid_device_is_a_usage_error_naming_the_choices(
    tmp_path: Path, spec: str, line: str
) -> None:
    for command in (
        ["explain", str(CAT), "-o", str(tmp_path)],
        ["export", str(CAT), "-o", str(tmp_path)],
    ):
        assert run(*command, "--device", spec)[::2] == (2, line)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(camtool.InvalidArgumentError):
        resolve_device(spec)


def test_device_specs_in_any_case() -> None:
    assert [parse_device(s) for s in ("CPU", " cuda:1 ", "Auto", None)] == [
        "cpu", "cuda:1", "auto", "auto",
    ]  # fmt: skip
    assert resolve_device("CPU") == torch.device("cpu")


def test_dtype_aliases() -> None:
    assert [parse_dtype(s) for s in ("fp32", "FP16", "half", "bf16", "bfloat16", None)] == [
        "float32", "float16", "float16", "bfloat16", "bfloat16", "float32",
    ]  # fmt: skip
    assert resolve_dtype("bf16") == torch.bfloat16
    code, out, err = run("inspect", "efficientnet_lite0", "--dtype", "bf16", "--json")
    assert code == 0, err
    assert json.loads(out)["dtype"] == "bfloat16"
    code, _, err = run("explain", str(CAT), "--dtype", "fp64")
    assert (code, err) == (
        2,
        "Error: --dtype fp64: unknown dtype: choose float32 (fp32), float16 (fp16, half) or "
        "bfloat16 (bf16)\n",
    )


# -- 4: colour maps in any case, and gray ------------------------------------------------------


def test_colour_maps_in_any_case_and_gray(tmp_path: Path) -> None:
    pictures = {}
    for name in ("jet", "JET", "Jet", "gray", "GRAY"):
        folder = tmp_path / name
        code, _, err = run(
            "explain", str(CAT), "-o", str(folder), "--colormap", name, "--alpha", "1"
        )
        assert code == 0, err
        (written,) = folder.iterdir()
        pictures[name] = np.asarray(Image.open(written).convert("RGB"))
    assert (pictures["JET"] == pictures["jet"]).all() and (pictures["Jet"] == pictures["jet"]).all()
    gray = pictures["gray"]
    assert (gray == pictures["GRAY"]).all()
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    levels = camtool.explain(CAT).heatmaps[0].mul(255).round().to(torch.uint8).numpy()
    assert (gray[..., 0] == levels).all() and levels.min() == 0 and levels.max() >= 250
    ramp = torch.linspace(0, 1, 256).view(16, 16)
    assert colorize(ramp, "Gray").tolist() == [ramp.mul(255).round().to(torch.uint8).tolist()] * 3
    image = torch.full((3, 16, 16), 100, dtype=torch.uint8)
    assert torch.equal(overlay(image, ramp, 0.5, "VIRIDIS"), overlay(image, ramp, 0.5, "viridis"))
    code, _, err = run("explain", str(CAT), "--colormap", "grey2")
    assert code == 2 and err.startswith("Error: --colormap: 'grey2' is not one of 'jet', ")
    assert err.endswith(", 'bone', 'gray'\n")


# -- 5: the CAM box threshold -----------------------------------------------------------------


def test_box_threshold_for_explain_and_export(tmp_path: Path) -> None:
    boxes = {}
    for threshold in ("0.2", "0.6"):
        code, out, err = run("explain", str(CAT), "--json", "--box-threshold", threshold)
        assert code == 0, err
        boxes[threshold] = json.loads(out)["images"][0]["explained"][0]["box"]
    ex = camtool.explain(CAT, box_threshold=0.6)
    assert boxes["0.6"] == list(camtool.cam_to_box(ex.heatmaps[0], 0.6) or ())
    assert boxes["0.2"] == list(camtool.explain(CAT).boxes[0] or ())
    (a1, b1, a2, b2), (c1, d1, c2, d2) = boxes["0.2"], boxes["0.6"]
    assert (
        a1 <= c1 < c2 <= a2
        and b1 <= d1 < d2 <= b2
        and (c2 - c1) * (d2 - d1) < (a2 - a1) * (b2 - b1)
    )
    out = tmp_path / "e"
    code, _, err = run(
        "export", str(CAT), "-o", str(out), "-q", "--workers", "0", "--box-threshold", "0.6"
    )
    assert code == 0, err
    records, runs = read_manifest(out / "manifest.jsonl")
    assert runs[-1]["settings"]["box_threshold"] == 0.6
    assert next(iter(records.values()))["explained"][0]["box"] == boxes["0.6"]
    for bad in ("0", "1", "-0.5", "1.5", "nan"):
        code, _, err = run("explain", str(CAT), "--box-threshold", bad)
        assert code == 2 and err.startswith(f"Error: --box-threshold {float(bad)}: "), err
        assert err.endswith("the box threshold is a fraction of the map's maximum: 0 < t < 1\n")
    with pytest.raises(camtool.InvalidArgumentError, match="0 < t < 1"):
        camtool.explain(CAT, box_threshold=1.0)


# -- 6: one default per concept; --json alone writes nothing ----------------------------------


def test_json_alone_writes_nothing_and_the_default_folder_is_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run("explain", str(CAT), "--json")
    assert code == 0, err
    assert json.loads(out)["images"][0]["outputs"] == []
    assert list(tmp_path.iterdir()) == []
    code, _, err = run("explain", str(CAT))
    assert code == 0, err
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")] == [
        DEFAULT_OUT_DIR, f"{DEFAULT_OUT_DIR}/chelsea_cam_285_egyptian_cat.png",
    ]  # fmt: skip
    code, _, err = run("export", str(CAT), "-q", "--workers", "0")
    assert code == 0, err
    written = sorted(p.name for p in (tmp_path / DEFAULT_OUT_DIR).iterdir())
    assert written == ["chelsea_cam_285_egyptian_cat.png", "manifest.jsonl", "summary.json"]
    assert camtool.ExportOptions().image_format == "png"


# -- 7: a refused --resume names what changed -------------------------------------------------


def test_a_refused_resume_names_each_changed_setting(tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = ("export", str(CAT), "-o", str(out), "-q", "--workers", "0")
    assert run(*base)[0] == 0
    manifest = out / "manifest.jsonl"
    for extra, change in [
        (["--alpha", "0.3"], "alpha: 0.5 -> 0.3"),
        (["--format", "jpg", "--colormap", "TURBO"], 'image_format: "png" -> "jpg"; colormap: "jet" -> "turbo"'),
        (["-m", "efficientnet_lite1"], 'model: "efficientnet_lite0" -> "efficientnet_lite1"'),
    ]:  # fmt: skip
        code, _, err = run(*base, "--resume", *extra)
        assert (code, err) == (
            2,
            f"Error: {manifest}: was written with other settings ({change}); use another --out, "
            "or the same options\n",
        )
    assert run(*base, "--resume", "--dtype", "fp32", "--colormap", "Jet", "--device", "CPU")[0] == 0


# -- 8: usage errors are one line, through the installed entry point --------------------------


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["explain", str(CAT), "--top-k", "0"], "Error: --top-k: input should be greater than or equal to 1\n"),
        (["export"], "Error: inputs: missing argument (see 'python -m camtool.cli export --help')\n"),
        (["explain", str(CAT), "--device", "gpu"], f"Error: --device gpu: not a device: {CHOICES}\n"),
        (["explain", str(CAT), "--json", "yes"], "Error: --json: is a flag and takes no value ('yes' is not an input): write --json to turn it on, leave it out to keep it off\n"),
        (["classes", "efficientnet_lite0", "cat", "extra"], "Error: python -m camtool.cli classes: got unexpected extra argument(s) (extra) (see 'python -m camtool.cli classes --help')\n"),
    ],
)  # fmt: skip
def test_usage_errors_from_a_real_process(tmp_path: Path, args: list[str], line: str) -> None:
    result = subprocess.run([*CAMTOOL, *args], capture_output=True, text=True, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (2, line)
    assert list(tmp_path.iterdir()) == []


def test_upsample_in_any_case_in_the_cli_and_the_library(tmp_path: Path) -> None:
    from camtool.settings import check_upsample

    assert [check_upsample(u) for u in ("STRETCH", "Placed", "stretch")] == [
        "stretch", "placed", "stretch",
    ]  # fmt: skip
    pictures = {}
    for name in ("stretch", "STRETCH"):
        code, _, err = run("explain", str(CAT), "-o", str(tmp_path / name), "--upsample", name)
        assert code == 0, err  # was "Error: --upsample: 'STRETCH' is not one of ..."
        (written,) = (tmp_path / name).iterdir()
        pictures[name] = np.asarray(Image.open(written))
    assert (pictures["STRETCH"] == pictures["stretch"]).all()
    ex = camtool.explain(CAT, upsample="Stretch")
    assert torch.equal(ex.maps, camtool.explain(CAT, upsample="stretch").maps)


def test_a_class_given_twice_by_name_and_index_is_mapped_once(tmp_path: Path) -> None:
    code, out, err = run("explain", str(CAT), "-c", "Egyptian cat", "-c", "285", "-c", "tabby",
                         "-c", "egyptian_cat", "--json", "-o", str(tmp_path))  # fmt: skip
    assert code == 0, err
    image = json.loads(out)["images"][0]
    assert [e["index"] for e in image["explained"]] == [285, 281]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "chelsea_cam_281_tabby.png", "chelsea_cam_285_egyptian_cat.png",
    ]  # fmt: skip
