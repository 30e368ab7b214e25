"""``camtool export`` (many images to files and a manifest) and ``camtool gallery`` (its HTML
gallery; ``camtool report``, its former name, is kept as a hidden alias)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from typer.core import TyperCommand

from camtool.cli.app import app
from camtool.cli.console import console, err_console, errors_to_exit_codes, print_error, say
from camtool.cli.options import (
    AlphaOption,
    BoxOption,
    BoxThresholdOption,
    ClassesOption,
    ClassifierOption,
    ColormapOption,
    CropOption,
    DecoderKind,
    DeviceOption,
    ExportRunner,
    ImageFormat,
    LabelsOption,
    LayerOption,
    LegendOption,
    MapsOption,
    MethodOption,
    ModelOption,
    RawDtype,
    RawFormat,
    ScaleOption,
    TargetOption,
    UnsafePickleOption,
    UpsampleOption,
    WeightsOption,
    collect_model_options,
)
from camtool.cli.usage import check_with
from camtool.settings import (
    DEFAULT_ALPHA,
    DEFAULT_BOX_THRESHOLD,
    DEFAULT_COLORMAP,
    DEFAULT_IMAGE_FORMAT,
    DEFAULT_OUT_DIR,
    DEFAULT_UPSAMPLE,
    DTYPE_CHOICES,
    parse_dtype,
)

if TYPE_CHECKING:
    from camtool.export.run import ExportReport

RAY_DEFAULT = "(default)"  # `--ray` without an address


class _OptionalRayValue(TyperCommand):
    """A command whose ``--ray`` takes an optional value: ``--ray`` alone (last, or before
    another option) reads as ``--ray=(default)``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """Click's parsing, after a bare ``--ray`` became ``--ray=(default)``."""
        args = list(args)
        for i, arg in enumerate(args):
            if arg == "--":
                break
            if arg == "--ray" and (i + 1 == len(args) or args[i + 1].startswith("-")):
                args[i] = f"--ray={RAY_DEFAULT}"
        return super().parse_args(ctx, args)


@app.command(
    cls=_OptionalRayValue,
    short_help="Explain many images into a folder of overlays and a manifest.",
)
def export(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders (recursive), globs, or @list.txt files.", show_default=False
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Output folder (mirrors the inputs' paths)."),
    ] = Path(DEFAULT_OUT_DIR),
    model: ModelOption = None,
    method: MethodOption = None,
    classes: ClassesOption = None,
    maps: MapsOption = 1,
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", min=1, help="Predictions per image in the manifest.")
    ] = 5,
    image_format: Annotated[
        ImageFormat, typer.Option("--format", help="Overlay file format (jpg: smaller, faster).")
    ] = DEFAULT_IMAGE_FORMAT,
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG quality.")] = 90,
    alpha: AlphaOption = DEFAULT_ALPHA,
    colormap: ColormapOption = DEFAULT_COLORMAP,
    box: BoxOption = False,
    scale: ScaleOption = "joint",
    legend: LegendOption = False,
    box_threshold: BoxThresholdOption = DEFAULT_BOX_THRESHOLD,
    upsample: UpsampleOption = DEFAULT_UPSAMPLE,
    heatmap: Annotated[
        bool, typer.Option("--heatmap", help="Also write the bare heatmap (8-bit PNG).")
    ] = False,
    raw: Annotated[
        RawFormat | None,
        typer.Option(help="Also write the raw CAMs at feature resolution.", show_default="none"),
    ] = None,
    raw_dtype: Annotated[RawDtype, typer.Option(help="dtype of the raw CAMs.")] = "float16",
    crop: CropOption = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Skip inputs the manifest lists as done.")
    ] = False,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="Images per forward pass.", show_default="16 on CPU, 64 on GPU"),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=0, help="Decoding workers.", show_default="CPUs - 1, at most 8"),
    ] = None,
    decoder: Annotated[
        DecoderKind,
        typer.Option(help="Decode in threads (small machines) or processes (many cores)."),
    ] = "threads",
    device: DeviceOption = "auto",
    runner: Annotated[
        ExportRunner,
        typer.Option(
            help="local: decode and render on CPU threads; device: decode (JPEG), render and box "
            "on the model's device; auto: device on a CUDA GPU, else local."
        ),
    ] = "auto",
    weights: WeightsOption = None,
    unsafe_load_pickle: UnsafePickleOption = False,
    labels: LabelsOption = None,
    layer: LayerOption = None,
    classifier: ClassifierOption = None,
    target: TargetOption = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            help=f"One of {DTYPE_CHOICES} (autocast; the identity check adapts).",
            show_default="bfloat16 for the device runner on CUDA, else float32",
            callback=check_with(parse_dtype),
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")
    ] = False,
    gallery: Annotated[
        bool,
        typer.Option(
            "--report",
            help="Also write the gallery of the results, OUT/index.html (as `camtool gallery OUT`).",
        ),
    ] = False,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="[ADDRESS]",
            help="Run on a Ray cluster (needs camtool's ray extra): ADDRESS of a running one "
            "(auto, HOST:PORT, ray://HOST:PORT), or alone for a local one.",
            show_default="no Ray: this machine",
        ),
    ] = None,
    ray_actors: Annotated[
        int | None,
        typer.Option(min=1, help="Ray actors.", show_default="one per GPU, else one per CPU"),
    ] = None,
) -> None:
    """Explain every image of folders, globs or lists and write overlays plus a manifest.

    Exit code 0 when every input was exported, 3 when some failed (each is in the manifest with
    its reason), 130 when interrupted (finish with --resume), 1 when the output cannot be written.
    """
    with errors_to_exit_codes():
        from camtool.export import ExportOptions
        from camtool.export import export as export_images
        from camtool.export.ray_engine import ray_address
        from camtool.models.loading import DEFAULT_MODEL

        engine: Literal["local", "ray"] = (
            "ray" if ray is not None or ray_actors is not None else "local"
        )
        address = ray_address(ray, RAY_DEFAULT) if ray is not None else None

        options = ExportOptions(
            image_format=image_format, quality=quality, alpha=alpha, colormap=colormap,
            box=box, heatmap=heatmap, raw=raw, raw_dtype=raw_dtype,
            top_k=top_k, scale=scale, legend=legend, box_threshold=box_threshold,
            upsample=upsample,
        )  # fmt: skip
        report = export_images(
            inputs, out, (model or [DEFAULT_MODEL])[0], method=(method or ["auto"])[0], classes=classes, maps=maps, crop=crop, options=options, resume=resume,
            device=device, batch_size=batch_size, workers=workers, decoder=decoder, progress=not quiet,
            runner=runner, engine=engine, ray_address=address, ray_actors=ray_actors,
            **collect_model_options(weights, labels, layer, classifier, dtype, unsafe_load_pickle, target),
        )  # fmt: skip
        print_export_problems(report)
        if gallery:
            from camtool.gallery import write_gallery

            page = write_gallery(report.out_dir, progress=not quiet)
            if not quiet:
                say(f"gallery: {page}", whole=True)
        if not quiet:
            print_export_summary(report)
        raise typer.Exit(report.exit_code)


