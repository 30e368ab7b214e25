"""The camtool command: outputs, exit codes and the exact one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

import camtool
from camtool.cli import app
from camtool.explain_to_folder import folder_problem
from camtool.models.cards import find_card
from camtool.models.downloads import weights_path
from tests.conftest import CAT, COFFEE, make_bad_inputs, make_odd_inputs

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_explain_writes_an_overlay_of_the_input_size(tmp_path: Path) -> None:
    code, out, err = run("explain", str(CAT), "--out", str(tmp_path), "--box")
    assert code == 0, err
    assert "Egyptian cat" in out and "tabby" in out and "an exact decomposition" in out
    written = tmp_path / "chelsea_cam_285_egyptian_cat.png"
    assert [p.name for p in tmp_path.iterdir()] == [written.name]
    assert Image.open(written).size == (451, 300)


def test_explain_json_document(tmp_path: Path) -> None:
    code, out, err = run(
        "explain", str(CAT), str(COFFEE), "--out", str(tmp_path), "--json", "-k", "3",
        "--class", "tabby", "--class", "967", "--format", "jpg",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["model"] == "efficientnet_lite0"
    assert doc["head"] == (
        "forward_features -> _fc (1000x1280), features 1280x7x7 at 224 px, probe residual 0.0e+00"
    )
    cat, coffee = doc["images"]
    assert cat["input"] == str(CAT) and (cat["width"], cat["height"]) == (451, 300)
    assert [p["index"] for p in cat["predictions"]] == [285, 282, 281]
    assert {"index", "name", "probability", "logit"} <= set(cat["predictions"][0])
    assert [e["index"] for e in cat["explained"]] == [281, 967]
    x1, y1, x2, y2 = cat["explained"][0]["box"]
    assert 0 <= x1 < x2 <= 451 and 0 <= y1 < y2 <= 300
    assert coffee["predictions"][0]["name"] == "espresso"
    assert [Path(p).name for p in coffee["outputs"]] == [
        "coffee_cam_281_tabby.jpg",
        "coffee_cam_967_espresso.jpg",
    ]
    for output in cat["outputs"] + coffee["outputs"]:
        assert Image.open(output).size == ((451, 300) if "chelsea" in output else (600, 400))
    assert doc["errors"] == []


def test_odd_layouts_explain_fine(tmp_path: Path) -> None:
    odd = make_odd_inputs(tmp_path / "in")
    code, out, err = run(
        "explain", *(str(p) for p in odd.values()), "--out", str(tmp_path / "out"), "--json"
    )
    assert code == 0, err
    sizes = {Path(i["input"]).stem: (i["width"], i["height"]) for i in json.loads(out)["images"]}
    assert sizes == {
        "gray": (451, 300),
        "rgba": (451, 300),
        "deep16": (451, 300),
        "cmyk": (451, 300),
        "rotated": (300, 451),
    }


@pytest.mark.parametrize(
    "case",
    ["missing", "empty", "not-an-image", "truncated-jpeg", "truncated-png", "huge", "directory"],
)
def test_bad_input_gives_the_exact_error_line_and_no_file(tmp_path: Path, case: str) -> None:
    path, problem = make_bad_inputs(tmp_path / "in")[case]
    if case == "directory":  # explain sends a folder to export
        problem = folder_problem(path)
        assert problem.endswith(
            f"`camtool export {path}` (camtool.export in Python) explains every image in it"
        )
    out_dir = tmp_path / "out"
    code, _out, err = run("explain", str(path), "--out", str(out_dir))
    assert code == 1
    assert err == f"Error: {path}: {problem}\n"
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_some_bad_inputs_among_good_ones_exit_3_and_keep_the_good_work(tmp_path: Path) -> None:
    bad = make_bad_inputs(tmp_path / "in")
    code, _, err = run("explain", str(bad["empty"][0]), str(CAT), "--out", str(tmp_path / "out"))
    assert code == 3
    assert err == f"Error: {bad['empty'][0]}: file is empty\n"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["chelsea_cam_285_egyptian_cat.png"]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--class", "tabbby"], "Error: tabbby: unknown class name; did you mean 'tabby', 'tray'?\n"),
        (["--class", "1000"], "Error: 1000: class index out of range 0..999\n"),
        (["--model", "efficientnet_lite9"], "Error: efficientnet_lite9: unknown model; did you mean "
         "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2?\n"),
        (["--device", "cuda:7"] if not __import__("torch").cuda.is_available() else ["--device", "warp"],
         None),
    ],
)  # fmt: skip
def test_usage_errors(tmp_path: Path, args: list[str], line: str | None) -> None:
    code, _, err = run("explain", str(CAT), "--out", str(tmp_path), *args)
    assert code in (1, 2) and err.startswith("Error: ") and err.count("\n") == 1
    if line is not None:
        assert code == 2 and err == line
    assert list(tmp_path.iterdir()) == []


def user_card(folder: Path, weights: Path, sha256: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    card = folder / "my_lite0.toml"
    card.write_text(
        'name = "my_lite0"\narchitecture = "camtool:efficientnet_lite0"\n'
        "[preprocessing]\ninput_size = 224\nmean = [0.498, 0.498, 0.498]\nstd = [0.502, 0.502, 0.502]\n"
        f'[weights]\nfile = "{weights}"\nsha256 = "{sha256}"\n'
    )
    return card


def test_user_card_with_a_local_weights_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = weights_path(find_card("efficientnet_lite0"))
    assert source is not None
    local = shutil.copy(source, tmp_path / "lite0.pth")
    user_card(tmp_path / "cards", Path(local), find_card("efficientnet_lite0").weights.sha256)  # type: ignore[union-attr]
    monkeypatch.setenv("CAMTOOL_MODELS", str(tmp_path / "cards"))
    code, out, _ = run("models")
    assert code == 0 and "my_lite0" in out and "efficientnet_lite2" in out
    code, out, err = run(
        "explain", str(CAT), "--model", "my_lite0", "--out", str(tmp_path / "o"), "--json"
    )
    assert code == 0, err
    assert json.loads(out)["images"][0]["predictions"][0]["index"] == 285


def test_weights_with_a_wrong_hash_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = weights_path(find_card("efficientnet_lite0"))
    assert source is not None
    damaged = tmp_path / "lite0.pth"
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    expected = find_card("efficientnet_lite0").weights.sha256  # type: ignore[union-attr]
    user_card(tmp_path / "cards", damaged, expected)
    monkeypatch.setenv("CAMTOOL_MODELS", str(tmp_path / "cards"))
    code, _, err = run("explain", str(CAT), "--model", "my_lite0", "--out", str(tmp_path / "o"))
    assert code == 1
    assert err.startswith(f"Error: {damaged}: sha256 ") and err.endswith(
        f"does not match {expected[:16]}... promised by the card of my_lite0: the file is damaged or not "
        "the expected one\n"
    )
    assert not (tmp_path / "o").exists()


def test_models_lists_builtins_with_weight_status() -> None:
    code, out, _ = run("models")
    assert code == 0
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        assert name in out
    assert out.count("installed") == 3


def test_version_and_help() -> None:
    assert run("--version")[:2] == (0, f"camtool {camtool.__version__}\n")
    for command in ([], ["explain"], ["models"]):
        code, out, _ = run(*command, "--help")
        assert code == 0 and "Usage" in out


def test_output_folder_that_is_a_file_is_a_clean_error(tmp_path: Path) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("")
    code, _, err = run("explain", str(CAT), "--out", str(blocker))
    assert (
        code == 1
        and err.startswith(f"Error: {blocker}: cannot write here")
        and err.count("\n") == 1
    )


def test_real_process_prints_no_traceback_and_help_does_not_import_torch(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "camtool"
    result = subprocess.run(
        [exe, "explain", str(tmp_path / "nope.jpg")], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr == f"Error: {tmp_path / 'nope.jpg'}: no such file\n"
    probe = "import sys, camtool.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0


def test_a_broken_user_card_does_not_break_other_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "broken.toml").write_text('architecture = "timm:resnet18"\npreprocessing = "oops"\n')
    (cards / "noweights.toml").write_text('architecture = "torchvision:resnet18"\n')
    monkeypatch.setenv("CAMTOOL_MODELS", str(cards))
    code, out, _ = run("models")
    assert code == 0 and "broken card" in out and "efficientnet_lite0" in out
    code, _, err = run("explain", str(CAT), "-o", str(tmp_path / "o"))
    assert code == 0, err
    code, _, err = run("explain", str(CAT), "-m", "broken", "-o", str(tmp_path / "o"))
    assert (code, err) == (
        1,
        f"Error: {cards / 'broken.toml'}: bad model card: [preprocessing] must be a table\n",
    )
    code, _, err = run("explain", str(CAT), "-m", "noweights", "-o", str(tmp_path / "o"))
    assert err == (
        f"Error: {cards / 'noweights.toml'}: bad model card: no [weights] table (write "
        "random_weights = true to mean it)\n"
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["explain", str(CAT), "--alpha", "2"], "Error: --alpha: input should be less than or equal to 1\n"),
        (["explain"], "Error: images: missing argument (see 'camtool explain --help')\n"),
        (["explain", str(CAT), "--bogus"], "Error: --bogus: no such option; did you mean --box, --out, --verbose? (see 'camtool explain --help')\n"),
        (["explian", str(CAT)], "Error: explian: no such command; did you mean 'explain'? (see 'camtool --help')\n"),
        (["export", "in", "--raw", "npx"], "Error: --raw: 'npx' is not one of 'npy', 'npz'\n"),
    ],
)  # fmt: skip
def test_usage_errors_are_one_line_too(tmp_path: Path, args: list[str], line: str) -> None:
    exe = Path(sys.executable).parent / "camtool"
    result = subprocess.run([exe, *args], capture_output=True, text=True, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (2, line)
    assert list(tmp_path.iterdir()) == []


def test_cli_colour_map_choices_match_the_renderer() -> None:
    from typing import get_args

    from camtool.cli import options as cli
    from camtool.render import COLORMAPS

    assert list(get_args(cli.Colormap)) == list(COLORMAPS)
