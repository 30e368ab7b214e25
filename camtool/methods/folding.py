"""Head algebra: folding the affine pieces after the global pooling into the classifier.

Between the pooling and the classifier a network may run modules that are affine in eval mode:
Dropout, Flatten, Identity (no-ops), eval-mode BatchNorm, Linear layers with no activation between
them, and a LayerNorm over the pooled channels right after the pooling (ConvNeXt, timm's
``fc_norm``). :func:`fold_head` composes them with the classifier into one ``W_eff [K,C]``,
``b_eff [K]`` (a :class:`HeadAffine`). With a LayerNorm, ``mu`` and ``sigma`` are one number per
image, so the composition stays exact::

    logit[n, k] = (1/sigma_n) * sum_c W_eff[k, c] (p[n, c] - mu_n) + b_eff[k]
    cams[n, k]  = (1/sigma_n) * sum_c W_eff[k, c] (F[n, c] - mu_n)

where ``p = mean_hw F``, ``W_eff`` already holds LayerNorm's ``gamma`` and ``b_eff`` its
``W . beta``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from camtool.errors import UnsupportedModelError
from camtool.methods.tree import is_classifier


@dataclass(frozen=True)
class HeadAffine:
    """A classifier with the affine pieces after the pooling folded in.

    The scores of pooled features ``p`` (``Tensor[N,C]``) are
    ``inv_sigma * (p @ weight.T - mu * row_sum) + bias``, where ``mu`` and ``inv_sigma`` are the
    per-image mean and inverse scale of a LayerNorm over the pooled channels (0 and 1 without one).

    Attributes:
        weight: ``Tensor[K,C]`` float32, ``W_eff`` (LayerNorm's ``gamma`` included).
        bias: ``Tensor[K]`` float32, ``b_eff`` (LayerNorm's ``W . beta`` included).
        norm_eps: the LayerNorm's ``eps``; None when there is no LayerNorm.
        row_sum: ``Tensor[K]`` float32, ``weight.sum(1)`` (only used with a LayerNorm).
    """

    weight: Tensor
    bias: Tensor
    norm_eps: float | None = None
    row_sum: Tensor | None = None

    def statistics(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu Tensor[N], inv_sigma Tensor[N])`` of the pooled features (0, 1 without a norm).

        The variance is the biased one, as LayerNorm computes it.
        """
        pooled = pooled.float()
        n = pooled.shape[0]
        if self.norm_eps is None:
            return pooled.new_zeros(n), pooled.new_ones(n)
        mu = pooled.mean(dim=-1)
        variance = pooled.var(dim=-1, unbiased=False)
        return mu, (variance + self.norm_eps).rsqrt()

    def scores(self, pooled: Tensor) -> Tensor:
        """``Tensor[N,K]`` float32: the head's logits from pooled features ``Tensor[N,C]``."""
        pooled = pooled.float()
        mu, inv_sigma = self.statistics(pooled)
        out = pooled @ self.weight.T
        if self.row_sum is not None:
            out = out - mu[:, None] * self.row_sum
        return inv_sigma[:, None] * out + self.bias

    def cams(self, features: Tensor, classes: Tensor) -> Tensor:
        """``Tensor[N,k,h,w]`` float32: the maps of ``classes`` (``Tensor[N,k]``), each image
        with its own ``mu`` and ``sigma``, so that ``mean_hw(cams) + bias`` is the logit."""
        features = features.float()
        mu, inv_sigma = self.statistics(features.mean(dim=(-2, -1)))
        rows = self.weight[classes]  # [N,k,C]
        cams = torch.einsum("nkc,nchw->nkhw", rows, features)
        if self.row_sum is not None:
            cams = cams - (mu[:, None] * self.row_sum[classes])[:, :, None, None]
        return cams * inv_sigma[:, None, None, None]


#: Modules that are no-ops in eval mode (matched by type name, so timm's variants count too).
PASSIVE = ("Dropout", "Flatten", "Identity")


def is_passive(module: nn.Module) -> bool:
    """True for a module that passes its input through in eval mode (Dropout, Flatten, Identity)."""
    return any(p in type(module).__name__ for p in PASSIVE)


def is_channel_norm(module: nn.Module) -> bool:
    """A LayerNorm over one (channel) dimension, incl. torchvision's and timm's LayerNorm2d."""
    return isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1


def fold_problem(fold: Sequence[tuple[str, nn.Module]]) -> tuple[str, nn.Module] | None:
    """The first module of ``fold`` that does not fold into the classifier, or None."""
    active = [(n, m) for n, m in fold if not is_passive(m)]
    for index, (name, module) in enumerate(active):
        if is_channel_norm(module) and index == 0:
            continue
        if is_classifier(module):
            continue
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_var is not None:
            continue
        return name, module
    return None


def fold_head(
    fold: Sequence[tuple[str, nn.Module]], classifier: nn.Module, classifier_name: str = ""
) -> HeadAffine:
    """Compose the modules of ``fold`` (run in that order after the pooling) and ``classifier``
    into one :class:`HeadAffine`, in float64, returned in float32.

    Folds: Dropout, Flatten, Identity (no-ops in eval mode); eval-mode BatchNorm
    (``x * s + t`` with ``s = gamma / sqrt(running_var + eps)``, ``t = beta - running_mean * s``);
    Linear and 1x1 Conv2d layers; a LayerNorm over the channels when it comes first.

    Raises:
        UnsupportedModelError: a module that does not fold (an activation, a norm elsewhere).
    """
    problem = fold_problem(fold)
    if problem is not None:
        name, module = problem
        what = "a normalisation" if "Norm" in type(module).__name__ else "a hidden layer"
        raise UnsupportedModelError(
            name,
            f"{what} ({type(module).__name__}) between the global pooling and the classifier "
            f"'{classifier_name}' does not fold into it",
        )
    weight_parameter = classifier.weight
    assert isinstance(weight_parameter, Tensor)
    weight = weight_parameter.detach().double().reshape(weight_parameter.shape[0], -1)
    bias_parameter = getattr(classifier, "bias", None)
    bias = (
        bias_parameter.detach().double()
        if isinstance(bias_parameter, Tensor)
        else weight.new_zeros(weight.shape[0])
    )
    active = [m for _, m in fold if not is_passive(m)]
    norm = active.pop(0) if active and is_channel_norm(active[0]) else None
    for module in reversed(active):  # from the classifier back to the pooling
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            assert module.running_var is not None and module.running_mean is not None
            scale = (module.running_var.detach().double() + module.eps).rsqrt()
            if module.weight is not None:
                scale = scale * module.weight.detach().double()
            shift = -module.running_mean.detach().double() * scale
            if module.bias is not None:
                shift = shift + module.bias.detach().double()
            bias = bias + weight @ shift
            weight = weight * scale
        else:
            layer_weight = module.weight
            assert isinstance(layer_weight, Tensor)
            layer = layer_weight.detach().double().reshape(layer_weight.shape[0], -1)
            layer_bias = getattr(module, "bias", None)
            if isinstance(layer_bias, Tensor):
                bias = bias + weight @ layer_bias.detach().double()
            weight = weight @ layer
    if norm is None:
        return HeadAffine(weight.float(), bias.float())
    assert isinstance(norm, nn.LayerNorm)
    if norm.bias is not None:
        bias = bias + weight @ norm.bias.detach().double()
    if norm.weight is not None:
        weight = weight * norm.weight.detach().double()
    return HeadAffine(weight.float(), bias.float(), float(norm.eps), weight.sum(1).float())
