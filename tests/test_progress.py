"""camtool.progress: long computations count their real unit (forward passes through the
network) and say what they cost; the command line draws them."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

import camtool
import camtool.progress
from camtool.cli import app
from camtool.io.images import load_image
from camtool.progress import Meter, Work, WorkBars, cost_text, reporting
from tests.conftest import CAT

runner = CliRunner()


def counted_rows(model: camtool.LoadedModel) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    """A real forward hook on the network: the images (batch rows) of every forward pass."""
    rows: list[int] = []
    handle = model.module.register_forward_hook(
        lambda _m, args, _out: rows.append(int(args[0].shape[0]))
    )
    return rows, handle


def test_scorecam_reports_its_forward_passes_and_their_count_is_what_ran(
    lite0: camtool.LoadedModel,
) -> None:
    explainer = camtool.methods.bind("scorecam", lite0)
    assert explainer.forward_passes_per_image == 1 + 1280  # the reading pass, one per channel
    image = load_image(CAT).float().div(255)[None]
    pixels = torch.nn.functional.interpolate(image, size=(64, 64), mode="bilinear")
    mean = torch.tensor(lite0.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(lite0.preprocessing.std).view(1, 3, 1, 1)
    batch = (pixels - mean) / std
    events: list[tuple[Work, int]] = []
    rows, handle = counted_rows(lite0)
    try:
        with reporting(lambda work, done: events.append((work, done))):
            explainer(batch)
    finally:
        handle.remove()
    first, last = events[0], events[-1]
    assert first[1] == 0 and first[0].name == "Score-CAM" and first[0].unit == "forward passes"
    assert (first[0].total, first[0].per_image, first[0].images) == (1 + 1280 + 1, 1281, 1)
    dones = [done for _, done in events]
    assert dones == sorted(dones)  # it only moves forward
    # the exact count once the shared masks are known: what really ran through the network
    assert last[1] == last[0].total == sum(rows)
    assert sum(rows) < first[0].total  # at 2x2 cells many channels share one masked input
    assert {w.serial for w, _ in events} == {first[0].serial}
    events.clear()
    explainer(batch)  # nobody listens: nothing is sent
    assert events == []


def test_a_meter_counts_estimates_and_corrects_its_total() -> None:
    events: list[tuple[Work, int]] = []
    meter = Meter(Work("t", "steps", 10), lambda w, d: events.append((w, d)))
    meter.advance(2)
    meter.advance(3)
    assert [d for _, d in events] == [0, 2, 5] and events[-1][0].total == 10
    meter.retotal(7)  # the exact count is known: fewer
    meter.advance(4)  # more than that: the total follows what was done
    assert (events[-1][0].total, events[-1][1]) == (9, 9)
    assert events[-1][0].seconds is not None  # the last step estimates at the latest
    meter.finish()
    assert events[-1][0].total == events[-1][1] == 9


def test_the_cost_line_is_printed_only_for_work_longer_than_a_few_seconds() -> None:
    out = io.StringIO()
    console = Console(file=out, width=80)
    work = Work("Score-CAM", "forward passes", 2563, per_image=1281, images=2, serial=1)
    with WorkBars(console) as bars:
        bars(work, 0)
        bars(replace(work, seconds=1.0), 300)
        assert "forward passes per image" not in out.getvalue()
        bars(replace(work, seconds=95.0), 600)
        bars(replace(work, seconds=120.0), 900)  # said once
    text = out.getvalue()
    line = "Score-CAM: 1,281 forward passes per image, 2,563 for 2 images, about 1.6 min"
    assert text.count(line) == 1
    assert cost_text(Work("eval", "forward passes", 40, 40, 1, 12.0)) == (
        "eval: 40 forward passes per image, about 12 s"
    )


def test_explain_scorecam_prints_its_cost_and_draws_its_passes_at_80_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(camtool.progress, "COST_LINE_SECONDS", 0.0)  # whatever this CPU's speed
    args = ["explain", str(CAT), "--method", "scorecam", "--layer", "_blocks.1"]
    result = runner.invoke(app, [*args, "-o", str(tmp_path)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    # _blocks.1 has 24 channels: the reading pass, 24 masked inputs, and the blank input
    assert lines[0].startswith("Score-CAM: 25 forward passes per image, about ")
    bar = next(line for line in lines if line.startswith("Score-CAM ━"))
    assert " 26/26 " in bar and "passes/s" in bar and len(bar.rstrip()) <= 80
    as_json = runner.invoke(app, [*args, "--json"], env={"COLUMNS": "80"})
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["method"] == "scorecam"


def test_reporting_refuses_a_callback_that_cannot_be_called_on_entry() -> None:
    with pytest.raises(camtool.InvalidArgumentError) as caught:  # was a TypeError at 1st report
        reporting(42).__enter__()  # type: ignore[arg-type]
    assert str(caught.value) == "callback: got 42; give a function of (work, done), or None"
    assert camtool.progress.current() is None
