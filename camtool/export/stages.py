"""Export's stages, each a function over one batch or one image: decode and preprocess (in worker
threads or processes), explain (images of equal network-input size batched through the bound
method), then render, encode and write (on writer threads). The runners arrange these stages;
none of them knows which method runs.
"""

from __future__ import annotations

import io
import os
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from camtool.binding import BoundMethod
from camtool.errors import (
    CamtoolError,
    InvalidArgumentError,
    OutputWriteError,
)
from camtool.explanation import Explanation, build_explanation
from camtool.image import Preprocessing, Region
from camtool.inputs import InputItem, safe_stem
from camtool.io.files import write_bytes_atomic
from camtool.io.images import encode_image, load_image
from camtool.methods.base import MapBatch
from camtool.models.loading import LoadedModel
from camtool.naming import fit, heatmap_tail, overlay_tail, raw_tail
from camtool.render import DEFAULT_SCALE, check_scale, colormap_name
from camtool.settings import (
    DEFAULT_ALPHA,
    DEFAULT_BOX_THRESHOLD,
    DEFAULT_COLORMAP,
    DEFAULT_IMAGE_FORMAT,
    DEFAULT_UPSAMPLE,
    check_alpha,
    check_box_threshold,
    check_upsample,
)


@dataclass(frozen=True)
class _Decoded:
    index: int
    image: torch.Tensor | None
    tensor: torch.Tensor | None
    region: Region | None
    error: str | None


class _DecodeDataset(Dataset[_Decoded]):
    def __init__(
        self, items: Sequence[InputItem], preprocessing: Preprocessing, crop: bool
    ) -> None:
        self.items, self.preprocessing, self.crop = items, preprocessing, crop

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> _Decoded:
        try:
            image = load_image(self.items[index].path)
            tensor, region = self.preprocessing.prepare(image, self.crop)
            return _Decoded(index, image, tensor, region, None)
        except CamtoolError as exc:
            return _Decoded(index, None, None, None, str(exc))
        except Exception as exc:  # a decoder crash on one file must not end the run
            return _Decoded(
                index,
                None,
                None,
                None,
                f"{self.items[index].path}: {type(exc).__name__}: {exc}",
            )


@dataclass(frozen=True)
class MappedImage:
    index: int
    out: MapBatch | None = None
    row: int = 0
    image: torch.Tensor | None = None
    region: Region | None = None
    error: str | None = None


def _identity(sample: _Decoded) -> _Decoded:
    return sample


Decoder = Literal["threads", "processes"]


def _decoded(
    dataset: _DecodeDataset, workers: int, lookahead: int, decoder: Decoder
) -> Iterator[_Decoded]:
    """Decoded samples in input order, ``workers`` at a time, at most ``lookahead`` ahead.

    Threads suit small machines (OpenCV and torch release the GIL while they decode and resize,
    and nothing is copied between processes: 1.3x faster on 2 CPUs); a DataLoader's processes
    suit machines with many cores.
    """
    if workers == 0:
        yield from (dataset[i] for i in range(len(dataset)))
        return
    if decoder == "processes":
        yield from DataLoader(
            dataset,
            batch_size=None,
            num_workers=workers,
            collate_fn=_identity,  # type: ignore[arg-type]  # batch_size=None: one sample at a time
            prefetch_factor=lookahead // workers + 1,
        )
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="camtool-decode") as pool:
        queue: deque[Future[_Decoded]] = deque()
        for index in range(len(dataset)):
            queue.append(pool.submit(dataset.__getitem__, index))
            if len(queue) > lookahead:
                yield queue.popleft().result()
        for future in queue:
            yield future.result()


