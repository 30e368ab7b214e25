"""Target layers for the methods that read one layer's activations (Grad-CAM family, Score-CAM,
Eigen-CAM), and turning what that layer gives (a map, channels-last or tokens) into a grid.

A :class:`TargetLayer` says which tensor to read and how to lay it out as ``Tensor[N,C,h,w]``:

- ``NCHW``: a convolutional feature map, as it is;
- ``NHWC``: a channels-last feature map (torchvision's Swin stages), permuted;
- ``tokens``: a transformer block's ``[N, L, C]`` output; the prefix tokens (class, distillation,
  register tokens) are dropped and the patch tokens reshaped to the patch grid.

Default (:func:`find_target_layer`), checked on a probe batch:

1. a vision transformer: the last block's token output (timm: ``blocks[-1]`` with
   ``num_prefix_tokens``; torchvision: the last of ``encoder.layers``, after its class token;
   transformers: the last of ``vit.layers``; tokens beyond a square grid are prefix tokens);
2. the input of the last global-average-pooling module that runs (what CAM's head discovery
   uses too: exactly the tensor the network averages);
3. else the output of the last module (in the order they run, outermost last) that gives a 4-D
   map larger than 1x1 and is not a pooling (VGG's ``features``; DenseNet's ``features``).

``layer=NAME`` overrides it: the module's output, or, for a global-average-pooling module, its
input (as for CAM).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from camtool.errors import UnsupportedModelError
from camtool.geometry import GeometryMemo, GeometryRecorder
from camtool.hooks import eval_mode
from camtool.methods.base import MapBatch, Target
from camtool.methods.cam import select_classes
from camtool.methods.tree import is_global_avg_pool, lookup
from camtool.models.network import logits_of, network_failures

if TYPE_CHECKING:
    from camtool.models.loading import LoadedModel

Layout = Literal["NCHW", "NHWC", "tokens"]


@dataclass(frozen=True, eq=False)
class TargetLayer:
    """The tensor a layer-reading method uses, and how it becomes a ``Tensor[N,C,h,w]`` grid.

    Attributes:
        name: the module's name (``"layer4"``), with ``" input"`` when its input is read.
        module: the module hooked.
        capture: read the module's ``"input"`` (first positional argument) or its ``"output"``.
        layout: ``"NCHW"``, ``"NHWC"`` or ``"tokens"`` (``[N, L, C]``).
        prefix_tokens: tokens before the patch tokens (class, distillation, registers).
        patch_size: (height, width) of a patch, for tokens; None: the grid is taken as square.
        probe_shape: ``(C, h, w)`` of the grid on the probe batch; probe_size: its input size.
    """

    name: str
    module: nn.Module
    capture: Literal["input", "output"]
    layout: Layout
    prefix_tokens: int = 0
    patch_size: tuple[int, int] | None = None
    probe_shape: tuple[int, int, int] | None = None
    probe_size: int | None = None

    def describe(self) -> str:
        """One line, e.g. ``layer4 (512x7x7 at 224 px)`` or ``blocks.11 tokens (1 prefix ...)``."""
        text = self.name
        if self.layout == "tokens":
            text += f" tokens ({self.prefix_tokens} prefix dropped, patch grid)"
        elif self.layout == "NHWC":
            text += " (channels-last)"
        if self.probe_shape is not None:
            text += f", {'x'.join(map(str, self.probe_shape))} at {self.probe_size} px"
        return text

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready facts about the layer."""
        return {
            "layer": self.name,
            "capture": self.capture,
            "layout": self.layout,
            "prefix_tokens": self.prefix_tokens,
            "feature_shape": list(self.probe_shape) if self.probe_shape else None,
            "probe_size": self.probe_size,
        }

    def to_grid(self, tensor: Tensor, input_hw: tuple[int, int]) -> Tensor:
        """``Tensor[N,C,h,w]`` from what the layer gave (same dtype; a view where possible).

        Raises:
            UnsupportedModelError: the tokens do not fill a patch grid.
        """
        if self.layout == "NCHW":
            return tensor
        if self.layout == "NHWC":
            return tensor.permute(0, 3, 1, 2)
        patches = tensor[:, self.prefix_tokens :]
        h, w = self.grid_hw(int(patches.shape[1]), input_hw)
        return patches.reshape(patches.shape[0], h, w, patches.shape[2]).permute(0, 3, 1, 2)

    def grid_hw(self, count: int, input_hw: tuple[int, int]) -> tuple[int, int]:
        """The (h, w) patch grid of ``count`` patch tokens for an input of ``input_hw``."""
        if self.patch_size is not None:
            h, w = (math.ceil(n / p) for n, p in zip(input_hw, self.patch_size, strict=True))
            if h * w == count:
                return h, w
        side = math.isqrt(count)
        if side * side == count and input_hw[0] == input_hw[1]:
            return side, side
        raise UnsupportedModelError(
            self.name,
            f"gives {count} patch tokens (after {self.prefix_tokens} prefix tokens), which do not "
            f"fill the patch grid of a {input_hw[0]}x{input_hw[1]} input",
        )


