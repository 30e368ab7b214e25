"""Batch export: many images -> overlay files and a manifest; streaming, parallel, resumable.

The pipeline: inputs are enumerated (files, folders, globs, ``@list.txt``); decoding and
preprocessing run in DataLoader workers; images of equal network-input size are batched (batching
never pads, so a batched result equals the single-image one); CAMs come from one forward pass per
batch; heatmaps, overlays and file writes run on a pool of threads. Queues are bounded, so memory
stays flat however many images there are.

Every output file is written under a temporary name and renamed; an image's manifest line is
appended only after all its files are in place, so the manifest (``manifest.jsonl``, one JSON
object per line) always lists exactly the images whose outputs exist. ``resume=True`` skips the
inputs it already lists.
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
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from camtool import __version__
from camtool.cam import CamBatch, compute
from camtool.errors import (
    EXIT_OK,
    EXIT_PARTIAL,
    CamtoolError,
    ImageReadError,
    InvalidArgumentError,
    OutputWriteError,
)
from camtool.explanation import Explanation, ModelSpec, build_explanation, get_model, resolve_class
from camtool.io import (
    image_suffixes,
    load_image,
    open_atomic,
    read_text_file,
    save_image,
    write_bytes_atomic,
)
from camtool.models import DEFAULT_MODEL, LoadedModel, Preprocessing, Region
from camtool.progress import ProgressBar
from camtool.render import COLORMAPS

MANIFEST = "manifest.jsonl"
SUMMARY = "summary.json"
EXIT_INTERRUPTED = 130


# --------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class InputItem:
    """One image to export: the file, and the stem of its outputs under the output folder."""

    path: Path
    stem: PurePosixPath  # relative, never absolute, never with '..'


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
    return rel_path.with_suffix("")


def collect_inputs(
    specs: Sequence[str | os.PathLike[str]], exclude: str | os.PathLike[str] | None = None
) -> tuple[list[InputItem], list[ExportFailure]]:
    """Expand inputs into image files and the output stems that mirror their relative paths.

    Args:
        specs: files; folders (searched recursively for image suffixes); globs (``**`` allowed);
            ``@list.txt`` files with one path per line (relative to the list's folder).

    Returns:
        ``(items, failures)``: failures are specs that name nothing, unreadable folders and
        symlink loops. Output stems are relative to the folder, the glob's fixed prefix, or the
        common folder of a list's entries, so no output can escape the output folder. Files
        under ``exclude`` (the output folder) and second mentions of a file are left out.
    """
    items: list[InputItem] = []
    failures: list[ExportFailure] = []
    used: set[str] = set()
    seen: set[str] = set()
    skip = os.path.realpath(exclude) + os.sep if exclude is not None else None

    def add(path: Path, root: Path) -> None:
        real = os.path.realpath(path)
        if real in seen or (skip and real.startswith(skip)):
            return
        seen.add(real)
        stem = _relative_stem(path, root)
        key, n = str(stem), 1
        while key.lower() in used:  # a.jpg and a.png, or the same name from two inputs
            n += 1
            key = f"{stem}_{n}"
        used.add(key.lower())
        items.append(InputItem(path, PurePosixPath(key)))

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
            before = len(items)
            for found in _walk_images(Path(text)):
                if isinstance(found, ExportFailure):
                    failures.append(found)
                else:
                    add(found, Path(text))
            if len(items) == before:
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
    out: CamBatch | None = None
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
    model: LoadedModel,
    classes: Sequence[int] | None,
    maps: int,
    crop: bool,
    batch_size: int,
    workers: int,
    decoder: Decoder = "threads",
) -> Generator[_Result, None, None]:
    dataset = _DecodeDataset(items, model.preprocessing, crop)
    loader = _decoded(dataset, workers, 2 * batch_size, decoder)
    buckets: dict[tuple[int, ...], list[_Decoded]] = {}
    pending = 0
    max_pending = 4 * batch_size

    def run(bucket: list[_Decoded]) -> Iterator[_Result]:
        batch = torch.stack([s.tensor for s in bucket if s.tensor is not None])
        out = compute(model, batch, classes, top_k=maps)
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
    loaded = get_model(model, device, **model_options)
    wanted = [resolve_class(c, loaded.labels) for c in classes] if classes else None
    items, failures = collect_inputs(inputs)
    yield from failures
    workers = default_workers() if workers is None else workers
    for result in _stream(items, loaded, wanted, maps, crop, batch_size, workers):
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


def slug(text: str) -> str:
    """A class name as a file-name part: ``"tiger cat"`` -> ``"tiger_cat"``."""
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_") or "class"


def output_path(out_dir: Path, stem: PurePosixPath, suffix: str) -> Path:
    """``out_dir/<stem><suffix>``, refusing any path that would land outside ``out_dir``
    (through a symlinked folder inside it, say)."""
    target = out_dir / f"{stem}{suffix}"
    root = os.path.realpath(out_dir)
    parent = os.path.realpath(target.parent)
    if parent != root and not parent.startswith(root + os.sep):
        raise OutputWriteError(target, "output path escapes the output folder")
    return target


def write_outputs(
    ex: Explanation, stem: PurePosixPath, out_dir: Path, options: ExportOptions
) -> list[Path]:
    """Write one image's overlays (and heatmaps, raw CAMs) atomically; return their paths.

    If any write fails, the files already written for this image are removed, so an image is
    either complete on disk or absent.
    """
    written: list[Path] = []
    try:
        for i, score in enumerate(ex.explained):
            name = f"_cam_{score.index}_{slug(score.name)}"
            overlay = ex.overlay(i, alpha=options.alpha, colormap=options.colormap, box=options.box)
            target = output_path(out_dir, stem, f"{name}.{options.image_format}")
            written.append(save_image(target, overlay, options.quality))
            if options.heatmap:
                gray = (ex.heatmaps[i] * 255).round().to(torch.uint8)
                written.append(
                    save_image(
                        output_path(
                            out_dir, stem, f"_heatmap_{score.index}_{slug(score.name)}.png"
                        ),
                        gray,
                    )
                )
        if options.raw is not None:
            target = output_path(out_dir, stem, f"_cams.{options.raw}")
            write_bytes_atomic(target, _raw_bytes(ex, options))
            written.append(target)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written


_Written = tuple["Explanation | None", list[Path], "str | None"]


def _render_and_write(
    model: LoadedModel, result: _Result, item: InputItem, out_dir: Path, options: ExportOptions
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
        return ex, write_outputs(ex, item.stem, out_dir, options), None
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
            origin=np.array(ex.geometry.origin),
            stride=np.array(ex.geometry.stride),
        )
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# The manifest


def read_manifest(path: Path) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Return ``({input: last record}, run headers)`` from a manifest; a torn last line (from a
    killed run) is ignored."""
    records: dict[str, dict[str, Any]] = {}
    runs: list[dict[str, Any]] = []
    if not path.exists():
        return records, runs
    with path.open("rb") as handle:
        for line in handle:
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if record.get("type") == "run":
                runs.append(record)
            elif "input" in record:
                records[record["input"]] = record
    return records, runs


class _Manifest:
    """Append-only JSON Lines file; each line is flushed as soon as it is written."""

    def __init__(self, path: Path, append: bool) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if append:
                self._drop_torn_line()
            self.handle = path.open("a" if append else "w", encoding="utf-8")
        except OSError as exc:
            message = f"cannot write the manifest: {exc.strerror or exc}"
            raise OutputWriteError(path, message, exc.errno) from None

    def _drop_torn_line(self) -> None:
        """Cut a last line that a killed run left unfinished (truncating, never rewriting)."""
        if not self.path.exists():
            return
        data_end = self.path.stat().st_size
        with self.path.open("rb") as handle:
            position = data_end
            while position > 0:
                step = min(4096, position)
                handle.seek(position - step)
                newline = handle.read(step).rfind(b"\n")
                if newline >= 0:
                    position = position - step + newline + 1
                    break
                position -= step
        if position != data_end:
            os.truncate(self.path, position)

    def write(self, record: dict[str, Any]) -> None:
        try:
            self.handle.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
            self.handle.flush()
        except OSError as exc:
            raise OutputWriteError(
                self.path, f"cannot write the manifest: {exc.strerror or exc}"
            ) from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.handle.close()


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
        model: as for :func:`camtool.explain`; ``model_options`` (weights, labels, layer,
            classifier, dtype) as for :func:`camtool.load_model`.
        classes: fixed classes to explain (names or indices); default: each image's top ``maps``.
        crop: centre-crop instead of using the whole image.
        options: rendering and file options (:class:`ExportOptions`).
        resume: skip inputs the manifest already lists (done or failed) whose outputs exist.
        batch_size: images per forward pass (default: 16 on the CPU, 64 on a GPU); workers: decoding workers (default: CPUs - 1, at
            most 8); decoder: ``"threads"`` or ``"processes"`` (a DataLoader); writers: threads
            that render and write (default: 2).
        progress: show a rich progress bar (images/s, ETA, failures).

    Raises:
        OutputWriteError: the output folder cannot be written (the run stops; the manifest keeps
            every finished image). ExportInterrupted: Ctrl-C (the same guarantee).
    """
    started = time.perf_counter()
    options = options or ExportOptions()
    _check_options(options)
    out = Path(out_dir)
    loaded = get_model(model, device, **model_options)
    batch_size = batch_size or (16 if loaded.device.type == "cpu" else 64)
    wanted = [resolve_class(c, loaded.labels) for c in classes] if classes else None
    items, failures = collect_inputs(inputs, exclude=out)
    settings = {
        "model": loaded.name, "weights": loaded.weights, "classes": wanted, "maps": maps, "crop": crop,
        **{k: (str(v) if v is not None else None) for k, v in sorted(model_options.items())},
        **{k: v for k, v in asdict(options).items() if k != "quality"},
    }  # fmt: skip
    previous, runs = read_manifest(out / MANIFEST) if resume else ({}, [])
    if runs and runs[-1].get("settings") != settings:
        raise InvalidArgumentError(
            out / MANIFEST,
            "was written with other settings; use another --out, or the same options",
        )
    items = _restore_stems(items, previous)
    todo, carried = _split_resumed(items, previous)
    manifest = _Manifest(out / MANIFEST, append=resume)
    head = loaded.head.describe()
    manifest.write({"type": "run", "camtool": __version__, "started": _now(), "resumed": bool(runs), "cwd": os.getcwd(),
                    "settings": settings, "head": head, "head_detail": loaded.head.as_dict()})  # fmt: skip
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

    def record_failure(failure: ExportFailure) -> None:
        failed.append(failure)
        manifest.write(
            {"type": "image", "input": failure.input, "status": "failed", "error": failure.error}
        )
        if bar:
            bar.advance(failed=len(failed))

    def finish(done: set[Future[_Written]]) -> None:
        nonlocal exported
        for future in done:
            item = inflight.pop(future)
            ex, paths, error = future.result()  # re-raises a file-system error
            if ex is None:
                record_failure(ExportFailure(str(item.path), error or "unknown error"))
                continue
            manifest.write({"type": "image", "input": str(item.path), "status": "ok", "output_stem": str(item.stem),
                            **ex.to_dict(), "outputs": [str(p) for p in paths]})  # fmt: skip
            exported += 1
            if bar:
                bar.advance(failed=len(failed))

    for failure in failures:
        record_failure(failure)
    workers = default_workers() if workers is None else workers
    opencv_threads = _single_threaded_opencv() if decoder == "threads" else None
    stream = _stream(todo, loaded, wanted, maps, crop, batch_size, workers, decoder)
    with _interrupt_flag() as interrupted:
        try:
            for result in stream:
                if interrupted:
                    break
                item = todo[result.index]
                if result.error is not None or result.out is None:
                    record_failure(ExportFailure(str(item.path), result.error or "unknown error"))
                    continue
                inflight[
                    writer_pool.submit(_render_and_write, loaded, result, item, out, options)
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
    )  # fmt: skip
    _write_summary(report, loaded, settings, head)
    if interrupted:
        raise ExportInterrupted(report)
    return report


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
    taken = {str(r["output_stem"]).lower() for r in previous.values() if r.get("output_stem")}
    restored = []
    for item in items:
        record = previous.get(str(item.path))
        if record and record.get("output_stem"):
            restored.append(InputItem(item.path, PurePosixPath(record["output_stem"])))
            continue
        stem, n = item.stem, 1
        while str(stem).lower() in taken:
            n += 1
            stem = PurePosixPath(f"{item.stem}_{n}")
        taken.add(str(stem).lower())
        restored.append(InputItem(item.path, stem))
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
    items: list[InputItem], previous: dict[str, dict[str, Any]]
) -> tuple[list[InputItem], list[dict[str, Any]]]:
    """Inputs still to do, and the failure records carried over from the earlier run."""
    todo, carried = [], []
    for item in items:
        record = previous.get(str(item.path))
        if record is None:
            todo.append(item)
        elif record.get("status") == "failed":
            carried.append(record)
        elif not all(Path(p).exists() for p in record.get("outputs", [])):
            todo.append(item)
    return todo, carried


def _drain(inflight: dict[Future[_Written], Any], finish: Any) -> None:
    """Let the writes in flight complete and record them (a write error is dropped here)."""
    with contextlib.suppress(CamtoolError, OSError):
        finish(wait(inflight).done)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_summary(
    report: ExportReport, model: LoadedModel, settings: dict[str, Any], head: str
) -> None:
    summary = {
        "camtool": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "finished": _now(), "model": model.name, "head": head, "device": str(model.device),
        "settings": settings, "total": report.total, "exported": report.exported,
        "failed": report.failed, "skipped": report.skipped, "seconds": round(report.seconds, 3),
        "images_per_second": round(report.images_per_second, 2), "interrupted": report.interrupted,
        "failures": [asdict(f) for f in report.failures],
    }  # fmt: skip
    try:
        with open_atomic(report.summary) as handle:
            handle.write(json.dumps(summary, indent=2).encode("utf-8"))
    except OutputWriteError:
        pass  # the manifest already holds every result; a full disk must not hide that
