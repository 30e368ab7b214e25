"""Exact decompositions past GAP + linear: folded affine heads, LayerNorm heads, integrated heads.

Golden values come from the networks themselves (the maps' means plus bias must give back every
logit) and from closed forms computed by hand; no other library is consulted.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import camtool
from camtool.errors import UnsupportedModelError
from camtool.methods import MapBatch, bind
from camtool.methods.cam import CamExplainer
from camtool.methods.folding import fold_head
from camtool.methods.integrated import IntegratedHeadExplainer


def reproduce(
    model: camtool.LoadedModel, method: str, size: int, scale_floor: float = 0.0
) -> tuple[float, MapBatch]:
    """Map every class of two random images; return max |mean(map) + bias - logit| against the
    network's own output, relative to max(scale_floor, max |logit|), and the maps."""
    torch.manual_seed(0)
    batch = torch.randn(2, 3, size, size)
    out = bind(method, model)(batch, maps=10**6)
    with torch.no_grad():
        logits = model.module.eval()(batch).float()
    assert out.bias is not None and out.residual is not None
    assert out.classes.shape[1] == logits.shape[1]
    rebuilt = torch.zeros_like(logits).scatter(1, out.classes, out.maps.mean((-2, -1)) + out.bias)
    scale = max(scale_floor, float(logits.abs().max()))
    return float((rebuilt - logits).abs().max()) / scale, out


def randomise_norms(net: nn.Module) -> None:
    """Give every norm non-trivial statistics and affine parameters (init leaves them 0 and 1)."""
    generator = torch.Generator().manual_seed(1)
    for module in net.modules():
        if isinstance(module, (nn.LayerNorm, nn.BatchNorm1d)):
            with torch.no_grad():
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator))
        if isinstance(module, nn.BatchNorm1d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator))
            module.running_var.copy_(
                torch.rand(module.running_var.shape, generator=generator) + 0.5
            )


def test_affine_pieces_after_the_pooling_fold_in_closed_form() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(6),
        nn.Dropout(0.5), nn.Linear(6, 5), nn.Linear(5, 4),
    )  # fmt: skip
    randomise_norms(net)
    model = camtool.load_model(net, preprocessing=camtool.Preprocessing(input_size=16))
    explainer = bind("cam", model)
    assert isinstance(explainer, CamExplainer)
    assert "folded: BatchNorm1d, Linear" in explainer.describe()
    assert explainer.as_dict()["folded"] == [
        {"module": "3", "type": "BatchNorm1d"},
        {"module": "5", "type": "Linear"},
    ]
    bn, first, last = net[3], net[5], net[6]
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    shift = bn.bias - bn.running_mean * scale
    weight = last.weight @ first.weight * scale
    bias = last.weight @ (first.weight @ shift + first.bias) + last.bias
    affine = explainer.head.affine()
    assert affine is not None
    torch.testing.assert_close(affine.weight, weight.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(affine.bias, bias.detach(), rtol=1e-5, atol=1e-6)
    assert reproduce(model, "cam", 16)[0] < 1e-5


def test_resnet18_with_a_batchnorm_before_its_classifier_is_exact() -> None:
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.resnet18()
    net.fc = nn.Sequential(nn.BatchNorm1d(512), nn.Linear(512, 10))
    randomise_norms(net)
    model = camtool.load_model(net, preprocessing=camtool.Preprocessing(input_size=64))
    assert "fc.1 (10x512), folded: BatchNorm1d" in bind("cam", model).describe()
    assert reproduce(model, "cam", 64)[0] < 1e-5


def test_torchvision_convnext_layernorm_folds_per_image() -> None:
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.convnext_tiny(num_classes=10)
    randomise_norms(net.classifier)
    model = camtool.load_model(net, preprocessing=camtool.Preprocessing(input_size=64))
    assert "folded: LayerNorm2d" in bind("cam", model).describe()
    assert reproduce(model, "cam", 64)[0] < 1e-4


def test_timm_convnext_layernorm_folds_per_image() -> None:
    timm = pytest.importorskip("timm")
    net = timm.create_model("convnext_atto", num_classes=10)
    randomise_norms(net.head)
    model = camtool.load_model(net, preprocessing=camtool.Preprocessing(input_size=64))
    assert "head.fc (10x320), folded: LayerNorm2d" in bind("cam", model).describe()
    assert reproduce(model, "cam", 64)[0] < 1e-4


def test_timm_vit_averaging_its_patch_tokens_folds_fc_norm_on_the_token_grid() -> None:
    timm = pytest.importorskip("timm")
    net = timm.create_model(
        "vit_tiny_patch16_224", num_classes=10, global_pool="avg", img_size=64,
        pretrained_cfg_overlay={"input_size": (3, 64, 64)},
    )  # fmt: skip
    assert net.num_prefix_tokens == 1  # the class token is kept, and left out of the grid
    randomise_norms(net.fc_norm)
    model = camtool.load_model(net)
    explainer = bind("cam", model)
    assert "patch tokens on their grid" in explainer.describe()
    assert "folded: LayerNorm" in explainer.describe()
    out = explainer(torch.randn(1, 3, 64, 64))
    assert out.maps.shape[-2:] == (4, 4) and out.features_shape == (192, 4, 4)
    assert reproduce(model, "cam", 64)[0] < 1e-4


def test_a_class_token_vit_is_still_refused_by_cam() -> None:
    timm = pytest.importorskip("timm")
    net = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=64,
                            pretrained_cfg_overlay={"input_size": (3, 64, 64)})  # fmt: skip
    with pytest.raises(UnsupportedModelError, match="classifies transformer tokens"):
        bind("cam", camtool.load_model(net))


