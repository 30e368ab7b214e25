"""The README's table of families and methods says what the code does: for one small
random-weight model per row, the exact method ``auto`` binds and whether the layer methods bind."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torchvision

import camtool
from camtool.image import Preprocessing
from camtool.methods import bind, can_explain
from tests.conftest import ROOT

timm = pytest.importorskip("timm")

LAYER_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "scorecam", "eigencam")


def tv(name: str, size: int = 32) -> Callable[[], camtool.LoadedModel]:
    def build() -> camtool.LoadedModel:
        net = getattr(torchvision.models, name)(weights=None, num_classes=10)
        return camtool.load_model(net, preprocessing=Preprocessing(input_size=size))

    return build


def tm(name: str, size: int | None = 32, **options: object) -> Callable[[], camtool.LoadedModel]:
    def build() -> camtool.LoadedModel:
        net = timm.create_model(name, num_classes=10, **options)
        prep = Preprocessing(input_size=size) if size else None
        return camtool.load_model(net, preprocessing=prep)

    return build


def hf(kind: str) -> Callable[[], camtool.LoadedModel]:
    def build() -> camtool.LoadedModel:
        transformers = pytest.importorskip("transformers")
        if kind == "vit":
            config = transformers.ViTConfig(
                image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                num_attention_heads=2, intermediate_size=64, num_labels=10,
            )  # fmt: skip
            net = transformers.ViTForImageClassification(config)
            return camtool.load_model(
                net, preprocessing=Preprocessing(input_size=32, fixed_size=True)
            )
        config = transformers.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10
        )
        net = transformers.ResNetForImageClassification(config)
        return camtool.load_model(net, preprocessing=Preprocessing(input_size=64))

    return build


#: One model per row (the first cell's start), small enough to build in a second or two.
REPRESENTATIVE = {
    "ResNet, EfficientNet, EfficientNet-Lite": tm("tf_efficientnet_lite0"),
    "MobileNetV2, DenseNet": tv("mobilenet_v2"),
    "ConvNeXt": tm("convnext_atto"),
    "MobileNetV3": tm("mobilenetv3_small_050"),
    "VGG, AlexNet": tv("alexnet", 64),
    "ViT averaging its patch tokens": tm(
        "vit_tiny_patch16_224", None, img_size=32, global_pool="avg", class_token=False
    ),
    "ViT with a class token": tm("vit_tiny_patch16_224", None, img_size=32),
    "DeiT": tm("deit_tiny_distilled_patch16_224", None, img_size=32),
    "Swin (torchvision": tv("swin_t", 64),
    "Swin (timm)": tm("swin_tiny_patch4_window7_224", None, img_size=32, window_size=2,
                      embed_dim=24, depths=(1, 1), num_heads=(1, 2)),
    "ResNet (transformers": hf("resnet"),
    "ViT (transformers": hf("vit"),
}  # fmt: skip


def readme_rows() -> list[tuple[str, str, str]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("tests/methods/test_method_table.py") :]
    rows = []
    for line in section.splitlines()[1:]:
        line = line.strip()
        if rows and not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("family", "---"):
            rows.append((cells[0], cells[1], cells[2]))
    return rows


def test_every_row_has_a_model() -> None:
    rows = readme_rows()
    assert len(rows) == len(REPRESENTATIVE)
    for (family, _, _), key in zip(rows, REPRESENTATIVE, strict=True):
        assert family.startswith(key)


@pytest.mark.parametrize("row", readme_rows(), ids=lambda row: row[0][:24])
def test_row_agrees_with_the_code(row: tuple[str, str, str]) -> None:
    family, exact, layer = row
    model = next(build for key, build in REPRESENTATIVE.items() if family.startswith(key))()
    chosen = bind("auto", model).method
    named = re.match(r"`([a-z-]+)`", exact)
    if named:
        assert chosen == named[1] and bind(chosen, model).describe()
    else:
        assert exact == "none: `auto` uses `gradcam`" and chosen == "gradcam"
        assert not can_explain("cam", model)[0] and not can_explain("integrated-head", model)[0]
    verdicts = {name: can_explain(name, model)[0] for name in LAYER_METHODS}
    assert all(verdicts.values()) == (layer == "yes"), verdicts
