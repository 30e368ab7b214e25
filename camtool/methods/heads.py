"""CAM-head discovery (the CAM method's ``bind`` step): which tensor the network pools, which layer classifies it, proven exact.

A *head* tells camtool how to get, from one forward pass, the feature map ``F`` that global
average pooling averages and the logits, and which weights turn ``F`` into class maps. Candidates
are tried in this order, and the first that passes the identity ``mean(CAM) + bias == logits`` on
a probe batch is used:

1. explicit ``layer=``/``classifier=`` module names (``model.named_modules()`` names);
2. timm's contract: ``forward_features`` gives ``F``, ``forward_head`` pools and classifies it;
3. a global-average-pooling module (``AdaptiveAvgPool2d(1)``, timm's ``SelectAdaptivePool2d``
   with ``avg``) followed by a ``Linear`` (or 1x1 ``Conv2d``) classifier: a pre-hook captures
   the pooling's input; with no classifier after it and as many channels as classes, the pooled
   tensor *is* the class maps (SqueezeNet);
4. pooling written as a function call in ``forward`` (``F.adaptive_avg_pool2d``, ``x.mean((2, 3))``),
   found by tracing the network with ``torch.fx``;
5. the network's top-level children run in order up to the pooling (TorchScript models, which take
   no hooks);
6. a timm transformer that averages its patch tokens (``global_pool='avg'``): the tokens, class and
   register tokens (``num_prefix_tokens``) left out, reshaped to their grid are the feature map.

Affine pieces between the pooling and the classifier *fold* into it (:func:`fold_head`): eval-mode
BatchNorm, Linear layers with no activation between them, Dropout, Flatten, Identity compose into
one ``W_eff [K,C]``, ``b_eff [K]``; a LayerNorm over the pooled channels right after the pooling
(ConvNeXt, timm's ``fc_norm``) folds too, with one mean ``mu`` and scale ``sigma`` per image::

    cams[n, k] = (1/sigma_n) * sum_c W_eff[k, c] (F[n, c] - mu_n),   bias[k] = b_eff[k]

where ``W_eff`` already holds LayerNorm's ``gamma`` and ``b_eff`` its ``W . beta``.

When none passes, :class:`UnsupportedModelError` names the reason and the offending module.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from camtool.errors import InvalidArgumentError, UnsupportedModelError
from camtool.hooks import capture_input, capture_output, eval_mode
from camtool.models.network import check_finite_weights, logits_of, probe_image

HeadKind = Literal[
    "explicit", "forward_features", "pool_input", "class_maps", "traced", "sequential", "tokens"
]

#: Largest relative identity residual accepted, by compute dtype (residual / max(1, max |logit|)).
IDENTITY_TOLERANCE: dict[torch.dtype, float] = {
    torch.float32: 1e-3,
    torch.float64: 1e-6,
    torch.float16: 2e-2,
    torch.bfloat16: 5e-2,
}


def probe_text(
    feature_shape: Sequence[int] | None, probe_size: int | None, residual: float | None
) -> str:
    """``", features 2048x7x7 at 224 px, probe residual 2.0e-06"`` (the parts that are known)."""
    text = ""
    if feature_shape is not None:
        text += f", features {'x'.join(map(str, feature_shape))} at {probe_size} px"
    if residual is not None:
        text += f", probe residual {residual:.1e}"
    return text


@dataclass(frozen=True, eq=False)
class CamHead:
    """Where the CAM comes from in a network (see the module docstring for the kinds).

    Attributes:
        kind: how features and logits are obtained.
        feature_name: the module (or traced operation) whose tensor is the feature map.
        classifier_name: the linear classifier's module name ("" for class maps).
        classifier: the ``nn.Linear`` or 1x1 ``nn.Conv2d`` classifier, None for class maps.
        capture: the module hooked (its input for pooling modules, its output for ``explicit``).
        runner: for ``traced``/``sequential``: a module that returns the features (and logits).
        feature_shape: ``(C, h, w)`` of the feature map on the probe batch.
        probe_residual: the identity residual on the probe batch (absolute, over all classes).
        fold: the modules between the pooling and the classifier, in the order they run; the
            affine ones fold into the classifier (see :func:`fold_head`).
        prefix_tokens: for ``tokens`` heads, how many class/register tokens precede the patches.
        patch_size: for ``tokens`` heads, the (height, width) of one patch in input pixels.
    """

    kind: HeadKind
    feature_name: str
    classifier_name: str
    classifier: nn.Module | None
    capture: nn.Module | None = None
    runner: nn.Module | None = None
    feature_shape: tuple[int, int, int] | None = None
    probe_residual: float | None = None
    probe_size: int | None = None
    fold: tuple[tuple[str, nn.Module], ...] = ()
    prefix_tokens: int = 0
    patch_size: tuple[int, int] = (1, 1)

    def affine(self) -> HeadAffine | None:
        """The classifier with everything between the pooling and it folded in (None for class
        maps), from the current weights: the fold is kept until a parameter or buffer of the
        classifier or the folded modules changes (in place, as an optimiser step does, or
        replaced), then made again.

        Raises:
            UnsupportedModelError: a module between the pooling and the classifier does not fold.
        """
        if self.classifier is None:
            return None
        stamp = self._weights_stamp()
        kept = self.__dict__.get("_affine_kept")
        if kept is not None and kept[0] == stamp:
            return cast(HeadAffine, kept[1])
        affine = fold_head(self.fold, self.classifier, self.classifier_name)
        object.__setattr__(self, "_affine_kept", (stamp, affine))  # a cache on a frozen record
        return affine

    def _weights_stamp(self) -> tuple[tuple[int, int, int, str], ...]:
        """Identity, version counter, storage and device of every tensor the fold reads."""
        modules = [m for _, m in self.fold] + ([self.classifier] if self.classifier else [])
        return tuple(
            (id(t), t._version, t.data_ptr(), str(t.device))
            for module in modules
            for t in (*module.parameters(), *module.buffers())
        )

    @property
    def folded(self) -> tuple[tuple[str, str], ...]:
        """``(module name, type name)`` of each folded module that is not a no-op."""
        return tuple((n, type(m).__name__) for n, m in self.fold if not _passive(m))

    @property
    def weight(self) -> Tensor | None:
        """``Tensor[K,C]``: the effective classifier weight, folding included (None for class
        maps)."""
        affine = self.affine()
        return None if affine is None else affine.weight

    @property
    def bias(self) -> Tensor | None:
        """``Tensor[K]``: the effective classifier bias (folding included), or None."""
        affine = self.affine()
        return None if affine is None else affine.bias

    @property
    def num_classes(self) -> int:
        """K, the number of classes."""
        if self.weight is not None:
            return int(self.weight.shape[0])
        assert self.feature_shape is not None
        return self.feature_shape[0]

    def describe(self) -> str:
        """One line, e.g. ``layer4 -> fc (1000x2048), features 2048x7x7 at 224 px, residual 2e-06``."""
        if self.weight is not None:
            k, c = self.weight.shape
            text = f"{self.feature_name} -> {self.classifier_name} ({k}x{c})"
            if self.folded:
                text += f", folded: {', '.join(kind for _, kind in self.folded)}"
        else:
            text = f"{self.feature_name} (class maps)"
        return text + probe_text(self.feature_shape, self.probe_size, self.probe_residual)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready description of the head (``folded`` only when something folded)."""
        return {
            "kind": self.kind,
            "features": self.feature_name,
            "classifier": self.classifier_name,
            "feature_shape": list(self.feature_shape) if self.feature_shape else None,
            "probe_size": self.probe_size,
            "probe_residual": self.probe_residual,
        } | (
            {"folded": [{"module": n, "type": kind} for n, kind in self.folded]}
            if self.folded
            else {}
        )