def tiny_relu_head() -> nn.Sequential:
    """C = 2 channels picked from the input by a 1x1 conv, GAP, then Linear(2,2)-ReLU-Linear(2,1)."""
    net = nn.Sequential(
        nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1),
    )  # fmt: skip
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0]])[:, :, None, None])
        net[0].bias.zero_()
        net[3].weight.copy_(torch.tensor([[1.0, -1.0], [1.0, 0.0]]))
        net[3].bias.copy_(torch.tensor([0.5, -1.0]))
        net[5].weight.copy_(torch.tensor([[2.0, 1.0]]))
        net[5].bias.copy_(torch.tensor([0.25]))
    return net


def test_integrated_head_of_a_tiny_relu_network_matches_the_closed_form() -> None:
    # F0 = [[1,2],[3,2]], F1 = [[0,1],[2,1]]: p = (2, 1). Along x(t) = t p (zero baseline):
    # h0(t) = t + 0.5 > 0 always; h1(t) = 2t - 1 > 0 for t > 1/2. grad f = 2*(1,-1) for t < 1/2
    # and 2*(1,-1) + (1,0) after, so g = (2.5, -2), map = 2.5 F0 - 2 F1, bias = f(0) = 1.25,
    # mean(map) + bias = 3 + 1.25 = 4.25 = f(p). Gauss-Legendre with an even number of nodes puts
    # half the weight on each side of t = 1/2, so the quadrature is exact here.
    net = tiny_relu_head()
    model = camtool.load_model(net, preprocessing=camtool.Preprocessing(input_size=2))
    explainer = bind("integrated-head", model)
    assert isinstance(explainer, IntegratedHeadExplainer)
    f0 = torch.tensor([[1.0, 2.0], [3.0, 2.0]])
    f1 = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    batch = torch.stack([f0, f1, torch.full((2, 2), 7.0)])[None]
    out = explainer(batch)
    expected = torch.tensor([[2.5, 3.0], [3.5, 3.0]])
    torch.testing.assert_close(out.maps[0, 0], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.bias, torch.tensor([[1.25]]), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.logits, torch.tensor([[4.25]]), rtol=0, atol=1e-6)
    assert out.residual is not None and float(out.residual.max()) < 1e-5
    assert bind("auto", model).method == "integrated-head"


