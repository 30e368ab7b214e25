"""The ``camtool`` command: a thin Typer layer over the public API.

Each command parses its options, calls one library function, prints with rich, and turns
:class:`camtool.errors.CamtoolError` into ``Error: <subject>: <problem>`` on stderr and an exit
code (0 ok, 1 error, 2 usage, 3 some inputs failed). torch is imported inside the commands so
that ``camtool --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand

from camtool._version import __version__
from camtool.errors import (
    EXIT_ERROR,
    CamtoolError,
    UnsupportedModelError,
)
from camtool.naming import INVISIBLE, visible
from camtool.settings import (
    DEFAULT_ALPHA,
    DEFAULT_BOX_THRESHOLD,
    DEFAULT_COLORMAP,
    DEFAULT_IMAGE_FORMAT,
    DEFAULT_OUT_DIR,
    DEVICE_CHOICES,
    DTYPE_CHOICES,
    check_box_threshold,
    output_folder,
    parse_device,
    parse_dtype,
)
from camtool.cli.usage import CamtoolGroup, checked_by

if TYPE_CHECKING:
    from camtool.explanation import Explanation
    from camtool.video import VideoReport

app = typer.Typer(
    cls=CamtoolGroup,
    name="camtool",
    help="Exact Class Activation Maps: see where a CNN with a global-average-pooling head looks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


class TerminalConsole(Console):
    """A rich console that shows every string it prints with its control characters made visible
    (:func:`camtool.naming.visible`): labels, card names and descriptions, file names and error
    messages come from data, and an escape sequence among them must not set the window's title,
    clear the screen or colour the rest of the output. camtool's own styles (rich markup and
    styles) are not strings of the output and still apply."""

    def render_str(self, text: str, **options: Any) -> Text:
        """rich's :meth:`Console.render_str` of ``text`` made visible (every printed string,
        table cell and measured width goes through here)."""
        return super().render_str(visible(text), **options)


console = TerminalConsole()
err_console = TerminalConsole(stderr=True, highlight=False, soft_wrap=True)


# Choices, kept here so that `camtool --help` needs no torch (render.COLORMAPS holds the same names).
Colormap = Literal[
    "jet", "turbo", "viridis", "inferno", "magma", "plasma", "cividis", "hot", "parula", "twilight",
    "rainbow", "bone", "gray",
]  # fmt: skip
ImageFormat = Literal["png", "jpg"]
RawFormat = Literal["npy", "npz"]
RawDtype = Literal["float16", "float32"]
DecoderKind = Literal["threads", "processes"]
ExportRunner = Literal["auto", "local", "device"]
Scale = Literal["joint", "per-map"]


def print_error(error: object) -> None:
    """Print ``Error: <message>`` as one line on stderr."""
    err_console.print(f"Error: {error}", markup=False)


@contextmanager
def errors_to_exit_codes() -> Iterator[None]:
    """Turn camtool's errors into one line on stderr and their exit code; never a traceback."""
    try:
        yield
    except CamtoolError as exc:
        print_error(exc)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        print_error("interrupted")
        raise typer.Exit(130) from None
    except BrokenPipeError:  # `camtool ... | head`: the reader left; nothing more to say
        raise typer.Exit(EXIT_ERROR) from None
    except OSError as exc:
        if exc.filename is not None:
            raise
        print_error(f"<stdout>: cannot write the output: {exc.strerror or exc}")
        raise typer.Exit(EXIT_ERROR) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        if os.environ.get("CAMTOOL_DEBUG"):
            raise
        print_error(
            f"internal error: {type(exc).__name__}: {exc} (set CAMTOOL_DEBUG=1 for a traceback)"
        )
        raise typer.Exit(EXIT_ERROR) from None


