"""The held explainer, :class:`Explainer`: a model and a method bound once, called on image after
image (what :func:`camtool.explain` builds for every call, and what a loop should keep).

    >>> with camtool.Explainer(net, method="gradcam", layer=net.layer4) as cam:
    ...     for path in paths:
    ...         ex = cam(path)                # an Explanation

Not to be confused with :class:`camtool.methods.Explainer`, the per-method seam it calls.
"""

from __future__ import annotations

from typing import Any, TypedDict, Unpack, overload

import numpy as np
import torch
from torch import Tensor

from camtool.binding import BoundMethod, ModelSpec, bind_method
from camtool.errors import InvalidArgumentError
from camtool.explanation import Explanation, build_explanation
from camtool.image import Layout, Region, check_crop
from camtool.io.images import (
    Images,
    ImageSource,
    NamedImage,
    gather_images,
    preprocessed_batch,
    source_name,
)
from camtool.labels import ClassesArg, resolve_classes
from camtool.methods.base import DEFAULT_METHOD, Method
from camtool.methods.tree import ModuleArg
from camtool.models.loading import DEFAULT_MODEL, LoadedModel
from camtool.settings import (
    DEFAULT_BOX_THRESHOLD,
    DEFAULT_UPSAMPLE,
    check_box_threshold,
    check_positive_int,
    check_upsample,
)


class CallOptions(TypedDict, total=False):
    """The keyword options of a call of :class:`Explainer` (one list for all its call forms)."""

    classes: ClassesArg
    maps: int
    top_k: int
    crop: bool
    batch_size: int
    box_threshold: float
    layout: Layout | None
    preprocessed: bool
    upsample: str


def check_call_options(
    maps: int, top_k: int, batch_size: int, box_threshold: float, upsample: str
) -> None:
    """Check the options of a call (of :class:`Explainer` or :func:`camtool.explain`, which
    checks them before it loads any model).

    Raises:
        InvalidArgumentError: a count that is not a positive integer, a box threshold outside
            (0, 1), or an unknown upsampling.
    """
    for value, name in ((maps, "maps"), (top_k, "top_k"), (batch_size, "batch_size")):
        check_positive_int(value, name)
    check_box_threshold(box_threshold)
    check_upsample(upsample)


