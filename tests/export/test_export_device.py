"""The device runner on CPU tensors: the local runner's files and manifest, the CPU fallback for
files the device decoder cannot take, CUDA out-of-memory retried with smaller batches, Ctrl-C
and resume."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn

import camtool
from camtool.export import ExportOptions, export, read_manifest
from camtool.export.decoding import Read, decode_on_device, jpeg_decoder
from camtool.inputs import InputItem
from tests.conftest import CAT, EXAMPLES, foolbox_photos, make_odd_inputs

BOOKKEEPING = {"manifest.jsonl", "summary.json"}
CLI = [sys.executable, "-m", "camtool.cli"]

#: The bound on overlay pixels between the runners: the device runner computes the same
#: float32 formulas as the local one (OpenCV's blend rounds like torch's), so on the CPU the
#: files come out identical (0 measured); 2 levels would allow one rounding step each way.
PIXEL_BOUND = 2


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def photo_folder(root: Path) -> Path:
    """Real photos: the bundled examples, three foolbox photos, odd layouts (CMYK, EXIF-rotated,
    gray, 16-bit, RGBA), a progressive JPEG and a file that is no image."""
    root.mkdir()
    for path in [*EXAMPLES.glob("*.png"), EXAMPLES / "grace_hopper.jpg"]:
        shutil.copy(path, root / path.name)
    for path, _ in foolbox_photos()[:3]:
        shutil.copy(path, root / path.name)
    make_odd_inputs(root / "odd")
    Image.open(CAT).convert("RGB").save(root / "odd" / "progressive.jpg", progressive=True)
    (root / "notes.jpg").write_text("these are not pixels")
    return root


def records_without_folder(out: Path) -> dict[str, Any]:
    """The manifest's image records, with the output folder cut from their output paths."""
    records, _ = read_manifest(out / "manifest.jsonl")
    return json.loads(json.dumps(records).replace(str(out), "OUT"))


def worst_pixel_difference(a: Path, b: Path, names: set[str]) -> int:
    worst = 0
    for name in names:
        if name.endswith((".png", ".jpg")):
            one, two = camtool.load_image(a / name).int(), camtool.load_image(b / name).int()
            worst = max(worst, int((one - two).abs().max()))
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    return worst


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return photo_folder(tmp_path_factory.mktemp("device") / "in")


@pytest.mark.parametrize(
    ("options", "settings"),
    [
        (ExportOptions(image_format="png", box=True, heatmap=True, raw="npz"), {}),
        (ExportOptions(image_format="jpg", legend=True), {"crop": True, "maps": 2}),
    ],
    ids=["png-box-heatmap-raw", "jpg-crop-two-maps-legend"],
)
def test_device_runner_on_cpu_writes_the_local_runners_files(
    tmp_path: Path,
    photos: Path,
    lite0: camtool.LoadedModel,
    options: ExportOptions,
    settings: dict[str, Any],
) -> None:
    inputs = photos if options.image_format == "png" else photos / "odd"
    reports = {
        runner: export(
            [inputs],
            tmp_path / runner,
            lite0,
            options=options,
            runner=runner,
            batch_size=4,
            **settings,
        )
        for runner in ("local", "device")
    }
    names = files_under(tmp_path / "local")
    assert files_under(tmp_path / "device") == names
    for odd in ("cmyk", "rotated", "progressive", "gray", "deep16", "rgba"):  # the CPU fallbacks
        assert any(f"{odd}_cam_" in name for name in names), odd
    if inputs == photos:
        assert reports["device"].exported == reports["local"].exported == 13
        assert reports["device"].failed == reports["local"].failed == 1  # notes.jpg
        failure = records_without_folder(tmp_path / "device")[str(photos / "notes.jpg")]["error"]
        assert failure.endswith("not an image file that OpenCV can decode")
    assert (
        worst_pixel_difference(tmp_path / "local", tmp_path / "device", names - BOOKKEEPING)
        <= PIXEL_BOUND
    )
    local, device = (
        records_without_folder(tmp_path / "local"),
        records_without_folder(tmp_path / "device"),
    )
    assert device == local  # predictions, classes, boxes, residuals, outputs, failures


