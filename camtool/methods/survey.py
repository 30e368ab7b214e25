"""Which methods can explain a model, and why not: the verdicts ``camtool inspect`` prints.

:func:`survey` binds every registered method to one model (through the same seam every entry
point uses, so each binding is kept for later calls) and records, per method, whether it explains
the model, what it uses (the CAM head, the layer) or why it refuses, and which method ``"auto"``
binds::

    report = camtool.methods.survey(model)
    report.verdict("cam").explains     # True / False
    report.auto                        # "cam", "integrated-head", "gradcam" or "none"
    report.as_dict()                   # the JSON of ``camtool inspect --json`` (its method part)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from camtool.errors import UnsupportedModelError
from camtool.methods.base import bind, method_names

if TYPE_CHECKING:
    from camtool.models.loading import LoadedModel


@dataclass(frozen=True)
class MethodVerdict:
    """Whether one method can explain a model.

    Attributes:
        name: the method's registry name (``"cam"``).
        explains: True when the method binds to the model.
        decomposition: True when its maps decompose the logit (``mean(map) + bias == logit``);
            False for the methods that are no decomposition (and for a method that refuses).
        uses: what the bound method reads (its explainer's ``describe()``), or None.
        reason: why it refuses the model (the ``UnsupportedModelError`` message), or None.
        detail: the bound explainer's ``as_dict()`` (JSON-ready), or None.
    """

    name: str
    explains: bool
    decomposition: bool = False
    uses: str | None = None
    reason: str | None = None
    detail: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """``{"explains": False, "reason": ...}`` or ``{"explains": True, "uses": ...,
        "decomposition": ..., "detail": ...}`` (the keys of ``camtool inspect --json``)."""
        if not self.explains:
            return {"explains": False, "reason": self.reason}
        return {
            "explains": True,
            "uses": self.uses,
            "decomposition": self.decomposition,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Survey:
    """Every registered method's verdict on one model, and the method ``"auto"`` binds.

    Attributes:
        verdicts: one :class:`MethodVerdict` per registered method, in registry order.
        auto: the registry name of the method ``"auto"`` binds (``"none"`` when none can explain
            the model: it then only classifies).
        head: the CAM head in one line when ``cam`` explains the model, else None.
        head_detail: the CAM head, JSON-ready (``CamHead.as_dict()``), else None.
    """

    verdicts: tuple[MethodVerdict, ...]
    auto: str
    head: str | None = None
    head_detail: dict[str, Any] | None = None

    def verdict(self, name: str) -> MethodVerdict:
        """The verdict of the method called ``name``.

        Raises:
            KeyError: no such method was surveyed.
        """
        for verdict in self.verdicts:
            if verdict.name == name:
                return verdict
        raise KeyError(name)

    @property
    def explaining(self) -> tuple[str, ...]:
        """The names of the methods that explain the model, in registry order."""
        return tuple(v.name for v in self.verdicts if v.explains)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"methods": {name: verdict}, "head": ..., "head_detail": ...,
        "auto": name}``, ``head`` and ``head_detail`` only when ``cam`` explains the model."""
        out: dict[str, Any] = {"methods": {v.name: v.as_dict() for v in self.verdicts}}
        if self.head is not None:
            out["head"], out["head_detail"] = self.head, self.head_detail
        out["auto"] = self.auto
        return out


def survey(
    model: LoadedModel, *, layer: str | None = None, classifier: str | None = None
) -> Survey:
    """Bind every registered method to ``model`` and say which explain it and how.

    Nothing runs on the caller's data: each method binds as :func:`~camtool.methods.bind` does
    (probing the network on a random ``Tensor[1,3,S,S]`` float image where the method does, ``S``
    the model's input size), so the model is left as it was and the bindings are kept for later
    calls on the same model.

    Args:
        model: the loaded model.
        layer, classifier: module names that override discovery for every method (a method that
            cannot use them refuses, saying why).

    Returns:
        A :class:`Survey`: one verdict per registered method, the CAM head when ``cam`` explains
        the model, and the method ``"auto"`` binds.

    Raises:
        InvalidArgumentError: an empty ``layer`` or ``classifier`` name.
    """
    verdicts = []
    head: str | None = None
    head_detail: dict[str, Any] | None = None
    for name in method_names():
        try:
            explainer = bind(name, model, layer=layer, classifier=classifier)
        except UnsupportedModelError as exc:
            verdicts.append(MethodVerdict(name, explains=False, reason=str(exc)))
            continue
        detail = explainer.as_dict()
        verdicts.append(
            MethodVerdict(
                name,
                explains=True,
                decomposition=bool(detail.get("decomposition", True)),
                uses=explainer.describe(),
                detail=detail,
            )
        )
        if name == "cam":
            head, head_detail = explainer.describe(), explainer.as_dict()
    auto = bind("auto", model, layer=layer, classifier=classifier).method
    return Survey(tuple(verdicts), auto, head, head_detail)
