"""What ``camtool.explain`` takes: batches, channels-last images, already-normalised batches, and
precise errors for anything else. All on the real default model and the bundled cat photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import camtool
from tests.conftest import CAT, COFFEE

CLASSES = [285, 281]


def logits(ex: camtool.Explanation) -> list[float]:
    return [s.logit for s in ex.predictions] + [s.logit for s in ex.explained]


def assert_same(a: camtool.Explanation, b: camtool.Explanation, tol: float = 1e-5) -> None:
    assert [s.index for s in a.predictions] == [s.index for s in b.predictions]
    assert [s.index for s in a.explained] == [s.index for s in b.explained]
    assert logits(a) == pytest.approx(logits(b), abs=tol)
    assert torch.allclose(a.cams, b.cams, atol=tol)


def forward_passes(model: camtool.LoadedModel, run: object) -> int:
    calls = []
    handle = model.module.register_forward_hook(lambda *_: calls.append(1))
    try:
        run()  # type: ignore[operator]
    finally:
        handle.remove()
    return len(calls)


def test_a_batch_is_one_forward_pass_and_equals_single_calls(lite0: camtool.LoadedModel) -> None:
    cat = camtool.load_image(CAT)
    flipped = cat.flip(-1).contiguous()
    batch = torch.stack([cat, flipped])  # Tensor[2,3,H,W] uint8
    results = camtool.explain(batch, lite0, classes=CLASSES)
    assert isinstance(results, list) and len(results) == 2
    assert [r.source for r in results] == ["<Tensor>[0]", "<Tensor>[1]"]
    assert_same(results[0], camtool.explain(CAT, lite0, classes=CLASSES))
    assert_same(results[1], camtool.explain(flipped, lite0, classes=CLASSES))
    single = forward_passes(lite0, lambda: camtool.explain(cat, lite0))
    double = forward_passes(lite0, lambda: camtool.explain(batch, lite0))
    assert double == single  # the two images share the forward pass
    hwc = camtool.explain(batch.permute(0, 2, 3, 1).numpy(), lite0, classes=CLASSES)
    assert_same(hwc[1], results[1], tol=0)
    assert camtool.explain(batch[:0], lite0) == []


def test_channels_last_images_equal_the_path(lite0: camtool.LoadedModel) -> None:
    from_path = camtool.explain(CAT, lite0, classes=CLASSES)
    cat = camtool.load_image(CAT)
    hwc = cat.permute(1, 2, 0)
    for image in (hwc.numpy(), hwc, hwc.float() / 255, cat.numpy()):
        ex = camtool.explain(image, lite0, classes=CLASSES)
        assert torch.equal(ex.image, cat)
        assert_same(ex, from_path, tol=0)
    assert camtool.explain([hwc.numpy(), COFFEE], lite0)[1].source == str(COFFEE)


def test_a_shape_that_does_not_tell_its_layout_asks_for_it(lite0: camtool.LoadedModel) -> None:
    square = torch.arange(3 * 5 * 3, dtype=torch.uint8).reshape(3, 5, 3)
    with pytest.raises(camtool.ImageReadError, match=r"^images: shape \[3, 5, 3\] could be"):
        camtool.explain(square, lite0)
    with pytest.raises(camtool.ImageReadError, match="layout='CHW' or layout='HWC'"):
        camtool.load_image(square)
    chw = camtool.explain(square, lite0, layout="CHW")
    hwc = camtool.explain(square, lite0, layout="HWC")
    assert chw.image.shape == (3, 5, 3) and torch.equal(chw.image, square)
    assert hwc.image.shape == (3, 3, 5) and torch.equal(hwc.image, square.permute(2, 0, 1))
    with pytest.raises(camtool.ImageReadError, match=r"layout='CHW' needs 1, 3 or 4 channels"):
        camtool.load_image(torch.zeros(5, 6, 3), layout="CHW")
    with pytest.raises(camtool.ImageReadError, match="layout must be 'CHW' or 'HWC', not 'NCHW'"):
        camtool.load_image(torch.zeros(3, 6, 5), layout="NCHW")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (
            torch.zeros(1, 1, 3, 8, 8),
            r"^images: expected an image \[3,H,W\], \[H,W,3\] or \[H,W\], or a batch "
            r"\[N,3,H,W\] or \[N,H,W,3\], got a tensor of shape \[1, 1, 3, 8, 8\]$",
        ),
        (
            np.zeros((2, 5, 8, 8), np.uint8),
            r"^images: a batch of shape \[2, 5, 8, 8\]: expected 1, 3 or 4 channels first",
        ),
        (
            [np.zeros((8, 8, 3), np.uint8), torch.zeros(2, 3, 8, 8)],
            r"^images\[1\]: a list holds single images, got a batch of shape \[2, 3, 8, 8\]",
        ),
        (
            torch.stack([torch.zeros(3, 8, 8), torch.full((3, 8, 8), float("nan"))]),
            r"^images\[1\]: image has NaN or infinite pixels$",
        ),
        (torch.full((3, 8, 8), 2.0), r"^images: float pixels must lie in \[0, 1\]"),
        (torch.zeros(8, dtype=torch.uint8), r"^images: expected an image \[3,H,W\]"),
        (
            torch.zeros(2, 5, 5),
            r"^images: expected a tensor of shape \[3, H, W\], \[H, W, 3\] or \[H, W\] \(one "
            r"image\), got \[2, 5, 5\]$",
        ),
    ],
)
def test_wrong_images_name_the_argument_and_the_shape(
    lite0: camtool.LoadedModel, images: object, message: str
) -> None:
    with pytest.raises(camtool.ImageReadError, match=message):
        camtool.explain(images, lite0)  # type: ignore[call-overload]


def test_a_preprocessed_batch_goes_into_the_network_as_it_is(
    lite0: camtool.LoadedModel,
) -> None:
    cat = camtool.load_image(CAT)
    ready, _ = lite0.preprocessing.prepare(cat)  # Tensor[3,224,337] float32, normalised
    (ex,) = camtool.explain(ready[None], lite0, classes=CLASSES, preprocessed=True)
    assert_same(ex, camtool.explain(CAT, lite0, classes=CLASSES))
    one = camtool.explain(ready, lite0, classes=CLASSES, preprocessed=True)
    assert isinstance(one, camtool.Explanation) and one.source == "<Tensor>"
    # What the overlays show: the network's input, de-normalised, at the network's resolution.
    resized = lite0.preprocessing.denormalize(ready)
    assert ex.image.shape == (3, 224, 337) and ex.input_hw == (224, 337)
    assert (ex.image.int() - camtool.load_image(resized).int()).abs().max() <= 1
    assert ex.overlay(0).tensor.shape == (3, 224, 337)
    with pytest.raises(camtool.InvalidArgumentError, match="no crop"):
        camtool.explain(ready[None], lite0, preprocessed=True, crop=True)
    with pytest.raises(
        camtool.InvalidArgumentError,
        match=r"^images: with preprocessed=True, expected a float Tensor\[N,3,h,w\] normalised for "
        r"the model, got uint8 \[1, 3, 8, 8\]$",
    ):
        camtool.explain(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), lite0, preprocessed=True)
    with pytest.raises(camtool.InvalidArgumentError, match="got float32 \\[1, 8, 8, 3\\]"):
        camtool.explain(torch.zeros(1, 8, 8, 3), lite0, preprocessed=True)
    with pytest.raises(camtool.InvalidArgumentError, match="NaN or infinite"):
        camtool.explain(torch.full((1, 3, 8, 8), float("inf")), lite0, preprocessed=True)


def test_every_call_form_of_explain_takes_every_option() -> None:
    """Each typed call form (a path, a list, a tensor or array) accepts the same keyword options
    as the function itself, so a type checker never refuses ``explain(tensor, target=...)``."""
    import inspect
    import typing

    from camtool.explaining import ExplainOptions

    real = inspect.signature(camtool.explain).parameters
    keywords = {name for name, p in real.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert set(typing.get_type_hints(ExplainOptions)) == keywords
    forms = typing.get_overloads(camtool.explain)
    assert len(forms) == 3
    for form in forms:
        params = inspect.signature(form).parameters
        assert [p.kind for p in params.values()][-1] is inspect.Parameter.VAR_KEYWORD
        assert "Unpack[ExplainOptions]" in str(params["options"].annotation)


def test_broken_in_memory_images_are_typed_errors_naming_them(
    lite0: camtool.LoadedModel, tmp_path: Path
) -> None:
    from PIL import Image

    with Image.open(CAT) as closed:  # lazily opened: its file is gone before the pixels are read
        pass
    with pytest.raises(camtool.ImageReadError) as caught:
        camtool.explain(closed, lite0)
    assert str(caught.value) == "images: cannot decode the PIL image: its file is closed"
    data = CAT.read_bytes()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(camtool.ImageReadError) as caught:
        camtool.explain([CAT, Image.open(tmp_path / "half.png")], lite0)
    assert str(caught.value) == "images[1]: cannot decode the PIL image: image file is truncated"
    # camtool's own refusals of a decoded PIL image pass through as they are
    from camtool.io.images import load_image

    for picture, problem in (
        (
            Image.new("F", (8, 8), -5.0),
            "mode F pixels must lie in [0, 1] or [0, 255], not [-5, -5]",
        ),
        (Image.new("F", (8, 8), float("nan")), "image has NaN or infinite pixels"),
        (Image.new("I", (8, 8), 70000), "mode I pixels must lie in 0..65535, not 70000..70000"),
    ):
        with pytest.raises(camtool.ImageReadError) as caught:
            camtool.explain(picture, lite0)
        assert str(caught.value) == f"images: {problem}"
        with pytest.raises(camtool.ImageReadError) as caught:
            load_image(picture)
        assert str(caught.value) == f"<Image>: {problem}"
    with pytest.raises(camtool.ImageReadError) as caught:
        camtool.explain(np.zeros((8, 8, 3), dtype=object), lite0)
    assert str(caught.value) == (
        "images: unsupported pixel type object (pixels are integers or floats)"
    )
    with pytest.raises(camtool.ImageReadError) as caught:
        camtool.explain(torch.zeros(3, 8, 8, device="meta"), lite0)
    assert str(caught.value) == "images: a meta tensor holds no pixels to read; pass a dense tensor"
    with pytest.raises(camtool.InvalidArgumentError) as caught:
        camtool.explain(torch.zeros(1, 3, 8, 8, device="meta"), lite0, preprocessed=True)
    assert str(caught.value) == "images: a meta tensor holds no values to explain"


@pytest.mark.parametrize("size", [0, -1, 2.0, True])
def test_a_batch_size_that_is_no_positive_integer_is_refused(
    lite0: camtool.LoadedModel, size: object, tmp_path: Path
) -> None:
    message = f"batch_size: expected a positive integer, got {size!r}"
    with pytest.raises(camtool.InvalidArgumentError) as caught:
        camtool.explain(CAT, lite0, batch_size=size)  # type: ignore[arg-type]
    assert str(caught.value) == message
    with pytest.raises(camtool.InvalidArgumentError) as caught:
        list(camtool.explain_iter([CAT], lite0, batch_size=size))  # type: ignore[arg-type]
    assert str(caught.value) == message
    with pytest.raises(camtool.InvalidArgumentError) as caught:
        camtool.export([CAT], tmp_path / "out", lite0, batch_size=size)  # type: ignore[arg-type]
    assert str(caught.value) == message
    assert not (tmp_path / "out").exists()
