"""Module-tree helpers shared by the methods: naming, finding and classifying a network's modules.

They look at the module tree only (types, names, registration order); nothing here runs the
network. CAM's head discovery (:mod:`camtool.methods.discovery`), the integrated head
(:mod:`camtool.methods.integrated`) and the layer methods (:mod:`camtool.methods.layers`) share
them.
"""

from __future__ import annotations

import difflib

from torch import nn

from camtool.errors import UnsupportedModelError


def is_global_avg_pool(module: nn.Module) -> bool:
    """True for ``AdaptiveAvgPool2d(1)`` and timm's ``SelectAdaptivePool2d('avg')``."""
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return module.output_size in (1, (1, 1))
    if type(module).__name__ == "SelectAdaptivePool2d":
        return getattr(module, "pool_type", "") == "avg"
    return False


def is_classifier(module: nn.Module) -> bool:
    """True for a ``Linear`` layer and a 1x1, ungrouped ``Conv2d`` (a linear map per cell)."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1


def is_leaf(module: nn.Module) -> bool:
    """True for a module with no children."""
    return next(module.children(), None) is None


def named_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``model.named_modules()`` in registration order, without the model itself (``""``)."""
    return [(name, m) for name, m in model.named_modules() if name]


def name_of(model: nn.Module, target: nn.Module) -> str:
    """The name of ``target`` inside ``model`` (its type's name when it is not registered)."""
    return next((name for name, m in model.named_modules() if m is target), type(target).__name__)


def lookup(model: nn.Module, name: str, what: str) -> nn.Module:
    """The module called ``name`` (as in ``model.named_modules()``).

    Args:
        model: the network searched.
        name: the module's dotted name (``"layer4"``, ``"classifier.1"``).
        what: what the caller looks for (``"layer"``, ``"classifier"``), for the message.

    Raises:
        UnsupportedModelError: no module of that name; the message suggests close names.
    """
    modules = dict(named_modules(model))
    if name not in modules:
        close = difflib.get_close_matches(name, list(modules), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnsupportedModelError(
            name, f"no {what} module of that name in {type(model).__name__}{hint}"
        )
    return modules[name]
