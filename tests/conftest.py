"""Shared fixtures: the real default model, bundled photos, and a folder of bad inputs."""

from __future__ import annotations

import importlib.util
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import camtool
from camtool.methods.cam import CamExplainer
from camtool.methods.heads import CamHead

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CAT = EXAMPLES / "chelsea.png"
COFFEE = EXAMPLES / "coffee.png"
CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


def camtool_cli(
    *args: str, stdout: int | None = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    """Run the camtool command in a process of its own (this checkout first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "camtool.cli", *args],
        stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120, env=env,
    )  # fmt: skip


def cam_head(model: camtool.LoadedModel, **overrides: str) -> CamHead:
    """The CAM head the ``cam`` method binds to (``layer=``/``classifier=`` override discovery)."""
    explainer = camtool.methods.bind("cam", model, **overrides)
    assert isinstance(explainer, CamExplainer)
    return explainer.head


@pytest.fixture(scope="session")
def lite0() -> camtool.LoadedModel:
    return camtool.load_model("efficientnet_lite0")


def foolbox_photos() -> list[tuple[Path, int]]:
    """The 20 labelled ImageNet photos that ship inside the foolbox wheel: (path, class index)."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("foolbox is not installed: run scripts/setup.sh test")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    photos = []
    for path in sorted(folder.glob("imagenet_*.jpg")):
        match = re.fullmatch(r"imagenet_\d+_(\d+)\.jpg", path.name)
        assert match, path
        photos.append((path, int(match[1])))
    assert len(photos) == 20
    return photos


def png_with_size(path: Path, width: int, height: int) -> Path:
    """Write a small PNG whose header claims width x height (for the pixel-limit check)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\0" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    return path


def make_bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    """Write inputs that must be refused: name -> (path, expected problem text)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = Image.open(CAT).convert("RGB")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("these are not pixels")
    good.save(folder / "full.jpg", quality=90)
    data = (folder / "full.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "full.jpg").unlink()
    png = CAT.read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    png_with_size(folder / "huge.png", 20000, 20000)
    return {
        "missing": (folder / "missing.jpg", "no such file"),
        "empty": (folder / "empty.jpg", "file is empty"),
        "not-an-image": (folder / "notes.jpg", "not an image file that OpenCV can decode"),
        "truncated-jpeg": (folder / "truncated.jpg", "truncated JPEG (the image data ends early)"),
        "truncated-png": (folder / "truncated.png", "truncated PNG (the image data ends early)"),
        "huge": (
            folder / "huge.png",
            "image is 20000x20000 = 400 megapixels, above the limit of 100 (set CAMTOOL_MAX_PIXELS to raise it)",
        ),
        "directory": (folder, "is a directory, not an image file"),
    }


def make_odd_inputs(folder: Path) -> dict[str, Path]:
    """Write valid images in unusual layouts: gray, RGBA, 16-bit, CMYK, EXIF-rotated."""
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.open(CAT).convert("RGB")
    image.convert("L").save(folder / "gray.png")
    image.convert("RGBA").save(folder / "rgba.png")
    deep = np.asarray(image).astype(np.uint16) * 257
    cv2.imwrite(str(folder / "deep16.png"), np.ascontiguousarray(deep[:, :, ::-1]))
    image.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(folder / "rotated.jpg", exif=exif, quality=95)
    return {p.stem: p for p in folder.iterdir()}
