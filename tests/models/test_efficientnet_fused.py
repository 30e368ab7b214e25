"""The built-in EfficientNet-Lite's fused CPU inference path (camtool.efficientnet_fused): it
computes what the modules compute, and it stands aside wherever anything could tell."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from conftest import CAT, CAT_CLASSES, COFFEE, ESPRESSO, foolbox_photos
from torch import nn

import camtool
from camtool.models.efficientnet_fused import fused_features
from camtool.models.efficientnet_lite import EfficientNetLite


def _batch(model: camtool.LoadedModel, *paths: object) -> torch.Tensor:
    """The photos as the network sees them (one size: 224x224 crops), placed as export places
    them (channels-last)."""
    tensors = [model.preprocessing.prepare(camtool.load_image(p), crop=True)[0] for p in paths]
    return model.placed(torch.stack(tensors))


def _unfused(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    network.fuse_inference = False
    try:
        with torch.inference_mode():
            return network.forward_features(x)
    finally:
        network.fuse_inference = True


def _features_before_and_after(
    model: camtool.LoadedModel, change: Callable[[nn.Module], None], tolerance: float = 1e-4
) -> torch.Tensor:
    """The fused features of the cat photo before ``change(network)``; asserts that afterwards
    the fused path runs again, gives other features, and equals the changed modules."""
    network, x = model.module, _batch(model, CAT)
    with torch.inference_mode():
        before = fused_features(network, x)
    change(network)
    with torch.inference_mode():
        after = fused_features(network, x)
    assert before is not None and after is not None
    assert (after - before).abs().max().item() > 0.1
    assert (after - _unfused(network, x)).abs().max().item() < tolerance
    return before


@pytest.fixture()
def fresh() -> camtool.LoadedModel:
    """A model of its own (these tests change weights and layers)."""
    return camtool.load_model("efficientnet_lite0", device="cpu")


def test_fused_features_equal_the_modules_on_real_photos(lite0: camtool.LoadedModel) -> None:
    photos = [CAT, COFFEE, *(p for p, _ in foolbox_photos()[:6])]
    x = _batch(lite0, *photos)
    with torch.inference_mode():
        fused = fused_features(lite0.module, x)
        assert fused is not None, "the fused path must run for float32 inference on the CPU"
        logits = lite0.module(x)
    plain = _unfused(lite0.module, x)
    assert fused.shape == plain.shape == (len(photos), 1280, 7, 7)
    # float32 rounding of a reordered sum: ReLU6 features lie in [0, 6]
    assert (fused - plain).abs().max().item() < 1e-4
    plain_logits = lite0.module.forward_head(plain)
    assert (logits - plain_logits).abs().max().item() < 1e-4
    assert logits.argmax(1).tolist() == plain_logits.argmax(1).tolist()
    assert int(logits[0].argmax()) in CAT_CLASSES and int(logits[1].argmax()) == ESPRESSO


def test_fused_features_on_odd_sizes_need_the_asymmetric_padding(
    lite0: camtool.LoadedModel,
) -> None:
    # 225x301: every strided layer pads asymmetrically somewhere (TensorFlow's "SAME")
    x = torch.rand(2, 3, 225, 301, generator=torch.Generator().manual_seed(1))
    x = lite0.placed((x - 0.5) / 0.25)
    with torch.inference_mode():
        fused = fused_features(lite0.module, x)
    assert fused is not None and fused.shape == (2, 1280, 8, 10)
    assert (fused - _unfused(lite0.module, x)).abs().max().item() < 1e-4


def test_the_fused_path_stands_aside_where_it_could_be_told_apart(
    fresh: camtool.LoadedModel,
) -> None:
    network = fresh.module
    assert isinstance(network, EfficientNetLite)
    x = fresh.placed(torch.zeros(1, 3, 64, 64))
    with torch.inference_mode():
        assert fused_features(network, x) is not None
        assert fused_features(network, x.double()) is None  # not float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert fused_features(network, x) is None
        network.fuse_inference = False
        assert fused_features(network, x) is None
        network.fuse_inference = True
    with torch.enable_grad():
        assert fused_features(network, x) is None  # autograd: gradient methods need the modules
    network.train()
    with torch.inference_mode():
        assert fused_features(network, x) is None  # batch statistics, not running ones
    network.eval()


def test_a_hook_on_any_layer_sees_the_modules_run(fresh: camtool.LoadedModel) -> None:
    network = fresh.module
    seen: list[tuple[int, ...]] = []
    handle = network._blocks[3]._bn1.register_forward_hook(
        lambda _m, _a, out: seen.append(tuple(out.shape))
    )
    x = fresh.placed(torch.zeros(2, 3, 64, 64))
    with torch.inference_mode():
        assert fused_features(network, x) is None
        network(x)
    assert seen == [(2, 144, 8, 8)]
    handle.remove()
    with torch.inference_mode():
        network(x)
        assert fused_features(network, x) is not None
    assert len(seen) == 1  # the fused path skips the modules, so the removed hook saw nothing


def test_changed_weights_are_folded_again(fresh: camtool.LoadedModel) -> None:
    def in_place(network: nn.Module) -> None:
        with torch.no_grad():  # in place: a version counter moves
            network._bn1.running_mean.add_(0.5)
            network._blocks[5]._depthwise_conv.weight.mul_(1.5)

    before = _features_before_and_after(fresh, in_place)
    other = camtool.load_model("efficientnet_lite0", device="cpu").module.state_dict()
    fresh.module.load_state_dict(other)  # back to the pretrained weights
    with torch.inference_mode():
        restored = fused_features(fresh.module, _batch(fresh, CAT))
    assert restored is not None and (restored - before).abs().max().item() < 1e-5


def test_a_replaced_layer_or_a_copy(fresh: camtool.LoadedModel) -> None:
    network = fresh.module
    x = _batch(fresh, COFFEE)
    twin = copy.deepcopy(network)
    with torch.inference_mode():
        assert (twin(x) - network(x)).abs().max().item() < 1e-5
        network._blocks[2]._bn1 = nn.Identity()
        assert fused_features(network, x) is None
        changed = network(x)  # the modules run, with the layer as replaced
    assert (changed - twin(x).detach()).abs().max().item() > 0.1


def test_changed_layer_settings_and_a_network_pickled_before_the_flag(
    fresh: camtool.LoadedModel,
) -> None:
    def new_epsilon(network: nn.Module) -> None:
        network._bn1.eps = 1.0  # a setting, not a tensor: no version counter moves

    _features_before_and_after(fresh, new_epsilon)
    network = fresh.module
    del network.__dict__["fuse_inference"]  # as a module saved by an earlier camtool loads
    with torch.inference_mode():
        x = _batch(fresh, CAT)
        assert fused_features(network, x) is not None
        assert network(x).shape == (1, 1000)


def test_weights_replaced_by_a_dtype_round_trip_are_folded_again(
    fresh: camtool.LoadedModel,
) -> None:
    # .double() and .float() give every parameter new storage without moving its version
    # counter; the freed float32 storage could be handed out again at the same address
    def round_trip(network: nn.Module) -> None:
        network.double()
        with torch.no_grad():
            network._conv_head.weight.mul_(2)
            network._bn1.running_var.fill_(4.0)
        network.float()

    _features_before_and_after(fresh, round_trip, tolerance=5e-4)  # doubled weights
