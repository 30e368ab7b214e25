"""Module-tree helpers shared by the methods: naming, finding and classifying a network's modules.

They look at the module tree only (types, names, registration order); nothing here runs the
network. CAM's head discovery (:mod:`camtool.methods.discovery`), the integrated head
(:mod:`camtool.methods.integrated`) and the layer methods (:mod:`camtool.methods.layers`) share
them.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from torch import nn

from camtool.errors import InvalidArgumentError, UnsupportedModelError

#: A layer (or classifier) as the caller names it: a module name (``"layer4"``), the module
#: object itself (``model.layer4``), or a list of one of them (pytorch-grad-cam's
#: ``target_layers=[model.layer4[-1]]``); None: the method's own choice.
ModuleArg = str | nn.Module | Sequence[str | nn.Module] | None


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


def check_module_name(model: nn.Module, name: str, what: str) -> str:
    """Return ``name`` when it names a module of ``model`` (as ``lookup`` finds them).

    Raises:
        InvalidArgumentError: no module of that name (a usage error, whatever the method); the
            message suggests close names.
    """
    try:
        lookup(model, name, what)
    except UnsupportedModelError as exc:
        raise InvalidArgumentError(exc.subject, exc.problem) from None
    return name


def module_name(model: nn.Module, module: ModuleArg, what: str) -> str | None:
    """The name (as in ``model.named_modules()``) of a layer given as a name or a module object.

    Args:
        model: the network the module must sit in.
        module: a module name (returned as it is), a module object, a list or tuple of one of
            them, or None (returned as it is).
        what: the argument's name (``"layer"``, ``"classifier"``), for the message.

    Raises:
        InvalidArgumentError: a module that is not inside ``model`` (or is ``model`` itself), a
            list of several (every method reads one layer), or a value that is neither.
    """
    if isinstance(module, (list, tuple)):
        if len(module) != 1:
            raise InvalidArgumentError(
                what, f"got {len(module)} modules; camtool's methods read one layer: give one"
            )
        module = module[0]
    if module is None or isinstance(module, str):
        return module
    if not isinstance(module, nn.Module):
        raise InvalidArgumentError(
            what, f"got a {type(module).__name__}; give a module name or a module of the model"
        )
    if module is model:
        raise InvalidArgumentError(what, "got the model itself; give one of its modules")
    found = next((name for name, m in model.named_modules() if m is module), None)
    if found is None:
        raise InvalidArgumentError(
            what,
            f"the {type(module).__name__} module given is not inside the model "
            f"({type(model).__name__}); give a module of the network being explained",
        )
    return found
