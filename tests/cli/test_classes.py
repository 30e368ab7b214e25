"""``camtool classes`` reads a named model's labels from its card: no network is built, torch is
not even imported (checked in a real process, on the real built-in card and a card file)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

RUN_AND_REPORT = """
import sys
from camtool.cli import main
sys.argv = ["camtool", *sys.argv[1:]]
try:
    main()
except SystemExit as exit:
    print("exit", exit.code, "torch imported:", "torch" in sys.modules)
"""


def classes(*args: str) -> list[str]:
    """``camtool classes ARGS`` in a process of its own; its stdout lines, then whether it
    imported torch."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", RUN_AND_REPORT, "classes", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    return done.stdout.splitlines()


def test_the_classes_of_a_named_model_come_from_its_card_without_torch() -> None:
    assert classes("efficientnet_lite0", "egyptian") == [
        "285  Egyptian cat",
        "exit 0 torch imported: False",
    ]
    lines = classes("efficientnet_lite2")
    assert len(lines) == 1001 and lines[0] == "  0  tench" and lines[-1].endswith("False")


def test_a_card_file_and_a_label_file_are_read_without_torch(tmp_path: Path) -> None:
    (tmp_path / "names.txt").write_text("cat\ndog\nhot dog\n")
    card = tmp_path / "pets.toml"
    card.write_text(
        'architecture = "efficientnet_lite0"\nlabels = "names.txt"\nrandom_weights = true\n'
    )
    assert classes(str(card), "dog") == ["1  dog", "2  hot dog", "exit 0 torch imported: False"]
    assert classes("efficientnet_lite0", "--labels", str(tmp_path / "names.txt")) == [
        "0  cat",
        "1  dog",
        "2  hot dog",
        "exit 0 torch imported: False",
    ]


def test_a_missing_model_file_and_a_text_file_are_named_for_what_they_are(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "nonexist.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    run = [sys.executable, "-m", "camtool.cli", "classes"]
    done = subprocess.run([*run, str(missing)], capture_output=True, text=True, env=env)
    assert (done.returncode, done.stderr) == (2, f"Error: {missing}: no such file\n")
    names = tmp_path / "labels.txt"
    names.write_text("cat\ndog\n")
    done = subprocess.run([*run, str(names)], capture_output=True, text=True, env=env)
    assert done.returncode == 1
    assert done.stderr == (
        f"Error: {names}: is not a model: expected a model name (camtool models), a TorchScript "
        "file, or an architecture with a weights file (--model resnet50 --weights FILE)\n"
    )  # was "is a weights file"
