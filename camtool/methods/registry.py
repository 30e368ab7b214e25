"""The built-in methods, registered in one place.

A new method is one module in :mod:`camtool.methods` that defines a :class:`Method` (its name, a
summary, ``bind``) and one name in :data:`BUILTIN_METHODS`. Registration order is the order of
:func:`~camtool.methods.base.method_names` (and of ``camtool inspect``'s rows). The package
imports this module, so the registry is full whenever any module of :mod:`camtool.methods` has
been imported; the tests parametrized over the registry (tests/methods/) then cover a new method
the moment it is listed here.
"""

from __future__ import annotations

from camtool.methods.base import Method, register
from camtool.methods.cam import CAM
from camtool.methods.eigen import EIGENCAM
from camtool.methods.gradient import GRADCAM, GRADCAM_PLUS_PLUS, HIRESCAM, LAYERCAM, XGRADCAM
from camtool.methods.integrated import INTEGRATED_HEAD
from camtool.methods.score import SCORECAM

#: The built-in methods, in registration order.
BUILTIN_METHODS: tuple[Method, ...] = (
    CAM,
    EIGENCAM,
    GRADCAM,
    GRADCAM_PLUS_PLUS,
    XGRADCAM,
    LAYERCAM,
    HIRESCAM,
    INTEGRATED_HEAD,
    SCORECAM,
)

for method in BUILTIN_METHODS:
    register(method)
