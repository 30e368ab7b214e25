"""Model cards and label sets: named models as small TOML files, and class names.

A *model card* names an architecture (a torchvision name such as ``resnet18``, ``camtool:NAME``,
``timm:NAME`` or ``torchvision:NAME``),
where its weights come from (with their sha256), the preprocessing they were trained with and
their label set. Built-in cards ship with camtool; users add their own by putting cards in a folder
named by ``CAMTOOL_MODELS`` (``os.pathsep``-separated) or by passing a card's path.
"""

from __future__ import annotations

import difflib
import importlib.resources
import importlib.util
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

from camtool.errors import ModelLoadError, UnknownModelError
from camtool.image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_INPUT_SIZE,
    Preprocessing,
    crop_pct_problem,
    normalization_problem,
)
from camtool.io.files import read_text_file

# --------------------------------------------------------------------------------------------
# Model cards


@dataclass(frozen=True)
class WeightsSource:
    """Where a card's weights come from: a file inside an installed package, a path, or a URL."""

    package: str | None = None
    distribution: str | None = None
    file: str | None = None
    url: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class ModelCard:
    """A named model: architecture, weights, preprocessing and labels."""

    name: str
    architecture: str
    description: str = ""
    labels: str = "imagenet1k"
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    weights: WeightsSource | None = None
    path: Path | None = None
    builtin: bool = False
    #: Keyword arguments for the architecture's builder (``[architecture_options]``), e.g.
    #: ``head = "flatten"`` for a Flatten + Dense head trained by ``camtool fit``.
    options: dict[str, Any] = field(default_factory=dict)


def builtin_card_dir() -> Path:
    """Return the folder of the built-in cards: ``camtool/_cards`` when installed, else ``models/``."""
    packaged = importlib.resources.files("camtool") / "_cards"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "models"


def user_card_dirs() -> list[Path]:
    """Return the folders named by ``CAMTOOL_MODELS`` (separated by ``os.pathsep``)."""
    value = os.environ.get("CAMTOOL_MODELS", "")
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p]


def read_card(path: str | os.PathLike[str], builtin: bool = False) -> ModelCard:
    """Read a model card from a TOML file."""
    path = Path(path)
    text = read_text_file(path, ModelLoadError, "model card")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelLoadError(path, f"model card is not valid TOML: {exc}") from None
    try:
        return _card_from_table(data, path, builtin)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        problem = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ModelLoadError(path, f"bad model card: {problem}") from None


#: The smallest ``input_size`` a card may ask for (a hand-built network may take less in Python).
MIN_CARD_INPUT_SIZE = 16

#: The keys of a card's ``[preprocessing]`` table.
PREPROCESSING_KEYS = ("input_size", "interpolation", "crop_pct", "mean", "std")

#: Builder keywords a card's ``[architecture_options]`` may not hold, and why: each loads a file or
#: fetches weights (timm's ``create_model``, torchvision's ``get_model``), which would bypass the
#: card's ``[weights]`` and its sha256.
LOADING_OPTIONS: dict[str, str] = {
    "pretrained": "downloads pretrained weights (timm, torchvision's old interface)",
    "pretrained_cfg": "names where timm's pretrained weights come from",
    "pretrained_cfg_overlay": "can point timm's pretrained weights at any file, URL or hub id",
    "pretrained_strict": "is a timm option for loading pretrained weights",
    "pretrained_model_args": "is a timm option for loading pretrained weights",
    "checkpoint_path": "loads a checkpoint file (timm)",
    "cache_dir": "is where timm downloads weights to",
    "weights": "names torchvision weights to download",
    "weights_backbone": "names torchvision backbone weights to download",
    "pretrained_backbone": "downloads torchvision backbone weights (old interface)",
    "progress": "is torchvision's download progress bar",
}