@dataclass
class Run:
    """One module's run during the probe: its name, the shapes of its input and output."""

    name: str
    module: nn.Module
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None


@dataclass
class Probe:
    """What ran during one probe forward pass, in the order modules finished."""

    runs: list[Run] = field(default_factory=list)

    def of(self, module: nn.Module) -> list[Run]:
        """The runs of ``module``."""
        return [r for r in self.runs if r.module is module]


def probe_network(model: nn.Module, size: int) -> Probe:
    """Run ``model`` once on a random ``size``x``size`` batch, recording every module's shapes."""
    probe = Probe()
    names = {id(m): n for n, m in model.named_modules() if n}

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        first = args[0] if args and isinstance(args[0], Tensor) else None
        probe.runs.append(
            Run(
                names.get(id(module), ""),
                module,
                tuple(first.shape) if first is not None else None,
                tuple(output.shape) if isinstance(output, Tensor) else None,
            )
        )

    handles = [m.register_forward_hook(hook) for m in model.modules() if id(m) in names]
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    batch = torch.randn(1, 3, size, size, device=device)
    try:
        with torch.inference_mode(), eval_mode(model):
            model(batch)
    except Exception as exc:
        raise UnsupportedModelError(
            type(model).__name__, f"the network fails on a {size}x{size} probe image: {exc}"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    return probe


_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d)


def _is_pool(module: nn.Module) -> bool:
    return isinstance(module, _POOLS) or "Pool" in type(module).__name__


def _spatial(shape: tuple[int, ...] | None, layout: Layout = "NCHW") -> bool:
    if shape is None or len(shape) != 4:
        return False
    h, w = (shape[1], shape[2]) if layout == "NHWC" else (shape[2], shape[3])
    return h * w > 1


def map_layout(shape: tuple[int, ...], module: nn.Module) -> Layout:
    """``NCHW`` or ``NHWC`` for a 4-D map seen on a square probe: the two equal dimensions are the
    spatial ones (timm's pooling says its ``input_fmt`` itself)."""
    fmt = str(getattr(module, "input_fmt", "")).upper()
    if fmt in ("NCHW", "NHWC"):
        return "NHWC" if fmt == "NHWC" else "NCHW"
    if shape[2] == shape[3]:
        return "NCHW"
    return "NHWC" if shape[1] == shape[2] else "NCHW"


def _prefix_and_patch(model: nn.Module) -> tuple[int | None, tuple[int, int] | None]:
    """Prefix-token count and patch size a vision transformer declares (timm or torchvision)."""
    prefix = getattr(model, "num_prefix_tokens", None)
    if prefix is None and isinstance(getattr(model, "class_token", None), Tensor):
        prefix = 1  # torchvision's VisionTransformer
    patch: Any = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is None:
        patch = getattr(model, "patch_size", None)
    if isinstance(patch, int):
        patch = (patch, patch)
    if isinstance(patch, Sequence) and len(patch) == 2:
        return (int(prefix) if prefix is not None else None), (int(patch[0]), int(patch[1]))
    return (int(prefix) if prefix is not None else None), None


#: Names of the containers that hold a vision transformer's blocks (timm ``blocks``,
#: torchvision ``encoder.layers``, transformers ``vit.layers`` / ``vit.encoder.layer``).
BLOCK_CONTAINERS = ("blocks", "layers", "layer")


def _last_blocks(model: nn.Module) -> list[str]:
    """Names of the last block of every container a vision transformer keeps its blocks in
    (timm ``blocks``, torchvision ``encoder.layers``, transformers ``vit.layers``), outermost
    first; the caller keeps the first whose output is tokens."""
    found = []
    for name, container in model.named_modules():
        if (
            name.rsplit(".", 1)[-1] in BLOCK_CONTAINERS
            and isinstance(container, (nn.Sequential, nn.ModuleList))
            and len(container) > 0
        ):
            found.append(f"{name}.{list(container.named_children())[-1][0]}")
    return found


def _token_layer(
    model: nn.Module, name: str, module: nn.Module, shape: tuple[int, ...], size: int
) -> TargetLayer:
    prefix, patch = _prefix_and_patch(model)
    count = int(shape[1])
    if prefix is None:  # tokens beyond the largest square grid are prefix tokens
        prefix = count - math.isqrt(count) ** 2
    target = TargetLayer(name, module, "output", "tokens", prefix, patch)
    h, w = target.grid_hw(count - prefix, (size, size))
    return TargetLayer(name, module, "output", "tokens", prefix, patch, (int(shape[2]), h, w), size)