def default_workers() -> int:
    """Decoding workers: one per CPU beyond the first, at most 8 (0 on a single CPU)."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def explain_stream(
    items: Sequence[InputItem],
    bound: BoundMethod,
    maps: int,
    crop: bool,
    batch_size: int,
    workers: int,
    decoder: Decoder = "threads",
) -> Generator[MappedImage, None, None]:
    dataset = _DecodeDataset(items, bound.model.preprocessing, crop)
    loader = _decoded(dataset, workers, 2 * batch_size, decoder)
    buckets: dict[tuple[int, ...], list[_Decoded]] = {}
    pending = 0
    max_pending = 4 * batch_size

    def run(bucket: list[_Decoded]) -> Iterator[MappedImage]:
        batch = torch.stack([s.tensor for s in bucket if s.tensor is not None])
        out = bound(batch, maps)
        for row, sample in enumerate(bucket):
            yield MappedImage(sample.index, out, row, sample.image, sample.region)

    for sample in loader:
        if sample.error is not None or sample.tensor is None:
            yield MappedImage(sample.index, error=sample.error)
            continue
        bucket = buckets.setdefault(tuple(sample.tensor.shape), [])
        bucket.append(sample)
        pending += 1
        if len(bucket) >= batch_size:
            pending -= len(bucket)
            yield from run(buckets.pop(tuple(sample.tensor.shape)))
        elif pending > max_pending:  # many sizes: run the fullest bucket to keep memory flat
            shape = max(buckets, key=lambda k: len(buckets[k]))
            pending -= len(buckets[shape])
            yield from run(buckets.pop(shape))
    for bucket in buckets.values():
        yield from run(bucket)


@dataclass(frozen=True)
class ExportOptions:
    """How each image's outputs are rendered and written (see :func:`export`)."""

    image_format: Literal["jpg", "png"] = DEFAULT_IMAGE_FORMAT
    quality: int = 90
    alpha: float = DEFAULT_ALPHA
    colormap: str = DEFAULT_COLORMAP
    box: bool = False
    heatmap: bool = False
    raw: Literal["npy", "npz"] | None = None
    raw_dtype: Literal["float16", "float32"] = "float16"
    top_k: int = 5
    box_threshold: float = DEFAULT_BOX_THRESHOLD
    scale: str = DEFAULT_SCALE
    legend: bool = False
    upsample: str = DEFAULT_UPSAMPLE


def output_path(out_dir: Path, stem: PurePosixPath, suffix: str) -> Path:
    """``out_dir/<stem><suffix>``, every part a safe name that fits the file system (a name
    longer than :data:`camtool.naming.NAME_MAX` bytes is shortened, see
    :func:`camtool.naming.fit`), refusing any path that would land outside ``out_dir``
    (through a symlinked folder inside it, say)."""
    stem = safe_stem(stem)
    target = out_dir.joinpath(*stem.parent.parts, fit(stem.name, suffix))
    root = os.path.realpath(out_dir)
    parent = os.path.realpath(target.parent)
    if parent != root and not parent.startswith(root + os.sep):
        raise OutputWriteError(target, "output path escapes the output folder")
    return target


def write_outputs(
    ex: Explanation,
    stem: PurePosixPath,
    out_dir: Path,
    options: ExportOptions,
    announce: Callable[[list[Path]], None] | None = None,
    writer: Callable[[Path, bytes], None] = write_bytes_atomic,
) -> list[Path]:
    """Write one image's overlays (and heatmaps, raw CAMs) atomically; return their paths.

    Every file is encoded first, then written by :func:`write_files` (announced, all or none).
    ``writer`` puts one file's bytes at its path (default: a temporary file renamed into place;
    the Ray runner passes one that leaves the temporary file for its driver to rename).
    """
    heatmaps = ex.scaled_heatmaps(options.scale) if options.heatmap else None

    def overlay(i: int) -> torch.Tensor:
        return ex.overlay(ex.explained[i], alpha=options.alpha, colormap=options.colormap, box=options.box,
                          scale=options.scale, legend=options.legend).tensor  # fmt: skip

    def heatmap(i: int) -> torch.Tensor:
        assert heatmaps is not None
        return (heatmaps[i] * 255).round().to(torch.uint8)

    files = encoded_files(ex, stem, out_dir, options, overlay, heatmap)
    return write_files(files, announce, writer)


def encoded_files(
    ex: Explanation,
    stem: PurePosixPath,
    out_dir: Path,
    options: ExportOptions,
    overlay: Callable[[int], torch.Tensor],
    heatmap: Callable[[int], torch.Tensor],
) -> list[tuple[Path, bytes]]:
    """One image's files, encoded, in the order they are written: per explained class its
    overlay and (with ``options.heatmap``) its heatmap, then (with ``options.raw``) the raw CAMs.

    ``overlay(i)`` gives the ``i``-th class's overlay (``Tensor[3,H,W]`` uint8, boxes and legend
    drawn) and ``heatmap(i)`` its heatmap (``Tensor[H,W]`` uint8); each runner renders them its
    own way (on the CPU, or on the device).
    """
    files: list[tuple[Path, bytes]] = []
    for i, score in enumerate(ex.explained):
        picture = overlay(i)
        tail = overlay_tail(ex.method, score.index, score.name, options.image_format)
        target = output_path(out_dir, stem, tail)
        files.append((target, _encoded(target, picture, options.quality)))
        if options.heatmap:
            gray = heatmap(i)
            target = output_path(out_dir, stem, heatmap_tail(ex.method, score.index, score.name))
            files.append((target, _encoded(target, gray, options.quality)))
    if options.raw is not None:
        target = output_path(out_dir, stem, raw_tail(ex.method, options.raw))
        files.append((target, _raw_bytes(ex, options)))
    return files


