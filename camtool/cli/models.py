"""``camtool models``, ``inspect`` and ``classes``: what models there are and what one holds."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from camtool.cli.app import app
from camtool.cli.console import console, errors_to_exit_codes, print_error, say
from camtool.cli.options import (
    ClassifierOption,
    DeviceOption,
    DtypeOption,
    LabelsOption,
    LayerOption,
    UnsafePickleOption,
    VerboseOption,
    WeightsOption,
    collect_model_options,
)
from camtool.errors import EXIT_ERROR
from camtool.naming import INVISIBLE, visible


@app.command(
    "inspect", short_help="Show a model: preprocessing, labels, and which methods explain it."
)
def inspect_model(
    model: Annotated[str, typer.Argument(help="Model spec, as for --model of `explain`.")],
    weights: WeightsOption = None,
    unsafe_load_pickle: UnsafePickleOption = False,
    labels: LabelsOption = None,
    layer: LayerOption = None,
    classifier: ClassifierOption = None,
    dtype: DtypeOption = "float32",
    input_size: Annotated[
        int | None,
        typer.Option(min=16, help="Probe image size.", show_default="the model's input size"),
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
        from camtool.methods import survey
        from camtool.models.cards import find_card, is_card_name
        from camtool.models.loading import load_model

        options = collect_model_options(weights, labels, None, None, dtype, unsafe_load_pickle)
        del options["layer"], options["classifier"]
        if input_size is not None:
            known = model.endswith(".toml") or is_card_name(model)
            base = find_card(model).preprocessing if known else Preprocessing()
            options["preprocessing"] = replace(base, input_size=input_size)
        loaded = load_model(model, device=device, random_weights=True, **options)
        verdicts = survey(loaded, layer=layer, classifier=classifier)
        info = {
            **loaded.describe(),
            "input_size": loaded.preprocessing.input_size,
            **verdicts.as_dict(),
        }
        if as_json:
            sys.stdout.write(json.dumps(info, indent=2) + "\n")
            return
        # Names and paths are printed whole on their own lines (a terminal may wrap them, rich
        # never breaks them); the table holds what wraps well between words.
        say(info["name"] if info["name"] == model else f"{info['name']} ({model})", whole=True)
        say(f"weights: {info['weights']}", whole=True)
        console.print(build_inspect_table(info, verbose))


def _format_numbers(values: list[float]) -> str:
    """Numbers as ``0.485, 0.456, 0.406`` (three significant digits)."""
    return ", ".join(f"{v:.3g}" for v in values)


def build_inspect_table(info: dict[str, Any], verbose: bool = False) -> Table:
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
        ("normalise", f"mean {_format_numbers(prep['mean'])}; std {_format_numbers(prep['std'])}"),
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
            if (verdict.get("detail") or {}).get("class_agnostic"):
                text += ", class-agnostic"
        rows.append((f"method {name}", text))
    rows.append(("method auto", f"uses {info['auto']}"))
    for field, value in rows:
        table.add_row(field, value)
    return table


@app.command("models", short_help="List the named models and whether their weights are installed.")
def list_models(verbose: VerboseOption = False) -> None:
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
            name = Path(str(error.subject)).stem
            cells = [
                escape(name),
                *[""] * verbose,
                "",
                "[red]broken card[/]",
                escape(error.problem),
            ]
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


@app.command("classes", short_help="List a model's classes: what --class takes.")
def list_classes(
    model: Annotated[
        str, typer.Argument(help="Model spec, as for --model of `explain`.")
    ] = "efficientnet_lite0",
    query: Annotated[
        str | None,
        typer.Argument(
            help="Show only the classes whose label contains this (any case; egyptian_cat "
            "finds 'Egyptian cat'), or this index.",
            show_default="all classes",
        ),
    ] = None,
    labels: LabelsOption = None,
    weights: WeightsOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of lines.")] = False,
) -> None:
    """List a model's classes, index and label: what --class takes (an index, the label in any
    case, or its file-name form: egyptian_cat)."""
    with errors_to_exit_codes():
        from camtool.labels import match_classes
        from camtool.models.cards import labels_without_network

        names = labels_without_network(model, labels, weights)  # a card's: no torch, no network
        if names is None:
            from camtool.binding import class_names

            found = class_names(model, query, labels=labels, weights=weights)
        else:
            found = match_classes(names, query)
        if as_json:
            doc = [{"index": c.index, "name": c.name} for c in found]
            text = json.dumps(doc, indent=2, ensure_ascii=False)  # control characters: \uXXXX
            sys.stdout.write(INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n")
            return
        width = len(str(found[-1].index)) if found else 1
        sys.stdout.write(
            "".join(f"{c.index:>{width}}  {visible(c.name, one_line=True)}\n" for c in found)
        )
        if not found:
            print_error(f"{query}: no class of {model} matches")
            raise typer.Exit(EXIT_ERROR)
