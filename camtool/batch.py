"""Batch export: many images -> overlay files and a manifest; streaming, parallel, resumable.

The pipeline: inputs are enumerated (files, folders, globs, ``@list.txt``); decoding and
preprocessing run in DataLoader workers; images of equal network-input size are batched (batching
never pads, so a batched result equals the single-image one within float rounding: convolution
kernels sum in another order for another batch size); CAMs come from one forward pass per
batch; heatmaps, overlays and file writes run on a pool of threads. Queues are bounded, so memory
stays flat however many images there are.

Every output file is written under a temporary name (``.camtool-*.part``) and renamed; the
files an image is about to create are announced in the manifest first, and its manifest line is
appended only after all its files are in place. The output folder is locked for the run. A run
that was killed leaves at most temporary files and announced-but-unlisted files, which the next
run removes before it starts, so the folder holds the files the manifest lists and nothing else
of camtool's. ``resume=True`` skips the inputs it already lists (matched by resolved path).
The manifest's format lives in :mod:`camtool.manifest`.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import platform
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from camtool import __version__
from camtool.errors import (
    EXIT_OK,
    EXIT_PARTIAL,
    CamtoolError,
    ImageReadError,
    InvalidArgumentError,
    ManifestError,
    OutputWriteError,
)
from camtool.explanation import BoundMethod, Explanation, ModelSpec, bind_method, build_explanation
from camtool.image import Preprocessing, Region
from camtool.io import (
    encode_image,
    image_suffixes,
    load_image,
    open_atomic,
    read_text_file,
    write_bytes_atomic,
)
from camtool.manifest import (
    MANIFEST,
    SUMMARY,
    ManifestContents,
    ManifestWriter,
    load_manifest,
    locked_output,
    remove_unfinished,
)
from camtool.manifest import (
    read_manifest as read_manifest,  # re-exported: the reader's public home is here too
)
from camtool.methods.base import DEFAULT_METHOD, MapBatch, Method
from camtool.models import DEFAULT_MODEL, LoadedModel
from camtool.naming import NameRegistry, component, fit, slug
from camtool.progress import ProgressBar
from camtool.render import COLORMAPS

EXIT_INTERRUPTED = 130


# --------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class InputItem:
    """One image to export: the file, and the stem of its outputs under the output folder."""

    path: Path
    stem: PurePosixPath  # relative, never absolute, never with '..'

    @property
    def resolved(self) -> str:
        """The input's resolved path: what identifies it, however it was spelled."""
        return os.path.realpath(self.path)


@dataclass(frozen=True)
class ExportFailure:
    """An input that could not be explained, and why."""

    input: str
    error: str


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def _walk_images(root: Path) -> Iterator[Path | ExportFailure]:
    """Image files under ``root``, sorted, following symlinked folders but never around a loop."""
    stack = [root]
    seen = {os.path.realpath(root)}
    while stack:
        folder = stack.pop()
        here = os.path.realpath(folder)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
        except OSError as exc:
            yield ExportFailure(str(folder), f"cannot list folder: {exc.strerror or exc}")
            continue
        subfolders = []
        for entry in reversed(entries):
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                real = os.path.realpath(entry.path)
                if real == here or here.startswith(real + os.sep):
                    yield ExportFailure(
                        entry.path, f"directory loop through symlinks (back to {real})"
                    )
                elif real not in seen:  # a second link to a folder already walked adds nothing
                    seen.add(real)
                    subfolders.append(Path(entry.path))
            elif Path(entry.name).suffix.lower() in image_suffixes():
                yield Path(entry.path)
        stack.extend(reversed(subfolders))


def _relative_stem(path: Path, root: Path) -> PurePosixPath:
    rel = os.path.relpath(path, root)
    parts = [p for p in PurePosixPath(rel.replace(os.sep, "/")).parts if p not in ("..", ".", "/")]
    rel_path = PurePosixPath(*parts) if parts else PurePosixPath(path.name)
    return safe_stem(rel_path.with_suffix(""))


