"""The device-resident runner: export's stages arranged so that pixels stay on the model's device.

File bytes are read on CPU threads; plain JPEGs are decoded in batches on the device (TorchCodec,
else torchvision's decoder; nvJPEG on CUDA), every other file (PNG, CMYK or rotated JPEGs, files
the device decoder refuses) is decoded by OpenCV on the CPU and moved there. Resizing for the
network, the forward pass and the maps (through the bound method, the same seam as every entry
point), upsampling, the colour map (a 256-entry lookup table), the blend and the box's mask all
run on the device; one batch's device-to-host copy runs on its own CUDA stream while the next
batch computes; files are encoded on CPU threads (OpenCV) and written atomically, and the manifest
is written by :mod:`camtool.export.runner` exactly as for the local runner.

The same code runs on CPU tensors (``device="cpu"``), where it produces the files of the local
runner; a CUDA out-of-memory during a batch is retried with half the batch, down to one image.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from camtool.binding import BoundMethod
from camtool.errors import DeviceMemoryError, InvalidArgumentError
from camtool.export.decoding import JpegDecoder, Read, decode_on_device, jpeg_decoder, read_one
from camtool.export.paint import Painted, paint, write_painted
from camtool.export.stages import ExportOptions, Written
from camtool.image import Region
from camtool.inputs import ExportFailure, InputItem

if TYPE_CHECKING:
    from camtool.export.run import Plan, Recorder

#: Which arrangement of the stages an export runs: ``"local"`` (decode and render on CPU
#: threads, the network on its device), ``"device"`` (this module: pixels on the device), or
#: ``"auto"`` (the device runner when the model runs on a CUDA GPU, else the local one).
Runner = Literal["auto", "local", "device"]
RUNNERS: tuple[str, ...] = ("auto", "local", "device")

#: Images per forward pass of the device runner on a CUDA GPU when none is asked for.
CUDA_BATCH_SIZE = 256


def choose_runner(runner: str, device: torch.device) -> Literal["local", "device"]:
    """The runner an export with ``runner`` uses for a model on ``device``.

    Raises:
        InvalidArgumentError: a name that is not one of :data:`RUNNERS`.
    """
    if runner not in RUNNERS:
        raise InvalidArgumentError(runner, f"unknown runner; choose one of {', '.join(RUNNERS)}")
    if runner == "auto":
        return "device" if device.type == "cuda" else "local"
    return "device" if runner == "device" else "local"


def device_model_options(
    runner: str, device: str | None, model_options: dict[str, Any]
) -> dict[str, Any]:
    """``model_options`` with the device runner's defaults on CUDA: ``dtype="bfloat16"`` unless a
    dtype was given (channels-last is already the default there). Elsewhere unchanged."""
    from camtool.models.network import resolve_device

    choose_runner(runner, torch.device("cpu"))  # checks the name before any model loads
    if model_options.get("dtype") is not None or runner == "local":
        return model_options
    resolved = resolve_device(device)
    if choose_runner(runner, resolved) == "device" and resolved.type == "cuda":
        return {**model_options, "dtype": "bfloat16"}
    return model_options


def default_writers() -> int:
    """Encoding threads of the device runner: every CPU but two (at least 2)."""
    return max(2, (os.cpu_count() or 1) - 2)


@dataclass
class _Sample:
    """One decoded, preprocessed image waiting for its forward pass (tensors on the device)."""

    item: InputItem
    image: torch.Tensor  # Tensor[3,H,W] uint8
    tensor: torch.Tensor  # Tensor[3,h,w] float32, normalised for the network
    region: Region


@dataclass
class _Flow:
    """The state of one device run: pools, writes in flight, the batch limit after an OOM."""

    plan: Plan
    recorder: Recorder
    out: Path
    options: ExportOptions
    maps: int
    writer_pool: ThreadPoolExecutor
    limit: int
    inflight: dict[Future[Written], InputItem] = field(default_factory=dict)
    copy_stream: Any = None

    @property
    def bound(self) -> BoundMethod:
        return self.plan.bound

    def submit(self, painted: Painted) -> None:
        """Hand each image of a painted chunk to a writer thread; keep the writes in flight
        bounded (their manifest lines are written as they finish)."""
        for row in painted.rows:
            job = self.writer_pool.submit(
                write_painted, painted, row, self.bound.model, self.out, self.options,
                self.recorder.announcer(row.item),
            )  # fmt: skip
            self.inflight[job] = row.item
        while len(self.inflight) > 2 * self.plan.batch_size:
            self.recorder.finish(
                wait(self.inflight, return_when=FIRST_COMPLETED).done, self.inflight
            )

    def run(self, samples: list[_Sample]) -> None:
        """Forward, paint and send ``samples`` (one network-input size), at most ``limit`` at a
        time; a CUDA out-of-memory halves the chunk (and the limit for the rest of the run), and
        an image that does not fit alone is recorded as failed."""
        chunks = deque(samples[i : i + self.limit] for i in range(0, len(samples), self.limit))
        while chunks:
            chunk = chunks.popleft()
            try:
                painted = self.paint(chunk)
            except (torch.OutOfMemoryError, DeviceMemoryError):
                _release_memory(self.bound.model.device)
                if len(chunk) == 1:
                    item = chunk[0].item
                    self.recorder.failure(
                        ExportFailure(str(item.path), _no_memory(item, self.bound)), item
                    )
                    continue
                self.limit = max(1, len(chunk) // 2)
                halves = [chunk[i : i + self.limit] for i in range(0, len(chunk), self.limit)]
                chunks.extendleft(reversed(halves))
                continue
            self.submit(painted)

    def paint(self, chunk: list[_Sample]) -> Painted:
        batch = torch.stack([s.tensor for s in chunk])
        out = self.bound(batch, self.maps)
        return paint(
            out, [s.item for s in chunk], [s.image for s in chunk], [s.region for s in chunk],
            self.options, self.copy_stream,
        )  # fmt: skip


def _no_memory(item: InputItem, bound: BoundMethod) -> str:
    return (
        f"{item.path}: out of memory on {bound.model.device} even for this image alone (batch of 1)"
    )


def _release_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_device(
    plan: Plan,
    out: Path,
    options: ExportOptions,
    maps: int,
    crop: bool,
    workers: int,
    writers: int | None,
    recorder: Recorder,
    interrupted: object,
) -> None:
    """Export ``plan.todo`` with pixels on the model's device; record every outcome through
    ``recorder`` (the runner's manifest). Stops between images once ``interrupted`` is true;
    every image whose write started is finished and recorded first."""
    loaded = plan.bound.model
    device = loaded.device
    decoder = jpeg_decoder()
    flow = _Flow(
        plan, recorder, out, options, maps,
        ThreadPoolExecutor(max_workers=writers or default_writers(), thread_name_prefix="camtool-encode"),
        plan.batch_size,
        copy_stream=torch.cuda.Stream(device) if device.type == "cuda" else None,
    )  # fmt: skip
    reader = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="camtool-read")
    try:
        for samples in _prepared(plan, recorder, reader, decoder, crop, interrupted):
            if interrupted:
                break
            flow.run(samples)
        recorder.finish(wait(flow.inflight).done, flow.inflight)
    except BaseException:
        recorder.drain(flow.inflight)
        raise
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        flow.writer_pool.shutdown(wait=True, cancel_futures=True)


def _reads(
    items: Sequence[InputItem],
    reader: ThreadPoolExecutor,
    decoder: JpegDecoder | None,
    decode_here: bool,
    lookahead: int,
) -> Iterator[Read]:
    """Each item read (and, on a CPU device, decoded) on the reader threads, in input order."""
    queue: deque[Future[Read]] = deque()
    for index, item in enumerate(items):
        queue.append(reader.submit(read_one, index, item, decoder, decode_here))
        if len(queue) > lookahead:
            yield queue.popleft().result()
    while queue:
        yield queue.popleft().result()


def _prepared(
    plan: Plan,
    recorder: Recorder,
    reader: ThreadPoolExecutor,
    decoder: JpegDecoder | None,
    crop: bool,
    interrupted: object,
) -> Iterator[list[_Sample]]:
    """Batches of decoded, preprocessed images of one network-input size, grouped by the local
    runner's rule (a size's group runs when it holds ``batch_size`` images, the fullest runs when
    more than four batches wait, the rest at the end), so both runners batch images alike.
    Failed reads are recorded on the way."""
    loaded = plan.bound.model
    device = loaded.device
    size = plan.batch_size
    decode_here = device.type != "cuda" or decoder is None
    reads = _reads(plan.todo, reader, decoder, decode_here, 2 * size)
    buckets: dict[tuple[int, ...], list[_Sample]] = {}
    pending = 0
    for group in _chunked(reads, size):
        if interrupted:
            return
        images = decode_on_device(group, plan.todo, decoder, device)
        for read, image in zip(group, images, strict=True):
            item = plan.todo[read.index]
            if isinstance(image, str):
                recorder.failure(ExportFailure(str(item.path), image), item)
                continue
            tensor, region = loaded.preprocessing.prepare(image, crop)
            sample = _Sample(item, image, tensor, region)
            key = tuple(tensor.shape)
            bucket = buckets.setdefault(key, [])
            bucket.append(sample)
            pending += 1
            if len(bucket) >= size:
                pending -= len(bucket)
                yield buckets.pop(key)
            elif pending > 4 * size:
                key = max(buckets, key=lambda k: len(buckets[k]))
                pending -= len(buckets[key])
                yield buckets.pop(key)
    for bucket in buckets.values():
        yield bucket


def _chunked(reads: Iterator[Read], size: int) -> Iterator[list[Read]]:
    group: list[Read] = []
    for read in reads:
        group.append(read)
        if len(group) >= size:
            yield group
            group = []
    if group:
        yield group


__all__ = [
    "CUDA_BATCH_SIZE",
    "RUNNERS",
    "Runner",
    "choose_runner",
    "default_writers",
    "device_model_options",
    "run_device",
]
