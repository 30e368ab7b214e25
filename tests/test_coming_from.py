"""Every snippet of docs/coming-from.md runs, in order, in one namespace: the peers' (against
pytorch-grad-cam and torchcam) and camtool's, on a torchvision ResNet-18 and a timm ViT-Tiny with
random weights and the bundled cat photo."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image

from tests.conftest import CAT, ROOT

PAGE = ROOT / "docs" / "coming-from.md"


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text("utf-8"), re.DOTALL)


def test_every_snippet_of_the_page_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    img = Image.open(CAT).convert("RGB")
    small = np.asarray(img.resize((224, 224), Image.BILINEAR), dtype=np.float32) / 255
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    batch = torch.from_numpy(((small - mean) / std).astype(np.float32)).permute(2, 0, 1)[None]
    (tmp_path / "photos").mkdir()
    img.save(tmp_path / "cat.jpg")
    shutil.copy(CAT, tmp_path / "photos" / "chelsea.png")
    monkeypatch.chdir(tmp_path)
    space: dict[str, Any] = {
        "model": torchvision.models.resnet18(weights=None).eval(),
        "vit": timm.create_model("vit_tiny_patch16_224", pretrained=False).eval(),
        "img": img,
        "batch": batch,
        "rgb_float_224": small,
    }
    found = snippets()
    assert len(found) >= 12
    for code in found:
        exec(compile(code, f"{PAGE.name} snippet", "exec"), space)
    assert os.path.isfile("cat_gradcam.png")
    picture = space["picture"]
    assert picture.shape == (3, 300, 451) and picture.dtype == torch.uint8
    assert [len(space["exs"]), space["ex"].explained[0].index] == [4, 281]
    assert space["grayscale"].shape == (4, 224, 224)
