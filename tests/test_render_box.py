"""The CAM box from a small map (boxes.small_map_box) against the box of the full-size map."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
import torch

import camtool
from camtool.boxes import Box, cam_to_box, small_map_box
from camtool.errors import InvalidArgumentError
from camtool.geometry import FeatureGeometry
from camtool.io.images import load_image
from camtool.render import normalize_cams, upsample_cams, upsample_weights
from tests.conftest import foolbox_photos

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _gap(a: Box | None, b: Box | None) -> int:
    """The largest distance between matching edges of two boxes (0 for two Nones)."""
    assert (a is None) == (b is None), (a, b)
    return 0 if a is None or b is None else max(abs(p - q) for p, q in zip(a, b, strict=True))


def _resized(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    pixels = cv2.resize(
        image.permute(1, 2, 0).numpy(), (width, height), interpolation=cv2.INTER_AREA
    )
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def test_upsample_weights_reproduce_upsample_cams() -> None:
    cams = torch.rand(2, 7, 10, generator=torch.Generator().manual_seed(0))
    geometry = FeatureGeometry((13.0, 21.0), (32.0, 32.0))
    wy, wx = upsample_weights((7, 10), (224, 298), (480, 640), geometry)
    assert wy.shape == (480, 7) and wx.shape == (640, 10)
    expected = upsample_cams(cams, (224, 298), (480, 640), geometry)
    got = torch.from_numpy(wy) @ cams @ torch.from_numpy(wx).T
    assert torch.allclose(got, expected, atol=1e-5)


def test_explanation_boxes_match_the_full_size_box_on_real_photos(
    lite0: camtool.LoadedModel,
) -> None:
    # Every bundled photo and the foolbox photos at their own size, the bundled ones also at
    # 640x480 whole and cropped; each photo's box at three thresholds against today's box of the
    # full-size heatmap. The bound is 1 px (a pixel within float rounding of the threshold).
    examples = [
        load_image(p) for p in [*sorted(EXAMPLES.glob("*.png")), EXAMPLES / "grace_hopper.jpg"]
    ]
    photos = examples + [load_image(p) for p, _ in foolbox_photos()]
    cases = [(photos, False), ([_resized(im, 480, 640) for im in examples], False),
             ([_resized(im, 480, 640) for im in examples], True)]  # fmt: skip
    compared = 0
    for images, crop in cases:
        for ex in camtool.explain(images, model=lite0, crop=crop):
            assert len(ex.boxes) == len(ex.heatmaps) >= 1
            x1, y1, x2, y2 = ex.region.as_ints()
            for cam, heatmap, box in zip(ex.cams, ex.heatmaps, ex.boxes, strict=True):
                assert _gap(box, cam_to_box(heatmap)) <= 1  # what explain and export return
                for threshold in (0.5, 0.8):
                    small = small_map_box(
                        normalize_cams(cam[None])[0],
                        ex.input_hw,
                        (y2 - y1, x2 - x1),
                        ex.geometry,
                        threshold,
                    )
                    shifted = (
                        None
                        if small is None
                        else (small[0] + x1, small[1] + y1, small[2] + x1, small[3] + y1)
                    )
                    assert _gap(shifted, cam_to_box(heatmap, threshold)) <= 1
                compared += 1
    assert compared >= 24 + 8


@pytest.mark.parametrize("kind", ["one-cell", "two-blobs", "smooth-random", "edge"])
def test_small_map_box_matches_the_full_box_on_constructed_maps(kind: str) -> None:
    generator = torch.Generator().manual_seed(7)
    for trial in range(40):
        h, w = (int(v) for v in torch.randint(1, 12, (2,), generator=generator))
        input_hw = (h * 32 - int(torch.randint(0, 31, (1,), generator=generator)),
                    w * 32 - int(torch.randint(0, 31, (1,), generator=generator)))  # fmt: skip
        out_hw = (int(torch.randint(20, 700, (1,), generator=generator)),
                  int(torch.randint(20, 700, (1,), generator=generator)))  # fmt: skip
        origin = torch.rand(2, generator=generator) * 32
        geometry = FeatureGeometry((float(origin[0]), float(origin[1])), (32.0, 32.0))
        cam = torch.zeros(h, w)
        if kind == "one-cell":
            cam[int(torch.randint(0, h, (1,))), int(torch.randint(0, w, (1,)))] = 1.0
        elif kind == "two-blobs":  # a strong small blob and a weaker larger one, far apart
            cam[0, 0] = 1.0
            cam[h - 2 :, w - 2 :] = 0.7 if h > 3 and w > 3 else 0.0
        elif kind == "smooth-random":
            noise = torch.rand(1, h + 2, w + 2, generator=generator)
            cam = torch.nn.functional.avg_pool2d(noise, 3, 1)[0]
        else:  # hot along the border: boxes touching the image's edges
            cam[:, 0] = 1.0
            cam[-1, :] = 0.8
        threshold = float(torch.rand(1, generator=generator)) * 0.8 + 0.1
        full = upsample_cams(cam[None], input_hw, out_hw, geometry)[0]
        expected = cam_to_box(full, threshold)
        assert _gap(small_map_box(cam, input_hw, out_hw, geometry, threshold), expected) <= 1, (
            trial,
            expected,
        )


def test_small_map_box_of_a_known_map() -> None:
    # One hot cell of a 7x7 map (stride 32, cells tiling a 224 px input shown at 224 px): the
    # upsampled map is a tent peaking between pixels 111 and 112 (source position (p + 0.5) / 32
    # - 0.5 = 3), at or above half its peak for pixels 96..127: the box is 96..128, x2 exclusive.
    cam = torch.zeros(7, 7)
    cam[3, 3] = 1.0
    assert small_map_box(cam, (224, 224), (224, 224), threshold=0.5) == (96, 96, 128, 128)
    assert cam_to_box(upsample_cams(cam[None], (224, 224), (224, 224))[0], 0.5) == (
        96,
        96,
        128,
        128,
    )
    assert small_map_box(torch.zeros(7, 7), (224, 224), (224, 224)) is None
    assert small_map_box(-torch.ones(7, 7), (224, 224), (224, 224)) is None
    with pytest.raises(InvalidArgumentError):
        small_map_box(cam, (224, 224), (224, 224), threshold=1.5)
    with pytest.raises(InvalidArgumentError):
        small_map_box(cam, (224, 224), (224, 224), factor=0)
