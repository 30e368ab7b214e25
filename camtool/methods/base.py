"""The seam between models and methods, and the registry of methods.

A *method* (CAM, Grad-CAM, ...) binds to a loaded model and returns an *explainer*; an explainer
turns a preprocessed batch and the classes to map into a :class:`MapBatch`. Every entry point
(explain, export, video) goes through this seam once and never knows which method runs::

    explainer = bind("cam", model)                 # discovery, proven on a probe batch
    out = explainer(batch, classes=None, maps=3)  # MapBatch: maps Tensor[N,k,h,w] float32

Methods are found by name in a registry. A new method is one module that defines a
:class:`Method` and one name in :mod:`camtool.methods.registry`, which registers the built-in
methods; the package imports it, so importing any module of :mod:`camtool.methods` fills the
registry first. This module imports no method module.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from torch import nn

from camtool.errors import InvalidArgumentError, UnsupportedModelError
from camtool.hooks import network_lock
from camtool.methods.explainer import Explainer, MapBatch
from camtool.methods.fallback import PredictionsOnly, Substitute
from camtool.methods.tree import ModuleArg, check_module_name, module_name
from camtool.models.loading import LoadedModel, load_model

__all__ = [
    "AUTO_ORDER",
    "DEFAULT_METHOD",
    "EXACT_METHODS",
    "TARGETS",
    "Explainer",
    "MapBatch",
    "Method",
    "Target",
    "bind",
    "can_explain",
    "check_target",
    "get_method",
    "method_names",
    "register",
    "with_target",
]

#: The method used when none is named: the first of :data:`AUTO_ORDER` that can explain the
#: model (exact methods first, then Grad-CAM); a model none of them can explain still gets its
#: predictions.
DEFAULT_METHOD = "auto"

#: The exact methods (their maps decompose the logit), which ``"auto"`` tries first, in order.
EXACT_METHODS: tuple[str, ...] = ("cam", "integrated-head")

#: The methods ``"auto"`` tries, in this order: the exact ones, then Grad-CAM for the rest
#: (class-token transformers, say), whose maps are not a decomposition (its results say so).
AUTO_ORDER: tuple[str, ...] = (*EXACT_METHODS, "gradcam")


#: The score a map explains: the class logit (the default) or its softmax probability.
Target = Literal["logit", "probability"]
TARGETS: tuple[str, ...] = ("logit", "probability")


def check_target(target: str) -> Target:
    """``"logit"`` or ``"probability"``; anything else is a usage error."""
    if target not in TARGETS:
        raise InvalidArgumentError(target, f"unknown target; choose one of {', '.join(TARGETS)}")
    return "logit" if target == "logit" else "probability"


class Method(Protocol):
    """A way of making maps: its name, a one-line summary, whether it gives every class the
    same map (``class_agnostic``: Eigen-CAM), and how it binds to a model."""

    name: str
    summary: str
    class_agnostic: bool

    def bind(
        self, model: LoadedModel, *, layer: str | None = None, classifier: str | None = None
    ) -> Explainer:
        """Prepare to explain ``model``; raise ``UnsupportedModelError`` (with the reason)
        when this method cannot explain it. ``layer``/``classifier`` override discovery."""
        ...


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry under its name; return it."""
    _REGISTRY[method.name] = method
    return method


def method_names() -> tuple[str, ...]:
    """The names of the registered methods, in the order they were registered."""
    return tuple(_REGISTRY)