def safe_stem(stem: PurePosixPath | str) -> PurePosixPath:
    """A relative output stem whose every part is a safe name (:func:`camtool.naming.component`):
    never absolute, never ``..``, never empty."""
    parts = [component(p) for p in PurePosixPath(stem).parts if p not in ("/", ".")]
    return PurePosixPath(*parts) if parts else PurePosixPath("image")


def collect_inputs(
    specs: Sequence[str | os.PathLike[str]],
    exclude: str | os.PathLike[str] | None = None,
    excluded: list[Path] | None = None,
) -> tuple[list[InputItem], list[ExportFailure]]:
    """Expand inputs into image files and the output stems that mirror their relative paths.

    Args:
        specs: files; folders (searched recursively for image suffixes); globs (``**`` allowed);
            ``@list.txt`` files with one path per line (relative to the list's folder).

    Returns:
        ``(items, failures)``: failures are specs that name nothing, unreadable folders and
        symlink loops. Output stems are relative to the folder, the glob's fixed prefix, or the
        common folder of a list's entries, so no output can escape the output folder. Files
        under ``exclude`` (the output folder) are left out and appended to ``excluded``; second
        mentions of a file (by resolved path) are left out.
    """
    items: list[InputItem] = []
    failures: list[ExportFailure] = []
    names = NameRegistry()
    seen: set[str] = set()
    skip = os.path.realpath(exclude) + os.sep if exclude is not None else None

    left_out: list[Path] = [] if excluded is None else excluded

    def add(path: Path, root: Path) -> None:
        real = os.path.realpath(path)
        if real in seen:
            return
        seen.add(real)
        if skip and (real + os.sep).startswith(skip):
            left_out.append(path)
            return
        # a.jpg and a.png, or the same name from two inputs: one rule, shared with `explain`
        stem = names.claim(str(_relative_stem(path, root)))
        items.append(InputItem(path, PurePosixPath(stem)))

    for spec in specs:
        text = os.fspath(spec)
        if text.startswith("@"):
            listed = _read_list(Path(text[1:]), failures)
            if listed:
                root = Path(os.path.commonpath([str(p.parent) for p in listed]))
                for path in listed:
                    add(path, root)
        elif _has_magic(text):
            fixed = Path(re.split(r"[*?\[]", text, maxsplit=1)[0] or ".")
            root = (
                fixed if fixed.is_dir() and text.startswith(str(fixed) + os.sep) else fixed.parent
            )
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not matches:
                failures.append(ExportFailure(text, "the pattern matches no file"))
            for path in matches:
                add(path, root)
        elif Path(text).is_dir():
            before = len(items), len(left_out)
            for found in _walk_images(Path(text)):
                if isinstance(found, ExportFailure):
                    failures.append(found)
                else:
                    add(found, Path(text))
            if (len(items), len(left_out)) == before:
                failures.append(ExportFailure(text, "no image files in this folder"))
        else:
            add(Path(text), Path(text).parent)  # a missing file fails later, when it is read
    return items, failures


def _read_list(path: Path, failures: list[ExportFailure]) -> list[Path]:
    try:
        lines = read_text_file(path, ImageReadError, "list file", "utf-8-sig").splitlines()
    except ImageReadError as exc:
        failures.append(ExportFailure(f"@{path}", f"cannot read list: {exc.problem}"))
        return []
    entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [Path(os.path.abspath(path.parent / entry)) for entry in entries]


# --------------------------------------------------------------------------------------------
# The stream: decode in workers, batch by input size, one forward pass per batch


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
                index, None, None, None, f"{self.items[index].path}: {type(exc).__name__}: {exc}"
            )


@dataclass(frozen=True)
class _Result:
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


