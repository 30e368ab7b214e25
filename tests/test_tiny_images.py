"""Overlays of tiny images (a 28x28 Fashion-MNIST photo) are enlarged to a readable size, each
pixel a block; the JSON keeps the image's own size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import camtool
from camtool.export import ExportOptions
from camtool.image import enlargement
from camtool.io.images import load_image
from camtool.render import legend_height
from tests.conftest import camtool_cli, foolbox_photos


@pytest.fixture(scope="module")
def fashion() -> Path:
    folder = foolbox_photos()[0][0].parent
    return folder / "fashionMNIST_00_9.png"  # a 28x28 gray ankle boot


def test_explain_enlarges_a_28_px_overlay_and_its_legend(fashion: Path, tmp_path: Path) -> None:
    assert load_image(fashion).shape == (3, 28, 28)
    assert enlargement(28, 28) == 8 and enlargement(224, 300) == 1 and enlargement(10, 4000) == 1
    assert legend_height(224) == 42  # three rows of 14 px (it was 3 rows of 14 px under 28 px)
    done = camtool_cli("explain", str(fashion), "--legend", "--box", "--json", "-o", str(tmp_path))
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)["images"][0]
    assert (doc["width"], doc["height"], doc["overlay_scale"]) == (28, 28, 8)
    saved = load_image(Path(doc["outputs"][0]))
    assert saved.shape == (3, 224 + 42, 224)
    photo = saved[:, :224]
    blocks = photo.reshape(3, 28, 8, 28, 8)  # every source pixel an 8x8 block ...
    box = doc["explained"][0]["box"]
    inside = blocks[:, box[1] + 1 : box[3] - 1, :, box[0] + 1 : box[2] - 1]  # ... off the box line
    assert torch.equal(inside, inside[:, :, :1, :, :1].expand_as(inside))
    legend = saved[:, 224:]
    assert int((legend == 255).all(dim=0).sum()) > legend[0].numel() // 2  # a white band
    ex = camtool.explain(fashion, device="cpu")
    assert torch.equal(ex.overlay(box=True, legend=True).tensor, saved)


@pytest.mark.parametrize("runner", ["local", "device"])
def test_export_enlarges_it_alike(fashion: Path, tmp_path: Path, runner: str) -> None:
    options = ExportOptions(image_format="png", legend=True)
    report = camtool.export([fashion], tmp_path, options=options, runner=runner, device="cpu")
    assert report.exported == 1
    (picture,) = sorted(tmp_path.glob("*_cam_*.png"))
    expected = camtool.explain(fashion, device="cpu").overlay(legend=True).tensor
    got = load_image(picture)
    assert got.shape == (3, 266, 224)
    assert int((got.int() - expected.int()).abs().max()) <= 1


def test_a_tiny_video_keeps_its_frame_size(tmp_path: Path) -> None:
    from camtool.io.videos import open_video
    from tests.test_video import make_clip

    clip = make_clip(tmp_path / "tiny.avi", frames=3, size=(64, 48))
    report = camtool.explain_video(clip, tmp_path / "tiny_cam.avi", device="cpu")
    info, frames = open_video(report.output)
    assert (info.width, info.height, report.frames) == (64, 48, 3)
    assert [tuple(f.shape) for f in frames] == [(3, 48, 64)] * 3
