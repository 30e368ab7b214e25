"""The options that several commands share, as ``Annotated`` types, and their parsing helpers.

A command declares ``model: ModelOption = None`` and gets the same name, help and checks as every
other command that takes a model. The choices are spelled out here so that ``camtool --help``
needs no torch (``camtool.render.COLORMAPS`` holds the same colour maps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from camtool.cli.usage import check_with
from camtool.settings import (
    DEFAULT_MODEL,
    DEVICE_CHOICES,
    DTYPE_CHOICES,
    check_box_threshold,
    parse_device,
    parse_dtype,
)

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
Upsample = Literal["placed", "stretch"]  # settings.UPSAMPLES


def refuse_repeats(value: list[str] | None) -> list[str] | None:
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
        "hf:FOLDER (transformers), or a TorchScript file.",
        callback=refuse_repeats,
        show_default=DEFAULT_MODEL,
    ),
]
WeightsOption = Annotated[
    Path | None,
    typer.Option(
        help="State dict (.pth/.pt read with weights_only=True, or .safetensors).",
        show_default="the model's own",
    ),
]
LabelsOption = Annotated[
    Path | None,
    typer.Option(help="Label file, one class name per line.", show_default="the model's"),
]
UnsafePickleOption = Annotated[
    bool,
    typer.Option(
        "--unsafe-load-pickle",
        help="Load a whole pickled model (torch.save(model)) given as --model or --weights. "
        "This RUNS the file's code: only for files you trust.",
    ),
]


def refuse_empty_module_name(value: str | None) -> str | None:
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
        "or auto (cam, else integrated-head, else gradcam: exact methods first; predictions "
        "alone when none can).",
        callback=refuse_repeats,
        show_default="auto",
    ),
]
LayerOption = Annotated[
    str | None,
    typer.Option(
        help="Feature layer (a module name); overrides discovery.",
        callback=refuse_empty_module_name,
        show_default="discovered",
    ),
]
ClassifierOption = Annotated[
    str | None,
    typer.Option(
        help="Classifier layer (a module name); overrides discovery.",
        callback=refuse_empty_module_name,
        show_default="discovered",
    ),
]
TargetOption = Annotated[
    str | None,
    typer.Option(
        help="Score the maps explain: logit or probability (Score-CAM: the probability, as "
        "its paper). cam and integrated-head decompose the logit only.",
        show_default="logit; Score-CAM: probability",
    ),
]


DeviceOption = Annotated[
    str, typer.Option(help=f"One of {DEVICE_CHOICES}.", callback=check_with(parse_device))
]
DtypeOption = Annotated[
    str,
    typer.Option(
        help=f"One of {DTYPE_CHOICES} (autocast; the identity check adapts).",
        callback=check_with(parse_dtype),
    ),
]


ClassesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--class",
        "-c",
        help="Class to map, by name or index; repeatable.",
        show_default="the top class",
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
        callback=check_with(check_box_threshold),
    ),
]
ScaleOption = Annotated[
    Scale,
    typer.Option(
        help="Colour scale: joint (one scale for all maps of an image, so a weak class looks "
        "weak; logit units for exact CAM) or per-map (each map stretched to the full range)."
    ),
]
UpsampleOption = Annotated[
    Upsample,
    typer.Option(
        case_sensitive=False,
        help="How maps are resized to the image (any case): placed (each cell at the centre of "
        "its receptive field) or stretch (the grid stretched over the image, as cv2.resize and "
        "pytorch-grad-cam do).",
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


def collect_model_options(
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
