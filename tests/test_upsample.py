"""``upsample="placed"`` (each cell at its receptive field's centre) against ``"stretch"`` (the
grid stretched over the image, as cv2.resize and pytorch-grad-cam do), on real maps of the
default model and in closed form."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam.utils.image import scale_cam_image

import camtool
from camtool.errors import InvalidArgumentError
from camtool.geometry import FeatureGeometry
from camtool.io.images import load_image
from camtool.render import normalize_cams, upsample_cams
from tests.conftest import CAT, camtool_cli


@pytest.fixture(scope="module")
def cat_maps() -> camtool.Explanation:
    return camtool.explain(CAT, classes=[285, 281], device="cpu")


def test_cv2_resize_bilinear_on_a_2x2_map_in_closed_form() -> None:
    # cv2.resize maps output pixel p to source x = (p + 0.5) * 2 / 4 - 0.5, held inside [0, 1]:
    # x = 0, 0.25, 0.75, 1 -> a, (3a + b) / 4, (a + 3b) / 4, b along each axis.
    a, b, c, d = 1.0, 5.0, -3.0, 9.0
    cam = torch.tensor([[[a, b], [c, d]]])
    line = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    expected = line @ cam[0] @ line.T
    by_cv2 = cv2.resize(cam[0].numpy(), (4, 4), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(by_cv2, expected.numpy(), rtol=0, atol=1e-6)
    stretched = upsample_cams(cam, (64, 64), (4, 4), upsample="stretch")[0]
    torch.testing.assert_close(stretched, expected, rtol=0, atol=1e-6)
    # "placed" with cells that are not where a stretch puts them (padding shifted them down
    # and right by a quarter cell) gives other values from the same map.
    shifted = FeatureGeometry((40.0, 40.0), (32.0, 32.0))
    placed = upsample_cams(cam, (64, 64), (4, 4), shifted, "placed")[0]
    assert not torch.allclose(placed, expected, atol=1e-3)


def test_stretch_equals_cv2_resize_and_pytorch_grad_cam_on_real_maps(
    cat_maps: camtool.Explanation,
) -> None:
    raw = cat_maps.maps  # [2,7,7] logit contributions
    height, width = cat_maps.image.shape[1:]
    stretched = upsample_cams(raw, cat_maps.input_hw, (height, width), cat_maps.geometry, "stretch")
    for k in range(2):
        by_cv2 = cv2.resize(raw[k].numpy(), (width, height), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(stretched[k].numpy(), by_cv2, rtol=0, atol=1e-4)
    by_torch = F.interpolate(raw[None], (height, width), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(stretched, by_torch, rtol=0, atol=1e-4)
    # pytorch-grad-cam normalises each map to [0, 1] (dividing by max + 1e-7), then resizes.
    theirs = scale_cam_image(raw.numpy(), (int(width), int(height)))
    ours = upsample_cams(normalize_cams(raw), cat_maps.input_hw, (height, width), None, "stretch")
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=0, atol=1e-5)


def test_explain_with_stretch_gives_the_stretched_heatmaps_and_placed_keeps_its_values(
    cat_maps: camtool.Explanation,
) -> None:
    assert cat_maps.upsample == "placed" and cat_maps.to_dict()["upsample"] == "placed"
    height, width = cat_maps.image.shape[1:]
    placed = upsample_cams(
        normalize_cams(cat_maps.maps), cat_maps.input_hw, (height, width), cat_maps.geometry
    )
    assert torch.equal(cat_maps.heatmaps, placed)  # the default: what camtool always drew
    # The values camtool drew before the option existed (computed with the previous release).
    assert cat_maps.boxes == ((0, 0, 443, 300), (0, 0, 442, 300))
    sums = [float(cat_maps.heatmaps[k].sum()) for k in range(2)]
    assert sums == pytest.approx([66741.69, 61794.43], abs=0.05)
    picked = [
        float(cat_maps.heatmaps[0, y, x]) for y, x in ((0, 0), (150, 200), (299, 450), (40, 300))
    ]
    assert picked == pytest.approx([0.0, 0.550772, 0.020239, 0.379832], abs=2e-6)
    stretched = camtool.explain(CAT, classes=[285, 281], device="cpu", upsample="stretch")
    assert torch.equal(stretched.maps, cat_maps.maps)  # the raw maps are the same
    assert stretched.upsample == "stretch" and stretched.to_dict()["upsample"] == "stretch"
    for k in range(2):
        normalised = normalize_cams(cat_maps.maps)[k].numpy()
        by_cv2 = cv2.resize(normalised, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(stretched.heatmaps[k].numpy(), by_cv2, rtol=0, atol=1e-5)
    gap = (stretched.heatmaps - cat_maps.heatmaps).abs().max()
    assert 0.05 < float(gap) < 0.5  # the grid lies elsewhere: up to half a cell apart
    assert stretched.boxes[0] == (0, 0, 423, 300)
    with pytest.raises(
        InvalidArgumentError, match=r"^smooth: unknown upsampling; choose one of placed, stretch$"
    ):
        camtool.explain(CAT, device="cpu", upsample="smooth")


def test_method_maps_upsample_as_asked(lite0: camtool.LoadedModel) -> None:
    image = (load_image(CAT).float() / 255)[None]
    image = F.interpolate(image, (224, 224), mode="bilinear", antialias=True)
    classes = torch.tensor([285])
    placed = camtool.metrics.method_maps(lite0, "cam")(image, classes)
    stretched = camtool.metrics.method_maps(lite0, "cam", upsample="stretch")(image, classes)
    torch.testing.assert_close(stretched.cells, placed.cells)
    by_cv2 = cv2.resize(placed.cells[0].numpy(), (224, 224), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(stretched.maps[0].numpy(), by_cv2, rtol=0, atol=1e-4)
    assert not torch.allclose(stretched.maps, placed.maps, atol=1e-3)


def test_the_cli_takes_upsample_and_records_it(tmp_path: Path) -> None:
    done = camtool_cli("explain", str(CAT), "--upsample", "stretch", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["rendering"]["upsample"] == "stretch"
    assert doc["images"][0]["upsample"] == "stretch"
    assert doc["images"][0]["explained"][0]["box"] == [0, 0, 423, 300]
    done = camtool_cli("export", str(CAT), "-o", str(tmp_path / "out"), "--upsample", "stretch")
    assert done.returncode == 0, done.stderr
    manifest = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").open()]
    assert [r["settings"]["upsample"] for r in manifest if "settings" in r] == ["stretch"]
    done = camtool_cli("export", str(CAT), "-o", str(tmp_path / "out"), "--resume")
    assert done.returncode == 2
    assert 'upsample: "stretch" -> "placed"' in done.stderr
    done = camtool_cli("explain", str(CAT), "--upsample", "cubic")
    assert done.returncode == 2
    assert "'cubic' is not one of 'placed', 'stretch'" in done.stderr
