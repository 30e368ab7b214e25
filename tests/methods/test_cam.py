"""The CAM maths and its guarantees: exact decomposition, and the caller's model left untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import camtool
from camtool.errors import ClassSelectionError, UnsupportedModelError
from camtool.methods.cam import compute, compute_cams, select_classes
from tests.conftest import cam_head


class TinyGapNet(nn.Module):
    """A user-defined network with a GAP + Linear head and no special names."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.squash = nn.AdaptiveAvgPool2d(1)
        self.out = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.flatten(self.squash(self.body(x)), 1))


class NormAfterPool(TinyGapNet):
    """A LayerNorm between the pooling and the classifier: it folds (one mean and scale per
    image); a GroupNorm there (statistics per group of channels) does not."""

    def __init__(self, norm: nn.Module | None = None) -> None:
        super().__init__()
        del self.out
        self.norm = nn.LayerNorm(8) if norm is None else norm
        self.out = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(torch.flatten(self.squash(self.body(x)), 1)))


def test_compute_cams_is_the_weighted_sum_of_feature_maps() -> None:
    features = torch.randn(2, 4, 3, 5)
    weight = torch.randn(6, 4)
    classes = torch.tensor([[1, 4], [0, 0]])
    cams = compute_cams(features, weight, classes)
    assert cams.shape == (2, 2, 3, 5) and cams.dtype == torch.float32
    expected = (weight[4][:, None, None] * features[0]).sum(0)
    torch.testing.assert_close(cams[0, 1], expected)


def test_select_classes_topk_and_explicit() -> None:
    logits = torch.tensor([[0.1, 3.0, 2.0], [5.0, 0.0, 1.0]])
    assert select_classes(logits, None, 2, 3).tolist() == [[1, 2], [0, 2]]
    assert select_classes(logits, [2], 1, 3).tolist() == [[2], [2]]
    with pytest.raises(ClassSelectionError, match=r"^7: class index out of range 0\.\.2$"):
        select_classes(logits, [7], 1, 3)


def test_user_module_head_is_discovered_and_exact() -> None:
    torch.manual_seed(0)
    net = TinyGapNet()
    model = camtool.load_model(net)
    assert cam_head(model).kind == "pool_input"
    assert (
        cam_head(model).describe()
        == "squash input -> out (5x8), features 8x112x112 at 224 px, probe residual 0.0e+00"
    )
    out = compute(model, torch.randn(3, 3, 32, 40), maps=5)
    assert out.cams.shape == (3, 5, 16, 20)
    torch.testing.assert_close(
        out.cams.mean((-2, -1)) + out.bias, out.logits.gather(1, out.classes)
    )
    assert float(out.residual.max()) < 1e-5


def test_layernorm_after_pooling_folds_and_a_group_norm_is_refused() -> None:
    # issue 11: a LayerNorm over the pooled channels is exact (it used to be refused)
    assert "folded: LayerNorm" in cam_head(camtool.load_model(NormAfterPool())).describe()
    net = NormAfterPool(nn.GroupNorm(2, 8))
    with pytest.raises(UnsupportedModelError) as info:
        cam_head(camtool.load_model(net))
    assert str(info.value) == (
        "NormAfterPool: CAM is not exact for this network: a normalisation after the global "
        "pooling: 'norm' (GroupNorm)"
    )


def state_of(net: nn.Module) -> tuple[list[bool], list[bool], int, int]:
    hooks = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in net.modules())
    return (
        [m.training for m in net.modules()],
        [p.requires_grad for p in net.parameters()],
        hooks,
        hash(
            tuple(float(v.float().sum()) for v in net.state_dict().values())
        ),  # weights and BN stats
    )


def test_model_is_left_exactly_as_it_was_after_normal_and_failing_calls() -> None:
    net = TinyGapNet().train()
    net.body[1].eval()  # a mixed state must come back mixed
    before = state_of(net)
    model = camtool.load_model(net)
    compute(model, torch.randn(2, 3, 32, 32))
    assert state_of(net) == before
    with pytest.raises(RuntimeError):
        compute(model, torch.randn(2, 4, 32, 32))  # wrong channel count fails inside forward
    assert state_of(net) == before
    with pytest.raises(ClassSelectionError):
        compute(model, torch.randn(1, 3, 32, 32), classes=[99])
    assert state_of(net) == before


def test_named_model_has_no_hooks_and_stays_in_eval(lite0: camtool.LoadedModel) -> None:
    before = state_of(lite0.module)
    compute(lite0, torch.zeros(1, 3, 224, 224))
    assert state_of(lite0.module) == before
    assert before[2] == 0 and not any(before[0])
