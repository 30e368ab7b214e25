"""The Grad-CAM family: maps from one layer's activations and the gradient of a class score.

Notation: ``A`` is the layer's activation, ``Tensor[N,C,h,w]`` (tokens reshaped to their grid,
see :mod:`camtool.methods.layers`); ``g = dS/dA`` the gradient of the score ``S`` of the mapped
class (its logit by default, its softmax probability with ``target="probability"``); sums over
``ij`` run over the ``h*w`` cells. Each method is its paper's formula:

- ``gradcam`` (Selvaraju et al., 2017): ``w_c = mean_ij g_cij``; ``map = ReLU(sum_c w_c A_c)``.
- ``gradcam++`` (Chattopadhay et al., 2018), with the paper's ``alpha`` in its closed form for an
  exponential score ``Y = exp(S)`` (second and third derivatives of ``Y`` are ``exp(S) g^2`` and
  ``exp(S) g^3``)::

      alpha_cij = g_cij^2 / (2 g_cij^2 + sum_ab A_cab * g_cij^3)   (0 where the denominator is 0)
      w_c = sum_ij alpha_cij * ReLU(g_cij);  map = ReLU(sum_c w_c A_c)

  The paper's weights carry one more factor ``exp(S)``, the same for every channel and cell of a
  map; it is left out (it only scales the map, and overflows for large logits). torchcam 0.5.0
  omits ``alpha``: it divides a boolean-indexed *copy* (``alpha[idx][mask].div_(...)``), so its
  weights are ``sum_ij g^2 * ReLU(g)`` (see tests/methods/test_peers.py).
- ``xgradcam`` (Fu et al., 2020): ``w_c = sum_ij (A_cij / sum_ab A_cab) g_cij`` (0 for a channel
  whose activations sum to 0); ``map = ReLU(sum_c w_c A_c)``.
- ``layercam`` (Jiang et al., 2021): ``map = ReLU(sum_c ReLU(g_c) * A_c)``, cell by cell.
- ``hirescam`` (Draelos & Carin, 2020): ``map = sum_c g_c * A_c``, cell by cell, with no ReLU (the
  paper's definition; pytorch-grad-cam 1.5.7 applies a ReLU to it).

On a head ``GAP -> linear`` the logit's gradient is ``W_k / (h*w)`` at every cell, so Grad-CAM,
XGrad-CAM and ReLU(HiResCAM) all equal ``ReLU(CAM) / (h*w)`` (the golden tests).

How it runs: one forward pass for the whole batch in which only the part of the network after the
target layer records a graph (the layer's tensor becomes a fresh leaf; everything before runs
without gradients), then one ``torch.autograd.grad`` call for all images and all requested classes
(``is_grads_batched``). Images are independent in eval mode, so the gradient of the summed scores
of a batch is each image's own gradient. Parameters' ``requires_grad`` and ``.grad``, the modules'
``training`` flags and the caller's grad mode are left as they were; hooks live only for the call.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from camtool.errors import UnsupportedModelError
from camtool.hooks import eval_mode
from camtool.methods.base import MapBatch, Target, check_target
from camtool.methods.cam import select_classes
from camtool.methods.layers import (
    LayerExplainer,
    TargetLayer,
    layer_of,
    one_tensor,
    prepare_batch,
)
from camtool.models.network import logits_of, network_failures

if TYPE_CHECKING:
    from camtool.models.loading import LoadedModel

#: ``formula(A Tensor[N,C,h,w], g Tensor[k,N,C,h,w]) -> maps Tensor[N,k,h,w]`` (all float32).
Formula = Callable[[Tensor, Tensor], Tensor]


def _combine(weights: Tensor, activations: Tensor) -> Tensor:
    """``sum_c w[k,n,c] * A[n,c]`` as ``Tensor[N,k,h,w]``."""
    return torch.einsum("knc,nchw->nkhw", weights, activations)


def gradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM: ``ReLU(sum_c mean_ij(g_c) A_c)``.

    Args:
        activations: ``A``, ``Tensor[N,C,h,w]`` float32.
        gradients: ``g``, ``Tensor[k,N,C,h,w]`` float32, one gradient per mapped class.

    Returns:
        ``Tensor[N,k,h,w]`` float32.
    """
    return _combine(gradients.mean(dim=(-2, -1)), activations).relu()


