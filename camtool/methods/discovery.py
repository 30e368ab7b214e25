"""CAM-head discovery (the CAM method's ``bind`` step): which tensor the network pools, which layer classifies it, proven exact.

Candidates (:class:`~camtool.methods.heads.CamHead`) are tried in this order, and the first that
passes the identity ``mean(CAM) + bias == logits`` on a probe batch
(:func:`camtool.methods.identity.probe`) is used:

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

Affine pieces between the pooling and the classifier fold into it
(:func:`camtool.methods.folding.fold_head`); a candidate is tried with them folded, then, should
that fail, without (a module registered there need not run there).

When none passes, :class:`UnsupportedModelError` names the reason and the offending module
(:func:`diagnose`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from camtool.errors import InvalidArgumentError, UnsupportedModelError
from camtool.hooks import eval_mode
from camtool.methods.folding import fold_problem, is_passive
from camtool.methods.heads import CamHead
from camtool.methods.identity import IDENTITY_TOLERANCE, probe
from camtool.methods.tree import (
    is_classifier,
    is_global_avg_pool,
    is_leaf,
    lookup,
    name_of,
    named_modules,
)
from camtool.models.network import check_finite_weights

# --------------------------------------------------------------------------------------------
# Candidates


def explicit_candidate(model: nn.Module, layer: str | None, classifier: str | None) -> CamHead:
    """The head the user named: ``layer`` (its output, or a pooling's input) and ``classifier``."""
    named = named_modules(model)
    head_module = lookup(model, classifier, "classifier") if classifier else None
    if head_module is not None and not is_classifier(head_module):
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
    module = lookup(model, layer, "layer")
    if head_module is None:
        index = next(i for i, (_, m) in enumerate(named) if m is module)
        after = [(n, m) for n, m in named[index + 1 :] if is_classifier(m)]
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
    return tuple(
        (n, m) for n, m in named[start + 1 : end] if is_leaf(m) and not n.startswith(inside)
    )


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
    if not isinstance(classifier, nn.Module) or not is_classifier(classifier):
        return None
    named = named_modules(model)
    end = next((i for i, (_, m) in enumerate(named) if m is classifier), len(named))
    pools = [m for _, m in named[:end] if is_global_avg_pool(m)]
    fold = _chain(named, pools[-1], classifier) if pools else ()
    return CamHead(
        "forward_features",
        "forward_features",
        name_of(model, classifier),
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
        (name_of(model, m), m)
        for m in (getattr(model, "fc_norm", None), getattr(model, "head_drop", None))
        if isinstance(m, nn.Module)
    )
    return CamHead(
        "tokens",
        "forward_features (patch tokens on their grid)",
        name_of(model, classifier),
        classifier,
        fold=fold,
        prefix_tokens=prefix,
        patch_size=(int(patch[0]), int(patch[1])),
    )


def pool_module_candidates(model: nn.Module) -> Iterator[CamHead]:
    """Global-average-pooling modules, last first, each with the last classifier registered
    after it; then (registration order need not be the order of ``forward``) with the classifiers
    registered before it, last first; and as class maps when its input could hold them."""
    named = named_modules(model)
    for index in reversed([i for i, (_, m) in enumerate(named) if is_global_avg_pool(m)]):
        name, pool = named[index]
        after = [(n, m) for n, m in named[index + 1 :] if is_classifier(m)]
        before = [
            (n, m) for n, m in named[:index] if is_classifier(m) and not n.startswith(f"{name}.")
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
            if n in downstream and n.op == "call_module" and is_classifier(modules[str(n.target)])
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
        if is_classifier(m) or getattr(m, "original_name", "") in ("Linear",)
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
    named = named_modules(model)
    leaves = [(n, m) for n, m in named if is_leaf(m)]
    pools = [i for i, (_, m) in enumerate(leaves) if is_global_avg_pool(m)]
    classifiers = [i for i, (_, m) in enumerate(leaves) if is_classifier(m)]
    if (
        pools
        and classifiers
        and classifiers[-1] > pools[-1]
        and fold_problem(leaves[pools[-1] + 1 : classifiers[-1]]) is not None
    ):
        between = [(n, m) for n, m in leaves[pools[-1] + 1 : classifiers[-1]] if not is_passive(m)]
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
