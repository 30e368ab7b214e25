"""Model names, cards and checkpoints -> an eval model, its preprocessing and its labels.

Loading knows nothing of its consumer: it does not look for a CAM head (that is the CAM method's
``bind`` step, :mod:`camtool.methods`), so a model that CAM cannot explain still loads. Cards and
label sets live in :mod:`camtool.cards`, weights files in :mod:`camtool.weights`.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from camtool.cards import (
    ModelCard,
    find_card,
    imagenet_labels,
    is_card_name,
    list_cards,
    load_labels,
)
from camtool.errors import CamtoolError, ModelLoadError, ModelRunError, UnknownModelError
from camtool.hooks import eval_mode
from camtool.image import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from camtool.weights import (
    download_weights,
    load_state_dict_file,
    load_weights_into,
    verified_weights_file,
)

DEFAULT_MODEL = "efficientnet_lite0"

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


def probe_image(module: nn.Module, size: int) -> Tensor:
    """A seeded random ``Tensor[1,3,size,size]`` on the network's device and in its parameter
    dtype: the image loading and discovery probe with (zeros can hide an overflow)."""
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = (
        parameter.dtype
        if parameter is not None and parameter.is_floating_point()
        else torch.float32
    )
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, size, size, generator=generator).to(device=device, dtype=dtype)


def count_classes(module: nn.Module, size: int, name: str) -> int:
    """K, the number of classes: the width of the network's output on one probe image.

    Raises:
        ModelLoadError: the network fails on the probe, or its output is not ``[N, K]`` scores.
    """
    probe = probe_image(module, size)
    try:
        with torch.inference_mode(), eval_mode(module):
            output = module(probe)
    except Exception as exc:  # a network that cannot run on an image is not loadable
        raise ModelLoadError(
            name, f"the network fails on a {size}x{size} probe image ({type(exc).__name__}: {exc})"
        ) from None
    logits = logits_of(output, name)
    if not bool(torch.isfinite(logits).all()):
        raise ModelLoadError(
            name,
            "the network's output holds NaN or infinity on a probe image (finite weights that "
            "overflow: a damaged or mis-scaled checkpoint)",
        )
    return logits.shape[-1]


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
