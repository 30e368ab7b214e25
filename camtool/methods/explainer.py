"""What an explainer is and what it returns: the seam's two types that every method shares.

An *explainer* is a method bound to one model (see :mod:`camtool.methods.base`); called on a
preprocessed batch ``Tensor[N,3,h,w]`` and the classes to map, it returns a :class:`MapBatch`:
the maps ``Tensor[N,k,h,w]`` float32 and the facts needed to read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor

from camtool.geometry import FeatureGeometry


@dataclass(frozen=True)
class MapBatch:
    """The maps of N images for k classes each, as one method produced them.

    Attributes:
        method: the registry name of the method that made them (``"cam"``).
        summary: one line saying what they were computed from (the explainer's ``describe()``).
        logits: ``Tensor[N,K]`` float32, the network's output.
        classes: ``Tensor[N,k]`` int64, the mapped class of each map.
        maps: ``Tensor[N,k,h,w]`` float32, raw (not normalised).
        geometry: where the maps' cells sit on the network input.
        input_hw: (height, width) of the batch the network ran on.
        features_shape: ``(C, h, w)`` of the feature map the maps were computed from.
        bias: ``Tensor[N,k]`` float32 for decompositions (``maps.mean((-2,-1)) + bias`` is the
            logit), None for methods whose maps do not decompose the score.
        residual: ``Tensor[N]`` float32, per image the largest ``|mean(map) + bias - logit|``
            over all K classes (decompositions only), else None.
        details: JSON-ready facts about how the maps were made (the head or layer used).
        class_agnostic: True when the method gives every class the same map (Eigen-CAM).
    """

    method: str
    summary: str
    logits: Tensor
    classes: Tensor
    maps: Tensor
    geometry: FeatureGeometry
    input_hw: tuple[int, int]
    features_shape: tuple[int, int, int]
    bias: Tensor | None = None
    residual: Tensor | None = None
    details: dict[str, Any] = field(default_factory=dict)
    class_agnostic: bool = False

    @property
    def probabilities(self) -> Tensor:
        """``Tensor[N,K]`` float32, softmax of the logits."""
        return self.logits.softmax(dim=-1)

    @property
    def cams(self) -> Tensor:
        """The maps under the CAM paper's name (``Tensor[N,k,h,w]`` float32)."""
        return self.maps

    @property
    def exact(self) -> bool:
        """True when the maps decompose the logits (they come with a bias and a residual)."""
        return self.bias is not None


class Explainer(Protocol):
    """A method bound to one model: call it on batches."""

    method: str

    def describe(self) -> str:
        """One line saying what the maps are computed from (the head, the layer)."""
        ...

    def as_dict(self) -> dict[str, Any]:
        """The same, JSON-ready."""
        ...

    def __call__(
        self, batch: Tensor, classes: Sequence[int] | None = None, maps: int = 1
    ) -> MapBatch:
        """Map a batch.

        Args:
            batch: ``Tensor[N,3,h,w]`` float, normalised for the model.
            classes: class indices to map for every image; default: each image's top ``maps``.
            maps: how many top classes to map when ``classes`` is not given.
        """
        ...
