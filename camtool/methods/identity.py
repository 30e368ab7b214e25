"""The identity check: CAM's maps must decompose the logits, ``mean_hw(CAM_k) + b_k == logit_k``.

Every CAM head is proven on a random probe batch before it is used (:func:`probe`), and every
batch a CAM explainer maps is checked again (:func:`identity_residual`, :func:`check_exact`). The
residual is measured relative to the logits' scale, ``max(1, max |logit|)``, and refused above a
tolerance that depends on the compute dtype (:data:`IDENTITY_TOLERANCE`). The integrated head
measures its quadrature residual against the same scale.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from camtool.errors import UnsupportedModelError
from camtool.hooks import eval_mode
from camtool.methods.heads import CamHead, features_and_logits
from camtool.models.network import probe_image

#: Largest relative identity residual accepted, by compute dtype (residual / max(1, max |logit|)).
IDENTITY_TOLERANCE: dict[torch.dtype, float] = {
    torch.float32: 1e-3,
    torch.float64: 1e-6,
    torch.float16: 2e-2,
    torch.bfloat16: 5e-2,
}


def identity_residual(features: Tensor, head: CamHead, logits: Tensor) -> Tensor:
    """Return ``Tensor[N]``: ``max_k |mean_hw(CAM_k) + b_k - logit_k|`` over all K classes.

    ``mean_hw(CAM_k) = W_k . mean_hw(F)`` by linearity, so this costs one small matrix product.
    """
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        raise UnsupportedModelError(
            head.classifier_name or head.feature_name,
            "the network's output is not a [N, K] logit tensor",
        )
    pooled = features.float().mean(dim=(-2, -1))
    affine = head.affine()
    if affine is not None and pooled.shape[-1] != affine.weight.shape[1]:
        raise UnsupportedModelError(
            head.feature_name,
            f"gives {pooled.shape[-1]} channels but classifier '{head.classifier_name}' takes {affine.weight.shape[1]}",
        )
    predicted = pooled if affine is None else affine.scores(pooled.to(affine.weight.device))
    if predicted.shape != logits.shape:
        raise UnsupportedModelError(
            head.feature_name,
            f"pooled features map to {list(predicted.shape)} scores but the network gives {list(logits.shape)}",
        )
    return (predicted - logits.float()).abs().amax(dim=-1)


def relative_scale(logits: Tensor) -> float:
    """The scale residuals are measured against: ``max(1, max |logit|)`` over ``logits``
    (``Tensor[N,K]``, any float dtype)."""
    return float(logits.float().abs().amax().clamp(min=1.0))


def check_exact(
    subject: str,
    residual: Tensor,
    logits: Tensor,
    limit: float,
    problem: str,
    advice: str,
    maps: str = "map",
) -> None:
    """Refuse maps whose ``residual`` (``Tensor[N]``) is above ``limit`` relative to the logits'
    scale (NaN and infinity too).

    Raises:
        UnsupportedModelError: ``"<problem>: mean(<maps>) + bias differs from the logits by
        ... (logit scale ...)<advice>"``.
    """
    scale = relative_scale(logits)
    worst = float(residual.max()) if residual.numel() else 0.0
    if not worst <= limit * scale:  # also refuses NaN and infinity
        raise UnsupportedModelError(
            subject,
            f"{problem}: mean({maps}) + bias differs from the logits by {worst:.3g} (logit scale "
            f"{scale:.3g}){advice}",
        )


def probe(model: nn.Module, head: CamHead, size: int, tolerance: float) -> CamHead:
    """Run one random batch through ``head``; return it with its feature shape and residual.

    Raises:
        UnsupportedModelError: the identity does not hold (with the residual in the message).
    """
    batch = probe_image(model, size)
    with torch.inference_mode(), eval_mode(model):
        features, logits = features_and_logits(model, head, batch)
        if not isinstance(features, Tensor) or features.ndim != 4:
            shape = (
                list(features.shape) if isinstance(features, Tensor) else type(features).__name__
            )
            raise UnsupportedModelError(
                head.feature_name, f"gives {shape}, not a [N, C, h, w] feature map"
            )
        if isinstance(logits, Tensor) and not bool(torch.isfinite(logits).all()):
            raise UnsupportedModelError(
                type(model).__name__,
                "the network's output holds NaN or infinity on a probe image (finite weights "
                "that overflow: a damaged or mis-scaled checkpoint)",
            )
        residual = float(identity_residual(features, head, logits).max())
        scale = relative_scale(logits)
    if not residual <= tolerance * scale:  # also refuses NaN and infinity
        raise UnsupportedModelError(
            head.feature_name,
            f"mean(CAM) + bias differs from the logits by {residual:.3g} (logit scale {scale:.3g})",
        )
    c, h, w = (int(v) for v in features.shape[1:])
    return replace(head, feature_shape=(c, h, w), probe_residual=residual, probe_size=size)
