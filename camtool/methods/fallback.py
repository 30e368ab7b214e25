"""What ``method="auto"`` gives a model that no exact method can explain.

:class:`Substitute`: another method's maps (Grad-CAM), whose summary says that they are not a
decomposition and why no exact method applied. :class:`PredictionsOnly`, when no method at all can
explain the model: it still classifies (loading never depends on a method) and the result says
why there are no maps, so the user can pick a layer or a method that fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from camtool.geometry import FeatureGeometry
from camtool.hooks import eval_mode
from camtool.methods.explainer import Explainer, MapBatch
from camtool.models.network import logits_of, network_failures

if TYPE_CHECKING:
    from camtool.models.loading import LoadedModel


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


class Substitute:
    """An explainer standing in for the exact methods that refused the model: it runs
    ``explainer`` and says, in every result's summary and details, that its maps are no
    decomposition and why each exact method did not apply.

    Attributes:
        explainer: the method that makes the maps; reasons: ``"name: reason"`` per exact method.
    """

    def __init__(self, explainer: Explainer, reasons: Sequence[str]) -> None:
        self.explainer = explainer
        self.method = explainer.method
        self.reasons = tuple(reasons)

    def describe(self) -> str:
        """The method's line, then why no exact method applied."""
        return (
            f"{self.explainer.describe()} (auto: no exact decomposition applies: "
            + "; ".join(self.reasons)
            + ")"
        )

    def as_dict(self) -> dict[str, Any]:
        """The method's facts, with ``auto_reasons``."""
        return {
            **self.explainer.as_dict(),
            "decomposition": False,
            "auto_reasons": list(self.reasons),
        }

    def __call__(
        self, batch: Tensor, classes: Sequence[int] | None = None, maps: int = 1
    ) -> MapBatch:
        """The method's :class:`MapBatch` of ``batch`` (``Tensor[N,3,h,w]`` float, maps
        ``Tensor[N,k,h',w']`` float32), with this summary and details."""
        out = self.explainer(batch, classes, maps)
        details = {**out.details, "auto_reasons": list(self.reasons)}
        return replace(out, summary=self.describe(), details=details)
