"""``camtool explain``: classify images (or videos), print the predictions, write overlays."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from camtool.cli.app import app
from camtool.cli.console import console, errors_to_exit_codes, print_error, say
from camtool.cli.options import (
    AlphaOption,
    BoxOption,
    BoxThresholdOption,
    ClassesOption,
    ClassifierOption,
    ColormapOption,
    CropOption,
    DeviceOption,
    DtypeOption,
    ImageFormat,
    LabelsOption,
    LayerOption,
    LegendOption,
    MapsOption,
    ScaleOption,
    TargetOption,
    UnsafePickleOption,
    UpsampleOption,
    VerboseOption,
    WeightsOption,
    collect_model_options,
)
from camtool.settings import (
    DEFAULT_ALPHA,
    DEFAULT_BOX_THRESHOLD,
    DEFAULT_COLORMAP,
    DEFAULT_IMAGE_FORMAT,
    DEFAULT_MODEL,
    DEFAULT_OUT_DIR,
    DEFAULT_UPSAMPLE,
    output_folder,
)

if TYPE_CHECKING:
    from camtool.explanation import Explanation
    from camtool.video import VideoReport


@app.command(short_help="Classify images and write a CAM overlay per image and class.")
def explain(
    images: Annotated[
        list[Path],
        typer.Argument(
            help="Image files (or videos: .mp4, .avi, .mov, ...) to explain.",
            show_default=False,
            readable=False,  # an unreadable input fails alone, like a missing one (exit 3)
        ),
    ],
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Model: a name from `camtool models`, a card file, a torchvision name with --weights, "
            "NAME:WEIGHTS, timm:NAME (pretrained: from the Hugging Face cache), hf:FOLDER (transformers), "
            "or a TorchScript file. Repeat to compare models (with --sheet).",
            show_default=DEFAULT_MODEL,
        ),
    ] = None,
    methods: Annotated[
        list[str] | None,
        typer.Option(
            "--method",
            help="How maps are made: cam (exact Class Activation Maps); gradcam, gradcam++, "
            "xgradcam, layercam, hirescam, scorecam, eigencam (maps of one layer, --layer; not "
            "decompositions); or auto (the first method that can explain the model; predictions "
            "alone when none can). Repeat to compare methods (with --sheet).",
            show_default="auto",
        ),
    ] = None,
    classes: ClassesOption = None,
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", min=1, help="Number of predictions to list.")
    ] = 5,
    maps: MapsOption = 1,
    alpha: AlphaOption = DEFAULT_ALPHA,
    colormap: ColormapOption = DEFAULT_COLORMAP,
    box: BoxOption = False,
    scale: ScaleOption = "joint",
    legend: LegendOption = False,
    box_threshold: BoxThresholdOption = DEFAULT_BOX_THRESHOLD,
    upsample: UpsampleOption = DEFAULT_UPSAMPLE,
    crop: CropOption = False,
    device: DeviceOption = "auto",
    weights: WeightsOption = None,
    unsafe_load_pickle: UnsafePickleOption = False,
    labels: LabelsOption = None,
    layer: LayerOption = None,
    classifier: ClassifierOption = None,
    target: TargetOption = None,
    dtype: DtypeOption = "float32",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Folder for the pictures (with --json, none are written unless --out or --sheet "
            "is given).",
            show_default=f"{DEFAULT_OUT_DIR}; none with --json",
        ),
    ] = None,
    image_format: Annotated[
        ImageFormat, typer.Option("--format", help="Overlay file format.")
    ] = DEFAULT_IMAGE_FORMAT,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document instead of tables.")
    ] = False,
    sheet: Annotated[
        bool,
        typer.Option(
            "--sheet", help="Also write <stem>_sheet: the input and the overlays of the maps."
        ),
    ] = False,
    smooth: Annotated[
        int, typer.Option(min=1, help="Videos: average each frame's heatmap over this many frames.")
    ] = 1,
    verbose: VerboseOption = False,
) -> None:
    """Classify images, print the top-k classes and write a CAM overlay per image and class.

    With --sheet, also one picture per image: the input beside the overlays of the mapped
    classes (--maps or --class), one row per --model and --method when several are given.
    """
    with errors_to_exit_codes():
        from camtool.binding import bind_method
        from camtool.cli.progress_view import shown_progress
        from camtool.explain_to_folder import FilesReport, Rendering, explain_files
        from camtool.models.loading import DEFAULT_MODEL

        options = collect_model_options(
            weights, labels, layer, classifier, dtype, unsafe_load_pickle, target
        )
        bound = [
            bind_method(name, method, classes, device=device, **options)
            for name in (models or [DEFAULT_MODEL])
            for method in (methods or ["auto"])
        ]
        rendering = Rendering(alpha, colormap, box, image_format, scale, legend)
        report = FilesReport()
        doc: dict[str, Any] = {
            "model": bound[0].model.name,
            "method": bound[0].explainer.method,
            "made_from": bound[0].explainer.describe(),
            "head": bound[0].explainer.describe(),  # the old key, kept for one release
            "head_detail": bound[0].explainer.as_dict(),
            "models": [
                {
                    "model": b.model.name,
                    "method": b.explainer.method,
                    "class_agnostic": bool(b.explainer.as_dict().get("class_agnostic", False)),
                    "made_from": b.explainer.describe(),
                    "head": b.explainer.describe(),  # the old key, kept for one release
                    "head_detail": b.explainer.as_dict(),
                }
                for b in bound
            ],
            "rendering": {
                "colormap": colormap,
                "alpha": alpha,
                "scale": scale,
                "legend": legend,
                "box": box,
                "upsample": upsample,
            },
            "images": [],
            "errors": [],
        }
        folder = output_folder(out, pictures_wanted=sheet or not as_json)
        results = explain_files(
            images, folder, bound, maps=maps, top_k=top_k, crop=crop, box_threshold=box_threshold,
            upsample=upsample, rendering=rendering, sheet=sheet, smooth=smooth, progress=not as_json,
        )  # fmt: skip
        with shown_progress(not as_json):  # Score-CAM's forward passes, say
            for result in results:
                report.results.append(result)
                if result.error is not None:
                    print_error(result.error)
                    doc["errors"].append({"input": result.input, "error": result.error})
                if result.video is not None:
                    doc.setdefault("videos", []).append(summarize_video(result.video, not as_json))
                shown: set[str] = set()  # the models whose top-k table this image has printed
                for ex, outputs in zip(result.explanations, result.outputs, strict=True):
                    doc["images"].append({**ex.to_dict(), "outputs": [str(o) for o in outputs]})
                    if not as_json:
                        print_explanation(ex, list(outputs), verbose, table=ex.model not in shown)
                        shown.add(ex.model)
        if as_json:
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        raise typer.Exit(report.exit_code)


def summarize_video(report: VideoReport, show: bool) -> dict[str, Any]:
    """The JSON summary of an overlaid video; with ``show``, also a line saying what was written."""
    if show:
        console.print(
            f"{report.source}: wrote {report.output} ({report.frames} frames, {report.width}x{report.height} "
            f"at {report.fps:g} fps, {report.frames_per_second:.1f} frames/s)",
            markup=False,
        )
    return {"input": str(report.source), "output": str(report.output), "frames": report.frames,
            "expected_frames": report.expected_frames, "fps": report.fps, "width": report.width,
            "height": report.height}  # fmt: skip


def build_predictions_table(ex: Explanation) -> Table:
    """Return a rich table of an explanation's top-k classes (the explained ones marked)."""
    table = Table()
    table.add_column("#", justify="right")
    table.add_column("class")
    table.add_column("index", justify="right")
    table.add_column("probability", justify="right")
    table.add_column("logit", justify="right")
    explained = {s.index for s in ex.explained}
    agnostic = " (class-agnostic)" if ex.class_agnostic else ""
    for rank, p in enumerate(ex.predictions, 1):
        mark = f" [bold green]◀ map{agnostic}[/]" if p.index in explained else ""
        table.add_row(
            str(rank),
            f"{escape(p.name)}{mark}",
            str(p.index),
            f"{p.probability:.4f}",
            f"{p.logit:.3f}",
        )
    return table


def print_explanation(
    ex: Explanation, outputs: list[Path], verbose: bool = False, table: bool = True
) -> None:
    """Print one explained image: a heading and the top-k table (``table``: once per image and
    model, however many methods map it), what the maps are in plain words (``verbose``: also
    the head, residuals and network input), and the files written, one per line and never
    wrapped inside a name."""
    from camtool.explanation import describe_maps

    if table:
        height, width = int(ex.image.shape[1]), int(ex.image.shape[2])
        say(f"{ex.source} ({width}x{height} px), {ex.model}", whole=True)
        console.print(build_predictions_table(ex))
    for line in describe_maps(ex, verbose):
        say(line)
    if outputs:
        say("Wrote:")
        for path in outputs:
            say(f"  {path}", whole=True)
