"""How an export run ends and which engine runs it: summary.json also after a run that stopped on
an error, `--ray` without Ray installed, a `--ray` value that is an input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from camtool.cli import app
from tests.conftest import CAT, COFFEE

runner = CliRunner()


def test_a_run_stopped_by_an_error_still_writes_its_summary(tmp_path: Path) -> None:
    """The file system refuses a folder (OUT/sub is a file): the run stops with one error line
    and exit 1, and summary.json says why and counts what the manifest lists."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(CAT, folder / "a.png")
    shutil.copy(COFFEE, folder / "sub" / "b.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_text("a file where the export needs a folder")
    result = runner.invoke(app, ["export", str(folder), "-o", str(out), "--workers", "0", "-q"])
    assert result.exit_code == 1, result.stderr
    assert result.stderr.startswith(f"Error: {out / 'sub'}: cannot write here")
    assert result.stderr.count("\n") == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == result.stderr.removeprefix("Error: ").strip()
    assert summary["interrupted"] is False and summary["engine"] == "local"
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    ok = [r for r in records if r.get("type") == "image" and r["status"] == "ok"]
    assert summary["exported"] == len(ok) and summary["total"] == 2


def test_ray_engine_without_ray_says_what_to_install(tmp_path: Path) -> None:
    """Without Ray: one line naming the extra, exit 1, nothing written."""
    code = (
        "import sys; sys.modules['ray'] = None; "  # `import ray` fails as when not installed
        "from camtool.cli import app; app()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "export", str(CAT), "-o", str(tmp_path / "out"), "--ray"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        "Error: --ray: needs Ray Data, which is not installed: install camtool's ray extra "
        "(pip install '.[ray]' in its checkout) or pip install 'ray[data]>=2.60'\n"
    )
    assert not (tmp_path / "out").exists()


def test_ray_value_that_is_an_input_is_a_usage_error(tmp_path: Path) -> None:
    """`--ray FOLDER IMAGE` (the option before the inputs) is refused in one line, exit 2."""
    args = ["export", "--ray", str(CAT.parent), str(COFFEE), "-o", str(tmp_path / "o")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith(f"Error: --ray: '{CAT.parent}' is not a cluster address")
    assert result.stderr.count("\n") == 1
