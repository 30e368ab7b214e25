"""Class Activation Maps, batched and exact: the ``cam`` method.

For a head ``features -> global average pooling -> linear``::

    logits[n, k] = mean_hw(sum_c W[k, c] * F[n, c, h, w]) + b[k]

so ``cams[n, k] = sum_c W[k, c] * F[n, c]`` decomposes the logit exactly, pixel by pixel. Affine
pieces after the pooling (eval-mode BatchNorm, Linear, Dropout, ...) fold into ``W`` and ``b``, and
a LayerNorm over the pooled channels folds with one mean and scale per image (ConvNeXt, timm
transformers that average their patch tokens): see :func:`camtool.methods.folding.fold_head`.
Binding finds the head and proves it on a probe batch (:mod:`camtool.methods.discovery`); every
batch is then checked against the identity (``cams.mean + bias == logits``,
:mod:`camtool.methods.identity`); its residual is part of every result and a head that breaks it
is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from camtool.errors import ClassSelectionError, UnsupportedModelError
from camtool.geometry import GeometryMemo
from camtool.hooks import eval_mode
from camtool.methods.base import MapBatch, bind
from camtool.methods.discovery import find_cam_head
from camtool.methods.heads import CamHead, features_and_logits
from camtool.methods.identity import IDENTITY_TOLERANCE, check_exact, identity_residual
from camtool.models.network import network_failures

if TYPE_CHECKING:
    from camtool.models.loading import LoadedModel

#: The maps of :func:`compute` (the name CAM users know): a :class:`MapBatch` of method "cam".
CamBatch = MapBatch


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
    logits: Tensor, classes: Sequence[int] | None, maps: int, num_classes: int
) -> Tensor:
    """Return ``Tensor[N,k]`` int64: the given classes for every image, else its top ``maps``."""
    if classes is not None and len(classes) > 0:
        for c in classes:
            if not 0 <= int(c) < num_classes:
                raise ClassSelectionError(c, f"class index out of range 0..{num_classes - 1}")
        wanted = torch.tensor([int(c) for c in classes], device=logits.device)
        return wanted.expand(logits.shape[0], -1)
    k = max(1, min(maps, num_classes))
    return logits.topk(k, dim=-1).indices


class CamExplainer:
    """The CAM method bound to one model: its proven head, and where its cells sit per input size.

    Attributes:
        model: the loaded model; head: the CAM head found (and proven) for it.
    """

    method = "cam"

    def __init__(self, model: LoadedModel, head: CamHead) -> None:
        self.model = model
        self.head = head
        self.geometry = GeometryMemo()

    def describe(self) -> str:
        """The head in one line (feature map -> classifier, shapes, probe residual)."""
        return self.head.describe()

    def as_dict(self) -> dict[str, Any]:
        """The head, JSON-ready."""
        return self.head.as_dict()

    def __call__(
        self,
        batch: Tensor,
        classes: Sequence[int] | None = None,
        maps: int = 1,
        tolerance: float | None = None,
    ) -> MapBatch:
        """Compute the CAMs of a preprocessed batch in one forward pass, with no gradients.

        Args:
            batch: ``Tensor[N,3,h,w]`` float, normalised for the model (see ``Preprocessing``).
            classes: class indices to map for every image; default: each image's top ``maps``.
            maps: how many top classes to map when ``classes`` is not given.
            tolerance: largest accepted relative identity residual; default: by the model's
                dtype (see ``camtool.methods.identity.IDENTITY_TOLERANCE``).

        Raises:
            UnsupportedModelError: the maps do not decompose the logits (CAM would not be exact).
            ClassSelectionError: a class index out of range.
        """
        model, head = self.model, self.head
        batch = model.placed(batch)
        limit = IDENTITY_TOLERANCE.get(model.dtype, 5e-2) if tolerance is None else tolerance
        autocast = model.autocast()
        input_hw = (int(batch.shape[-2]), int(batch.shape[-1]))
        with torch.inference_mode(), eval_mode(model.module):
            # The first batch of each input size also records where the feature cells sit.
            recording = self.geometry.recording(model.module, batch)
            with autocast, recording as recorder, network_failures(model.name, batch):
                features, logits = features_and_logits(model.module, head, batch)
            feature_hw = (int(features.shape[-2]), int(features.shape[-1]))
            geometry = self.geometry.note(recorder, input_hw, feature_hw)
            residual = identity_residual(features, head, logits)
            if not bool(torch.isfinite(logits).all()):
                hint = (
                    " (float16 overflows above 65504: try --dtype bfloat16 or float32)"
                    if model.dtype == torch.float16
                    else ""
                )
                raise UnsupportedModelError(
                    model.name, f"the network's output holds NaN or infinity for this batch{hint}"
                )
            check_exact(
                model.name, residual, logits, limit, f"CAM is not exact for head {head.describe()}",
                "; something non-linear sits between the feature map and the classifier", "CAM",
            )  # fmt: skip
            chosen = select_classes(logits, classes, maps, logits.shape[-1])
            affine = head.affine()
            if affine is None:
                cams = compute_cams(features, None, chosen)
                bias = torch.zeros(chosen.shape, device=cams.device)
            else:
                chosen = chosen.to(affine.weight.device)
                cams = affine.cams(features.to(affine.weight.device), chosen)
                bias = affine.bias[chosen]
        c, h, w = (int(v) for v in features.shape[1:])
        return MapBatch(
            method=self.method,
            summary=head.describe(),
            logits=logits.float(),
            classes=chosen,
            maps=cams,
            geometry=geometry,
            input_hw=input_hw,
            features_shape=(c, h, w),
            bias=bias,
            residual=residual,
            details={"head": head.describe(), "head_detail": head.as_dict()},
        )


class Cam:
    """Class Activation Mapping: the ``cam`` method, an exact decomposition of the logit.

    Zhou, Khosla, Lapedriza, Oliva & Torralba, 2016, "Learning Deep Features for Discriminative
    Localization" (CVPR 2016, https://arxiv.org/abs/1512.04150).

    For a network whose head is ``features -> global average pooling -> linear``, with ``F`` the
    feature map the pooling averages (``Tensor[N,C,h,w]``), ``W`` the classifier weight
    (``Tensor[K,C]``) and ``b`` its bias (``Tensor[K]``)::

        logit[n, k] = mean_hw( sum_c W[k, c] * F[n, c, h, w] ) + b[k]
        maps[n, k, h, w] = sum_c W[k, c] * F[n, c, h, w]

    so ``mean_hw(maps[n, k]) + b[k] == logit[n, k]`` exactly. Affine modules between the pooling
    and the classifier (eval-mode BatchNorm, Linear, Dropout, Flatten) fold into ``W`` and ``b``; a
    LayerNorm over the pooled channels right after the pooling folds with one mean ``mu_n`` and
    scale ``sigma_n`` per image::

        maps[n, k] = (1/sigma_n) * sum_c W_eff[k, c] (F[n, c] - mu_n)

    (see :mod:`camtool.methods.folding`). When the features already are the class maps (``C ==
    K``, no classifier after the pooling: SqueezeNet), the maps are the features themselves.

    Binding finds the head (:func:`camtool.methods.discovery.find_cam_head`) and proves the
    identity on a random probe image; every batch is checked again and its residual reported.
    The explainer (:class:`CamExplainer`) maps ``batch: Tensor[N,3,H,W]`` float to
    ``maps: Tensor[N,k,h,w]`` float32 with ``bias: Tensor[N,k]`` float32 and ``residual:
    Tensor[N]`` float32. The method refuses a network whose head is not affine after the pooling
    (an MLP, a flattened map, a class token): the integrated head or Grad-CAM explain those.
    """

    name = "cam"
    class_agnostic = False
    summary = (
        "Class Activation Maps: exact decomposition of the logit (global average pooling, then "
        "affine layers and at most one LayerNorm, folded into the classifier)"
    )

    def bind(
        self, model: LoadedModel, *, layer: str | None = None, classifier: str | None = None
    ) -> CamExplainer:
        """Find the model's CAM head (or use ``layer``/``classifier``) and prove it exact.

        Raises:
            UnsupportedModelError: no exact CAM head; the message names the reason and module.
        """
        head = find_cam_head(
            model.module, layer, classifier, probe_size=model.preprocessing.input_size
        )
        return CamExplainer(model, head)


#: The ``cam`` method (registered by :mod:`camtool.methods.registry`).
CAM = Cam()


def compute(
    model: LoadedModel,
    batch: Tensor,
    classes: Sequence[int] | None = None,
    maps: int = 1,
    tolerance: float | None = None,
    *,
    layer: str | None = None,
    classifier: str | None = None,
) -> MapBatch:
    """CAMs of a preprocessed batch: the ``cam`` method bound to ``model`` (once) and called.

    ``batch`` is ``Tensor[N,3,h,w]`` float, normalised for the model; the result's ``maps`` are
    ``Tensor[N,k,h',w']`` float32. See :meth:`CamExplainer.__call__` for the arguments and errors.
    """
    explainer = bind("cam", model, layer=layer, classifier=classifier)
    assert isinstance(explainer, CamExplainer)
    return explainer(batch, classes, maps, tolerance)
