"""Rendering: plain tensors in, plain tensors out, validated."""

from __future__ import annotations

import pytest
import torch

import camtool
from camtool.errors import ImageReadError, InvalidArgumentError
from camtool.geometry import feature_stride


def test_normalize_maps_each_cam_to_unit_range() -> None:
    cams = torch.tensor([[[1.0, 3.0], [-1.0, 0.0]], [[2.0, 2.0], [2.0, 2.0]]])
    out = camtool.normalize_cams(cams)
    assert out[0].tolist() == [[0.5, 1.0], [0.0, 0.25]]
    assert out[1].tolist() == [[0.0, 0.0], [0.0, 0.0]]  # a flat map has no hot spot


def test_feature_stride_follows_how_convolutions_round() -> None:
    assert feature_stride(224, 7) == 32
    assert feature_stride(337, 11) == 32
    assert feature_stride(298, 10) == 32
    assert feature_stride(100, 3) == pytest.approx(100 / 3)


def test_upsample_aligns_cells_with_the_pixels_they_cover() -> None:
    # Input 40 px wide with stride 16 -> 3 cells; the third covers pixels 32..47, only 32..39 exist.
    cams = torch.tensor([[[0.0, 0.0, 1.0]]])
    up = camtool.upsample_cams(cams, (16, 40), (16, 40))
    assert up.shape == (1, 16, 40)
    # Pixel 39 sits at grid coordinate 39.5 / 16 - 0.5 = 1.96875 cells: bilinear gives 0.96875.
    assert float(up[0, 0, 39]) == pytest.approx(0.96875)
    assert float(up[0, 0, 20]) == 0.0  # a stretched map would already be warm here


def test_colorize_and_overlay_sizes_and_values() -> None:
    heat = torch.linspace(0, 1, 20).repeat(10, 1)
    colour = camtool.colorize(heat, "jet")
    assert colour.shape == (3, 10, 20) and colour.dtype == torch.uint8
    assert colour[:, 0, 0].tolist() == [0, 0, 128]  # jet starts dark blue
    assert colour[:, 0, -1].tolist() == [128, 0, 0]  # and ends dark red
    image = torch.full((3, 10, 20), 200, dtype=torch.uint8)
    blended = camtool.overlay(image, heat, alpha=0.25)
    assert blended.shape == image.shape and blended.dtype == torch.uint8
    assert blended[:, 0, 0].tolist() == [150, 150, 182]
    assert torch.equal(camtool.overlay(image, heat, alpha=0.0), image)


def test_overlay_rejects_bad_arguments_precisely() -> None:
    image = torch.zeros((3, 4, 4), dtype=torch.uint8)
    with pytest.raises(InvalidArgumentError, match=r"^1.5: alpha must be between 0 and 1$"):
        camtool.overlay(image, torch.zeros(4, 4), alpha=1.5)
    with pytest.raises(
        InvalidArgumentError, match=r"^heatmap: expected shape \[H, W\], got \[2, 4, 4\]$"
    ):
        camtool.overlay(image, torch.zeros(2, 4, 4))
    with pytest.raises(
        InvalidArgumentError, match=r"^mask: shape \[4, 5\] does not match the image's \[4, 4\]$"
    ):
        camtool.overlay(image, torch.zeros(4, 4), mask=torch.ones(4, 5, dtype=torch.bool))
    with pytest.raises(ImageReadError, match=r"^image: expected a tensor of shape \[3, H, W\]"):
        camtool.overlay(torch.zeros(2, 5, 5), torch.zeros(4, 4))
    with pytest.raises(
        InvalidArgumentError, match=r"^sepia: unknown colour map; choose one of jet, turbo"
    ):
        camtool.colorize(torch.zeros(4, 4), "sepia")


def test_cam_box_is_the_largest_component_above_20_percent() -> None:
    heat = torch.zeros(50, 60)
    heat[10:20, 5:15] = 1.0  # big blob
    heat[40:42, 50:52] = 0.9  # small blob
    heat[30, 30] = 0.1  # below threshold
    assert camtool.cam_to_box(heat) == (5, 10, 15, 20)
    assert camtool.cam_to_box(torch.zeros(5, 5)) is None


def test_draw_box_outlines_inside_the_box() -> None:
    image = torch.zeros((3, 30, 30), dtype=torch.uint8)
    drawn = camtool.draw_box(image, (5, 6, 20, 25), color=(0, 255, 0), width=1)
    assert drawn[:, 6, 5].tolist() == [0, 255, 0] and drawn[:, 24, 19].tolist() == [0, 255, 0]
    assert drawn[:, 15, 12].tolist() == [0, 0, 0] and image.sum() == 0
