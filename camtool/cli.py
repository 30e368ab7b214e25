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
from rich.table import Table

from camtool import __version__
from camtool.errors import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    CamtoolError,
    UnsupportedModelError,
)

if TYPE_CHECKING:
    from camtool.explanation import Explanation
    from camtool.video import VideoReport

app = typer.Typer(
    name="camtool",
    help="Exact Class Activation Maps: see where a CNN with a global-average-pooling head looks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console()
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


# Choices, kept here so that `camtool --help` needs no torch (render.COLORMAPS holds the same names).
Colormap = Literal[
    "jet", "turbo", "viridis", "inferno", "magma", "plasma", "cividis", "hot", "parula", "twilight",
    "rainbow", "bone",
]  # fmt: skip
ImageFormat = Literal["png", "jpg"]
RawFormat = Literal["npy", "npz"]
RawDtype = Literal["float16", "float32"]
DecoderKind = Literal["threads", "processes"]


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


def predictions_table(ex: Explanation, outputs: list[Path]) -> Table:
    """Return a rich table of an explanation's top-k classes."""
    from camtool.explanation import residual_text

    table = Table(
        title=f"{ex.source}  ({ex.image.shape[2]}x{ex.image.shape[1]})", title_justify="left"
    )
    table.add_column("#", justify="right")
    table.add_column("class")
    table.add_column("index", justify="right")
    table.add_column("probability", justify="right")
    table.add_column("logit", justify="right")
    explained = {s.index for s in ex.explained}
    for rank, p in enumerate(ex.predictions, 1):
        mark = f" [bold green]◀ {ex.method.upper()}[/]" if p.index in explained else ""
        table.add_row(
            str(rank), f"{p.name}{mark}", str(p.index), f"{p.probability:.4f}", f"{p.logit:.3f}"
        )
    files = ", ".join(str(o) for o in outputs)
    table.caption = (
        f"{ex.model}: {ex.method}: {ex.head}{residual_text(ex.residual)} -> {files}"
        if ex.explained
        else f"{ex.model}: {ex.head}"
    )
    table.caption_justify = "left"
    return table


ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Model: a name from `camtool models`, a card file, a torchvision name with --weights, "
        "NAME:WEIGHTS (e.g. resnet50:IMAGENET1K_V2), timm:NAME, or a TorchScript file.",
    ),
]
WeightsOption = Annotated[
    Path | None,
    typer.Option(help="State dict (.pth/.pt read with weights_only=True, or .safetensors)."),
]
LabelsOption = Annotated[Path | None, typer.Option(help="Label file, one class name per line.")]


def module_name(value: str | None) -> str | None:
    """Refuse an empty module name while parsing, so the error names the option (the library
    refuses it too, see ``camtool.methods.bind``)."""
    if value is not None and not value.strip():
        raise typer.BadParameter("an empty module name names no module; leave the option out")
    return value


