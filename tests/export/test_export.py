"""Batch export: good and bad files, resume, Ctrl-C, equality with explain, safe paths."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import camtool
from camtool.cli import app
from camtool.export import ExportOptions, collect_inputs, explain_iter, export, read_manifest
from tests.conftest import CAT, COFFEE, EXAMPLES, make_bad_inputs, make_odd_inputs

runner = CliRunner()
CAMTOOL = str(Path(sys.executable).parent / "camtool")


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture()
def mixed_folder(tmp_path: Path) -> tuple[Path, dict[str, tuple[Path, str]]]:
    """Good photos (odd layouts and names included) and every kind of bad file, in sub-folders."""
    root = tmp_path / "in"
    odd = make_odd_inputs(root / "odd")
    assert len(odd) == 5
    bad = make_bad_inputs(root / "bad")
    del bad["missing"], bad["directory"]
    (root / "names").mkdir()
    shutil.copy(CAT, root / "names" / "a cat with spaces.png")
    shutil.copy(COFFEE, root / "names" / "café ☕.png")
    shutil.copy(EXAMPLES / "grace_hopper.jpg", root / "grace_hopper.jpg")
    os.symlink("..", root / "names" / "loop")
    return root, bad


def test_folder_with_good_and_bad_files(
    tmp_path: Path, mixed_folder: tuple[Path, dict[str, tuple[Path, str]]]
) -> None:
    root, bad = mixed_folder
    out = tmp_path / "out"
    code, _, err = run(
        "export", str(root), "-o", str(out), "--format", "png", "-q", "--workers", "0"
    )
    assert code == 3
    records, runs = read_manifest(out / "manifest.jsonl")
    assert len(runs) == 1 and runs[0]["head"].startswith("forward_features -> _fc")
    ok = {
        Path(r["input"]).relative_to(root).as_posix()
        for r in records.values()
        if r["status"] == "ok"
    }
    assert ok == {
        "grace_hopper.jpg", "names/a cat with spaces.png", "names/café ☕.png",
        "odd/cmyk.jpg", "odd/deep16.png", "odd/gray.png", "odd/rgba.png", "odd/rotated.jpg",
    }  # fmt: skip
    failed = {r["input"]: r["error"] for r in records.values() if r["status"] == "failed"}
    for path, problem in bad.values():
        assert failed.pop(str(path)) == f"{path}: {problem}"
        assert f"Error: {path}: {problem}\n" in err
    ((loop, reason),) = failed.items()
    assert loop == str(root / "names" / "loop") and reason.startswith(
        "directory loop through symlinks"
    )
    on_disk = files_under(out)
    listed = {str(Path(p).relative_to(out)) for r in records.values() for p in r.get("outputs", [])}
    assert on_disk == listed | {"manifest.jsonl", "summary.json"}
    assert "names/café ☕_cam_967_espresso.png" in on_disk
    assert Image.open(out / "odd" / "rotated_cam_285_egyptian_cat.png").size == (300, 451)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["total"], summary["exported"], summary["failed"]) == (13, 8, 6)
    assert 0 < summary["load_seconds"] < summary["seconds"]  # the model's loading, within the run

    code, _, _ = run(
        "export", str(root), "-o", str(out), "--format", "png", "-q", "--resume", "--workers", "0"
    )
    assert code == 3
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["exported"], summary["skipped"], summary["failed"]) == (0, 8, 6)
    assert files_under(out) == on_disk


def test_export_equals_explain_whatever_the_batch(
    tmp_path: Path, lite0: camtool.LoadedModel
) -> None:
    """A photo batched with others (of other sizes too) gives the single-image result."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        shutil.copy(CAT, folder / f"cat{i}.png")
    shutil.copy(COFFEE, folder / "coffee.png")
    Image.open(CAT).resize((300, 451)).save(folder / "tall.png")
    options = ExportOptions(image_format="png", box=True)
    report = export(
        [folder], tmp_path / "out", lite0, maps=2, options=options, batch_size=8, workers=2
    )
    assert (report.exported, report.failed) == (5, 0)
    records, _ = read_manifest(report.manifest)
    for name in ("cat1.png", "coffee.png", "tall.png"):
        alone = camtool.explain(folder / name, lite0, maps=2)
        record = records[str(folder / name)]
        assert [e["index"] for e in record["explained"]] == [s.index for s in alone.explained]
        assert [e["box"] for e in record["explained"]] == [
            list(b) if b else None for b in alone.boxes
        ]
        for mine, theirs in zip(record["predictions"], alone.predictions, strict=True):
            assert mine["index"] == theirs.index and mine["probability"] == pytest.approx(
                theirs.probability, abs=1e-5
            )
        for i, path in enumerate(record["outputs"]):
            written = camtool.load_image(path).int()
            expected = alone.overlay(i, box=True).tensor.int()
            assert (written - expected).abs().max() <= 1