def _from_run(
    model: nn.Module, run: Run, capture: Literal["input", "output"], size: int
) -> TargetLayer:
    shape = run.input_shape if capture == "input" else run.output_shape
    name = f"{run.name} input" if capture == "input" else run.name
    if shape is not None and len(shape) == 3:
        return _token_layer(model, name, run.module, shape, size)
    if shape is None or len(shape) != 4:
        what = "no tensor" if shape is None else f"a tensor of shape {list(shape)}"
        raise UnsupportedModelError(
            name, f"gives {what}, not a feature map [N, C, h, w] or tokens [N, L, C]"
        )
    layout = map_layout(shape, run.module)
    c, h, w = (shape[3], shape[1], shape[2]) if layout == "NHWC" else shape[1:]
    return TargetLayer(
        name, run.module, capture, layout, probe_shape=(int(c), int(h), int(w)), probe_size=size
    )


def find_target_layer(
    model: nn.Module, layer: str | None = None, probe_size: int = 224
) -> TargetLayer:
    """Find (or look up) the layer a layer-reading method reads; see the module docstring.

    Raises:
        UnsupportedModelError: a TorchScript module (it takes no hooks), an unknown layer name,
            a layer that does not run exactly once or gives no feature map, or no default found.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise UnsupportedModelError(
            layer or type(model).__name__,
            "a TorchScript module takes no hooks; gradient and perturbation methods need them",
        )
    named = layer and lookup(model, layer, "layer")
    probe = probe_network(model, probe_size)
    if layer:
        assert isinstance(named, nn.Module)
        runs = probe.of(named)
        if len(runs) != 1:
            raise UnsupportedModelError(
                layer, f"ran {len(runs)} times in one forward pass, expected once"
            )
        capture: Literal["input", "output"] = "input" if is_global_avg_pool(named) else "output"
        return _from_run(model, runs[0], capture, probe_size)
    modules = dict(model.named_modules())
    for block in _last_blocks(model):
        runs = probe.of(modules[block])
        if len(runs) == 1 and runs[0].output_shape is not None and len(runs[0].output_shape) == 3:
            return _from_run(model, runs[0], "output", probe_size)
    pools = [
        r for r in probe.runs
        if is_global_avg_pool(r.module) and _spatial(r.input_shape, map_layout(r.input_shape, r.module) if r.input_shape and len(r.input_shape) == 4 else "NCHW")
    ]  # fmt: skip
    if pools and len(probe.of(pools[-1].module)) == 1:
        return _from_run(model, pools[-1], "input", probe_size)
    maps = [
        r for r in probe.runs
        if not _is_pool(r.module) and r.output_shape is not None and len(r.output_shape) == 4
        and _spatial(r.output_shape, map_layout(r.output_shape, r.module))
        and len(probe.of(r.module)) == 1
    ]  # fmt: skip
    if maps:
        return _from_run(model, maps[-1], "output", probe_size)
    raise UnsupportedModelError(
        type(model).__name__,
        "no spatial feature map or transformer block found; name one with layer=",
    )


@contextmanager
def read_layer(target: TargetLayer) -> Iterator[list[Tensor]]:
    """Record (detached) what ``target`` gives on each forward pass (its raw tensor: e.g.
    ``Tensor[N,C,h,w]``, ``Tensor[N,h,w,C]`` or tokens ``Tensor[N,L,C]``, the network's dtype);
    the hook is removed after, even when an exception passes through."""
    seen: list[Tensor] = []
    if target.capture == "input":
        handle = target.module.register_forward_pre_hook(
            lambda _m, args: seen.append(args[0].detach())
        )
    else:
        handle = target.module.register_forward_hook(lambda _m, _a, out: seen.append(out.detach()))
    try:
        yield seen
    finally:
        handle.remove()


def one_tensor(target: TargetLayer, seen: Sequence[Tensor]) -> Tensor:
    """The single (raw) tensor a layer gave during one forward pass, as :func:`read_layer`
    recorded it (``Tensor[N,...]``, see :meth:`TargetLayer.to_grid` for its grid).

    Raises:
        UnsupportedModelError: it ran zero or several times.
    """
    if len(seen) != 1:
        raise UnsupportedModelError(
            target.name, f"ran {len(seen)} times in one forward pass, expected once"
        )
    return seen[0]


def layer_of(
    method: str, model: LoadedModel, layer: str | None, classifier: str | None
) -> TargetLayer:
    """The layer the layer-reading method ``method`` reads in ``model``: ``layer``, else the
    default of :func:`find_target_layer`.

    Raises:
        UnsupportedModelError: a ``classifier`` (only CAM uses one), or no usable layer.
    """
    if classifier is not None:
        raise UnsupportedModelError(
            classifier, f"{method} reads one layer (--layer); --classifier is for cam"
        )
    return find_target_layer(model.module, layer, model.preprocessing.input_size)


@dataclass(frozen=True)
class LayerReading:
    """One forward pass that read the target layer.

    Attributes:
        batch: ``Tensor[N,3,H,W]``, the batch as the network got it (device, memory format).
        input_hw: (H, W). logits: ``Tensor[N,K]`` float32. activations: ``Tensor[N,C,h,w]``
            float32, the layer's tensor on its grid. chosen: ``Tensor[N,k]`` int64, the mapped
            classes.
    """

    batch: Tensor
    input_hw: tuple[int, int]
    logits: Tensor
    activations: Tensor
    chosen: Tensor


def prepare_batch(model: LoadedModel, batch: Tensor) -> Tensor:
    """``batch`` (``Tensor[N,3,H,W]`` float) on the model's device and memory format, as a
    normal (not inference) tensor, so that gradients can flow from it."""
    if batch.is_inference():
        with torch.inference_mode(False):
            batch = batch.clone()
    return model.placed(batch)


class LayerExplainer:
    """What every layer-reading explainer shares: the model, the layer, the score it explains,
    where the grid's cells sit per input size, and how its results are described.

    Subclasses set ``method`` (the registry name) and ``title`` (the paper's name) and implement
    ``__call__``.
    """

    method = "layer"
    title = "layer map"
    class_agnostic = False

    def __init__(self, model: LoadedModel, target: TargetLayer, score: Target = "logit") -> None:
        self.model = model
        self.target = target
        self.score = score
        self.geometry = GeometryMemo()

    def describe(self) -> str:
        """One line: the method, the score it explains, the layer; and that it is no decomposition."""
        what = "class-agnostic" if self.class_agnostic else f"of the class {self.score}"
        return f"{self.title} {what} at {self.target.describe()}; not a decomposition"

    def as_dict(self) -> dict[str, Any]:
        """The same, JSON-ready."""
        return {
            "kind": self.method,
            **self.target.as_dict(),
            "score": None if self.class_agnostic else self.score,
            "class_agnostic": self.class_agnostic,
            "decomposition": False,
        }

    def read(self, batch: Tensor, classes: Sequence[int] | None, maps: int) -> LayerReading:
        """One forward pass without gradients (under the model's autocast) that reads the layer
        and notes where its cells sit, for methods that need no gradient.

        ``batch`` is ``Tensor[N,3,H,W]`` float, normalised for the model; the
        :class:`LayerReading` holds the logits ``Tensor[N,K]`` and the activations
        ``Tensor[N,C,h,w]`` (float32) and the chosen classes ``Tensor[N,k]`` (int64).

        Raises:
            ClassSelectionError: a class index out of range; ModelRunError: the network fails;
            UnsupportedModelError: the layer does not run once.
        """
        model, target = self.model, self.target
        batch = prepare_batch(model, batch)
        input_hw = (int(batch.shape[-2]), int(batch.shape[-1]))
        with (
            eval_mode(model.module),
            torch.inference_mode(),
            model.autocast(),
            network_failures(model.name, batch),
        ):
            with self.recording(batch) as recorder, read_layer(target) as seen:
                logits = logits_of(model.module(batch), model.name).float()
            activations = target.to_grid(one_tensor(target, seen), input_hw).float()
        self.geometry.note(recorder, input_hw, (activations.shape[-2], activations.shape[-1]))
        chosen = select_classes(logits, classes, maps, int(logits.shape[-1]))
        return LayerReading(batch, input_hw, logits, activations, chosen)

    def recording(self, batch: Tensor) -> AbstractContextManager[GeometryRecorder | None]:
        """Record the network's spatial layers when ``batch``'s (``Tensor[N,3,H,W]``) input size
        is new (token grids sit on the patch centres: nothing to record)."""
        return self.geometry.recording(self.model.module, batch, self.target.layout == "tokens")

    def result(
        self,
        logits: Tensor,
        chosen: Tensor,
        maps: Tensor,
        channels: int,
        input_hw: tuple[int, int],
        recorder: GeometryRecorder | None,
    ) -> MapBatch:
        """The :class:`MapBatch` of maps ``Tensor[N,k,h,w]`` (float32, not a decomposition)."""
        grid_hw = (int(maps.shape[-2]), int(maps.shape[-1]))
        geometry = self.geometry.note(recorder, input_hw, grid_hw)
        return MapBatch(
            method=self.method,
            summary=self.describe(),
            logits=logits.detach().float(),
            classes=chosen,
            maps=maps.detach().float(),
            geometry=geometry,
            input_hw=input_hw,
            features_shape=(channels, grid_hw[0], grid_hw[1]),
            details={"layer": self.target.name, "layer_detail": self.as_dict()},
            class_agnostic=self.class_agnostic,
        )
