"""The default model and its siblings on real photos: predictions, the exactness identity, boxes."""

from __future__ import annotations

import pytest
import torch

import camtool
from camtool.methods.cam import compute
from tests.conftest import CAT, CAT_CLASSES, COFFEE, ESPRESSO, foolbox_photos


def test_cat_photo_top3_are_cat_classes(lite0: camtool.LoadedModel) -> None:
    ex = camtool.explain(CAT, lite0, top_k=3)
    assert {p.index for p in ex.predictions} == CAT_CLASSES
    assert ex.predictions[0].name in {"tabby", "tiger cat", "Egyptian cat"}


def test_coffee_photo_is_espresso(lite0: camtool.LoadedModel) -> None:
    ex = camtool.explain(COFFEE, lite0)
    assert ex.predictions[0].index == ESPRESSO
    assert ex.predictions[0].name == "espresso"
    assert ex.predictions[0].probability > 0.5


def test_foolbox_imagenet_photos_top1_at_least_17_of_20(lite0: camtool.LoadedModel) -> None:
    photos = foolbox_photos()
    results = camtool.explain([p for p, _ in photos], lite0)
    correct = sum(
        ex.predictions[0].index == label for ex, (_, label) in zip(results, photos, strict=True)
    )
    assert correct >= 17, f"top-1 {correct}/20"


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_identity_holds_on_real_photos(name: str) -> None:
    model = camtool.load_model(name)
    photos = [CAT, COFFEE] + [p for p, _ in foolbox_photos()[:4]]
    for ex in camtool.explain(photos, model, maps=3):
        logits = torch.tensor([s.logit for s in ex.explained])
        reconstructed = ex.cams.mean(dim=(-2, -1)) + ex.bias
        scale = max(1.0, max(abs(s.logit) for s in ex.predictions))
        assert (reconstructed - logits).abs().max() < 1e-3 * scale
        assert ex.residual < 1e-3 * scale


def test_identity_over_all_1000_classes(lite0: camtool.LoadedModel) -> None:
    image = camtool.load_image(CAT)
    batch, _ = lite0.preprocessing.prepare(image)
    out = compute(lite0, batch[None], classes=list(range(1000)))
    assert out.cams.shape == (1, 1000, 7, 11)
    reconstructed = out.cams.mean(dim=(-2, -1)) + out.bias
    torch.testing.assert_close(reconstructed, out.logits, atol=1e-4, rtol=1e-5)


def test_cat_box_covers_the_face_and_the_peak_is_on_it(lite0: camtool.LoadedModel) -> None:
    ex = camtool.explain(CAT, lite0)
    box = ex.boxes[0]
    assert box is not None
    # chelsea.png is 451x300; the cat's face (cheeks, eyes, nose, mouth) spans about x 80..380,
    # y 40..290; the eyes and nose, about x 130..340, y 80..250, must be inside the box.
    x1, y1, x2, y2 = box
    assert x1 <= 130 and y1 <= 80 and x2 >= 340 and y2 >= 250
    peak = int(ex.heatmaps[0].argmax())
    py, px = divmod(peak, ex.image.shape[2])
    assert 80 <= px <= 380 and 40 <= py <= 290


def test_whole_image_by_default_and_centre_crop_on_request(lite0: camtool.LoadedModel) -> None:
    whole = camtool.explain(CAT, lite0)
    assert whole.input_hw == (224, 337)
    assert whole.heatmaps.shape == (1, 300, 451)
    assert whole.region.as_ints() == (0, 0, 451, 300)
    cropped = camtool.explain(CAT, lite0, crop=True)
    assert cropped.input_hw == (224, 224)
    x1, y1, x2, y2 = cropped.region.as_ints()
    assert (x2 - x1, y2 - y1) == (262, 262) and x1 == 94
    assert float(cropped.heatmaps[0, :, : x1 - 1].abs().max()) == 0.0  # nothing outside the crop
    assert {p.index for p in cropped.predictions[:3]} == CAT_CLASSES


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_builtin_efficientnet_lite_equals_timm_tf_efficientnet_lite(name: str) -> None:
    """camtool's own EfficientNet-Lite gives the logits of timm's verified TF-padding port."""
    timm = pytest.importorskip("timm")
    ours = camtool.load_model(name).module
    reference = timm.create_model(f"tf_{name}", pretrained=False).eval()
    theirs = list(reference.state_dict().items())
    mine = list(ours.state_dict().values())
    assert [tuple(v.shape) for _, v in theirs] == [tuple(v.shape) for v in mine]
    reference.load_state_dict({k: v for (k, _), v in zip(theirs, mine, strict=True)})
    torch.manual_seed(0)
    for shape in [(2, 3, 224, 224), (1, 3, 224, 337), (1, 3, 261, 199)]:
        x = torch.randn(shape)
        with torch.inference_mode():
            torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)