def test_list_files_globs_and_paths_that_cannot_escape(tmp_path: Path) -> None:
    (tmp_path / "data" / "deep").mkdir(parents=True)
    shutil.copy(CAT, tmp_path / "data" / "deep" / "cat.png")
    shutil.copy(COFFEE, tmp_path / "coffee.png")
    listing = tmp_path / "data" / "list.txt"
    listing.write_text(f"deep/cat.png\r\n../coffee.png\n{tmp_path / 'coffee.png'}\n# a comment\n\n")
    items, failures = collect_inputs([f"@{listing}", str(tmp_path / "data" / "**" / "*.png")])
    assert failures == []
    # Each file once (the list names coffee.png twice, the glob finds cat.png again).
    assert [(i.path.name, str(i.stem)) for i in items] == [
        ("cat.png", "data/deep/cat"),
        ("coffee.png", "coffee"),
    ]
    relative_list = Path(os.path.relpath(listing))  # a relative list path with an absolute entry
    assert len(collect_inputs([f"@{relative_list}"])[0]) == 2
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    os.symlink(tmp_path, out / "data" / "deep")  # a symlink inside the output folder, leading out
    code, _, err = run("export", f"@{listing}", "-o", str(out), "-q", "--workers", "0")
    assert code == 3  # that image is refused, the others are exported
    source = tmp_path / "data" / "deep" / "cat.png"
    assert (
        err.startswith(f"Error: {source}: {out / 'data' / 'deep' / 'cat_cam_'}")
        and "escapes the output folder" in err
    )
    assert not list(tmp_path.glob("cat_cam_*"))
    records, _ = read_manifest(out / "manifest.jsonl")
    assert sorted(r["status"] for r in records.values()) == ["failed", "ok"]