def _scalar(value: object) -> bool:
    """True for a TOML string, boolean, integer or finite float."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str | bool | int)


def architecture_options_problem(options: Mapping[str, Any]) -> str | None:
    """What is wrong with a card's ``[architecture_options]``, or None: no option of
    :data:`LOADING_OPTIONS`, and every value a string, boolean, integer, finite float or a list
    of them (lists may nest)."""

    def plain(value: object) -> bool:
        return _scalar(value) or (isinstance(value, list) and all(plain(v) for v in value))

    for key, value in options.items():
        if key in LOADING_OPTIONS:
            return (
                f"[architecture_options] {key} is not allowed: it {LOADING_OPTIONS[key]}; a "
                "card's weights come only from its [weights] table, checked against its sha256"
            )
        if not plain(value):
            return (
                f"[architecture_options] {key} must be a string, a boolean, a finite number or a "
                f"list of them, not {value!r:.60}"
            )
    return None


def _preprocessing(prep: object) -> Preprocessing:
    """The card's ``[preprocessing]`` table, every value checked (the problem names the key)."""
    if not isinstance(prep, dict):
        raise TypeError("[preprocessing] must be a table")
    unknown = sorted(set(prep) - set(PREPROCESSING_KEYS))
    if unknown:
        raise ValueError(
            f"[preprocessing] has an unknown key {unknown[0]!r} (keys: {', '.join(PREPROCESSING_KEYS)})"
        )
    size = prep.get("input_size", 224)
    if (
        isinstance(size, bool)
        or not isinstance(size, int)
        or not MIN_CARD_INPUT_SIZE <= size <= MAX_INPUT_SIZE
    ):
        raise ValueError(
            f"[preprocessing] input_size must be a whole number of pixels from "
            f"{MIN_CARD_INPUT_SIZE} to {MAX_INPUT_SIZE}, not {size!r:.40}"
        )
    crop_pct = prep.get("crop_pct", 0.875)
    problem = crop_pct_problem(size, crop_pct)
    mean, std = prep.get("mean", list(IMAGENET_MEAN)), prep.get("std", list(IMAGENET_STD))
    problem = problem or normalization_problem("mean", mean) or normalization_problem("std", std)
    if problem:
        raise ValueError(f"[preprocessing] {problem}")
    interpolation = prep.get("interpolation", "bicubic")
    if interpolation not in ("bicubic", "bilinear"):
        raise ValueError(
            f"[preprocessing] interpolation must be 'bicubic' or 'bilinear', not {interpolation!r:.40}"
        )
    return Preprocessing(
        size,
        (float(mean[0]), float(mean[1]), float(mean[2])),
        (float(std[0]), float(std[1]), float(std[2])),
        interpolation,
        float(crop_pct),
    )


def _weights_source(weights: object) -> WeightsSource:
    """The card's ``[weights]`` table: known keys only, each a string."""
    if not isinstance(weights, dict):
        raise TypeError("[weights] must be a table")
    known = [f.name for f in fields(WeightsSource)]
    for key, value in weights.items():
        if key not in known:
            raise ValueError(f"[weights] has an unknown key {key!r} (keys: {', '.join(known)})")
        if not isinstance(value, str):
            raise ValueError(f"[weights] {key} must be a string, not {value!r:.40}")
    if not weights.get("file") and not weights.get("url"):
        raise ValueError("[weights] names neither a file nor a url")
    return WeightsSource(**weights)


def _card_from_table(data: dict[str, Any], path: Path, builtin: bool) -> ModelCard:
    preprocessing = _preprocessing(data.get("preprocessing", {}))
    weights = data.get("weights")
    source = _weights_source(weights) if weights is not None else None
    if weights is None and data.get("random_weights") is not True:
        raise ValueError("no [weights] table (write random_weights = true to mean it)")
    architecture = str(data["architecture"])
    options = data.get("architecture_options", {})
    if not isinstance(options, dict):
        raise TypeError("[architecture_options] must be a table")
    problem = architecture_options_problem(options)
    if problem:
        raise ValueError(problem)
    library, colon, name = architecture.partition(":")
    if (library not in ("camtool", "timm", "torchvision") or not name) and (
        colon or not architecture.strip() or architecture != architecture.strip()
    ):
        raise ValueError(
            "architecture must be a model name as --model takes it for an architecture: "
            "'resnet18' (torchvision), 'torchvision:NAME', 'timm:NAME' or 'camtool:NAME'"
        )
    return ModelCard(
        name=str(data.get("name", path.stem)),
        architecture=architecture,
        description=str(data.get("description", "")),
        labels=str(data.get("labels", "imagenet1k")),
        preprocessing=preprocessing,
        weights=source,
        path=path,
        builtin=builtin,
        options=dict(options),
    )


