"""The CPU overlay (OpenCV, channels-last, in place) against the documented formula and the
previous float-tensor path, on real maps of the default model."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import camtool
from camtool.boxes import draw_box
from camtool.io.images import image_to_bgr_array, load_image
from camtool.render import COLORMAPS, overlay

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _reference(
    image: torch.Tensor, heatmap: torch.Tensor, alpha: float, colormap: str
) -> np.ndarray:
    """The documented formula, step by step: the map in [0, 1] -> uint8 level (float32, as the
    map is stored) -> the colour map's 256-entry table (OpenCV's map applied to the levels
    0..255) -> the blend, in float64."""
    scaled = np.clip(heatmap.float().numpy(), 0, 1) * np.float32(255)
    levels = np.rint(scaled).astype(np.intp)
    code = COLORMAPS[colormap]
    ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
    table = (
        np.repeat(ramp, 3, axis=1) if code is None else cv2.applyColorMap(ramp, code)[:, 0, ::-1]
    )
    colour = table[levels].astype(np.float64)  # [H,W,3] RGB
    pixels = image.permute(1, 2, 0).double().numpy()
    return (1 - alpha) * pixels + alpha * colour


def _photo(width: int, height: int) -> torch.Tensor:
    pixels = load_image(EXAMPLES / "chelsea.png").permute(1, 2, 0).numpy()
    return torch.from_numpy(cv2.resize(pixels, (width, height))).permute(2, 0, 1)


@pytest.fixture(scope="module")
def chelsea(lite0: camtool.LoadedModel) -> camtool.Explanation:
    return camtool.explain(_photo(640, 480), model=lite0, top_k=3, maps=3)


@pytest.mark.parametrize(("colormap", "alpha"), [("jet", 0.5), ("turbo", 0.3), ("gray", 0.8)])
def test_overlay_is_the_documented_blend_within_one_level(
    chelsea: camtool.Explanation, colormap: str, alpha: float
) -> None:
    for layout in ("channels-last", "channels-first"):
        image = chelsea.image if layout == "channels-last" else chelsea.image.contiguous()
        for heatmap in chelsea.heatmaps:
            got = overlay(image, heatmap, alpha, colormap)
            assert got.shape == (3, 480, 640) and got.dtype == torch.uint8
            expected = _reference(image, heatmap, alpha, colormap)
            assert np.abs(got.permute(1, 2, 0).numpy() - expected).max() <= 1.0


def test_overlay_with_a_mask_keeps_the_image_outside(chelsea: camtool.Explanation) -> None:
    mask = torch.zeros(480, 640, dtype=torch.bool)
    mask[100:300, 50:400] = True
    got = overlay(chelsea.image, chelsea.heatmaps[0], 0.5, "jet", mask).permute(1, 2, 0).numpy()
    expected = _reference(chelsea.image, chelsea.heatmaps[0], 0.5, "jet")
    assert np.abs(got[100:300, 50:400] - expected[100:300, 50:400]).max() <= 1.0
    assert np.array_equal(got[~mask.numpy()], chelsea.image.permute(1, 2, 0).numpy()[~mask.numpy()])


def test_overlays_match_the_previous_float_tensor_path_on_real_maps(
    chelsea: camtool.Explanation, lite0: camtool.LoadedModel
) -> None:
    # The previous path: F.interpolate + replicate padding for the heatmap, float tensors for
    # the colour and the blend. Heatmaps agree to float rounding; overlays then differ only where
    # a level sits on a rounding edge: by one step of the colour table times alpha at most.
    cams = camtool.normalize_cams(chelsea.maps)
    input_hw, geometry = chelsea.input_hw, chelsea.geometry
    scale = [480 / input_hw[0], 640 / input_hw[1]]
    grid = [max(1, round(cams.shape[1 + a] * geometry.stride[a] * scale[a])) for a in (0, 1)]
    shift = [round((geometry.origin[a] - geometry.stride[a] / 2) * scale[a]) for a in (0, 1)]
    up = F.interpolate(cams[None], size=(grid[0], grid[1]), mode="bilinear", align_corners=False)
    pad = [
        max(0, shift[1]),
        max(0, 640 - shift[1] - grid[1]),
        max(0, shift[0]),
        max(0, 480 - shift[0] - grid[0]),
    ]
    padded = F.pad(up, pad, mode="replicate")[0]
    y0, x0 = pad[2] - shift[0], pad[0] - shift[1]
    previous = padded[:, y0 : y0 + 480, x0 : x0 + 640]
    assert (previous - chelsea.heatmaps).abs().max() < 1e-5
    for i, heatmap in enumerate(previous):
        lut = torch.from_numpy(
            cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_JET)[
                :, 0, ::-1
            ].copy()
        )
        colour = lut[(heatmap.clamp(0, 1) * 255).round().long()].permute(2, 0, 1).float()
        old = (chelsea.image.float() * 0.5 + colour * 0.5).round().clamp(0, 255)
        new = chelsea.overlay(i, scale="per-map").tensor.float()
        gap = (new - old).abs()
        assert gap.max() <= 3  # jet's table steps by at most 4 levels per channel: 0.5 * 4 + 1
        assert (gap > 1).float().mean() < 1e-3  # and only on a rounding edge


def test_draw_box_returns_a_copy_and_leaves_its_input(chelsea: camtool.Explanation) -> None:
    image = chelsea.image  # stored channels-last, as decoded
    before = image.clone()
    drawn = draw_box(image, (10, 20, 110, 220))
    assert torch.equal(image, before)
    assert drawn[:, 20, 50].tolist() == [0, 255, 0] and drawn.shape == image.shape
    assert torch.equal(drawn[:, 100, 50], image[:, 100, 50])


def test_boxed_overlay_and_encoding_colours(chelsea: camtool.Explanation) -> None:
    boxed = chelsea.overlay(0, box=True).tensor
    x1, y1, x2, _ = chelsea.boxes[0] or (0, 0, 0, 0)
    assert boxed[:, y1, (x1 + x2) // 2].tolist() == [0, 255, 0]  # the outline, RGB green
    plain = chelsea.overlay(0).tensor
    assert not torch.equal(boxed, plain)
    bgr = image_to_bgr_array(boxed)
    assert bgr.flags.c_contiguous and bgr[y1, (x1 + x2) // 2].tolist() == [0, 255, 0]
    assert bgr[240, 320].tolist() == boxed[:, 240, 320].tolist()[::-1]
    assert np.array_equal(image_to_bgr_array(boxed.contiguous()), bgr)


def test_overlay_takes_every_image_explain_takes_and_a_map_of_any_size(
    chelsea: camtool.Explanation,
) -> None:
    from PIL import Image

    image = chelsea.image.contiguous()  # uint8 [3,480,640]
    heat = chelsea.heatmaps[0]
    expected = overlay(image, heat)
    hwc = image.permute(1, 2, 0).numpy()
    for given in (
        Image.fromarray(hwc),  # PIL
        hwc,  # numpy HWC uint8
        hwc.astype(np.float32) / 255,  # numpy HWC float in [0, 1]
        image.float() / 255,  # tensor CHW float
        torch.from_numpy(hwc.copy()),  # tensor HWC uint8
    ):
        assert torch.equal(overlay(given, heat.numpy()), expected)
    # A map of another size (the 7x7 raw map, normalised) is stretched as cv2.resize does.
    small = camtool.normalize_cams(chelsea.maps)[0]
    stretched = cv2.resize(small.numpy(), (640, 480), interpolation=cv2.INTER_LINEAR)
    got = overlay(image, small)
    assert int((got.int() - overlay(image, torch.from_numpy(stretched)).int()).abs().max()) <= 1
    assert torch.equal(overlay(hwc, small[None].numpy()), got)  # [1,h,w] too


def test_overlay_names_a_bad_image_or_map(tmp_path: Path) -> None:
    from camtool.errors import ImageReadError, InvalidArgumentError

    heat = torch.zeros(4, 4)
    with pytest.raises(ImageReadError, match=r"^image: float pixels must lie in \[0, 1\]"):
        overlay(np.full((5, 6, 3), 200.0), heat)
    with pytest.raises(ImageReadError, match=r"nothing\.png: no such file$"):
        overlay(tmp_path / "nothing.png", heat)
    with pytest.raises(InvalidArgumentError, match=r"^heatmap: expected a tensor or numpy array"):
        overlay(torch.zeros((3, 4, 4), dtype=torch.uint8), [[0.5]])  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_heatmap_with_nan_or_infinite_values_is_refused(value: float) -> None:
    from camtool.errors import InvalidArgumentError
    from camtool.render import colorize

    image = _photo(36, 28)
    heat = np.random.default_rng(0).random((7, 9))
    heat[3, 4] = value
    message = r"^heatmap: has NaN or infinite values$"
    with pytest.raises(InvalidArgumentError, match=message):
        overlay(image, heat)  # stretched to the image: was drawn as the coolest colour
    with pytest.raises(InvalidArgumentError, match=message):
        overlay(image, np.full((28, 36), value))  # the image's size: no upsampling
    with pytest.raises(InvalidArgumentError, match=message):
        colorize(torch.full((4, 4), value))


def test_a_mask_may_be_a_bool_or_0_1_tensor_or_array_and_alpha_must_be_a_number() -> None:
    from camtool.errors import InvalidArgumentError

    image = _photo(40, 30)
    heat = torch.rand(5, 5, generator=torch.Generator().manual_seed(0))
    inside = np.zeros((30, 40), dtype=bool)
    inside[5:20, 10:30] = True
    expected = overlay(image, heat, mask=torch.from_numpy(inside))
    assert torch.equal(expected[:, ~torch.from_numpy(inside)], image[:, ~torch.from_numpy(inside)])
    assert not torch.equal(expected, image)
    for mask in (inside, inside.astype(np.uint8), torch.from_numpy(inside).float()):
        assert torch.equal(overlay(image, heat, mask=mask), expected)  # was a TypeError
    assert torch.equal(overlay(image, heat, mask=torch.ones(30, 40)), overlay(image, heat))
    with pytest.raises(InvalidArgumentError, match=r"^mask: expected bools or 0s and 1s$"):
        overlay(image, heat, mask=np.full((30, 40), 2))
    with pytest.raises(InvalidArgumentError, match=r"^mask: shape \[40, 30\] does not match"):
        overlay(image, heat, mask=inside.T)
    with pytest.raises(InvalidArgumentError, match=r"^mask: expected a tensor or numpy array"):
        overlay(image, heat, mask=[[True]])  # type: ignore[arg-type]
    with pytest.raises(
        InvalidArgumentError, match=r"^alpha: expected a number in \[0, 1\], got '0.5'$"
    ):
        overlay(image, heat, alpha="0.5")  # type: ignore[arg-type]
    assert torch.equal(overlay(image, heat, alpha=np.float32(0.25)), overlay(image, heat, 0.25))


def test_explanation_overlay_refuses_a_string_alpha(chelsea: camtool.Explanation) -> None:
    from camtool.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match=r"^alpha: expected a number"):
        chelsea.overlay(0, alpha="0.5")  # type: ignore[arg-type]