def _stream(
    items: Sequence[InputItem],
    bound: BoundMethod,
    maps: int,
    crop: bool,
    batch_size: int,
    workers: int,
    decoder: Decoder = "threads",
) -> Generator[_Result, None, None]:
    dataset = _DecodeDataset(items, bound.model.preprocessing, crop)
    loader = _decoded(dataset, workers, 2 * batch_size, decoder)
    buckets: dict[tuple[int, ...], list[_Decoded]] = {}
    pending = 0
    max_pending = 4 * batch_size

    def run(bucket: list[_Decoded]) -> Iterator[_Result]:
        batch = torch.stack([s.tensor for s in bucket if s.tensor is not None])
        out = bound(batch, maps)
        for row, sample in enumerate(bucket):
            yield _Result(sample.index, out, row, sample.image, sample.region)

    for sample in loader:
        if sample.error is not None or sample.tensor is None:
            yield _Result(sample.index, error=sample.error)
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


def explain_iter(
    inputs: Sequence[str | os.PathLike[str]],
    model: ModelSpec = DEFAULT_MODEL,
    *,
    method: str | Method = DEFAULT_METHOD,
    classes: Sequence[int | str] | None = None,
    maps: int = 1,
    top_k: int = 5,
    crop: bool = False,
    device: str | None = "auto",
    batch_size: int = 32,
    workers: int | None = None,
    box_threshold: float = 0.2,
    **model_options: Any,
) -> Iterator[Explanation | ExportFailure]:
    """Explain many images lazily: yield an :class:`Explanation` (or :class:`ExportFailure`) per
    input, as batches finish (not in input order; ``Explanation.source`` names the input).

    Takes the inputs of :func:`export` and the options of :func:`camtool.explain`.
    """
    bound = bind_method(model, method, classes, device=device, **model_options)
    loaded = bound.model
    items, failures = collect_inputs(inputs)
    yield from failures
    workers = default_workers() if workers is None else workers
    for result in _stream(items, bound, maps, crop, batch_size, workers):
        source = str(items[result.index].path)
        if result.error is not None or result.out is None:
            yield ExportFailure(source, result.error or "unknown error")
        else:
            assert result.image is not None and result.region is not None
            yield build_explanation(
                loaded,
                result.out,
                result.row,
                source,
                result.image,
                result.region,
                top_k,
                box_threshold,
            )


# --------------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True)
class ExportOptions:
    """How each image's outputs are rendered and written (see :func:`export`)."""

    image_format: Literal["jpg", "png"] = "jpg"
    quality: int = 90
    alpha: float = 0.5
    colormap: str = "jet"
    box: bool = False
    heatmap: bool = False
    raw: Literal["npy", "npz"] | None = None
    raw_dtype: Literal["float16", "float32"] = "float16"
    top_k: int = 5
    box_threshold: float = 0.2


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
) -> list[Path]:
    """Write one image's overlays (and heatmaps, raw CAMs) atomically; return their paths.

    Every file is encoded first; ``announce`` (if given) is then called with the paths about to
    be written, before the first one appears. If any write fails, the files already written for
    this image are removed, so an image is either complete on disk or absent.
    """
    files: list[tuple[Path, bytes]] = []
    for i, score in enumerate(ex.explained):
        name = f"_cam_{score.index}_{slug(score.name)}"
        overlay = ex.overlay(i, alpha=options.alpha, colormap=options.colormap, box=options.box)
        target = output_path(out_dir, stem, f"{name}.{options.image_format}")
        files.append((target, _encoded(target, overlay, options.quality)))
        if options.heatmap:
            gray = (ex.heatmaps[i] * 255).round().to(torch.uint8)
            target = output_path(out_dir, stem, f"_heatmap_{score.index}_{slug(score.name)}.png")
            files.append((target, _encoded(target, gray, options.quality)))
    if options.raw is not None:
        target = output_path(out_dir, stem, f"_cams.{options.raw}")
        files.append((target, _raw_bytes(ex, options)))
    if announce is not None:
        announce([target for target, _ in files])
    written: list[Path] = []
    try:
        for target, data in files:
            write_bytes_atomic(target, data)
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


_Written = tuple["Explanation | None", list[Path], "str | None"]