# --------------------------------------------------------------------------------------------
# Folding


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


_PASSIVE = ("Dropout", "Flatten", "Identity")


def _passive(module: nn.Module) -> bool:
    return any(p in type(module).__name__ for p in _PASSIVE)


def _is_channel_norm(module: nn.Module) -> bool:
    """A LayerNorm over one (channel) dimension, incl. torchvision's and timm's LayerNorm2d."""
    return isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1


def fold_problem(fold: Sequence[tuple[str, nn.Module]]) -> tuple[str, nn.Module] | None:
    """The first module of ``fold`` that does not fold into the classifier, or None."""
    active = [(n, m) for n, m in fold if not _passive(m)]
    for index, (name, module) in enumerate(active):
        if _is_channel_norm(module) and index == 0:
            continue
        if _is_classifier(module):
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
    active = [m for _, m in fold if not _passive(m)]
    norm = active.pop(0) if active and _is_channel_norm(active[0]) else None
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


# --------------------------------------------------------------------------------------------
# Running a head


def features_and_logits(module: nn.Module, head: CamHead, batch: Tensor) -> tuple[Tensor, Tensor]:
    """Run the network once; return ``(features Tensor[N,C,h,w], logits Tensor[N,K])``.

    The features are exactly the tensor the network's global average pooling averages (or, for
    ``explicit`` heads, the named layer's output). Hooks live only for this call.
    """
    if head.kind == "forward_features":
        features = module.forward_features(batch)  # type: ignore[operator]
        return features, module.forward_head(features)  # type: ignore[operator]
    if head.kind == "tokens":
        tokens = module.forward_features(batch)  # type: ignore[operator]
        grid = tokens_to_grid(tokens, head, (int(batch.shape[-2]), int(batch.shape[-1])))
        return grid, module.forward_head(tokens)  # type: ignore[operator]
    name = type(module).__name__
    if head.kind == "traced":
        assert head.runner is not None
        features, output = head.runner(batch)
        return features, logits_of(output, name)
    if head.kind == "sequential":
        assert head.runner is not None
        return head.runner(batch), logits_of(module(batch), name)
    assert head.capture is not None
    return run_capturing(module, batch, head.capture, head.kind != "explicit", head.feature_name)