def print_export_problems(report: ExportReport) -> None:
    """Print what an export removed, skipped or failed on (shown even with ``--quiet``): the
    unfinished files it removed, the inputs inside the output folder it skipped, and the first 20
    failed inputs as ``Error:`` lines (the rest are in the manifest)."""
    if report.removed:
        console.print(
            f"removed {report.removed} unfinished files (left by an interrupted run) "
            f"from {report.out_dir}",
            markup=False,
        )
    if report.excluded:
        count = len(report.excluded)
        shown = ", ".join(report.excluded[:3]) + (", ..." if count > 3 else "")
        err_console.print(
            f"Warning: skipped {count} input{'' if count == 1 else 's'} inside the output "
            f"folder {report.out_dir} (never read as input): {shown}",
            markup=False,
        )
    for failure in report.failures[:20]:
        print_error(
            failure.error
            if failure.error.startswith(failure.input)
            else f"{failure.input}: {failure.error}"
        )
    if len(report.failures) > 20:
        print_error(
            f"{report.manifest}: {len(report.failures) - 20} more failed inputs are listed here"
        )


def print_export_summary(report: ExportReport) -> None:
    """Print the one-line summary of an export: counts, time, throughput and where it wrote."""
    console.print(
        f"exported {report.exported}, failed {report.failed}, skipped {report.skipped} "
        f"(already done) of {report.total}"
        + (f" (+{len(report.excluded)} inside the output folder)" if report.excluded else "")
        + f" in {report.seconds:.1f} s "
        f"({report.images_per_second:.1f} images/s) -> {report.out_dir} (manifest: {report.manifest})",
        markup=False,
    )


@app.command("gallery", short_help="Write the HTML gallery of an export (opens from file://).")
def write_export_gallery(
    export_dir: Annotated[
        Path, typer.Argument(help="The output folder of a `camtool export` run.")
    ],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Write EXPORT_DIR/index.html: a gallery of an export that opens from file:// (no network)."""
    with errors_to_exit_codes():
        from camtool.gallery import write_gallery

        page = write_gallery(export_dir, progress=not quiet)
        say(f"gallery: {page}", whole=True)


app.command("report", hidden=True)(write_export_gallery)  # its name before it was `gallery`