def _render_and_write(
    model: LoadedModel,
    result: _Result,
    item: InputItem,
    out_dir: Path,
    options: ExportOptions,
    announce: Callable[[list[Path]], None] | None = None,
) -> _Written:
    """On a writer thread: the row's Explanation (heatmaps, boxes), then its files.

    Returns ``(explanation, files, None)``, or ``(None, [], reason)`` when this image cannot be
    written (OpenCV cannot encode it, its path would leave the output folder). A refusal by the
    file system (full disk, read-only folder) is raised: it would fail every image after it.
    """
    assert result.out is not None and result.image is not None and result.region is not None
    try:
        ex = build_explanation(
            model, result.out, result.row, str(item.path), result.image, result.region,
            options.top_k, options.box_threshold,
        )  # fmt: skip
        return ex, write_outputs(ex, item.stem, out_dir, options, announce), None
    except OutputWriteError as exc:
        if exc.errno is not None:
            raise
        return None, [], str(exc)
    except CamtoolError as exc:
        return None, [], f"{item.path}: {exc}"


def _raw_bytes(ex: Explanation, options: ExportOptions) -> bytes:
    cams = ex.cams.numpy().astype(options.raw_dtype)
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


# --------------------------------------------------------------------------------------------
# export()


@dataclass(frozen=True)
class ExportReport:
    """What an export did.

    Attributes:
        out_dir, manifest, summary: where the outputs, the JSON Lines manifest and the summary are.
        total: inputs found; exported: explained and written in this run; failed: inputs that
            could not be explained (this run and, with resume, earlier ones); skipped: inputs a
            resumed run found done already.
        seconds, images_per_second: wall time of this run and its throughput.
        failures: ``(input, reason)`` of every failed input.
        interrupted: the run was stopped (Ctrl-C) before it finished.
        excluded: inputs left out because they lie inside the output folder (never read as
            input).
        removed: unfinished files a killed earlier run had left, removed before this run.
    """

    out_dir: Path
    manifest: Path
    summary: Path
    total: int
    exported: int
    failed: int
    skipped: int
    seconds: float
    images_per_second: float
    failures: tuple[ExportFailure, ...] = field(default=())
    interrupted: bool = False
    excluded: tuple[str, ...] = field(default=())
    removed: int = 0

    @property
    def exit_code(self) -> int:
        """0 when every input was exported, 3 when some failed, 130 when interrupted."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_PARTIAL if self.failed else EXIT_OK


class ExportInterrupted(CamtoolError):
    """Ctrl-C stopped an export; everything finished so far is on disk and in the manifest."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, report: ExportReport) -> None:
        self.report = report
        done = report.exported + report.skipped
        super().__init__(
            report.out_dir,
            f"interrupted after {done} of {report.total} images; run the same command with "
            "--resume to finish",
        )


def export(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    model: ModelSpec = DEFAULT_MODEL,
    *,
    method: str | Method = DEFAULT_METHOD,
    classes: Sequence[int | str] | None = None,
    maps: int = 1,
    crop: bool = False,
    options: ExportOptions | None = None,
    resume: bool = False,
    device: str | None = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    decoder: Decoder = "threads",
    writers: int | None = None,
    progress: bool = False,
    **model_options: Any,
) -> ExportReport:
    """Explain every input image and write the results under ``out_dir``.

    For every input, ``out_dir`` mirrors its relative path: ``<stem>_cam_<index>_<class>.<fmt>``
    per explained class (and, on request, ``<stem>_heatmap_<index>_<class>.png`` and
    ``<stem>_cams.npy|npz``). ``manifest.jsonl`` gets one line per input as it finishes (status,
    top-k predictions, explained classes with boxes, outputs, model and head, or the failure's
    reason) and ``summary.json`` the totals at the end.

    Args:
        inputs: files, folders, globs and ``@list.txt`` files (see :func:`collect_inputs`).
        out_dir: the output folder (created).
        model, method: as for :func:`camtool.explain`; ``model_options`` (weights, labels,
            dtype; layer, classifier for the method) as there.
        classes: fixed classes to explain (names or indices); default: each image's top ``maps``.
        crop: centre-crop instead of using the whole image.
        options: rendering and file options (:class:`ExportOptions`).
        resume: skip inputs the manifest already lists (done or failed) whose outputs exist;
            inputs are matched by resolved path, however they are spelled.
        batch_size: images per forward pass (default: 16 on the CPU, 64 on a GPU); workers: decoding workers (default: CPUs - 1, at
            most 8); decoder: ``"threads"`` or ``"processes"`` (a DataLoader); writers: threads
            that render and write (default: 2).
        progress: show a rich progress bar (images/s, ETA, failures).

    The output folder is locked for the run (another export into it fails with
    :class:`~camtool.errors.OutputBusyError`). Before the run, files that a killed earlier run
    left unfinished (temporary files, files written but not yet in the manifest) are removed.

    Raises:
        OutputWriteError: the output folder cannot be written (the run stops; the manifest keeps
            every finished image). ExportInterrupted: Ctrl-C (the same guarantee).
        OutputBusyError: another export is writing into ``out_dir``.
        InvalidArgumentError: every input lies inside ``out_dir`` (nothing to export).
        ManifestError: resuming from a manifest with a line camtool cannot read.
    """
    started = time.perf_counter()
    options = options or ExportOptions()
    _check_options(options)
    out = Path(out_dir)
    with locked_output(out):
        return _export_locked(
            inputs, out, model, method, classes, maps, crop, options, resume, device, batch_size,
            workers, decoder, writers, progress, model_options, started,
        )  # fmt: skip


