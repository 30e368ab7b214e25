"""Integrated head: an exact decomposition for non-linear heads after the pooling.

When an MLP follows the pooling (MobileNetV3's Linear-Hardswish-Dropout-Linear) or the classifier
reads a flattened map (VGG and AlexNet flatten the 7x7 / 6x6 output of their adaptive pooling),
CAM's identity does not hold. Write ``f`` for the head (everything after the pooling), ``p`` for the
pooled (or flattened) features of one image and ``b`` for a baseline (zero by default). Along the
straight path ``x(t) = b + t (p - b)``::

    f_k(p) - f_k(b) = integral_0^1 grad f_k(x(t)) . (p - b) dt = sum_d g_kd (p_d - b_d)

with ``g_k`` the path-averaged gradient (integrated gradients, Sundararajan et al., 2017, applied
to the head alone; the quadrature is in :mod:`camtool.methods.quadrature`). The integral is
computed by a quadrature rule; only the head runs per step,
never the backbone, and all steps of all images go through it in one or a few calls. The maps::

    pooled heads:     maps[k, h, w] = sum_c g_kc (F_c(h, w) - b_c)
    flattened heads:  maps[k, h, w] = h * w * sum_c g_k(c,h,w) (F_c(h, w) - b_(c,h,w))

have ``mean_hw(maps[k]) = sum_d g_kd (p_d - b_d)``, and ``bias[k] = f_k(b)``, so ``mean(map) + bias``
is the logit up to the quadrature residual, which is measured on every batch over all classes (one
forward-mode derivative per step gives all K totals) and refused above a tolerance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from camtool.errors import UnsupportedModelError
from camtool.geometry import GeometryMemo
from camtool.hooks import eval_mode
from camtool.methods.base import MapBatch
from camtool.methods.cam import select_classes
from camtool.methods.heads import probe_text, run_capturing
from camtool.methods.identity import IDENTITY_TOLERANCE, check_exact, relative_scale
from camtool.methods.quadrature import DEFAULT_RULE, DEFAULT_STEPS, Rule, integrate_head, quadrature
from camtool.methods.tree import is_classifier, is_global_avg_pool, is_leaf, lookup, named_modules
from camtool.models.network import network_failures, probe_image

if TYPE_CHECKING:
    from camtool.models.loading import LoadedModel

IntegrationKind = Literal["pooled", "flattened", "forward_head"]

#: Largest accepted relative residual (residual / max(1, max |logit|)), by compute dtype.
INTEGRATION_TOLERANCE: dict[torch.dtype, float] = {
    torch.float32: 1e-2,
    torch.float64: 1e-2,
    torch.float16: 5e-2,
    torch.bfloat16: 5e-2,
}


@dataclass(frozen=True, eq=False)
class IntegrationHead:
    """Where the pooled features come from and which modules make the head.

    Attributes:
        kind: ``pooled`` (a global average pooling's input is the feature map, its mean the
            pooled features), ``flattened`` (an adaptive pooling's output, flattened), or
            ``forward_head`` (timm: ``forward_features`` then ``forward_head``).
        feature_name: the tensor the maps are made from (``"avgpool input"``).
        head_name: the modules of the head (``"classifier.0..classifier.3"``).
        capture: the pooling module hooked (None for ``forward_head``).
        modules: the head's modules, run in this order on the pooled features.
        feature_shape, probe_size, probe_residual: the feature map, probe image size and the
            relative integration residual on the probe batch.
    """

    kind: IntegrationKind
    feature_name: str
    head_name: str
    capture: nn.Module | None = None
    modules: tuple[tuple[str, nn.Module], ...] = ()
    feature_shape: tuple[int, int, int] | None = None
    probe_size: int | None = None
    probe_residual: float | None = None

    def features_and_logits(self, model: nn.Module, batch: Tensor) -> tuple[Tensor, Tensor]:
        """Run the network once: ``(features Tensor[N,C,h,w], logits Tensor[N,K])``."""
        if self.kind == "forward_head":
            features = model.forward_features(batch)  # type: ignore[operator]
            return features, model.forward_head(features)  # type: ignore[operator]
        assert self.capture is not None
        return run_capturing(model, batch, self.capture, self.kind == "pooled", self.feature_name)

    def pool(self, features: Tensor) -> Tensor:
        """``Tensor[N,D]`` float32: the head's input, from ``Tensor[N,C,h,w]`` features."""
        if self.kind == "flattened":
            return features.float().flatten(1)
        return features.float().mean(dim=(-2, -1))

    def runner(self, model: nn.Module) -> Callable[[Tensor], Tensor]:
        """The head alone: pooled ``Tensor[M,D]`` -> logits ``Tensor[M,K]``."""
        if self.kind == "forward_head":
            return lambda x: model.forward_head(x[:, :, None, None])  # type: ignore[operator]
        return _sequence([m for _, m in self.modules])

    def split(
        self, model: nn.Module
    ) -> tuple[Callable[[Tensor], Tensor] | None, Callable[[Tensor], Tensor]]:
        """``(prefix, rest)``: the head's leading affine modules (None when there are none) and
        the modules after them; ``rest(prefix(x))`` is the head, ``Tensor[M,D]`` ->
        ``Tensor[M,K]`` (``prefix``: ``Tensor[M,D]`` -> ``Tensor[M,H]``)."""
        if self.kind == "forward_head":
            return None, self.runner(model)
        modules = [m for _, m in self.modules]
        cut = 0
        while cut < len(modules) - 1 and _affine(modules[cut]):
            cut += 1
        if not any(isinstance(m, nn.Linear) for m in modules[:cut]):
            return None, self.runner(model)
        return _sequence(modules[:cut]), _sequence(modules[cut:])

    def describe(self) -> str:
        """One line: features -> head modules, the feature map, the probe residual."""
        text = f"{self.feature_name} -> {self.head_name}"
        if self.modules:
            text += f" ({', '.join(type(m).__name__ for _, m in self.modules)})"
        return text + probe_text(self.feature_shape, self.probe_size, self.probe_residual)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready description."""
        return {
            "kind": self.kind,
            "features": self.feature_name,
            "head": self.head_name,
            "modules": [{"module": n, "type": type(m).__name__} for n, m in self.modules],
            "feature_shape": list(self.feature_shape) if self.feature_shape else None,
            "probe_size": self.probe_size,
            "probe_residual": self.probe_residual,
        }


def _affine(module: nn.Module) -> bool:
    """True for modules that are affine in eval mode (they may lead a head's integration)."""
    name = type(module).__name__
    return (
        isinstance(module, nn.Linear)
        or any(p in name for p in ("Dropout", "Flatten", "Identity"))
        or (isinstance(module, nn.BatchNorm1d) and module.running_var is not None)
    )


def _sequence(modules: Sequence[nn.Module]) -> Callable[[Tensor], Tensor]:
    """Run ``modules`` in order on ``Tensor[M,D]``: flattening before a Linear, giving a 1x1 map
    to a Conv2d or LayerNorm2d; the result is flattened to ``Tensor[M,K]``."""

    def run(x: Tensor) -> Tensor:
        for module in modules:
            if isinstance(module, nn.Linear) and x.ndim > 2:
                x = x.flatten(1)
            elif x.ndim == 2 and (
                isinstance(module, nn.Conv2d) or type(module).__name__ == "LayerNorm2d"
            ):
                x = x[:, :, None, None]
            x = module(x)
        return x.flatten(1)

    return run


def _is_pooling(module: nn.Module) -> bool:
    return is_global_avg_pool(module) or isinstance(module, nn.AdaptiveAvgPool2d)


def _head_after(
    named: list[tuple[str, nn.Module]], pool_name: str, pool: nn.Module, last: nn.Module | None
) -> IntegrationHead | None:
    """The head run after ``pool``: its leaves registered after it, up to ``last`` (default: the
    last classifier registered after it)."""
    start = next(i for i, (_, m) in enumerate(named) if m is pool)
    inside = f"{pool_name}."
    leaves = [(n, m) for n, m in named[start + 1 :] if is_leaf(m) and not n.startswith(inside)]
    ends = [i for i, (_, m) in enumerate(leaves) if (m is last if last else is_classifier(m))]
    if not ends:
        return None
    modules = tuple(leaves[: ends[-1] + 1])
    head_name = modules[0][0] if len(modules) == 1 else f"{modules[0][0]}..{modules[-1][0]}"
    if is_global_avg_pool(pool):
        return IntegrationHead("pooled", f"{pool_name} input", head_name, pool, modules)
    return IntegrationHead("flattened", f"{pool_name} output", head_name, pool, modules)


def candidates(
    model: nn.Module, layer: str | None = None, classifier: str | None = None
) -> Iterator[IntegrationHead]:
    """Heads to try, in order: the named pooling (and last head module); timm's
    ``forward_features``/``forward_head``; each pooling module, last first, with the leaves
    registered after it up to the last classifier."""
    named = named_modules(model)
    if layer or classifier:
        last = lookup(model, classifier, "classifier") if classifier else None
        if layer:
            pool = lookup(model, layer, "layer")
            if not _is_pooling(pool):
                raise UnsupportedModelError(
                    layer, f"is a {type(pool).__name__}; name the average pooling before the head"
                )
            pools = [(layer, pool)]
        else:
            pools = [(n, m) for n, m in named if _is_pooling(m)][::-1]
        for name, pool in pools:
            head = _head_after(named, name, pool, last)
            if head is not None:
                yield head
                return
        raise UnsupportedModelError(
            layer or classifier or "", "no average pooling followed by this classifier"
        )
    if all(callable(getattr(model, a, None)) for a in ("forward_features", "forward_head")):
        yield IntegrationHead("forward_head", "forward_features", "forward_head")
    for name, pool in [(n, m) for n, m in named if _is_pooling(m)][::-1]:
        head = _head_after(named, name, pool, None)
        if head is not None:
            yield head


class IntegratedHeadExplainer:
    """The ``integrated-head`` method bound to one model.

    Attributes:
        model: the loaded model; head: the proven head; steps, rule: the quadrature;
        baseline: ``Tensor[D]`` or None (zeros).
    """

    method = "integrated-head"

    def __init__(
        self,
        model: LoadedModel,
        head: IntegrationHead,
        steps: int = DEFAULT_STEPS,
        rule: Rule = DEFAULT_RULE,
        baseline: Tensor | None = None,
    ) -> None:
        quadrature(steps, rule)  # refuses bad settings now
        self.model = model
        self.head = head
        self.steps = steps
        self.rule = rule
        self.baseline = baseline
        self.geometry = GeometryMemo()

    def describe(self) -> str:
        """The head and the quadrature in one line."""
        base = "zero" if self.baseline is None else "given"
        return (
            f"{self.head.describe()}; integrated head: {self.steps} {self.rule} steps from a "
            f"{base} baseline"
        )

    def as_dict(self) -> dict[str, Any]:
        """The head and the quadrature, JSON-ready."""
        return {
            **self.head.as_dict(),
            "steps": self.steps,
            "rule": self.rule,
            "baseline": "zeros" if self.baseline is None else "given",
        }

    def __call__(
        self,
        batch: Tensor,
        classes: Sequence[int] | None = None,
        maps: int = 1,
        tolerance: float | None = None,
    ) -> MapBatch:
        """Maps of a preprocessed batch: the backbone once (no gradients), then the head alone
        at every quadrature node.

        Args:
            batch: ``Tensor[N,3,h,w]`` float, normalised for the model.
            classes: class indices to map for every image; default: each image's top ``maps``.
            maps: how many top classes to map when ``classes`` is not given.
            tolerance: largest accepted relative residual; default by the model's dtype
                (:data:`INTEGRATION_TOLERANCE`).

        Raises:
            UnsupportedModelError: the residual is above the tolerance (more steps may help).
            ClassSelectionError: a class index out of range.
        """
        model, head = self.model, self.head
        batch = model.placed(batch)
        limit = INTEGRATION_TOLERANCE.get(model.dtype, 5e-2) if tolerance is None else tolerance
        autocast = model.autocast()
        input_hw = (int(batch.shape[-2]), int(batch.shape[-1]))
        with eval_mode(model.module):
            with torch.inference_mode():
                recording = self.geometry.recording(model.module, batch)
                with autocast, recording as recorder, network_failures(model.name, batch):
                    features, logits = head.features_and_logits(model.module, batch)
                feature_hw = (int(features.shape[-2]), int(features.shape[-1]))
                geometry = self.geometry.note(recorder, input_hw, feature_hw)
                logits = logits.float()
                chosen = select_classes(logits, classes, maps, logits.shape[-1])
                pooled = head.pool(features)
            baseline = (
                torch.zeros(pooled.shape[1], device=pooled.device)
                if self.baseline is None
                else self.baseline.to(pooled.device).float().reshape(-1)
            )
            prefix, rest = head.split(model.module)
            with autocast, network_failures(model.name, batch):
                integral = integrate_head(
                    rest, pooled, baseline, chosen, self.steps, self.rule, prefix=prefix
                )
        with torch.inference_mode():
            residual = (integral.totals + integral.at_baseline - logits).abs().amax(dim=-1)
            check_exact(
                model.name, residual, logits, limit,
                f"the integrated head is not exact enough for {head.describe()}",
                f" with {self.steps} {self.rule} steps; use more steps",
            )  # fmt: skip
            cams = self._maps(features.float(), integral.gradients, baseline)
            bias = integral.at_baseline[chosen]
        c, h, w = (int(v) for v in features.shape[1:])
        return MapBatch(
            method=self.method,
            summary=self.describe(),
            logits=logits,
            classes=chosen,
            maps=cams,
            geometry=geometry,
            input_hw=input_hw,
            features_shape=(c, h, w),
            bias=bias,
            residual=residual,
            details={"head": self.describe(), "head_detail": self.as_dict()},
        )

    def _maps(self, features: Tensor, gradients: Tensor, baseline: Tensor) -> Tensor:
        n, c, h, w = features.shape
        if self.head.kind == "flattened":
            shifted = features - baseline.view(1, c, h, w)
            per_cell = gradients.view(n, -1, c, h, w) * shifted[:, None]
            return per_cell.sum(2) * (h * w)
        shifted = features - baseline.view(1, c, 1, 1)
        return torch.einsum("nkc,nchw->nkhw", gradients, shifted)


def probe(model: LoadedModel, head: IntegrationHead, steps: int, rule: Rule) -> IntegrationHead:
    """Prove ``head`` on a random batch: the head run alone reproduces the network's logits,
    and the integration's residual is within tolerance; return it with its shapes and residual.

    Raises:
        UnsupportedModelError: either check fails (with the numbers).
    """
    size = model.preprocessing.input_size
    module = model.module
    batch = probe_image(module, size)
    with torch.inference_mode(), eval_mode(module):
        features, logits = head.features_and_logits(module, batch)
        if not isinstance(features, Tensor) or features.ndim != 4:
            shape = (
                list(features.shape) if isinstance(features, Tensor) else type(features).__name__
            )
            raise UnsupportedModelError(head.feature_name, f"gives {shape}, not [N, C, h, w]")
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            raise UnsupportedModelError(head.head_name, "the output is not a [N, K] logit tensor")
        alone = head.runner(module)(head.pool(features).to(features.dtype))
        scale = relative_scale(logits)
        if not isinstance(alone, Tensor) or alone.shape != logits.shape:
            raise UnsupportedModelError(
                head.head_name, "run alone on the pooled features it gives no [N, K] logits"
            )
        mismatch = float((alone.float() - logits.float()).abs().max())
        if not mismatch <= IDENTITY_TOLERANCE[torch.float32] * scale:
            raise UnsupportedModelError(
                head.head_name,
                f"run alone on the pooled features it differs from the network by {mismatch:.3g}",
            )
    c, h, w = (int(v) for v in features.shape[1:])
    head = replace(head, feature_shape=(c, h, w), probe_size=size)
    explainer = IntegratedHeadExplainer(replace(model, dtype=torch.float32), head, steps, rule)
    out = explainer(batch.cpu(), maps=1)
    assert out.residual is not None
    return replace(head, probe_residual=float(out.residual.max()) / scale)


class IntegratedHead:
    """The ``integrated-head`` method: integrated gradients of the head after the pooling, an
    exact decomposition of ``logit - logit(baseline)`` up to a measured quadrature residual.

    Integrated gradients: Sundararajan, Taly & Yan, 2017, "Axiomatic Attribution for Deep
    Networks" (ICML 2017, https://arxiv.org/abs/1703.01365), applied to the head alone, on top of
    the feature map of Class Activation Mapping (Zhou et al., 2016, "Learning Deep Features for
    Discriminative Localization").

    With ``F`` the feature map (``Tensor[N,C,h,w]``), ``p`` the pooled features (``mean_hw F``,
    ``Tensor[N,C]``; for flattened heads ``F`` flattened, ``Tensor[N,C*h*w]``), ``f`` the head
    (everything after the pooling, logits ``Tensor[N,K]``), ``b`` the baseline (zeros) and
    ``t_s, w_s`` the quadrature's nodes and weights on [0, 1] (Gauss-Legendre, 128 by default)::

        g[n, k, d] = sum_s w_s * d f_k / d x_d  at  x = b + t_s (p[n] - b)
        pooled heads:     maps[n, k, h, w] = sum_c g[n, k, c] (F[n, c, h, w] - b[c])
        flattened heads:  maps[n, k, h, w] = h * w * sum_c g[n, k, (c,h,w)] (F[n, c, h, w] - b[(c,h,w)])
        bias[n, k] = f_k(b)

    so ``mean_hw(maps[n, k]) + bias[n, k]`` is the logit up to the quadrature residual, which is
    measured over all K classes on every batch and refused above :data:`INTEGRATION_TOLERANCE`.
    The backbone runs once per batch; only the head runs per quadrature node.

    The explainer (:class:`IntegratedHeadExplainer`) maps ``batch: Tensor[N,3,H,W]`` float to
    ``maps: Tensor[N,k,h,w]`` float32 with ``bias: Tensor[N,k]`` and ``residual: Tensor[N]``
    float32. It refuses a network with no average pooling followed by a classifier head that
    reproduces the network's logits.

    Args:
        steps: quadrature nodes per image; rule: ``"gauss-legendre"`` or ``"trapezoid"``.
    """

    name = "integrated-head"
    class_agnostic = False
    summary = (
        "Integrated head: path-integrated gradients of the head after the pooling, a "
        "decomposition of logit - logit(baseline) up to a measured quadrature residual"
    )

    def __init__(self, steps: int = DEFAULT_STEPS, rule: Rule = DEFAULT_RULE) -> None:
        self.steps = steps
        self.rule = rule

    def bind(
        self, model: LoadedModel, *, layer: str | None = None, classifier: str | None = None
    ) -> IntegratedHeadExplainer:
        """Find the pooling and the head after it (or use ``layer``/``classifier``), prove it.

        Raises:
            UnsupportedModelError: no pooling followed by a head reproduces the logits.
        """
        failures = []
        for head in candidates(model.module, layer, classifier):
            try:
                return IntegratedHeadExplainer(
                    model, probe(model, head, self.steps, self.rule), self.steps, self.rule
                )
            except UnsupportedModelError as exc:
                failures.append(str(exc))
            except Exception as exc:  # a candidate that crashes the network is not the head
                failures.append(f"{head.feature_name}: {type(exc).__name__}: {exc}")
        reason = failures[0] if failures else "no average pooling followed by a classifier head"
        raise UnsupportedModelError(type(model.module).__name__, f"no head to integrate: {reason}")


#: The ``integrated-head`` method (registered by :mod:`camtool.methods.registry`).
INTEGRATED_HEAD = IntegratedHead()