def test_files_the_device_decoder_refuses_are_decoded_on_the_cpu(tmp_path: Path) -> None:
    """A batch where one file's bytes are a PNG (the JPEG decoder refuses them, and with them
    the batch): every JPEG is still decoded, and the PNG is decoded by OpenCV, not lost."""
    png, jpg = EXAMPLES / "coffee.png", EXAMPLES / "grace_hopper.jpg"
    items = [InputItem(jpg, Path("a")), InputItem(png, Path("b")), InputItem(jpg, Path("c"))]
    decoder = jpeg_decoder()
    assert decoder is not None
    reads = [
        Read(0, data=jpg.read_bytes(), size=(600, 512)),
        Read(1, data=png.read_bytes(), size=(400, 400)),
        Read(2, data=jpg.read_bytes(), size=(600, 512)),
    ]
    with pytest.raises(Exception):  # noqa: B017  the real decoder refuses PNG bytes
        decoder([r.data or b"" for r in reads], torch.device("cpu"))
    images = decode_on_device(reads, items, decoder, torch.device("cpu"))
    for item, image in zip(items, images, strict=True):
        assert isinstance(image, torch.Tensor)
        assert torch.equal(image, camtool.load_image(item.path))
    fallback = jpeg_decoder("torchvision")
    assert fallback is not None
    assert torch.equal(fallback([jpg.read_bytes()], torch.device("cpu"))[0], images[0])


class RefusesLargeBatches(nn.Module):
    """A real network that runs out of memory as a GPU would: for batches above two images, and
    for any batch holding a panorama's input (more than 224 x 600 pixels)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.shape[0] > 2 or batch.shape[-1] * batch.shape[-2] > 224 * 600:
            raise torch.OutOfMemoryError(f"CUDA out of memory: a batch of {batch.shape[0]}")
        result: torch.Tensor = self.inner(batch)
        return result


def test_out_of_memory_halves_the_batch_and_fails_only_what_cannot_fit(
    tmp_path: Path, lite0: camtool.LoadedModel
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    cat = Image.open(CAT).convert("RGB")
    for i in range(7):
        cat.resize((160, 120)).rotate(40 * i).save(folder / f"cat{i}.png")
    cat.resize((1200, 300)).save(folder / "panorama.png")
    picky = dataclasses.replace(lite0, module=RefusesLargeBatches(lite0.module))
    options = ExportOptions(image_format="png")
    report = export([folder], tmp_path / "out", picky, options=options, runner="device",
                    batch_size=8)  # fmt: skip
    assert (report.exported, report.failed) == (7, 1)
    (failure,) = report.failures
    assert failure.input == str(folder / "panorama.png")
    assert (
        failure.error
        == f"{folder / 'panorama.png'}: out of memory on cpu even for this image alone (batch of 1)"
    )
    plain = export([folder], tmp_path / "plain", lite0, options=options, runner="device",
                   batch_size=8)  # fmt: skip
    assert plain.exported == 8
    written = files_under(tmp_path / "out") - BOOKKEEPING
    assert len(written) == 7 and written < files_under(tmp_path / "plain")
    assert worst_pixel_difference(tmp_path / "out", tmp_path / "plain", written) <= PIXEL_BOUND


def test_interrupt_leaves_complete_files_and_resume_finishes(
    tmp_path: Path, lite0: camtool.LoadedModel
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    cat = Image.open(CAT).convert("RGB").resize((160, 120))
    for i in range(20):
        cat.rotate(18 * i).save(folder / f"img{i:02d}.jpg", quality=90)
    export(
        [folder],
        tmp_path / "clean",
        lite0,
        options=ExportOptions(image_format="png"),
        runner="local",
    )
    args = [*CLI, "export", str(folder), "--runner", "device", "--device", "cpu", "--format", "png",
            "--batch-size", "2", "--workers", "1", "-q", "-o", str(tmp_path / "out")]  # fmt: skip
    out = tmp_path / "out"
    process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        records, _ = read_manifest(out / "manifest.jsonl")
        if len(records) >= 4:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    records, _ = read_manifest(out / "manifest.jsonl")
    assert 4 <= len(records) < 20
    assert err.endswith("run the same command with --resume to finish\n") and err.count("\n") == 1
    listed = {str(Path(p).relative_to(out)) for r in records.values() for p in r["outputs"]}
    assert files_under(out) == listed | BOOKKEEPING  # no partial files, nothing unlisted
    for name in listed:
        assert camtool.load_image(out / name).shape[0] == 3

    resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert files_under(out) == files_under(tmp_path / "clean")
    names = files_under(out) - BOOKKEEPING
    assert worst_pixel_difference(out, tmp_path / "clean", names) <= PIXEL_BOUND
