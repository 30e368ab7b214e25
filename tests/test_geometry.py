"""Heatmaps land where the network looked: feature cells are placed at their receptive fields."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import camtool
from camtool.geometry import FeatureGeometry, record_geometry
from camtool.models.efficientnet_lite import Conv2dSame
from tests.conftest import CAT


def uniform(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        nn.init.ones_(parameter)
    return module


NETS = {
    "tf_same": lambda: nn.Sequential(Conv2dSame(1, 1, 3, 2), Conv2dSame(1, 1, 5, 2), Conv2dSame(1, 1, 3, 2)),
    "symmetric": lambda: nn.Sequential(
        nn.Conv2d(1, 1, 7, 2, 3, bias=False), nn.AvgPool2d(3, 2, 1), nn.Conv2d(1, 1, 3, 2, 1, bias=False)
    ),
    "valid": lambda: nn.Sequential(nn.Conv2d(1, 1, 3, 2, 0, bias=False), nn.ZeroPad2d((2, 0, 1, 0)), nn.Conv2d(1, 1, 3, 2, 0, bias=False)),
}  # fmt: skip


@pytest.mark.parametrize("size", [(64, 64), (65, 71), (96, 83)])
@pytest.mark.parametrize("name", list(NETS))
def test_recorded_geometry_is_the_receptive_field_centre(name: str, size: tuple[int, int]) -> None:
    """With uniform weights, the gradient of one interior cell is its receptive field: its
    centroid (in pixel centres) must be the recorded origin + index x stride."""
    net = uniform(NETS[name]())
    x = torch.zeros(1, 1, *size, requires_grad=True)
    with record_geometry(net) as recorder:
        out = net(x)
    geometry = recorder.geometry(size, (out.shape[-2], out.shape[-1]))
    i, j = 2, 2
    out[0, 0, i, j].backward()
    weights = x.grad[0, 0]
    ys, xs = torch.meshgrid(torch.arange(size[0]) + 0.5, torch.arange(size[1]) + 0.5, indexing="ij")
    centre = (
        float((weights * ys).sum() / weights.sum()),
        float((weights * xs).sum() / weights.sum()),
    )
    expected = (
        geometry.origin[0] + i * geometry.stride[0],
        geometry.origin[1] + j * geometry.stride[1],
    )
    assert centre == pytest.approx(expected)
    assert geometry.stride == ((4.0, 4.0) if name == "valid" else (8.0, 8.0))


def test_default_model_geometry_follows_tensorflow_same_padding(lite0: camtool.LoadedModel) -> None:
    """Even inputs put receptive fields half a cell right/down of the naive grid, odd ones not."""
    with record_geometry(lite0.module) as recorder:
        lite0.module(torch.zeros(1, 3, 224, 337))
    assert recorder.geometry((224, 337), (7, 11)) == FeatureGeometry((31.5, 16.5), (32.0, 32.0))
    assert FeatureGeometry.uniform((224, 337), (7, 11)) == FeatureGeometry(
        (16.0, 16.0), (32.0, 32.0)
    )
    ex = camtool.explain(CAT, lite0)
    assert ex.geometry == FeatureGeometry((31.5, 16.5), (32.0, 32.0))


def test_upsample_puts_each_cell_at_its_centre() -> None:
    cams = torch.zeros(1, 4, 4)
    cams[0, 1, 2] = 1.0
    geometry = FeatureGeometry(origin=(12.0, 4.0), stride=(8.0, 8.0))
    up = camtool.upsample_cams(cams, (32, 32), (64, 64), geometry)  # image at twice the input size
    peak = divmod(int(up[0].argmax()), 64)
    # Cell (1, 2) is centred at input (12 + 8, 4 + 16) = (20, 20) -> image (40, 40): pixel 39 or 40.
    assert peak[0] in (39, 40) and peak[1] in (39, 40)
    assert up.shape == (1, 64, 64) and float(up.min()) == 0.0


class _FlatByView(nn.Module):
    """A network that cannot run an empty batch (``view(N, -1)`` with N = 0 has no answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = NETS["tf_same"]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).view(x.shape[0], -1)


@pytest.mark.parametrize("empty_batch_runs", [True, False])
def test_the_memo_records_once_per_size_on_an_empty_batch_else_on_the_pass(
    empty_batch_runs: bool,
) -> None:
    from camtool.geometry import GeometryMemo

    net = uniform(NETS["tf_same"]() if empty_batch_runs else _FlatByView())
    layers = [m for m in net.modules() if isinstance(m, Conv2dSame)]
    memo, batch = GeometryMemo(), torch.zeros(2, 1, 64, 71)
    with memo.recording(net, batch) as recorder:
        assert recorder is not None
        # recorded ahead: no hook is left on the layers during the wrapped pass
        assert any(m._forward_hooks for m in layers) is not empty_batch_runs
        out = net(batch)
    assert [size for _, size, _ in recorder.events][:1] == [(64, 71)]
    grid = (8, 9)
    assert out.shape[-1] == (8 * 9 if not empty_batch_runs else 9)
    geometry = memo.note(recorder, (64, 71), grid)
    # By hand: "SAME" pads 0/1, 1/2, 0/1 rows (64, 32, 16 in) and 1/1, 1/2, 0/1 columns (71, 36,
    # 18 in); cell 0's centre: rows 1.5 -> 1.5 + 1*2 -> 3.5 + 1*4 = 7.5, columns 0.5 -> 2.5 -> 6.5.
    assert geometry == FeatureGeometry((7.5, 6.5), (8.0, 8.0))
    with memo.recording(net, batch) as again:
        assert again is None  # this size is known
    assert not any(m._forward_hooks for m in layers)


class _NothingOnNoImages(nn.Module):
    """A network that returns early on an empty batch, running none of its layers."""

    def __init__(self) -> None:
        super().__init__()
        self.features = NETS["tf_same"]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:
            return x.new_zeros(0, 1, 1, 1)
        return self.features(x)


def test_an_empty_batch_that_runs_no_layer_and_lazy_layers() -> None:
    from camtool.geometry import GeometryMemo

    net = uniform(_NothingOnNoImages())
    memo, batch = GeometryMemo(), torch.zeros(1, 1, 64, 71)
    with memo.recording(net, batch) as recorder:
        assert recorder is not None and not recorder.events
        out = net(batch)  # recorded on the pass instead
    assert memo.note(recorder, (64, 71), tuple(out.shape[-2:])) == FeatureGeometry(
        (7.5, 6.5), (8.0, 8.0)
    )
    lazy = nn.Sequential(nn.LazyConv2d(4, 3, stride=2), nn.ReLU())
    with GeometryMemo().recording(lazy, torch.rand(1, 3, 16, 16)) as recorder:
        assert recorder is not None and recorder.events
    # the empty pass ran without autograd but outside inference mode: the weights it made
    # lazily are ordinary tensors that a later gradient pass can use
    assert not lazy[0].weight.is_inference()
    lazy(torch.rand(1, 3, 16, 16)).sum().backward()
    assert lazy[0].weight.grad is not None