def write_files(
    files: Sequence[tuple[Path, bytes]],
    announce: Callable[[list[Path]], None] | None = None,
    writer: Callable[[Path, bytes], None] = write_bytes_atomic,
) -> list[Path]:
    """Write one image's ``(path, bytes)`` files with ``writer``; return their paths.

    ``announce`` (if given) is called first with the paths about to be written, before the
    first one appears. If any write fails, the files already written are removed, so an image
    is either complete on disk or absent.
    """
    if announce is not None:
        announce([target for target, _ in files])
    written: list[Path] = []
    try:
        for target, data in files:
            writer(target, data)
            written.append(target)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written


def _encoded(path: Path, image: torch.Tensor, quality: int) -> bytes:
    """``image`` encoded in the format of ``path``'s suffix; errors name ``path``."""
    try:
        return encode_image(image, path.suffix or ".png", quality)
    except OutputWriteError as exc:
        raise OutputWriteError(path, exc.problem) from None


Written = tuple["Explanation | None", list[Path], "str | None"]


def render_and_write(
    model: LoadedModel,
    result: MappedImage,
    item: InputItem,
    out_dir: Path,
    options: ExportOptions,
    announce: Callable[[list[Path]], None] | None = None,
    writer: Callable[[Path, bytes], None] = write_bytes_atomic,
) -> Written:
    """On a writer thread: the row's Explanation (heatmaps, boxes), then its files.

    Returns ``(explanation, files, None)``, or ``(None, [], reason)`` when this image cannot be
    written (OpenCV cannot encode it, its path would leave the output folder). A refusal by the
    file system (full disk, read-only folder) is raised: it would fail every image after it.
    """
    out, image, region = result.out, result.image, result.region
    assert out is not None and image is not None and region is not None

    def write() -> tuple[Explanation, list[Path]]:
        ex = build_explanation(
            model, out, result.row, str(item.path), image, region, options.top_k,
            options.box_threshold, options.upsample,
        )  # fmt: skip
        return ex, write_outputs(ex, item.stem, out_dir, options, announce, writer)

    return written_or_refused(item, write)


def written_or_refused(
    item: InputItem, write: Callable[[], tuple[Explanation, list[Path]]]
) -> Written:
    """``write()``'s ``(explanation, files)`` as ``(explanation, files, None)``, or
    ``(None, [], reason)`` when this image cannot be written (a :class:`CamtoolError`: OpenCV
    cannot encode it, its path would leave the output folder). A refusal by the file system (an
    :class:`OutputWriteError` with an ``errno``: full disk, read-only folder) is raised."""
    try:
        ex, files = write()
        return ex, files, None
    except OutputWriteError as exc:
        if exc.errno is not None:
            raise
        return None, [], str(exc)
    except CamtoolError as exc:
        return None, [], f"{item.path}: {exc}"


def _raw_bytes(ex: Explanation, options: ExportOptions) -> bytes:
    cams = ex.maps.numpy().astype(options.raw_dtype)
    buffer = io.BytesIO()
    if options.raw == "npy":
        np.save(buffer, cams)
    else:
        np.savez_compressed(
            buffer,
            cams=cams,
            classes=np.array([s.index for s in ex.explained]),
            bias=ex.bias.numpy(),
            logits=np.array([s.logit for s in ex.explained], dtype=np.float32),
            method=np.array(ex.method),
            origin=np.array(ex.geometry.origin),
            stride=np.array(ex.geometry.stride),
        )
    return buffer.getvalue()


def single_threaded_opencv() -> int:
    """Make OpenCV single-threaded for the run; return its previous thread count (restored after).

    Our own threads already run OpenCV calls in parallel; its inner pool only oversubscribes the
    CPUs. (Only ever in this process: calling it in a forked DataLoader worker can hang.)
    """
    from camtool.io.opencv import cv2

    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    return int(previous)


def check_options(options: ExportOptions) -> ExportOptions:
    """Return ``options`` with the colour map's name in its canonical case (``JET`` -> ``jet``).

    Raises:
        InvalidArgumentError: a format, colour map, alpha, box threshold or upsampling camtool
            cannot use.
    """
    if options.image_format not in ("jpg", "png"):
        raise InvalidArgumentError(options.image_format, "image format must be jpg or png")
    if options.raw not in (None, "npy", "npz"):
        raise InvalidArgumentError(options.raw, "raw format must be npy or npz")
    check_scale(options.scale)
    check_alpha(options.alpha)
    check_box_threshold(options.box_threshold)
    upsample = check_upsample(options.upsample)
    return replace(options, colormap=colormap_name(options.colormap), upsample=upsample)
