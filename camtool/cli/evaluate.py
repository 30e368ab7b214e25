"""``camtool eval``: measure the maps of each method (faithfulness and localization)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from camtool.cli.app import app
from camtool.cli.console import console, errors_to_exit_codes, print_error
from camtool.cli.options import (
    BoxThresholdOption,
    DeviceOption,
    DtypeOption,
    LabelsOption,
    ModelOption,
    WeightsOption,
)
from camtool.settings import DEFAULT_BOX_THRESHOLD


def build_eval_table(report: Any) -> Table:
    """A rich table of an evaluation: one row per method, per measure its mean and 95% interval."""
    measures = list(dict.fromkeys(s.measure for s in report.summaries))
    table = Table(title="mean [95% interval]")
    table.add_column("method")
    for measure in measures:
        better = next(s.better for s in report.summaries if s.measure == measure)
        table.add_column(f"{measure} ({'↓' if better == 'lower' else '↑'})", justify="right")
    for method in dict.fromkeys(s.method for s in report.summaries):
        cells = []
        for measure in measures:
            found = [s for s in report.summaries if (s.method, s.measure) == (method, measure)]
            cells.append(
                f"{found[0].mean:.3g}{found[0].unit} [{found[0].low:.3g}, {found[0].high:.3g}]"
                if found
                else "-"
            )
        table.add_row(method, *cells)
    return table


@app.command("eval", short_help="Measure the maps: faithfulness, and localization with --boxes.")
def evaluate_methods(
    images: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders (recursive), globs, or @list.txt files.", show_default=False
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("camtool_eval"),
    boxes: Annotated[
        Path | None,
        typer.Option(
            "--boxes",
            help="Ground-truth boxes: Pascal VOC XML (a file or folder), COCO JSON, or CSV "
            "(file,class,x1,y1,x2,y2). Without them only the faithfulness metrics run.",
            show_default="none",
        ),
    ] = None,
    rescale_boxes: Annotated[
        bool,
        typer.Option(
            "--rescale-boxes",
            help="Scale the boxes of an image whose size is not the one the VOC/COCO file "
            "declares (drawn on a resized copy) to the image; by default that image fails.",
        ),
    ] = False,
    method: Annotated[
        list[str] | None,
        typer.Option("--method", help="Method to evaluate (repeatable).", show_default="cam"),
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "--metric",
            help="Metric (repeatable): deletion, insertion, road, average_drop, completeness, "
            "pointing_game, localization, max_box_acc.",
            show_default="all that apply",
        ),
    ] = None,
    model: ModelOption = None,
    size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Square network input every image is squeezed to.",
            show_default="the model's input size",
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(min=1, help="Deletion/insertion steps.", show_default="224, the paper's"),
    ] = None,
    box_threshold: BoxThresholdOption = DEFAULT_BOX_THRESHOLD,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 8,
    resume: Annotated[
        bool, typer.Option("--resume", help="Skip images results.jsonl lists as done.")
    ] = False,
    device: DeviceOption = "auto",
    weights: WeightsOption = None,
    labels: LabelsOption = None,
    dtype: DtypeOption = "float32",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table.")] = False,
) -> None:
    """Measure the maps of each method: faithfulness (deletion, insertion, ROAD, Average Drop,
    completeness) and, with --boxes, localization; write results.json, results.csv, curve plots
    and index.html into OUT.

    Exit code 0 when every image was evaluated, 3 when some failed (each is listed), 130 when
    interrupted (finish with --resume).
    """
    with errors_to_exit_codes():
        from camtool.metrics.evaluate import evaluate
        from camtool.models.loading import DEFAULT_MODEL

        report = evaluate(
            images, method or ["cam"], boxes, metric, (model or [DEFAULT_MODEL])[0],
            size=size, out=out, resume=resume, steps=steps, box_threshold=box_threshold,
            batch_size=batch_size, device=device, progress=not quiet,
            weights=str(weights) if weights else None, labels=str(labels) if labels else None,
            dtype=dtype, rescale_boxes=rescale_boxes,
        )  # fmt: skip
        for failure in report.failures[:20]:
            print_error(f"{failure.input}: {failure.error}")
        if not quiet:
            console.print(build_eval_table(report))
            console.print(
                f"evaluated {report.evaluated}, failed {report.failed}, skipped {report.skipped} "
                f"(already done) of {report.total} in {report.seconds:.1f} s -> {out}",
                markup=False,
            )
        if report.rescaled:  # shown even with --quiet: camtool changed the boxes
            count = len(report.rescaled)
            console.print(
                f"rescaled the boxes of {count} image{'' if count == 1 else 's'} to the image "
                "size (their annotation declares another; see boxes_rescaled in results.jsonl)",
                markup=False,
                soft_wrap=True,
            )
        raise typer.Exit(report.exit_code)
