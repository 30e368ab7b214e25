"""Model names, cards and checkpoints -> an eval model, its preprocessing, its labels, its CAM head.

A *model card* is a small TOML file that names an architecture (``timm:NAME`` or
``torchvision:NAME``), where its weights come from (with their sha256), the preprocessing they were
trained with and their label set. Built-in cards ship with camtool; users add their own by putting
cards in a folder named by ``CAMTOOL_MODELS`` (``os.pathsep``-separated) or by passing a card's path.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.resources
import importlib.util
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

import tomllib
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camtool.errors import ModelLoadError, UnknownModelError, UnsupportedModelError

DEFAULT_MODEL = "efficientnet_lite0"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Preprocessing


@dataclass(frozen=True)
class Region:
    """The part of the original image the network saw, in original pixels (x2, y2 exclusive)."""

    x1: float
    y1: float
    x2: float
    y2: float

    def as_ints(self) -> tuple[int, int, int, int]:
        """Return the region rounded to whole pixels."""
        return round(self.x1), round(self.y1), round(self.x2), round(self.y2)


@dataclass(frozen=True)
class Preprocessing:
    """How images are turned into the network's input.

    By default the whole image is used: it is resized (keeping its aspect ratio) so that its
    shorter side is ``input_size``, and nothing is cropped. With ``crop=True`` the classic
    evaluation transform is used instead: shorter side to ``input_size / crop_pct``, then a centre
    crop of ``input_size`` x ``input_size``.
    """

    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    crop_pct: float = 0.875

    def resized_size(self, height: int, width: int, crop: bool = False) -> tuple[int, int]:
        """Return the (height, width) the image is resized to before any crop."""
        short = int(self.input_size / self.crop_pct) if crop else self.input_size
        scale = short / min(height, width)
        return max(short, round(height * scale)), max(short, round(width * scale))

    def prepare(self, image: Tensor, crop: bool = False) -> tuple[Tensor, Region]:
        """Resize and normalise one image.

        Args:
            image: ``Tensor[3,H,W]`` uint8 RGB, on any device.
            crop: use the centre crop instead of the whole image.

        Returns:
            ``(tensor, region)``: ``Tensor[3,h,w]`` float32 on the image's device, normalised for
            the network, and the :class:`Region` of the original image that it shows.
        """
        height, width = image.shape[-2:]
        rh, rw = self.resized_size(height, width, crop)
        resized = resize_image(image, (rh, rw), self.interpolation)
        region = Region(0.0, 0.0, float(width), float(height))
        if crop:
            top, left = (rh - self.input_size) // 2, (rw - self.input_size) // 2
            resized = resized[:, top : top + self.input_size, left : left + self.input_size]
            sy, sx = height / rh, width / rw
            region = Region(
                left * sx, top * sy, (left + self.input_size) * sx, (top + self.input_size) * sy
            )
        return self.normalize(resized), region

    def normalize(self, pixels: Tensor) -> Tensor:
        """Map uint8 pixels ``Tensor[..., 3, h, w]`` to the network's float32 input."""
        mean = torch.tensor(self.mean, device=pixels.device).mul_(255).view(3, 1, 1)
        std = torch.tensor(self.std, device=pixels.device).mul_(255).view(3, 1, 1)
        return (pixels.float() - mean) / std


def resize_image(image: Tensor, size: tuple[int, int], interpolation: str = "bicubic") -> Tensor:
    """Resize ``Tensor[3,H,W]`` uint8 to ``size`` with antialiasing (as PIL does); uint8 out."""
    if tuple(image.shape[-2:]) == size:
        return image
    resized = F.interpolate(
        image[None].float(), size=size, mode=interpolation, antialias=True, align_corners=False
    )
    return resized[0].round_().clamp_(0, 255).to(torch.uint8)


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


def builtin_card_dir() -> Path:
    """Return the folder of the built-in cards: ``camtool/_cards`` when installed, else ``models/``."""
    packaged = importlib.resources.files("camtool") / "_cards"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "models"


def user_card_dirs() -> list[Path]:
    """Return the folders named by ``CAMTOOL_MODELS`` (separated by ``os.pathsep``)."""
    value = os.environ.get("CAMTOOL_MODELS", "")
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p]


