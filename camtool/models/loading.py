"""Model specs -> a :class:`LoadedModel`: the network in eval mode, its preprocessing and its labels
(and where each came from).

Loading knows nothing of its consumer: it does not look for a CAM head (that is the CAM method's
``bind`` step, :mod:`camtool.methods`), so a model that CAM cannot explain still loads. Building
the network from a name, a card or a file is :mod:`camtool.models.building`'s job; cards and label
sets live in :mod:`camtool.models.cards`, weights files in :mod:`camtool.models.weights`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from camtool.errors import InvalidArgumentError, ModelLoadError
from camtool.image import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from camtool.models.building import build_network, three_floats
from camtool.models.cards import ModelCard, imagenet_labels, load_labels
from camtool.models.network import (
    check_finite_weights,
    count_classes,
    resolve_device,
    resolve_dtype,
)
from camtool.settings import DEFAULT_MODEL

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
        memo: what the methods bound to this model keep (their explainers, their refusals),
            so that binding twice costs nothing; it lives and dies with this object.
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
    memo: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

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
        UnknownModelError: a name that is no card, architecture or file.
        ModelLoadError: a model that cannot be built, or weights that cannot be loaded.
        WeightsHashError: a weights file whose sha256 is not the card's.
        InvalidArgumentError: ``spec`` is none of the above (a number, None).
    """
    if isinstance(spec, LoadedModel):
        return spec
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, (str, ModelCard, nn.Module)):
        raise InvalidArgumentError(
            "model",
            f"got {spec!r} of type {type(spec).__name__}; give a model name, a card or weights file, "
            "an nn.Module or a loaded model",
        )
    compute_dtype = resolve_dtype(dtype)
    if isinstance(spec, nn.Module):
        module, name, card, source = spec, type(spec).__name__, None, "caller's module"
        default_labels: str | tuple[str, ...] | None = None
        built_prep: tuple[Preprocessing, str] | None = None
        last = bool(channels_last)
    else:
        target = resolve_device(device)
        built = build_network(spec, weights, random_weights, unsafe_load_pickle)
        module, name, card, source, default_labels = built[:5]
        built_prep = (
            None
            if built.preprocessing is None
            else (built.preprocessing, built.preprocessing_source)
        )
        module.eval().to(target)
        for parameter in module.parameters():
            parameter.requires_grad_(False)
        last = target.type in ("cpu", "cuda") if channels_last is None else channels_last
        if last:
            module.to(memory_format=torch.channels_last)
    if preprocessing is not None:  # the caller's: what the network carries is not read
        prep, prep_source = preprocessing, "given by the caller"
    else:
        prep, prep_source = built_prep or preprocessing_carried_by(module)
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
    and a phrase saying which.

    Raises:
        ModelLoadError: naming the ``pretrained_cfg``: a value out of bounds (a ``crop_pct`` of
            0.05, a mean above 1), with the field and its bounds, or one it cannot read.
    """
    config = getattr(module, "pretrained_cfg", None)
    if isinstance(config, Mapping) and config.get("input_size"):
        source = f"timm pretrained_cfg ({config.get('architecture', type(module).__name__)})"
        size = config["input_size"]
        interpolation = str(config.get("interpolation", "bicubic"))
        try:
            prep = Preprocessing(
                input_size=int(size[-1]),
                mean=three_floats(config.get("mean", IMAGENET_MEAN)),
                std=three_floats(config.get("std", IMAGENET_STD)),
                interpolation="bicubic" if interpolation == "bicubic" else "bilinear",
                crop_pct=float(config.get("crop_pct", 0.875)),
            )
        except InvalidArgumentError as exc:  # the model's values: not a usage error
            raise ModelLoadError(source, exc.problem) from None
        except (ValueError, TypeError, IndexError) as exc:
            raise ModelLoadError(source, f"cannot read its preprocessing ({exc})") from None
        return prep, source
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
