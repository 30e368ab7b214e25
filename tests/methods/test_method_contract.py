"""The contract every registered method keeps, tested the moment it is registered.

Parametrized over the method registry (``camtool.methods.method_names()``), on a real network
(torchvision's resnet18 with random weights, up to its ``layer2``, then a GAP + Linear head, so
that Score-CAM's forward pass per channel stays cheap) and the bundled photos at 32 px: maps
``Tensor[N,k,h,w]`` float32; the caller's model unchanged (training flags, ``requires_grad``,
parameters and buffers bitwise equal, no ``.grad``); every hook removed, even when an exception
passes through; a batch of two equals two single calls; a network a method cannot explain is
refused with an ``UnsupportedModelError`` that names a reason.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

import camtool
from camtool.errors import InvalidArgumentError, UnsupportedModelError
from camtool.image import Preprocessing
from camtool.methods import MethodVerdict, bind, get_method, method_names, survey
from tests.conftest import CAT, COFFEE

SIZE = 32
CLASSES = 10
METHODS = method_names()


def small_resnet() -> nn.Module:
    """resnet18 (random weights) up to ``layer2`` (128 channels, 4x4 cells at 32 px), then its
    own global average pooling and linear classifier."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    parts = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2")
    return nn.Sequential(
        OrderedDict(
            [(name, getattr(net, name)) for name in parts]
            + [
                ("avgpool", nn.AdaptiveAvgPool2d(1)),
                ("flatten", nn.Flatten()),
                ("fc", nn.Linear(128, CLASSES)),
            ]
        )
    )


def load(net: nn.Module) -> camtool.LoadedModel:
    return camtool.load_model(net, preprocessing=Preprocessing(input_size=SIZE))


@pytest.fixture(scope="module")
def model() -> camtool.LoadedModel:
    return load(small_resnet())


@pytest.fixture(scope="module")
def photos(model: camtool.LoadedModel) -> torch.Tensor:
    """``Tensor[2,3,32,32]`` float32: chelsea.png and coffee.png, prepared for the model."""
    prepared = [
        model.preprocessing.prepare(camtool.load_image(path), crop=True)[0]
        for path in (CAT, COFFEE)
    ]
    return torch.stack(prepared)


def hooks(net: nn.Module) -> list[tuple[Any, ...]]:
    """Every hook registered on ``net``'s modules and globally, as comparable keys."""
    kinds = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_pre_hooks_with_kwargs",
    )
    found: list[tuple[Any, ...]] = [
        (name, kind, tuple(getattr(module, kind, {}).items()))
        for name, module in net.named_modules()
        for kind in kinds
    ]
    registry = torch.nn.modules.module
    for kind in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
        found.append(("(global)", kind, tuple(getattr(registry, kind, {}).items())))
    return found


def state(net: nn.Module) -> dict[str, Any]:
    """What a method must leave as it was: flags, parameters, buffers, gradients."""
    return {
        "training": [m.training for m in net.modules()],
        "requires_grad": [p.requires_grad for p in net.parameters()],
        "grad": [p.grad for p in net.parameters()],
        "tensors": {k: v.detach().clone() for k, v in net.state_dict(keep_vars=True).items()},
    }


def assert_unchanged(net: nn.Module, before: dict[str, Any]) -> None:
    after = state(net)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(g is None for g in after["grad"])
    assert after["tensors"].keys() == before["tensors"].keys()
    for key, value in before["tensors"].items():
        assert torch.equal(after["tensors"][key], value), key


def test_the_registry_lists_each_method_under_its_own_name() -> None:
    assert len(METHODS) == len(set(METHODS)) > 0
    for name in METHODS:
        method = get_method(name)
        assert method.name == name and method.summary.strip()


@pytest.mark.parametrize("name", METHODS)
def test_maps_are_float32_n_k_h_w(
    model: camtool.LoadedModel, photos: torch.Tensor, name: str
) -> None:
    out = bind(name, model)(photos, maps=3)
    c, h, w = out.features_shape
    assert out.method == name
    assert out.maps.shape == (2, 3, h, w) and out.maps.dtype == torch.float32
    assert out.classes.shape == (2, 3) and out.classes.dtype == torch.int64
    assert out.logits.shape == (2, CLASSES) and out.logits.dtype == torch.float32
    assert torch.isfinite(out.maps).all() and not out.maps.requires_grad
    assert out.input_hw == (SIZE, SIZE) and c > 0
    if out.exact:  # a decomposition: mean(map) + bias is the logit, within its residual
        assert out.bias is not None and out.residual is not None
        assert out.bias.shape == (2, 3) and out.residual.shape == (2,)
        logit = out.logits.gather(1, out.classes)
        recomposed = out.maps.mean(dim=(-2, -1)) + out.bias
        assert float((recomposed - logit).abs().max()) <= float(out.residual.max()) + 1e-4


