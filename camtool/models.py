"""Model names, cards and checkpoints -> an eval model, its preprocessing and its labels.

Loading knows nothing of its consumer: it does not look for a CAM head (that is the CAM method's
``bind`` step, :mod:`camtool.methods`), so a model that CAM cannot explain still loads. Cards and
label sets live in :mod:`camtool.cards`, weights files in :mod:`camtool.weights`.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from camtool.cards import (
    ModelCard,
    architecture_options_problem,
    find_card,
    imagenet_labels,
    is_card_name,
    list_cards,
    load_labels,
)
from camtool.errors import ModelLoadError, UnknownModelError
from camtool.hub import (
    HF_PREFIX,
    check_timm_name,
    load_transformers_folder,
    timm_pretrained,
    transformers_preprocessing,
)
from camtool.image import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from camtool.network import (  # the names of running a network, used here and re-exported
    DTYPES,
    check_finite_weights,
    count_classes,
    describe_output,
    logits_of,
    network_failures,
    probe_image,
    resolve_device,
    resolve_dtype,
)
from camtool.weights import (
    download_weights,
    load_pickled_model,
    load_state_dict_file,
    load_weights_into,
    pickled_model_classes,
    pickled_model_refusal,
    verified_weights_file,
)

DEFAULT_MODEL = "efficientnet_lite0"

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
            from camtool.efficientnet_lite import VARIANTS, EfficientNetLite

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

    def placed(self, batch: Tensor) -> Tensor:
        """``batch`` on the network's device, in channels-last when the model runs that way."""
        batch = batch.to(self.device)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def autocast(self) -> torch.autocast:
        """Autocast to the compute dtype (off for float32); the network is never converted."""
        return torch.autocast(
            self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32
        )

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


