"""What camtool prints on a terminal never drives it: escape sequences and other control
characters in data (a card's name and description, labels from --labels, file and folder names)
are shown as escapes (``\\x1b``), in every command (issue 22, item 7). Real processes, real files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

import camtool
from camtool.naming import visible
from tests.conftest import CAT

TITLE = "\x1b]0;pwned\x07"  # sets the terminal window's title
CLEAR = "\x1b[2J"  # clears the screen
RED = "\x1b[31m"
SHOWN = {TITLE: "\\x1b]0;pwned\\x07", CLEAR: "\\x1b[2J", RED: "\\x1b[31m"}


def camtool_run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run the camtool command in a process of its own; return stdout and stderr together."""
    environ = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CAMTOOL_DEBUG")}
    done = subprocess.run(
        [sys.executable, "-m", "camtool.cli", *args],
        capture_output=True, text=True, env={**environ, **(env or {})}, cwd=cwd, timeout=600,
    )  # fmt: skip
    return done.stdout + done.stderr


def assert_shown_not_sent(output: str, *sequences: str) -> None:
    assert "\x1b" not in output and "\x07" not in output, repr(output)
    for sequence in sequences:
        assert SHOWN[sequence] in output, (sequence, output)


def test_visible_escapes_every_control_character_but_newline_and_tab() -> None:
    assert visible(f"a{TITLE}b") == "a\\x1b]0;pwned\\x07b"
    assert visible("x\r\x00\x7f\x9b\u202e\ty\n") == "x\\x0d\\x00\\x7f\\x9b\\u202e\ty\n"
    assert visible("Egyptian cat, 猫") == "Egyptian cat, 猫"
    # every bidirectional control the Unicode Bidi Algorithm lists (UAX #9, table 4)
    bidi = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
    assert visible(bidi) == "".join(f"\\u{ord(c):04x}" for c in bidi)
    assert visible("abc\u061cdef") == "abc\\u061cdef"  # ARABIC LETTER MARK
    assert visible(visible(CLEAR)) == visible(CLEAR)


def test_models_shows_a_cards_name_and_description_as_escapes(tmp_path: Path) -> None:
    (tmp_path / "evil.toml").write_text(  # TOML writes control characters as \\uXXXX escapes
        'name = "evil\\u001b]0;pwned\\u0007"\n'
        'description = "a card that clears \\u001b[2Jthe screen"\n'
        'architecture = "resnet18"\nrandom_weights = true\n'
    )
    output = camtool_run("models", env={"CAMTOOL_MODELS": str(tmp_path), "COLUMNS": "200"})
    assert_shown_not_sent(output, TITLE, CLEAR)


def test_explain_and_classes_show_labels_and_file_names_as_escapes(tmp_path: Path) -> None:
    labels = [c.name for c in camtool.class_names()]
    labels[285] = f"Egyptian{TITLE}cat"
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    photo = tmp_path / f"cat{CLEAR}.png"
    shutil.copy(CAT, photo)
    out = tmp_path / "out"
    output = camtool_run(
        "explain", str(photo), "--labels", str(tmp_path / "labels.txt"), "-c", "285", "-o", str(out)
    )
    assert_shown_not_sent(output, TITLE, CLEAR)
    assert all("\x1b" not in p.name for p in out.iterdir())  # file names: `_` for controls
    output = camtool_run(
        "classes", "efficientnet_lite0", "egyptian", "--labels", str(tmp_path / "labels.txt")
    )
    assert_shown_not_sent(output, TITLE)
    output = camtool_run(
        "classes",
        "efficientnet_lite0",
        "egyptian",
        "--labels",
        str(tmp_path / "labels.txt"),
        "--json",
    )
    assert "\x1b" not in output and "\x07" not in output
    assert json.loads(output) == [{"index": 285, "name": f"Egyptian{TITLE}cat"}]


def test_export_and_eval_show_failed_file_names_as_escapes(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(CAT, images / "cat.png")
    (images / f"bad{RED}.jpg").write_bytes(b"not pixels")
    output = camtool_run("export", str(images), "-o", str(tmp_path / "out"), "-q")
    assert_shown_not_sent(output, RED)
    output = camtool_run(
        "eval", str(images / f"bad{RED}.jpg"), "-o", str(tmp_path / "eval"), "-q",
        "--method", "cam", "--metric", "average_drop",
    )  # fmt: skip
    assert_shown_not_sent(output, RED)


def test_fit_shows_class_folders_and_unreadable_files_as_escapes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for k, name in enumerate([f"cat{TITLE}", "dog"]):
        (data / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (24, 24), (40 * i, 90 * k, 90)).save(data / name / f"{i}.png")
    (data / "dog" / f"broken{CLEAR}.png").write_bytes(b"not pixels")
    output = camtool_run(
        "fit", str(data), "-o", str(tmp_path / "model"), "--input-size", "32", "--epochs", "1",
        "--no-cache", "--device", "cpu",
    )  # fmt: skip
    assert (tmp_path / "model" / "card.toml").is_file(), output
    assert_shown_not_sent(output, CLEAR)  # the warning that leaves the broken file out


def test_an_error_is_one_line_whatever_newlines_its_input_holds(tmp_path: Path) -> None:
    missing = tmp_path / "bad\nError: forged.jpg"
    environ = {k: v for k, v in os.environ.items() if k != "CAMTOOL_DEBUG"}
    done = subprocess.run(
        [sys.executable, "-m", "camtool.cli", "explain", str(missing), "-o", str(tmp_path / "o")],
        capture_output=True, text=True, env=environ, timeout=600,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("Error: ")
    assert "bad\\x0aError: forged.jpg" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "camtool.cli", "explain", str(CAT), "--method", "x\nError: fake"],
        capture_output=True, text=True, env=environ, timeout=600,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "x\\x0aError: fake" in done.stderr


def test_models_lists_a_broken_cards_file_as_it_is_named(tmp_path: Path) -> None:
    (tmp_path / "x[red]y.toml").write_text("not = [toml")
    output = camtool_run("models", env={"CAMTOOL_MODELS": str(tmp_path), "COLUMNS": "200"})
    assert f"x[red]y: {tmp_path / 'x[red]y.toml'}" in output
