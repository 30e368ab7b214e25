"""Hardening of everything camtool reads: special files, size limits, native libraries' messages,
the Python API's odd inputs, and the one list of image formats."""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import camtool
from camtool.errors import ClassSelectionError, ImageReadError
from camtool.io.files import read_file
from camtool.io.images import image_suffixes
from camtool.labels import resolve_class
from tests.conftest import CAT, ROOT

TIMEOUT = 180  # a regression that blocks on a FIFO fails here instead of hanging the suite
MEMORY = (
    8 << 30
)  # and one that reads /dev/zero fails with a MemoryError, not by filling the machine


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def camtool_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the real command in a fresh process, as a user does."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CAMTOOL_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "camtool.cli", *args],
        capture_output=True, text=True, timeout=TIMEOUT, env=env, preexec_fn=limit_memory,
    )  # fmt: skip


def in_subprocess(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, env=env,
        preexec_fn=limit_memory,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# 1. Only regular files are read, and never more than a limit


def test_explain_refuses_a_fifo_and_a_link_to_dev_zero(tmp_path: Path) -> None:
    fifo, zero = tmp_path / "y.png", tmp_path / "z.png"
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")
    result = camtool_cli("explain", str(fifo), str(zero), str(CAT), "-o", str(tmp_path / "out"))
    assert result.returncode == 3, result.stderr
    assert result.stderr == (
        f"Error: {fifo}: not a regular file (a FIFO)\n"
        f"Error: {zero}: not a regular file (a character device)\n"
    )


def test_export_records_a_fifo_as_failed_and_exports_the_rest(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(CAT, folder / "a.png")
    os.mkfifo(folder / "b.png")
    out = tmp_path / "out"
    result = camtool_cli("export", str(folder), "-o", str(out), "-q", "--workers", "1")
    assert result.returncode == 3, result.stderr
    assert result.stderr == f"Error: {folder / 'b.png'}: not a regular file (a FIFO)\n"
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    status = {Path(r["input"]).name: r["status"] for r in records if r["type"] == "image"}
    assert status == {"a.png": "ok", "b.png": "failed"}


def test_labels_list_and_card_fifos_are_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "labels.txt"
    os.mkfifo(fifo)
    result = camtool_cli("explain", str(CAT), "--labels", str(fifo), "-o", str(tmp_path / "o"))
    assert (result.returncode, result.stderr) == (
        1,
        f"Error: {fifo}: not a regular file (a FIFO)\n",
    )

    listed = tmp_path / "list.txt"
    os.mkfifo(listed)
    card = tmp_path / "card.toml"
    os.mkfifo(card)
    probe = in_subprocess(
        "from pathlib import Path\n"
        "from camtool.export import collect_inputs\n"
        "from camtool.errors import ModelLoadError\n"
        "from camtool.models.cards import read_card\n"
        f"items, failures = collect_inputs(['@{listed}'])\n"
        "print(items, [f.error for f in failures])\n"
        "try:\n"
        f"    read_card({str(card)!r})\n"
        "except ModelLoadError as exc:\n"
        "    print(exc)\n"
    )
    assert probe.stdout.splitlines() == [
        "[] ['cannot read list: not a regular file (a FIFO)']",
        f"{card}: not a regular file (a FIFO)",
    ], probe.stderr


def test_weights_and_manifest_fifos_are_refused_without_blocking(tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    os.mkfifo(weights)
    result = camtool_cli("inspect", "resnet18", "--weights", str(weights))
    assert (result.returncode, result.stderr) == (
        1,
        f"Error: {weights}: not a regular file (a FIFO)\n",
    )
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "manifest.jsonl")
    result = camtool_cli("report", str(out))
    assert (result.returncode, result.stderr) == (
        1,
        f"Error: {out / 'manifest.jsonl'}: not a regular file (a FIFO)\n",
    )


def test_text_and_image_reads_stop_at_their_limits(tmp_path: Path) -> None:
    zero = tmp_path / "labels.txt"
    zero.symlink_to("/dev/zero")
    probe = in_subprocess(
        "from camtool.errors import ModelLoadError\n"
        "from camtool.models.cards import load_labels\n"
        "try:\n"
        f"    load_labels({str(zero)!r})\n"
        "except ModelLoadError as exc:\n"
        "    print(exc)\n"
    )
    assert probe.stdout == f"{zero}: not a regular file (a character device)\n", probe.stderr
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 11)
    assert read_file(big, 11) == b"x" * 11
    with pytest.raises(ImageReadError, match="more than 10 bytes"):
        read_file(big, 10)
    with pytest.raises(ImageReadError, match="is a directory, not an image file"):
        read_file(tmp_path, 10)


# --------------------------------------------------------------------------------------------
# 13. Native libraries' messages never reach stderr


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def gray_png(width: int, height: int, rows: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def corrupt_inputs(folder: Path) -> dict[str, Path]:
    """A PNG whose zlib stream is broken, one with an unknown row filter (both with valid CRCs),
    a JPEG with garbage in its entropy-coded data (EOI kept), and a truncated MP4."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    rows = b"".join(b"\0" + bytes(48) for _ in range(48))
    stream = bytearray(zlib.compress(rows))
    stream[5:-4] = bytes(b ^ 0x55 for b in stream[5:-4])
    header = struct.pack(">IIBBBBB", 48, 48, 8, 0, 0, 0, 0)
    (folder / "zlib.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", bytes(stream))
        + png_chunk(b"IEND", b"")
    )  # fmt: skip
    (folder / "filter.png").write_bytes(
        gray_png(48, 48, b"".join(b"\x07" + bytes(48) for _ in range(48)))
    )
    jpeg = bytearray(cv2.imencode(".jpg", pixels)[1].tobytes())
    scan = jpeg.find(b"\xff\xda")
    for i in range(scan + 30, scan + 200):
        jpeg[i] = 0xFF if i % 7 == 0 else jpeg[i] ^ 0x5A
    (folder / "garbage.jpg").write_bytes(bytes(jpeg))
    writer = cv2.VideoWriter(str(folder / "ok.mp4"), cv2.VideoWriter.fourcc(*"mp4v"), 10, (48, 48))
    for _ in range(10):
        writer.write(pixels)
    writer.release()
    video = (folder / "ok.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(video[: len(video) // 2])
    return {p.stem: p for p in folder.iterdir()}


def test_corrupt_files_give_one_error_line_and_nothing_from_native_libraries(
    tmp_path: Path,
) -> None:
    bad = corrupt_inputs(tmp_path / "in")
    out = str(tmp_path / "out")
    result = camtool_cli("explain", str(bad["zlib"]), str(bad["filter"]), str(bad["truncated"]), str(CAT), "-o", out)  # fmt: skip
    assert result.returncode == 3
    assert result.stderr == (
        f"Error: {bad['zlib']}: corrupt PNG (its image data does not inflate)\n"
        f"Error: {bad['filter']}: corrupt PNG (a row has an unknown filter type)\n"
        f"Error: {bad['truncated']}: not a video OpenCV can read (or no frame could be decoded)\n"
    )
    result = camtool_cli("explain", str(bad["garbage"]), "-o", out)  # libjpeg warns, decodes
    assert (result.returncode, result.stderr) == (0, "")


def test_library_warnings_do_not_reach_stderr() -> None:
    """torchvision warns (two lines, FutureWarning) when GoogLeNet is built without weights."""
    result = camtool_cli("inspect", "googlenet", "--json")
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert json.loads(result.stdout)["classes"] == 1000


# --------------------------------------------------------------------------------------------
# 14. The Python API's odd inputs


def test_pil_modes_i_and_f_take_their_range_from_the_values() -> None:
    gray = Image.open(CAT).convert("L")
    expected = camtool.load_image(gray)
    as_int = Image.fromarray(np.asarray(gray).astype(np.int32), mode="I")
    assert torch.equal(camtool.load_image(as_int), expected)  # 0..255: 8-bit
    deep = Image.fromarray(np.asarray(gray).astype(np.int32) * 257, mode="I")
    assert torch.equal(camtool.load_image(deep), expected)  # 0..65535: 16-bit
    fraction = Image.fromarray(np.asarray(gray).astype(np.float32) / 255, mode="F")
    assert torch.equal(camtool.load_image(fraction), expected)  # [0, 1]
    eight_bit = Image.fromarray(np.asarray(gray).astype(np.float32), mode="F")
    assert torch.equal(camtool.load_image(eight_bit), expected)  # [0, 255]


def test_nan_pixels_are_refused() -> None:
    image = torch.rand(3, 8, 8)
    image[1, 2, 3] = float("nan")
    with pytest.raises(ImageReadError, match="NaN or infinite pixels"):
        camtool.load_image(image)
    with pytest.raises(ImageReadError, match="NaN or infinite pixels"):
        camtool.load_image(image.permute(1, 2, 0).numpy())


def test_a_truncated_lazily_opened_pil_image_is_an_image_read_error(tmp_path: Path) -> None:
    data = CAT.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with (
        Image.open(tmp_path / "cut.png") as picture,
        pytest.raises(ImageReadError, match="<PngImageFile>: cannot decode"),
    ):
        camtool.load_image(picture)


def test_integer_like_classes_are_accepted_and_floats_and_bools_refused(
    lite0: camtool.LoadedModel,
) -> None:
    labels = lite0.labels
    assert resolve_class(np.int64(285), labels) == 285
    assert resolve_class(torch.tensor(285), labels) == 285
    ex = camtool.explain(CAT, lite0, classes=[np.int64(285), torch.tensor(281)])
    assert [s.index for s in ex.explained] == [285, 281]
    for wrong in (
        285.0,
        np.float32(285),
        True,
        np.bool_(True),
        torch.tensor(285.0),
        torch.tensor(True),
    ):
        with pytest.raises(ClassSelectionError):
            resolve_class(wrong, labels)  # type: ignore[arg-type]


def test_max_pixels_alone_decides_even_above_opencvs_default(tmp_path: Path) -> None:
    """A real 12000x12000 (144 MP) PNG: refused under the default limit, read with a higher one
    (OpenCV's own limit, fixed when it loads, must not refuse it)."""
    rows = bytes(12000 // 8 + 1) * 12000  # 1-bit gray, all black: 18 MB inflated, 20 kB on disk
    header = struct.pack(">IIBBBBB", 12000, 12000, 1, 0, 0, 0, 0)
    path = tmp_path / "huge.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(rows, 9))
        + png_chunk(b"IEND", b"")
    )  # fmt: skip
    probe = in_subprocess(  # camtool first, as for a user: cv2 is loaded by camtool.io
        "import camtool\n"
        "from camtool.errors import ImageTooLargeError\n"
        "for limit in (None, 10**7):\n"
        "    try:\n"
        f"        camtool.load_image({str(path)!r}, max_pixels=limit)\n"
        "    except ImageTooLargeError as exc:\n"
        "        print(exc.problem)\n"
        f"image = camtool.load_image({str(path)!r}, max_pixels=10**9)\n"
        "print(tuple(image.shape), int(image.max()))\n"
    )
    assert probe.stdout.splitlines() == [
        "image is 12000x12000 = 144 megapixels, above the limit of 100 (set CAMTOOL_MAX_PIXELS to raise it)",
        "image is 12000x12000 = 144 megapixels, above the limit of 10 (set CAMTOOL_MAX_PIXELS to raise it)",
        "(3, 12000, 12000) 0",
    ], probe.stderr  # in_subprocess bounds the run: a hang fails at its timeout


# --------------------------------------------------------------------------------------------
# 15a. One list of image formats, for the folder walk and the reader


def test_a_folder_of_gif_and_avif_is_exported(tmp_path: Path, lite0: camtool.LoadedModel) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    picture = Image.open(CAT).convert("RGB").resize((96, 64))
    picture.save(folder / "cat.gif")
    picture.save(folder / "cat2.avif")
    report = camtool.export([folder], tmp_path / "out", lite0, workers=0)
    assert (report.exported, report.failed) == (2, 0), report.failures
    assert {".gif", ".avif", ".png", ".jpg", ".webp"} <= image_suffixes()


@pytest.mark.parametrize(
    ("dtype", "value", "found"),
    [
        (np.int64, 40000, "40000..40000"),  # was clamped to 255
        (np.int32, 40000, "40000..40000"),  # was divided by 257: int64 and int32 disagreed
        (np.int32, 70000, "70000..70000"),  # was wrapped to 16
        (np.int16, -5, "-5..-5"),  # was clamped to 0
        (np.uint32, 300, "300..300"),
    ],
)
def test_integer_pixels_outside_0_255_are_refused_naming_the_argument_dtype_and_range(
    dtype: type, value: int, found: str
) -> None:
    pixels = np.full((20, 20, 3), value, dtype)
    name = np.dtype(dtype).name
    message = rf"^image: {name} pixels must lie in 0\.\.255, found {found} \(pass uint8"
    with pytest.raises(ImageReadError, match=message):
        camtool.overlay(pixels, np.zeros((2, 2)), alpha=0)
    with pytest.raises(ImageReadError, match=rf"^images: {name} pixels must lie in 0\.\.255"):
        camtool.explain(pixels, "efficientnet_lite0", device="cpu")


def test_bool_pixels_are_refused_and_in_range_integers_uint16_and_floats_are_read() -> None:
    with pytest.raises(ImageReadError, match=r"^image: bool pixels are no image: pass uint8"):
        camtool.overlay(np.full((20, 20, 3), True), np.zeros((2, 2)), alpha=0)  # was black
    with pytest.raises(ImageReadError, match=r"^images\[0\]: bool pixels are no image"):
        camtool.explain([torch.ones(3, 20, 20, dtype=torch.bool)], "efficientnet_lite0")
    gray = np.asarray(Image.open(CAT).convert("L"))
    expected = camtool.load_image(gray)
    for dtype in (np.int8 if gray.max() < 128 else np.int16, np.int32, np.int64, np.uint32):
        assert torch.equal(camtool.load_image(gray.astype(dtype)), expected)
    assert torch.equal(camtool.load_image(gray.astype(np.uint16) * 257), expected)
    assert torch.equal(camtool.load_image(gray.astype(np.float32) / 255), expected)
