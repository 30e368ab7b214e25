"""Class Activation Maps, batched and exact.

For a head ``features -> global average pooling -> linear``::

    logits[n, k] = mean_hw(sum_c W[k, c] * F[n, c, h, w]) + b[k]

so ``cams[n, k] = sum_c W[k, c] * F[n, c]`` decomposes the logit exactly, pixel by pixel. Every
batch is checked against that identity (``cams.mean + bias == logits``); its residual is part of
every result and a head that breaks it is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

from camtool.errors import ClassSelectionError, UnsupportedModelError
from camtool.heads import (
    IDENTITY_TOLERANCE,
    FeatureGeometry,
    features_and_logits,
    identity_residual,
    record_geometry,
    relative_scale,
)
from camtool.hooks import eval_mode
from camtool.models import LoadedModel


@dataclass(frozen=True)
class CamBatch:
    """The result of :func:`compute` for a batch of N images and k explained classes each.

    Attributes:
        logits: ``Tensor[N,K]`` float32, the network's output.
        classes: ``Tensor[N,k]`` int64, the explained class of each map.
        cams: ``Tensor[N,k,h,w]`` float32, raw (not normalised) class activation maps.
        bias: ``Tensor[N,k]`` float32, the classifier bias of each explained class.
        residual: ``Tensor[N]`` float32, per image ``max_k |mean(cam_k) + b_k - logit_k|`` over
            *all* K classes: how exactly the maps decompose the logits.
        features_shape: ``(C, h, w)`` of the captured feature map.
        geometry: where the feature cells sit on the input (for aligned upsampling).
        input_hw: (height, width) of the batch the network ran on.
    """

    logits: Tensor
    classes: Tensor
    cams: Tensor
    bias: Tensor
    residual: Tensor
    features_shape: tuple[int, int, int]
    geometry: FeatureGeometry
    input_hw: tuple[int, int]

    @property
    def probabilities(self) -> Tensor:
        """``Tensor[N,K]`` float32, softmax of the logits."""
        return self.logits.softmax(dim=-1)


def compute_cams(features: Tensor, weight: Tensor | None, classes: Tensor) -> Tensor:
    """Weight feature maps by classifier rows.

    Args:
        features: ``Tensor[N,C,h,w]``.
        weight: ``Tensor[K,C]``, the classifier's weight; None when the features already are
            the class maps (C == K, as in SqueezeNet), which are then just selected.
        classes: ``Tensor[N,k]`` int64, the classes to map for each image.

    Returns:
        ``Tensor[N,k,h,w]`` float32 raw CAMs (their spatial mean plus the bias is the logit).
    """
    if weight is None:
        index = classes[:, :, None, None].expand(-1, -1, *features.shape[-2:])
        return features.float().gather(1, index)
    rows = weight.float()[classes]  # [N,k,C]
    return torch.einsum("nkc,nchw->nkhw", rows, features.float())


def select_classes(
    logits: Tensor, classes: Sequence[int] | None, top_k: int, num_classes: int
) -> Tensor:
    """Return ``Tensor[N,k]`` int64: the given classes for every image, else each one's top-k."""
    if classes is not None and len(classes) > 0:
        for c in classes:
            if not 0 <= int(c) < num_classes:
                raise ClassSelectionError(c, f"class index out of range 0..{num_classes - 1}")
        wanted = torch.tensor([int(c) for c in classes], device=logits.device)
        return wanted.expand(logits.shape[0], -1)
    k = max(1, min(top_k, num_classes))
    return logits.topk(k, dim=-1).indices


def compute(
    model: LoadedModel,
    batch: Tensor,
    classes: Sequence[int] | None = None,
    top_k: int = 1,
    tolerance: float | None = None,
) -> CamBatch:
    """Compute the CAMs of a preprocessed batch in one forward pass, with no gradients.

    Args:
        model: a :class:`~camtool.models.LoadedModel` (see :func:`camtool.load_model`).
        batch: ``Tensor[N,3,h,w]`` float, normalised for the model (see ``Preprocessing``).
        classes: class indices to map for every image; default: each image's ``top_k``.
        top_k: how many top classes to map when ``classes`` is not given.
        tolerance: largest accepted relative identity residual; default: by the model's dtype
            (see ``camtool.heads.IDENTITY_TOLERANCE``).

    Raises:
        UnsupportedModelError: the maps do not decompose the logits (CAM would not be exact).
        ClassSelectionError: a class index out of range.
    """
    device = model.device
    batch = batch.to(device)
    if model.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    limit = IDENTITY_TOLERANCE.get(model.dtype, 5e-2) if tolerance is None else tolerance
    autocast = torch.autocast(device.type, dtype=model.dtype, enabled=model.dtype != torch.float32)
    input_hw = (int(batch.shape[-2]), int(batch.shape[-1]))
    known = model.geometry_cache.get(input_hw)
    with torch.inference_mode(), eval_mode(model.module):
        # The first batch of each input size also records where the feature cells sit.
        recording = record_geometry(model.module) if known is None else nullcontext(None)
        with autocast, recording as recorder:
            features, logits = features_and_logits(model.module, model.head, batch)
        feature_hw = (int(features.shape[-2]), int(features.shape[-1]))
        geometry = known or (recorder.geometry(input_hw, feature_hw) if recorder else None)
        geometry = geometry or FeatureGeometry.uniform(input_hw, feature_hw)
        model.geometry_cache[input_hw] = geometry
        residual = identity_residual(features, model.head, logits)
        scale = relative_scale(logits)
        worst = float(residual.max()) if residual.numel() else 0.0
        if not bool(torch.isfinite(logits).all()):
            hint = (
                " (float16 overflows above 65504: try --dtype bfloat16 or float32)"
                if model.dtype == torch.float16
                else ""
            )
            raise UnsupportedModelError(
                model.name, f"the network's output holds NaN or infinity for this batch{hint}"
            )
        if not worst <= limit * scale:  # also refuses NaN and infinity
            raise UnsupportedModelError(
                model.name,
                f"CAM is not exact for head {model.head.describe()}: mean(CAM) + bias differs from "
                f"the logits by {worst:.3g} (logit scale {scale:.3g}); something non-linear "
                "sits between the feature map and the classifier",
            )
        chosen = select_classes(logits, classes, top_k, logits.shape[-1])
        cams = compute_cams(features, model.head.weight, chosen)
        bias = (
            model.head.bias.float()[chosen]
            if model.head.bias is not None
            else torch.zeros(chosen.shape, device=cams.device)
        )
    c, h, w = features.shape[1:]
    shape = (int(c), int(h), int(w))
    return CamBatch(logits.float(), chosen, cams, bias, residual, shape, geometry, input_hw)
