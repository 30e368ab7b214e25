"""The built-in EfficientNet-Lite's faster CPU inference path: every convolution with its batch
norm folded in and its ReLU6 fused into it (one oneDNN convolution with a post-op).

In eval mode a batch norm is an affine map per channel, so convolution -> batch norm is one
convolution with scaled weights and a bias; oneDNN clamps to [0, 6] as the convolution writes its
output. That saves two passes over every activation: the default model's ``forward_features``
runs about 1.3x faster on 2 CPU cores (``benchmarks/export_throughput.py``, method ``forward``
against ``forward-unfused``). The features equal the modules' within float32 rounding
(``tests/models/test_efficientnet_fused.py``).

The path is taken only where nothing can tell the difference: float32 on the CPU, eval mode, no
autograd, no autocast, no tracing or compiling, every layer of the expected kind, and no hook on
any layer (Grad-CAM, Score-CAM's and the peers' hooks see the modules run as always). The folded
weights are kept per network and folded again when any parameter or buffer changes (its storage
or its version counter). ``network.fuse_inference = False`` turns the path off.
"""

from __future__ import annotations

import functools
import itertools
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camtool.models.efficientnet_blocks import Conv2dSame, MBConvBlock

if TYPE_CHECKING:
    from camtool.models.efficientnet_lite import EfficientNetLite


@dataclass(frozen=True)
class _FoldedConv:
    """One convolution with its batch norm folded in: ``Tensor[out,in/groups,k,k]`` weights and a
    ``Tensor[out]`` bias (float32, the module's memory format), and whether ReLU6 follows."""

    conv: Conv2dSame
    weight: Tensor
    bias: Tensor
    relu6: bool

    def __call__(self, x: Tensor) -> Tensor:
        x, padding = self.conv.pad_same(x)
        unary, scalars = ("hardtanh", [0.0, 6.0]) if self.relu6 else ("none", [])
        return _pointwise_convolution()(  # type: ignore[misc]
            x, self.weight, self.bias, list(padding), list(self.conv.stride),
            list(self.conv.dilation), self.conv.groups, unary, scalars, "",
        )  # fmt: skip


@dataclass(frozen=True)
class _FoldedNetwork:
    """A network's feature extractor as folded convolutions."""

    stem: _FoldedConv
    blocks: tuple[tuple[_FoldedConv | None, _FoldedConv, _FoldedConv, bool], ...]
    head: _FoldedConv

    def features(self, x: Tensor) -> Tensor:
        """``Tensor[N,3,H,W] -> Tensor[N,1280,ceil(H/32),ceil(W/32)]``, as ``forward_features``."""
        x = self.stem(x)
        for expand, depthwise, project, skip in self.blocks:
            y = expand(x) if expand is not None else x
            y = project(depthwise(y))
            x = y + x if skip else y
        return self.head(x)


_Key = tuple[tuple[tuple[int, int], ...], tuple[tuple[object, object, object], ...]]

#: Per network: the key of the weights it was folded from (see :func:`_weights_key`), those
#: weights themselves (held, so that no new tensor can take their addresses while the key names
#: them), and the folded network (None: a network of layers this path does not know).
_FOLDED: weakref.WeakKeyDictionary[
    nn.Module, tuple[_Key, tuple[Tensor, ...], _FoldedNetwork | None]
] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def fused_features(network: EfficientNetLite, x: Tensor) -> Tensor | None:
    """``network.forward_features(x)`` through folded, fused convolutions, or None where that
    path does not apply (the caller then runs the modules)."""
    if not _applies(network, x):
        return None
    key = _weights_key(network)
    if key is None:
        return None
    with _LOCK:
        entry = _FOLDED.get(network)
        if entry is None or entry[0] != key:
            held = tuple(
                t.detach() for t in itertools.chain(network.parameters(), network.buffers())
            )
            entry = _FOLDED[network] = (key, held, _fold(network))
    folded = entry[2]
    return None if folded is None else folded.features(x)