def get_method(name: str | Method) -> Method:
    """Return the registered method called ``name`` (a method object is returned as is;
    ``"auto"`` is resolved per model by :func:`bind`, not here).

    Raises:
        InvalidArgumentError: no method of that name (a usage error; the message lists them).
    """
    if not isinstance(name, str):
        if not callable(getattr(name, "bind", None)):
            raise InvalidArgumentError(
                "method", f"got {name!r}; give a method name ({', '.join(_REGISTRY)} or auto)"
            )
        return name
    if name not in _REGISTRY:
        raise InvalidArgumentError(
            name, f"unknown method; choose one of {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]


def bind(
    method: str | Method,
    model: LoadedModel | nn.Module | str,
    *,
    layer: ModuleArg = None,
    classifier: ModuleArg = None,
    target: str | None = None,
) -> Explainer:
    """Bind ``method`` to ``model`` (once: the explainer is kept while the model lives).

    ``method="auto"`` binds the first method of :data:`AUTO_ORDER` that can explain the model,
    and, when none can, an explainer that only classifies (its maps are empty and its
    ``describe()`` says why). ``target`` is the score the maps explain (:data:`TARGETS`; None:
    the method's own, the logit except for Score-CAM, whose paper weighs by the probability).
    The exact methods decompose the logit, so they refuse ``"probability"`` (and ``"auto"``
    skips them for it).

    A refusal is remembered as well: binding the same method with the same options to the same
    loaded model again raises the same :class:`UnsupportedModelError` without searching again
    (so ``"auto"`` does not retry the exact methods on every call). Binding holds the network's
    lock (:func:`camtool.hooks.network_lock`), so threads binding to one network at once take
    turns and none sees another's probe pass: a refusal remembered is the model's, never a race's.

    Args:
        method: a registered method's name (or ``"auto"``), or a :class:`Method`.
        model: a loaded model; an ``nn.Module`` or a model name is loaded first, as by
            :func:`camtool.load_model` (the explainer keeps it alive).
        layer: the layer a layer-reading method reads (or CAM's feature layer): a module name
            (``"layer4"``), the module itself (``net.layer4``) or a list of one of them.
        classifier: CAM's classifier, likewise.
        target: the score explained, ``"logit"`` or ``"probability"``.

    Raises:
        InvalidArgumentError: an unknown method name or target, a target the method does not
            explain, a layer module that is not inside the model, or a layer or classifier name
            that names no module of it (also for ``"auto"``).
        UnsupportedModelError: the method cannot explain this model (it says why).
    """
    if not isinstance(model, LoadedModel):
        model = load_model(model)
    model = _cached_form(model)
    layer = module_name(model.module, layer, "layer")
    classifier = module_name(model.module, classifier, "classifier")
    if target is not None:
        target = check_target(target)
    for option, value in (("layer", layer), ("classifier", classifier)):
        if value is not None and not value.strip():
            raise InvalidArgumentError(option, "an empty module name names no module; leave it out")
        if value is not None:
            check_module_name(model.module, value, option)
    with network_lock(model.module):  # the probe passes hook the network: one thread at a time
        if method == "auto":
            return _bind_auto(model, layer, classifier, target)
        chosen = with_target(get_method(method), target)
        known, refused = _memo(model)
        key = (chosen, layer, classifier)
        if key in refused:
            raise UnsupportedModelError(*refused[key])
        if key not in known:
            try:
                known[key] = chosen.bind(model, layer=layer, classifier=classifier)
            except UnsupportedModelError as exc:
                refused[key] = (exc.subject, exc.problem)
                raise
        return known[key]


def _cached_form(model: LoadedModel) -> LoadedModel:
    """The loaded model the explainers are bound to: a caller's handle on a cached model
    (``memo["cached"]``, see :mod:`camtool.binding`) gives the cached one, so that no explainer
    kept in the cache refers to the handle (which holds its network strongly)."""
    ref = model.memo.get("cached")
    found = ref() if ref is not None else None
    return found if isinstance(found, LoadedModel) else model


def _memo(
    model: LoadedModel,
) -> tuple[dict[Any, Explainer], dict[Any, tuple[str | None, str]]]:
    """The explainers bound to ``model`` and the refusals (subject, problem) met, by key; kept in
    the model's own ``memo``, so that they go with it (a global table keyed by the model would
    keep it alive through its explainers)."""
    return model.memo.setdefault("bound", {}), model.memo.setdefault("refused", {})


def with_target(method: Method, target: Target | None) -> Method:
    """``method`` explaining ``target`` (None: its own default).

    Raises:
        InvalidArgumentError: ``method`` cannot explain that score: the exact methods decompose
        the logit (no map's mean plus a bias gives a softmax probability, which depends on every
        class's logit); a class-agnostic method explains no score.
    """
    if target is None:
        return method
    configure = getattr(method, "with_target", None)
    if configure is not None:
        return configure(target)
    if target == "logit" and method.name in EXACT_METHODS:
        return method
    why = (
        "decomposes the class logit; the softmax probability has no such decomposition "
        "(use a gradient method, e.g. gradcam, or --target logit)"
        if method.name in EXACT_METHODS
        else "maps no class score (it is class-agnostic); leave --target out"
    )
    raise InvalidArgumentError(f"--target {target}", f"{method.name} {why}")


def _bind_auto(
    model: LoadedModel, layer: str | None, classifier: str | None, target: Target | None
) -> Explainer:
    """The first method of :data:`AUTO_ORDER` that binds (a method that is no decomposition
    says why no exact one applied); else predictions without maps."""
    reasons = []
    for name in AUTO_ORDER:
        if name in EXACT_METHODS and target == "probability":
            reasons.append(f"{name}: decomposes the logit, not the probability")
            continue
        try:
            explainer = bind(name, model, layer=layer, classifier=classifier, target=target)
        except UnsupportedModelError as exc:
            reasons.append(f"{name}: {exc}")
            continue
        if name in EXACT_METHODS:
            return explainer
        key: tuple[Any, str | None, str | None] = (("auto", name, target), layer, classifier)
        known = _memo(model)[0]
        if key not in known:
            known[key] = Substitute(explainer, reasons)
        return known[key]
    known = _memo(model)[0]
    key = ("none", layer, classifier)
    if key not in known:
        known[key] = PredictionsOnly(model, reasons)
    return known[key]


def can_explain(method: str | Method, model: LoadedModel) -> tuple[bool, str]:
    """``(True, what it uses)`` when ``method`` can explain ``model``, else ``(False, why not)``."""
    try:
        return True, bind(method, model).describe()
    except UnsupportedModelError as exc:
        return False, str(exc)