MethodOption = Annotated[
    str,
    typer.Option(
        "--method",
        help="How maps are made: cam (exact Class Activation Maps); gradcam, gradcam++, xgradcam, "
        "layercam, hirescam, scorecam, eigencam (maps of one layer, --layer; not decompositions); "
        "or auto (the default: cam, else integrated-head, else gradcam: exact methods first; "
        "predictions alone when none can).",
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
DeviceOption = Annotated[str, typer.Option(help="cpu, cuda, mps or auto.")]
DtypeOption = Annotated[
    str, typer.Option(help="float32, float16 or bfloat16 (autocast; the identity check adapts).")
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
ColormapOption = Annotated[Colormap, typer.Option(help="Colour map.")]
BoxOption = Annotated[
    bool, typer.Option("--box", help="Draw the CAM box (20% of the map's maximum).")
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
    dtype: str,
    target: str | None = None,
) -> dict[str, Any]:
    """The keyword arguments of :func:`camtool.explanation.bind_method` (loading the model and
    binding the method) that the CLI options give."""
    return {
        "weights": str(weights) if weights else None,
        "labels": str(labels) if labels else None,
        "layer": layer,
        "classifier": classifier,
        "dtype": dtype,
        "target": target,
    }


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
            "NAME:WEIGHTS, timm:NAME, or a TorchScript file. Repeat to compare models (with --sheet).",
        ),
    ] = None,
    method: MethodOption = "auto",
    classes: ClassesOption = None,
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", min=1, help="Number of predictions to list.")
    ] = 5,
    maps: MapsOption = 1,
    alpha: AlphaOption = 0.5,
    colormap: ColormapOption = "jet",
    box: BoxOption = False,
    crop: CropOption = False,
    device: DeviceOption = "auto",
    weights: WeightsOption = None,
    labels: LabelsOption = None,
    layer: LayerOption = None,
    classifier: ClassifierOption = None,
    target: TargetOption = None,
    dtype: DtypeOption = "float32",
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the overlays.")] = Path("."),
    image_format: Annotated[
        ImageFormat, typer.Option("--format", help="Overlay file format.")
    ] = "png",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document instead of tables.")
    ] = False,
    sheet: Annotated[
        bool,
        typer.Option("--sheet", help="Also write <stem>_sheet: the input and the top-k overlays."),
    ] = False,
    smooth: Annotated[
        int, typer.Option(min=1, help="Videos: average each frame's heatmap over this many frames.")
    ] = 1,
) -> None:
    """Classify images, print the top-k classes and write a CAM overlay per image and class.

    With --sheet, also one picture per image: the input beside the overlays of the top-k classes
    (or the --class ones), one row per --model when several are given.
    """
    with errors_to_exit_codes():
        from camtool.explanation import bind_method
        from camtool.outputs import FilesReport, Rendering, explain_files

        options = model_options(weights, labels, layer, classifier, dtype, target)
        bound = [
            bind_method(name, method, classes, device=device, **options)
            for name in (models or ["efficientnet_lite0"])
        ]
        rendering = Rendering(alpha, colormap, box, image_format)
        report = FilesReport()
        doc: dict[str, Any] = {
            "model": bound[0].model.name,
            "method": bound[0].explainer.method,
            "head": bound[0].explainer.describe(),
            "models": [
                {
                    "model": b.model.name,
                    "method": b.explainer.method,
                    "head": b.explainer.describe(),
                }
                for b in bound
            ],
            "images": [],
            "errors": [],
        }
        results = explain_files(
            images, out, bound, maps=maps, top_k=top_k, crop=crop, rendering=rendering,
            sheet=sheet, smooth=smooth, progress=not as_json,
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
                    console.print(predictions_table(ex, list(outputs)))
        if as_json:
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        raise typer.Exit(report.exit_code)


def video_summary(report: VideoReport, show: bool) -> dict[str, Any]:
    """The JSON summary of an overlaid video; with ``show``, also a line saying what was written."""
    if show:
        console.print(
            f"{report.source}: wrote {report.output} ({report.frames} frames, {report.width}x{report.height} "
            f"at {report.fps:g} fps, {report.frames_per_second:.1f} frames/s)"
        )
    return {"input": str(report.source), "output": str(report.output), "frames": report.frames,
            "expected_frames": report.expected_frames, "fps": report.fps, "width": report.width,
            "height": report.height}  # fmt: skip


@app.command()
def export(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders (recursive), globs, or @list.txt files.", show_default=False
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder (mirrors the inputs' paths).")
    ],
    model: ModelOption = "efficientnet_lite0",
    method: MethodOption = "auto",
    classes: ClassesOption = None,
    maps: MapsOption = 1,
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", min=1, help="Predictions per image in the manifest.")
    ] = 5,
    image_format: Annotated[
        ImageFormat, typer.Option("--format", help="Overlay file format.")
    ] = "jpg",
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG quality.")] = 90,
    alpha: AlphaOption = 0.5,
    colormap: ColormapOption = "jet",
    box: BoxOption = False,
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
    weights: WeightsOption = None,
    labels: LabelsOption = None,
    layer: LayerOption = None,
    classifier: ClassifierOption = None,
    target: TargetOption = None,
    dtype: DtypeOption = "float32",
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")
    ] = False,
    html_report: Annotated[
        bool, typer.Option("--report", help="Also write OUT/index.html, a gallery of the results.")
    ] = False,
) -> None:
    """Explain every image of folders, globs or lists and write overlays plus a manifest.

    Exit code 0 when every input was exported, 3 when some failed (each is in the manifest with
    its reason), 130 when interrupted (finish with --resume), 1 when the output cannot be written.
    """
    use_large_malloc_thresholds()
    with errors_to_exit_codes():
        from camtool.export import ExportOptions
        from camtool.export import export as export_images

        options = ExportOptions(
            image_format=image_format, quality=quality, alpha=alpha, colormap=colormap,
            box=box, heatmap=heatmap, raw=raw, raw_dtype=raw_dtype,
            top_k=top_k,
        )  # fmt: skip
        report = export_images(
            inputs, out, model, method=method, classes=classes, maps=maps, crop=crop, options=options, resume=resume,
            device=device, batch_size=batch_size, workers=workers, decoder=decoder, progress=not quiet,
            **model_options(weights, labels, layer, classifier, dtype, target),
        )  # fmt: skip
        if report.removed:  # shown even with --quiet: camtool removed files
            console.print(
                f"removed {report.removed} unfinished files (left by an interrupted run) "
                f"from {report.out_dir}"
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
                console.print(f"gallery: {page}")
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
                f"({report.images_per_second:.1f} images/s) -> {report.out_dir} (manifest: {report.manifest})"
            )
        raise typer.Exit(report.exit_code)


