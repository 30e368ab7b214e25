"""The Grad-CAM family, Score-CAM and Eigen-CAM: golden identities on the pretrained default
model, each formula on a network small enough to compute by hand, the caller's model left alone,
low precision, the model families, and every entry point (CLI explain/sheet/export, the API)."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import camtool
from camtool.cli import app
from camtool.errors import ClassSelectionError, InvalidArgumentError
from camtool.image import Preprocessing
from camtool.methods import bind, get_method
from camtool.methods.cam import compute
from tests.conftest import CAT

GRADIENT = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")
ALL = (*GRADIENT, "scorecam", "eigencam")


# --------------------------------------------------------------------------------------------
# Golden identities: on GAP + linear the logit's gradient is W_k / (h*w) at every cell.


@pytest.mark.parametrize("name", ["gradcam", "xgradcam", "hirescam"])
def test_reduces_to_cam_on_the_default_model(lite0: camtool.LoadedModel, name: str) -> None:
    torch.manual_seed(0)
    batch = torch.randn(2, 3, 224, 224)
    cams = compute(lite0, batch, classes=[285, 281, 7]).maps  # three classes: batched gradients
    h, w = cams.shape[-2:]
    expected = cams / (h * w) if name == "hirescam" else cams.relu() / (h * w)
    out = bind(name, lite0)(batch, classes=[285, 281, 7])
    assert out.maps.shape == expected.shape
    scale = float(expected.abs().max())
    assert float((out.maps - expected).abs().max()) <= 1e-5 * scale
    assert out.bias is None and out.residual is None and not out.exact
    assert "not a decomposition" in out.summary and "logit" in out.summary
    assert out.details["layer"] == "_avg_pooling input"


# --------------------------------------------------------------------------------------------
# Each formula by hand: a 1x1 convolution copies two input channels into a 2-channel 2x2 map A,
# a flatten + linear head gives gradients that differ from cell to cell.

A0 = [[1.0, 2.0], [3.0, 0.0]]  # sum 6
A1 = [[0.0, 1.0], [1.0, 2.0]]  # sum 4
G0 = [[1.0, -1.0], [2.0, 0.0]]  # d logit_0 / d A0
G1 = [[-1.0, 0.5], [0.0, 1.0]]  # d logit_0 / d A1


def tiny_model() -> camtool.LoadedModel:
    net = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.Flatten(), nn.Linear(8, 2))
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].weight[0, 0] = 1.0
        net[0].weight[1, 1] = 1.0
        net[2].weight.zero_()
        net[2].weight[0] = torch.tensor(G0 + G1).flatten()
        net[2].bias.zero_()
    return camtool.load_model(net, preprocessing=Preprocessing(input_size=2))


def tiny_input() -> torch.Tensor:
    return torch.tensor([A0, A1, [[5.0, 5.0], [5.0, 5.0]]])[None]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def eigen_by_hand() -> list[list[float]]:
    # Rows (cells) of A centred per channel (means 1.5 and 1): (-.5,-1) (.5,0) (1.5,0) (-1.5,1).
    # M^T M = [[5, -1], [-1, 2]]: largest eigenvalue (7 + sqrt 13) / 2, eigenvector (1, 5 - l).
    top = (7 + math.sqrt(13)) / 2
    v = (1 / math.hypot(1, 5 - top), (5 - top) / math.hypot(1, 5 - top))  # sums to > 0: kept
    rows = [(-0.5, -1.0), (0.5, 0.0), (1.5, 0.0), (-1.5, 1.0)]
    p = [a * v[0] + b * v[1] for a, b in rows]
    return [[p[0], p[1]], [p[2], p[3]]]


# Grad-CAM++ alphas g^2 / (2 g^2 + S g^3) where ReLU(g) > 0: channel 0 (S = 6): g = 1 -> 1/8,
# g = 2 -> 4/56; channel 1 (S = 4): g = 0.5 -> 0.25/1, g = 1 -> 1/6.
PP_W0 = 1 / 8 * 1 + 4 / 56 * 2
PP_W1 = 0.25 * 0.5 + 1 / 6 * 1
# Score-CAM: masks A0/3 and A1/2 (min-max; 2x2 is the input size, so no upsampling); the masked
# input gives A_c * H_k, logit_0 = sum g*A*H, logit_1 = 0: channel 0 -> 1/3 - 4/3 + 6 + 1/3 = 16/3,
# channel 1 -> -1 + 3 + 0.25 + 2 = 4.25; weights are the softmax probabilities of class 0.
SC_W0, SC_W1 = sigmoid(16 / 3), sigmoid(4.25)

BY_HAND: dict[str, list[list[float]]] = {
    "gradcam": [[0.5, 1.125], [1.625, 0.25]],  # w = (0.5, 0.125)
    "xgradcam": [[5 / 6, 10 / 6 + 0.625], [15 / 6 + 0.625, 1.25]],  # w = (5/6, 2.5/4)
    "layercam": [[1.0, 0.5], [6.0, 2.0]],
    "hirescam": [[1.0, -1.5], [6.0, 2.0]],  # signed: no ReLU
    "gradcam++": [[PP_W0, 2 * PP_W0 + PP_W1], [3 * PP_W0 + PP_W1, 2 * PP_W1]],
    "scorecam": [[SC_W0, 2 * SC_W0 + SC_W1], [3 * SC_W0 + SC_W1, 2 * SC_W1]],
    "eigencam": eigen_by_hand(),
}


@pytest.mark.parametrize("name", ALL)
def test_formula_by_hand(name: str) -> None:
    model = tiny_model()
    out = bind(name, model, layer="0")(tiny_input(), classes=[0])
    expected = torch.tensor(BY_HAND[name])
    assert out.maps.shape == (1, 1, 2, 2)
    torch.testing.assert_close(out.maps[0, 0], expected, rtol=1e-5, atol=1e-6)
    assert out.features_shape == (2, 2, 2)


def test_probability_target_is_the_softmax_gradient() -> None:
    # d p_0 / d A = p_0 (1 - p_0) d(logit_0 - logit_1)/dA = p0 (1 - p0) g (logit_1 is constant).
    model = tiny_model()
    method = get_method("hirescam").with_target("probability")  # type: ignore[attr-defined]
    out = bind(method, model, layer="0")(tiny_input(), classes=[0])
    logit = 1 * 1 - 2 + 6 + 0 + 0.5 + 2  # sum g * A
    p = sigmoid(logit)
    expected = torch.tensor(BY_HAND["hirescam"]) * p * (1 - p)
    torch.testing.assert_close(out.maps[0, 0], expected, rtol=1e-4, atol=1e-7)
    assert "probability" in out.summary
    assert bind("hirescam", model, layer="0") is not bind(method, model, layer="0")
    with pytest.raises(InvalidArgumentError):
        get_method("gradcam").with_target("margin")  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# The caller's model is left as it was.


def caller_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, 1, 1),
        nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )  # fmt: skip


def hooks_of(net: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in net.modules()
    )


@pytest.mark.parametrize("name", ALL)
def test_the_callers_model_is_left_alone(name: str) -> None:
    net = caller_net().train()
    net[0].weight.requires_grad_(False)  # a mix of frozen and trainable parameters
    model = camtool.load_model(net, preprocessing=Preprocessing(input_size=16))
    explainer = bind(name, model)
    flags = [p.requires_grad for p in net.parameters()]
    stats = net[1].running_mean.clone()
    for context in (torch.enable_grad, torch.no_grad, torch.inference_mode):
        with context():
            grad_mode = torch.is_grad_enabled()
            out = explainer(torch.randn(2, 3, 16, 16), maps=2)
            assert torch.is_grad_enabled() == grad_mode
        assert out.maps.shape == (2, 2, 8, 8) and torch.isfinite(out.maps).all()
        assert not out.maps.requires_grad
    with pytest.raises(ClassSelectionError):  # an error after the forward pass
        explainer(torch.randn(1, 3, 16, 16), classes=[9])
    assert all(p.grad is None for p in net.parameters())
    assert [p.requires_grad for p in net.parameters()] == flags
    assert all(m.training for m in net.modules())
    assert torch.equal(net[1].running_mean, stats)  # ran in eval mode
    assert hooks_of(net) == 0


# --------------------------------------------------------------------------------------------
# Low precision (pytorch-grad-cam 1.5.7 crashes under bfloat16: numpy has no bfloat16).


@pytest.mark.parametrize("name", ALL)
def test_bfloat16_autocast(name: str) -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    batch = torch.randn(1, 3, 64, 64)
    full = bind(name, camtool.load_model(net, preprocessing=Preprocessing(input_size=64)))
    low = bind(
        name,
        camtool.load_model(net, dtype="bfloat16", preprocessing=Preprocessing(input_size=64)),
        layer="layer3",
    )
    reference = bind(
        name, camtool.load_model(net, preprocessing=Preprocessing(input_size=64)), layer="layer3"
    )(batch, classes=[3])
    out = low(batch, classes=[3])
    assert out.maps.dtype == torch.float32 and torch.isfinite(out.maps).all()
    a, b = out.maps.flatten(), reference.maps.flatten()
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.9
    assert full.target.name == "avgpool input"


# --------------------------------------------------------------------------------------------
# Model families (random weights, one small image): the default layer and its grid.

timm = pytest.importorskip("timm")


def tv(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torchvision.models.get_model(name, weights=None, **kwargs)

    return build


def tm(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, **kwargs)


# name -> (constructor, input size, expected default layer, grid side)
FAMILIES = {
    "convnext_tiny": (tv("convnext_tiny"), 64, "avgpool input", 2),
    "mobilenet_v3_small": (tv("mobilenet_v3_small"), 64, "avgpool input", 2),
    "vgg11": (tv("vgg11"), 64, "features", 2),
    "vit_b_16": (tv("vit_b_16", image_size=32), 32, "encoder.layers.encoder_layer_11", 2),
    "swin_t": (tv("swin_t"), 64, "avgpool input", 2),
    "resnet18": (tv("resnet18"), 64, "avgpool input", 2),
    "densenet121": (tv("densenet121"), 64, "features", 2),
    "timm_convnext_atto": (tm("convnext_atto"), 64, "head.global_pool input", 2),
    "timm_mobilenetv3_small_050": (tm("mobilenetv3_small_050"), 64, "global_pool input", 2),
    # timm's ViTs take their configured 224 px only (the tiny ones are cheap at that size).
    "timm_vit_class_token": (tm("vit_tiny_patch16_224"), 224, "blocks.11", 14),
    "timm_vit_avg_pool": (
        tm("vit_tiny_patch16_224", global_pool="avg", class_token=False, fc_norm=True),
        224,
        "blocks.11",
        14,
    ),
    "timm_deit_distilled": (tm("deit_tiny_distilled_patch16_224"), 224, "blocks.11", 14),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_families(family: str) -> None:
    build, size, layer, side = FAMILIES[family]
    torch.manual_seed(0)
    net = build().eval()
    model = camtool.load_model(net, preprocessing=Preprocessing(input_size=size))
    batch = torch.randn(1, 3, size, size)
    for name in ("gradcam", "eigencam"):
        out = bind(name, model)(batch, maps=2)
        assert out.details["layer"] == layer, out.details
        assert out.maps.shape == (1, 2, side, side)
        assert torch.isfinite(out.maps).all()
    assert hooks_of(net) == 0


def test_swin_channels_last_stage_by_name() -> None:
    # torchvision's Swin stages give NHWC maps: --layer features reads them channels-last.
    net = tv("swin_t")().eval()
    model = camtool.load_model(net, preprocessing=Preprocessing(input_size=64))
    batch = torch.randn(1, 3, 64, 64)
    by_name = bind("hirescam", model, layer="features")(batch, classes=[1])
    default = bind("hirescam", model)(batch, classes=[1])
    assert by_name.details["layer_detail"]["layout"] == "NHWC"
    assert by_name.features_shape == (768, 2, 2)
    # norm and permute sit between the two layers: the maps differ, but not in layout.
    assert default.features_shape == (768, 2, 2)


def test_token_grid_drops_the_prefix_tokens() -> None:
    net = tm("deit_tiny_distilled_patch16_224")().eval()
    model = camtool.load_model(net)
    explainer = bind("eigencam", model)
    assert explainer.target.prefix_tokens == 2  # type: ignore[attr-defined]
    out = explainer(torch.randn(1, 3, 224, 224))
    assert out.features_shape == (192, 14, 14)
    assert out.geometry.stride == (16.0, 16.0) and out.geometry.origin == (8.0, 8.0)


@pytest.mark.parametrize("name", ALL)
def test_every_method_on_the_default_model(lite0: camtool.LoadedModel, name: str) -> None:
    image = camtool.load_image(CAT)
    if name == "scorecam":  # one forward pass per channel: fewer channels, smaller input
        small = camtool.load_model("efficientnet_lite0", preprocessing=Preprocessing(input_size=32))
        ex = camtool.explain(image, small, method=name, maps=2, top_k=3, layer="_blocks.15")
        assert ex.heatmaps.shape == (2, 300, 451) and ex.method == name
        return
    ex = camtool.explain(image, lite0, method=name, maps=2, top_k=3)
    assert ex.method == name and ex.residual is None
    assert "not a decomposition" in ex.head
    assert ex.heatmaps.shape == (2, 300, 451)
    assert float(ex.heatmaps.max()) > 0.99
    assert ex.predictions[0].index in {281, 282, 285}


# --------------------------------------------------------------------------------------------
# Entry points: the CLI's explain (table, overlay, JSON, sheet) and export.

runner = CliRunner()


def test_cli_explain_with_a_gradient_method(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["explain", str(CAT), "--method", "gradcam", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.stderr
    assert "made by gradcam" in result.stdout and "not a decomposition" in result.stdout
    assert "identity residual" not in result.stdout
    (written,) = tmp_path.iterdir()  # the overlay's name says which method made it
    assert written.name.startswith("chelsea_gradcam_") and Image.open(written).size == (451, 300)
    result = runner.invoke(
        app, ["explain", str(CAT), "--method", "layercam", "--json", "--out", str(tmp_path),
              "--layer", "_blocks.15", "--sheet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["method"] == "layercam" and "_blocks.15" in report["head"]
    assert report["images"][0]["identity_residual"] is None
    assert any(p.name.endswith("_sheet.jpg") for p in tmp_path.iterdir())


def test_cli_refuses_classifier_for_a_layer_method(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["explain", str(CAT), "--method", "gradcam", "--classifier", "_fc", "--out", str(tmp_path)],
    )
    assert result.exit_code == 2, result.stdout  # a usage error, as for every unsupported model
    assert result.stderr.startswith("Error: _fc: gradcam reads one layer")
    # inspect lists it as a method that cannot use a classifier, and does not fail.
    result = runner.invoke(app, ["inspect", "efficientnet_lite0", "--classifier", "_fc", "--json"])
    assert result.exit_code == 0, result.stderr
    verdict = json.loads(result.stdout)["methods"]["gradcam"]
    assert verdict["explains"] is False and "--classifier is for cam" in verdict["reason"]


def test_cli_export_with_a_gradient_method(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(CAT).save(folder / "a.png")
    Image.open(CAT).resize((100, 80)).save(folder / "b.png")
    result = runner.invoke(
        app, ["export", str(folder), "--out", str(tmp_path / "out"), "--method", "xgradcam",
              "--raw", "npz", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    lines = [
        json.loads(line)
        for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()
        if line.strip()
    ]
    done = [line for line in lines if line.get("status") == "ok" or "files" in line]
    assert len(done) >= 2
    assert "xgradcam" in json.dumps(lines)