def _applies(network: EfficientNetLite, x: Tensor) -> bool:
    """Whether the fused path computes exactly what the modules would, seen from outside."""
    if not (
        getattr(network, "fuse_inference", True)  # a network pickled before the flag existed
        and type(x) is Tensor
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == 4
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
    ):
        return False
    hooks = nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        return False
    for module in itertools.islice(network.modules(), 1, None):  # the network's own hooks wrap it
        if module.training or module._forward_hooks or module._forward_pre_hooks:
            return False
    return not network.training and _pointwise_convolution() is not None


def _weights_key(network: nn.Module) -> _Key | None:
    """What the folded weights were computed from: (storage address, version counter) of every
    parameter and buffer, and every layer's settings (a batch norm's epsilon, a block's skip);
    None when a tensor keeps no version counter (an inference tensor).

    Every in-place change bumps a tensor's version counter, except one made through ``.data``
    (``p.data.mul_(2)``), which torch hides from autograd and from this key alike: after such a
    change, set ``fuse_inference = False`` or change the weights without ``.data``.
    """
    try:
        tensors = tuple(
            (t.data_ptr(), t._version)
            for t in itertools.chain(network.parameters(), network.buffers())
        )
    except RuntimeError:
        return None
    settings = tuple(
        (getattr(m, "eps", None), getattr(m, "skip", None), getattr(m, "expand", None))
        for m in network.modules()
    )
    return tensors, settings


def _fold(network: EfficientNetLite) -> _FoldedNetwork | None:
    """Fold every batch norm of the feature extractor into its convolution; None when a layer is
    not of the kind this path knows (a replaced or customised module)."""

    def folded(conv: nn.Module, norm: nn.Module, relu6: bool) -> _FoldedConv:
        if type(conv) is not Conv2dSame or conv.bias is not None:
            raise _Unfoldable
        if type(norm) is not nn.BatchNorm2d or not norm.affine or norm.running_var is None:
            raise _Unfoldable
        assert norm.running_mean is not None and norm.weight is not None
        with torch.inference_mode(False), torch.no_grad():
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            weight = conv.weight * scale.reshape(-1, 1, 1, 1)
            bias = norm.bias - norm.running_mean * scale
        if weight.dtype != torch.float32 or weight.device.type != "cpu":
            raise _Unfoldable
        return _FoldedConv(conv, weight, bias, relu6)

    try:
        stem = folded(network._conv_stem, network._bn0, True)
        blocks = []
        for block in network._blocks:
            if type(block) is not MBConvBlock:
                raise _Unfoldable
            expand = folded(block._expand_conv, block._bn0, True) if block.expand else None
            depthwise = folded(block._depthwise_conv, block._bn1, True)
            project = folded(block._project_conv, block._bn2, False)
            blocks.append((expand, depthwise, project, block.skip))
        head = folded(network._conv_head, network._bn1, True)
    except (_Unfoldable, AttributeError):
        return None
    return _FoldedNetwork(stem, tuple(blocks), head)


class _Unfoldable(Exception):
    """A layer the fused path does not know."""


@functools.cache
def _pointwise_convolution() -> Callable[..., Tensor] | None:
    """oneDNN's convolution with a fused post-op (``torch.ops.mkldnn._convolution_pointwise``,
    the kernel torch's own compiler uses on the CPU), once it has shown on a small strided,
    grouped case that it computes ``relu6(conv2d(x, w, b))``; None where this torch lacks it
    or computes something else."""
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        op = torch.ops.mkldnn._convolution_pointwise
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(2, 8, 9, 10, generator=generator).contiguous(
            memory_format=torch.channels_last
        )
        w = torch.randn(8, 2, 3, 3, generator=generator)
        b = torch.randn(8, generator=generator)
        got = op(x, w, b, [1, 1], [2, 2], [1, 1], 4, "hardtanh", [0.0, 6.0], "")
        want = F.relu6(F.conv2d(x, w, b, 2, 1, 1, 4))
        plain = op(x, w, b, [1, 1], [2, 2], [1, 1], 4, "none", [], "")
        if torch.allclose(got, want, atol=1e-5) and torch.allclose(
            plain, F.conv2d(x, w, b, 2, 1, 1, 4), atol=1e-5
        ):
            return op
    except (AttributeError, RuntimeError):
        pass
    return None