def read_card(path: str | os.PathLike[str], builtin: bool = False) -> ModelCard:
    """Read a model card from a TOML file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelLoadError(path, f"cannot read model card: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(path, f"model card is not valid TOML: {exc}") from None
    try:
        prep = data.get("preprocessing", {})
        weights = data.get("weights")
        return ModelCard(
            name=str(data.get("name", path.stem)),
            architecture=str(data["architecture"]),
            description=str(data.get("description", "")),
            labels=str(data.get("labels", "imagenet1k")),
            preprocessing=Preprocessing(
                input_size=int(prep.get("input_size", 224)),
                mean=tuple(float(v) for v in prep.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
                std=tuple(float(v) for v in prep.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
                interpolation=prep.get("interpolation", "bicubic"),
                crop_pct=float(prep.get("crop_pct", 0.875)),
            ),
            weights=WeightsSource(**weights) if weights else None,
            path=path,
            builtin=builtin,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(path, f"model card is missing or has a bad field: {exc}") from None


def list_cards() -> list[ModelCard]:
    """Return the built-in cards, then the user cards from ``CAMTOOL_MODELS``, sorted by name."""
    cards = [read_card(p, builtin=True) for p in sorted(builtin_card_dir().glob("*.toml"))]
    for folder in user_card_dirs():
        cards += [read_card(p) for p in sorted(folder.glob("*.toml"))]
    return cards


def find_card(name: str) -> ModelCard:
    """Return the card for a model name, or read ``name`` as a card file if it ends in ``.toml``.

    Raises:
        UnknownModelError: no card of that name (the message suggests close names).
    """
    if name.endswith(".toml"):
        return read_card(name)
    cards = {card.name: card for card in list_cards()}
    if name in cards:
        return cards[name]
    close = sorted(difflib.get_close_matches(name, list(cards), n=3, cutoff=0.5))
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known models: {', '.join(cards)}"
    raise UnknownModelError(name, f"unknown model{hint}")


# --------------------------------------------------------------------------------------------
# Weights


def weights_path(card: ModelCard) -> Path | None:
    """Return the local path of a card's weights file, or None if it is not installed."""
    source = card.weights
    if source is None or source.file is None:
        return None
    if source.package:
        spec = importlib.util.find_spec(source.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / source.file
    else:
        path = Path(source.file).expanduser()
        if not path.is_absolute() and card.path is not None:
            path = card.path.parent / path
    return path if path.is_file() else None


def weights_status(card: ModelCard) -> str:
    """Return ``"installed"`` or a one-line hint telling how to get a card's weights."""
    if card.weights is None:
        return "no weights (random init)"
    if weights_path(card) is not None:
        return "installed"
    if card.weights.distribution:
        return f"missing: pip install '{card.weights.distribution}'"
    if card.weights.url:
        return "downloaded on first use"
    return f"missing: {card.weights.file}"


def file_sha256(path: Path) -> str:
    """Return the hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file, never running pickled code.

    Torch files are read with ``weights_only=True``; a checkpoint that wraps its state dict
    under ``state_dict`` or ``model`` is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(path, "no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(str(path))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling refused"
        raise ModelLoadError(
            path, f"refused: not a plain weights file (loaded with weights_only=True): {first}"
        ) from None
    except Exception as exc:  # torch and safetensors raise many types for damaged files
        raise ModelLoadError(
            path, f"not a readable weights file ({type(exc).__name__}: {exc})"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ModelLoadError(path, "not a state dict (a mapping of names to tensors)")
    return {str(k).removeprefix("module."): v for k, v in loaded.items()}


def verified_weights_file(card: ModelCard) -> Path:
    """Return the card's weights file after checking its sha256; raise if missing or different."""
    from camtool.errors import WeightsHashError

    path = weights_path(card)
    if path is None:
        raise ModelLoadError(card.name, f"weights not installed ({weights_status(card)})")
    expected = card.weights.sha256 if card.weights else None
    if expected:
        actual = file_sha256(path)
        if actual != expected.lower():
            raise WeightsHashError(
                path,
                f"sha256 {actual[:16]}... does not match {expected[:16]}... promised by the "
                f"card of {card.name}: the file is damaged or not the expected one",
            )
    return path


def load_weights_into(model: nn.Module, state: Mapping[str, Tensor], source: object) -> None:
    """Load ``state`` into ``model`` strictly; on a mismatch, name the first bad keys and shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {list(state[k].shape)} vs {list(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (first: {'; '.join(wrong[:2])})")
        raise ModelLoadError(source, "weights do not fit the architecture: " + "; ".join(parts))
    model.load_state_dict(state)


# --------------------------------------------------------------------------------------------
# Architectures and labels


def build_architecture(architecture: str, num_classes: int | None = None) -> nn.Module:
    """Build an untrained network from ``camtool:NAME``, ``timm:NAME`` or ``torchvision:NAME``.

    ``camtool:efficientnet_lite0`` (1, 2) are built in and need neither timm nor torchvision.
    """
    library, _, name = architecture.partition(":")
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    try:
        if library == "camtool":
            from camtool.efficientnet_lite import VARIANTS, EfficientNetLite

            if name not in VARIANTS:
                raise ValueError(f"camtool builds only {', '.join(VARIANTS)}")
            return EfficientNetLite(name, **kwargs)
        if library == "timm":
            import timm

            return timm.create_model(name, pretrained=False, **kwargs)
        if library == "torchvision":
            import torchvision

            return torchvision.models.get_model(name, weights=None, **kwargs)
    except ImportError as exc:
        raise ModelLoadError(architecture, f"needs {exc.name}: pip install {exc.name}") from None
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ModelLoadError(architecture, f"cannot build this architecture: {exc}") from None
    raise ModelLoadError(
        architecture, "architecture must be 'camtool:NAME', 'timm:NAME' or 'torchvision:NAME'"
    )


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
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(path, f"cannot read label file: {exc}") from None
    names = tuple(line.strip() for line in lines if line.strip())
    if not names:
        raise ModelLoadError(path, "label file has no names")
    return names


# --------------------------------------------------------------------------------------------
# CAM head discovery


@dataclass(frozen=True, eq=False)
class CamHead:
    """Where the CAM comes from in a network.

    ``kind`` is ``"forward_features"`` (timm's contract: ``forward_features`` gives the feature
    map and ``forward_head`` pools and classifies it) or ``"pool_input"`` (a forward pre-hook on
    the global-average-pooling module ``pool`` captures the tensor it averages).
    """

    kind: Literal["forward_features", "pool_input"]
    feature_name: str
    classifier_name: str
    classifier: nn.Linear
    pool: nn.Module | None = None

    @property
    def weight(self) -> Tensor:
        """``Tensor[K,C]``: the classifier's weight."""
        return self.classifier.weight

    @property
    def bias(self) -> Tensor | None:
        """``Tensor[K]``: the classifier's bias, or None."""
        return self.classifier.bias

    def describe(self) -> str:
        """Return a one-line description, e.g. ``forward_features -> classifier (1000x1280)``."""
        k, c = self.weight.shape
        return f"{self.feature_name} -> {self.classifier_name} ({k}x{c})"


def _is_global_avg_pool(module: nn.Module) -> bool:
    if isinstance(module, nn.AdaptiveAvgPool2d):
        size = module.output_size
        return size in (1, (1, 1))
    if type(module).__name__ == "SelectAdaptivePool2d":
        return getattr(module, "pool_type", "") == "avg"
    return False


def _module_name(model: nn.Module, target: nn.Module) -> str:
    return next((name for name, m in model.named_modules() if m is target), type(target).__name__)


def find_cam_head(model: nn.Module) -> CamHead:
    """Find the feature map and linear classifier of a GAP network.

    Tried in order: timm's ``forward_features``/``forward_head``/``get_classifier`` contract with
    average pooling; then the last global-average-pooling module followed by a Linear classifier.
    The choice is only structural: :func:`camtool.cam.compute` proves it with the identity
    ``cams.mean + bias == logits`` on every batch.

    Raises:
        UnsupportedModelError: no such head was found.
    """
    if all(hasattr(model, a) for a in ("forward_features", "forward_head", "get_classifier")):
        classifier = model.get_classifier()  # type: ignore[operator]
        pool = getattr(model, "global_pool", None)
        if isinstance(classifier, nn.Linear) and pool is not None and _is_global_avg_pool(pool):
            return CamHead(
                "forward_features",
                "forward_features",
                _module_name(model, classifier),
                classifier,
                pool,
            )
    named = list(model.named_modules())
    pools = [(i, name, m) for i, (name, m) in enumerate(named) if _is_global_avg_pool(m)]
    if pools:
        index, pool_name, pool = pools[-1]
        linears = [(n, m) for n, m in named[index + 1 :] if isinstance(m, nn.Linear)]
        if linears:
            name, linear = linears[-1]
            return CamHead("pool_input", pool_name, name, linear, pool)
        raise UnsupportedModelError(
            type(model).__name__,
            f"global average pooling '{pool_name}' is not followed by a Linear classifier",
        )
    raise UnsupportedModelError(
        type(model).__name__,
        "no global-average-pooling module found (pass layer= and classifier= to name them)",
    )


# --------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A network ready for CAM: in eval mode, with its preprocessing, labels and CAM head."""

    name: str
    module: nn.Module
    preprocessing: Preprocessing
    labels: tuple[str, ...]
    head: CamHead
    card: ModelCard | None = None

    @property
    def device(self) -> torch.device:
        """The device of the network's parameters."""
        return next(self.module.parameters()).device

    def to(self, device: str | torch.device) -> LoadedModel:
        """Return this model moved to ``device`` (the network is moved in place)."""
        self.module.to(device)
        return self


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Map ``"auto"``/None to the best available device; check that a named device exists."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(device, f"not a device name ({exc})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(device, "CUDA is not available on this machine")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(device, "MPS is not available on this machine")
    return resolved


def load_model(
    spec: str | ModelCard | nn.Module | LoadedModel = DEFAULT_MODEL,
    device: str | torch.device | None = "auto",
    labels: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load a named model, a card, or wrap your own ``nn.Module``.

    Args:
        spec: a built-in or user model name (see ``camtool models``), a card file path, a
            :class:`ModelCard`, an ``nn.Module`` (its CAM head is discovered; it is *not* moved or
            changed) or an already loaded model (returned as is).
        device: ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"`` (named models only).
        labels: a label file, one class name per line, overriding the card's label set.

    Raises:
        UnknownModelError, ModelLoadError, WeightsHashError, UnsupportedModelError.
    """
    if isinstance(spec, LoadedModel):
        return spec
    if isinstance(spec, nn.Module):
        head = find_cam_head(spec)
        names = (
            load_labels(labels)
            if labels
            else tuple(f"class {i}" for i in range(head.weight.shape[0]))
        )
        _check_label_count(names, head, labels or "labels")
        return LoadedModel(type(spec).__name__, spec, Preprocessing(), names, head)
    card = find_card(spec) if isinstance(spec, str) else spec
    return _load_card(card, resolve_device(device), labels)


def _load_card(
    card: ModelCard, device: torch.device, labels: str | os.PathLike[str] | None
) -> LoadedModel:
    names = load_labels(labels or card.labels, card.path.parent if card.path else None)
    module = build_architecture(card.architecture, num_classes=len(names))
    if card.weights is not None:
        path = verified_weights_file(card)
        load_weights_into(module, load_state_dict_file(path), path)
    module.eval().requires_grad_(False).to(device)
    head = find_cam_head(module)
    _check_label_count(names, head, labels or card.labels)
    return LoadedModel(card.name, module, card.preprocessing, names, head, card)


def _check_label_count(names: tuple[str, ...], head: CamHead, source: object) -> None:
    if len(names) != head.weight.shape[0]:
        raise ModelLoadError(
            source, f"{len(names)} labels for a classifier of {head.weight.shape[0]} classes"
        )


def with_preprocessing(model: LoadedModel, **changes: Any) -> LoadedModel:
    """Return ``model`` with some preprocessing fields changed (e.g. ``input_size=320``)."""
    return replace(model, preprocessing=replace(model.preprocessing, **changes))