def gradcam_plus_plus(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM++ with the paper's alpha (exponential-score closed form).

    ``A``: ``Tensor[N,C,h,w]``, ``g``: ``Tensor[k,N,C,h,w]`` -> ``Tensor[N,k,h,w]`` (float32).
    """
    g2 = gradients.pow(2)
    g3 = g2 * gradients
    totals = activations.sum(dim=(-2, -1), keepdim=True)  # [N,C,1,1]
    denominator = 2 * g2 + totals * g3
    safe = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    alpha = torch.where(denominator != 0, g2 / safe, torch.zeros_like(g2))
    weights = (alpha * gradients.relu()).sum(dim=(-2, -1))
    return _combine(weights, activations).relu()


def xgradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """XGrad-CAM: ``ReLU(sum_c (sum_ij A_cij / sum_ab A_cab * g_cij) A_c)``.

    ``A``: ``Tensor[N,C,h,w]``, ``g``: ``Tensor[k,N,C,h,w]`` -> ``Tensor[N,k,h,w]`` (float32).
    """
    totals = activations.sum(dim=(-2, -1), keepdim=True)
    share = torch.where(
        totals != 0, activations / torch.where(totals != 0, totals, 1.0), torch.zeros(())
    )
    return _combine((share * gradients).sum(dim=(-2, -1)), activations).relu()


def layercam(activations: Tensor, gradients: Tensor) -> Tensor:
    """LayerCAM: ``ReLU(sum_c ReLU(g_c) * A_c)`` cell by cell.

    ``A``: ``Tensor[N,C,h,w]``, ``g``: ``Tensor[k,N,C,h,w]`` -> ``Tensor[N,k,h,w]`` (float32).
    """
    return (gradients.relu() * activations).sum(dim=2).transpose(0, 1).relu()


def hirescam(activations: Tensor, gradients: Tensor) -> Tensor:
    """HiResCAM: ``sum_c g_c * A_c`` cell by cell (no ReLU).

    ``A``: ``Tensor[N,C,h,w]``, ``g``: ``Tensor[k,N,C,h,w]`` -> ``Tensor[N,k,h,w]`` (float32).
    """
    return (gradients * activations).sum(dim=2).transpose(0, 1)


@contextmanager
def leaf_at(target: TargetLayer) -> Iterator[list[Tensor]]:
    """Make the layer's tensor a fresh leaf that requires grad, and turn gradients on from there.

    Run the network under ``torch.no_grad()``: nothing before the layer records a graph, the rest
    does (the hook enables grad mode; the caller's ``no_grad`` block restores it on exit). The
    network continues with a copy of the leaf, so in-place operations after the layer (DenseNet's
    ``relu(..., inplace=True)``) are allowed. The hook is removed on exit, even when an exception
    passes through.

    Yields:
        The leaves, one per forward pass: the layer's raw tensor (e.g. ``Tensor[N,C,h,w]`` or
        tokens ``Tensor[N,L,C]``, the network's floating dtype) with ``requires_grad``.
    """
    seen: list[Tensor] = []

    def swap(tensor: Any) -> Any:
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            return tensor
        leaf = tensor.detach().requires_grad_(True)
        seen.append(leaf)
        torch.set_grad_enabled(True)
        return leaf.clone()

    if target.capture == "input":
        handle = target.module.register_forward_pre_hook(
            lambda _m, args: (swap(args[0]), *args[1:])
        )
    else:
        handle = target.module.register_forward_hook(lambda _m, _args, out: swap(out))
    try:
        yield seen
    finally:
        handle.remove()


def class_gradients(scores: Tensor, activation: Tensor, layer: str) -> Tensor:
    """``Tensor[k,*activation.shape]``: the gradient of each column of ``scores`` (``Tensor[N,k]``)
    summed over the batch, with respect to ``activation``: one backward pass for all k.

    Raises:
        UnsupportedModelError: the scores do not depend on the layer.
    """
    k = int(scores.shape[1])
    grads: Tensor | None
    if k == 1:
        (grad,) = torch.autograd.grad(scores.sum(), activation, allow_unused=True)
        grads = None if grad is None else grad[None]
    else:
        one_hot = torch.eye(k, dtype=scores.dtype, device=scores.device)[:, None, :]
        one_hot = one_hot.expand(k, scores.shape[0], k).contiguous()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # vmap's notes on batching-rule fallbacks
                (grads,) = torch.autograd.grad(
                    scores, activation, one_hot, retain_graph=True, is_grads_batched=True,
                    allow_unused=True,
                )  # fmt: skip
        except RuntimeError:  # an operation vmap cannot batch: one backward pass per class
            parts = [
                torch.autograd.grad(scores[:, j].sum(), activation, retain_graph=True, allow_unused=True)[0]
                for j in range(k)
            ]  # fmt: skip
            grads = None if any(p is None for p in parts) else torch.stack(parts)
    if grads is None:
        raise UnsupportedModelError(layer, "the class scores do not depend on this layer")
    return grads


class GradientExplainer(LayerExplainer):
    """A Grad-CAM-family method bound to one model and layer."""

    def __init__(
        self,
        model: LoadedModel,
        target: TargetLayer,
        score: Target,
        method: str,
        title: str,
        formula: Formula,
    ) -> None:
        super().__init__(model, target, score)
        self.method = method
        self.title = title
        self.formula = formula

    def __call__(
        self, batch: Tensor, classes: Sequence[int] | None = None, maps: int = 1
    ) -> MapBatch:
        """Map a preprocessed ``Tensor[N,3,h,w]`` batch: one forward, one backward pass.

        Raises:
            ClassSelectionError: a class index out of range; ModelRunError: the network fails;
            UnsupportedModelError: the layer does not run once or the score does not depend on it.
        """
        model, target = self.model, self.target
        batch = prepare_batch(model, batch)
        input_hw = (int(batch.shape[-2]), int(batch.shape[-1]))
        with (
            self.recording(batch) as recorder,
            eval_mode(model.module),
            torch.inference_mode(False),
            torch.no_grad(),
            model.autocast(),
            leaf_at(target) as seen,
            network_failures(model.name, batch),
        ):
            logits = logits_of(model.module(batch), model.name)
            leaf = one_tensor(target, seen)
            chosen = select_classes(logits.detach(), classes, maps, int(logits.shape[-1]))
            scores = logits.float() if self.score == "logit" else logits.float().softmax(-1)
            grads = class_gradients(scores.gather(1, chosen), leaf, target.name)
        k = int(chosen.shape[1])
        activations = target.to_grid(leaf.detach(), input_hw).float()
        gradients = target.to_grid(grads.flatten(0, 1), input_hw).float()
        gradients = gradients.view(k, *activations.shape)
        result = self.formula(activations, gradients)
        return self.result(logits, chosen, result, int(activations.shape[1]), input_hw, recorder)


@dataclass(unsafe_hash=True)
class GradientMethod:
    """A Grad-CAM-family method: its registry name, paper title, formula and score.

    Every member reads one layer's activation ``A`` (``Tensor[N,C,h,w]`` float32; tokens on their
    grid) and the gradient ``g = dS/dA`` of the mapped class's score ``S`` (its logit, or its
    softmax probability after ``with_target("probability")``), and combines them by its paper's
    formula into ``maps: Tensor[N,k,h,w]`` float32 (sums over ``ij`` run over the ``h*w`` cells):

    - ``gradcam``: Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra, 2017, "Grad-CAM: Visual
      Explanations from Deep Networks via Gradient-based Localization" (ICCV 2017,
      https://arxiv.org/abs/1610.02391)::

          w_c = mean_ij g_cij;   map = ReLU(sum_c w_c A_c)

    - ``gradcam++``: Chattopadhay, Sarkar, Howlader & Balasubramanian, 2018, "Grad-CAM++:
      Generalized Gradient-based Visual Explanations for Deep Convolutional Networks" (WACV 2018,
      https://arxiv.org/abs/1710.11063), with the paper's ``alpha`` for an exponential score::

          alpha_cij = g_cij^2 / (2 g_cij^2 + sum_ab A_cab * g_cij^3)   (0 where the denominator is 0)
          w_c = sum_ij alpha_cij * ReLU(g_cij);   map = ReLU(sum_c w_c A_c)

    - ``xgradcam``: Fu, Hu, Dong, Zhou, Gao & Liu, 2020, "Axiom-based Grad-CAM: Towards Accurate
      Visualization and Explanation of CNNs" (BMVC 2020, https://arxiv.org/abs/2008.02312)::

          w_c = sum_ij (A_cij / sum_ab A_cab) g_cij;   map = ReLU(sum_c w_c A_c)

    - ``layercam``: Jiang, Zhang, Hou, Cheng & Wei, 2021, "LayerCAM: Exploring Hierarchical Class
      Activation Maps for Localization" (IEEE Transactions on Image Processing 30)::

          map_ij = ReLU(sum_c ReLU(g_cij) * A_cij)

    - ``hirescam``: Draelos & Carin, 2020, "Use HiResCAM instead of Grad-CAM for faithful
      explanations of convolutional neural networks" (https://arxiv.org/abs/2011.08891)::

          map_ij = sum_c g_cij * A_cij          (signed: no ReLU)

    None of them is a decomposition of the score (the results say so). On a head
    ``GAP -> linear``, ``g = W_k / (h*w)`` at every cell, so Grad-CAM, XGrad-CAM and ReLU(HiResCAM)
    equal ``ReLU(CAM) / (h*w)``.

    Attributes:
        name: the registry name; title: the paper's name for it; summary: one line.
        formula: ``(A Tensor[N,C,h,w], g Tensor[k,N,C,h,w]) -> Tensor[N,k,h,w]``, all float32.
        target: the score explained, ``"logit"`` (default) or ``"probability"``.
    """

    name: str
    title: str
    summary: str
    formula: Formula
    target: Target = "logit"
    class_agnostic = False  # each class's own gradient

    def with_target(self, target: str) -> GradientMethod:
        """This method for ``target`` (``"logit"`` or ``"probability"``)."""
        return replace(self, target=check_target(target))

    def bind(
        self, model: LoadedModel, *, layer: str | None = None, classifier: str | None = None
    ) -> GradientExplainer:
        """Find the target layer (or use ``layer``) and prepare to explain ``model``.

        Raises:
            UnsupportedModelError: a ``classifier`` (only CAM uses one), or no usable layer
            (the message says why).
        """
        found = layer_of(self.name, model, layer, classifier)
        return GradientExplainer(model, found, self.target, self.name, self.title, self.formula)


GRADCAM = GradientMethod(
    "gradcam",
    "Grad-CAM",
    "Grad-CAM (Selvaraju et al. 2017): gradient-weighted layer maps; not a decomposition",
    gradcam,
)
GRADCAM_PLUS_PLUS = GradientMethod(
    "gradcam++",
    "Grad-CAM++",
    "Grad-CAM++ (Chattopadhay et al. 2018), with the paper's alpha; not a decomposition",
    gradcam_plus_plus,
)
XGRADCAM = GradientMethod(
    "xgradcam",
    "XGrad-CAM",
    "XGrad-CAM (Fu et al. 2020): activation-weighted gradients; not a decomposition",
    xgradcam,
)
LAYERCAM = GradientMethod(
    "layercam",
    "LayerCAM",
    "LayerCAM (Jiang et al. 2021): positive gradients times activations, cell by cell; not a decomposition",
    layercam,
)
HIRESCAM = GradientMethod(
    "hirescam",
    "HiResCAM",
    "HiResCAM (Draelos & Carin 2020): gradients times activations, cell by cell, signed; not a decomposition",
    hirescam,
)
