"""The layers of the built-in EfficientNet-Lite: a convolution with TensorFlow's "SAME" padding
computed at run time, its batch norm (epsilon 1e-3), and the inverted-residual block.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn


def round_channels(channels: float, divisor: int = 8) -> int:
    """``channels`` scaled by a width multiplier, rounded to a multiple of ``divisor`` as
    TensorFlow's EfficientNet rounds them (never below 90% of the value)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


class Conv2dSame(nn.Conv2d):
    """A bias-free convolution with TensorFlow's "SAME" padding, computed for each input size.

    Stride-1 convolutions (odd kernels) pad symmetrically, which the convolution does itself;
    strided ones pad more on the bottom/right when the input size is even, which needs an
    explicit pad only then.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        padding = (kernel - 1) // 2 if stride == 1 else 0
        super().__init__(cin, cout, kernel, stride, padding=padding, groups=groups, bias=False)

    def pad_same(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``x`` (``Tensor[N,C,H,W]``) padded for this convolution where the padding is
        asymmetric (else ``x`` itself), and the padding the convolution itself applies."""
        if self.stride == (1, 1):
            return x, (int(self.padding[0]), int(self.padding[1]))
        pads = []
        for size, k, s in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if pads[0] == pads[1] and pads[2] == pads[3]:  # symmetric: let the convolution pad
            return x, (pads[2], pads[0])
        return F.pad(x, pads), (0, 0)

    def forward(self, x: Tensor) -> Tensor:
        x, padding = self.pad_same(x)
        return F.conv2d(x, self.weight, None, self.stride, padding, self.dilation, self.groups)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """TensorFlow's batch norm of ``channels`` (epsilon 1e-3)."""
    return nn.BatchNorm2d(channels, eps=1e-3)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck: (expand 1x1) -> depthwise kxk -> project 1x1 (+ skip)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = Conv2dSame(cin, mid, 1)
            self._bn0 = batch_norm(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid)
        self._bn1 = batch_norm(mid)
        self._project_conv = Conv2dSame(mid, cout, 1)
        self._bn2 = batch_norm(cout)
        self.expand = expand != 1
        self.skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y
