"""The notebook example runs clean, and the public API is what we promise."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import camtool
from tests.conftest import CAT, EXAMPLES, ROOT


def test_example_notebook_executes_clean() -> None:
    notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(EXAMPLES)}},
    ).execute()
    first = notebook.cells[1].outputs
    assert any("image/png" in o.get("data", {}) and "text/html" in o.get("data", {}) for o in first)
    sheet = notebook.cells[9].outputs
    assert any("image/png" in o.get("data", {}) for o in sheet)
    text = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "Egyptian cat" in text and "coffee_cup.png True" in text


def test_explanation_shows_itself_in_jupyter(lite0: camtool.LoadedModel) -> None:
    ex = camtool.explain(CAT, lite0)
    png = ex._repr_png_()
    assert png.startswith(b"\x89PNG")
    html = ex._repr_html_()
    assert "data:image/png;base64," in html and "<td>Egyptian cat</td>" in html


def test_public_api_is_pinned() -> None:
    # The public face is small (the seam issue): lower-level names live in namespaces.
    assert sorted(camtool.__all__) == sorted([
        "__version__", "methods",
        "explain", "Explanation", "ClassScore", "comparison_sheet", "Picture",
        "export", "explain_iter", "ExportOptions", "ExportReport", "ExportFailure", "ExportInterrupted",
        "fit", "FitReport",
        "explain_video", "VideoReport", "write_gallery",
        "load_model", "LoadedModel", "Preprocessing", "Region", "load_image", "save_image",
        "normalize_cams", "upsample_cams", "colorize", "overlay", "cam_to_box", "draw_box",
        "labelled_grid", "COLORMAPS",
        "CamtoolError", "ImageReadError", "ImageTooLargeError", "OutputWriteError", "ModelLoadError",
        "UnknownModelError", "WeightsHashError", "UnsupportedModelError", "ClassSelectionError",
        "InvalidArgumentError",
    ])  # fmt: skip
    assert camtool.methods.bind is not None and "cam" in camtool.methods.method_names()
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
