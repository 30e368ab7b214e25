"""Backbone features for ``camtool fit``: computed once, in batches, and cached on disk.

A cache file holds tensors only (safetensors; nothing is ever unpickled) and is named by a
sha256 of everything its values depend on: the backbone's weights, the preprocessing, the grid
the flatten head reads, whether flipped copies are included, and the content of every image
file in order. A second run with other head settings (epochs, learning rate, the other head
when the grid is the same) reads the file instead of running the backbone again.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from camtool.errors import CamtoolError, ImageReadError
from camtool.io.files import read_file, write_bytes_atomic
from camtool.io.images import image_byte_limit, load_image, max_pixels_limit
from camtool.models.loading import LoadedModel
from camtool.models.network import network_failures
from camtool.progress import ProgressBar
from camtool.training.data import FitWarning

#: Bumped when the layout of a cache file changes (old files are then simply not found).
CACHE_FORMAT = "camtool-fit-features-1"


def default_cache_dir() -> Path:
    """``$CAMTOOL_CACHE/fit``, else ``$XDG_CACHE_HOME/camtool/fit``, else ``~/.cache/camtool/fit``."""
    if os.environ.get("CAMTOOL_CACHE"):
        return Path(os.environ["CAMTOOL_CACHE"]).expanduser() / "fit"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "camtool" / "fit"


@dataclass(frozen=True)
class Features:
    """Backbone features of the images that could be read.

    Attributes:
        index: ``Tensor[M]`` int64, positions of these images in the list asked for.
        pooled: ``Tensor[M,C]`` float32, globally averaged features (the GAP head's input).
        grid: ``Tensor[M,C,g,g]`` float16, features averaged to the flatten head's grid, or None.
        pooled_flipped, grid_flipped: the same for the horizontally flipped images, or None.
        failures: ``(file, problem)`` for each image that could not be read.
        cached: whether they came from the cache.
    """

    index: Tensor
    pooled: Tensor
    grid: Tensor | None
    pooled_flipped: Tensor | None
    grid_flipped: Tensor | None
    failures: tuple[tuple[str, str], ...]
    cached: bool


def hash_files(paths: Sequence[Path]) -> tuple[dict[Path, str], list[tuple[str, str]]]:
    """sha256 of each file's content (bounded reads, as images are read); unreadable files are
    returned as ``(file, problem)`` instead."""
    limit = image_byte_limit(max_pixels_limit())
    hashes: dict[Path, str] = {}
    failures = []
    for path in paths:
        try:
            hashes[path] = hashlib.sha256(read_file(path, limit)).hexdigest()
        except ImageReadError as exc:
            failures.append((str(path), exc.problem))
    return hashes, failures


def backbone_hash(model: LoadedModel) -> str:
    """sha256 of the backbone's parameters and buffers (every tensor but the classifier's)."""
    digest = hashlib.sha256(model.name.encode())
    for name, tensor in model.module.state_dict().items():
        if name.startswith("_fc."):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_key(
    backbone: str, model: LoadedModel, grid: int | None, flips: bool, contents: Sequence[str]
) -> str:
    """The cache file's name: sha256 of the backbone hash, preprocessing, grid, flips, contents."""
    prep = model.preprocessing
    description = {
        "format": CACHE_FORMAT, "backbone": backbone, "input_size": prep.input_size,
        "mean": list(prep.mean), "std": list(prep.std), "interpolation": prep.interpolation,
        "dtype": str(model.dtype), "grid": grid, "flips": flips, "files": list(contents),
    }  # fmt: skip
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