def version_callback(value: bool) -> None:
    if value:
        console.print(f"camtool {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Exact Class Activation Maps: see where a CNN with a global-average-pooling head looks."""


def predictions_table(ex: Explanation) -> Table:
    """Return a rich table of an explanation's top-k classes (the explained ones marked)."""
    table = Table()
    table.add_column("#", justify="right")
    table.add_column("class")
    table.add_column("index", justify="right")
    table.add_column("probability", justify="right")
    table.add_column("logit", justify="right")
    explained = {s.index for s in ex.explained}
    for rank, p in enumerate(ex.predictions, 1):
        mark = " [bold green]◀ map[/]" if p.index in explained else ""
        table.add_row(
            str(rank),
            f"{escape(p.name)}{mark}",
            str(p.index),
            f"{p.probability:.4f}",
            f"{p.logit:.3f}",
        )
    return table


def print_explanation(ex: Explanation, outputs: list[Path], verbose: bool = False) -> None:
    """Print one explained image: a heading, the top-k table, what the maps are in plain words
    (``verbose``: also the head, residuals and network input), and the files written, one per
    line and never wrapped inside a name."""
    from camtool.explanation import describe_maps

    height, width = int(ex.image.shape[1]), int(ex.image.shape[2])
    say(f"{ex.source} ({width}x{height} px), {ex.model}", whole=True)
    console.print(predictions_table(ex))
    for line in describe_maps(ex, verbose):
        say(line)
    if outputs:
        say("Wrote:")
        for path in outputs:
            say(f"  {path}", whole=True)


def say(text: str, whole: bool = False) -> None:
    """Print plain text (no markup); ``whole``: never break the line (paths, names): a terminal
    narrower than the line wraps it, but rich inserts no line break into it."""
    console.print(text, markup=False, highlight=False, soft_wrap=whole)


def single(value: list[str] | None) -> list[str] | None:
    """Refuse an option given more than once where only one value makes sense."""
    if value and len(value) > 1:
        raise typer.BadParameter(
            f"given {len(value)} times; this command takes one (explain compares several)"
        )
    return value


ModelOption = Annotated[
    list[str] | None,
    typer.Option(
        "--model",
        "-m",
        help="Model: a name from `camtool models`, a card file, a torchvision name with --weights, "
        "NAME:WEIGHTS (e.g. resnet50:IMAGENET1K_V2), timm:NAME (pretrained: from the Hugging Face cache), "
        "hf:FOLDER (transformers), or a TorchScript file. [default: efficientnet_lite0]",
        callback=single,
        show_default=False,
    ),
]
WeightsOption = Annotated[
    Path | None,
    typer.Option(help="State dict (.pth/.pt read with weights_only=True, or .safetensors)."),
]
LabelsOption = Annotated[Path | None, typer.Option(help="Label file, one class name per line.")]
UnsafePickleOption = Annotated[
    bool,
    typer.Option(
        "--unsafe-load-pickle",
        help="Load a whole pickled model (torch.save(model)) given as --model or --weights. "
        "This RUNS the file's code: only for files you trust.",
    ),
]


def module_name(value: str | None) -> str | None:
    """Refuse an empty module name while parsing, so the error names the option (the library
    refuses it too, see ``camtool.methods.bind``)."""
    if value is not None and not value.strip():
        raise typer.BadParameter("an empty module name names no module; leave the option out")
    return value


MethodOption = Annotated[
    list[str] | None,
    typer.Option(
        "--method",
        help="How maps are made: cam (exact Class Activation Maps); gradcam, gradcam++, xgradcam, "
        "layercam, hirescam, scorecam, eigencam (maps of one layer, --layer; not decompositions); "
        "or auto (the default: cam, else integrated-head, else gradcam: exact methods first; "
        "predictions alone when none can).",
        callback=single,
        show_default=False,
    ),
]
LayerOption = Annotated[
    str | None,
    typer.Option(help="Feature layer (a module name); overrides discovery.", callback=module_name),
]
ClassifierOption = Annotated[
    str | None,
    typer.Option(
        help="Classifier layer (a module name); overrides discovery.", callback=module_name
    ),
]
TargetOption = Annotated[
    str | None,
    typer.Option(
        help="Score the maps explain: logit or probability (default: the class logit; Score-CAM: "
        "the probability, as its paper). cam and integrated-head decompose the logit only.",
    ),
]
RAY_DEFAULT = "(default)"  # `--ray` without an address


class _OptionalRayValue(TyperCommand):
    """A command whose ``--ray`` takes an optional value: ``--ray`` alone (last, or before
    another option) reads as ``--ray=(default)``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        args = list(args)
        for i, arg in enumerate(args):
            if arg == "--":
                break
            if arg == "--ray" and (i + 1 == len(args) or args[i + 1].startswith("-")):
                args[i] = f"--ray={RAY_DEFAULT}"
        return super().parse_args(ctx, args)


DeviceOption = Annotated[
    str, typer.Option(help=f"One of {DEVICE_CHOICES}.", callback=checked_by(parse_device))
]
DtypeOption = Annotated[
    str,
    typer.Option(
        help=f"One of {DTYPE_CHOICES} (autocast; the identity check adapts).",
        callback=checked_by(parse_dtype),
    ),
]


ClassesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--class", "-c", help="Class to map, by name or index; repeatable. Default: the top class."
    ),
]
MapsOption = Annotated[
    int, typer.Option("--maps", min=1, help="Map this many top classes when --class is not given.")
]
AlphaOption = Annotated[float, typer.Option(min=0.0, max=1.0, help="Heatmap opacity.")]
ColormapOption = Annotated[
    Colormap,
    typer.Option(case_sensitive=False, help="Colour map (any case; gray: black to white)."),
]
BoxOption = Annotated[bool, typer.Option("--box", help="Draw the CAM box (see --box-threshold).")]
BoxThresholdOption = Annotated[
    float,
    typer.Option(
        "--box-threshold",
        help="The CAM box keeps pixels at or above this fraction of the map's maximum "
        "(0 < t < 1; 0.2 in the CAM paper).",
        callback=checked_by(check_box_threshold),
    ),
]
ScaleOption = Annotated[
    Scale,
    typer.Option(
        help="Colour scale: joint (one scale for all maps of an image, so a weak class looks "
        "weak; logit units for exact CAM) or per-map (each map stretched to the full range)."
    ),
]
LegendOption = Annotated[
    bool,
    typer.Option(
        "--legend",
        help="Add a band under each overlay: class, probability and a colour bar with its "
        "meaning (the overlay grows by that band).",
    ),
]
VerboseOption = Annotated[
    bool, typer.Option("--verbose", "-v", help="Also print the technical detail.")
]


CropOption = Annotated[
    bool,
    typer.Option("--crop", help="Centre-crop as in evaluation instead of using the whole image."),
]


def model_options(
    weights: Path | None,
    labels: Path | None,
    layer: str | None,
    classifier: str | None,
    dtype: str | None,
    unsafe_load_pickle: bool = False,
    target: str | None = None,
) -> dict[str, Any]:
    """The keyword arguments of :func:`camtool.explanation.bind_method` (loading the model and
    binding the method) that the CLI options give."""
    options: dict[str, Any] = {
        "weights": str(weights) if weights else None,
        "labels": str(labels) if labels else None,
        "layer": layer,
        "classifier": classifier,
        "dtype": dtype,
    }
    if target is not None:  # only when given, so an export's recorded settings stay as they were
        options["target"] = target
    if unsafe_load_pickle:  # only when given, so an export's recorded settings stay as they were
        options["unsafe_load_pickle"] = True
    return options


@app.command()
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
        ),
    ] = None,
    methods: Annotated[
        list[str] | None,
        typer.Option(
            "--method",
            help="How maps are made: cam (exact Class Activation Maps); gradcam, gradcam++, "
            "xgradcam, layercam, hirescam, scorecam, eigencam (maps of one layer, --layer; not "
            "decompositions); or auto (the default: the first method that can explain the model; "
            "predictions alone when none can). Repeat to compare methods (with --sheet).",
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
            help=f"Folder for the pictures (default: {DEFAULT_OUT_DIR}; with --json, none "
            "are written unless --out or --sheet is given).",
            show_default=False,
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
        from camtool.outputs import FilesReport, Rendering, explain_files

        options = model_options(
            weights, labels, layer, classifier, dtype, unsafe_load_pickle, target
        )
        bound = [
            bind_method(name, method, classes, device=device, **options)
            for name in (models or ["efficientnet_lite0"])
            for method in (methods or ["auto"])
        ]
        rendering = Rendering(alpha, colormap, box, image_format, scale, legend)
        report = FilesReport()
        doc: dict[str, Any] = {
            "model": bound[0].model.name,
            "method": bound[0].explainer.method,
            "head": bound[0].explainer.describe(),
            "head_detail": bound[0].explainer.as_dict(),
            "models": [
                {
                    "model": b.model.name,
                    "method": b.explainer.method,
                    "head": b.explainer.describe(),
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
            },
            "images": [],
            "errors": [],
        }
        folder = output_folder(out, pictures_wanted=sheet or not as_json)
        results = explain_files(
            images, folder, bound, maps=maps, top_k=top_k, crop=crop, box_threshold=box_threshold,
            rendering=rendering, sheet=sheet, smooth=smooth, progress=not as_json,
        )  # fmt: skip
        for result in results:
            report.results.append(result)
            if result.error is not None:
                print_error(result.error)
                doc["errors"].append({"input": result.input, "error": result.error})
            if result.video is not None:
                doc.setdefault("videos", []).append(video_summary(result.video, not as_json))
            for ex, outputs in zip(result.explanations, result.outputs, strict=True):
                doc["images"].append({**ex.to_dict(), "outputs": [str(o) for o in outputs]})
                if not as_json:
                    print_explanation(ex, list(outputs), verbose)
        if as_json:
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        raise typer.Exit(report.exit_code)


def video_summary(report: VideoReport, show: bool) -> dict[str, Any]:
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


@app.command(cls=_OptionalRayValue)
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
    heatmap: Annotated[
        bool, typer.Option("--heatmap", help="Also write the bare heatmap (8-bit PNG).")
    ] = False,
    raw: Annotated[
        RawFormat | None, typer.Option(help="Also write the raw CAMs at feature resolution.")
    ] = None,
    raw_dtype: Annotated[RawDtype, typer.Option(help="dtype of the raw CAMs.")] = "float16",
    crop: CropOption = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Skip inputs the manifest lists as done.")
    ] = False,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="Images per forward pass (default: 16 on CPU, 64 on GPU)."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=0, help="Decoding workers (default: CPUs - 1, at most 8).")
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
            help=f"One of {DTYPE_CHOICES} (autocast; the identity check adapts). Default: "
            "bfloat16 for the device runner on CUDA, else float32.",
            callback=checked_by(parse_dtype),
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")
    ] = False,
    html_report: Annotated[
        bool, typer.Option("--report", help="Also write OUT/index.html, a gallery of the results.")
    ] = False,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="[ADDRESS]",
            help="Run on a Ray cluster (needs camtool's ray extra): ADDRESS of a running one "
            "(auto, HOST:PORT, ray://HOST:PORT), or alone for a local one.",
        ),
    ] = None,
    ray_actors: Annotated[
        int | None,
        typer.Option(min=1, help="Ray actors (default: one per GPU, else one per CPU)."),
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

        engine: Literal["local", "ray"] = (
            "ray" if ray is not None or ray_actors is not None else "local"
        )
        address = ray_address(ray, RAY_DEFAULT) if ray is not None else None

        options = ExportOptions(
            image_format=image_format, quality=quality, alpha=alpha, colormap=colormap,
            box=box, heatmap=heatmap, raw=raw, raw_dtype=raw_dtype,
            top_k=top_k, scale=scale, legend=legend, box_threshold=box_threshold,
        )  # fmt: skip
        report = export_images(
            inputs, out, (model or ["efficientnet_lite0"])[0], method=(method or ["auto"])[0], classes=classes, maps=maps, crop=crop, options=options, resume=resume,
            device=device, batch_size=batch_size, workers=workers, decoder=decoder, progress=not quiet,
            runner=runner, engine=engine, ray_address=address, ray_actors=ray_actors,
            **model_options(weights, labels, layer, classifier, dtype, unsafe_load_pickle, target),
        )  # fmt: skip
        if report.removed:  # shown even with --quiet: camtool removed files
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
        if html_report:
            from camtool.gallery import write_gallery

            page = write_gallery(report.out_dir, progress=not quiet)
            if not quiet:
                say(f"gallery: {page}", whole=True)
        if not quiet:
            console.print(
                f"exported {report.exported}, failed {report.failed}, skipped {report.skipped} "
                f"(already done) of {report.total}"
                + (
                    f" (+{len(report.excluded)} inside the output folder)"
                    if report.excluded
                    else ""
                )
                + f" in {report.seconds:.1f} s "
                f"({report.images_per_second:.1f} images/s) -> {report.out_dir} (manifest: {report.manifest})",
                markup=False,
            )
        raise typer.Exit(report.exit_code)


@app.command()
def report(
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


def eval_table(report: Any) -> Table:
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


@app.command("eval")
def evaluate_command(
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
        typer.Option("--method", help="Method to evaluate (repeatable). [default: cam]"),
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "--metric",
            help="Metric (repeatable): deletion, insertion, road, average_drop, completeness, "
            "pointing_game, localization, max_box_acc. [default: all that apply]",
        ),
    ] = None,
    model: ModelOption = None,
    size: Annotated[
        int | None,
        typer.Option(
            min=1, help="Square network input every image is squeezed to [default: the model's]."
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(min=1, help="Deletion/insertion steps [default: 224, the paper's]."),
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

        report = evaluate(
            images, method or ["cam"], boxes, metric, (model or ["efficientnet_lite0"])[0],
            size=size, out=out, resume=resume, steps=steps, box_threshold=box_threshold,
            batch_size=batch_size, device=device, progress=not quiet,
            weights=str(weights) if weights else None, labels=str(labels) if labels else None,
            dtype=dtype, rescale_boxes=rescale_boxes,
        )  # fmt: skip
        for failure in report.failures[:20]:
            print_error(f"{failure.input}: {failure.error}")
        if not quiet:
            console.print(eval_table(report))
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


@app.command()
def inspect(
    model: Annotated[str, typer.Argument(help="Model spec, as for --model of `explain`.")],
    weights: WeightsOption = None,
    unsafe_load_pickle: UnsafePickleOption = False,
    labels: LabelsOption = None,
    layer: LayerOption = None,
    classifier: ClassifierOption = None,
    dtype: DtypeOption = "float32",
    input_size: Annotated[
        int | None, typer.Option(min=16, help="Probe image size (default: the model's).")
    ] = None,
    device: DeviceOption = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    verbose: VerboseOption = False,
) -> None:
    """Show a model: its preprocessing and labels (and where they come from), and per method
    whether it can explain the model (for CAM: the head found, its shape and identity residual).

    Architectures without weights are inspected with random weights.
    """
    with errors_to_exit_codes():
        from camtool.image import Preprocessing
        from camtool.methods import bind, method_names
        from camtool.models.cards import find_card, is_card_name
        from camtool.models.loading import load_model

        options = model_options(weights, labels, None, None, dtype, unsafe_load_pickle)
        del options["layer"], options["classifier"]
        if input_size is not None:
            known = model.endswith(".toml") or is_card_name(model)
            base = find_card(model).preprocessing if known else Preprocessing()
            options["preprocessing"] = replace(base, input_size=input_size)
        loaded = load_model(model, device=device, random_weights=True, **options)
        info = {**loaded.describe(), "input_size": loaded.preprocessing.input_size, "methods": {}}
        for name in method_names():
            try:
                explainer = bind(name, loaded, layer=layer, classifier=classifier)
            except UnsupportedModelError as exc:
                info["methods"][name] = {"explains": False, "reason": str(exc)}
                continue
            detail = explainer.as_dict()
            info["methods"][name] = {
                "explains": True,
                "uses": explainer.describe(),
                "decomposition": bool(detail.get("decomposition", True)),
                "detail": detail,
            }
            if name == "cam":
                info["head"], info["head_detail"] = explainer.describe(), explainer.as_dict()
        info["auto"] = bind("auto", loaded, layer=layer, classifier=classifier).method
        if as_json:
            sys.stdout.write(json.dumps(info, indent=2) + "\n")
            return
        # Names and paths are printed whole on their own lines (a terminal may wrap them, rich
        # never breaks them); the table holds what wraps well between words.
        say(info["name"] if info["name"] == model else f"{info['name']} ({model})", whole=True)
        say(f"weights: {info['weights']}", whole=True)
        console.print(inspect_table(info, verbose))


def _numbers(values: list[float]) -> str:
    return ", ".join(f"{v:.3g}" for v in values)


def inspect_table(info: dict[str, Any], verbose: bool = False) -> Table:
    """The rich table of ``camtool inspect``: model facts, then one row per method (``verbose``:
    with what each method binds to, the CAM head's probe residual and folded layers)."""
    table = Table(show_header=False, box=None, padding=(0, 1))
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value")
    prep = info["preprocessing"]
    size = prep["input_size"]
    rows = [
        ("parameters", f"{info['parameters']:,}"),
        ("classes", f"{info['classes']} (labels: {info['labels_source']})"),
        ("input", f"{size} px on the shorter side, {prep['interpolation']} resizing"),
        ("normalise", f"mean {_numbers(prep['mean'])}; std {_numbers(prep['std'])}"),
        ("--crop", f"centre crop of {prep['crop_pct']:g} of the image"),
        ("settings from", prep["source"]),
        ("dtype", info["dtype"]),
    ]
    detail = info.get("head_detail")
    if detail and detail.get("feature_shape"):
        channels, grid_h, grid_w = detail["feature_shape"]
        rows.append(
            ("feature map", f"{channels} channels, {grid_w}x{grid_h} cells for a "
                            f"{detail['probe_size']} px square image (more for larger images)")
        )  # fmt: skip
    if detail and verbose:
        classifier = detail["classifier"] or "(class maps)"
        rows.append(("CAM head", f"{detail['kind']}: {detail['features']} -> {classifier}"))
        rows.append(
            ("probe residual", f"{detail['probe_residual']:.2e} (max |mean(CAM) + b - logit|)")
        )
        folded = detail.get("folded") or []
        if folded:
            rows.append(("folded", ", ".join(f"{f['module']} ({f['type']})" for f in folded)))
    for name, verdict in info["methods"].items():
        if not verdict["explains"]:
            text = f"[yellow]no[/]: {escape(verdict['reason'])}"
        elif verbose:
            text = f"yes: {escape(verdict['uses'])}"
        else:
            text = "yes, exact" if verdict["decomposition"] else "yes, not a decomposition"
        rows.append((f"method {name}", text))
    rows.append(("method auto", f"uses {info['auto']}"))
    for field, value in rows:
        table.add_row(field, value)
    return table


@app.command()
def models(verbose: VerboseOption = False) -> None:
    """List the named models (built-in and from CAMTOOL_MODELS) and whether their weights are installed."""
    with errors_to_exit_codes():
        from camtool.errors import ModelLoadError
        from camtool.models.cards import list_cards
        from camtool.models.downloads import weights_status

        broken: list[ModelLoadError] = []
        cards = list_cards(broken)
        table = Table(box=None, padding=(0, 1))
        table.add_column("name", no_wrap=True)
        if verbose:
            table.add_column("architecture", no_wrap=True)
        table.add_column("input", no_wrap=True)
        table.add_column("weights", no_wrap=True)
        table.add_column("description")
        files: list[str] = []
        for error in broken:
            name = escape(Path(str(error.subject)).stem)
            cells = [name, *[""] * verbose, "", "[red]broken card[/]", escape(error.problem)]
            table.add_row(*cells)
            files.append(f"{name}: {error.subject}")
        for card in cards:
            status = weights_status(card)
            style = "green" if status == "installed" else "yellow"
            name = escape(card.name if card.builtin else f"{card.name} (user)")
            cells = [name, *[escape(card.architecture)] * verbose, str(card.preprocessing.input_size),
                     f"[{style}]{status}[/]", escape(card.description)]  # fmt: skip
            table.add_row(*cells)
            if not card.builtin:
                files.append(f"{card.name}: {card.path}")
        console.print(table)
        for line in files:  # card files, whole (never cut or broken inside the path)
            say(line, whole=True)


@app.command()
def fit(
    data: Annotated[
        Path, typer.Argument(help="Folder of class folders, or a CSV of file,label rows.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Backbone: efficientnet_lite0, 1, 2, or a card.")
    ] = "efficientnet_lite0",
    head: Annotated[
        Literal["gap", "flatten"],
        typer.Option(help="gap (exact CAMs), or flatten: Flatten + Dense, compared with gap."),
    ] = "gap",
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs (the best is kept).")] = 30,
    val: Annotated[
        Path | None, typer.Option(help="Validation folder or CSV (default: a held-out part).")
    ] = None,
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Part of each class held out without --val.")
    ] = 0.2,
    input_size: Annotated[
        int | None, typer.Option(help="Input size in px (default: the model's).")
    ] = None,
    finetune: Annotated[
        int, typer.Option(min=0, help="Also train the backbone's last N stages (a GPU helps).")
    ] = 0,
    learning_rate: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-3,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per training step.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the split, initialisation and order.")] = 0,
    no_flips: Annotated[
        bool, typer.Option("--no-flips", help="Do not train on flipped copies.")
    ] = False,
    cache: Annotated[
        Path | None, typer.Option(help="Feature cache folder (default ~/.cache/camtool/fit).")
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Neither read nor write it.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty model folder.")] = False,
    device: DeviceOption = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Train a head for your own classes on a pretrained backbone; write a model that
    `camtool explain -m OUT/card.toml` loads, and OUT/report/ (confusion matrix, CAM sheets)."""
    with errors_to_exit_codes():
        from camtool.training import fit as run_fit

        report = run_fit(
            data, out, model=model, head=head, epochs=epochs, val=val, val_fraction=val_fraction,
            input_size=input_size, flips=not no_flips, finetune_stages=finetune,
            learning_rate=learning_rate, batch_size=batch_size, seed=seed, device=device,
            cache_dir=cache, use_cache=not no_cache, overwrite=overwrite, progress=not quiet,
            log=lambda line: err_console.print(line, markup=False),
        )  # fmt: skip
        console.print(report.summary(), markup=False, highlight=False, soft_wrap=True)
        if report.interrupted:
            raise typer.Exit(report.exit_code)


@app.command("classes")
def list_classes(
    model: Annotated[
        str, typer.Argument(help="Model spec, as for --model of `explain`.")
    ] = "efficientnet_lite0",
    query: Annotated[
        str | None,
        typer.Argument(
            help="Show only the classes whose label contains this (any case; egyptian_cat "
            "finds 'Egyptian cat'), or this index.",
            show_default=False,
        ),
    ] = None,
    labels: LabelsOption = None,
    weights: WeightsOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of lines.")] = False,
) -> None:
    """List a model's classes, index and label: what --class takes (an index, the label in any
    case, or its file-name form: egyptian_cat)."""
    with errors_to_exit_codes():
        from camtool.binding import class_names

        found = class_names(model, query, labels=labels, weights=weights)
        if as_json:
            doc = [{"index": c.index, "name": c.name} for c in found]
            text = json.dumps(doc, indent=2, ensure_ascii=False)  # control characters: \uXXXX
            sys.stdout.write(INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n")
            return
        width = len(str(found[-1].index)) if found else 1
        sys.stdout.write("".join(f"{c.index:>{width}}  {visible(c.name)}\n" for c in found))
        if not found:
            print_error(f"{query}: no class of {model} matches")
            raise typer.Exit(EXIT_ERROR)


def silence_native_stderr() -> None:
    """Keep what native libraries print off the terminal; camtool's own lines stay.

    libpng, libjpeg and ffmpeg write their complaints ("libpng error: ...", "Corrupt JPEG data:
    ...", "moov atom not found") straight to file descriptor 2, from whichever thread decodes.
    camtool reports those files in its own words, so descriptor 2 is pointed at the null device
    once, for the whole process (no window in which a thread could slip through, nothing to
    restore while decode threads run), and Python's ``sys.stderr`` (camtool's ``Error:`` lines,
    rich, tracebacks with CAMTOOL_DEBUG) moves to a duplicate of the original stderr. Does
    nothing with ``CAMTOOL_DEBUG`` set, or where descriptor 2 cannot be duplicated.
    """
    if os.environ.get("CAMTOOL_DEBUG"):
        return
    stream = sys.stderr
    try:
        stream.flush()
        original = os.dup(2)
    except (OSError, AttributeError, ValueError):
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
    except OSError:
        os.close(original)
        return
    sys.stderr = open(  # noqa: SIM115  # lives as long as the process
        original,
        "w",
        encoding=getattr(stream, "encoding", None) or "utf-8",
        errors=getattr(stream, "errors", None) or "backslashreplace",
        buffering=1,
    )


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """Show a Python warning as one ``Warning:`` line when camtool raised it; drop warnings that
    libraries (torch, torchvision, timm) raise about their own internals, which a user of the
    command can do nothing about."""
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parents[1]):
        err_console.print(f"Warning: {' '.join(str(message).split())}", markup=False)


def main() -> None:
    """Entry point of the ``camtool`` console script.

    Usage errors (an option out of range, a missing argument) become one ``Error:`` line and
    exit code 2, like every other error, instead of a framed help box (:class:`CamtoolGroup`).
    Native libraries' messages and library warnings are kept off stderr
    (:func:`silence_native_stderr`, :func:`show_warning`).
    """
    silence_native_stderr()
    if not os.environ.get("CAMTOOL_DEBUG"):
        warnings.showwarning = show_warning
    app()