@pytest.mark.parametrize(("architecture", "size"), [("mobilenet_v3_small", 64), ("vgg11", 64)])
def test_integrated_head_reaches_its_residual_bound(architecture: str, size: int) -> None:
    torchvision = pytest.importorskip("torchvision")
    net = getattr(torchvision.models, architecture)(num_classes=10)
    for module in net.classifier.modules():  # non-zero biases: the head is not homogeneous
        if isinstance(module, nn.Linear):
            module.reset_parameters()
    model = camtool.load_model(net, preprocessing=camtool.Preprocessing(input_size=size))
    with pytest.raises(UnsupportedModelError):
        bind("cam", model)
    # the bound is relative to camtool's logit scale, max(1, max |logit|)
    relative, out = reproduce(model, "integrated-head", size, scale_floor=1.0)
    assert relative < 1e-3
    assert out.residual is not None
    assert float(out.residual.max()) <= 1e-3 * max(1.0, float(out.logits.abs().max()))
    # MobileNetV3 maps its 2x2 feature map; VGG's flattened head maps its pooling's 7x7 output
    assert out.maps.shape[-2:] == ((2, 2) if architecture.startswith("mobilenet") else (7, 7))


def snapshot(net: nn.Module) -> list[tuple[object, ...]]:
    return [
        (name, p.requires_grad, None if p.grad is None else p.grad.clone())
        for name, p in net.named_parameters()
    ] + [
        (name, m.training, len(m._forward_hooks), len(m._forward_pre_hooks))
        for name, m in net.named_modules()
    ]


def same(a: list[tuple[object, ...]], b: list[tuple[object, ...]]) -> bool:
    return all(
        x[:-1] == y[:-1]
        and (torch.equal(x[-1], y[-1]) if isinstance(x[-1], torch.Tensor) else x[-1] == y[-1])
        for x, y in zip(a, b, strict=True)
    )


def test_integrated_head_leaves_the_callers_model_alone_even_when_it_fails() -> None:
    net = tiny_relu_head()
    net.train()
    net[3].weight.requires_grad_(False)  # a mix of frozen and trainable parameters
    net[5].weight.grad = torch.ones_like(net[5].weight)
    before = snapshot(net)
    model = camtool.load_model(net, preprocessing=camtool.Preprocessing(input_size=2))
    explainer = bind("integrated-head", model)
    batch = torch.rand(2, 3, 2, 2)
    explainer(batch)
    with torch.inference_mode():  # a caller under inference mode still gets maps
        assert explainer(batch).maps.shape == (2, 1, 2, 2)
    with pytest.raises(UnsupportedModelError, match="not exact enough"):
        explainer(batch, tolerance=-1.0)
    assert same(snapshot(net), before)
    assert net[0].weight.grad is None


def test_integrated_head_under_bf16_autocast() -> None:
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.mobilenet_v3_small(num_classes=10)
    for module in net.classifier.modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()
    model = camtool.load_model(
        net, preprocessing=camtool.Preprocessing(input_size=64), dtype="bfloat16"
    )
    out = bind("integrated-head", model)(torch.randn(2, 3, 64, 64), maps=3)
    assert out.residual is not None and out.maps.dtype == torch.float32
    assert float(out.residual.max()) <= 5e-2 * max(1.0, float(out.logits.abs().max()))


def test_the_folded_head_is_kept_until_a_weight_changes() -> None:
    """The fold is made once and reused while the weights stay; an optimiser-style in-place
    update of the BatchNorm or the Linear, or a replaced parameter, makes it again, and CAM stays
    exact after each."""
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.resnet18()
    net.fc = nn.Sequential(nn.BatchNorm1d(512), nn.Linear(512, 10))
    randomise_norms(net)
    model = camtool.load_model(net, preprocessing=camtool.Preprocessing(input_size=64))
    explainer = bind("cam", model)
    assert isinstance(explainer, CamExplainer)
    head = explainer.head
    first = head.affine()
    assert head.affine() is first and head.weight is not None  # kept
    with torch.no_grad():
        net.fc[1].weight.add_(0.5)  # in place, as an optimiser step
    second = head.affine()
    assert second is not first and second is not None and first is not None
    assert not torch.equal(second.weight, first.weight)
    assert torch.equal(second.weight, fold_head(head.fold, net.fc[1], "fc.1").weight)
    with torch.no_grad():
        net.fc[0].running_var.mul_(4)  # a buffer changes too
    assert head.affine() is not second
    third = head.affine()
    net.fc[1].bias = nn.Parameter(torch.ones(10))  # replaced
    assert head.affine() is not third
    assert third is not None and not torch.equal(head.affine().bias, third.bias)
    assert reproduce(model, "cam", 64)[0] < 1e-5
