"""Head discovery over the model families users bring (random weights: nothing downloads)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import camtool
from camtool.errors import InvalidArgumentError, ModelLoadError, UnsupportedModelError
from camtool.methods.cam import compute
from tests.conftest import cam_head

timm = pytest.importorskip("timm")


def tv(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's notes on init_weights defaults
            return torchvision.models.get_model(name, weights=None, **kwargs)

    return build


def tm(name: str) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False)


class PlainGapNet(nn.Module):
    """A user's own network: nothing named like a torchvision or timm model."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1)
        )
        self.squeeze = nn.AdaptiveAvgPool2d((1, 1))
        self.decide = nn.Linear(32, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decide(self.squeeze(torch.relu(self.stem(x))).flatten(1))


# name -> (constructor, expected head kind, expected feature name prefix, classifier)
EXACT = {
    "resnet18": (tv("resnet18"), "pool_input", "avgpool", "fc"),
    "resnext50_32x4d": (tv("resnext50_32x4d"), "pool_input", "avgpool", "fc"),
    "wide_resnet50_2": (tv("wide_resnet50_2"), "pool_input", "avgpool", "fc"),
    "densenet121": (tv("densenet121"), "traced", "adaptive_avg_pool2d(relu)", "classifier"),
    "mobilenet_v2": (tv("mobilenet_v2"), "traced", "adaptive_avg_pool2d(features", "classifier.1"),
    "efficientnet_b0": (tv("efficientnet_b0"), "pool_input", "avgpool", "classifier.1"),
    "efficientnet_v2_s": (tv("efficientnet_v2_s"), "pool_input", "avgpool", "classifier.1"),
    "regnet_y_400mf": (tv("regnet_y_400mf"), "pool_input", "avgpool", "fc"),
    "shufflenet_v2_x0_5": (tv("shufflenet_v2_x0_5"), "traced", "mean(conv5", "fc"),
    "mnasnet0_5": (tv("mnasnet0_5"), "traced", "mean(layers", "classifier.1"),
    "googlenet": (
        tv("googlenet", aux_logits=False, init_weights=True),
        "pool_input",
        "avgpool",
        "fc",
    ),
    "inception_v3": (
        tv("inception_v3", aux_logits=False, init_weights=True),
        "pool_input",
        "avgpool",
        "fc",
    ),
    "squeezenet1_1": (tv("squeezenet1_1"), "class_maps", "classifier.3 input", ""),
    "timm_resnet18": (tm("resnet18"), "forward_features", "forward_features", "fc"),
    "timm_efficientnet_b0": (
        tm("efficientnet_b0"),
        "forward_features",
        "forward_features",
        "classifier",
    ),
    "timm_tf_efficientnet_lite0": (
        tm("tf_efficientnet_lite0"),
        "forward_features",
        "forward_features",
        "classifier",
    ),
    "timm_mobilenetv2_100": (
        tm("mobilenetv2_100"),
        "forward_features",
        "forward_features",
        "classifier",
    ),
    "timm_regnety_002": (tm("regnety_002"), "forward_features", "forward_features", "head.fc"),
    "timm_densenet121": (tm("densenet121"), "forward_features", "forward_features", "classifier"),
    "user_module": (PlainGapNet, "pool_input", "squeeze", "decide"),
    # issue 11: the LayerNorm after ConvNeXt's pooling folds into the classifier (was refused)
    "convnext_tiny": (tv("convnext_tiny"), "pool_input", "avgpool", "classifier.2"),
    "timm_convnext_atto": (tm("convnext_atto"), "forward_features", "forward_features", "head.fc"),
}

REFUSED = {
    "mobilenet_v3_small": (
        tv("mobilenet_v3_small"),
        "a hidden layer between the global pooling and the classifier: 'classifier.0' (Linear), "
        "'classifier.1' (Hardswish)",
    ),
    "vgg11": (tv("vgg11"), "the classifier flattens the 7x7 map of 'avgpool' (AdaptiveAvgPool2d) instead of global average pooling"),
    "alexnet": (tv("alexnet"), "the classifier flattens the 6x6 map of 'avgpool' (AdaptiveAvgPool2d) instead of global average pooling"),
    "vit_b_16": (tv("vit_b_16"), "no spatial feature map: VisionTransformer classifies transformer tokens"),
    "timm_vit_tiny": (tm("vit_tiny_patch16_224"), "no spatial feature map: VisionTransformer classifies transformer tokens"),
}  # fmt: skip


def model_state(net: nn.Module) -> tuple[list[bool], list[bool], int, float]:
    hooks = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in net.modules())
    checksum = sum(
        float(v.double().sum()) for v in net.state_dict().values() if v.is_floating_point()
    )
    return (
        [m.training for m in net.modules()],
        [p.requires_grad for p in net.parameters()],
        hooks,
        checksum,
    )


