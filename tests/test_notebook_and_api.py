"""The notebook example runs clean, and the public API is what we promise."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import nbformat
import pytest
import torch
from nbclient import NotebookClient

import camtool
from tests.conftest import CAT, EXAMPLES, ROOT


def _cell(notebook: nbformat.NotebookNode, start: str) -> nbformat.NotebookNode:
    """The executed code cell whose source starts with ``start``."""
    (cell,) = [c for c in notebook.cells if c.cell_type == "code" and c.source.startswith(start)]
    return cell


def _payloads(outputs: list[dict[str, Any]]) -> list[str]:
    """Every base64 picture in a cell's outputs: image/* data and data: URLs inside HTML."""
    found = []
    for output in outputs:
        for kind, value in output.get("data", {}).items():
            if kind.startswith("image/"):
                found.append(value.replace("\n", ""))
            elif kind == "text/html":
                found += re.findall(r"base64,([A-Za-z0-9+/=]+)", value)
    return found


def test_example_notebook_executes_clean() -> None:
    notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(EXAMPLES)}},
    ).execute()
    # One explanation, one requested class: one picture, stored once (HTML only, no PNG copy).
    (first,) = [o for o in _cell(notebook, "import camtool").outputs if "data" in o]
    assert set(first["data"]) == {"text/html", "text/plain"}
    assert len(_payloads([first])) == 1
    # Two requested classes: both overlays, captioned with their names and probabilities, each
    # stored once in the cell's outputs; the input is not called <Tensor>; repr is one line.
    both = _cell(notebook, "image = camtool.load_image").outputs
    (shown,) = [o for o in both if "data" in o]
    page = shown["data"]["text/html"]
    assert page.count("<img") == 2
    assert re.search(r"<figcaption>967 espresso 0\.\d\d</figcaption>", page)
    assert re.search(r"<figcaption>968 cup 0\.\d\d</figcaption>", page)
    assert "&lt;Tensor&gt;" not in page and "<Tensor>" not in page
    payloads = _payloads(both)
    assert len(payloads) == 2 and len(set(payloads)) == 2
    line = shown["data"]["text/plain"]
    assert "\n" not in line and len(line) <= 120, line
    assert line.startswith("Explanation(image 600x400, model efficientnet_lite0, method cam, ")
    assert "967 espresso" in line and "968 cup" in line
    # ex.overlay(...) is a picture that shows itself as one PNG.
    overlay = _cell(notebook, "cup = both.overlay").outputs
    (picture,) = [o for o in overlay if "data" in o]
    assert set(picture["data"]) == {"image/png", "text/plain"}
    assert picture["data"]["text/plain"] == "Picture(600x400)"
    sheet = _cell(notebook, 'camtool.explain("chelsea.png", maps=3)').outputs
    assert any("image/png" in o.get("data", {}) for o in sheet)
    text = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "Egyptian cat" in text and "coffee_cup.png True" in text
    assert "Picture(600x400) (3, 400, 600) torch.uint8" in text
    assert text.count("Explanation(image 451x300, model efficientnet_lite0") == 3  # pair, hwc
    assert "Explanation(image 337x224, model efficientnet_lite0" in text  # preprocessed
    assert "Explanation(chelsea.png 451x300, model efficientnet_lite0" in text  # repr(ex)


def test_explanation_shows_every_class_in_jupyter(lite0: camtool.LoadedModel) -> None:
    ex = camtool.explain(CAT, lite0, classes=[285, "tabby", 282])
    assert not hasattr(ex, "_repr_png_")  # a PNG beside the HTML would store each picture twice
    page = ex._repr_html_()
    assert page.count("<img") == 3 and len(set(_payloads([{"data": {"text/html": page}}]))) == 3
    for name in ("285 Egyptian cat", "281 tabby", "282 tiger cat"):
        assert f"<figcaption>{name} 0." in page
    assert "<td>Egyptian cat</td>" in page  # the top-k table
    assert repr(ex) == (
        "Explanation(chelsea.png 451x300, model efficientnet_lite0, method cam, classes "
        f"[285 Egyptian cat {ex.explained[0].probability:.2f}, 281 tabby "
        f"{ex.explained[1].probability:.2f}, ...])"
    )
    many = camtool.explain(CAT, lite0, maps=20)
    assert len(repr(many)) <= 120 and "\n" not in repr(many)