@pytest.mark.parametrize("name", METHODS)
def test_a_class_agnostic_method_says_so_and_only_it_maps_every_class_alike(
    model: camtool.LoadedModel, photos: torch.Tensor, name: str
) -> None:
    out = bind(name, model)(photos, classes=[3, 7])
    same = torch.equal(out.maps[:, 0], out.maps[:, 1])
    assert get_method(name).class_agnostic is out.class_agnostic is same, name
    assert name != "eigencam" or out.class_agnostic  # Eigen-CAM: the first principal component


@pytest.mark.parametrize("name", METHODS)
def test_a_batch_of_two_equals_two_single_calls(
    model: camtool.LoadedModel, photos: torch.Tensor, name: str
) -> None:
    explainer = bind(name, model)
    both = explainer(photos, classes=[3, 7])
    for i in range(2):
        one = explainer(photos[i : i + 1], classes=[3, 7])
        assert torch.equal(one.classes[0], both.classes[i])
        scale = max(1.0, float(both.maps[i].abs().max()))
        torch.testing.assert_close(one.maps[0], both.maps[i], rtol=1e-4, atol=1e-5 * scale)
        torch.testing.assert_close(one.logits[0], both.logits[i], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_the_callers_model_is_unchanged_and_its_hooks_are_removed(
    photos: torch.Tensor, name: str
) -> None:
    net = small_resnet().train()
    net.conv1.weight.requires_grad_(False)  # a mix of frozen and trainable parameters
    own = net.layer2.register_forward_hook(lambda _m, _a, _o: None)  # the caller's own hook
    try:
        before, hooked = state(net), hooks(net)
        model = load(net)
        explainer = bind(name, model)
        for context in (torch.enable_grad, torch.no_grad, torch.inference_mode):
            with context():
                grad_mode = torch.is_grad_enabled()
                explainer(photos[:1], maps=2)
                assert torch.is_grad_enabled() == grad_mode
        assert_unchanged(net, before)
        assert hooks(net) == hooked
        # An exception inside the forward pass (a batch of the wrong shape, at an input size not
        # seen before) and one after it (a class out of range): still no hook left behind.
        with pytest.raises(Exception):  # noqa: B017  (each method's own error type)
            explainer(torch.zeros(1, 4, 24, 24))
        with pytest.raises(Exception):  # noqa: B017
            explainer(photos[:1], classes=[CLASSES + 5])
        assert_unchanged(net, before)
        assert hooks(net) == hooked
    finally:
        own.remove()


class NoFeatureMap(nn.Module):
    """A classifier with no spatial feature map and no pooling: a linear model of the pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(3 * 16 * 16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(x))


@pytest.mark.parametrize("name", METHODS)
def test_a_model_the_method_cannot_explain_is_refused_with_a_reason(name: str) -> None:
    net = NoFeatureMap()
    hooked = hooks(net)
    model = camtool.load_model(net, preprocessing=Preprocessing(input_size=16, fixed_size=True))
    with pytest.raises(UnsupportedModelError) as refusal:
        bind(name, model)
    assert refusal.value.problem.strip() and str(refusal.value).strip()
    assert hooks(net) == hooked


@pytest.mark.parametrize("name", METHODS)
def test_an_unknown_layer_is_refused_with_a_reason(model: camtool.LoadedModel, name: str) -> None:
    with pytest.raises(
        InvalidArgumentError,
        match=r"^layer9: no layer module of that name in Sequential; did you mean layer2",
    ):
        bind(name, model, layer="layer9")


def test_the_survey_has_one_verdict_per_registered_method(model: camtool.LoadedModel) -> None:
    report = survey(model)
    assert tuple(v.name for v in report.verdicts) == METHODS
    assert report.explaining == METHODS and report.auto == "cam"
    assert report.verdict("cam").decomposition and not report.verdict("gradcam").decomposition
    assert report.head is not None and report.head == bind("cam", model).describe()
    doc = report.as_dict()
    assert list(doc) == ["methods", "head", "head_detail", "auto"]
    assert set(doc["methods"]["cam"]) == {"explains", "uses", "decomposition", "detail"}
    refused = survey(
        camtool.load_model(
            NoFeatureMap(), preprocessing=Preprocessing(input_size=16, fixed_size=True)
        )
    )
    assert refused.explaining == () and refused.auto == "none" and refused.head is None
    for verdict in refused.verdicts:
        assert verdict == MethodVerdict(verdict.name, False, reason=verdict.reason)
        assert verdict.reason and verdict.as_dict() == {"explains": False, "reason": verdict.reason}
    assert list(refused.as_dict()) == ["methods", "auto"]
