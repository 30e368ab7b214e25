"""Export under real faults: two processes on one folder, SIGKILL, a full tmpfs, odd manifests,
inputs spelled differently or lying inside the output folder, and the batch-size rounding bound."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import camtool
from camtool.cli import app
from camtool.export import ExportOptions, export
from camtool.export.manifest import read_manifest
from camtool.journal import load_journal as load_manifest
from tests.conftest import CAT, COFFEE

runner = CliRunner()
CLI = [sys.executable, "-m", "camtool.cli"]
BOOKKEEPING = {"manifest.jsonl", "summary.json", ".camtool-export.lock"}
TEMP = re.compile(r"\.camtool-[a-z0-9_]{8}\.part")


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def listed_files(out: Path) -> set[str]:
    """Files the manifest lists, relative to ``out``."""
    contents = load_manifest(out / "manifest.jsonl")
    return {os.path.relpath(f, out) for f in contents.listed}


def small_images(folder: Path, count: int, size: tuple[int, int] = (96, 64)) -> list[Path]:
    folder.mkdir(parents=True)
    cat, coffee = Image.open(CAT).convert("RGB"), Image.open(COFFEE).convert("RGB")
    paths = []
    for i in range(count):
        path = folder / f"img{i:02d}.png"
        (cat if i % 2 else coffee).resize(size).rotate(i * 7).save(path)
        paths.append(path)
    return paths


def wait_for(condition: object, process: subprocess.Popen[str], seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():  # type: ignore[operator]
            return
        if process.poll() is not None:
            return
        time.sleep(0.01)
    process.kill()
    pytest.fail("the export never got there")


def test_two_exports_into_one_folder_the_second_is_refused(tmp_path: Path) -> None:
    """Two real processes: the second gets one error line and exit 1 while the first holds the
    folder; `report` reads it meanwhile; after a SIGKILL of the first the folder is free again."""
    (first_image,) = small_images(tmp_path / "in", 1)
    folder = tmp_path / "in"
    for i in range(1, 400):
        os.link(first_image, folder / f"img{i:03d}.png")
    out = tmp_path / "out"
    args = ["export", str(folder), "-o", str(out), "--batch-size", "2", "--workers", "0", "-q"]
    first = subprocess.Popen([*CLI, *args], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(read_manifest(out / "manifest.jsonl")[0]) >= 2, first)
        second = subprocess.run(
            [*CLI, *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
        )
        assert second.returncode == 1, second.stderr
        assert first.poll() is None, "the first export ended too early for this test"
        assert second.stderr == (
            f"Error: {out}: is being written by another camtool export (pid {first.pid})\n"
        )
        code, _, err = run("report", str(out), "-q")  # read-only: fine meanwhile
        assert code == 0, err
        assert (out / "index.html").exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    # The manifest of the first run is intact: every line whole, every listed file complete.
    lines = (out / "manifest.jsonl").read_bytes().splitlines()
    assert b"\0" not in b"".join(lines)
    assert all(isinstance(json.loads(line), dict) for line in lines[:-1])
    # The OS dropped the lock with the killed process: the next export runs, and first removes
    # what the killed one left unfinished.
    code, _, err = run("export", str(CAT), "-o", str(out), "--workers", "0", "-q")
    assert code == 0, err
    records, runs = read_manifest(out / "manifest.jsonl")
    assert len(runs) == 1 and list(records) == [str(CAT)]
    assert not [name for name in files_under(out) if TEMP.fullmatch(Path(name).name)]


def test_a_full_tmpfs_keeps_every_finished_image_listed(tmp_path: Path) -> None:
    """A real 1 MiB tmpfs fills up during the run: every overlay left on it is listed in the
    manifest, every listed file is complete, and the run stops with one error line."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        folder = tmp_path / "in"
        folder.mkdir()
        for i in range(16):
            os.link(CAT if i % 2 else COFFEE, folder / f"img{i:02d}.png")
        out = disk / "out"
        result = subprocess.run(
            [*CLI, "export", str(folder), "-o", str(out), "--format", "png", "--batch-size", "8",
             "--workers", "0", "-q"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
        assert "No space left on device" in result.stderr
        on_disk = files_under(out) - BOOKKEEPING
        listed = listed_files(out)
        assert on_disk == listed  # nothing unlisted, nothing listed that is missing
        assert len(listed) >= 2  # the disk held a few overlays: they are all in the manifest
        for name in listed:
            assert camtool.load_image(out / name).shape[0] == 3  # decodes: complete
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_sigkill_anywhere_then_resume_leaves_exactly_the_listed_files(tmp_path: Path) -> None:
    """Real SIGKILLs at random moments of a run (and of the resumed runs), every other one as soon
    as an unlisted file exists (on a busy machine random moments can all miss that short window):
    after each, every file
    the manifest does not list is one the next run recognises as unfinished; the last --resume
    removes them, says so, and leaves exactly the listed files, every input done once."""
    # Enough images that six kills never run out of work (a run that finishes first is not
    # counted), and a bound on the runs, so a fast machine fails this test instead of looping.
    inputs = small_images(tmp_path / "in", 120)
    out = tmp_path / "out"
    args = [*CLI, "export", str(tmp_path / "in"), "-o", str(out), "--format", "png", "--heatmap",
            "--batch-size", "2", "--workers", "0", "-q"]  # fmt: skip
    rng = random.Random(8)
    kills, unfinished, runs = 0, [], 0
    while kills < 6:
        runs += 1
        assert runs <= 20, f"only {kills} of 20 runs were still running when killed"
        runs_before = len(read_manifest(out / "manifest.jsonl")[1]) if kills else 0
        process = subprocess.Popen(
            [*args, *(["--resume"] if kills else [])], stdout=subprocess.PIPE, text=True
        )
        wait_for(lambda: len(read_manifest(out / "manifest.jsonl")[1]) > runs_before, process)  # noqa: B023
        if kills % 2:  # a random moment
            time.sleep(rng.uniform(0.0, 1.5))
        else:  # the moment a file exists that the manifest does not list (the window is short)
            wait_for(lambda: files_under(out) - BOOKKEEPING - listed_files(out), process)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
        if process.returncode != -signal.SIGKILL:
            continue  # it finished before the kill: try again
        kills += 1
        contents = load_manifest(out / "manifest.jsonl")
        announced = {os.path.relpath(f, out) for f in contents.announced}
        left = files_under(out) - BOOKKEEPING - listed_files(out)
        for name in left:
            assert TEMP.fullmatch(Path(name).name) or name in announced, name
        unfinished.append(len(left))
    assert any(unfinished), "no kill left an unfinished file: the test tested nothing"
    final = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    if unfinished[-1]:
        assert final.stdout.startswith(f"removed {unfinished[-1]} unfinished files"), final.stdout
    else:
        assert final.stdout == ""
    assert files_under(out) == listed_files(out) | {"manifest.jsonl", "summary.json"}
    done = Counter(
        record["input"]
        for line in (out / "manifest.jsonl").read_text().splitlines()
        if (record := json.loads(line)).get("type") == "image" and record["status"] == "ok"
    )
    assert done == Counter({str(p): 1 for p in inputs})
    for name in listed_files(out):  # overlays of 64x96 images are enlarged 4x; heatmaps are not
        size = (64, 96) if "_heatmap_" in name else (256, 384)
        assert camtool.load_image(out / name).shape[1:] == size, name


def test_resume_matches_inputs_however_they_are_spelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_images(tmp_path / "in", 3)
    monkeypatch.chdir(tmp_path)
    assert run("export", "in", "-o", "out", "-q", "--workers", "0")[0] == 0
    before = files_under(tmp_path / "out")
    for spelling in (str(tmp_path / "in"), "./in", "in/../in"):
        code, _, err = run("export", spelling, "-o", "out", "-q", "--workers", "0", "--resume")
        assert code == 0, err
        summary = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert (summary["exported"], summary["skipped"]) == (0, 3), spelling
        assert files_under(tmp_path / "out") == before  # no `_2` copies
    records, _ = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert sorted(records) == ["in/img00.png", "in/img01.png", "in/img02.png"]


def test_inputs_inside_the_output_folder_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(CAT, tmp_path / "cat.png")
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run("export", "cat.png", "-o", ".", "--workers", "0")
    assert code == 2 and stdout == ""
    assert err == (
        "Error: cat.png: nothing to export: it lies inside the output folder ., which is never "
        "read as input\n"
    )
    assert files_under(tmp_path) == {"cat.png"}

    (tmp_path / "out").mkdir()
    shutil.copy(COFFEE, tmp_path / "out" / "mine.png")  # the user's file, inside the output folder
    code, stdout, err = run("export", ".", "-o", "out", "--workers", "0")
    assert code == 0, err
    assert err == (
        "Warning: skipped 1 input inside the output folder out (never read as input): "
        "out/mine.png\n"
    )
    assert "exported 1, failed 0, skipped 0 (already done) of 1 (+1 inside the output folder)" in (
        " ".join(stdout.split())
    )
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["excluded"]["inputs"] == ["out/mine.png"]
    assert (tmp_path / "out" / "mine.png").exists()


@pytest.mark.parametrize("line", ["[1, 2]", '"x"', "3", "null"])
def test_a_manifest_line_that_is_not_an_object(tmp_path: Path, line: str) -> None:
    out = tmp_path / "out"
    assert run("export", str(CAT), "-o", str(out), "-q", "--workers", "0")[0] == 0
    manifest = out / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([*lines[:1], line, *lines[1:]]) + "\n")
    expected = f"Error: {manifest}: line 2 is not a JSON object\n"
    code, _, err = run("report", str(out), "-q")
    assert (code, err) == (1, expected)
    if line == "3":  # the same reader refuses it on --resume (one case: each loads the model)
        code, _, err = run("export", str(CAT), "-o", str(out), "-q", "--workers", "0", "--resume")
        assert (code, err) == (1, expected)


def test_a_final_name_of_255_bytes_can_be_written(tmp_path: Path) -> None:
    """The temporary name has a fixed length, so it never is longer than the final name."""
    stem = "c" * 230
    shutil.copy(CAT, tmp_path / f"{stem}.png")
    out = tmp_path / "out"
    code, _, err = run("export", str(tmp_path / f"{stem}.png"), "-o", str(out), "-q", "--workers", "0")  # fmt: skip
    assert code == 0, err
    (written,) = files_under(out) - BOOKKEEPING
    assert written.startswith(stem) and len(written.encode()) == 255


def test_batch_size_changes_results_only_within_rounding(
    tmp_path: Path, lite0: camtool.LoadedModel
) -> None:
    """The README's bound: raw CAMs from batches of 1 and of 12 differ by at most 1e-5 of their
    range (about 3e-7 measured), overlays (PNG) by at most 3 levels per pixel: one step of the
    colour map's table, halved by alpha 0.5, plus rounding (2 measured)."""
    small_images(tmp_path / "in", 12, size=(224, 224))
    options = ExportOptions(image_format="png", raw="npz", raw_dtype="float32")
    for size in (1, 12):
        export([tmp_path / "in"], tmp_path / f"b{size}", lite0, options=options,
               batch_size=size, workers=0)  # fmt: skip
    names = files_under(tmp_path / "b1") - {"manifest.jsonl", "summary.json"}
    assert names == files_under(tmp_path / "b12") - {"manifest.jsonl", "summary.json"}
    worst = 0
    for name in names:
        one, twelve = tmp_path / "b1" / name, tmp_path / "b12" / name
        if name.endswith(".npz"):
            a, b = np.load(one)["cams"], np.load(twelve)["cams"]
            assert np.abs(a - b).max() <= 1e-5 * (np.abs(a).max() + 1e-12), name
        else:
            a16 = camtool.load_image(one).int()
            worst = max(worst, int((a16 - camtool.load_image(twelve).int()).abs().max()))
    assert worst <= 3


def test_clean_up_leaves_a_nested_export_folder_alone(tmp_path: Path) -> None:
    """An export into OUT removes stale temporary files under OUT, but not those inside OUT/sub
    while another export holds OUT/sub (its lock file is there)."""
    from camtool.journal import locked_output

    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "old").mkdir()
    theirs = out / "sub" / ".camtool-abcd1234.part"
    stale = out / "old" / ".camtool-wxyz9876.part"
    theirs.write_bytes(b"being written")
    stale.write_bytes(b"left by a killed run")
    with locked_output(out / "sub"):
        code, _, err = run("export", str(CAT), "-o", str(out), "--workers", "0", "-q")
        assert code == 0, err
        assert theirs.exists() and not stale.exists()
