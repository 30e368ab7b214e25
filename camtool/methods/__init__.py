"""Methods that make maps, behind one seam (see :mod:`camtool.methods.base`).

>>> from camtool import methods
>>> explainer = methods.bind("cam", camtool.load_model())
>>> out = explainer(batch, maps=3)          # MapBatch: maps Tensor[N,k,h,w] float32
>>> methods.survey(model).auto             # which method "auto" binds, and every verdict

The package's modules, from the ground up: :mod:`~camtool.methods.explainer` (what an explainer
returns), :mod:`~camtool.methods.fallback` (what ``"auto"`` gives when no method fits),
:mod:`~camtool.methods.base` (the seam and the registry); the CAM head machinery
(:mod:`~camtool.methods.tree`, :mod:`~camtool.methods.folding`, :mod:`~camtool.methods.heads`,
:mod:`~camtool.methods.identity`, :mod:`~camtool.methods.discovery`); one module per method or
family (:mod:`~camtool.methods.cam`, :mod:`~camtool.methods.integrated` with
:mod:`~camtool.methods.quadrature`, :mod:`~camtool.methods.layers` for the layer-reading
:mod:`~camtool.methods.gradient`, :mod:`~camtool.methods.score`, :mod:`~camtool.methods.eigen`);
:mod:`~camtool.methods.registry` (the built-in methods) and :mod:`~camtool.methods.survey`.
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
from camtool.methods.registry import BUILTIN_METHODS
from camtool.methods.survey import MethodVerdict, Survey, survey

__all__ = [
    "BUILTIN_METHODS",
    "DEFAULT_METHOD",
    "Explainer",
    "MapBatch",
    "Method",
    "MethodVerdict",
    "Survey",
    "bind",
    "can_explain",
    "get_method",
    "method_names",
    "register",
    "survey",
]
