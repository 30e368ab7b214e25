"""The seam between models and methods.

A *method* (CAM, and later others) binds to a loaded model and returns an *explainer*; an
explainer turns a preprocessed batch and the classes to map into a :class:`MapBatch`. Every entry
point (explain, export, video) goes through this seam once and never knows which method runs::

    explainer = bind("cam", model)                 # discovery, proven on a probe batch
    out = explainer(batch, classes=None, maps=3)  # MapBatch: maps Tensor[N,k,h,w] float32

Methods are found by name in a registry; a new method is one module that calls :func:`register`.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from torch import Tensor

from camtool.errors import InvalidArgumentError
from camtool.geometry import FeatureGeometry

if TYPE_CHECKING:
    from camtool.models import LoadedModel

#: The method used when none is named: the first of :data:`AUTO_ORDER` that can explain the
#: model (exact methods first); a model none of them can explain still gets its predictions.
DEFAULT_METHOD = "auto"

#: The methods ``"auto"`` tries, in this order.
AUTO_ORDER: tuple[str, ...] = ("cam", "integrated-head")


@dataclass(frozen=True)
class MapBatch:
    """The maps of N images for k classes each, as one method produced them.

    Attributes:
        method: the registry name of the method that made them (``"cam"``).
        summary: one line saying what they were computed from (the explainer's ``describe()``).
        logits: ``Tensor[N,K]`` float32, the network's output.
        classes: ``Tensor[N,k]`` int64, the mapped class of each map.
        maps: ``Tensor[N,k,h,w]`` float32, raw (not normalised).
        geometry: where the maps' cells sit on the network input.
        input_hw: (height, width) of the batch the network ran on.
        features_shape: ``(C, h, w)`` of the feature map the maps were computed from.
        bias: ``Tensor[N,k]`` float32 for decompositions (``maps.mean((-2,-1)) + bias`` is the
            logit), None for methods whose maps do not decompose the score.
        residual: ``Tensor[N]`` float32, per image the largest ``|mean(map) + bias - logit|``
            over all K classes (decompositions only), else None.
        details: JSON-ready facts about how the maps were made (the head or layer used).
    """

    method: str
    summary: str
    logits: Tensor
    classes: Tensor
    maps: Tensor
    geometry: FeatureGeometry
    input_hw: tuple[int, int]
    features_shape: tuple[int, int, int]
    bias: Tensor | None = None
    residual: Tensor | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def probabilities(self) -> Tensor:
        """``Tensor[N,K]`` float32, softmax of the logits."""
        return self.logits.softmax(dim=-1)

    @property
    def cams(self) -> Tensor:
        """The maps under the CAM paper's name (``Tensor[N,k,h,w]`` float32)."""
        return self.maps

    @property
    def exact(self) -> bool:
        """True when the maps decompose the logits (they come with a bias and a residual)."""
        return self.bias is not None


class Explainer(Protocol):
    """A method bound to one model: call it on batches."""

    method: str

    def describe(self) -> str:
        """One line saying what the maps are computed from (the head, the layer)."""
        ...

    def as_dict(self) -> dict[str, Any]:
        """The same, JSON-ready."""
        ...

    def __call__(
        self, batch: Tensor, classes: Sequence[int] | None = None, maps: int = 1
    ) -> MapBatch:
        """Map a batch.

        Args:
            batch: ``Tensor[N,3,h,w]`` float, normalised for the model.
            classes: class indices to map for every image; default: each image's top ``maps``.
            maps: how many top classes to map when ``classes`` is not given.
        """
        ...


class Method(Protocol):
    """A way of making maps: its name, a one-line summary, and how it binds to a model."""

    name: str
    summary: str

    def bind(
        self, model: LoadedModel, *, layer: str | None = None, classifier: str | None = None
    ) -> Explainer:
        """Prepare to explain ``model``; raise ``UnsupportedModelError`` (with the reason)
        when this method cannot explain it. ``layer``/``classifier`` override discovery."""
        ...


_REGISTRY: dict[str, Method] = {}
#: Bound explainers per model, keyed by (method, layer, classifier); a method object is its own
#: key, so the same method configured differently (a gradient method's target) binds apart.
_BOUND: weakref.WeakKeyDictionary[Any, dict[tuple[Any, str | None, str | None], Explainer]] = (
    weakref.WeakKeyDictionary()
)


def register(method: Method) -> Method:
    """Add ``method`` to the registry under its name; return it."""
    _REGISTRY[method.name] = method
    return method


def _load_builtin_methods() -> None:
    from camtool.methods import (  # noqa: F401  (they register themselves)
        cam,
        eigen,
        gradient,
        integrated,
        score,
    )


def method_names() -> tuple[str, ...]:
    """The names of the registered methods."""
    _load_builtin_methods()
    return tuple(_REGISTRY)


def get_method(name: str | Method) -> Method:
    """Return the registered method called ``name`` (a method object is returned as is;
    ``"auto"`` is resolved per model by :func:`bind`, not here).

    Raises:
        InvalidArgumentError: no method of that name (a usage error; the message lists them).
    """
    if not isinstance(name, str):
        return name
    _load_builtin_methods()
    if name not in _REGISTRY:
        raise InvalidArgumentError(
            name, f"unknown method; choose one of {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]


def bind(
    method: str | Method,
    model: LoadedModel,
    *,
    layer: str | None = None,
    classifier: str | None = None,
) -> Explainer:
    """Bind ``method`` to ``model`` (once: the explainer is kept while the model lives).

    ``method="auto"`` binds the first method of :data:`AUTO_ORDER` that can explain the model,
    and, when none can, an explainer that only classifies (its maps are empty and its
    ``describe()`` says why).

    Raises:
        InvalidArgumentError: an unknown method name; ``UnsupportedModelError``: the method
        cannot explain this model (the message says why).
    """
    if method == "auto":
        return _bind_auto(model, layer, classifier)
    chosen = get_method(method)
    for option, value in (("layer", layer), ("classifier", classifier)):
        if value is not None and not value.strip():
            raise InvalidArgumentError(option, "an empty module name names no module; leave it out")
    known = _BOUND.setdefault(model, {})
    key = (chosen, layer, classifier)
    if key not in known:
        known[key] = chosen.bind(model, layer=layer, classifier=classifier)
    return known[key]


def _bind_auto(model: LoadedModel, layer: str | None, classifier: str | None) -> Explainer:
    """The first method of :data:`AUTO_ORDER` that binds; else predictions without maps."""
    from camtool.errors import UnsupportedModelError
    from camtool.methods.fallback import PredictionsOnly

    reasons = []
    for name in AUTO_ORDER:
        try:
            return bind(name, model, layer=layer, classifier=classifier)
        except UnsupportedModelError as exc:
            reasons.append(f"{name}: {exc}")
    known = _BOUND.setdefault(model, {})
    key = ("none", layer, classifier)
    if key not in known:
        known[key] = PredictionsOnly(model, reasons)
    return known[key]


def can_explain(method: str | Method, model: LoadedModel) -> tuple[bool, str]:
    """``(True, what it uses)`` when ``method`` can explain ``model``, else ``(False, why not)``."""
    from camtool.errors import UnsupportedModelError

    try:
        return True, bind(method, model).describe()
    except UnsupportedModelError as exc:
        return False, str(exc)
