"""Choosing a method and its score: ``auto`` falls back to Grad-CAM where no exact method
applies, ``--target logit|probability`` on the CLI and in the library, method names in every
output name, and every method through every entry point (explain, export + gallery, video, API)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import camtool
from camtool.cli import app
from camtool.errors import InvalidArgumentError
from camtool.export.manifest import read_manifest
from camtool.image import Preprocessing
from camtool.methods import bind
from tests.conftest import CAT
from tests.test_video import make_clip

timm = pytest.importorskip("timm")
runner = CliRunner()
METHODS = ("cam", "integrated-head", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam",
           "scorecam", "eigencam")  # fmt: skip


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def small_vit() -> camtool.LoadedModel:
    """A class-token timm ViT built for 64 px inputs (its pretrained_cfg still says 224)."""
    torch.manual_seed(0)
    return camtool.load_model(
        timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=64)
    )


# --------------------------------------------------------------------------------------------
# auto: exact methods first, then Grad-CAM, saying it is no decomposition.


def test_auto_explains_a_class_token_vit_with_gradcam(small_vit: camtool.LoadedModel) -> None:
    ex = camtool.explain(CAT, small_vit)
    assert ex.method == "gradcam" and ex.residual is None
    assert ex.cams.shape == (1, 4, 4) and ex.heatmaps.shape == (1, 300, 451)
    assert ex.head.startswith("Grad-CAM of the class logit at blocks.11 tokens")
    assert "not a decomposition (auto: no exact decomposition applies: cam: " in ex.head
    assert "classifies transformer tokens" in ex.head and "integrated-head: " in ex.head
    assert camtool.methods.can_explain("auto", small_vit)[1] == ex.head


def test_auto_keeps_cam_on_the_default_model(lite0: camtool.LoadedModel) -> None:
    ex = camtool.explain(CAT, lite0)
    assert ex.method == "cam" and ex.residual is not None and ex.residual < 1e-3


def test_auto_gives_predictions_alone_when_no_method_applies() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))  # no feature map at all
    model = camtool.load_model(net, preprocessing=Preprocessing(input_size=8, fixed_size=True))
    ex = camtool.explain(CAT, model)
    assert ex.method == "none" and ex.explained == () and len(ex.predictions) == 3
    assert "gradcam: " in ex.head


def test_inspect_says_what_auto_picks(tmp_path: Path) -> None:
    card = tmp_path / "vit.toml"
    card.write_text(
        'name = "tv_vit"\narchitecture = "torchvision:vit_b_16"\nrandom_weights = true\n'
    )
    code, out, err = run("inspect", str(card), "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["auto"] == "gradcam"
    assert info["methods"]["cam"]["explains"] is False
    assert info["methods"]["gradcam"]["explains"] is True


# --------------------------------------------------------------------------------------------
# A timm ViT created with another img_size runs at that size (not its pretrained_cfg's).


def test_timm_vit_with_an_img_size_override_runs_at_that_size(
    small_vit: camtool.LoadedModel,
) -> None:
    assert small_vit.preprocessing.input_size == 64 and small_vit.preprocessing.fixed_size
    ex = camtool.explain(CAT, small_vit, method="gradcam")
    assert ex.input_hw == (64, 64) and ex.cams.shape == (1, 4, 4)


# --------------------------------------------------------------------------------------------
# --target: the logit by default; the probability for the gradient family; refused by the
# exact methods, which decompose the logit.


def test_cli_target_probability_changes_gradcam_and_is_recorded(tmp_path: Path) -> None:
    docs = {}
    for target in ("logit", "probability"):
        code, out, err = run(
            "explain", str(CAT), "--method", "hirescam", "--target", target, "--json",
            "-o", str(tmp_path / target),
        )  # fmt: skip
        assert code == 0, err
        docs[target] = json.loads(out)
        assert f"HiResCAM of the class {target} at" in docs[target]["head"]
    code, out, err = run("explain", str(CAT), "--method", "hirescam", "--json", "-o", str(tmp_path))
    assert "of the class logit" in json.loads(out)["head"]  # the default score is the logit
    a = Image.open(tmp_path / "logit" / docs["logit"]["images"][0]["outputs"][0].split("/")[-1])
    b = Image.open(
        tmp_path / "probability" / docs["probability"]["images"][0]["outputs"][0].split("/")[-1]
    )
    assert a.tobytes() != b.tobytes()  # a different score, a different map


def test_cli_export_records_the_target(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(CAT).resize((64, 48)).save(folder / "a.png")
    code, _, err = run("export", str(folder), "-o", str(tmp_path / "out"), "--method", "gradcam",
                       "--target", "probability", "--quiet")  # fmt: skip
    assert code == 0, err
    _, runs = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert runs[-1]["settings"]["target"] == "probability"
    assert "of the class probability" in runs[-1]["head"]


@pytest.mark.parametrize("method", ["cam", "integrated-head"])
def test_cli_refuses_probability_for_an_exact_method(tmp_path: Path, method: str) -> None:
    code, out, err = run("explain", str(CAT), "--method", method, "--target", "probability",
                         "-o", str(tmp_path))  # fmt: skip
    assert code == 2 and out == "" and list(tmp_path.iterdir()) == []
    assert err == (
        f"Error: --target probability: {method} decomposes the class logit; the softmax "
        "probability has no such decomposition (use a gradient method, e.g. gradcam, or "
        "--target logit)\n"
    )
    code, _, err = run("explain", str(CAT), "--method", method, "--target", "logit", "-o",
                       str(tmp_path))  # fmt: skip
    assert code == 0, err


def test_cli_refuses_an_unknown_target(tmp_path: Path) -> None:
    code, _, err = run("explain", str(CAT), "--target", "margin", "-o", str(tmp_path))
    assert code == 2 and err == "Error: margin: unknown target; choose one of logit, probability\n"


def test_library_target(lite0: camtool.LoadedModel) -> None:
    ex = camtool.explain(CAT, lite0, target="probability")  # auto skips the exact methods
    assert ex.method == "gradcam" and "of the class probability" in ex.head
    with pytest.raises(InvalidArgumentError, match="eigencam maps no class score"):
        bind("eigencam", lite0, target="probability")
    score = camtool.explain(CAT, lite0, method="scorecam", layer="_blocks.15", target="logit")
    assert "Score-CAM of the class logit" in score.head


# --------------------------------------------------------------------------------------------
# Output names say which method made them: two methods never collide in one folder.


def test_two_methods_write_distinct_names_in_one_folder(tmp_path: Path) -> None:
    for method in ("cam", "gradcam", "gradcam++"):
        code, _, err = run("explain", str(CAT), "--method", method, "-o", str(tmp_path))
        assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "chelsea_cam_285_egyptian_cat.png",
        "chelsea_gradcam_285_egyptian_cat.png",
        "chelsea_gradcampp_285_egyptian_cat.png",
    ]


def test_export_names_overlay_heatmap_and_raw_maps_by_method(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(CAT).resize((90, 60)).save(folder / "a.png")
    for method in ("cam", "layercam"):
        code, _, err = run("export", str(folder), "-o", str(tmp_path / method), "--method",
                           method, "--heatmap", "--raw", "npz", "--quiet", "--report",
                           "--format", "jpg")  # fmt: skip
        assert code == 0, err
    assert {p.name for p in (tmp_path / "cam").glob("a_*")} == {
        "a_cam_285_egyptian_cat.jpg", "a_heatmap_285_egyptian_cat.png", "a_cams.npz"}  # fmt: skip
    assert {p.name for p in (tmp_path / "layercam").glob("a_*")} == {
        "a_layercam_285_egyptian_cat.jpg", "a_layercam_heatmap_285_egyptian_cat.png",
        "a_layercam_maps.npz"}  # fmt: skip
    page = (tmp_path / "layercam" / "index.html").read_text()
    assert "a_layercam_285_egyptian_cat.jpg" in page and "layercam" in page


def test_video_with_a_gradient_method_is_named_by_it(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4", frames=4, size=(64, 48))
    code, _, err = run("explain", str(clip), "--method", "xgradcam", "-o", str(tmp_path / "o"))
    assert code == 0, err
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["clip_xgradcam.mp4"]


# --------------------------------------------------------------------------------------------
# Every method through the notebook API, on the same small input.


@pytest.mark.parametrize("method", METHODS)
def test_every_method_through_the_api(method: str) -> None:
    net = timm.create_model("resnet10t", num_classes=5)
    model = camtool.load_model(net, preprocessing=Preprocessing(input_size=32))
    ex = camtool.explain(CAT, model, method=method, maps=2, top_k=3)
    assert ex.method == method and ex.heatmaps.shape == (2, 300, 451)
    assert (ex.residual is not None) == (method in ("cam", "integrated-head"))
    assert ex.to_dict()["method"] == method


# --------------------------------------------------------------------------------------------
# Score-CAM runs each distinct masked input once: channels whose grids differ by a positive
# scale and shift have the same normalised mask.


def test_scorecam_shares_the_masked_input_of_equivalent_channels() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 4, stride=4)
    with torch.no_grad():  # channel 1 = 2 * channel 0 + 1: the same mask
        conv.weight[1] = 2 * conv.weight[0]
        conv.bias[1] = 2 * conv.bias[0] + 1
    net = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))
    model = camtool.load_model(net, preprocessing=Preprocessing(input_size=16))
    explainer = bind("scorecam", model, layer="0")
    seen: list[int] = []
    handle = net.register_forward_pre_hook(lambda _m, args: seen.append(int(args[0].shape[0])))
    batch = torch.randn(2, 3, 16, 16)
    try:
        out = explainer(batch, classes=[1, 3])
    finally:
        handle.remove()
    # an empty batch (the layers' geometry), the batch, the blank input, 2 images x 2 masks
    assert seen == [0, 2, 1, 4]
    from camtool.methods.score import channel_masks

    with torch.no_grad():
        activations = conv(batch)
        expected = torch.zeros(2, 3, 2)
        for n in range(2):
            masks = channel_masks(activations[n][:, None], (16, 16))
            expected[n] = net(batch[n] * masks).softmax(-1)[:, [1, 3]]
    maps = torch.einsum("nck,nchw->nkhw", expected, activations).relu()
    assert torch.allclose(out.maps, maps, rtol=1e-5, atol=1e-6)


def test_scorecam_shares_masks_that_differ_by_rounding_across_a_grid_step() -> None:
    # Two channels whose normalised grids differ by 2**-23 (float32 rounding) but lie on either
    # side of a 2**-20 rounding step: they must share one masked input (grouped within
    # GRID_TOLERANCE), as they did not when grids were compared after rounding to 2**-20.
    from camtool.methods.score import GRID_TOLERANCE, shared_grids

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 2, 8, stride=8)
    net = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 4))
    model = camtool.load_model(net, preprocessing=Preprocessing(input_size=16))
    explainer = bind("scorecam", model, layer="0")
    step = 0.5 + 2.0**-21  # half-way between two multiples of 2**-20
    cells = [[0.0, step - 2.0**-24, 1.0, 0.25], [0.0, step + 2.0**-24, 1.0, 0.25]]
    activations = torch.tensor(cells).view(1, 2, 2, 2)
    assert 0 < float((activations[0, 1] - activations[0, 0]).abs().max()) <= GRID_TOLERANCE
    seen: list[int] = []
    handle = net.register_forward_pre_hook(lambda _m, args: seen.append(int(args[0].shape[0])))
    batch = torch.randn(1, 3, 16, 16)
    try:
        weights = explainer.channel_weights(batch, activations, torch.tensor([[1, 3]]))
    finally:
        handle.remove()
    assert seen == [1, 1]  # the blank input, then one masked input for both channels
    assert torch.equal(weights[0, 0], weights[0, 1])
    distinct, which = shared_grids(torch.tensor([0, 0, 1]), torch.tensor([*cells, cells[0]]))
    assert distinct.tolist() == [0, 2] and which.tolist() == [0, 0, 1]  # never across images


def test_a_transformers_vit_is_read_at_its_last_block() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, num_labels=10,
    )  # fmt: skip
    net = transformers.ViTForImageClassification(config)
    model = camtool.load_model(net, preprocessing=Preprocessing(input_size=32, fixed_size=True))
    ex = camtool.explain(CAT, model)
    assert ex.method == "gradcam" and ex.cams.shape == (1, 4, 4)
    assert ex.head.startswith("Grad-CAM of the class logit at vit.layers.1 tokens (1 prefix")
