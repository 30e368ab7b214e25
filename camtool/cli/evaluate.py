"""``camtool eval``: measure the maps of each method (faithfulness and localization)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from camtool.cli.app import app
from camtool.cli.console import console, errors_to_exit_codes, print_error, say
from camtool.cli.options import (
    BoxThresholdOption,
    DeviceOption,
    DtypeOption,
    LabelsOption,
    ModelOption,
    UpsampleOption,
    WeightsOption,
)
from camtool.settings import DEFAULT_BOX_THRESHOLD, DEFAULT_UPSAMPLE


def build_eval_table(report: Any) -> Table:
    """A rich table of an evaluation: one row per measure (its direction: ↓ lower is better, ↑
    higher), one column per method, each cell the mean over the images above its 95% interval;
    narrow enough for 80 columns with a few methods."""
    methods = list(dict.fromkeys(s.method for s in report.summaries))
    found = {(s.method, s.measure): s for s in report.summaries}
    count = len(report.records)
    table = Table(
        title=f"mean [95% interval] over {count} image{'' if count == 1 else 's'}",
        caption="↓ lower is better, ↑ higher is better",
    )
    table.add_column("measure", no_wrap=True)
    for method in methods:
        table.add_column(method, justify="right")
    for measure in dict.fromkeys(s.measure for s in report.summaries):
        better = next(s.better for s in report.summaries if s.measure == measure)
        cells = []
        for method in methods:
            s = found.get((method, measure))
            cells.append(
                f"{_number(s.mean, s)}{s.unit}\n[{_number(s.low, s)}, {_number(s.high, s)}]"
                if s is not None
                else "-"
            )
        table.add_row(f"{measure} {'↓' if better == 'lower' else '↑'}", *cells)
    return table


def _number(value: float, summary: Any) -> str:
    """A measure's value in a table cell: a residual in scientific notation, a percentage with
    one decimal, anything else (an area under a curve, a probability) with three."""
    if summary.measure == "completeness":
        return f"{value:.1e}".replace("e-0", "e-").replace("e+0", "e+")  # 3.4e-7
    return f"{value:.1f}" if summary.unit == "%" else f"{value:.3f}"


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
    upsample: UpsampleOption = DEFAULT_UPSAMPLE,
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

    Quick look, one metric in few steps: camtool eval photos/ --metric deletion --steps 16
    (a full run is hundreds of forward passes per image and method; Score-CAM's maps 1 + C).

    Exit code 0 when every image was evaluated, 3 when some failed (each is listed), 130 when
    interrupted (finish with --resume).
    """
    with errors_to_exit_codes():
        from camtool.cli.progress_view import shown_progress
        from camtool.metrics.evaluate import evaluate
        from camtool.models.loading import DEFAULT_MODEL

        with shown_progress(not quiet) as progress:
            report = evaluate(
                images, method or ["cam"], boxes, metric, (model or [DEFAULT_MODEL])[0],
                size=size, out=out, resume=resume, steps=steps, box_threshold=box_threshold,
                batch_size=batch_size, device=device, progress=progress or False,
                weights=str(weights) if weights else None,
                labels=str(labels) if labels else None, dtype=dtype, rescale_boxes=rescale_boxes,
                upsample=upsample,
            )  # fmt: skip
        for failure in report.failures[:20]:
            print_error(f"{failure.input}: {failure.error}")
        if not quiet:
            console.print(build_eval_table(report))
            console.print(
                f"evaluated {report.evaluated}, failed {report.failed}, skipped {report.skipped} "
                f"(already done) of {report.total} in {report.seconds:.1f} s",
                markup=False,
            )
            page = next((f for f in report.files if f.name == "index.html"), None)
            if page is not None:
                say(f"report: {page}", whole=True)
        for measure, skipped in report.not_applicable.items():  # shown even with --quiet
            names = ", ".join(skipped)
            say(f"{measure}: not measured for {names}: no exact decomposition of the logit")
        if report.rescaled:  # shown even with --quiet: camtool changed the boxes
            count = len(report.rescaled)
            console.print(
                f"rescaled the boxes of {count} image{'' if count == 1 else 's'} to the image "
                "size (their annotation declares another; see boxes_rescaled in results.jsonl)",
                markup=False,
                soft_wrap=True,
            )
        raise typer.Exit(report.exit_code)
