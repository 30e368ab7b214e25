"""Lazy re-exports for a package's ``__init__``: names that live in submodules, imported on first
use (PEP 562), so that importing a package (``camtool``, ``camtool.io``, ``camtool.models``)
costs nothing until one of its names is used, and ``camtool --help`` never imports torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return the ``__getattr__`` and ``__dir__`` of ``package`` for ``exports`` (name ->
    defining module). A name is imported once, then kept in ``namespace`` (the package's
    ``globals()``), so later uses are plain attribute reads.

    Raises (from ``__getattr__``):
        AttributeError: a name that is not exported, as for any module.
    """

    def getattr_(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted({*namespace, *exports})

    return getattr_, dir_
