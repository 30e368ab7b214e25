"""One seam between models and methods: any classifier loads; methods bind to it or say why not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import camtool
from camtool.cli import app
from camtool.errors import InvalidArgumentError, UnsupportedModelError
from camtool.methods import bind, method_names
from camtool.methods.cam import CamExplainer
from tests.conftest import CAT

runner = CliRunner()

#: torchvision families that ``--method cam`` cannot explain, and the reason it gives.
REFUSED_BY_CAM = {
    "mobilenet_v3_small": "MobileNetV3: CAM is not exact for this network: a hidden layer between "
    "the global pooling and the classifier: 'classifier.0' (Linear), 'classifier.1' (Hardswish)",
    "vgg11": "VGG: CAM is not exact for this network: the classifier flattens the 7x7 map of "
    "'avgpool' (AdaptiveAvgPool2d) instead of global average pooling",
    "vit_b_16": "VisionTransformer: CAM is not exact for this network: no spatial feature map: "
    "VisionTransformer classifies transformer tokens",
}

#: The method ``auto`` binds for each family: ConvNeXt's LayerNorm folds into CAM, the MLP and
#: flatten heads are integrated, the class-token transformer gets Grad-CAM (no decomposition).
AUTO_METHOD = {
    "convnext_tiny": "cam",
    "mobilenet_v3_small": "integrated-head",
    "vgg11": "integrated-head",
    "vit_b_16": "gradcam",
}


def random_card(folder: Path, architecture: str) -> Path:
    """A model card for a torchvision architecture with random weights."""
    path = folder / f"{architecture}.toml"
    path.write_text(
        f'name = "tv_{architecture}"\narchitecture = "torchvision:{architecture}"\n'
        "random_weights = true\n"
    )
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("architecture", list(AUTO_METHOD))
def test_any_classifier_loads_predicts_and_gets_the_first_method_that_explains_it(
    tmp_path: Path, architecture: str
) -> None:
    card = random_card(tmp_path, architecture)
    code, out, err = run(
        "explain", str(CAT), "-m", str(card), "--json", "-o", str(tmp_path / "out")
    )
    assert code == 0, err
    doc = json.loads(out)
    (image,) = doc["images"]
    assert len(image["predictions"]) == 5
    assert image["method"] == doc["method"] == AUTO_METHOD[architecture]
    if AUTO_METHOD[architecture] == "gradcam":
        assert len(image["explained"]) == 1 and len(image["outputs"]) == 1
        assert image["identity_residual"] is None
        assert "; not a decomposition (auto: no exact decomposition applies: cam: " in doc["head"]
        assert REFUSED_BY_CAM[architecture] in doc["head"]
    else:
        assert len(image["explained"]) == 1 and len(image["outputs"]) == 1
        assert image["identity_residual"] is not None
        assert image["identity_residual"] <= 1e-3 * max(1.0, abs(image["predictions"][0]["logit"]))
    if architecture in REFUSED_BY_CAM:
        code, out, err = run("explain", str(CAT), "-m", str(card), "--method", "cam")
        assert code == 2 and out == ""
        assert err == f"Error: {REFUSED_BY_CAM[architecture]}\n"


def test_a_vision_transformer_gets_its_one_input_size(tmp_path: Path) -> None:
    model = camtool.load_model(str(random_card(tmp_path, "vit_b_16")))
    assert model.preprocessing.fixed_size and model.preprocessing.input_size == 224
    ex = camtool.explain(CAT, model)
    assert ex.input_hw == (224, 224) and ex.method == "gradcam" and ex.cams.shape == (1, 14, 14)


def test_timm_model_object_gets_its_own_preprocessing() -> None:
    timm = pytest.importorskip("timm")
    net = timm.create_model("inception_v3", pretrained=False, num_classes=7)
    model = camtool.load_model(net)
    prep = model.preprocessing
    assert (prep.input_size, prep.mean, prep.std) == (299, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert (prep.interpolation, prep.crop_pct) == ("bicubic", 0.875)
    assert model.preprocessing_source == "timm pretrained_cfg (inception_v3)"
    assert len(model.labels) == 7 and model.labels_source.startswith("numbered")
    ex = camtool.explain(CAT, model)
    assert min(ex.input_hw) == 299 and ex.method == "cam"


def test_plain_module_says_it_got_imagenet_defaults() -> None:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    )
    model = camtool.load_model(net)
    assert model.preprocessing == camtool.Preprocessing()
    assert model.preprocessing_source.startswith("ImageNet defaults")
    assert model.labels == ("class 0", "class 1", "class 2")


def test_inspect_shows_preprocessing_labels_and_methods() -> None:
    code, out, err = run("inspect", "efficientnet_lite0", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["preprocessing"]["source"] == "model card efficientnet_lite0"
    assert info["preprocessing"]["mean"] == pytest.approx([127 / 255] * 3)
    assert info["labels_source"] == "imagenet1k"
    assert info["methods"]["cam"]["explains"] is True
    assert info["methods"]["cam"]["uses"].startswith("forward_features -> _fc (1000x1280)")
    assert info["methods"]["eigencam"]["detail"]["class_agnostic"] is True
    assert info["methods"]["gradcam"]["detail"]["class_agnostic"] is False
    code, out, err = run("inspect", "efficientnet_lite0")
    assert code == 0 and "model card efficientnet_lite0" in out and "method cam" in out
    rows = {" ".join(line.split()[:2]): line for line in out.splitlines() if " method " in line}
    assert "class-agnostic" in rows["method eigencam"], out
    assert "class-agnostic" not in rows["method gradcam"] + rows["method cam"]


def test_methods_are_found_by_name_and_bound_once(lite0: camtool.LoadedModel) -> None:
    assert "cam" in method_names()
    explainer = bind("cam", lite0)
    assert isinstance(explainer, CamExplainer) and bind("cam", lite0) is explainer
    assert bind("auto", lite0) is explainer  # auto picks the exact method first
    with pytest.raises(InvalidArgumentError, match=r"^nope: unknown method; choose one of cam"):
        bind("nope", lite0)
    with pytest.raises(InvalidArgumentError, match=r"^layer: an empty module name"):
        bind("cam", lite0, layer="")
    code, _, err = run("explain", str(CAT), "--method", "nope")
    assert code == 2 and err.startswith("Error: nope: unknown method; choose one of cam")


def test_explicit_cam_on_an_unsupported_network_is_a_typed_usage_error() -> None:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3),
    )  # fmt: skip
    model = camtool.load_model(net)
    with pytest.raises(UnsupportedModelError) as info:
        camtool.explain(CAT, model, method="cam")
    assert info.value.exit_code == 2
    assert "a hidden layer between the global pooling and the classifier" in str(info.value)


def test_the_method_is_recorded_everywhere(tmp_path: Path) -> None:
    code, out, err = run("explain", str(CAT), "--json", "-o", str(tmp_path / "one"))
    assert code == 0, err
    doc = json.loads(out)
    assert doc["method"] == doc["images"][0]["method"] == "cam"
    assert camtool.explain(CAT).method == "cam"

    out_dir = tmp_path / "export"
    code, _, err = run(
        "export", str(CAT), "-o", str(out_dir), "--raw", "npz", "--report", "-q", "--method", "cam"
    )
    assert code == 0, err
    lines = [json.loads(line) for line in (out_dir / "manifest.jsonl").read_text().splitlines()]
    (run_line,) = [line for line in lines if line["type"] == "run"]
    (image_line,) = [line for line in lines if line["type"] == "image"]
    assert run_line["method"] == run_line["settings"]["method"] == image_line["method"] == "cam"
    assert json.loads((out_dir / "summary.json").read_text())["method"] == "cam"
    assert str(np.load(out_dir / "chelsea_cams.npz")["method"]) == "cam"
    page = (out_dir / "index.html").read_text()
    assert '"method": "cam"' in page or '"method":"cam"' in page