def run_capturing(
    module: nn.Module, batch: Tensor, point: nn.Module, inputs: bool, name: str
) -> tuple[Tensor, Tensor]:
    """Run ``module`` on ``batch`` once, capturing the input (``inputs``) or the output of
    ``point`` (named ``name``): ``(captured tensor, logits)``.

    Raises:
        UnsupportedModelError: ``point`` did not run exactly once.
    """
    with (capture_input if inputs else capture_output)(point) as captured:
        logits = logits_of(module(batch), type(module).__name__)
    if captured.tensor is None or captured.calls != 1:
        raise UnsupportedModelError(
            name, f"ran {captured.calls} times in one forward pass, expected once"
        )
    return captured.tensor, logits


def tokens_to_grid(tokens: Tensor, head: CamHead, input_hw: tuple[int, int]) -> Tensor:
    """``Tensor[N,T,D]`` transformer tokens -> ``Tensor[N,D,h,w]``: the patch tokens (class and
    register tokens left out) on their grid of ``input size // patch size`` cells."""
    if not isinstance(tokens, Tensor) or tokens.ndim != 3:
        shape = list(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise UnsupportedModelError(head.feature_name, f"gives {shape}, not [N, tokens, D]")
    h, w = input_hw[0] // head.patch_size[0], input_hw[1] // head.patch_size[1]
    patches = tokens[:, head.prefix_tokens :]
    if patches.shape[1] != h * w:
        raise UnsupportedModelError(
            head.feature_name,
            f"gives {patches.shape[1]} patch tokens, not the {h}x{w} grid of the input",
        )
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


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
    """The scale residuals are measured against: ``max(1, max |logit|)``."""
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


# --------------------------------------------------------------------------------------------
# Candidates


def is_global_avg_pool(module: nn.Module) -> bool:
    """True for ``AdaptiveAvgPool2d(1)`` and timm's ``SelectAdaptivePool2d('avg')``."""
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return module.output_size in (1, (1, 1))
    if type(module).__name__ == "SelectAdaptivePool2d":
        return getattr(module, "pool_type", "") == "avg"
    return False


def _is_classifier(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1


def _leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def _named(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if name]


def _name_of(model: nn.Module, target: nn.Module) -> str:
    return next((name for name, m in model.named_modules() if m is target), type(target).__name__)


def _lookup(model: nn.Module, name: str, what: str) -> nn.Module:
    modules = dict(_named(model))
    if name not in modules:
        close = difflib.get_close_matches(name, list(modules), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnsupportedModelError(
            name, f"no {what} module of that name in {type(model).__name__}{hint}"
        )
    return modules[name]


def explicit_candidate(model: nn.Module, layer: str | None, classifier: str | None) -> CamHead:
    """The head the user named: ``layer`` (its output, or a pooling's input) and ``classifier``."""
    named = _named(model)
    head_module = _lookup(model, classifier, "classifier") if classifier else None
    if head_module is not None and not _is_classifier(head_module):
        raise UnsupportedModelError(
            classifier, f"is a {type(head_module).__name__}, not a Linear or 1x1 Conv2d classifier"
        )
    if layer is None:
        index = next(i for i, (_, m) in enumerate(named) if m is head_module)
        pools = [(n, m) for n, m in named[:index] if is_global_avg_pool(m)]
        if not pools:
            raise UnsupportedModelError(
                classifier,
                "no global average pooling before this classifier; name the feature layer too",
            )
        name, pool = pools[-1]
        return CamHead("pool_input", f"{name} input", classifier or "", head_module, capture=pool)
    module = _lookup(model, layer, "layer")
    if head_module is None:
        index = next(i for i, (_, m) in enumerate(named) if m is module)
        after = [(n, m) for n, m in named[index + 1 :] if _is_classifier(m)]
        if not after:
            raise UnsupportedModelError(
                layer, "no Linear classifier after this layer; name the classifier too"
            )
        classifier, head_module = after[-1]
    if is_global_avg_pool(module):
        return CamHead(
            "pool_input",
            f"{layer} input",
            classifier or "",
            head_module,
            capture=module,
            fold=_chain(named, module, head_module),
        )
    return CamHead("explicit", layer, classifier or "", head_module, capture=module)


def _chain(
    named: list[tuple[str, nn.Module]], pool: nn.Module, classifier: nn.Module | None
) -> tuple[tuple[str, nn.Module], ...]:
    """The leaf modules registered between ``pool`` and ``classifier`` (their order of
    registration, taken as the order they run in; the probe proves it), or () when the
    classifier is registered before the pooling."""
    start = next((i for i, (_, m) in enumerate(named) if m is pool), None)
    end = next((i for i, (_, m) in enumerate(named) if m is classifier), None)
    if start is None or end is None or end <= start:
        return ()
    inside = f"{named[start][0]}."
    return tuple((n, m) for n, m in named[start + 1 : end] if _leaf(m) and not n.startswith(inside))


def _with_and_without_fold(head: CamHead) -> Iterator[CamHead]:
    """``head`` folding what sits between its pooling and classifier; then, should that fail,
    the plain head (a module registered there need not run there)."""
    yield head
    if head.fold:
        yield replace(head, fold=())


def timm_candidate(model: nn.Module) -> CamHead | None:
    """timm's contract: ``forward_features`` + ``forward_head`` + a Linear ``get_classifier()``."""
    if not all(
        callable(getattr(model, a, None))
        for a in ("forward_features", "forward_head", "get_classifier")
    ):
        return None
    classifier = model.get_classifier()  # type: ignore[operator]
    if not isinstance(classifier, nn.Module) or not _is_classifier(classifier):
        return None
    named = _named(model)
    end = next((i for i, (_, m) in enumerate(named) if m is classifier), len(named))
    pools = [m for _, m in named[:end] if is_global_avg_pool(m)]
    fold = _chain(named, pools[-1], classifier) if pools else ()
    return CamHead(
        "forward_features",
        "forward_features",
        _name_of(model, classifier),
        classifier,
        fold=fold,
    )


def token_candidate(model: nn.Module) -> CamHead | None:
    """A timm transformer that averages its patch tokens (``global_pool='avg'``, prefix tokens
    left out) and then applies ``fc_norm`` and its classifier: the tokens on their grid."""
    if not all(
        callable(getattr(model, a, None))
        for a in ("forward_features", "forward_head", "get_classifier")
    ):
        return None
    if getattr(model, "global_pool", None) != "avg" or getattr(model, "pool_include_prefix", False):
        return None
    if getattr(model, "attn_pool", None) is not None:
        return None
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    prefix = getattr(model, "num_prefix_tokens", None)
    if not isinstance(prefix, int) or not isinstance(patch, (tuple, list)) or len(patch) != 2:
        return None
    classifier = model.get_classifier()  # type: ignore[operator]
    if not isinstance(classifier, nn.Module) or not isinstance(classifier, nn.Linear):
        return None
    fold = tuple(
        (_name_of(model, m), m)
        for m in (getattr(model, "fc_norm", None), getattr(model, "head_drop", None))
        if isinstance(m, nn.Module)
    )
    return CamHead(
        "tokens",
        "forward_features (patch tokens on their grid)",
        _name_of(model, classifier),
        classifier,
        fold=fold,
        prefix_tokens=prefix,
        patch_size=(int(patch[0]), int(patch[1])),
    )


def pool_module_candidates(model: nn.Module) -> Iterator[CamHead]:
    """Global-average-pooling modules, last first, each with the last classifier registered
    after it; then (registration order need not be the order of ``forward``) with the classifiers
    registered before it, last first; and as class maps when its input could hold them."""
    named = _named(model)
    for index in reversed([i for i, (_, m) in enumerate(named) if is_global_avg_pool(m)]):
        name, pool = named[index]
        after = [(n, m) for n, m in named[index + 1 :] if _is_classifier(m)]
        before = [
            (n, m) for n, m in named[:index] if _is_classifier(m) and not n.startswith(f"{name}.")
        ]
        for classifier_name, classifier in after[-1:] + before[::-1][:3]:
            yield from _with_and_without_fold(
                CamHead(
                    "pool_input",
                    f"{name} input",
                    classifier_name,
                    classifier,
                    capture=pool,
                    fold=_chain(named, pool, classifier),
                )
            )
        if not after:
            yield CamHead("class_maps", f"{name} input", "", None, capture=pool)


def _is_functional_pool(node: Any) -> bool:
    import torch.nn.functional as F

    if node.op == "call_function" and node.target in (
        F.adaptive_avg_pool2d,
        torch._C._nn.adaptive_avg_pool2d,
    ):
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1), [1, 1])
    dims = None
    if (node.op == "call_method" and node.target == "mean") or (
        node.op == "call_function" and node.target is torch.mean
    ):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return (
        dims is not None and sorted(int(d) % 4 for d in dims) == [2, 3]
        if isinstance(dims, (list, tuple))
        else False
    )


def traced_candidates(model: nn.Module) -> Iterator[CamHead]:
    """Pooling written as a function call in ``forward``, found with ``torch.fx``."""
    import torch.fx as fx

    try:
        with eval_mode(model):
            graph_module = fx.symbolic_trace(model)
    except Exception:  # many models cannot be traced symbolically; that only ends this path
        return
    graph = graph_module.graph
    modules = dict(graph_module.named_modules())
    output = next(n for n in graph.nodes if n.op == "output")
    for node in reversed([n for n in graph.nodes if _is_functional_pool(n)]):
        downstream = _descendants(node)
        after = [
            n for n in graph.nodes
            if n in downstream and n.op == "call_module" and _is_classifier(modules[str(n.target)])
        ]  # fmt: skip
        if not after:
            continue
        classifier_name = str(after[-1].target)
        new_graph = fx.Graph()
        env: dict[Any, Any] = {}
        for n in graph.nodes:
            if n.op != "output":
                env[n] = new_graph.node_copy(n, env.__getitem__)
        new_graph.output((env[node.args[0]], env[output.args[0]]))
        runner = fx.GraphModule(graph_module, new_graph)
        op = (
            node.target
            if isinstance(node.target, str)
            else getattr(node.target, "__name__", str(node.target))
        )
        source = node.args[0]
        name = f"{op}({source.target if source.op == 'call_module' else source.name}) in forward"
        yield CamHead("traced", name, classifier_name, modules[classifier_name], runner=runner)


def _descendants(node: Any) -> set[Any]:
    seen: set[Any] = set()
    stack = list(node.users)
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(current.users)
    return seen


def sequential_candidate(model: nn.Module) -> CamHead | None:
    """The top-level children run in order up to a global-average-pooling child (TorchScript)."""
    children = list(model.named_children())
    pools = [
        i
        for i, (_, m) in enumerate(children)
        if is_global_avg_pool(m) or "AdaptiveAvgPool2d" in getattr(m, "original_name", "")
    ]
    if not pools:
        return None
    index = pools[-1]
    after = [
        (n, m)
        for n, m in children[index + 1 :]
        if _is_classifier(m) or getattr(m, "original_name", "") in ("Linear",)
    ]
    if not after:
        return None
    trunk = nn.Sequential(*(m for _, m in children[:index]))
    return CamHead(
        "sequential",
        f"{children[index - 1][0]} (children in order)",
        after[-1][0],
        after[-1][1],
        runner=trunk,
    )


# --------------------------------------------------------------------------------------------
# Discovery


def _candidates(
    model: nn.Module, layer: str | None, classifier: str | None
) -> Iterator[Callable[[], CamHead | None]]:
    if layer or classifier:
        yield lambda: explicit_candidate(model, layer, classifier)
        return
    yield lambda: token_candidate(model)
    timm_head = timm_candidate(model)
    for timm_option in _with_and_without_fold(timm_head) if timm_head else ():
        yield lambda c=timm_option: c  # type: ignore[misc]
    for candidate in pool_module_candidates(model):
        yield lambda c=candidate: c  # type: ignore[misc]
    if isinstance(model, torch.jit.ScriptModule):
        yield lambda: sequential_candidate(model)
        return
    for candidate in traced_candidates(model):
        yield lambda c=candidate: c  # type: ignore[misc]


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


def find_cam_head(
    model: nn.Module,
    layer: str | None = None,
    classifier: str | None = None,
    probe_size: int = 224,
    tolerance: float = IDENTITY_TOLERANCE[torch.float32],
) -> CamHead:
    """Find, and prove on a probe batch, the feature map and classifier of a GAP network.

    Args:
        model: any ``nn.Module`` (or TorchScript module); it is not changed.
        layer, classifier: module names (as in ``model.named_modules()``) that override discovery.
        probe_size: height and width of the random probe image.
        tolerance: largest accepted relative identity residual.

    Raises:
        UnsupportedModelError: no candidate is exact; the message names the reason and module.
    """
    for option, name in (("layer", layer), ("classifier", classifier)):
        if name is not None and not name.strip():
            raise InvalidArgumentError(
                option, "an empty module name names no module; leave it out to find the head"
            )
    check_finite_weights(model)  # a damaged network is refused by loading; direct callers too
    failures: list[str] = []
    for make in _candidates(model, layer, classifier):
        try:
            candidate = make()
            if candidate is None:
                continue
            return probe(model, candidate, probe_size, tolerance)
        except UnsupportedModelError as exc:
            if layer or classifier:
                raise
            failures.append(str(exc))
        except Exception as exc:  # a candidate that crashes the network is just not the head
            if layer or classifier:
                raise UnsupportedModelError(
                    layer or classifier, f"running the network failed: {exc}"
                ) from None
            failures.append(f"{type(exc).__name__}: {exc}")
    raise UnsupportedModelError(
        type(model).__name__, f"CAM is not exact for this network: {diagnose(model, failures)}"
    )


def diagnose(model: nn.Module, failures: list[str] | None = None) -> str:
    """Explain in one phrase why plain CAM cannot be exact for ``model``."""
    named = _named(model)
    leaves = [(n, m) for n, m in named if _leaf(m)]
    pools = [i for i, (_, m) in enumerate(leaves) if is_global_avg_pool(m)]
    classifiers = [i for i, (_, m) in enumerate(leaves) if _is_classifier(m)]
    if (
        pools
        and classifiers
        and classifiers[-1] > pools[-1]
        and fold_problem(leaves[pools[-1] + 1 : classifiers[-1]]) is not None
    ):
        between = [(n, m) for n, m in leaves[pools[-1] + 1 : classifiers[-1]] if not _passive(m)]
        norms = [f"'{n}' ({type(m).__name__})" for n, m in between if "Norm" in type(m).__name__]
        if norms:
            return f"a normalisation after the global pooling: {', '.join(norms)}"
        if between:
            listed = ", ".join(f"'{n}' ({type(m).__name__})" for n, m in between[:3])
            return f"a hidden layer between the global pooling and the classifier: {listed}"
    for name, module in named:
        if isinstance(
            module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
        ) and module.output_size not in (1, (1, 1)):
            size = module.output_size
            text = "x".join(str(s) for s in size) if isinstance(size, tuple) else f"{size}x{size}"
            return f"the classifier flattens the {text} map of '{name}' ({type(module).__name__}) instead of global average pooling"
    if any(
        isinstance(m, nn.MultiheadAttention) or "Attention" in type(m).__name__ for _, m in named
    ):
        return f"no spatial feature map: {type(model).__name__} classifies transformer tokens"
    maxpools = [
        n
        for n, m in named
        if isinstance(m, nn.AdaptiveMaxPool2d) or getattr(m, "pool_type", "") == "max"
    ]
    if maxpools:
        return f"global max pooling ('{maxpools[-1]}'), not average pooling"
    if failures:
        return failures[0]
    return "no global-average-pooling head found (name the feature layer and classifier with layer= and classifier=)"
