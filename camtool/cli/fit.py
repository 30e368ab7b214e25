"""``camtool fit``: train a head for your own classes on a pretrained backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from camtool.cli.app import app
from camtool.cli.console import console, err_console, errors_to_exit_codes
from camtool.cli.options import DeviceOption


@app.command(short_help="Train a head for your own classes on a pretrained backbone.")
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
        Path | None,
        typer.Option(
            help="Validation folder or CSV.", show_default="a held-out part, --val-fraction"
        ),
    ] = None,
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Part of each class held out without --val.")
    ] = 0.2,
    input_size: Annotated[
        int | None, typer.Option(help="Input size in px.", show_default="the model's")
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
        Path | None,
        typer.Option(
            help="Feature cache folder.",
            show_default="$CAMTOOL_CACHE/fit, else ~/.cache/camtool/fit",
        ),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Neither read nor write it.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a non-empty model folder.")
    ] = False,
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