class Explainer:
    """A model with a method bound to it, kept across calls: ``cam = Explainer(net, "gradcam")``,
    then ``cam(image)`` for each image, as :func:`camtool.explain` (which builds one per call)
    but without loading and binding again. Use it as a context manager to release it at the end
    of a block; calling it after that is an error.

    Args:
        model: a model name, card, ``nn.Module``, loaded model or ``BoundMethod`` (which fixes
            the method, classes and layers too), as for :func:`camtool.explain`.
        method: the method that makes the maps (default ``"auto"``), as for ``explain``.
        classes: the classes to map (default: each image's top predictions); a call can name
            others.
        layer: the layer a layer-reading method reads: a module name (``"layer4"``), the module
            itself (``net.layer4``) or a list of one of them.
        classifier: CAM's classifier module, likewise.
        target: the score the maps explain, ``"logit"`` or ``"probability"``.
        device: ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"`` (models camtool builds).
        labels: a label file overriding the model's class names.
        weights: a weights file, as for :func:`camtool.load_model`.
        dtype: the compute dtype, as for :func:`camtool.load_model`.

    Raises:
        UnknownModelError, ModelLoadError: the model cannot be loaded.
        InvalidArgumentError: an unknown method or target, or a layer module not in the model.
        ClassSelectionError: an unknown class.
        UnsupportedModelError: the method cannot explain the model (it says why).
    """

    def __init__(
        self,
        model: ModelSpec | BoundMethod = DEFAULT_MODEL,
        method: str | Method = DEFAULT_METHOD,
        classes: ClassesArg = None,
        *,
        layer: ModuleArg = None,
        classifier: ModuleArg = None,
        target: str | None = None,
        device: str | None = "auto",
        labels: str | None = None,
        weights: str | None = None,
        dtype: str | None = None,
    ) -> None:
        self._bound: BoundMethod | None = bind_method(
            model, method, classes, device=device, layer=layer, classifier=classifier,
            target=target, labels=labels, weights=weights, dtype=dtype,
        )  # fmt: skip

    @property
    def bound(self) -> BoundMethod:
        """The loaded model, the bound method and the classes.

        Raises:
            InvalidArgumentError: the explainer was closed.
        """
        if self._bound is None:
            raise InvalidArgumentError(
                "Explainer", "closed (its with block has ended); make a new Explainer"
            )
        return self._bound

    @property
    def model(self) -> LoadedModel:
        """The loaded model."""
        return self.bound.model

    @property
    def method(self) -> str:
        """The registry name of the method bound (for ``"auto"``: the one it chose)."""
        return self.bound.explainer.method

    def describe(self) -> str:
        """One line: what the maps are computed from (the head, the layer)."""
        return self.bound.explainer.describe()

    def close(self) -> None:
        """Release the model and the bound method; calling the explainer afterwards is an error.
        (Hooks are set for one call at a time, so none is left on the network.)"""
        self._bound = None

    def __enter__(self) -> Explainer:
        self.bound  # noqa: B018  (entering a closed explainer is the same error)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._bound is None:
            return "Explainer(closed)"
        return f"Explainer({self.model.name}, {self.method}: {self.describe()})"

    @overload
    def __call__(
        self, images: list[ImageSource] | tuple[ImageSource, ...], **options: Unpack[CallOptions]
    ) -> list[Explanation]: ...

    @overload
    def __call__(
        self, images: Tensor | np.ndarray[Any, Any], **options: Unpack[CallOptions]
    ) -> Any: ...

    @overload
    def __call__(self, images: ImageSource, **options: Unpack[CallOptions]) -> Explanation: ...

    def __call__(
        self,
        images: Images,
        *,
        classes: ClassesArg = None,
        maps: int = 1,
        top_k: int = 5,
        crop: bool = False,
        batch_size: int = 16,
        box_threshold: float = DEFAULT_BOX_THRESHOLD,
        layout: Layout | None = None,
        preprocessed: bool = False,
        upsample: str = DEFAULT_UPSAMPLE,
    ) -> Explanation | list[Explanation]:
        """Explain one image or several, as :func:`camtool.explain` does with this model and
        method (the same arguments for the images and the results).

        Args:
            images: one image (a path, a PIL image, a ``[3,H,W]``/``[H,W,3]``/``[H,W]`` tensor or
                array, uint8 or float in [0, 1]), a list of them, or a batch ``[N,3,H,W]`` or
                ``[N,H,W,3]``.
            classes: the classes to map in this call (default: those the explainer was made
                with, else each image's top ``maps`` predictions).
            maps: how many top classes to map when no classes are fixed.
            top_k: how many predictions to report.
            crop: centre-crop like the classic evaluation transform.
            batch_size: images per forward pass.
            box_threshold: fraction of the map's maximum used for the CAM box, 0 < t < 1.
            layout: ``"CHW"`` or ``"HWC"`` for in-memory images whose shape cannot tell.
            preprocessed: ``images`` is already the network's input, ``Tensor[N,3,h,w]`` float.
            upsample: how maps are resized to the image, ``"placed"`` or ``"stretch"`` (see
                :func:`camtool.render.upsample_cams`).

        Returns:
            An :class:`Explanation` for one image, else a list in the input order.

        Raises:
            InvalidArgumentError: the explainer was closed, or a bad option; ImageReadError: an
                image that cannot be read; ClassSelectionError: an unknown class.
        """
        check_call_options(maps, top_k, batch_size, box_threshold, upsample)
        bound = self.bound
        loaded = bound.model
        if classes is not None:
            bound = BoundMethod(
                loaded, bound.explainer, resolve_classes(classes, loaded.labels), bound.anchor
            )
        if preprocessed:
            if crop:
                raise InvalidArgumentError("crop", "a preprocessed batch goes in as it is: no crop")
            batch, single = preprocessed_batch(images, loaded.preprocessing)
            name = source_name(images)
            height, width = batch.shape[2:]
            inputs = [
                NamedImage(name if single else f"{name}[{i}]", loaded.preprocessing.denormalize(x))
                for i, x in enumerate(batch)
            ]
            prepared = [(x, Region(0.0, 0.0, float(width), float(height))) for x in batch]
        else:
            check_crop(loaded.preprocessing, crop)  # once, before any image is read
            inputs, single = gather_images(images, layout)
            prepared = [loaded.preprocessing.prepare(item.image, crop) for item in inputs]
        results: list[Explanation | None] = [None] * len(inputs)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (tensor, _) in enumerate(prepared):
            groups.setdefault(tuple(tensor.shape), []).append(i)
        for members in groups.values():
            for start in range(0, len(members), batch_size):
                chunk = members[start : start + batch_size]
                out = bound(torch.stack([prepared[i][0] for i in chunk]), maps)
                for row, i in enumerate(chunk):
                    results[i] = build_explanation(
                        loaded, out, row, inputs[i].name, inputs[i].image, prepared[i][1],
                        top_k, box_threshold, upsample,
                    )  # fmt: skip
        done = [r for r in results if r is not None]
        return done[0] if single else done