def load_model(
    spec: str | ModelCard | nn.Module | LoadedModel = DEFAULT_MODEL,
    device: str | torch.device | None = "auto",
    labels: str | os.PathLike[str] | None = None,
    weights: str | os.PathLike[str] | None = None,
    dtype: str | torch.dtype | None = None,
    channels_last: bool | None = None,
    preprocessing: Preprocessing | None = None,
    random_weights: bool = False,
    unsafe_load_pickle: bool = False,
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
            - ``timm:NAME`` alone: timm's pretrained weights from the local Hugging Face cache
              (never downloaded);
            - ``hf:FOLDER``: a transformers image classifier saved with ``save_pretrained``
              (``config.json`` + ``model.safetensors``; labels from ``config.id2label``);
            - a TorchScript file (``model.pt`` saved with ``torch.jit.save``); a whole pickled
              model (``torch.save(model)``) only with ``unsafe_load_pickle``;
            - an ``nn.Module``: used as it is, never moved or converted;
            - an already loaded model (returned as is).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"auto"`` (models camtool
            builds; see :func:`resolve_device`).
        labels: a label file, one class name per line; their number must match the output.
        weights: a state dict file (``.pth``/``.pt`` read with ``weights_only=True``, or
            ``.safetensors``) replacing the card's or architecture's weights.
        dtype: ``"float32"`` (default), ``"float16"`` or ``"bfloat16"`` (autocast; the aliases
            ``fp32``, ``fp16``/``half`` and ``bf16`` too).
        channels_last: channels-last memory format; default: on for CPU and CUDA (1.6x faster
            for the built-in EfficientNet-Lite on 2 CPU cores).
        preprocessing: the preprocessing to use; default, in this order: the card's, timm's
            ``pretrained_cfg`` (timm models), torchvision's weights transforms
            (``NAME:WEIGHTS``), else ImageNet defaults (224 px, ImageNet mean and std).
        random_weights: allow an architecture without weights (for ``camtool inspect``).
        unsafe_load_pickle: unpickle a whole pickled model (``torch.save(model)``) given as
            ``spec`` or ``weights`` (``weights_only=False``): this RUNS code the file names, so
            use it only for files you trust. Without it such a file is refused, with how to
            convert it to a state dict.

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
        built = _build(spec, weights, random_weights, unsafe_load_pickle)
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
    carried = labels_carried_by(module, count) if default_labels is None else None
    if carried is not None:
        default_labels, carried_source = carried
    else:
        carried_source = "the weights' categories"
    names, labels_source = _labels_for(count, labels, default_labels, base, carried_source)
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
    embedding: torchvision's ``image_size``, timm's ``fixed_input_size``), else None.

    A timm patch embedding that insists on its size says it itself (``strict_img_size``), and
    its ``img_size`` wins over ``pretrained_cfg``, which still names the pretrained size when the
    model was created with another ``img_size``."""
    embed = getattr(module, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    strict = getattr(embed, "strict_img_size", False) and not getattr(
        embed, "dynamic_img_size", False
    )
    if strict and isinstance(size, Sequence) and len(size) == 2 and size[0] == size[1]:
        return int(size[0])
    config = getattr(module, "pretrained_cfg", None)
    if isinstance(config, Mapping) and config.get("fixed_input_size") and config.get("input_size"):
        return int(config["input_size"][-1])
    size = getattr(module, "image_size", None)
    if type(module).__name__ == "VisionTransformer" and isinstance(size, int):
        return size
    hf_config = getattr(module, "config", None)  # transformers: ViT-style position embeddings
    hf_size = getattr(hf_config, "image_size", None)
    if getattr(hf_config, "model_type", None) in _FIXED_SIZE_TRANSFORMERS and isinstance(
        hf_size, int
    ):
        return hf_size
    return None


#: transformers model types whose position embeddings fit one input size only.
_FIXED_SIZE_TRANSFORMERS = frozenset({"vit", "deit", "beit", "data2vec-vision", "vit_msn"})


def _triple(values: Any) -> tuple[float, float, float]:
    numbers = [float(v) for v in values]
    if len(numbers) == 1:
        numbers *= 3
    return numbers[0], numbers[1], numbers[2]


class _Built(NamedTuple):
    module: nn.Module
    name: str
    card: ModelCard | None
    source: str  # where the weights came from
    labels: str | tuple[str, ...] | None  # a label spec, or the names themselves
    preprocessing: Preprocessing | None  # None: whatever the module carries
    preprocessing_source: str = ""


def _build(
    spec: str | ModelCard,
    weights: str | os.PathLike[str] | None,
    random_weights: bool,
    unsafe_load_pickle: bool = False,
) -> _Built:
    if isinstance(spec, ModelCard) or spec.endswith(".toml") or is_card_name(spec):
        card = spec if isinstance(spec, ModelCard) else find_card(spec)
        problem = architecture_options_problem(card.options)  # a card built in Python, too
        if problem:
            raise ModelLoadError(card.path or card.name, problem)
        if weights is not None:
            module = _architecture_with_file(
                card.architecture, Path(weights), unsafe_load_pickle, card.options
            )
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
            **card.options,
        )
        if path is not None:
            load_weights_into(module, _card_state_dict(card, path), path)
        return _Built(
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
        return _Built(module, Path(spec).stem, None, spec, None, None)
    if Path(spec).is_file():
        if unsafe_load_pickle and pickled_model_classes(spec):
            module = load_pickled_model(spec)
            return _Built(module, Path(spec).stem, None, f"{spec} (unpickled)", None, None)
        classes = pickled_model_classes(spec)
        if classes:
            raise ModelLoadError(spec, pickled_model_refusal(spec, classes))
        raise ModelLoadError(
            spec,
            "is a weights file, not a model: name the architecture and pass this file as weights (--model resnet50 --weights FILE)",
        )
    architecture, _, weight_name = (
        spec.partition(":") if not spec.startswith(("timm:", "torchvision:")) else (spec, "", "")
    )
    if weight_name:
        return _torchvision_named_weights(architecture, weight_name)
    architecture = architecture_name(architecture)
    if weights is not None:
        module = _architecture_with_file(architecture, Path(weights), unsafe_load_pickle)
        return _Built(module, spec, None, str(weights), None, None)
    if architecture.startswith("timm:"):
        cached = timm_pretrained(architecture.removeprefix("timm:"), required=not random_weights)
        if cached is not None:
            return _Built(cached[0], spec, None, cached[1], None, None)
    elif not random_weights:
        named = (
            f"a torchvision weight name ({spec}:DEFAULT)"
            if architecture.startswith("torchvision:")
            else "a named model (camtool models)"
        )
        raise ModelLoadError(
            spec, f"no weights: pass a weights file (--weights FILE) or use {named}"
        )
    return _Built(build_architecture(architecture), spec, None, "random", None, None)


def _transformers_folder(spec: str, weights: str | os.PathLike[str] | None) -> _Built:
    """``hf:FOLDER``: a transformers image classifier saved with ``save_pretrained``."""
    folder = spec.removeprefix(HF_PREFIX)
    if weights is not None:
        raise ModelLoadError(spec, "a transformers folder carries its weights: leave out --weights")
    module = load_transformers_folder(folder)
    carried = transformers_preprocessing(folder)
    name = Path(folder).name or spec
    if carried is None:
        return _Built(module, name, None, folder, None, None)
    return _Built(module, name, None, folder, None, carried[0], carried[1])


def _is_torchscript(path: Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def architecture_name(name: str) -> str:
    """``LIBRARY:NAME`` for an architecture name: bare torchvision names (``resnet18``) and
    camtool's built-in networks (``efficientnet_lite0``) get their library.

    Raises:
        UnknownModelError: no library has that name (the message suggests close names).
    """
    if name.startswith(("timm:", "torchvision:", "camtool:")):
        return name
    from camtool.efficientnet_lite import VARIANTS

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


def labels_carried_by(module: nn.Module, count: int) -> tuple[tuple[str, ...], str] | None:
    """The class names a network carries, and where from: a Hugging Face ``config.id2label``
    with ``count`` entries (not transformers' placeholders ``LABEL_0``, ``LABEL_1``, ...)."""
    config = getattr(module, "config", None)
    id2label = getattr(config, "id2label", None)
    if not isinstance(id2label, Mapping) or len(id2label) != count:
        return None
    try:
        by_index = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError):
        return None
    if sorted(by_index) != list(range(count)):
        return None
    names = tuple(by_index[i] for i in range(count))
    if all(name == f"LABEL_{i}" for i, name in enumerate(names)):
        return None
    return names, f"the model's config.id2label ({type(config).__name__})"


def _labels_for(
    count: int,
    labels: str | os.PathLike[str] | None,
    default: str | tuple[str, ...] | None,
    base: Path | None = None,
    names_source: str = "the weights' categories",
) -> tuple[tuple[str, ...], str]:
    """The K class names and where they came from: a label file, the names the weights or the
    network carry (``names_source`` says which), the card's label set, ImageNet-1k for 1000
    outputs, else numbered names."""
    if labels is not None:
        names = load_labels(labels)
        source = str(labels)
    elif isinstance(default, tuple):
        names, source = default, names_source
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


__all__ = [
    "DEFAULT_MODEL",
    "DTYPES",
    "LoadedModel",
    "architecture_name",
    "build_architecture",
    "check_finite_weights",
    "count_classes",
    "describe_output",
    "fixed_input_size",
    "labels_carried_by",
    "load_model",
    "logits_of",
    "network_failures",
    "preprocessing_carried_by",
    "probe_image",
    "resolve_device",
    "resolve_dtype",
]