def test_interrupt_leaves_complete_files_and_resume_finishes(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(40):
        shutil.copy(CAT if i % 2 else COFFEE, folder / f"img{i:02d}.png")
    args = [
        CAMTOOL,
        "export",
        str(folder),
        "--format",
        "png",
        "--batch-size",
        "2",
        "--workers",
        "1",
        "-q",
    ]
    clean = subprocess.run([*args, "-o", str(tmp_path / "clean")], capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr

    out = tmp_path / "out"
    process = subprocess.Popen([*args, "-o", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        records, _ = read_manifest(out / "manifest.jsonl")
        if len(records) >= 4:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    records, _ = read_manifest(out / "manifest.jsonl")
    assert 4 <= len(records) < 40
    assert err.endswith("run the same command with --resume to finish\n") and err.count("\n") == 1
    listed = {str(Path(p).relative_to(out)) for r in records.values() for p in r["outputs"]}
    assert files_under(out) == listed | {"manifest.jsonl", "summary.json"}  # no partial files
    for name in listed:
        assert camtool.load_image(out / name).shape[0] == 3

    resumed = subprocess.run([*args, "-o", str(out), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert files_under(out) == files_under(tmp_path / "clean")
    for name in files_under(out) - {"manifest.jsonl", "summary.json"}:
        assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()


def test_a_full_disk_stops_the_run_cleanly(tmp_path: Path) -> None:
    """Files may not grow past 150 kB here (RLIMIT_FSIZE): the first big overlay cannot be written."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(CAT).resize((90, 60)).save(folder / "a_small.png")
    shutil.copy(COFFEE, folder / "b_big.png")

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))

    out = tmp_path / "out"
    result = subprocess.run(
        [CAMTOOL, "export", str(folder), "-o", str(out), "--format", "png", "--workers", "0", "-q", "--batch-size", "1"],
        capture_output=True, text=True, preexec_fn=limit,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"Error: {out / 'b_big_cam_967_espresso.png'}: cannot write: File too large"
    )
    assert result.stderr.count("\n") == 1
    records, _ = read_manifest(out / "manifest.jsonl")
    assert list(records) == [str(folder / "a_small.png")]
    small = {name for name in files_under(out) if name.startswith("a_small_cam_")}
    assert len(small) == 1  # the small image was finished before the big one failed
    assert files_under(out) == {"manifest.jsonl", *small} | ({"summary.json"} & files_under(out))


def test_generator_form_and_raw_outputs(tmp_path: Path, lite0: camtool.LoadedModel) -> None:
    results = list(explain_iter([CAT, COFFEE, tmp_path / "missing.png"], lite0, workers=0))
    explained = {Path(r.source).name: r for r in results if isinstance(r, camtool.Explanation)}
    assert explained["chelsea.png"].predictions[0].name == "Egyptian cat"
    (failure,) = [r for r in results if not isinstance(r, camtool.Explanation)]
    assert failure.error == f"{tmp_path / 'missing.png'}: no such file"
    options = ExportOptions(raw="npz", raw_dtype="float32", heatmap=True)
    report = export([CAT], tmp_path / "out", lite0, options=options, workers=0, maps=3)
    assert report.exit_code == 0
    saved = np.load(tmp_path / "out" / "chelsea_cams.npz")
    assert saved["cams"].shape == (3, 7, 11) and list(saved["classes"]) == [285, 282, 281]
    identity = saved["cams"].mean(axis=(1, 2)) + saved["bias"]
    np.testing.assert_allclose(identity, saved["logits"], atol=1e-4)
    heat = camtool.load_image(tmp_path / "out" / "chelsea_heatmap_285_egyptian_cat.png")
    assert heat.shape == (3, 300, 451) and torch.equal(heat[0], heat[1])


def test_resume_keeps_names_and_never_exports_its_own_outputs(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(CAT, folder / "x.png")
    out = folder / "out"  # inside the input folder
    assert (
        run("export", str(folder), "-o", str(out), "-q", "--workers", "0", "--raw", "npy")[0] == 0
    )
    Image.open(COFFEE).save(
        folder / "x.jpg"
    )  # now 'x' would be shared: the new one must not take it
    assert (
        run(
            "export",
            str(folder),
            "-o",
            str(out),
            "-q",
            "--workers",
            "0",
            "--raw",
            "npy",
            "--resume",
        )[0]
        == 0
    )
    records, runs = read_manifest(out / "manifest.jsonl")
    assert {Path(k).name: r["output_stem"] for k, r in records.items()} == {
        "x.png": "x",
        "x.jpg": "x_2",
    }
    assert (out / "x_cam_285_egyptian_cat.png").exists() and (
        out / "x_2_cam_967_espresso.png"
    ).exists()
    assert (out / "x_cams.npy").exists() and (out / "x_2_cams.npy").exists()
    assert not (out / "out").exists() and len(runs) == 2
    code, _, err = run("export", str(folder), "-o", str(out), "-q", "--workers", "0", "--resume")
    assert code == 2 and "was written with other settings" in err  # --raw differs from the last run


def test_torn_manifest_and_per_image_failures(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(CAT, folder / "a.png")
    Image.new("RGB", (70000, 4)).save(folder / "wide.png")  # too wide for JPEG: that image fails
    out = tmp_path / "out"
    jpg = ("--format", "jpg")
    code, _, err = run("export", str(folder), "-o", str(out), "-q", "--workers", "0", *jpg)
    assert code == 3 and "wide_cam_" in err and "OpenCV cannot encode" in err
    with (out / "manifest.jsonl").open("ab") as handle:
        handle.write('{"input": "torn \u00e9'.encode()[:-1])  # a line cut inside a UTF-8 character
    code, _, _ = run(
        "export", str(folder), "-o", str(out), "-q", "--workers", "0", "--resume", *jpg
    )
    assert code == 3
    lines = (out / "manifest.jsonl").read_bytes().splitlines()
    assert all(json.loads(line) for line in lines)  # the torn line is gone, the rest is intact
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run("export", str(empty), "-o", str(tmp_path / "o2"), "-q")
    assert code == 3 and err == f"Error: {empty}: no image files in this folder\n"
