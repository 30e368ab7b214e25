"""Output names: safe (never outside --out), within 255 bytes, unique, one rule for every command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from camtool.cli import app
from camtool.export import MANIFEST
from camtool.models.cards import builtin_card_dir
from camtool.naming import NAME_MAX, NameRegistry, component, fit
from tests.conftest import CAT

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def small_cat(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(CAT).convert("RGB").resize((96, 64)).save(path)
    return path


def all_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# -- the rules themselves --------------------------------------------------------------------


@pytest.mark.parametrize("text", ["..", ".", "", "a/b", "/../../x", "a\\b", "a\x00b", "a\nb"])
def test_component_is_one_safe_name(text: str) -> None:
    name = component(text)
    assert name and name not in (".", "..") and not set("/\\\x00\n") & set(name)


@pytest.mark.parametrize("stem", ["a" * 250, "é" * 125, "猫" * 83, "😀" * 62 + "é"])
def test_fit_keeps_the_tail_within_255_bytes_and_is_deterministic(stem: str) -> None:
    tail = "_cam_285_egyptian_cat.png"
    name = fit(stem, tail)
    assert len(name.encode()) <= NAME_MAX and name.endswith(tail)
    assert name == fit(stem, tail) and name != fit(stem + "x", tail)
    assert name.startswith(stem[:40])


def test_registry_claims_distinct_names_case_insensitively() -> None:
    names = NameRegistry()
    assert [names.claim(s) for s in ["a_2", "a", "a", "A", "b"]] == ["a_2", "a", "a_3", "A_4", "b"]


# -- item 5: names longer than the file system holds -----------------------------------------

LONG_STEMS = ["a" * 250, "é" * 125]  # 250 bytes each in UTF-8; the inputs' own names fit


def test_explain_shortens_names_the_file_system_cannot_hold(tmp_path: Path) -> None:
    inputs = [small_cat(tmp_path / "in" / f"{stem}.png") for stem in LONG_STEMS]
    out = tmp_path / "out"
    args = ("-o", str(out), "--json", "--sheet", "--maps", "5")
    code, stdout, err = run("explain", *map(str, inputs), *args)
    assert code == 0, err
    report = json.loads(stdout)
    written = [Path(p) for image in report["images"] for p in image["outputs"]]
    assert len(written) == 2 * 6  # five overlays and a sheet per input
    assert sorted(written) == all_files(out)
    for path, stem in zip(written[::6], LONG_STEMS, strict=True):
        assert len(path.name.encode()) <= NAME_MAX
        assert path.name.startswith(stem[:100]) and path.name.endswith(".png")


def test_export_shortens_long_names_records_them_and_resume_finishes(tmp_path: Path) -> None:
    for stem in LONG_STEMS:
        small_cat(tmp_path / "in" / f"{stem}.png")
    out = tmp_path / "out"
    args = ["export", str(tmp_path / "in"), "-o", str(out), "-q", "--heatmap", "--raw", "npz"]
    code, _, err = run(*args)
    assert code == 0, err
    records = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    outputs = [Path(p) for r in records if r["type"] == "image" for p in r["outputs"]]
    assert len(outputs) == 6 and all(r.get("status", "ok") == "ok" for r in records)
    assert all(p.is_file() and len(p.name.encode()) <= NAME_MAX for p in outputs)
    assert sorted(outputs) == [
        p for p in all_files(out) if p.parent == out and p.name != MANIFEST and p.suffix != ".json"
    ]
    code, _, err = run(*args, "--resume")
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["skipped"] == 2


# -- item 6: names from data never leave --out -----------------------------------------------


def hostile_card(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = (builtin_card_dir() / "efficientnet_lite0.toml").read_text()
    text = text.replace('name = "efficientnet_lite0"', f"name = {json.dumps(name)}")
    card = folder / "evil.toml"
    card.write_text(text)
    return card


@pytest.mark.parametrize("name", ["/../../escaped/pwn", "..", "a\\..\\b", ""])
def test_a_card_name_cannot_write_outside_out(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = hostile_card(tmp_path / "cards", name)
    work = tmp_path / "work" / "deeper" / "still"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    image = small_cat(tmp_path / "cat.png")
    code, stdout, err = run(
        "explain",
        str(image),
        "-m",
        "efficientnet_lite0",
        "-m",
        str(card),
        "-o",
        "out",
        "--json",
        "--sheet",
        "--maps",
        "2",
    )
    assert code == 0, err
    written = [Path(p) for image in json.loads(stdout)["images"] for p in image["outputs"]]
    everything = all_files(tmp_path)
    produced = [p for p in everything if "out" in p.relative_to(tmp_path).parts]
    assert len(produced) == len(written) == 2 + 2 + 1  # two overlays per model and a sheet
    assert all(p.parent == work / "out" for p in produced)
    assert sorted(p.resolve() for p in written) == sorted(produced)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "work" / "escaped").exists()


@pytest.mark.parametrize("label", ["../../x", "a/b", "..", "/etc/passwd", "\x00"])
def test_label_names_cannot_write_outside_out(tmp_path: Path, label: str) -> None:
    labels = tmp_path / "labels.txt"
    names = [f"class {i}" for i in range(1000)]
    names[285] = label.replace("\x00", "\\0")
    labels.write_text("\n".join(names) + "\n")
    image = small_cat(tmp_path / "cat.png")
    out = tmp_path / "o1" / "o2"
    code, _, err = run("explain", str(image), "--labels", str(labels), "-o", str(out), "-c", "285")
    assert code == 0, err
    assert [p.parent for p in all_files(tmp_path / "o1")] == [out]
    code, _, err = run(
        "export", str(image), "--labels", str(labels), "-o", str(out / "e"), "-q", "-c", "285"
    )
    assert code == 0, err
    exported = [p for p in all_files(out / "e") if p.suffix == ".png"]
    assert len(exported) == 1 and exported[0].parent == out / "e"


# -- item 7: two inputs never share an output ------------------------------------------------


def test_explain_gives_every_input_its_own_overlay(tmp_path: Path) -> None:
    inputs = [small_cat(tmp_path / "in" / n) for n in ("a_2.png", "a.png", "a.jpg", "A.png")]
    out = tmp_path / "out"
    code, stdout, err = run("explain", *map(str, inputs), "-o", str(out), "--json", "-c", "285")
    assert code == 0, err
    written = [image["outputs"][0] for image in json.loads(stdout)["images"]]
    assert [Path(p).name for p in written] == [
        "a_2_cam_285_egyptian_cat.png",
        "a_cam_285_egyptian_cat.png",
        "a_3_cam_285_egyptian_cat.png",
        "A_4_cam_285_egyptian_cat.png",
    ]
    assert len(all_files(out)) == 4


def test_export_and_explain_name_the_same_inputs_alike(tmp_path: Path) -> None:
    inputs = [str(small_cat(tmp_path / "in" / n)) for n in ("a_2.png", "a.png", "a.jpg")]
    code, _, err = run("explain", *inputs, "-o", str(tmp_path / "x"), "-c", "285")
    assert code == 0, err
    code, _, err = run(
        "export", *inputs, "-o", str(tmp_path / "e"), "-q", "-c", "285", "--format", "png"
    )
    assert code == 0, err
    assert [p.name for p in all_files(tmp_path / "x")] == [
        p.name for p in all_files(tmp_path / "e") if p.suffix == ".png"
    ]
    assert len(os.listdir(tmp_path / "x")) == 3