@pytest.mark.parametrize("name", list(EXACT))
def test_family_is_exact_and_left_untouched(name: str) -> None:
    build, kind, feature, classifier = EXACT[name]
    torch.manual_seed(0)
    net = build().train()  # discovery must not leave it in eval mode either
    before = model_state(net)
    model = camtool.load_model(net)
    head = cam_head(model)
    assert (head.kind, head.classifier_name) == (kind, classifier), head.describe()
    assert head.feature_name.startswith(feature), head.describe()
    out = compute(model, torch.randn(2, 3, 224, 288), maps=3)
    reconstructed = out.cams.mean(dim=(-2, -1)) + out.bias
    scale = max(1.0, float(out.logits.abs().max()))
    assert float((reconstructed - out.logits.gather(1, out.classes)).abs().max()) < 1e-4 * scale
    assert float(out.residual.max()) < 1e-4 * scale
    assert model_state(net) == before


@pytest.mark.parametrize("name", list(REFUSED))
def test_family_where_cam_is_not_exact_is_refused_with_the_reason(name: str) -> None:
    build, reason = REFUSED[name]
    net = build().eval()
    before = model_state(net)
    with pytest.raises(UnsupportedModelError) as info:
        cam_head(camtool.load_model(net))
    assert str(info.value) == f"{type(net).__name__}: CAM is not exact for this network: {reason}"
    assert model_state(net) == before


def test_explicit_layer_and_classifier_win_and_are_checked() -> None:
    net = tv("resnet18")().eval()
    model = camtool.load_model(net)
    head = cam_head(model, layer="layer4", classifier="fc")
    assert (head.kind, head.feature_name, head.classifier_name) == (
        "explicit",
        "layer4",
        "fc",
    )
    with pytest.raises(
        UnsupportedModelError, match=r"^layer4.0: mean\(CAM\) \+ bias differs from the logits by "
    ):
        cam_head(model, layer="layer4.0", classifier="fc")  # a 512x7x7 map, not the pooled one
    with pytest.raises(
        UnsupportedModelError, match=r"^layer3: gives 256 channels but classifier 'fc' takes 512$"
    ):
        cam_head(model, layer="layer3", classifier="fc")
    with pytest.raises(  # a misspelled name is a usage error, whatever the method
        InvalidArgumentError,
        match=r"^layer9: no layer module of that name in ResNet; did you mean",
    ):
        cam_head(model, layer="layer9")


class HeadFirst(nn.Module):
    """Registration order is not execution order: the classifier is defined before the pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 4)
        self.body = nn.Conv2d(3, 16, 3, 2, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.relu(self.body(x))).flatten(1))


def test_discovery_does_not_depend_on_registration_order() -> None:
    head = cam_head(camtool.load_model(HeadFirst()))
    assert (head.feature_name, head.classifier_name) == ("pool input", "head")


def test_non_finite_weights_are_refused() -> None:
    net = tv("resnet18")().eval()
    with torch.no_grad():
        net.layer4[1].bn2.running_var[0] = float("nan")
    # issue 8 item 15c: the message names the tensor and what it holds (was "differs ... by nan");
    # issue 9: a damaged network is refused by loading (ModelLoadError), before any method binds.
    with pytest.raises(ModelLoadError, match=r"'layer4\.1\.bn2\.running_var' contain NaN"):
        camtool.load_model(net)


def test_googlenet_checkpoint_without_auxiliary_heads(tmp_path: Path) -> None:
    folder = tmp_path
    net = tv("googlenet", aux_logits=False, init_weights=True)()
    torch.save(net.state_dict(), folder / "googlenet.pth")
    model = camtool.load_model("googlenet", weights=folder / "googlenet.pth")
    assert cam_head(model).classifier_name == "fc"
