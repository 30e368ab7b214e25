"""Labelled images for ``camtool fit``: a folder of class folders (torchvision's ImageFolder
layout) or a CSV of ``file,label`` rows -> samples and class names; the seeded, stratified
validation split; the checks that turn bad data into one clear line.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn

from camtool.errors import CamtoolError
from camtool.inputs import collect_inputs
from camtool.io.files import read_text_file
from camtool.naming import slug


class DatasetError(CamtoolError):
    """Labelled data ``camtool fit`` cannot train on (one class, a class without images, labels
    that collide as file names, a CSV line it cannot read)."""


class FitWarning(UserWarning):
    """Something ``camtool fit`` left out and went on without (an empty class folder, an image it
    cannot read)."""


@dataclass(frozen=True)
class Sample:
    """One labelled image: its file and its class index."""

    path: Path
    label: int


@dataclass(frozen=True)
class Dataset:
    """Labelled images: ``labels`` (class names, in class-index order) and the samples;
    ``class_folders``: the class folders a folder of them was read from, empty ones too (none
    for a CSV)."""

    source: str
    labels: tuple[str, ...]
    samples: tuple[Sample, ...]
    class_folders: tuple[Path, ...] = ()

    def counts(self) -> list[int]:
        """Images per class, in class-index order."""
        counter = Counter(s.label for s in self.samples)
        return [counter.get(k, 0) for k in range(len(self.labels))]


def read_dataset(spec: str | os.PathLike[str], labels: Sequence[str] | None = None) -> Dataset:
    """Read a folder of class folders or a ``file,label`` CSV.

    Class folders are the folder's sub-folders (hidden ones left out), each searched
    recursively for images; class names are the folder names, sorted (as torchvision's
    ImageFolder does). A CSV names one image per row, relative to the CSV's folder; a first row
    ``file,label`` is a header. With ``labels`` (a validation set read after the training set)
    the classes are those, and a class they lack is an error.

    Raises:
        DatasetError: the path is neither a folder nor a CSV, a CSV line is malformed, a label
            is unknown, a label cannot be a line of a label file, or two class folders with
            images make one class name once stripped (``cat`` and `` cat``; an empty folder is
            left out with a :class:`FitWarning` first, as every empty class folder is).
    """
    path = Path(spec)
    folders: tuple[Path, ...] = ()
    if path.is_dir():
        names, found, folders = _read_folder(path)
    elif path.suffix.lower() == ".csv":
        names, found = _read_csv(path)
    else:
        problem = (
            "no such folder or CSV file" if not path.exists() else "not a folder or a .csv file"
        )
        raise DatasetError(path, problem)
    for name in names:
        if not name or "\n" in name or "\r" in name or name != name.strip():
            raise DatasetError(path, f"class name {name!r} cannot be a line of a label file")
    if labels is None:
        ordered = tuple(sorted(set(names)))
    else:
        ordered = tuple(labels)
        unknown = sorted(set(names) - set(ordered))
        if unknown:
            raise DatasetError(
                path, f"classes not in the training data: {', '.join(map(repr, unknown[:5]))}"
            )
    index = {name: k for k, name in enumerate(ordered)}
    samples = tuple(Sample(p, index[name]) for p, name in found)
    return Dataset(str(path), ordered, samples, folders)


def _read_folder(root: Path) -> tuple[list[str], list[tuple[Path, str]], tuple[Path, ...]]:
    try:
        folders = sorted(
            (e for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")),
            key=lambda e: e.name,
        )
    except OSError as exc:
        raise DatasetError(root, f"cannot list folder: {exc.strerror or exc}") from None
    names, found = [], []
    folder_of: dict[str, str] = {}  # class name -> the folder it came from
    for entry in folders:
        name = entry.name.strip()
        items, failures = collect_inputs([entry.path])
        for failure in failures:
            if failure.error == "no image files in this folder":
                warnings.warn(
                    f"{entry.path}: class folder has no images; class {entry.name!r} is left out",
                    FitWarning,
                    stacklevel=3,
                )
            else:
                warnings.warn(f"{failure.input}: {failure.error}", FitWarning, stacklevel=3)
        if not items:
            continue  # an empty folder is left out: it takes no class name from another
        if name in folder_of:  # 'cat' and ' cat': two folders, one class once stripped
            _refuse_collision(
                root, "class folders", folder_of[name], entry.name, "class name", name
            )
        folder_of[name] = entry.name
        names.append(name)
        found += [(item.path, name) for item in items]
    if not folders:
        raise DatasetError(root, "no class folders (expected DATA/<class>/<image>)")
    return names, found, tuple(Path(entry.path) for entry in folders)


def _read_csv(path: Path) -> tuple[list[str], list[tuple[Path, str]]]:
    text = read_text_file(path, DatasetError, "CSV file", "utf-8-sig")
    found = []
    for number, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise DatasetError(path, f"line {number}: expected 'file,label', got {len(row)} fields")
        file, label = row[0].strip(), row[1].strip()
        if number == 1 and (file.lower(), label.lower()) == ("file", "label"):
            continue
        if not file:
            raise DatasetError(path, f"line {number}: no file name")
        found.append((Path(os.path.abspath(path.parent / file)), label))
    return sorted({label for _, label in found}), found


def check_classes(train: Dataset) -> None:
    """Refuse data no classifier can be trained on: fewer than two classes with images, or
    class names that make the same file name (``T-shirt`` and ``t shirt``: both ``t_shirt``).
    (Class folders that make the same class name, ``cat`` and `` cat``, are refused as they are
    read: the names are stripped.)

    Raises:
        DatasetError: naming the classes.
    """
    present = [name for name, n in zip(train.labels, train.counts(), strict=True) if n]
    if len(present) < 2:
        what = f"one class ({present[0]!r})" if present else "no images"
        raise DatasetError(train.source, f"{what}: a classifier needs at least two classes")
    seen: dict[str, str] = {}
    for name in train.labels:
        key = slug(name)
        if key in seen:
            _refuse_collision(train.source, "classes", seen[key], name, "file name", key)
        seen[key] = name


def _refuse_collision(
    source: str | os.PathLike[str], what: str, first: str, second: str, same: str, key: str
) -> NoReturn:
    """Two names that would become one (as a class name, or as a file name): neither wins."""
    raise DatasetError(
        source, f"{what} {first!r} and {second!r} have the same {same} {key!r}; rename one"
    )


def split(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """A seeded, stratified split: ``fraction`` of each class (at least one image) held out.

    Raises:
        DatasetError: a class with fewer than two images (nothing left to train on), or a
            fraction outside (0, 1).
    """
    if not 0 < fraction < 1:
        raise DatasetError(str(fraction), "the validation fraction must lie between 0 and 1")
    rng = random.Random(seed)
    keep: list[Sample] = []
    held: list[Sample] = []
    for k, name in enumerate(train.labels):
        members = [s for s in train.samples if s.label == k]
        if len(members) < 2:
            raise DatasetError(
                train.source,
                f"class {name!r} has {len(members)} image; at least two are needed to hold one "
                "out for validation (or give a validation set)",
            )
        rng.shuffle(members)
        count = min(len(members) - 1, max(1, round(len(members) * fraction)))
        held += members[:count]
        keep += members[count:]
    order = {s.path: i for i, s in enumerate(train.samples)}
    keep.sort(key=lambda s: order[s.path])
    held.sort(key=lambda s: order[s.path])
    return (
        replace(train, samples=tuple(keep)),
        replace(train, samples=tuple(held)),
    )


def data_hash(datasets: Sequence[Dataset], file_hashes: dict[Path, str]) -> str:
    """sha256 of the labelled data: every (class name, file content hash) pair, in order."""
    digest = hashlib.sha256()
    for dataset in datasets:
        for sample in dataset.samples:
            content = file_hashes.get(sample.path, "unreadable")
            digest.update(f"{dataset.labels[sample.label]}\t{content}\n".encode())
    return digest.hexdigest()