def _export_locked(
    inputs: Sequence[str | os.PathLike[str]],
    out: Path,
    model: ModelSpec,
    method: str | Method,
    classes: Sequence[int | str] | None,
    maps: int,
    crop: bool,
    options: ExportOptions,
    resume: bool,
    device: str | None,
    batch_size: int | None,
    workers: int | None,
    decoder: Decoder,
    writers: int | None,
    progress: bool,
    model_options: dict[str, Any],
    started: float,
) -> ExportReport:
    """:func:`export`, once the output folder's lock is held."""
    bound = bind_method(model, method, classes, device=device, **model_options)
    loaded, explainer, wanted = bound.model, bound.explainer, bound.classes
    batch_size = batch_size or (16 if loaded.device.type == "cpu" else 64)
    excluded: list[Path] = []
    items, failures = collect_inputs(inputs, exclude=out, excluded=excluded)
    if excluded and not items:
        subject = excluded[0] if len(excluded) == 1 else out
        what = "it lies" if len(excluded) == 1 else f"all {len(excluded)} inputs lie"
        raise InvalidArgumentError(
            subject,
            f"nothing to export: {what} inside the output folder {out}, which is never read "
            "as input",
        )
    settings = {
        "model": loaded.name, "weights": loaded.weights, "method": explainer.method, "classes": wanted,
        "maps": maps, "crop": crop,
        **{k: (str(v) if v is not None else None) for k, v in sorted(model_options.items())},
        **{k: v for k, v in asdict(options).items() if k != "quality"},
    }  # fmt: skip
    earlier = _earlier_manifest(out / MANIFEST, resume)
    resumed = earlier if resume else None
    previous, runs = (resumed.by_path, resumed.runs) if resumed else ({}, [])
    if runs and runs[-1].get("settings") != settings:
        raise InvalidArgumentError(
            out / MANIFEST,
            "was written with other settings; use another --out, or the same options",
        )
    removed = remove_unfinished(out, earlier)
    items = _restore_stems(items, previous)
    todo, carried = _split_resumed(items, resumed)
    manifest = ManifestWriter(out / MANIFEST, append=resume)
    head = explainer.describe()
    manifest.write({"type": "run", "camtool": __version__, "started": _now(), "resumed": bool(runs), "cwd": os.getcwd(),
                    "settings": settings, "method": explainer.method, "head": head,
                    "head_detail": explainer.as_dict(), "excluded": [str(p) for p in excluded],
                    "removed": removed})  # fmt: skip
    failed = [ExportFailure(r["input"], r["error"]) for r in carried]
    exported = 0
    writer_pool = ThreadPoolExecutor(max_workers=writers or 2, thread_name_prefix="camtool-write")
    inflight: dict[Future[_Written], InputItem] = {}
    bar = (
        ProgressBar(
            "export", len(items), "img", len(items) - len(todo), len(failed) + len(failures)
        )
        if progress
        else None
    )

    def record_failure(failure: ExportFailure, item: InputItem | None = None) -> None:
        failed.append(failure)
        where = {"path": item.resolved} if item is not None else {}
        manifest.write(
            {"type": "image", "input": failure.input, **where, "status": "failed", "error": failure.error}
        )  # fmt: skip
        if bar:
            bar.advance(failed=len(failed))

    def announcer(item: InputItem) -> Callable[[list[Path]], None]:
        def announce(paths: list[Path]) -> None:
            manifest.write({"type": "writing", "input": str(item.path), "path": item.resolved,
                            "outputs": [str(p) for p in paths]})  # fmt: skip

        return announce

    def finish(done: set[Future[_Written]]) -> None:
        """Record every finished image; then raise the first file-system error among them."""
        nonlocal exported
        error: OutputWriteError | None = None
        for future in done:
            item = inflight.pop(future)
            try:
                ex, paths, reason = future.result()
                if ex is None:
                    record_failure(ExportFailure(str(item.path), reason or "unknown error"), item)
                    continue
                try:
                    manifest.write({"type": "image", "input": str(item.path), "path": item.resolved, "status": "ok",
                                    "output_stem": str(item.stem), **ex.to_dict(), "outputs": [str(p) for p in paths]})  # fmt: skip
                except OutputWriteError:
                    for path in paths:  # files the manifest cannot list must not stay
                        path.unlink(missing_ok=True)
                    raise
            except OutputWriteError as exc:
                error = error or exc
                continue
            exported += 1
            if bar:
                bar.advance(failed=len(failed))
        if error is not None:
            raise error

    for failure in failures:
        record_failure(failure)
    workers = default_workers() if workers is None else workers
    opencv_threads = _single_threaded_opencv() if decoder == "threads" else None
    stream = _stream(todo, bound, maps, crop, batch_size, workers, decoder)
    with _interrupt_flag() as interrupted:
        try:
            for result in stream:
                if interrupted:
                    break
                item = todo[result.index]
                if result.error is not None or result.out is None:
                    record_failure(
                        ExportFailure(str(item.path), result.error or "unknown error"), item
                    )
                    continue
                inflight[
                    writer_pool.submit(
                        _render_and_write, loaded, result, item, out, options, announcer(item)
                    )
                ] = item
                if len(inflight) >= 2 * batch_size:
                    finish(wait(inflight, return_when=FIRST_COMPLETED).done)
            finish(wait(inflight).done)
        except BaseException as exc:
            _drain(inflight, finish)
            # A DataLoader worker killed by the same Ctrl-C surfaces as a RuntimeError.
            if not (interrupted and isinstance(exc, (KeyboardInterrupt, RuntimeError))):
                raise
        finally:
            stream.close()  # stops the decoding workers now, not at garbage collection
            writer_pool.shutdown(wait=True, cancel_futures=True)
            manifest.close()
            if bar:
                bar.stop()
            if opencv_threads is not None:
                import cv2

                cv2.setNumThreads(opencv_threads)
    failed = list(failures) + [f for f in failed if f not in failures]
    seconds = time.perf_counter() - started
    report = ExportReport(
        out, out / MANIFEST, out / SUMMARY, len(items), exported, len(failed), len(items) - len(todo) - len(carried),
        seconds, exported / seconds if seconds else 0.0, tuple(failed), bool(interrupted),
        tuple(str(p) for p in excluded), removed,
    )  # fmt: skip
    _write_summary(report, loaded, settings, head)
    if interrupted:
        raise ExportInterrupted(report)
    return report


