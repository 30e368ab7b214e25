"""Score-CAM (Wang et al., 2020): channel weights from the network's own score of masked inputs.

For each channel ``c`` of the target layer's activation ``A`` (``Tensor[N,C,h,w]``)::

    H_c = s(Up(A_c))                 upsampled to the input (bilinear), min-max normalised to [0, 1]
                                     (a constant channel gives H_c = 0)
    w_c = softmax(f(X * H_c))[k]     the softmax probability of class k for the masked input
    map = ReLU(sum_c w_c A_c)

as in the paper's Algorithm 1 (normalise after upsampling; the weight is the class's softmax
probability). ``target="logit"`` weights by the masked input's logit instead. No gradients: it
runs under ``torch.inference_mode``, the masked inputs of all images and channels in batches of
``batch_size``. pytorch-grad-cam 1.5.7 instead weights by a softmax over the channels of the
logits; torchcam 0.5.0 by a softmax over the channels of the logit increase over the unmasked
input, and normalises before upsampling (see tests/methods/test_peers.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from camtool.hooks import eval_mode
from camtool.methods.base import MapBatch, Target, check_target
from camtool.methods.layers import (
    LayerExplainer,
    TargetLayer,
    layer_of,
)
from camtool.models.network import logits_of, network_failures
from camtool.progress import Meter, Work

if TYPE_CHECKING:
    from camtool.models.loading import LoadedModel


#: Two channels of one image share a masked input when their min-max normalised grids differ by
#: at most this much in every cell (float rounding makes grids that are equal in exact arithmetic
#: differ by ~1e-7; a mask that differs by 1e-5 changes a score far less than that).
GRID_TOLERANCE = 1e-5


def channel_masks(activations: Tensor, input_hw: tuple[int, int]) -> Tensor:
    """``H_c = s(Up(A_c))``: ``Tensor[N,C,H,W]`` float32 in [0, 1] from ``Tensor[N,C,h,w]``."""
    up = F.interpolate(activations.float(), size=input_hw, mode="bilinear", align_corners=False)
    flat = up.flatten(-2)
    low = flat.amin(dim=-1, keepdim=True)
    span = flat.amax(dim=-1, keepdim=True) - low
    masks = (flat - low) / torch.where(span > 0, span, torch.ones_like(span))
    return masks.where(span > 0, torch.zeros_like(masks)).view_as(up)


class ScoreCamExplainer(LayerExplainer):
    """Score-CAM bound to one model and layer."""

    method = "scorecam"
    title = "Score-CAM"

    def __init__(
        self, model: LoadedModel, target: TargetLayer, score: Target, batch_size: int
    ) -> None:
        super().__init__(model, target, score)
        self.batch_size = batch_size

    @property
    def forward_passes_per_image(self) -> int:
        """At most ``1 + C`` forward passes per image: the one that reads the layer's ``C``
        channels, then one per channel's masked input (1 when ``C`` is not known yet)."""
        shape = self.target.probe_shape
        return 1 + (int(shape[0]) if shape else 0)

    def __call__(
        self, batch: Tensor, classes: Sequence[int] | None = None, maps: int = 1
    ) -> MapBatch:
        """Map a preprocessed ``Tensor[N,3,h,w]`` batch (``N*C`` masked forward passes, batched).

        Its progress goes to the current :mod:`camtool.progress` callback, in forward passes
        (one image through the network): ``N * (C + 1) + 1`` at most (the reading pass, one
        per channel, the blank input), then the exact count once the shared masks are known.

        Raises:
            ClassSelectionError, ModelRunError, UnsupportedModelError (as the gradient methods).
        """
        started = time.perf_counter()
        read = self.read(batch, classes, maps)
        model = self.model
        n, channels = int(read.activations.shape[0]), int(read.activations.shape[1])
        work = Work("Score-CAM", "forward passes", n * (channels + 1) + 1, channels + 1, n)
        meter = Meter(work, started=started)
        meter.advance(n)  # the pass that read the layer
        with (
            eval_mode(model.module),
            torch.inference_mode(),
            model.autocast(),
            network_failures(model.name, read.batch),
        ):
            weights = self.channel_weights(read.batch, read.activations, read.chosen, meter)
            result = torch.einsum("nck,nchw->nkhw", weights, read.activations).relu()
        meter.finish()
        return self.result(read.logits, read.chosen, result, channels, read.input_hw, None)

    def channel_weights(
        self, batch: Tensor, activations: Tensor, chosen: Tensor, meter: Meter | None = None
    ) -> Tensor:
        """``Tensor[N,C,k]``: the score of each mapped class on each channel's masked input
        (``meter``: counts each forward pass, one per input image).

        Only distinct masked inputs run through the network, ``batch_size`` per forward pass:

        - a channel that is constant over the grid has the mask 0, so its masked input is all
          zeros: that input's score is computed once and shared;
        - the mask depends on the channel only through its min-max normalised grid (upsampling
          is linear and keeps constants, so ``s(Up(a A + b)) = s(Up(A))`` for ``a > 0``): the
          channels of one image whose normalised grids are equal within :data:`GRID_TOLERANCE`
          (float rounding; after a ReLU, all those with a single active cell, say) share one
          masked input and its score (see :func:`shared_grids`).
        """
        model = self.model
        n, channels = int(activations.shape[0]), int(activations.shape[1])
        input_hw = (int(batch.shape[-2]), int(batch.shape[-1]))

        def scores_of(inputs: Tensor) -> Tensor:
            if model.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            out = logits_of(model.module(inputs), model.name).float()
            return out.softmax(-1) if self.score == "probability" else out

        blank = scores_of(torch.zeros_like(batch[:1]))[0]  # [K]
        if meter is not None:
            meter.advance(1)
        weights = blank[chosen][:, None, :].expand(n, channels, -1).clone()
        flat = activations.flatten(2)
        low, high = flat.amin(dim=-1), flat.amax(dim=-1)
        live = (high > low).nonzero()  # [P, 2]: (image, channel)
        image, channel = live.unbind(1)
        grids = (flat[image, channel] - low[image, channel, None]) / (
            high[image, channel, None] - low[image, channel, None]
        )  # [P, h*w], each in [0, 1]
        distinct, which = shared_grids(image, grids)  # [U], [P]
        if meter is not None:  # the exact count: one pass per distinct masked input
            meter.retotal(meter.done + int(distinct.shape[0]))
        owner = image[distinct]
        distinct_grids = grids[distinct]
        grid_shape = activations.shape[-2:]
        scores = torch.empty((int(distinct.shape[0]), int(chosen.shape[1])), device=batch.device)
        for start in range(0, int(distinct.shape[0]), self.batch_size):
            rows = slice(start, start + self.batch_size)
            masks = channel_masks(distinct_grids[rows].view(-1, 1, *grid_shape), input_hw)
            masked = batch[owner[rows]] * masks.to(batch.dtype)
            scores[rows] = scores_of(masked).gather(1, chosen[owner[rows]])
            if meter is not None:
                meter.advance(int(masked.shape[0]))
        weights[image, channel] = scores[which]
        return weights