def test_overlay_is_a_picture_of_the_input_size(lite0: camtool.LoadedModel) -> None:
    ex = camtool.explain(CAT, lite0, maps=2)
    picture = ex.overlay(ex.explained[1].name, box=True)
    assert isinstance(picture, camtool.Picture)
    assert picture.tensor.dtype == torch.uint8 and picture.tensor.shape == (3, 300, 451)
    assert picture.size == (451, 300) and repr(picture) == "Picture(451x300)"
    assert picture._repr_png_().startswith(b"\x89PNG")
    with pytest.raises(
        camtool.InvalidArgumentError, match=r"uint8 Tensor\[3,H,W\], got torch.float32"
    ):
        camtool.Picture(torch.zeros(3, 4, 4))


def test_class_score_fields_have_one_name_everywhere(lite0: camtool.LoadedModel) -> None:
    """The README, the dataclass, the JSON summary and the manifest's schema name the same fields."""
    from camtool.journal import _SCORE_FIELDS

    fields = [f.name for f in dataclasses.fields(camtool.ClassScore)]
    assert fields == ["index", "name", "probability", "logit"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    mentions = re.findall(r"ClassScore\(([a-z_, ]+)\)", readme)
    assert mentions and all(m.split(", ") == fields for m in mentions), mentions
    summary = camtool.explain(CAT, lite0).to_dict()
    assert list(summary["predictions"][0]) == fields
    assert list(summary["explained"][0]) == [*fields, "box"]
    assert set(_SCORE_FIELDS) <= set(fields)


def test_public_api_is_pinned() -> None:
    # The public face is small (the seam issue): lower-level names live in namespaces.
    assert sorted(camtool.__all__) == sorted([
        "__version__", "methods", "metrics",
        "explain", "Explainer", "Explanation", "ClassScore", "comparison_sheet", "Picture",
        "export", "explain_iter", "ExportOptions", "ExportReport", "ExportFailure", "ExportInterrupted",
        "fit", "FitReport",
        "explain_video", "VideoReport", "write_gallery", "evaluate", "EvalReport",
        "class_names", "ClassName", "resolve_class",
        "load_model", "LoadedModel", "Preprocessing", "Region", "load_image", "save_image",
        "normalize_cams", "upsample_cams", "colorize", "overlay", "cam_to_box", "draw_box",
        "labelled_grid", "COLORMAPS",
        "CamtoolError", "ImageReadError", "ImageTooLargeError", "OutputWriteError", "ModelLoadError",
        "UnknownModelError", "WeightsHashError", "UnsupportedModelError", "ClassSelectionError",
        "InvalidArgumentError",
    ])  # fmt: skip
    assert camtool.methods.bind is not None and "cam" in camtool.methods.method_names()
    assert callable(camtool.metrics.deletion) and callable(camtool.metrics.method_maps)
    assert callable(camtool.export) and callable(camtool.explain)
    for name in camtool.__all__:
        assert getattr(camtool, name) is not None
    assert callable(camtool.explain)


def test_wheel_carries_the_cards_and_labels(tmp_path: Path) -> None:
    """A normal (non-editable) install must find the built-in cards and the ImageNet labels."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.fail(f"pip wheel failed: {result.stderr[-2000:]}")
    (wheel,) = tmp_path.glob("camtool-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for card in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        assert f"camtool/_cards/{card}.toml" in names
    assert "camtool/data/imagenet1k.txt" in names
    assert "camtool/py.typed" in names  # type hints reach users (PEP 561)


def test_quality_gates_ruff_and_mypy() -> None:
    bin_dir = Path(sys.executable).parent
    ruff = subprocess.run(
        [bin_dir / "ruff", "check", "camtool", "tests"], cwd=ROOT, capture_output=True, text=True
    )
    assert ruff.returncode == 0, ruff.stdout
    mypy = subprocess.run([bin_dir / "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert mypy.returncode == 0, mypy.stdout
