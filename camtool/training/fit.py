"""``camtool.fit``: train a head for your own classes on a pretrained backbone, write a model
folder that ``camtool explain -m FOLDER/card.toml`` loads, and a report of how it did.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from camtool.errors import EXIT_INTERRUPTED, EXIT_OK, ImageReadError, InvalidArgumentError
from camtool.io.images import load_image
from camtool.models.efficientnet_lite import EfficientNetLite
from camtool.models.loading import DEFAULT_MODEL, LoadedModel, load_model
from camtool.naming import component
from camtool.training.data import (
    Dataset,
    DatasetError,
    FitWarning,
    Sample,
    check_classes,
    data_hash,
    read_dataset,
    split,
)
from camtool.training.features import (
    backbone_hash,
    default_cache_dir,
    extract_features,
    hash_files,
)
from camtool.training.guards import (
    check_after_skipping,
    check_apart,
    check_outside_data,
    check_settings,
)
from camtool.training.report import (
    check_output_folder,
    staged_folder,
)
from camtool.training.train import (
    HeadKind,
    HeadResult,
    TrainSettings,
    finetune,
    network_with_head,
    train_head,
)
from camtool.training.writing import EXACTNESS, ValidationResult, write_model, write_report


@dataclass(frozen=True)
class FitReport:
    """What :func:`fit` did.

    Attributes:
        output: the model folder; card: its ``card.toml`` (``camtool explain -m``).
        model: the trained model, loaded from the card, ready for :func:`camtool.explain`.
        head: the head saved; heads: every head trained (GAP first when compared).
        labels: the class names; train_images, val_images: images used.
        validation: per validation image, what the saved model predicted during training.
        skipped: ``(file, problem)`` per image left out because it could not be read.
        features_cached: whether the backbone features came from the cache.
        interrupted: Ctrl-C ended training early; the best epoch so far was saved.
        seconds: wall-clock time of the whole fit.
    """

    output: Path
    card: Path
    model: LoadedModel
    head: HeadKind
    heads: tuple[HeadResult, ...]
    labels: tuple[str, ...]
    train_images: int
    val_images: int
    validation: tuple[ValidationResult, ...]
    skipped: tuple[tuple[str, str], ...]
    features_cached: bool
    interrupted: bool
    seconds: float

    @property
    def exit_code(self) -> int:
        """0, or 130 when Ctrl-C ended training (the best checkpoint was saved)."""
        return EXIT_INTERRUPTED if self.interrupted else EXIT_OK

    def summary(self) -> str:
        """The heads side by side, what explains them, and where the model is."""
        rows = [
            (
                "head",
                "parameters",
                "train acc",
                "train loss",
                "val acc",
                "val loss",
                "epoch",
                "time",
            )
        ]
        for r in self.heads:
            rows.append((
                r.head, f"{r.parameters:,}", f"{r.train_accuracy:.3f}", f"{r.train_loss:.3f}",
                f"{r.val_accuracy:.3f}", f"{r.val_loss:.3f}", f"{r.best_epoch}/{r.epochs}",
                f"{r.seconds:.1f} s",
            ))  # fmt: skip
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
            for row in rows
        ]
        lines.append(EXACTNESS)
        if self.interrupted:
            lines.append("Interrupted: saved the best epoch so far.")
        lines.append(f"Wrote {self.output}: camtool explain IMAGE -m {self.card}")
        return "\n".join(lines)


def fit(
    data: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    model: str = DEFAULT_MODEL,
    head: HeadKind = "gap",
    epochs: int = 30,
    val: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.2,
    input_size: int | None = None,
    flips: bool = True,
    finetune_stages: int = 0,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
    device: str | None = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    overwrite: bool = False,
    report: bool = True,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> FitReport:
    """Train a classifier for your own classes on a pretrained backbone, and save it.

    The backbone is frozen and its features are computed once (cached on disk, see
    :mod:`camtool.training.features`); a linear head is trained on them. ``head="gap"`` trains
    the global-average-pooling head, which CAM explains exactly; ``head="flatten"`` trains the
    classic Flatten + Dense head on the same features and the GAP head beside it, saves the
    Flatten one and reports both. ``finetune_stages`` > 0 trains the backbone's last stages too.

    Args:
        data: a folder of class folders, or a CSV of ``file,label`` rows.
        output: the model folder to write (``card.toml``, ``weights.safetensors``,
            ``labels.txt``, ``report/``); written whole or not at all.
        model: the backbone: a built-in EfficientNet-Lite (``efficientnet_lite0``/``1``/``2``)
            or a card of one.
        epochs: training epochs; the best one (validation accuracy, then loss) is kept.
        val: a validation folder or CSV; else ``val_fraction`` of each class is held out,
            chosen with ``seed``.
        input_size: the images' shorter side at the network's input (default: the model's);
            small images (28x28) train fast at a small size.
        flips: train on horizontally flipped copies too.
        cache_dir: where features are cached (default ``~/.cache/camtool/fit``, or
            ``$CAMTOOL_CACHE/fit``); ``use_cache=False`` computes them afresh and stores nothing.
        overwrite: replace an existing, non-empty ``output`` folder.
        report: write ``report/`` (confusion matrix, CAM sheets per class).
        progress: show progress bars; ``log``: called with a line per phase.

    Returns:
        A :class:`FitReport` whose ``model`` is loaded from the saved card.

    Raises:
        DatasetError: data a classifier cannot be trained on.
        InvalidArgumentError: bad settings; and (a usage error) an ``output`` that is, holds or
            lies inside the data or validation folder, holds a file of the data, lies inside a
            folder the data is read from (a class folder or an image's folder, linked ones
            too), or is a non-empty folder without ``overwrite``: all refused before any image
            is read.
        ModelLoadError: the backbone cannot be loaded.
        OutputWriteError: ``output`` cannot be written (read-only, forbidden, a full disk:
            found before any image is read, by a probe file).
        KeyboardInterrupt: Ctrl-C before the first epoch ended.
    """
    started = time.perf_counter()
    say = log or (lambda line: None)
    out = Path(output)
    target = Path(os.path.abspath(out))  # `-o .` too: the folder is staged beside it
    settings = TrainSettings(epochs, learning_rate, weight_decay, batch_size, seed)
    check_settings(head, settings, input_size, finetune_stages)
    check_apart(target, data, val)
    train_set, val_set = _datasets(data, val, val_fraction, seed)  # lists files, reads no image
    check_outside_data(target, (("data", train_set), ("validation", val_set)))
    check_output_folder(target, overwrite)  # before any image is read: never lose a whole run
    backbone = _backbone(model, device, input_size)
    assert isinstance(backbone.module, EfficientNetLite)
    say(f"{len(train_set.samples)} training and {len(val_set.samples)} validation images, "
        f"{len(train_set.labels)} classes")  # fmt: skip
    hashes, unreadable = hash_files([s.path for s in (*train_set.samples, *val_set.samples)])
    data_sha = data_hash([train_set, val_set], hashes)
    grid = math.ceil(backbone.preprocessing.input_size / 32)
    classes = len(train_set.labels)
    cache = None if not use_cache else Path(cache_dir) if cache_dir else default_cache_dir()
    results: list[HeadResult] = []
    if finetune_stages:
        network, result, val_logits, skipped, train_set, val_set = _finetune(
            backbone,
            train_set,
            val_set,
            hashes,
            head,
            grid,
            finetune_stages,
            settings,
            flips,
            progress,
        )
        results.append(result)
        cached = False
    else:
        key = backbone_hash(backbone)
        options: dict[str, Any] = {
            "grid": grid if head == "flatten" else None, "cache_dir": cache, "backbone": key,
            "batch_size": min(batch_size, 64), "progress": progress,
        }  # fmt: skip
        train_f = extract_features(backbone, [s.path for s in train_set.samples], hashes,
                                   flips=flips, label="train features", **options)  # fmt: skip
        val_f = extract_features(backbone, [s.path for s in val_set.samples], hashes,
                                 label="val features", **options)  # fmt: skip
        cached = train_f.cached and val_f.cached
        skipped = (*train_f.failures, *val_f.failures)
        _warn_skipped(skipped)
        train_set = _kept(train_set, train_f.index)
        val_set = _kept(val_set, val_f.index)
        check_after_skipping(train_set, val_set)
        y = torch.tensor([s.label for s in train_set.samples], dtype=torch.int64)
        y_val = torch.tensor([s.label for s in val_set.samples], dtype=torch.int64)
        heads: list[HeadKind] = ["gap", "flatten"] if head == "flatten" else ["gap"]
        trained = {}
        for kind in heads:
            if results and results[-1].interrupted:
                break
            x, x_val, x_flip = (
                (train_f.pooled, val_f.pooled, train_f.pooled_flipped)
                if kind == "gap"
                else _flat(train_f.grid, val_f.grid, train_f.grid_flipped)
            )
            say(f"training the {kind} head on {len(y)} images{' and their flips' if flips else ''}")
            linear, result = train_head(
                kind, x, y, x_val, y_val, classes, settings, x_flip, progress
            )
            trained[kind] = (linear, x_val)
            results.append(result)
        saved = head if head in trained else "gap"
        linear, x_val = trained[saved]
        with torch.no_grad():
            val_logits = linear(x_val.float())
        network = network_with_head(backbone.module, saved, grid, linear)
        head = saved
    skipped = (*tuple((str(p), "cannot read the file") for p, _ in unreadable), *skipped)
    probabilities = val_logits.float().softmax(1)
    validation = tuple(
        ValidationResult(str(s.path), s.label, int(p.argmax()), float(p.max()))
        for s, p in zip(val_set.samples, probabilities, strict=True)
    )
    trained_model = LoadedModel(
        component(out.name or "model"), network, backbone.preprocessing, train_set.labels,
        weights="camtool fit", dtype=backbone.dtype, channels_last=backbone.channels_last,
        preprocessing_source=backbone.preprocessing_source, labels_source="camtool fit",
    )  # fmt: skip
    interrupted = any(r.interrupted for r in results)
    say(f"writing {out}")
    card_fields = {
        "backbone": backbone.name, "backbone_weights": backbone.weights, "head": head,
        "grid": grid if head == "flatten" else None, "finetune_stages": finetune_stages,
        "data": os.path.abspath(data), "validation": os.path.abspath(val) if val else None,
        "val_fraction": None if val else val_fraction, "seed": seed, "data_sha256": data_sha,
        "train_images": len(train_set.samples), "val_images": len(val_set.samples),
        "skipped_images": len(skipped), "flips": flips, "epochs": epochs,
        "learning_rate": learning_rate, "weight_decay": weight_decay, "interrupted": interrupted,
    }  # fmt: skip
    with staged_folder(target, overwrite) as folder:
        write_model(folder, trained_model, head, grid, card_fields, results)
        if report:
            write_report(
                folder / "report",
                trained_model,
                val_set,
                probabilities,
                results,
                skipped,
                validation,
            )
    loaded = load_model(str(target / "card.toml"), device=device)
    return FitReport(
        out, out / "card.toml", loaded, head, tuple(results), train_set.labels,
        len(train_set.samples), len(val_set.samples), validation, tuple(skipped), cached,
        interrupted, time.perf_counter() - started,
    )  # fmt: skip


def _backbone(model: str, device: str | None, input_size: int | None) -> LoadedModel:
    loaded = load_model(model, device=device)
    if not isinstance(loaded.module, EfficientNetLite) or loaded.card is None:
        raise InvalidArgumentError(
            model,
            "camtool fit trains on the built-in EfficientNet-Lite backbones "
            "(efficientnet_lite0, efficientnet_lite1, efficientnet_lite2) or a card of one",
        )
    if input_size is not None:
        prep = replace(loaded.preprocessing, input_size=input_size)
        loaded = replace(
            loaded,
            preprocessing=prep,
            preprocessing_source=f"{loaded.preprocessing_source}, input size {input_size}",
        )
    return loaded


def _datasets(
    data: str | os.PathLike[str], val: str | os.PathLike[str] | None, fraction: float, seed: int
) -> tuple[Dataset, Dataset]:
    everything = read_dataset(data)
    check_classes(everything)
    if val is None:
        return split(everything, fraction, seed)
    held = read_dataset(val, everything.labels)
    if not held.samples:
        raise DatasetError(val, "no validation images")
    return everything, held


def _kept(dataset: Dataset, index: Tensor) -> Dataset:
    samples = tuple(dataset.samples[i] for i in index.tolist())
    return replace(dataset, samples=samples)


def _warn_skipped(skipped: Sequence[tuple[str, str]]) -> None:
    for file, problem in skipped:
        warnings.warn(f"{file}: {problem}; left out", FitWarning, stacklevel=3)


def _flat(*grids: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    flat = [g.flatten(1) if g is not None else None for g in grids]
    assert flat[0] is not None and flat[1] is not None
    return flat[0], flat[1], flat[2]


def _finetune(
    backbone: LoadedModel,
    train_set: Dataset,
    val_set: Dataset,
    hashes: dict[Path, str],
    head: HeadKind,
    grid: int,
    stages: int,
    settings: TrainSettings,
    flips: bool,
    progress: bool,
) -> tuple[Any, HeadResult, Tensor, tuple[tuple[str, str], ...], Dataset, Dataset]:
    skipped: list[tuple[str, str]] = []
    prepared = []
    for dataset in (train_set, val_set):
        kept: list[tuple[Sample, Tensor]] = []
        for sample in dataset.samples:
            if sample.path not in hashes:
                continue
            try:
                kept.append((sample, backbone.preprocessing.prepare(load_image(sample.path))[0]))
            except ImageReadError as exc:
                skipped.append((str(sample.path), exc.problem))
        groups: dict[tuple[int, ...], list[tuple[Sample, Tensor]]] = {}
        for item in kept:
            groups.setdefault(tuple(item[1].shape), []).append(item)
        ordered = [item for members in groups.values() for item in members]
        batches = [
            torch.stack([t for _, t in members[i : i + settings.batch_size]])
            for members in groups.values()
            for i in range(0, len(members), settings.batch_size)
        ]
        prepared.append((replace(dataset, samples=tuple(s for s, _ in ordered)), batches))
    _warn_skipped(skipped)
    (train_set, batches), (val_set, val_batches) = prepared
    check_after_skipping(train_set, val_set)
    labels = torch.tensor([s.label for s in train_set.samples], dtype=torch.int64)
    val_labels = torch.tensor([s.label for s in val_set.samples], dtype=torch.int64)
    assert isinstance(backbone.module, EfficientNetLite)
    network, result, val_logits = finetune(
        backbone.module, head, grid, stages, batches, labels, val_batches, val_labels,
        len(train_set.labels), settings, backbone.device, flips, progress,
    )  # fmt: skip
    return network, result, val_logits, tuple(skipped), train_set, val_set
