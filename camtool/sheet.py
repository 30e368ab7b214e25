"""The comparison sheet: one picture of several explanations' maps, the input once."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from camtool.picture import Picture
from camtool.render import DEFAULT_SCALE, fit_within, labelled_grid

if TYPE_CHECKING:  # the sheet reads explanations; explanation.py imports this module
    from camtool.explanation import Explanation

#: Maps per row in a comparison sheet; more wrap onto further rows.
SHEET_MAPS_PER_ROW = 4

#: The longer side of a comparison sheet's cells at most, in pixels (larger images shrink).
SHEET_CELL_SIDE = 800


def comparison_sheet(
    explanations: Sequence[Explanation],
    alpha: float = 0.5,
    colormap: str = "jet",
    box: bool = False,
    scale: str = DEFAULT_SCALE,
    legend: bool = False,
) -> Picture:
    """The input once, then one row per explanation (per model or per method, say) of its
    classes' overlays; an explanation with more than :data:`SHEET_MAPS_PER_ROW` maps wraps onto
    further rows. The first column holds the input in the first row and names each later row
    (a row of another image shows that image there).

    A class-agnostic explanation (Eigen-CAM) shows its one map once, captioned so. Cells are at
    most :data:`SHEET_CELL_SIDE` pixels on their longer side (larger images are shrunk), so a
    sheet of a large photo stays a sensible size. Captions name the model and the method (when
    they differ between rows), the class and its probability. ``scale`` and ``legend`` are as
    for :meth:`Explanation.overlay`. Returns a picture whose ``tensor`` is ``Tensor[3,H,W]``
    uint8 RGB.
    """
    models = len({ex.model for ex in explanations}) > 1
    methods = len({ex.method for ex in explanations}) > 1
    tiles: list[Tensor] = []
    captions: list[str] = []
    shown = [1 if ex.class_agnostic and ex.explained else len(ex.explained) for ex in explanations]
    per_row = max(1, min(SHEET_MAPS_PER_ROW, max(shown)))
    first = explanations[0]
    blank = torch.full_like(fit_within(first.image, SHEET_CELL_SIDE), 255)
    for number, (ex, count) in enumerate(zip(explanations, shown, strict=True)):
        who = ": ".join([ex.model] * models + [ex.method] * methods)
        overlays = [
            fit_within(
                ex.overlay(
                    ex.explained[i],
                    alpha=alpha,
                    colormap=colormap,
                    box=box,
                    scale=scale,
                    legend=legend,
                ).tensor,
                SHEET_CELL_SIDE,
            )
            for i in range(count)
        ]
        if ex.class_agnostic:
            names = [f"{who or ex.method}: class-agnostic (any class)"] * count
        else:
            names = [f"{who}: {s.name} {s.probability:.2f}" if who else f"{s.name} {s.probability:.2f}"
                     for s in ex.explained]  # fmt: skip
        own_input = number == 0 or (ex.source, ex.image.shape) != (first.source, first.image.shape)
        for start in range(0, max(1, count), per_row):
            if start == 0 and own_input:
                head, text = fit_within(ex.image, SHEET_CELL_SIDE), Path(ex.source).name
            else:
                head, text = blank, (who if start == 0 else "")
            row = [head, *overlays[start : start + per_row]]
            tiles += row + [blank] * (1 + per_row - len(row))
            captions += [text, *names[start : start + per_row]]
            captions += [""] * (1 + per_row - len(row))
    return Picture(labelled_grid(tiles, captions, 1 + per_row))
