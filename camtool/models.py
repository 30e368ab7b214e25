"""Model names, cards and checkpoints -> an eval model, its preprocessing and its labels.

Loading knows nothing of its consumer: it does not look for a CAM head (that is the CAM method's
``bind`` step, :mod:`camtool.methods`), so a model that CAM cannot explain still loads.

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
import re
import tomllib
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from camtool.errors import CamtoolError, ModelLoadError, ModelRunError, UnknownModelError
from camtool.hooks import eval_mode
from camtool.image import IMAGENET_MEAN, IMAGENET_STD, MAX_INPUT_SIZE, Preprocessing
from camtool.io import open_regular_file, read_text_file
from camtool.naming import fit

DEFAULT_MODEL = "efficientnet_lite0"


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


def _card_from_table(data: dict[str, Any], path: Path, builtin: bool) -> ModelCard:
    prep = data.get("preprocessing", {})
    if not isinstance(prep, dict):
        raise TypeError("[preprocessing] must be a table")
    mean = tuple(float(v) for v in prep.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in prep.get("std", IMAGENET_STD))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError("mean and std must be 3 numbers each, std positive")
    interpolation = prep.get("interpolation", "bicubic")
    if interpolation not in ("bicubic", "bilinear"):
        raise ValueError(f"interpolation must be bicubic or bilinear, not {interpolation!r}")
    size, crop_pct = int(prep.get("input_size", 224)), float(prep.get("crop_pct", 0.875))
    if not 16 <= size <= MAX_INPUT_SIZE or not 0 < crop_pct <= 1:
        raise ValueError(
            f"input_size must be between 16 and {MAX_INPUT_SIZE} (not {size}) and crop_pct in (0, 1]"
        )
    weights = data.get("weights")
    if weights is not None and not isinstance(weights, dict):
        raise TypeError("[weights] must be a table")
    if weights is None and data.get("random_weights") is not True:
        raise ValueError("no [weights] table (write random_weights = true to mean it)")
    architecture = str(data["architecture"])
    if architecture.partition(":")[0] not in ("camtool", "timm", "torchvision"):
        raise ValueError("architecture must be 'camtool:NAME', 'timm:NAME' or 'torchvision:NAME'")
    return ModelCard(
        name=str(data.get("name", path.stem)),
        architecture=architecture,
        description=str(data.get("description", "")),
        labels=str(data.get("labels", "imagenet1k")),
        preprocessing=Preprocessing(
            size, (mean[0], mean[1], mean[2]), (std[0], std[1], std[2]), interpolation, crop_pct
        ),
        weights=WeightsSource(**weights) if weights else None,
        path=path,
        builtin=builtin,
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


# --------------------------------------------------------------------------------------------
# Weights


_HASH_PREFIX = re.compile(r"-([a-f0-9]{6,})\.")


def local_url_path(url: str) -> Path | None:
    """The file a ``file://`` URL names (read in place, never copied), or None for other URLs."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "file":
        return None
    return Path(urllib.request.url2pathname(parsed.path))


def _url_file_name(url: str) -> str:
    """The last part of a URL's path, decoded, as one safe file name."""
    name = urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1])
    return fit(name or "weights")


