"""A model spec and a method -> a bound explainer (:class:`BoundMethod`), with the classes to map
resolved to indices; loaded models cached per name (:func:`get_model`) and per module object
(what a loop of ``camtool.explain(image, net)`` over a plain ``nn.Module`` reuses, see
:mod:`camtool.held`); a model's class names (:func:`class_names`). Every entry point (explain,
export, video, eval) starts here.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from camtool.errors import InvalidArgumentError, ModelLoadError
from camtool.hooks import network_lock
from camtool.labels import ClassesArg, ClassName, match_classes, resolve_classes
from camtool.methods.base import DEFAULT_METHOD, Explainer, MapBatch, Method, bind
from camtool.methods.tree import ModuleArg, module_name
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


class _Tethered(LoadedModel):
    """A loaded ``nn.Module`` as the per-module cache keeps it: the module held weakly, so that
    neither this object nor the explainers bound to it keep a network alive that its owner has
    dropped (whoever is handed one holds the module itself: :class:`BoundMethod`'s ``anchor``)."""

    @property
    def module(self) -> nn.Module:
        """The network (while it lives)."""
        found: nn.Module | None = self.__dict__["module_ref"]()
        if found is None:
            raise ModelLoadError(self.name, "the network was deleted; load it again")
        return found

    @module.setter
    def module(self, value: nn.Module) -> None:
        self.__dict__["module_ref"] = weakref.ref(value)

    def __repr__(self) -> str:  # what the user sees is a LoadedModel
        return "LoadedModel" + super().__repr__().removeprefix(type(self).__qualname__)


@dataclass
class _ModuleEntry:
    """What the cache holds for one module: its fingerprint when loaded, and its loaded forms
    by load options (their memos hold the bound explainers)."""

    fingerprint: tuple[Any, ...]
    loaded: dict[tuple[Any, ...], _Tethered]


#: Per caller's module (weakly: an entry goes when its module goes).
_BY_MODULE: weakref.WeakKeyDictionary[nn.Module, _ModuleEntry] = weakref.WeakKeyDictionary()


def fingerprint(module: nn.Module) -> tuple[Any, ...]:
    """What changes when a network's weights or structure change: the identity of every
    submodule (a replaced layer), and per parameter and buffer its identity, storage address,
    version counter (bumped by in-place updates: ``load_state_dict``, an optimizer step), shape,
    dtype and device (``.to()`` and ``.half()`` move or convert). Cheap: no tensor is read."""
    marks: list[Any] = []
    for sub in module.modules():  # one walk: the tree and each module's own tensors
        marks.append(id(sub))
        for tensor in (*sub._parameters.values(), *sub._buffers.values()):
            if tensor is None:
                continue
            try:
                version = tensor._version
            except RuntimeError:  # an inference tensor keeps no version counter
                version = -1
            marks.append(
                (id(tensor), tensor.data_ptr(), version, tensor.shape, tensor.dtype, tensor.device)
            )
    return tuple(marks)


def _options_key(options: dict[str, Any]) -> tuple[Any, ...] | None:
    """The load options as a cache key (those given: None is each one's default; with the label
    file's modification time), None when an option cannot be a key."""
    given = sorted((name, value) for name, value in options.items() if value is not None)
    key = (*given, ("labels mtime", _file_stamp(options.get("labels"))))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _loaded_module(module: nn.Module, options: dict[str, Any]) -> LoadedModel:
    """``module`` loaded (``load_model``'s checks run once), cached while it lives and its
    fingerprint holds; the explainers bound to the result are cached with it."""
    key = _options_key(options)
    if key is None or isinstance(module, torch.jit.ScriptModule):
        return load_model(module, **options)
    with network_lock(module):  # threads loading one module at once share one entry
        print_ = fingerprint(module)
        entry = _BY_MODULE.get(module)
        if entry is None or entry.fingerprint != print_:
            entry = _BY_MODULE[module] = _ModuleEntry(print_, {})
        if key not in entry.loaded:
            entry.loaded[key] = _Tethered(**_init_fields(load_model(module, **options)))
        return entry.loaded[key]


def _init_fields(loaded: LoadedModel) -> dict[str, Any]:
    """``loaded``'s fields as its constructor takes them (to copy it as another class)."""
    return {f.name: getattr(loaded, f.name) for f in fields(loaded) if f.init}


def _handle(loaded: LoadedModel) -> LoadedModel:
    """``loaded`` as a caller is handed it: for a cached ``_Tethered``, a plain
    :class:`LoadedModel` holding the network strongly (so ``Explainer(net).model`` works for as
    long as the caller keeps it, whoever else dropped the network), sharing the cached one's
    ``memo`` (its bound explainers); one handle per cached model while any caller holds it.
    :func:`camtool.methods.bind` given a handle binds to the cached model it came from."""
    if not isinstance(loaded, _Tethered):
        return loaded
    with network_lock(loaded.module):
        ref = loaded.memo.get("handle")
        handle = ref() if ref is not None else None
        if handle is None:
            handle = LoadedModel(**_init_fields(loaded))
            object.__setattr__(handle, "memo", loaded.memo)  # a frozen dataclass
            loaded.memo["handle"] = weakref.ref(handle)
            loaded.memo["cached"] = weakref.ref(loaded)
        return handle


@dataclass(frozen=True, eq=False)
class BoundMethod:
    """What every entry point starts from: a loaded model, a method bound to it, and the classes
    to map resolved to indices (None: each image's top predictions).

    Attributes:
        model: the loaded model; explainer: the method bound to it; classes: the class indices.
        anchor: the caller's network (also held by ``model``, which the cache holds weakly).
    """

    model: LoadedModel
    explainer: Explainer
    classes: list[int] | None
    anchor: nn.Module | None = None

    def __call__(self, batch: Tensor, maps: int = 1) -> MapBatch:
        """Map a preprocessed ``Tensor[N,3,h,w]`` batch: the fixed classes, else the top ``maps``.

        Threads calling explainers of one network take turns (hooks are per-network state, see
        :func:`camtool.hooks.network_lock`).
        """
        with network_lock(self.model.module):
            return self.explainer(batch, self.classes, maps=maps)


def bind_method(
    model: ModelSpec | BoundMethod = DEFAULT_MODEL,
    method: str | Method = DEFAULT_METHOD,
    classes: ClassesArg = None,
    *,
    device: str | None = "auto",
    layer: ModuleArg = None,
    classifier: ModuleArg = None,
    target: str | None = None,
    **load_options: Any,
) -> BoundMethod:
    """Load ``model`` (cached, see :func:`get_model`), resolve ``classes`` against its labels and
    bind ``method`` to it (``layer``/``classifier`` override the method's discovery: module names
    or module objects; ``target`` is the score explained, see :func:`camtool.methods.bind`). A
    :class:`BoundMethod` is returned as it is (the other arguments are then ignored).

    An ``nn.Module`` is loaded and bound once per module object and options: the next call with
    the same module reuses both, until the module's weights or structure change (see
    :func:`fingerprint`); the cache holds the module weakly, never keeping it alive.

    Raises:
        UnknownModelError: an unknown model name.
        ModelLoadError: a model that cannot be loaded.
        InvalidArgumentError: an unknown method, or a layer module that is not in the model.
        ClassSelectionError: an unknown class.
        UnsupportedModelError: a model the method cannot explain, with the reason.
    """
    if isinstance(model, BoundMethod):
        return model
    anchor = model if isinstance(model, nn.Module) else None
    if anchor is not None:
        loaded = _loaded_module(anchor, load_options)
    else:
        loaded = get_model(model, device, **load_options)
    wanted = resolve_classes(classes, loaded.labels)
    explainer = bind(method, loaded, layer=layer, classifier=classifier, target=target)
    return BoundMethod(_handle(loaded), explainer, wanted, anchor)


def with_layer_names(model: ModelSpec | BoundMethod, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with module objects given for ``layer`` or ``classifier`` turned into their
    names in ``model``, for the runs that record or ship their options (export's manifest, its
    worker processes); names, and options without those keys, are kept as they are.

    Raises:
        InvalidArgumentError: a module that is not inside the model, or a module object given
            with a model named by a string (load the model first, or name the layer).
    """
    out = dict(options)
    for what in ("layer", "classifier"):
        value = options.get(what)
        items = value if isinstance(value, (list, tuple)) else [value]
        if all(v is None or isinstance(v, str) for v in items):
            continue
        if isinstance(model, BoundMethod):
            network: nn.Module = model.model.module
        elif isinstance(model, LoadedModel):
            network = model.module
        elif isinstance(model, nn.Module):
            network = model
        else:
            raise InvalidArgumentError(
                what,
                f"a module object names a layer of a network you hold; with the model named "
                f"{model!r}, name the layer ({what}='layer4') or pass camtool.load_model(...)",
            )
        out[what] = module_name(network, value, what)
    return out


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