def use_large_malloc_thresholds() -> None:
    """Keep glibc from returning freed memory to the OS after every batch (Linux/glibc only).

    Each batch allocates the same large buffers again; with glibc's defaults they are mapped and
    unmapped every time, and the page faults cost more than the work (see docs/performance.md).
    Must run before torch allocates; does nothing elsewhere, when the user set these already, or
    when ``CAMTOOL_DEFAULT_MALLOC=1`` (used by the benchmark to measure the difference).
    """
    import ctypes
    import ctypes.util

    if (
        sys.platform != "linux"
        or "MALLOC_MMAP_THRESHOLD_" in os.environ
        or os.environ.get("CAMTOOL_DEFAULT_MALLOC")
    ):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 1 << 30)
    mallopt(m_trim_threshold, (1 << 31) - 1)


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
        console.print(f"gallery: {page}")


@app.command()
def inspect(
    model: Annotated[str, typer.Argument(help="Model spec, as for --model of `explain`.")],
    weights: WeightsOption = None,
    labels: LabelsOption = None,
    layer: LayerOption = None,
    classifier: ClassifierOption = None,
    dtype: DtypeOption = "float32",
    input_size: Annotated[
        int | None, typer.Option(min=16, help="Probe image size (default: the model's).")
    ] = None,
    device: DeviceOption = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show a model: its preprocessing and labels (and where they come from), and per method
    whether it can explain the model (for CAM: the head found, its shape and identity residual).

    Architectures without weights are inspected with random weights.
    """
    with errors_to_exit_codes():
        from camtool.cards import find_card, is_card_name
        from camtool.image import Preprocessing
        from camtool.methods import bind, method_names
        from camtool.models import load_model

        options = model_options(weights, labels, None, None, dtype)
        del options["layer"], options["classifier"], options["target"]
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
            info["methods"][name] = {"explains": True, "uses": explainer.describe()}
            if name == "cam":
                info["head"], info["head_detail"] = explainer.describe(), explainer.as_dict()
        info["auto"] = bind("auto", loaded, layer=layer, classifier=classifier).method
        if as_json:
            sys.stdout.write(json.dumps(info, indent=2) + "\n")
            return
        console.print(inspect_table(model, info))


def inspect_table(spec: str, info: dict[str, Any]) -> Table:
    """The rich table of ``camtool inspect``: model facts, then one row per method."""
    table = Table(title=f"camtool inspect {spec}", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    prep = info["preprocessing"]
    rows = [
        ("model", info["name"]),
        ("weights", info["weights"]),
        ("parameters", f"{info['parameters']:,}"),
        ("classes", f"{info['classes']} (labels: {info['labels_source']})"),
        ("preprocessing", f"{prep['input_size']} px, {prep['interpolation']}, mean "
                          f"{tuple(prep['mean'])}, std {tuple(prep['std'])}, crop_pct {prep['crop_pct']:g}"),
        ("  from", prep["source"]),
        ("dtype", info["dtype"]),
    ]  # fmt: skip
    detail = info.get("head_detail")
    if detail:
        rows += [
            ("CAM head", f"{detail['kind']}: {detail['features']} -> {detail['classifier'] or '(class maps)'}"),
            ("feature map", f"{'x'.join(map(str, detail['feature_shape']))} at {detail['probe_size']} px"),
            ("identity residual", f"{detail['probe_residual']:.2e} (max |mean(CAM) + b - logit|)"),
        ]  # fmt: skip
        folded = detail.get("folded") or []
        if folded:
            rows.append(("folded", ", ".join(f"{f['module']} ({f['type']})" for f in folded)))
    for name, verdict in info["methods"].items():
        text = (
            f"yes: {verdict['uses']}"
            if verdict["explains"]
            else f"[yellow]no[/]: {verdict['reason']}"
        )
        rows.append((f"method {name}", text))
    rows.append(("method auto", f"uses {info['auto']}"))
    for field, value in rows:
        table.add_row(field, value)
    return table


@app.command()
def models() -> None:
    """List the named models (built-in and from CAMTOOL_MODELS) and whether their weights are installed."""
    with errors_to_exit_codes():
        from camtool.cards import list_cards
        from camtool.errors import ModelLoadError
        from camtool.weights import weights_status

        broken: list[ModelLoadError] = []
        cards = list_cards(broken)
        table = Table(title="camtool models")
        for column in ("name", "architecture", "input", "weights"):
            table.add_column(column, no_wrap=True)
        table.add_column("description")
        for error in broken:
            table.add_row(
                Path(str(error.subject)).stem, "", "", "[red]broken card[/]", error.problem
            )
        for card in cards:
            status = weights_status(card)
            style = "green" if status == "installed" else "yellow"
            name = card.name if card.builtin else f"{card.name} (user: {card.path})"
            table.add_row(
                name,
                card.architecture,
                str(card.preprocessing.input_size),
                f"[{style}]{status}[/]",
                card.description,
            )
        console.print(table)


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
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent):
        err_console.print(f"Warning: {' '.join(str(message).split())}", markup=False)


def main() -> None:
    """Entry point of the ``camtool`` console script.

    Usage errors (an option out of range, a missing argument) become one ``Error:`` line and
    exit code 2, like every other error, instead of a framed help box. Native libraries' messages
    and library warnings are kept off stderr (:func:`silence_native_stderr`, :func:`show_warning`).
    """
    silence_native_stderr()
    if not os.environ.get("CAMTOOL_DEBUG"):
        warnings.showwarning = show_warning
    try:
        code = app(standalone_mode=False)
    except Exception as exc:  # click's UsageError family, vendored by newer typer releases
        if not hasattr(exc, "format_message"):
            raise
        if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
            print_error(exc.format_message())
        sys.exit(getattr(exc, "exit_code", EXIT_USAGE))
    sys.exit(code if isinstance(code, int) else EXIT_OK)


if __name__ == "__main__":
    main()
