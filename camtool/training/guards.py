"""What ``camtool fit`` refuses before it reads any image: settings out of range, a model folder
that is, holds or lies inside the data (or a folder the data is read from), and a data set that
leaving out unreadable images made unusable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from camtool.errors import InvalidArgumentError
from camtool.image import MAX_INPUT_SIZE
from camtool.inputs import RealFolder, lies_within
from camtool.settings import check_positive_int
from camtool.training.data import (
    Dataset,
    DatasetError,
)
from camtool.training.train import (
    TrainSettings,
)


def check_settings(head: str, settings: TrainSettings, input_size: int | None, stages: int) -> None:
    if head not in ("gap", "flatten"):
        raise InvalidArgumentError(head, "unknown head; choose gap or flatten")
    check_positive_int(settings.epochs, "epochs")  # 2.5 too: not only below 1
    check_positive_int(settings.batch_size, "batch_size")
    checks = [
        (settings.learning_rate > 0, "learning rate", "must be positive"),
        (settings.weight_decay >= 0, "weight decay", "must not be negative"),
        (stages >= 0, "finetune stages", "must not be negative"),
        (input_size is None or 16 <= input_size <= MAX_INPUT_SIZE, "input size",
         f"must lie between 16 and {MAX_INPUT_SIZE} px (a model card's bounds)"),
    ]  # fmt: skip
    for ok, name, problem in checks:
        if not ok:
            raise InvalidArgumentError(name, problem)


def check_apart(
    target: Path, data: str | os.PathLike[str], val: str | os.PathLike[str] | None
) -> None:
    """Refuse a model folder that is, holds or lies inside the data or validation folder (or
    holds a data CSV): writing or replacing it would change or delete the data."""
    for what, source in (("data", data), ("validation", val)):
        if source is None or not os.path.exists(source):
            continue  # read_dataset says what is missing
        kind = "folder" if os.path.isdir(source) else "file"
        if lies_within(source, target):
            problem = (
                f"is the {what} {kind}"
                if lies_within(target, source)
                else f"holds the {what} {kind} {source}"
            )
        elif kind == "folder" and lies_within(target, source):
            problem = f"lies inside the {what} folder {source}"
        else:
            continue
        raise InvalidArgumentError(
            target, f"{problem}; choose a model folder outside the training data"
        )


def check_outside_data(target: Path, datasets: Sequence[tuple[str, Dataset]]) -> None:
    """Refuse a model folder that holds an image of the data (a CSV's file, a class folder
    linked from inside it), or lies inside a folder the data is read from (a class folder,
    linked from elsewhere; a listed image's folder): its report's pictures would be read as
    images of the data next time. However the paths are spelled; each resolved once."""
    folder = RealFolder(target)
    for _, dataset in datasets:
        for sample in dataset.samples:
            if folder.holds(sample.path):
                raise InvalidArgumentError(
                    target,
                    f"holds {sample.path}, an image of {dataset.source}; choose a model folder "
                    "outside the training data",
                )
    resolved: set[str] = set()
    for what, dataset in datasets:
        parents = dict.fromkeys(s.path.parent for s in dataset.samples)
        for source in (*dataset.class_folders, *parents):
            key = os.fspath(source)
            if key in resolved:
                continue
            resolved.add(key)
            around = RealFolder(source)
            if around.holds_real(folder.real):
                real = around.real
                linked = f" ({real})" if real != os.path.abspath(source) else ""
                raise InvalidArgumentError(
                    target,
                    f"lies inside the {what} folder {source}{linked}; choose a model folder "
                    "outside the training data",
                )


def check_after_skipping(train: Dataset, val: Dataset) -> None:
    for name, count in zip(train.labels, train.counts(), strict=True):
        if not count:
            raise DatasetError(
                train.source, f"class {name!r}: none of its training images could be read"
            )
    if not val.samples:
        raise DatasetError(val.source, "none of the validation images could be read")