def torch_hub_path(url: str) -> Path:
    """Where torch's hub keeps a downloaded checkpoint: ``$TORCH_HOME/hub/checkpoints/<name>``.

    Shared by every URL of that name, so camtool uses a file there only when its name carries
    the hash prefix torch.hub checks (``resnet18-f37072fd.pth``, as torchvision's URLs do) and
    the file matches it.
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / _url_file_name(url)


def hub_cache_path(url: str, sha256: str | None = None) -> Path:
    """Where camtool keeps a checkpoint it downloads: one folder per URL (and expected sha256),
    ``$TORCH_HOME/hub/checkpoints/camtool/<key>/<name>``, so two URLs that end in the same file
    name never share a file."""
    key = hashlib.sha256(f"{url}\n{(sha256 or '').lower()}".encode()).hexdigest()[:16]
    return Path(torch.hub.get_dir()) / "checkpoints" / "camtool" / key / _url_file_name(url)


def weights_match(path: Path, url: str, sha256: str | None = None) -> bool:
    """True when ``path`` has the sha256 expected for ``url`` (the whole one given, or the hex
    prefix in the URL's file name); True when neither is known."""
    prefix = _HASH_PREFIX.search(_url_file_name(url))
    if not sha256 and prefix is None:
        return True
    actual = file_sha256(path)
    if sha256:
        return actual == sha256.lower()
    return prefix is None or actual.startswith(prefix[1])


def cached_weights(url: str, sha256: str | None = None) -> Path | None:
    """The local file of ``url`` if there is one (not hashed here: see :func:`download_weights`)."""
    local = local_url_path(url)
    if local is not None:
        return local if local.is_file() else None
    return next((path for path in _cache_candidates(url, sha256) if path.is_file()), None)


def _cache_candidates(url: str, sha256: str | None) -> list[Path]:
    """camtool's own cache file for ``url``, then torch's when its name carries a hash prefix."""
    shared = torch_hub_path(url)
    return [hub_cache_path(url, sha256)] + ([shared] if _HASH_PREFIX.search(shared.name) else [])


def download_weights(url: str, sha256: str | None = None) -> Path:
    """Return a local, verified file holding ``url``'s checkpoint, downloading it when needed.

    ``file://`` URLs are read in place. Other URLs are looked up in camtool's cache (a folder per
    URL, :func:`hub_cache_path`) and, for names with a hash prefix, in torch's own
    (:func:`torch_hub_path`), and downloaded into camtool's cache otherwise. Every use checks the
    file in camtool's cache against ``sha256`` (whole) or the hash prefix in its name (a file that
    fails is downloaded again), and a file in torch's cache against ``sha256`` when given; a
    download that fails its check is deleted.
    """
    from camtool.errors import WeightsHashError

    local = local_url_path(url)
    if local is not None:
        if not local.is_file():
            raise ModelLoadError(url, f"no such weights file: {local}")
        if not weights_match(local, url, sha256):
            raise WeightsHashError(
                local,
                "sha256 differs from the expected one: the file is damaged or not the expected one",
            )
        return local
    own, *shared = _cache_candidates(url, sha256)
    if own.is_file() and weights_match(own, url, sha256):
        return own
    # torch's own cache: its files were checked against their name's hash prefix when torch (or
    # torchvision) downloaded them, and torch uses them unchecked since; a card's sha256 is checked.
    for candidate in shared:
        if candidate.is_file() and (not sha256 or weights_match(candidate, url, sha256)):
            return candidate
    target = hub_cache_path(url, sha256)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(
            target.parent, f"cannot create the cache folder: {exc.strerror or exc}"
        ) from None
    partial = target.with_name(f".{target.name[:200]}.part")
    try:
        torch.hub.download_url_to_file(url, str(partial), hash_prefix=None, progress=False)
        if not weights_match(partial, url, sha256):
            raise WeightsHashError(
                url,
                f"downloaded file has sha256 {file_sha256(partial)[:16]}..., not the expected one",
            )
        os.replace(partial, target)
    except OSError as exc:
        raise ModelLoadError(
            url,
            f"cannot download ({getattr(exc, 'reason', None) or exc}); put the file at {target}",
        ) from None
    finally:
        partial.unlink(missing_ok=True)
    return target


def weights_path(card: ModelCard) -> Path | None:
    """Return the local path of a card's weights file, or None if it is not installed."""
    source = card.weights
    if source is None:
        return None
    if source.url and not source.file:
        return cached_weights(source.url, source.sha256)
    if source.file is None:
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
    with open_regular_file(path, ModelLoadError, "weights file") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file, never running pickled code.

    Torch files are read with ``weights_only=True``; a checkpoint that wraps its state dict
    under ``state_dict`` or ``model`` is unwrapped.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(path, "no such weights file")
    handle = open_regular_file(path, ModelLoadError, "weights file")  # never a FIFO or a device
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load

            loaded: Any = load(handle.read())
        else:
            loaded = torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelLoadError(path, _refusal(path)) from None
    except Exception as exc:  # torch and safetensors raise many types for damaged files
        raise ModelLoadError(
            path, f"not a readable weights file ({type(exc).__name__}: {exc})"
        ) from None
    finally:
        handle.close()
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ModelLoadError(path, "not a state dict (a mapping of names to tensors)")
    return {str(k).removeprefix("module."): v for k, v in loaded.items()}


#: Globals that hold data, not code, which training scripts often save beside the weights
#: (torchvision's reference scripts save their ``argparse.Namespace``; metrics as numpy scalars).
_DATA_GLOBALS = (
    "argparse.Namespace",
    "numpy.dtype",
    "numpy.dtypes.",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
)


def _refusal(path: Path) -> str:
    """Why ``torch.load(weights_only=True)`` refused ``path``, naming the globals it holds (found by
    torch's own disassembler, not by reading its message) and what to do about them."""
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    try:
        names = sorted(finder(path)) if finder is not None else []
    except Exception:  # not a torch file at all
        names = []
    if not names:
        return "not a readable weights file (damaged, or not a torch file)"
    listed = ", ".join(names)
    if not all(
        any(n == d or (d.endswith(".") and n.startswith(d)) for d in _DATA_GLOBALS) for n in names
    ):
        return (
            f"refused: the file asks to run Python code ({listed}); camtool reads only plain "
            "tensors (weights_only=True)"
        )
    return (
        f"refused: the checkpoint holds Python objects besides tensors ({listed}), which "
        "weights_only=True does not load; save the state dict alone (torch.save(model.state_dict(), "
        "FILE)), or, if you trust the file, allow them in Python with "
        f"torch.serialization.add_safe_globals([{listed}]) before loading"
    )


def verified_weights_file(card: ModelCard) -> Path:
    """Return the card's weights file after checking its sha256; raise if missing or different."""
    from camtool.errors import WeightsHashError

    source = card.weights
    if source is not None and source.url and not source.file:
        return download_weights(source.url, source.sha256)  # checked there, every time
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


def build_architecture(
    architecture: str, num_classes: int | None = None, **options: Any
) -> nn.Module:
    """Build an untrained network from ``camtool:NAME``, ``timm:NAME`` or ``torchvision:NAME``.

    ``camtool:efficientnet_lite0`` (1, 2) are built in and need neither timm nor torchvision.
    """
    library, _, name = architecture.partition(":")
    kwargs: dict[str, Any] = (
        dict(options) if num_classes is None else {**options, "num_classes": num_classes}
    )
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
    lines = read_text_file(path, ModelLoadError, "label file").splitlines()
    names = tuple(line.strip() for line in lines if line.strip())
    if not names:
        raise ModelLoadError(path, "label file has no names")
    return names


# --------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A network ready to explain, with its preprocessing and labels (and where each came from).

    Attributes:
        name: the model's name; module: the network (in eval mode when camtool built it).
        preprocessing: how images become its input; labels: its K class names (K counted from
            the network's output on a probe image).
        card: the model card it came from, if any; weights: where its weights came from.
        dtype: compute dtype (float16/bfloat16 run under autocast; the network is not converted).
        channels_last: feed batches (and, for models camtool built, weights) in channels-last.
        preprocessing_source: where ``preprocessing`` came from (a card, timm's pretrained_cfg,
            torchvision's weights, the caller, or ImageNet defaults).
        labels_source: where ``labels`` came from.
    """

    name: str
    module: nn.Module
    preprocessing: Preprocessing
    labels: tuple[str, ...]
    card: ModelCard | None = None
    weights: str = ""
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    preprocessing_source: str = "ImageNet defaults"
    labels_source: str = ""

    @property
    def device(self) -> torch.device:
        """The device of the network's parameters."""
        parameter = next(self.module.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description: name, weights, dtype, parameters, classes, preprocessing."""
        prep = self.preprocessing
        return {
            "name": self.name,
            "weights": self.weights,
            "dtype": str(self.dtype).removeprefix("torch."),
            "parameters": sum(p.numel() for p in self.module.parameters()),
            "classes": len(self.labels),
            "labels_source": self.labels_source,
            "preprocessing": {
                "input_size": prep.input_size, "mean": list(prep.mean), "std": list(prep.std),
                "interpolation": prep.interpolation, "crop_pct": prep.crop_pct,
                "source": self.preprocessing_source,
            },
        }  # fmt: skip


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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
    if resolved.type == "meta":
        from camtool.errors import InvalidArgumentError

        raise InvalidArgumentError(
            device, "device 'meta' holds no data (shapes only): choose cpu, cuda, mps or auto"
        )
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(device, "CUDA is not available on this machine")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(device, "MPS is not available on this machine")
    backend = getattr(torch, resolved.type, None)
    if resolved.type not in ("cpu", "cuda", "mps") and not (
        callable(getattr(backend, "is_available", None)) and backend.is_available()  # type: ignore[union-attr]
    ):
        raise ModelLoadError(
            device, f"device '{resolved.type}' is not available here: choose cpu, cuda, mps or auto"
        )
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """Map ``"float32"``/``"float16"``/``"bfloat16"`` (or a torch dtype, or None) to a dtype."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        from camtool.errors import InvalidArgumentError

        raise InvalidArgumentError(dtype, f"unknown dtype; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    spec: str | ModelCard | nn.Module | LoadedModel = DEFAULT_MODEL,
    device: str | torch.device | None = "auto",
    labels: str | os.PathLike[str] | None = None,
    weights: str | os.PathLike[str] | None = None,
    dtype: str | torch.dtype | None = None,
    channels_last: bool | None = None,
    preprocessing: Preprocessing | None = None,
    random_weights: bool = False,
) -> LoadedModel:
    """Load a named model, a card, an architecture with weights, a TorchScript file, or your module.

    The result knows nothing about explanation methods: bind one with
    :func:`camtool.methods.bind` (``explain`` and ``export`` do that for you).

    Args:
        spec: one of
            - a built-in or user model name (``camtool models``) or a card file (``*.toml``);
            - an architecture: a torchvision model name (``resnet50``), ``torchvision:NAME`` or
              ``timm:NAME``, with ``weights=FILE``; or with a torchvision weight name
              (``resnet50:IMAGENET1K_V2``), taken from torch's hub cache or downloaded;
            - a TorchScript file (``model.pt`` saved with ``torch.jit.save``);
            - an ``nn.Module``: used as it is, never moved or converted;
            - an already loaded model (returned as is).
        device: ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"`` (models camtool builds).
        labels: a label file, one class name per line; their number must match the output.
        weights: a state dict file (``.pth``/``.pt`` read with ``weights_only=True``, or
            ``.safetensors``) replacing the card's or architecture's weights.
        dtype: ``"float32"`` (default), ``"float16"`` or ``"bfloat16"`` (autocast).
        channels_last: channels-last memory format; default: on for CPU and CUDA (1.6x faster
            for the built-in EfficientNet-Lite on 2 CPU cores).
        preprocessing: the preprocessing to use; default, in this order: the card's, timm's
            ``pretrained_cfg`` (timm models), torchvision's weights transforms
            (``NAME:WEIGHTS``), else ImageNet defaults (224 px, ImageNet mean and std).
        random_weights: allow an architecture without weights (for ``camtool inspect``).

    Raises:
        UnknownModelError, ModelLoadError, WeightsHashError.
    """
    if isinstance(spec, LoadedModel):
        return spec
    compute_dtype = resolve_dtype(dtype)
    if isinstance(spec, nn.Module):
        module, name, card, source = spec, type(spec).__name__, None, "caller's module"
        default_labels: str | tuple[str, ...] | None = None
        prep, prep_source = preprocessing_carried_by(spec)
        last = bool(channels_last)
    else:
        target = resolve_device(device)
        built = _build(spec, weights, random_weights)
        module, name, card, source, default_labels = built[:5]
        if built.preprocessing is None:
            prep, prep_source = preprocessing_carried_by(module)
        else:
            prep, prep_source = built.preprocessing, built.preprocessing_source
        module.eval().to(target)
        for parameter in module.parameters():
            parameter.requires_grad_(False)
        last = target.type in ("cpu", "cuda") if channels_last is None else channels_last
        if last:
            module.to(memory_format=torch.channels_last)
    if preprocessing is not None:
        prep, prep_source = preprocessing, "given by the caller"
    fixed = fixed_input_size(module)
    if fixed is not None and not prep.fixed_size:
        prep = replace(prep, input_size=fixed, fixed_size=True)
        prep_source += f"; the network takes {fixed}x{fixed} inputs only"
    check_finite_weights(module)
    count = count_classes(module, prep.input_size, name)
    base = card.path.parent if card and card.path else None
    names, labels_source = _labels_for(count, labels, default_labels, base)
    return LoadedModel(
        name, module, prep, names, card, source, compute_dtype, last, prep_source, labels_source
    )


def preprocessing_carried_by(module: nn.Module) -> tuple[Preprocessing, str]:
    """The preprocessing a network carries (timm's ``pretrained_cfg``), else ImageNet defaults;
    and a phrase saying which."""
    config = getattr(module, "pretrained_cfg", None)
    if isinstance(config, Mapping) and config.get("input_size"):
        size = config["input_size"]
        interpolation = str(config.get("interpolation", "bicubic"))
        prep = Preprocessing(
            input_size=int(size[-1]),
            mean=_triple(config.get("mean", IMAGENET_MEAN)),
            std=_triple(config.get("std", IMAGENET_STD)),
            interpolation="bicubic" if interpolation == "bicubic" else "bilinear",
            crop_pct=float(config.get("crop_pct", 0.875)),
        )
        return prep, f"timm pretrained_cfg ({config.get('architecture', type(module).__name__)})"
    return Preprocessing(), "ImageNet defaults (224 px, ImageNet mean/std): the model carries none"


def fixed_input_size(module: nn.Module) -> int | None:
    """The one input size a network accepts (a vision transformer with a fixed position
    embedding: torchvision's ``image_size``, timm's ``fixed_input_size``), else None."""
    config = getattr(module, "pretrained_cfg", None)
    if isinstance(config, Mapping) and config.get("fixed_input_size") and config.get("input_size"):
        return int(config["input_size"][-1])
    size = getattr(module, "image_size", None)
    if type(module).__name__ == "VisionTransformer" and isinstance(size, int):
        return size
    return None


def _triple(values: Any) -> tuple[float, float, float]:
    numbers = [float(v) for v in values]
    if len(numbers) == 1:
        numbers *= 3
    return numbers[0], numbers[1], numbers[2]


def check_finite_weights(model: nn.Module) -> None:
    """Refuse a network whose parameters or buffers hold NaN or infinity (a damaged checkpoint, a
    diverged training): its outputs would be NaN, and no head could be exact.

    Raises:
        ModelLoadError: naming the first such tensor and what it holds.
    """
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, tensor in tensors:
        if tensor.is_floating_point() and tensor.device.type != "meta":
            finite = torch.isfinite(tensor.detach())
            if not bool(finite.all()):
                what = "NaN" if bool(torch.isnan(tensor.detach()).any()) else "infinity"
                bad = int((~finite).sum())
                raise ModelLoadError(
                    type(model).__name__,
                    f"the weights '{name}' contain {what} ({bad} of {tensor.numel()} values): "
                    "the checkpoint is damaged or its training diverged",
                )


def count_classes(module: nn.Module, size: int, name: str) -> int:
    """K, the number of classes: the width of the network's output on one probe image.

    Raises:
        ModelLoadError: the network fails on the probe, or its output is not ``[N, K]`` scores.
    """
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = (
        parameter.dtype
        if parameter is not None and parameter.is_floating_point()
        else torch.float32
    )
    probe = torch.zeros(1, 3, size, size, device=device, dtype=dtype)
    try:
        with torch.inference_mode(), eval_mode(module):
            output = module(probe)
    except Exception as exc:  # a network that cannot run on an image is not loadable
        raise ModelLoadError(
            name, f"the network fails on a {size}x{size} probe image ({type(exc).__name__}: {exc})"
        ) from None
    return logits_of(output, name).shape[-1]


@contextmanager
def network_failures(name: str, batch: Tensor) -> Iterator[None]:
    """Turn an exception raised inside the network into a one-line :class:`ModelRunError` naming
    the model and the batch's shape (camtool's own errors pass through)."""
    try:
        yield
    except CamtoolError:
        raise
    except (RuntimeError, AssertionError, ValueError, TypeError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ModelRunError(
            name,
            f"the network fails on a batch of shape {list(batch.shape)} ({type(exc).__name__}: {first})",
        ) from None


def logits_of(output: Any, name: str) -> Tensor:
    """The ``Tensor[N,K]`` class scores in a network's output.

    Raises:
        ModelLoadError: the output is not a ``[N, K]`` tensor (the message says what it is).
    """
    if isinstance(output, Tensor) and output.ndim == 2:
        return output
    what = (
        f"a tensor of shape {list(output.shape)}"
        if isinstance(output, Tensor)
        else f"a {type(output).__name__}"
    )
    raise ModelLoadError(name, f"the network returns {what}, not [N, K] class scores")


class _Built(NamedTuple):
    module: nn.Module
    name: str
    card: ModelCard | None
    source: str  # where the weights came from
    labels: str | tuple[str, ...] | None  # a label spec, or the names themselves
    preprocessing: Preprocessing | None  # None: whatever the module carries
    preprocessing_source: str = ""


def _build(
    spec: str | ModelCard, weights: str | os.PathLike[str] | None, random_weights: bool
) -> _Built:
    if isinstance(spec, ModelCard) or spec.endswith(".toml") or is_card_name(spec):
        card = spec if isinstance(spec, ModelCard) else find_card(spec)
        if weights is not None:
            module = _architecture_with_file(card.architecture, Path(weights))
            return _Built(
                module,
                card.name,
                card,
                str(weights),
                card.labels,
                card.preprocessing,
                f"model card {card.name}",
            )
        path = verified_weights_file(card) if card.weights is not None else None
        module = build_architecture(
            card.architecture,
            num_classes=len(load_labels(card.labels, card.path.parent if card.path else None)),
        )
        if path is not None:
            load_weights_into(module, load_state_dict_file(path), path)
        return _Built(
            module,
            card.name,
            card,
            str(path or "random"),
            card.labels,
            card.preprocessing,
            f"model card {card.name}",
        )
    if Path(spec).is_file() and _is_torchscript(Path(spec)):
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch 2.9+ deprecates TorchScript
                module = torch.jit.load(spec, map_location="cpu")
        except Exception as exc:
            raise ModelLoadError(spec, f"not a loadable TorchScript model ({exc})") from None
        return _Built(module, Path(spec).stem, None, spec, None, None)
    if Path(spec).is_file():
        raise ModelLoadError(
            spec,
            "is a weights file, not a model: name the architecture and pass this file as weights (--model resnet50 --weights FILE)",
        )
    architecture, _, weight_name = (
        spec.partition(":") if not spec.startswith(("timm:", "torchvision:")) else (spec, "", "")
    )
    if weight_name:
        return _torchvision_named_weights(architecture, weight_name)
    architecture = _architecture_name(architecture)
    if weights is not None:
        module = _architecture_with_file(architecture, Path(weights))
        return _Built(module, spec, None, str(weights), None, None)
    if not random_weights:
        raise ModelLoadError(
            spec,
            "no weights: pass a weights file (--weights FILE) or a torchvision weight name "
            f"({spec}:DEFAULT), or use a named model (camtool models)",
        )
    return _Built(build_architecture(architecture), spec, None, "random", None, None)


def is_card_name(name: str) -> bool:
    """True for the name of a card, or the file stem of a user card that cannot be read."""
    broken: list[ModelLoadError] = []
    names = {card.name for card in list_cards(broken)}
    return name in names or any(Path(str(e.subject)).stem == name for e in broken)


def _is_torchscript(path: Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def _architecture_name(name: str) -> str:
    if name.startswith(("timm:", "torchvision:", "camtool:")):
        return name
    import torchvision

    known = torchvision.models.list_models()
    if name in known:
        return f"torchvision:{name}"
    cards = [card.name for card in list_cards()]
    close = sorted(difflib.get_close_matches(name, cards + known, n=3, cutoff=0.6))
    hint = (
        f"; did you mean {', '.join(close)}?"
        if close
        else "; see `camtool models`, or use timm:NAME / torchvision:NAME"
    )
    raise UnknownModelError(name, f"unknown model{hint}")


def _architecture_with_file(architecture: str, path: Path) -> nn.Module:
    """Build ``architecture`` with as many classes as the checkpoint's classifier, and load it."""
    state = load_state_dict_file(path)
    module = build_architecture(architecture, **_auxiliary_heads(architecture, state))
    wanted = _checkpoint_classes(module, state)
    if wanted is not None:
        module = build_architecture(
            architecture, num_classes=wanted, **_auxiliary_heads(architecture, state)
        )
    load_weights_into(module, state, path)
    return module


def _auxiliary_heads(architecture: str, state: Mapping[str, Tensor]) -> dict[str, Any]:
    """torchvision's GoogLeNet/Inception-v3 without their training-time auxiliary classifiers when
    the checkpoint has none (fine-tuned checkpoints usually drop them)."""
    if architecture in ("torchvision:googlenet", "torchvision:inception_v3") and not any(
        k.startswith(("aux1.", "aux2.", "AuxLogits.")) for k in state
    ):
        return {"aux_logits": False, "init_weights": False}
    return {}


def _checkpoint_classes(module: nn.Module, state: Mapping[str, Tensor]) -> int | None:
    """The class count of a checkpoint: rows of the weight of the module's last classifier."""
    last = [n for n, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not last:
        return None
    rows = state.get(f"{last[-1]}.weight")
    own = dict(module.named_modules())[last[-1]].weight.shape[0]
    return int(rows.shape[0]) if rows is not None and rows.shape[0] != own else None


def _torchvision_named_weights(architecture: str, weight_name: str) -> _Built:
    """``resnet50:IMAGENET1K_V2``: torchvision's weights, from torch's hub cache or downloaded."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(architecture)
        entry = enum[weight_name] if weight_name != "DEFAULT" else enum.DEFAULT
    except (ValueError, KeyError):
        try:
            names = [w.name for w in torchvision.models.get_model_weights(architecture)]
        except ValueError:
            raise UnknownModelError(
                architecture, "not a torchvision model with named weights"
            ) from None
        raise UnknownModelError(
            f"{architecture}:{weight_name}",
            f"unknown weights; {architecture} has {', '.join(names)}",
        ) from None
    path = download_weights(entry.url)
    module = build_architecture(
        f"torchvision:{architecture}", num_classes=len(entry.meta["categories"])
    )
    load_weights_into(module, load_state_dict_file(path), path)
    keywords = getattr(entry.transforms, "keywords", {})
    crop, resize = int(keywords.get("crop_size", 224)), int(keywords.get("resize_size", 256))
    interpolation = str(keywords.get("interpolation", "bilinear")).rsplit(".", 1)[-1].lower()
    prep = Preprocessing(
        input_size=crop,
        mean=_triple(keywords.get("mean", IMAGENET_MEAN)),
        std=_triple(keywords.get("std", IMAGENET_STD)),
        interpolation="bicubic" if interpolation == "bicubic" else "bilinear",
        crop_pct=crop / resize,
    )
    labels = tuple(entry.meta["categories"])
    source = f"torchvision weights transforms ({architecture}:{entry.name})"
    return _Built(module, f"{architecture}:{weight_name}", None, str(path), labels, prep, source)


def _labels_for(
    count: int,
    labels: str | os.PathLike[str] | None,
    default: str | tuple[str, ...] | None,
    base: Path | None = None,
) -> tuple[tuple[str, ...], str]:
    """The K class names and where they came from: a label file, the weights' categories, the
    card's label set, ImageNet-1k for 1000 outputs, else numbered names."""
    if labels is not None:
        names = load_labels(labels)
        source = str(labels)
    elif isinstance(default, tuple):
        names, source = default, "the weights' categories"
    elif default is not None and (default != "imagenet1k" or count == 1000):
        names, source = load_labels(default, base), str(default)
    elif count == 1000:
        names, source = imagenet_labels(), "imagenet1k (1000 outputs)"
    else:
        return tuple(
            f"class {i}" for i in range(count)
        ), f"numbered (no label set for {count} outputs)"
    if len(names) != count:
        raise ModelLoadError(source, f"{len(names)} labels for a classifier of {count} classes")
    return names, source
