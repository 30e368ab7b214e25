"""Building a network from what a user names: an architecture (``camtool:``, ``timm:``,
``torchvision:`` or a bare torchvision name), a card, a checkpoint, a TorchScript file, a
transformers folder or torchvision's named weights; with the weights it was given and where they
came from (:class:`Built`).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from camtool.errors import ModelLoadError, UnknownModelError
from camtool.image import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from camtool.models.cards import (
    ModelCard,
    architecture_options_problem,
    find_card,
    is_card_name,
    list_cards,
    load_labels,
)
from camtool.models.downloads import download_weights
from camtool.models.hub import (
    HF_PREFIX,
    check_timm_name,
    load_transformers_folder,
    timm_pretrained,
    transformers_preprocessing,
)
from camtool.models.weights import (
    load_pickled_model,
    load_state_dict_file,
    load_weights_into,
    pickled_model_classes,
    pickled_model_refusal,
    verified_weights_file,
)

# --------------------------------------------------------------------------------------------
# Architectures and labels


def build_architecture(
    architecture: str, num_classes: int | None = None, **options: Any
) -> nn.Module:
    """Build an untrained network from ``camtool:NAME``, ``timm:NAME``, ``torchvision:NAME`` or a
    bare torchvision name (``resnet18``).

    ``camtool:efficientnet_lite0`` (1, 2) are built in and need neither timm nor torchvision.

    Raises:
        UnknownModelError: a name no library knows (with close names); ModelLoadError: the
            library is missing or cannot build it.
    """
    architecture = architecture_name(architecture)
    library, _, name = architecture.partition(":")
    kwargs: dict[str, Any] = (
        dict(options) if num_classes is None else {**options, "num_classes": num_classes}
    )
    try:
        if library == "camtool":
            from camtool.models.efficientnet_lite import VARIANTS, EfficientNetLite

            if name not in VARIANTS:
                raise ValueError(f"camtool builds only {', '.join(VARIANTS)}")
            return EfficientNetLite(name, **kwargs)
        if library == "timm":
            import timm

            check_timm_name(name)
            return timm.create_model(name, pretrained=False, **kwargs)
        if library == "torchvision":
            import torchvision

            return torchvision.models.get_model(name, weights=None, **kwargs)
    except ImportError as exc:
        raise ModelLoadError(architecture, f"needs {exc.name}: pip install {exc.name}") from None
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(architecture, f"cannot build this architecture: {exc}") from None
    raise ModelLoadError(
        architecture,
        "architecture must be a torchvision name, 'camtool:NAME', 'timm:NAME' or 'torchvision:NAME'",
    )


class Built(NamedTuple):
    module: nn.Module
    name: str
    card: ModelCard | None
    source: str  # where the weights came from
    labels: str | tuple[str, ...] | None  # a label spec, or the names themselves
    preprocessing: Preprocessing | None  # None: whatever the module carries
    preprocessing_source: str = ""


def build_network(
    spec: str | ModelCard,
    weights: str | os.PathLike[str] | None,
    random_weights: bool,
    unsafe_load_pickle: bool = False,
) -> Built:
    if isinstance(spec, ModelCard) or spec.endswith(".toml") or is_card_name(spec):
        card = spec if isinstance(spec, ModelCard) else find_card(spec)
        problem = architecture_options_problem(card.options)  # a card built in Python, too
        if problem:
            raise ModelLoadError(card.path or card.name, problem)
        if weights is not None:
            module = _architecture_with_file(
                card.architecture, Path(weights), unsafe_load_pickle, card.options
            )
            return Built(
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
            **card.options,
        )
        if path is not None:
            load_weights_into(module, _card_state_dict(card, path), path)
        return Built(
            module,
            card.name,
            card,
            str(path or "random"),
            card.labels,
            card.preprocessing,
            f"model card {card.name}",
        )
    if spec.startswith(HF_PREFIX):
        return _transformers_folder(spec, weights)
    if Path(spec).is_file() and _is_torchscript(Path(spec)):
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch 2.9+ deprecates TorchScript
                module = torch.jit.load(spec, map_location="cpu")
        except Exception as exc:
            raise ModelLoadError(spec, f"not a loadable TorchScript model ({exc})") from None
        return Built(module, Path(spec).stem, None, spec, None, None)
    if Path(spec).is_file():
        if unsafe_load_pickle and pickled_model_classes(spec):
            module = load_pickled_model(spec)
            return Built(module, Path(spec).stem, None, f"{spec} (unpickled)", None, None)
        classes = pickled_model_classes(spec)
        if classes:
            raise ModelLoadError(spec, pickled_model_refusal(spec, classes))
        if not _is_weights_file(Path(spec)):
            raise ModelLoadError(
                spec,
                "is not a model: expected a model name (camtool models), a TorchScript file, or "
                "an architecture with a weights file (--model resnet50 --weights FILE)",
            )
        raise ModelLoadError(
            spec,
            "is a weights file, not a model: name the architecture and pass this file as weights (--model resnet50 --weights FILE)",
        )
    if _names_a_path(spec) and not Path(spec).exists():
        raise UnknownModelError(spec, "no such file")  # a usage error (exit 2), as a bad name
    architecture, _, weight_name = (
        spec.partition(":") if not spec.startswith(("timm:", "torchvision:")) else (spec, "", "")
    )
    if weight_name:
        return _torchvision_named_weights(architecture, weight_name)
    architecture = architecture_name(architecture)
    if weights is not None:
        module = _architecture_with_file(architecture, Path(weights), unsafe_load_pickle)
        return Built(module, spec, None, str(weights), None, None)
    if architecture.startswith("timm:"):
        cached = timm_pretrained(architecture.removeprefix("timm:"), required=not random_weights)
        if cached is not None:
            return Built(cached[0], spec, None, cached[1], None, None)
    elif not random_weights:
        named = (
            f"a torchvision weight name ({spec}:DEFAULT)"
            if architecture.startswith("torchvision:")
            else "a named model (camtool models)"
        )
        raise ModelLoadError(
            spec, f"no weights: pass a weights file (--weights FILE) or use {named}"
        )
    return Built(build_architecture(architecture), spec, None, "random", None, None)


def _transformers_folder(spec: str, weights: str | os.PathLike[str] | None) -> Built:
    """``hf:FOLDER``: a transformers image classifier saved with ``save_pretrained``."""
    folder = spec.removeprefix(HF_PREFIX)
    if weights is not None:
        raise ModelLoadError(spec, "a transformers folder carries its weights: leave out --weights")
    module = load_transformers_folder(folder)
    carried = transformers_preprocessing(folder)
    name = Path(folder).name or spec
    if carried is None:
        return Built(module, name, None, folder, None, None)
    return Built(module, name, None, folder, None, carried[0], carried[1])


def _is_torchscript(path: Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def _is_weights_file(path: Path) -> bool:
    """Whether ``path`` starts like a file ``torch.save`` writes (a zip archive or a pickle) or
    a safetensors file (an 8-byte header length, then JSON)."""
    with path.open("rb") as handle:
        head = handle.read(9)
    return head.startswith((b"PK\x03\x04", b"\x80")) or head[8:9] == b"{"


#: Suffixes that make a model spec a file name rather than a model name.
MODEL_FILE_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".bin", ".ckpt", ".safetensors", ".pkl")


def _names_a_path(spec: str) -> bool:
    """Whether a model spec can only be a file's path: a folder separator or a model file's
    suffix, and no library prefix (``timm:``, ``torchvision:``)."""
    if ":" in spec.split("/")[0] and not os.path.isabs(spec):
        return False
    return "/" in spec or os.sep in spec or spec.lower().endswith(MODEL_FILE_SUFFIXES)


def architecture_name(name: str) -> str:
    """``LIBRARY:NAME`` for an architecture name: bare torchvision names (``resnet18``) and
    camtool's built-in networks (``efficientnet_lite0``) get their library.

    Raises:
        UnknownModelError: no library has that name (the message suggests close names).
    """
    if name.startswith(("timm:", "torchvision:", "camtool:")):
        return name
    from camtool.models.efficientnet_lite import VARIANTS

    if name in VARIANTS:
        return f"camtool:{name}"
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


def _card_state_dict(card: ModelCard, path: Path) -> dict[str, Tensor]:
    """The state dict in a card's weights file; a file that is not one is named with its card."""
    try:
        return load_state_dict_file(path)
    except ModelLoadError as exc:
        source = card.weights
        key, named = (
            ("file", source.file) if source and source.file else ("url", source and source.url)
        )
        where = str(path.resolve())
        shown = f"{named!r} ({where})" if named and named != where else repr(where)
        raise ModelLoadError(
            card.path or card.name, f"[weights] {key} {shown}: {exc.problem}"
        ) from None


