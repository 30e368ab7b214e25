"""Where a feature map's cells sit on the network input, so heatmaps land where they came from.

The first batch of each input size records the spatial layers of one forward pass of an empty
batch (:func:`record_geometry`, :meth:`GeometryMemo.recording`) and composes their padding and
strides into a :class:`FeatureGeometry`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from camtool.hooks import eval_mode


@dataclass(frozen=True)
class FeatureGeometry:
    """Where the feature map's cells sit on the network input, per axis (height, width).

    Cell ``(i, j)`` is centred at ``(origin[0] + i * stride[0], origin[1] + j * stride[1])`` in
    input pixels, in continuous coordinates (pixel ``k`` spans ``[k, k + 1)``). Padding decides
    the origin: TensorFlow "SAME" padding shifts receptive fields right/down, symmetric padding
    left/up, by up to half a cell; ignoring it misplaces heatmaps by that much.
    """

    origin: tuple[float, float]
    stride: tuple[float, float]

    @staticmethod
    def uniform(input_hw: tuple[int, int], feature_hw: tuple[int, int]) -> FeatureGeometry:
        """The plain assumption: cells tile the input from its top-left corner."""
        sh, sw = (feature_stride(n, f) for n, f in zip(input_hw, feature_hw, strict=True))
        return FeatureGeometry((sh / 2, sw / 2), (sh, sw))

    @staticmethod
    def stretched(input_hw: tuple[int, int], feature_hw: tuple[int, int]) -> FeatureGeometry:
        """The grid stretched over the whole input, each cell ``input / cells`` pixels wide: what
        ``cv2.resize`` and ``F.interpolate(..., align_corners=False)`` assume."""
        sh, sw = (n / max(f, 1) for n, f in zip(input_hw, feature_hw, strict=True))
        return FeatureGeometry((sh / 2, sw / 2), (sh, sw))


def feature_stride(input_size: int, feature_size: int) -> float:
    """The stride along one axis: the power of two ``s`` with ``ceil(input_size / s) ==
    feature_size`` (how convolution stacks round), else the plain ratio."""
    for power in range(8):
        if math.ceil(input_size / 2**power) == feature_size:
            return float(2**power)
    return input_size / max(feature_size, 1)


_SPATIAL = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.ZeroPad2d)


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _pad_before(module: nn.Module, axis: int, size: int) -> int | None:
    """Padding added before index 0 along ``axis`` (0: height, 1: width), or None if unknown."""
    if isinstance(module, nn.ZeroPad2d):
        left, _, top, _ = module.padding
        return top if axis == 0 else left
    kernel = _pair(getattr(module, "kernel_size", 1))[axis]
    stride = _pair(getattr(module, "stride", None) or kernel)[axis]
    dilation = _pair(getattr(module, "dilation", 1))[axis]
    if type(module).__name__.endswith("Same") and stride > 1:  # TensorFlow "SAME", per input size
        total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
        return total // 2
    padding = getattr(module, "padding", 0)
    if isinstance(padding, str):
        return 0 if padding == "valid" else None
    return _pair(padding)[axis]


def _layer_offset(module: nn.Module, axis: int, size: int) -> tuple[float, int] | None:
    """``(centre of output cell 0 in input cells, stride)`` of one layer, or None if unknown."""
    before = _pad_before(module, axis, size)
    if before is None:
        return None
    if isinstance(module, nn.ZeroPad2d):
        return float(-before), 1
    kernel = _pair(getattr(module, "kernel_size", 1))[axis]
    stride = _pair(getattr(module, "stride", None) or kernel)[axis]
    dilation = _pair(getattr(module, "dilation", 1))[axis]
    return (kernel - 1) * dilation / 2 - before, stride


class GeometryRecorder:
    """Collects, during one forward pass, the spatial layers run and their input/output sizes."""

    def __init__(self) -> None:
        self.events: list[tuple[nn.Module, tuple[int, int], tuple[int, int]]] = []
        self.enabled = True

    def geometry(self, input_hw: tuple[int, int], feature_hw: tuple[int, int]) -> FeatureGeometry:
        """Compose the recorded layers into the feature map's :class:`FeatureGeometry`.

        Tensors are tracked by their size along each axis: a layer whose input size is a known
        level maps it to its output size (the first layer reaching a level defines it, as the
        main path runs before shortcut branches). Unknown layouts fall back to ``uniform``.
        """
        fallback = FeatureGeometry.uniform(input_hw, feature_hw)
        if not self.enabled:
            return fallback
        origin, stride = list(fallback.origin), list(fallback.stride)
        for axis in (0, 1):
            levels: dict[int, tuple[float, float]] = {input_hw[axis]: (0.5, 1.0)}
            for module, size_in, size_out in self.events:
                n_in, n_out = size_in[axis], size_out[axis]
                if n_in not in levels or n_out in levels:
                    continue
                step = _layer_offset(module, axis, n_in)
                if step is None:
                    continue
                a, s = levels[n_in]
                levels[n_out] = (a + s * step[0], s * step[1])
            if feature_hw[axis] in levels and feature_hw[axis] != input_hw[axis]:
                origin[axis], stride[axis] = levels[feature_hw[axis]]
        return FeatureGeometry((origin[0], origin[1]), (stride[0], stride[1]))


@contextmanager
def record_geometry(model: nn.Module) -> Iterator[GeometryRecorder]:
    """Record the spatial layers of one forward pass (hooks removed on exit)."""
    recorder = GeometryRecorder()
    if isinstance(model, torch.jit.ScriptModule):
        recorder.enabled = False  # TorchScript modules take no hooks
        yield recorder
        return

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if args and isinstance(args[0], Tensor) and isinstance(output, Tensor) and output.ndim == 4:
            size_in = (int(args[0].shape[-2]), int(args[0].shape[-1]))
            recorder.events.append(
                (module, size_in, (int(output.shape[-2]), int(output.shape[-1])))
            )

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _SPATIAL)]
    try:
        yield recorder
    finally:
        for handle in handles:
            handle.remove()


class GeometryMemo:
    """Where one explainer's map cells sit, per input size: the first batch of each size records
    the network's spatial layers (:func:`record_geometry`), later batches reuse the result."""

    def __init__(self) -> None:
        self._known: dict[tuple[int, int], FeatureGeometry] = {}

    @contextmanager
    def recording(
        self, model: nn.Module, batch: Tensor, uniform: bool = False
    ) -> Iterator[GeometryRecorder | None]:
        """Record ``model``'s spatial layers when ``batch``'s input size (``Tensor[N,C,H,W]``) is
        new (and ``uniform`` is not set: cells on a uniform grid, as transformer patches are);
        else yield None.

        The layers are recorded on an empty batch (``batch[:0]``, in eval mode, no autograd, in
        the caller's inference mode): shapes alone, no pixel computed, and the pass this wraps
        runs without hooks, the same way as every later batch of that size (a network with a
        fused inference path, such as the built-in EfficientNet-Lite, takes it only without
        hooks). A network that cannot run an empty batch, or runs none of its spatial layers on
        one, is recorded on the wrapped pass instead. Hooks of the caller's own on the network
        see the empty batch too.
        """
        if (int(batch.shape[-2]), int(batch.shape[-1])) in self._known or uniform:
            yield None
            return
        with record_geometry(model) as recorder:
            try:
                with eval_mode(model), torch.no_grad():
                    model(batch[:0])
                ahead = bool(recorder.events)  # none: the network skips work on no images
            except Exception:  # any failure: record on the real pass below
                ahead = False
        if ahead:
            yield recorder
            return
        with record_geometry(model) as recorder:
            yield recorder

    def note(
        self,
        recorder: GeometryRecorder | None,
        input_hw: tuple[int, int],
        grid_hw: tuple[int, int],
    ) -> FeatureGeometry:
        """The geometry of a ``grid_hw`` map for ``input_hw`` inputs (kept): as ``recorder`` found
        it, else as known, else a uniform grid."""
        geometry = self._known.get(input_hw)
        if geometry is None:
            geometry = (
                recorder.geometry(input_hw, grid_hw)
                if recorder is not None
                else FeatureGeometry.uniform(input_hw, grid_hw)
            )
            self._known[input_hw] = geometry
        return geometry
