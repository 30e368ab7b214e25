"""The export gallery, checked in a real headless Chromium (skipped only where none is installed)."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from camtool.cli import app
from tests.conftest import CAT, COFFEE, EXAMPLES

runner = CliRunner()
HOSTILE = "<img src=x onerror=alert(1)>.png"


def elements(html: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Every start tag of a page with its attributes, as an HTML parser sees them."""
    found: list[tuple[str, list[tuple[str, str | None]]]] = []

    class Collector(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.append((tag, attrs))

    Collector().feed(html)
    return found


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.skip(
        "Chromium is not installed (scripts/setup.sh test installs Debian's chromium when it can)"
    )


def browse(page: Path, fragment: str, profile: Path, *extra: str) -> str:
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
        "--disable-background-networking", "--disable-component-update", "--disable-quic",
        f"--user-data-dir={profile}", *extra, f"{page.as_uri()}{fragment}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    return result.stdout


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("in")
    shutil.copy(CAT, folder / "cat.png")
    shutil.copy(CAT, folder / HOSTILE)
    shutil.copy(COFFEE, folder / "coffee one.png")
    shutil.copy(COFFEE, folder / "coffee two.png")
    shutil.copy(EXAMPLES / "camera.png", folder / "camera.png")
    shutil.copy(EXAMPLES / "grace_hopper.jpg", folder / "a#b?c%41.jpg")
    (folder / "broken.jpg").write_text("not an image")
    out = folder.parent / "out"
    result = runner.invoke(
        app, ["export", str(folder), "-o", str(out), "-q", "--workers", "0", "--report"]
    )
    assert result.exit_code == 3, result.stderr
    return out / "index.html"


def test_gallery_files_are_self_contained(gallery: Path) -> None:
    page = gallery.read_text()
    assert "http://" not in page and "https://" not in page  # no CDN, no fonts: works offline
    thumbs = sorted(p.name for p in (gallery.parent / "_thumbs").iterdir())
    assert len(thumbs) == 12 and any(t.startswith("cat_input_") for t in thumbs)
    assert HOSTILE not in page  # the name is in the data only as escaped JSON
    runner.invoke(
        app, ["report", str(gallery.parent), "-q"]
    )  # camtool report rewrites it the same way
    assert gallery.read_text() == page


def test_gallery_in_chromium_cards_filter_escaping_screenshot(
    gallery: Path, tmp_path: Path
) -> None:
    dom = browse(gallery, "", tmp_path / "profile", "--dump-dom")
    assert dom.count('class="card"') == 6
    assert "6 of 6 images" in dom
    sources = [dict(attrs).get("src") or "" for tag, attrs in elements(dom) if tag == "img"]
    assert any("a%23b%3Fc%2541_input_" in src for src in sources)  # '#', '?', '%' stay in the path
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in dom  # shown as text
    assert not any("onerror" in dict(attrs) for _, attrs in elements(dom))  # never became markup
    assert (
        "1 failed inputs" in dom and "broken.jpg: not an image file that OpenCV can decode" in dom
    )

    filtered = browse(gallery, "#class=espresso", tmp_path / "profile", "--dump-dom")
    assert filtered.count('class="card"') == 2 and "2 of 6 images" in filtered
    searched = browse(gallery, "#q=camera", tmp_path / "profile", "--dump-dom")
    assert searched.count('class="card"') == 1

    shot = tmp_path / "gallery.png"
    browse(gallery, "", tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,900")
    assert shot.exists() and shot.stat().st_size > 10_000


def test_report_on_a_folder_without_an_export(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"Error: {tmp_path}: no manifest.jsonl here: not the output folder of camtool export\n"
    )


def test_report_from_another_folder_resolves_the_exports_relative_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "work" / "in").mkdir(parents=True)
    shutil.copy(CAT, tmp_path / "work" / "in" / "cat.png")
    monkeypatch.chdir(tmp_path / "work")
    assert runner.invoke(app, ["export", "in", "-o", "out", "-q", "--workers", "0"]).exit_code == 0
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["report", "work/out", "-q"]).exit_code == 0
    page = (tmp_path / "work" / "out" / "index.html").read_text()
    assert '"thumb": null' not in page and '"original": "../in/cat.png"' in page


def test_gallery_shows_every_map_of_an_image_and_a_colour_legend(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(CAT, folder / "cat.png")
    out = tmp_path / "out"
    args = ["export", str(folder), "-o", str(out), "-q", "--workers", "0", "--maps", "3"]
    result = runner.invoke(app, [*args, "--heatmap", "--report"])
    assert result.exit_code == 0, result.stderr
    dom = browse(out / "index.html", "", tmp_path / "profile", "--dump-dom")
    figures = [dict(attrs) for tag, attrs in elements(dom) if tag == "img"]
    maps = [f for f in figures if (f.get("alt") or "").startswith("map of ")]
    assert [m["alt"] for m in maps] == ["map of Egyptian cat", "map of tiger cat", "map of tabby"]
    assert all("_cam" in (m.get("src") or "") for m in maps)  # overlays' thumbnails, no heatmaps
    assert len({m.get("src") for m in maps}) == 3
    assert "linear-gradient(to right, rgb(0, 0, 128)" in dom  # jet, from its lowest colour
    assert "jet: low to high contribution to the class's logit, on one scale" in dom
