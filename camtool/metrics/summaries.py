"""What an evaluation found, per method and measure: :data:`MEASURES` (each measure's direction,
unit and meaning) and :func:`summarize` (the mean and a 95% interval over the images, as
:class:`Summary`).

Intervals: a percentile bootstrap over images (:data:`BOOTSTRAP_RESAMPLES` resamples, seed
:data:`BOOTSTRAP_SEED`), for every measure the same way (MaxBoxAcc: the whole statistic, the best
threshold included, is recomputed on each resample).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0

#: Per measure: (which way is better, unit, what it is).
MEASURES: dict[str, tuple[str, str, str]] = {
    "deletion": ("lower", "", "deletion AUC (probability, RISE)"),
    "insertion": ("higher", "", "insertion AUC (probability, RISE)"),
    "road_morf": ("lower", "", "ROAD MoRF: mean probability, most relevant removed"),
    "road_lerf": ("higher", "", "ROAD LeRF: mean probability, least relevant removed"),
    "average_drop": ("lower", "%", "Average Drop (Grad-CAM++)"),
    "increase_in_confidence": ("higher", "%", "Increase in Confidence (Grad-CAM++)"),
    "completeness": ("lower", "", "|mean(map) + bias - logit| (decompositions only)"),
    "pointing_game": ("higher", "%", "pointing game accuracy (15 px tolerance)"),
    "top1_loc_error": ("lower", "%", "top-1 localization error (CAM paper)"),
    "top5_loc_error": ("lower", "%", "top-5 localization error (CAM paper)"),
    "max_box_acc": ("higher", "%", "MaxBoxAccV2 (IoU 0.3/0.5/0.7)"),
}


@dataclass(frozen=True)
class Summary:
    """One method's result on one measure over the images.

    Attributes:
        method, measure: e.g. ``"cam"``, ``"deletion"``.
        mean: the measure over all images (for MaxBoxAcc: its dataset-level value).
        low, high: the 95% interval (percentile bootstrap over images, 1000 resamples, seed 0;
            ``mean`` itself when n = 1).
        n: images it was measured on; better: ``"lower"`` or ``"higher"``; unit: ``"%"``, ``""``.
    """

    method: str
    measure: str
    mean: float
    low: float
    high: float
    n: int
    better: str
    unit: str = ""


def _measures_of(metric: str) -> list[str]:
    return {
        "road": ["road_morf", "road_lerf"],
        "average_drop": ["average_drop", "increase_in_confidence"],
        "localization": ["top1_loc_error", "top5_loc_error"],
    }.get(metric, [metric])


def summarize(
    records: Sequence[dict[str, Any]], methods: Sequence[str], metrics: Sequence[str]
) -> list[Summary]:
    """One :class:`~camtool.metrics.evaluate.Summary` per method and measure over ``records``
    (measures an image lacks, e.g. completeness for Grad-CAM, are left out of its n)."""
    found = []
    for method in methods:
        for metric in metrics:
            for measure in _measures_of(metric):
                values = [r["results"].get(method, {}).get(measure) for r in records]
                values = [v for v in values if v is not None]
                if not values:
                    continue
                better, unit, _ = MEASURES[measure]
                if measure == "max_box_acc":
                    correct = torch.tensor(
                        [[[c == "1" for c in row] for row in v] for v in values]
                    ).permute(0, 2, 1)  # [N, T, D]
                    mean, low, high = _bootstrap(correct.float(), _max_box_acc)
                else:
                    mean, low, high = _bootstrap(
                        torch.tensor(values, dtype=torch.float64), lambda x: x.mean(dim=-1)
                    )
                found.append(Summary(method, measure, mean, low, high, len(values), better, unit))
    return found


def _max_box_acc(correct: torch.Tensor) -> torch.Tensor:
    """``[..., N, T, D]`` bool-as-float -> ``[...]``: mean over D of the max over T of the mean
    over N, in %."""
    return 100.0 * correct.mean(dim=-3).max(dim=-2).values.mean(dim=-1)


def _bootstrap(values: torch.Tensor, statistic: Any) -> tuple[float, float, float]:
    """``(statistic, 2.5th, 97.5th percentile)`` of ``statistic`` over resamples of the first
    axis (images) of ``values``."""
    n = int(values.shape[0])
    value = float(statistic(values))
    if n < 2:
        return value, value, value
    generator = torch.Generator().manual_seed(BOOTSTRAP_SEED)
    stats = []
    for start in range(0, BOOTSTRAP_RESAMPLES, 100):
        count = min(100, BOOTSTRAP_RESAMPLES - start)
        index = torch.randint(0, n, (count, n), generator=generator)
        stats.append(statistic(values[index]))
    joined = torch.cat(stats).double()
    low, high = torch.quantile(joined, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return value, float(low), float(high)
