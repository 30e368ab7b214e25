"""How the metrics see a model and a method: a pixel-space forward function and a map source.

Every metric works on *pixel* images, ``Tensor[N,3,H,W]`` float32 RGB in [0, 1], before the
model's normalisation: that is where perturbations (black pixels, a blurred copy, imputed pixels)
are defined by the papers. Two small adapters connect them to camtool's models and methods:

- :func:`pixel_forward` turns a :class:`~camtool.models.LoadedModel` into a
  :data:`PixelForward`: pixels in, logits out (it normalises with the model's own mean/std, on
  its device, in chunks, under ``torch.inference_mode``);
- :func:`method_maps` binds a registered method (``cam``, ``gradcam``, ...; see
  :func:`camtool.methods.method_names`) through the same seam every entry point uses and returns
  a :class:`MapSource`: pixels and one class per image in, :class:`MapsWithFacts` out (maps at
  the image's resolution, and for decompositions the bias and logit that completeness needs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from camtool.allocator import keep_freed_memory
from camtool.errors import InvalidArgumentError
from camtool.metrics.checks import (
    check_class_range,
    check_classes,
    check_images,
)
from camtool.settings import DEFAULT_UPSAMPLE, check_positive_int, check_upsample

if TYPE_CHECKING:
    from camtool.methods.base import Method
    from camtool.methods.tree import ModuleArg
    from camtool.models.loading import LoadedModel

#: ``forward(images) -> logits``: pixel images ``Tensor[N,3,H,W]`` float32 RGB in [0, 1] (before
#: normalisation) to class scores ``Tensor[N,K]`` float32 (logits, not probabilities).
PixelForward = Callable[[Tensor], Tensor]


def pixel_forward(model: LoadedModel, *, batch_size: int = 64) -> PixelForward:
    """The model as a function of pixels: normalise with its preprocessing's mean and std, run on
    its device (channels-last and autocast as the model asks), no resize, under
    ``torch.inference_mode``, ``batch_size`` images per forward pass.

    The returned function takes ``Tensor[N,3,H,W]`` float in [0, 1] on any device and returns
    ``Tensor[N,K]`` float32 logits on the images' device.

    Raises:
        InvalidArgumentError: a ``batch_size`` below 1; ``ModelRunError``: the network fails.
    """
    from camtool.hooks import eval_mode
    from camtool.models.network import logits_of, network_failures

    check_positive_int(batch_size, "batch_size")
    keep_freed_memory()
    mean = torch.tensor(model.preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(model.preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1)
    cache: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def forward(images: Tensor) -> Tensor:
        device = model.device
        if device not in cache:
            cache[device] = (mean.to(device), std.to(device))
        m, s = cache[device]
        outputs = []
        with torch.inference_mode(), eval_mode(model.module), model.autocast():
            for start in range(0, int(images.shape[0]), batch_size):
                chunk = images[start : start + batch_size].to(device, torch.float32)
                batch = model.placed((chunk - m) / s)
                with network_failures(model.name, batch):
                    outputs.append(logits_of(model.module(batch), model.name).float())
        return torch.cat(outputs).to(images.device)

    return forward


@dataclass(frozen=True)
class MapsWithFacts:
    """One map per image, and what the metrics may need to know about it.

    Attributes:
        maps: ``Tensor[N,H,W]`` float32 at the images' resolution, raw (not normalised), upsampled
            from the method's cells as camtool renders them (each cell at the centre of its
            receptive field, bilinear).
        cells: ``Tensor[N,h,w]`` float32, the same maps at the method's own (feature) resolution.
        classes: ``Tensor[N]`` int64, the class each map explains.
        logits: ``Tensor[N]`` float32, the network's logit of that class on the image.
        bias: ``Tensor[N]`` float32 for decompositions (``cells.mean() + bias == logit``), None
            for methods whose maps do not decompose the score.
        network_logits: ``Tensor[N,K]`` float32, all the network's logits on the images (pass them
            as ``original_logits`` to the perturbation metrics to skip one forward pass).
        method: the registry name of the method; details: JSON-ready facts about how the maps were
            made (the method's one-line summary, its layer or head).
    """

    maps: Tensor
    cells: Tensor
    classes: Tensor
    logits: Tensor
    bias: Tensor | None
    method: str
    details: dict[str, Any] = field(default_factory=dict)
    network_logits: Tensor | None = None

    @property
    def exact(self) -> bool:
        """True when the maps decompose the logit (they come with a bias)."""
        return self.bias is not None


class MapSource(Protocol):
    """How metrics see a method: ``source(images, classes)`` with pixel images
    ``Tensor[N,3,H,W]`` float32 in [0, 1] and ``classes`` ``Tensor[N]`` int64 returns the maps
    ``Tensor[N,H,W]`` float32 at the images' resolution, or a :class:`MapsWithFacts` carrying
    them (and, for decompositions, the bias and logit)."""

    def __call__(self, images: Tensor, classes: Tensor) -> MapsWithFacts | Tensor:
        """The maps of ``images`` for ``classes`` (see the class docstring for shapes)."""
        ...


def maps_of(result: MapsWithFacts | Tensor) -> Tensor:
    """The ``Tensor[N,H,W]`` maps of a :class:`MapSource`'s result."""
    return result.maps if isinstance(result, MapsWithFacts) else result


class MethodMaps:
    """A registered method bound to one model, as a :class:`MapSource` (see :func:`method_maps`)."""

    def __init__(
        self,
        model: LoadedModel,
        method: str | Method,
        classes_per_call: int,
        upsample: str = DEFAULT_UPSAMPLE,
        **options: Any,
    ) -> None:
        from camtool.methods.base import bind

        self.upsample = check_upsample(upsample)
        self.model = model
        self.explainer = bind(method, model, **options)
        self.method = self.explainer.method
        self.classes_per_call = check_positive_int(classes_per_call, "classes_per_call")
        mean = torch.tensor(model.preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(model.preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1)
        self._mean_std = (mean, std)
        self._summary: str | None = None  # the explainer's one-line summary, made once

    def __repr__(self) -> str:
        return f"method_maps({self.model.name}, {self.method})"

    def __call__(self, images: Tensor, classes: Tensor) -> MapsWithFacts:
        """Map ``images`` (``Tensor[N,3,H,W]`` float in [0, 1]) for ``classes`` (``Tensor[N]``).

        The explainer maps a set of classes for every image of a batch, so images are grouped:
        the distinct classes are taken ``classes_per_call`` at a time, and each call maps the
        images whose class is among them (one forward pass for CAM and Eigen-CAM, one batched
        backward pass for the gradient methods, shared masked inputs for Score-CAM).

        Raises:
            InvalidArgumentError: bad images or classes (the message names the argument).
            UnsupportedModelError: the method cannot explain the model.
            ModelRunError: the network failed on the batch.
        """
        from camtool.render import upsample_cams

        images = check_images(images)
        classes = check_classes(classes, int(images.shape[0]))
        n, _, height, width = images.shape
        mean, std = self._mean_std
        batch = (images.float() - mean.to(images.device)) / std.to(images.device)
        cells: list[Tensor | None] = [None] * n
        maps = torch.empty((n, height, width), dtype=torch.float32)
        logits = torch.empty(n, dtype=torch.float32)
        every: Tensor | None = None
        bias: Tensor | None = torch.empty(n, dtype=torch.float32)
        if self._summary is None:
            self._summary = self.explainer.describe()
        details: dict[str, Any] = {"summary": self._summary}
        distinct = sorted(set(classes.tolist()))
        for start in range(0, len(distinct), self.classes_per_call):
            wanted = distinct[start : start + self.classes_per_call]
            rows = [i for i, c in enumerate(classes.tolist()) if c in wanted]
            out = self.explainer(batch[rows], wanted)
            check_class_range(classes, int(out.logits.shape[-1]))
            if out.maps.shape[1] == 0:
                raise InvalidArgumentError(self.method, f"made no maps for {self.model.name}")
            position = {c: j for j, c in enumerate(wanted)}
            columns = torch.tensor([position[int(classes[i])] for i in rows])
            picked = out.maps.detach().float().cpu()[torch.arange(len(rows)), columns]
            up = upsample_cams(picked, out.input_hw, (height, width), out.geometry, self.upsample)
            all_logits = out.logits.detach().float().cpu()
            if every is None:
                every = torch.empty((n, int(all_logits.shape[1])), dtype=torch.float32)
            every[rows] = all_logits
            picked_logits = all_logits[torch.arange(len(rows)), classes[rows].cpu()]
            for j, i in enumerate(rows):
                cells[i] = picked[j]
                maps[i] = up[j]
                logits[i] = picked_logits[j]
            if out.bias is None:
                bias = None
            elif bias is not None:
                b = out.bias.detach().float().cpu()[torch.arange(len(rows)), columns]
                bias[rows] = b
            details.update(out.details)
        return MapsWithFacts(
            maps=maps.to(images.device),
            cells=torch.stack([c for c in cells if c is not None]).to(images.device),
            classes=classes,
            logits=logits.to(images.device),
            bias=None if bias is None else bias.to(images.device),
            method=self.method,
            details=details,
            network_logits=None if every is None else every.to(images.device),
        )


def method_maps(
    model: LoadedModel,
    method: str | Method,
    *,
    classes_per_call: int = 16,
    layer: ModuleArg = None,
    classifier: ModuleArg = None,
    target: str | None = None,
    upsample: str = DEFAULT_UPSAMPLE,
) -> MethodMaps:
    """Bind ``method`` (a name from :func:`camtool.methods.method_names`: ``cam``, ``gradcam``,
    ``gradcam++``, ``scorecam``, ``eigencam``, ...) to ``model`` and return it as a
    :class:`MapSource`.

    ``source(images, classes)`` takes pixel images ``Tensor[N,3,H,W]`` float32 in [0, 1] (fed to
    the network at that size: no resize) and ``classes`` ``Tensor[N]`` int64 (one class per
    image), and returns :class:`MapsWithFacts`: ``maps`` ``Tensor[N,H,W]`` float32 at the images'
    resolution (raw values, upsampled as camtool renders them, see ``upsample`` and
    :func:`camtool.render.upsample_cams`), ``cells`` at the method's
    resolution, the class ``logits`` ``Tensor[N]``, and ``bias`` ``Tensor[N]`` for
    decompositions (None otherwise). ``layer``/``classifier``/``target`` are as for
    :func:`camtool.methods.bind`.

    Raises:
        InvalidArgumentError: an unknown method or ``upsample``.
        UnsupportedModelError: the method cannot explain this model (the message says why).
    """
    options = {"layer": layer, "classifier": classifier, "target": target}
    return MethodMaps(model, method, classes_per_call, upsample, **options)
