"""What ``method="auto"`` gives a model that no method can explain: predictions, no maps.

The model still classifies (loading never depends on a method); the result says why there are no
maps, so the user can pick a layer or a method that fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from camtool.geometry import FeatureGeometry
from camtool.hooks import eval_mode
from camtool.methods.base import MapBatch

if TYPE_CHECKING:
    from camtool.models import LoadedModel


class PredictionsOnly:
    """An explainer that only classifies: its MapBatch has k = 0 maps.

    Attributes:
        model: the loaded model; reasons: why each method refused it (``"name: reason"``).
    """

    method = "none"

    def __init__(self, model: LoadedModel, reasons: Sequence[str]) -> None:
        self.model = model
        self.reasons = tuple(reasons)

    def describe(self) -> str:
        """Why there are no maps, in one line."""
        return "no maps: " + "; ".join(self.reasons)

    def as_dict(self) -> dict[str, Any]:
        """The same, JSON-ready."""
        return {"kind": "none", "reasons": list(self.reasons)}

    def __call__(
        self, batch: Tensor, classes: Sequence[int] | None = None, maps: int = 1
    ) -> MapBatch:
        """Classify ``Tensor[N,3,h,w]``; return logits and empty ``Tensor[N,0,1,1]`` maps."""
        from camtool.models import logits_of, network_failures

        model = self.model
        batch = model.placed(batch)
        autocast = model.autocast()
        with (
            torch.inference_mode(),
            eval_mode(model.module),
            autocast,
            network_failures(model.name, batch),
        ):
            logits = logits_of(model.module(batch), model.name).float()
        n = logits.shape[0]
        input_hw = (int(batch.shape[-2]), int(batch.shape[-1]))
        return MapBatch(
            method=self.method,
            summary=self.describe(),
            logits=logits,
            classes=torch.zeros((n, 0), dtype=torch.int64, device=logits.device),
            maps=torch.zeros((n, 0, 1, 1), device=logits.device),
            geometry=FeatureGeometry.uniform(input_hw, (1, 1)),
            input_hw=input_hw,
            features_shape=(0, 1, 1),
            details=self.as_dict(),
        )
