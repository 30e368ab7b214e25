"""A model spec and a method -> a bound explainer (:class:`BoundMethod`), with the classes to map
resolved to indices; loaded models cached per name (:func:`get_model`); a model's class names
(:func:`class_names`). Every entry point (explain, export, video, eval) starts here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from camtool.labels import ClassesArg, ClassName, match_classes, resolve_classes
from camtool.methods.base import DEFAULT_METHOD, Explainer, MapBatch, Method, bind
from camtool.models.cards import (
    ModelCard,
    find_card,
    is_card_name,
    labels_without_network,
    load_labels,
)
from camtool.models.loading import DEFAULT_MODEL, LoadedModel, load_model

ModelSpec = str | ModelCard | nn.Module | LoadedModel


@lru_cache(maxsize=4)
def _cached_model(
    spec: str, stamps: tuple[int, ...], options: tuple[tuple[str, Any], ...]
) -> LoadedModel:
    return load_model(spec, **dict(options))


def _file_stamp(path: str | os.PathLike[str] | None) -> int:
    try:
        return Path(path).stat().st_mtime_ns if path else 0
    except OSError:
        return 0


def get_model(model: ModelSpec, device: str | None = "auto", **options: Any) -> LoadedModel:
    """Return a loaded model, as :func:`camtool.load_model` (same options).

    Models named by a string are cached, keyed by the name, the options and the modification
    times of the card and weights files, so repeated calls in a notebook do not reload them.
    """
    if not isinstance(model, str):
        return load_model(model, device=device, **options)
    card = find_card(model) if model.endswith(".toml") or is_card_name(model) else None
    stamps = (_file_stamp(card.path if card else model), _file_stamp(options.get("weights")))
    key = tuple(sorted({**options, "device": str(device)}.items()))
    return _cached_model(model, stamps, key)


@dataclass(frozen=True, eq=False)
class BoundMethod:
    """What every entry point starts from: a loaded model, a method bound to it, and the classes
    to map resolved to indices (None: each image's top predictions)."""

    model: LoadedModel
    explainer: Explainer
    classes: list[int] | None

    def __call__(self, batch: Tensor, maps: int = 1) -> MapBatch:
        """Map a preprocessed ``Tensor[N,3,h,w]`` batch: the fixed classes, else the top ``maps``."""
        return self.explainer(batch, self.classes, maps=maps)


def bind_method(
    model: ModelSpec | BoundMethod = DEFAULT_MODEL,
    method: str | Method = DEFAULT_METHOD,
    classes: ClassesArg = None,
    *,
    device: str | None = "auto",
    layer: str | None = None,
    classifier: str | None = None,
    target: str | None = None,
    **load_options: Any,
) -> BoundMethod:
    """Load ``model`` (cached, see :func:`get_model`), resolve ``classes`` against its labels and
    bind ``method`` to it (``layer``/``classifier`` override the method's discovery; ``target``
    is the score explained, see :func:`camtool.methods.bind`). A :class:`BoundMethod` is
    returned as it is (the other arguments are then ignored).

    Raises:
        UnknownModelError: an unknown model name.
        ModelLoadError: a model that cannot be loaded.
        InvalidArgumentError: an unknown method.
        ClassSelectionError: an unknown class.
        UnsupportedModelError: a model the method cannot explain, with the reason.
    """
    if isinstance(model, BoundMethod):
        return model
    loaded = get_model(model, device, **load_options)
    wanted = resolve_classes(classes, loaded.labels)
    explainer = bind(method, loaded, layer=layer, classifier=classifier, target=target)
    return BoundMethod(loaded, explainer, wanted)


def class_names(
    model: ModelSpec | BoundMethod | None = None,
    query: str | None = None,
    *,
    labels: str | os.PathLike[str] | None = None,
    weights: str | os.PathLike[str] | None = None,
) -> list[ClassName]:
    """The classes of a model (index and label), all of them or those matching ``query`` (see
    :func:`match_classes`); what ``camtool classes [MODEL] [QUERY]`` prints.

    A named model's labels are read from its card, without loading the network; any other
    model spec is loaded (on the CPU, random weights allowed: only its label count matters).

    Args:
        model: a model spec as for :func:`camtool.load_model` (default: the default model), a
            loaded model or a bound method.
        query: text to look for in the labels, or an index.
        labels: a label file replacing the model's labels. weights: as for ``load_model``.

    Raises:
        UnknownModelError, ModelLoadError: the model or its label file cannot be read.
    """

    model = DEFAULT_MODEL if model is None else model
    if isinstance(model, BoundMethod):
        model = model.model
    if labels is not None:
        names = load_labels(labels)
    elif isinstance(model, LoadedModel):
        names = model.labels
    else:
        read = labels_without_network(model, weights=weights) if isinstance(model, str) else None
        names = read or load_model(model, device="cpu", weights=weights, random_weights=True).labels
    return match_classes(names, query)
