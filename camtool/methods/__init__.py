"""Methods that make maps, behind one seam (see :mod:`camtool.methods.base`).

>>> from camtool import methods
>>> explainer = methods.bind("cam", camtool.load_model())
>>> out = explainer(batch, maps=3)          # MapBatch
"""

from __future__ import annotations

from camtool.methods.base import (
    DEFAULT_METHOD,
    Explainer,
    MapBatch,
    Method,
    bind,
    can_explain,
    get_method,
    method_names,
    register,
)

__all__ = [
    "DEFAULT_METHOD",
    "Explainer",
    "MapBatch",
    "Method",
    "bind",
    "can_explain",
    "get_method",
    "method_names",
    "register",
]
