"""Eigen-CAM (Muhammad & Yeasin, 2020): the layer's activations projected on their first
principal component; class-agnostic, no gradients.

Per image, with ``A`` the layer's activation laid out as the ``(h*w) x C`` matrix ``M`` (one row
per cell)::

    M_c = M - mean over cells (each channel centred)
    M_c = U S V^T (SVD);   map = M_c v_1   (reshaped to h x w)

The sign of a singular vector is arbitrary (``-v_1`` is as valid), so it is fixed: ``v_1`` is
oriented so that its components sum to a non-negative number. Equivalently the map correlates
positively with the channel-mean of the activations (``<M_c v_1, M_c 1> = s_1^2 <v_1, 1>``), i.e.
the map is bright where the layer is active overall; a tie (sum exactly 0) keeps the SVD's sign.
The map is the projection itself, signed (pytorch-grad-cam 1.5.7 applies a ReLU to it and keeps
the SVD's arbitrary sign). Every requested class gets the same map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from camtool.methods.base import MapBatch
from camtool.methods.layers import (
    LayerExplainer,
    layer_of,
)

if TYPE_CHECKING:
    from camtool.models.loading import LoadedModel


def principal_projection(activations: Tensor) -> Tensor:
    """``Tensor[N,h,w]`` float32: each image's centred activations projected on their first
    principal component, sign fixed as the module docstring says."""
    n, _, h, w = activations.shape
    rows = activations.float().flatten(2).transpose(1, 2)  # [N, hw, C]
    centred = rows - rows.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    first = vh[:, 0, :]  # [N, C]
    sign = torch.where(first.sum(dim=-1) < 0, -1.0, 1.0)
    projection = (centred @ first[:, :, None]).squeeze(-1) * sign[:, None]
    return projection.view(n, h, w)


class EigenCamExplainer(LayerExplainer):
    """Eigen-CAM bound to one model and layer."""

    method = "eigencam"
    title = "Eigen-CAM"
    class_agnostic = True

    def __call__(
        self, batch: Tensor, classes: Sequence[int] | None = None, maps: int = 1
    ) -> MapBatch:
        """Map a preprocessed ``Tensor[N,3,h,w]`` batch: one forward pass and a batched SVD.

        Raises:
            ClassSelectionError, ModelRunError, UnsupportedModelError (as the gradient methods).
        """
        read = self.read(batch, classes, maps)
        projection = principal_projection(read.activations)
        result = projection[:, None].expand(-1, read.chosen.shape[1], -1, -1).clone()
        channels = int(read.activations.shape[1])
        return self.result(read.logits, read.chosen, result, channels, read.input_hw, None)


@dataclass(unsafe_hash=True)
class EigenCam:
    """Eigen-CAM: the first principal component of a layer's activations (class-agnostic).

    Muhammad & Yeasin, 2020, "Eigen-CAM: Class Activation Map using Principal Components" (IJCNN
    2020, https://arxiv.org/abs/2008.00299). Per image, with the layer's activation
    (``Tensor[C,h,w]`` float32) laid out as the ``(h*w) x C`` matrix ``M``::

        M_c = M - mean over cells;   M_c = U S V^T;   map = M_c v_1   (reshaped to h x w)

    with ``v_1`` oriented so that its components sum to a non-negative number (the map is bright
    where the layer is active overall). One forward pass and a batched SVD; every requested class
    gets the same ``Tensor[h,w]`` map, so ``maps`` is ``Tensor[N,k,h,w]`` float32. Signed (no
    ReLU), class-agnostic and not a decomposition of any score.
    """

    name: str = "eigencam"
    class_agnostic = True  # every class gets the same map
    summary: str = "Eigen-CAM (Muhammad & Yeasin 2020): first principal component of a layer's activations, class-agnostic; not a decomposition"

    def bind(
        self, model: LoadedModel, *, layer: str | None = None, classifier: str | None = None
    ) -> EigenCamExplainer:
        """Find the target layer (or use ``layer``) and prepare to explain ``model``.

        Raises:
            UnsupportedModelError: a ``classifier`` (only CAM uses one), or no usable layer.
        """
        return EigenCamExplainer(model, layer_of(self.name, model, layer, classifier))


#: The ``eigencam`` method (registered by :mod:`camtool.methods.registry`).
EIGENCAM = EigenCam()