def shared_grids(image: Tensor, grids: Tensor) -> tuple[Tensor, Tensor]:
    """Group the normalised grids of each image that are equal within :data:`GRID_TOLERANCE`.

    Args:
        image: ``Tensor[P]`` int64, the image each grid belongs to.
        grids: ``Tensor[P,h*w]`` float, min-max normalised channel grids.

    Returns:
        ``(distinct, which)``: ``Tensor[U]`` int64, the rows that stand for their group (the
        first of each, in order), and ``Tensor[P]`` int64, the group of every row (an index into
        ``distinct``). A row joins the first earlier group of its image whose first grid is within
        the tolerance in every cell, so the grouping does not depend on the order of the rounding
        errors, only on the order of the channels.
    """
    which = torch.full((int(image.shape[0]),), -1, dtype=torch.long)
    distinct: list[int] = []
    for n in image.unique().tolist():
        rows = (image == n).nonzero().squeeze(1)
        near = (torch.cdist(grids[rows], grids[rows], p=float("inf")) <= GRID_TOLERANCE).cpu()
        near_rows, group = near.numpy(), np.full(int(rows.shape[0]), -1)
        owners = rows.cpu().tolist()  # one device-to-host copy per image, not one per group
        for i in range(len(group)):
            if group[i] < 0:
                group[near_rows[i] & (group < 0)] = len(distinct)
                distinct.append(owners[i])
        which[owners] = torch.from_numpy(group)
    device = grids.device
    return torch.tensor(distinct, dtype=torch.long, device=device), which.to(device)


@dataclass(unsafe_hash=True)
class ScoreCam:
    """Score-CAM: the class's softmax probability on each channel-masked input weighs the channel.

    Wang, Wang, Du, Yang, Zhang, Ding, Mardziel & Hu, 2020, "Score-CAM: Score-Weighted Visual
    Explanations for Convolutional Neural Networks" (CVPR Workshops 2020,
    https://arxiv.org/abs/1910.01279), Algorithm 1. With ``X`` the batch (``Tensor[N,3,H,W]``),
    ``A`` the target layer's activation (``Tensor[N,C,h,w]`` float32) and ``f`` the network::

        H_c = s(Up(A_c))                 bilinear upsampling to H x W, min-max normalised to [0, 1]
        w_c = softmax(f(X * H_c))[k]     (target="logit": f(X * H_c)[k])
        map = ReLU(sum_c w_c A_c)        Tensor[N,k,h,w] float32

    No gradients; ``N*C`` masked forward passes at most (channels with the same normalised grid
    share one), ``batch_size`` per call. Not a decomposition of the score.

    Attributes:
        name, summary: the registry name and one line.
        target: the score that weighs a channel, ``"probability"`` (the paper's) or ``"logit"``.
        batch_size: masked inputs per forward pass.
    """

    name: str = "scorecam"
    class_agnostic = False
    summary: str = "Score-CAM (Wang et al. 2020): channels weighted by the class's score on masked inputs; not a decomposition"
    target: Target = "probability"
    batch_size: int = 64

    def with_target(self, target: str) -> ScoreCam:
        """This method weighting by ``target`` (``"probability"``, the paper's, or ``"logit"``)."""
        return replace(self, target=check_target(target))

    def bind(
        self, model: LoadedModel, *, layer: str | None = None, classifier: str | None = None
    ) -> ScoreCamExplainer:
        """Find the target layer (or use ``layer``) and prepare to explain ``model``.

        Raises:
            UnsupportedModelError: a ``classifier`` (only CAM uses one), or no usable layer.
        """
        found = layer_of(self.name, model, layer, classifier)
        return ScoreCamExplainer(model, found, self.target, self.batch_size)


#: The ``scorecam`` method (registered by :mod:`camtool.methods.registry`).
SCORECAM = ScoreCam()