def list_cards(broken: list[ModelLoadError] | None = None) -> list[ModelCard]:
    """Return the built-in cards, then the user cards from ``CAMTOOL_MODELS``.

    A user card that cannot be read is left out (and appended to ``broken`` when given), so one
    bad file does not stop every other model from loading.
    """
    cards = [read_card(p, builtin=True) for p in sorted(builtin_card_dir().glob("*.toml"))]
    for folder in user_card_dirs():
        for path in sorted(folder.glob("*.toml")):
            try:
                cards.append(read_card(path))
            except ModelLoadError as exc:
                if broken is not None:
                    broken.append(exc)
    return cards


def find_card(name: str) -> ModelCard:
    """Return the card for a model name, or read ``name`` as a card file if it ends in ``.toml``.

    Raises:
        UnknownModelError: no card of that name (the message suggests close names).
        ModelLoadError: the user card of that name (file stem) cannot be read.
    """
    if name.endswith(".toml"):
        return read_card(name)
    broken: list[ModelLoadError] = []
    cards = {card.name: card for card in list_cards(broken)}
    if name in cards:
        return cards[name]
    for error in broken:
        if error.subject and Path(error.subject).stem == name:
            raise error
    close = sorted(difflib.get_close_matches(name, list(cards), n=3, cutoff=0.5))
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known models: {', '.join(cards)}"
    raise UnknownModelError(name, f"unknown model{hint}")


@cache
def imagenet_labels() -> tuple[str, ...]:
    """Return the 1000 ImageNet-1k class names, in class-index order."""
    text = (importlib.resources.files("camtool") / "data" / "imagenet1k.txt").read_text("utf-8")
    return tuple(text.splitlines())


def load_labels(spec: str | os.PathLike[str], base: Path | None = None) -> tuple[str, ...]:
    """Return class names from ``"imagenet1k"`` or a text file with one name per line."""
    if spec == "imagenet1k":
        return imagenet_labels()
    path = Path(spec)
    if not path.is_absolute() and base is not None:
        path = base / path
    lines = read_text_file(path, ModelLoadError, "label file").splitlines()
    names = tuple(line.strip() for line in lines if line.strip())
    if not names:
        raise ModelLoadError(path, "label file has no names")
    return names


def labels_without_network(
    model: str,
    labels: str | os.PathLike[str] | None = None,
    weights: str | os.PathLike[str] | None = None,
) -> tuple[str, ...] | None:
    """The class names of the model spec ``model`` when they can be read without building the
    network (or importing torch): the ``labels`` file, else the labels of a named model's card
    or of a card file (``.toml``) when no other ``weights`` are given. None when only the
    network can tell (a torchvision name, a TorchScript file, a card with other weights).

    Raises:
        UnknownModelError, ModelLoadError: the card or a label file cannot be read.
    """
    if labels is not None:
        return load_labels(labels)
    if weights is None and (model.endswith(".toml") or is_card_name(model)):
        card = find_card(model)
        return load_labels(card.labels, card.path.parent if card.path else None)
    return None


def is_card_name(name: str) -> bool:
    """True for the name of a card, or the file stem of a user card that cannot be read."""
    broken: list[ModelLoadError] = []
    names = {card.name for card in list_cards(broken)}
    return name in names or any(Path(str(e.subject)).stem == name for e in broken)