def _architecture_with_file(
    architecture: str,
    path: Path,
    unsafe_load_pickle: bool = False,
    options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build ``architecture`` (with a card's ``options``) with as many classes as the
    checkpoint's classifier, and load it."""
    state = load_state_dict_file(path, unsafe_load_pickle)
    extra = {**_auxiliary_heads(architecture, state), **(options or {})}
    module = build_architecture(architecture, **extra)
    wanted = _checkpoint_classes(module, state)
    if wanted is not None:
        module = build_architecture(architecture, num_classes=wanted, **extra)
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


def _torchvision_named_weights(architecture: str, weight_name: str) -> Built:
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
        mean=three_floats(keywords.get("mean", IMAGENET_MEAN)),
        std=three_floats(keywords.get("std", IMAGENET_STD)),
        interpolation="bicubic" if interpolation == "bicubic" else "bilinear",
        crop_pct=crop / resize,
    )
    labels = tuple(entry.meta["categories"])
    source = f"torchvision weights transforms ({architecture}:{entry.name})"
    return Built(module, f"{architecture}:{weight_name}", None, str(path), labels, prep, source)


def three_floats(values: Any) -> tuple[float, float, float]:
    """``values`` (one number, or three: a mean or std per channel) as three floats."""
    numbers = [float(v) for v in values]
    if len(numbers) == 1:
        numbers *= 3
    return numbers[0], numbers[1], numbers[2]