def _earlier_manifest(path: Path, resume: bool) -> ManifestContents | None:
    """The manifest an earlier run left. A fresh run only needs it to clean up after a killed
    run, so there an unreadable manifest is no obstacle (it is replaced); ``--resume`` needs it."""
    try:
        return load_manifest(path)
    except ManifestError:
        if resume:
            raise
        return None


class _Flag:
    """A boolean set from a signal handler."""

    def __init__(self) -> None:
        self.set = False

    def __bool__(self) -> bool:
        return self.set


@contextmanager
def _interrupt_flag() -> Iterator[_Flag]:
    """Turn Ctrl-C into a flag the export loop checks between images, so that no image is ever
    left between 'files written' and 'manifest line written'. A second Ctrl-C stops at once."""
    flag = _Flag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.set:
            raise KeyboardInterrupt
        flag.set = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _restore_stems(items: list[InputItem], previous: dict[str, dict[str, Any]]) -> list[InputItem]:
    """On resume, give each input the output stem it had (names depend on the whole input set,
    which may have grown), and keep new inputs off the stems already taken."""
    if not previous:
        return items
    stems = {
        path: safe_stem(str(r["output_stem"]))
        for path, r in previous.items()
        if r.get("output_stem")
    }
    taken = NameRegistry(str(stem) for stem in stems.values())
    restored = []
    for item in items:
        stem = stems.get(item.resolved)
        restored.append(InputItem(item.path, stem or PurePosixPath(taken.claim(str(item.stem)))))
    return restored


