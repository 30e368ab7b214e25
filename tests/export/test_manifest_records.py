"""A manifest is read by one reader with one schema (camtool.journal.record_problem): a line whose
fields have the wrong types is one clear error naming the file and the line, never a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import camtool_cli


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
