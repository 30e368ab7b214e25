"""Class Activation Maps, batched and exact.

For a head ``features -> global average pooling -> linear``::

    logits[n, k] = mean_hw(sum_c W[k, c] * F[n, c, h, w]) + b[k]

so ``cams[n, k] = sum_c W[k, c] * F[n, c]`` decomposes the logit exactly, pixel by pixel. Every
batch is checked against that identity (``cams.mean + bias == logits``); its residual is part of
every result and a head that breaks it is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from camtool.errors import ClassSelectionError, UnsupportedModelError
from camtool.hooks import capture_input, eval_mode
from camtool.models import CamHead, LoadedModel

#: Largest relative identity residual accepted for float32 (residual / max(1, max |logit|)).
IDENTITY_TOLERANCE = 1e-3


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
    """

    logits: Tensor
    classes: Tensor
    cams: Tensor
    bias: Tensor
    residual: Tensor
    features_shape: tuple[int, int, int]

    @property
    def probabilities(self) -> Tensor:
        """``Tensor[N,K]`` float32, softmax of the logits."""
        return self.logits.softmax(dim=-1)


def features_and_logits(model: LoadedModel, batch: Tensor) -> tuple[Tensor, Tensor]:
    """Run the network once and return ``(features Tensor[N,C,h,w], logits Tensor[N,K])``.

    The features are exactly the tensor the network's global average pooling averages.
    """
    module, head = model.module, model.head
    if head.kind == "forward_features":
        features = module.forward_features(batch)  # type: ignore[operator]
        return features, module.forward_head(features)  # type: ignore[operator]
    assert head.pool is not None
    with capture_input(head.pool) as captured:
        logits = module(batch)
    if captured.tensor is None or captured.calls != 1:
        raise UnsupportedModelError(
            model.name,
            f"pooling '{head.feature_name}' ran {captured.calls} times in one forward pass",
        )
    return captured.tensor, logits


def compute_cams(features: Tensor, weight: Tensor, classes: Tensor) -> Tensor:
    """Weight feature maps by classifier rows.

    Args:
        features: ``Tensor[N,C,h,w]``.
        weight: ``Tensor[K,C]``, the classifier's weight.
        classes: ``Tensor[N,k]`` int64, the classes to map for each image.

    Returns:
        ``Tensor[N,k,h,w]`` float32 raw CAMs (their spatial mean plus the bias is the logit).
    """
    rows = weight.float()[classes]  # [N,k,C]
    return torch.einsum("nkc,nchw->nkhw", rows, features.float())


def identity_residual(features: Tensor, head: CamHead, logits: Tensor) -> Tensor:
    """Return ``Tensor[N]``: ``max_k |mean_hw(CAM_k) + b_k - logit_k|`` over all classes.

    ``mean_hw(CAM_k) = W_k . mean_hw(F)`` by linearity, so this costs one small matrix product.
    """
    pooled = features.float().mean(dim=(-2, -1))
    predicted = pooled @ head.weight.float().T
    if head.bias is not None:
        predicted = predicted + head.bias.float()
    return (predicted - logits.float()).abs().amax(dim=-1)


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
    tolerance: float = IDENTITY_TOLERANCE,
) -> CamBatch:
    """Compute the CAMs of a preprocessed batch in one forward pass, with no gradients.

    Args:
        model: a :class:`~camtool.models.LoadedModel` (see :func:`camtool.load_model`).
        batch: ``Tensor[N,3,h,w]`` float, normalised for the model (see ``Preprocessing``).
        classes: class indices to map for every image; default: each image's ``top_k``.
        top_k: how many top classes to map when ``classes`` is not given.
        tolerance: largest accepted relative identity residual.

    Raises:
        UnsupportedModelError: the maps do not decompose the logits (CAM would not be exact).
        ClassSelectionError: a class index out of range.
    """
    batch = batch.to(model.device)
    with torch.inference_mode(), eval_mode(model.module):
        features, logits = features_and_logits(model, batch)
        if features.ndim != 4:
            raise UnsupportedModelError(
                model.name,
                f"'{model.head.feature_name}' gives a {features.ndim}-d tensor, not a feature map",
            )
        residual = identity_residual(features, model.head, logits)
        scale = logits.float().abs().amax().clamp(min=1.0)
        worst = float(residual.max()) if residual.numel() else 0.0
        if worst > tolerance * float(scale):
            raise UnsupportedModelError(
                model.name,
                f"CAM is not exact for head {model.head.describe()}: mean(CAM) + bias differs from "
                f"the logits by {worst:.3g} (logit scale {float(scale):.3g}); something non-linear "
                "sits between the feature map and the classifier",
            )
        chosen = select_classes(logits, classes, top_k, logits.shape[-1])
        cams = compute_cams(features, model.head.weight, chosen)
        bias = (
            model.head.bias.float()[chosen]
            if model.head.bias is not None
            else torch.zeros_like(cams[:, :, 0, 0])
        )
    c, h, w = features.shape[1:]
    return CamBatch(logits.float(), chosen, cams, bias, residual, (int(c), int(h), int(w)))