def _single_threaded_opencv() -> int:
    """Make OpenCV single-threaded for the run; return its previous thread count (restored after).

    Our own threads already run OpenCV calls in parallel; its inner pool only oversubscribes the
    CPUs. (Only ever in this process: calling it in a forked DataLoader worker can hang.)
    """
    import cv2

    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    return int(previous)


def _check_options(options: ExportOptions) -> None:
    if options.image_format not in ("jpg", "png"):
        raise InvalidArgumentError(options.image_format, "image format must be jpg or png")
    if options.raw not in (None, "npy", "npz"):
        raise InvalidArgumentError(options.raw, "raw format must be npy or npz")
    if options.colormap not in COLORMAPS:
        raise InvalidArgumentError(
            options.colormap, f"unknown colour map; choose one of {', '.join(COLORMAPS)}"
        )
    if not 0 <= options.alpha <= 1:
        raise InvalidArgumentError(options.alpha, "alpha must be between 0 and 1")


def _split_resumed(
    items: list[InputItem], earlier: ManifestContents | None
) -> tuple[list[InputItem], list[dict[str, Any]]]:
    """Inputs still to do, and the failure records carried over from the earlier run."""
    if earlier is None:
        return items, []
    todo, carried = [], []
    for item in items:
        record = earlier.by_path.get(item.resolved)
        if record is None:
            todo.append(item)
        elif record.get("status") == "failed":
            carried.append(record)
        elif not all(os.path.exists(p) for p in earlier.files.get(item.resolved, [])):
            todo.append(item)
    return todo, carried


def _drain(inflight: dict[Future[_Written], Any], finish: Any) -> None:
    """Let the writes in flight complete and record them (a write error is dropped here)."""
    with contextlib.suppress(CamtoolError, OSError):
        finish(wait(inflight).done)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_summary(
    report: ExportReport, model: LoadedModel, settings: dict[str, Any], head: str
) -> None:
    summary = {
        "camtool": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "finished": _now(), "model": model.name, "method": settings["method"], "head": head,
        "device": str(model.device),
        "settings": settings, "total": report.total, "exported": report.exported,
        "failed": report.failed, "skipped": report.skipped, "seconds": round(report.seconds, 3),
        "images_per_second": round(report.images_per_second, 2), "interrupted": report.interrupted,
        "failures": [asdict(f) for f in report.failures],
        "excluded": {"reason": "inside the output folder, which is never read as input",
                     "inputs": list(report.excluded)},
        "removed_unfinished": report.removed,
    }  # fmt: skip
    try:
        with open_atomic(report.summary) as handle:
            handle.write(json.dumps(summary, indent=2).encode("utf-8"))
    except OutputWriteError:
        pass  # the manifest already holds every result; a full disk must not hide that
