"""``camtool.explain``: one image, a list or a batch -> :class:`~camtool.explanation.Explanation`
objects, through a :class:`~camtool.held.Explainer` made for the call (the loaded model and the
bound method are cached, so a loop over images pays for them once).
"""

from __future__ import annotations

from typing import Any, TypedDict, Unpack, overload

import numpy as np
from torch import Tensor

from camtool.binding import BoundMethod, ModelSpec
from camtool.explanation import Explanation
from camtool.held import Explainer, check_call_options
from camtool.image import Layout
from camtool.io.images import Images, ImageSource
from camtool.labels import ClassesArg
from camtool.methods.base import DEFAULT_METHOD, Method
from camtool.methods.tree import ModuleArg
from camtool.models.loading import DEFAULT_MODEL
from camtool.settings import (
    DEFAULT_BOX_THRESHOLD,
    DEFAULT_UPSAMPLE,
)


class ExplainOptions(TypedDict, total=False):
    """The keyword options of :func:`explain` (one list for all its call forms)."""

    method: str | Method
    classes: ClassesArg
    maps: int
    top_k: int
    crop: bool
    device: str | None
    labels: str | None
    weights: str | None
    layer: ModuleArg
    classifier: ModuleArg
    target: str | None
    dtype: str | None
    batch_size: int
    box_threshold: float
    layout: Layout | None
    preprocessed: bool
    upsample: str


@overload
def explain(
    images: list[ImageSource] | tuple[ImageSource, ...],
    model: ModelSpec | BoundMethod | Explainer = ...,
    **options: Unpack[ExplainOptions],
) -> list[Explanation]: ...


@overload
def explain(
    images: Tensor | np.ndarray[Any, Any],
    model: ModelSpec | BoundMethod | Explainer = ...,
    **options: Unpack[ExplainOptions],
) -> Any: ...  # one image: an Explanation; a batch: a list of them


@overload
def explain(
    images: ImageSource,
    model: ModelSpec | BoundMethod | Explainer = ...,
    **options: Unpack[ExplainOptions],
) -> Explanation: ...


def explain(
    images: Images,
    model: ModelSpec | BoundMethod | Explainer = DEFAULT_MODEL,
    *,
    method: str | Method = DEFAULT_METHOD,
    classes: ClassesArg = None,
    maps: int = 1,
    top_k: int = 5,
    crop: bool = False,
    device: str | None = "auto",
    labels: str | None = None,
    weights: str | None = None,
    layer: ModuleArg = None,
    classifier: ModuleArg = None,
    target: str | None = None,
    dtype: str | None = None,
    batch_size: int = 16,
    box_threshold: float = DEFAULT_BOX_THRESHOLD,
    layout: Layout | None = None,
    preprocessed: bool = False,
    upsample: str = DEFAULT_UPSAMPLE,
) -> Explanation | list[Explanation]:
    """Explain one image or several: predictions, maps, heatmaps and boxes.

    Args:
        images: one image: a path, a PIL image, or a tensor or numpy array ``[3,H,W]``,
            ``[H,W,3]`` or ``[H,W]`` (uint8, or float in [0, 1]); a list of images; or a batch,
            ``Tensor[N,3,H,W]`` or ``[N,H,W,3]`` (tensor or array), whose images are explained
            together (one forward pass per ``batch_size`` images).
        model: a model name (default: ``efficientnet_lite0``), card, ``nn.Module``, loaded model,
            :class:`BoundMethod` or :class:`~camtool.held.Explainer` (the last two fix method,
            classes and layers too). A module is loaded and bound once and cached while it lives
            and its weights stay the same, so a loop of calls costs what
            :class:`~camtool.held.Explainer` calls do.
        method: the method that makes the maps (``camtool.methods.method_names()``; default
            ``"auto"``: the first that can explain the model, exact methods first).
        classes: the classes to map: one class (an index, any integer-like, or a name) or several
            (a list, tuple or 1-D integer array/tensor of them; see
            :func:`camtool.labels.resolve_classes`); default: the top ``maps`` predictions.
        maps: how many top classes to map when ``classes`` is not given.
        top_k: how many predictions to report.
        crop: centre-crop like the classic evaluation transform instead of using the whole image.
        device: ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"``.
        labels: a label file overriding the model's class names.
        weights: a weights file, as for :func:`camtool.load_model`.
        layer: a module name (``"layer4"``), the module itself (``net.layer4``) or a list of one
            of them: overrides the method's choice of layer.
        classifier: a module name or object that overrides CAM's choice of classifier.
        dtype: the compute dtype, as for :func:`camtool.load_model`.
        target: the score the maps explain, ``"logit"`` or ``"probability"`` (default: the
            method's own, the class logit except for Score-CAM; the exact methods decompose
            the logit and refuse ``"probability"``).
        batch_size: images per forward pass (images of equal input size are batched together).
        box_threshold: fraction of the map's maximum used for the CAM box, 0 < t < 1 (default
            0.2, the CAM paper's).
        layout: ``"CHW"`` or ``"HWC"``: where in-memory images keep their channels. By default
            the shape tells (the axis of length 1, 3 or 4); a shape that cannot tell (``[3,H,3]``)
            is refused with a request for ``layout``.
        preprocessed: ``images`` is already the network's input: a float ``Tensor[N,3,h,w]`` (or
            ``[3,h,w]``) resized and normalised as the model's preprocessing does
            (``model.preprocessing.prepare``). It goes into the network as it is (``crop`` does not
            apply); each explanation's ``image`` and overlays show it de-normalised, at the
            network's resolution.
        upsample: how maps are resized to the image: ``"placed"`` (each cell at the centre of
            its receptive field) or ``"stretch"`` (the grid stretched over the image, as
            ``cv2.resize`` and pytorch-grad-cam do); see :func:`camtool.render.upsample_cams`.

    Returns:
        An :class:`Explanation` for one image, else a list in the input order (a batch's order).

    Raises:
        ImageReadError: an image that cannot be read or has a shape that is no image (the message
            names the argument, ``images`` or ``images[i]``, and the shape); InvalidArgumentError:
            a ``preprocessed`` batch of the wrong shape or dtype; and the errors of
            :func:`bind_method`.
    """
    check_call_options(maps, top_k, batch_size, box_threshold, upsample)  # before any loading
    held = (
        model
        if isinstance(model, Explainer)
        else Explainer(
            model, method, classes, layer=layer, classifier=classifier, target=target,
            device=device, labels=labels, weights=weights, dtype=dtype,
        )
    )  # fmt: skip
    return held(
        images, maps=maps, top_k=top_k, crop=crop, batch_size=batch_size,
        box_threshold=box_threshold, layout=layout, preprocessed=preprocessed, upsample=upsample,
    )  # fmt: skip