def extract_features(
    model: LoadedModel,
    paths: Sequence[Path],
    hashes: dict[Path, str],
    *,
    grid: int | None = None,
    flips: bool = False,
    cache_dir: Path | None = None,
    backbone: str | None = None,
    batch_size: int = 32,
    progress: bool = False,
    label: str = "features",
) -> Features:
    """The backbone's features of ``paths`` (whole images, the model's preprocessing), from the
    cache when it holds them, else computed in batches and stored there.

    Args:
        model: an EfficientNet-Lite (``forward_features``) loaded by :func:`camtool.load_model`.
        paths: the images; ``hashes``: their content hashes (:func:`hash_files`); a path
            without one is recorded as a failure.
        grid: also keep the features averaged to ``grid`` x ``grid`` cells (flatten heads).
        flips: also compute the features of the horizontally flipped images.
        cache_dir: where cache files live (None: no cache).
        progress: show a progress bar.
    """
    contents = [hashes.get(p, "unreadable") for p in paths]
    key = cache_key(backbone or backbone_hash(model), model, grid, flips, contents)
    file = cache_dir / f"{key[:40]}.safetensors" if cache_dir is not None else None
    if file is not None and file.is_file():
        found = _read_cache(file, grid is not None, flips)
        if found is not None:
            return found
    failures = [(str(p), "cannot read the file") for p in paths if p not in hashes]
    kept: list[int] = []
    pooled: list[Tensor] = []
    grids: list[Tensor] = []
    pooled_f: list[Tensor] = []
    grids_f: list[Tensor] = []
    bar = ProgressBar(label, len(paths), "img") if progress else None
    try:
        for start in range(0, len(paths), batch_size):
            chunk: list[tuple[int, Tensor]] = []
            for i in range(start, min(start + batch_size, len(paths))):
                if paths[i] in hashes:
                    try:
                        picture = load_image(paths[i])
                        chunk.append((i, model.preprocessing.prepare(picture)[0]))
                    except ImageReadError as exc:
                        failures.append((str(paths[i]), exc.problem))
                if bar is not None:
                    bar.advance(len(failures))
            for members in _same_shape(chunk):
                batch = torch.stack([t for _, t in members])
                kept += [i for i, _ in members]
                for flipped, (p_out, g_out) in (
                    (False, (pooled, grids)),
                    (True, (pooled_f, grids_f)),
                ):
                    if flipped and not flips:
                        continue
                    maps = _run(model, batch.flip(-1) if flipped else batch)
                    p_out.append(maps.mean(dim=(-2, -1)))
                    if grid is not None:
                        g_out.append(F.adaptive_avg_pool2d(maps, grid).half())
    finally:
        if bar is not None:
            bar.stop()
    index = torch.tensor(kept, dtype=torch.int64)
    order = torch.argsort(index)

    def joined(parts: list[Tensor], wanted: bool) -> Tensor | None:
        return torch.cat(parts)[order].contiguous() if wanted and parts else None

    result = Features(
        index=index[order],
        pooled=torch.cat(pooled)[order].contiguous() if pooled else torch.zeros(0, 0),
        grid=joined(grids, grid is not None),
        pooled_flipped=joined(pooled_f, flips),
        grid_flipped=joined(grids_f, flips and grid is not None),
        failures=tuple(sorted(failures)),
        cached=False,
    )
    if file is not None and len(kept):
        _write_cache(file, result)
    return result


def _same_shape(chunk: list[tuple[int, Tensor]]) -> list[list[tuple[int, Tensor]]]:
    groups: dict[tuple[int, ...], list[tuple[int, Tensor]]] = {}
    for item in chunk:
        groups.setdefault(tuple(item[1].shape), []).append(item)
    return list(groups.values())


def _run(model: LoadedModel, batch: Tensor) -> Tensor:
    """``Tensor[N,C,h,w]`` float32 on the CPU: the backbone's feature map of a batch."""
    placed = model.placed(batch)
    with torch.inference_mode(), model.autocast(), network_failures(model.name, batch):
        maps = model.module.forward_features(placed)  # type: ignore[operator]
    return maps.float().cpu()


def _write_cache(file: Path, features: Features) -> None:
    from safetensors.torch import save

    tensors = {"index": features.index, "pooled": features.pooled}
    for name in ("grid", "pooled_flipped", "grid_flipped"):
        value = getattr(features, name)
        if value is not None:
            tensors[name] = value
    metadata = {"format": CACHE_FORMAT, "failures": json.dumps(list(features.failures))}
    try:
        write_bytes_atomic(file, save(tensors, metadata=metadata))
    except CamtoolError as exc:  # a cache that cannot be written costs time, nothing else
        warnings.warn(f"feature cache not written: {exc}", FitWarning, stacklevel=3)


def _read_cache(file: Path, grid: bool, flips: bool) -> Features | None:
    """The features in a cache file, or None (with a warning) when it cannot be used."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
            names = set(handle.keys())
            if metadata.get("format") != CACHE_FORMAT:
                raise ValueError("unknown format")
            tensors = {name: handle.get_tensor(name) for name in names}
        failures = tuple((str(a), str(b)) for a, b in json.loads(metadata["failures"]))
        index, pooled = tensors["index"], tensors["pooled"]
        needed = {"index", "pooled"} | ({"grid"} if grid else set())
        needed |= {"pooled_flipped"} | ({"grid_flipped"} if grid else set()) if flips else set()
        if not needed <= names or pooled.shape[0] != index.shape[0]:
            raise ValueError("tensors are missing")
    except Exception as exc:  # a damaged or foreign file: recompute, and overwrite it
        warnings.warn(
            f"{file}: feature cache unreadable ({exc}); recomputing", FitWarning, stacklevel=3
        )
        return None
    return Features(
        index=index,
        pooled=pooled,
        grid=tensors.get("grid") if grid else None,
        pooled_flipped=tensors.get("pooled_flipped") if flips else None,
        grid_flipped=tensors.get("grid_flipped") if grid and flips else None,
        failures=failures,
        cached=True,
    )
