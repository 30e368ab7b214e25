"""Defects a second adversarial pass found after the hardening fixes, each through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from camtool.models.cards import find_card
from camtool.models.weights import verified_weights_file
from tests.conftest import CAT, ROOT


def camtool_cli(
    *args: str, stdout: int | None = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "camtool.cli", *args],
        stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120, env=env,
    )  # fmt: skip


@pytest.mark.parametrize(
    "line",
    [
        {"type": "image", "input": "in/c1.png", "status": "ok", "outputs": [1]},
        {"type": "image", "input": "in/c1.png", "status": "ok", "outputs": [], "predictions": [1]},
        {"type": "image", "input": "in/c1.png", "status": "ok", "explained": "x"},
        {"type": "image", "input": "in/c1.png", "status": "ok", "predictions": [{"name": 1}]},
        {"type": "run", "cwd": 5, "settings": []},
        {"type": "image", "input": "in/c1.png", "status": "failed"},
    ],
)
def test_a_manifest_record_with_wrong_field_types_is_one_clear_error(
    tmp_path: Path, line: dict[str, object]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    manifest = out / "manifest.jsonl"
    manifest.write_text(json.dumps({"type": "run", "cwd": str(tmp_path), "settings": {}}) + "\n"
                        + json.dumps(line) + "\n")  # fmt: skip
    result = camtool_cli("report", str(out))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {manifest}: line 2 ")
    assert "internal error" not in result.stderr


def test_json_to_a_full_stdout_is_one_error_line(tmp_path: Path) -> None:
    with open("/dev/full", "w") as full:
        result = camtool_cli(
            "explain", str(CAT), "--json", "-o", str(tmp_path), stdout=full.fileno()
        )
    assert result.returncode == 1
    assert result.stderr == "Error: <stdout>: cannot write the output: No space left on device\n"


def test_finite_weights_that_overflow_are_named(tmp_path: Path) -> None:
    state = torch.load(verified_weights_file(find_card("efficientnet_lite0")), weights_only=True)
    state["_fc.weight"].fill_(1e38)
    path = tmp_path / "big.pth"
    torch.save(state, path)
    result = camtool_cli(
        "explain", str(CAT), "--method", "cam", "--weights", str(path), "-o", str(tmp_path / "o")
    )
    assert result.returncode == 1
    assert "NaN or infinity on a probe image" in result.stderr and "not exact" not in result.stderr
    assert len(result.stderr.splitlines()) == 1
