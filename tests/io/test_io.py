"""Image input: every layout a photo comes in, and every way a file can be bad."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import camtool
from camtool.errors import ImageReadError, ImageTooLargeError
from tests.conftest import CAT, make_bad_inputs, make_odd_inputs


@pytest.fixture(scope="module")
def cat() -> torch.Tensor:
    return camtool.load_image(CAT)


def test_png_loads_as_rgb_uint8_chw(cat: torch.Tensor) -> None:
    assert cat.shape == (3, 300, 451) and cat.dtype == torch.uint8
    reference = np.array(Image.open(CAT).convert("RGB"))
    assert torch.equal(cat, torch.from_numpy(reference).permute(2, 0, 1))


def test_decoded_files_are_stored_channels_last_so_render_and_resize_copy_nothing(
    tmp_path: Path, cat: torch.Tensor
) -> None:
    # [3,H,W] views of the decoder's [H,W,3] pixels: the OpenCV overlay and the uint8 resize
    # read them as they are (a channels-first copy cost ~1 ms per 640x480 photo, twice)
    jpeg = tmp_path / "cat.jpg"
    Image.open(CAT).convert("RGB").save(jpeg, quality=95)
    for image in (cat, camtool.load_image(jpeg)):
        assert image.shape[0] == 3 and image.permute(1, 2, 0).is_contiguous()
    assert torch.equal(
        camtool.load_image(jpeg), torch.from_numpy(np.array(Image.open(jpeg))).permute(2, 0, 1)
    )
    gray = tmp_path / "gray.png"
    Image.open(CAT).convert("L").save(gray)
    assert camtool.load_image(gray).shape == (3, 300, 451)  # one channel repeated


def test_tensor_array_and_pil_inputs_equal_the_file(cat: torch.Tensor) -> None:
    pil = Image.open(CAT)
    array = np.asarray(pil.convert("RGB"))
    assert torch.equal(camtool.load_image(pil), cat)
    assert torch.equal(camtool.load_image(array), cat)
    assert torch.equal(camtool.load_image(cat.clone()), cat)
    assert torch.equal(camtool.load_image(cat.float() / 255), cat)


def test_odd_layouts_load_as_three_channels(tmp_path: Path, cat: torch.Tensor) -> None:
    odd = make_odd_inputs(tmp_path)
    for name in ("gray", "rgba", "deep16", "cmyk"):
        image = camtool.load_image(odd[name])
        assert image.shape == (3, 300, 451) and image.dtype == torch.uint8, name
    assert torch.equal(camtool.load_image(odd["rgba"]), cat)
    assert torch.equal(camtool.load_image(odd["deep16"]), cat)
    gray = camtool.load_image(odd["gray"])
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    cmyk = camtool.load_image(odd["cmyk"])
    assert (cmyk.float() - cat.float()).abs().mean() < 6


def test_exif_orientation_is_applied(tmp_path: Path, cat: torch.Tensor) -> None:
    rotated = camtool.load_image(make_odd_inputs(tmp_path)["rotated"])
    assert rotated.shape == (3, 451, 300)  # shown upright, as a photo viewer shows it
    expected = torch.rot90(cat, k=-1, dims=(1, 2))  # orientation 6: rotate 90 degrees clockwise
    assert (rotated.float() - expected.float()).abs().mean() < 4


@pytest.mark.parametrize(
    "case",
    ["missing", "empty", "not-an-image", "truncated-jpeg", "truncated-png", "huge", "directory"],
)
def test_bad_inputs_raise_one_line_errors_naming_the_file(tmp_path: Path, case: str) -> None:
    path, problem = make_bad_inputs(tmp_path)[case]
    with pytest.raises(ImageReadError) as info:
        camtool.load_image(path)
    assert str(info.value) == f"{path}: {problem}"
    assert "\n" not in str(info.value)


def test_pixel_limit_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMTOOL_MAX_PIXELS", "100000")
    with pytest.raises(ImageTooLargeError, match="451x300 = 0 megapixels, above the limit of 0"):
        camtool.load_image(CAT)
    assert camtool.load_image(CAT, max_pixels=200_000).shape == (3, 300, 451)


def test_bad_tensor_shape_is_refused() -> None:
    with pytest.raises(ImageReadError, match=r"<Tensor>: expected a tensor of shape \[3, H, W\]"):
        camtool.load_image(torch.zeros(2, 5, 5))


def test_save_image_is_atomic_and_keeps_size(tmp_path: Path, cat: torch.Tensor) -> None:
    target = tmp_path / "sub" / "out.png"
    camtool.save_image(target, cat)
    assert torch.equal(camtool.load_image(target), cat)
    assert [p.name for p in target.parent.iterdir()] == ["out.png"]
    with pytest.raises(camtool.OutputWriteError):
        camtool.save_image(tmp_path / "x.png", cat[:2])
    assert not (tmp_path / "x.png").exists()


def test_png_checksums_and_trailing_bytes(tmp_path: Path, cat: torch.Tensor) -> None:
    data = bytearray(CAT.read_bytes())
    data[20] ^= 0x01  # inside IHDR: its CRC no longer matches
    (tmp_path / "crc.png").write_bytes(bytes(data))
    with pytest.raises(
        ImageReadError, match=r"crc.png: corrupt PNG \(bad checksum in its IHDR chunk\)$"
    ):
        camtool.load_image(tmp_path / "crc.png")
    (tmp_path / "trailing.png").write_bytes(CAT.read_bytes() + b"\0" * 5000)
    assert torch.equal(camtool.load_image(tmp_path / "trailing.png"), cat)


def test_pil_16_bit_and_exif_and_float_range(tmp_path: Path, cat: torch.Tensor) -> None:
    gray = np.asarray(Image.open(CAT).convert("L"))
    deep = Image.fromarray(gray.astype(np.uint16) * 257)
    assert torch.equal(camtool.load_image(deep)[0], torch.from_numpy(gray.copy()))
    rotated = Image.open(make_odd_inputs(tmp_path)["rotated"])
    assert camtool.load_image(rotated).shape == (3, 451, 300)
    with pytest.raises(ImageReadError, match=r"^<Tensor>: float pixels must lie in \[0, 1\]"):
        camtool.load_image(cat.float())


def test_panoramas_are_capped_so_the_network_input_stays_bounded() -> None:
    prep = camtool.Preprocessing(input_size=224)
    assert prep.resized_size(300, 451) == (224, 337)
    assert prep.resized_size(20, 10000) == (4, 1792)  # long side capped at 8 x 224
    assert prep.resized_size(10000, 20) == (1792, 4)
    assert prep.resized_size(300, 451, crop=True) == (256, 385)
