"""Running a network: devices and compute dtypes, the probe image, reading the class scores from
whatever the network returns, and its failures as one-line errors.

Loading (:mod:`camtool.models`) and every method (:mod:`camtool.methods`) run networks through
these functions, so a network's output is read the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from camtool.errors import (
    CamtoolError,
    DeviceMemoryError,
    ModelLoadError,
    ModelOutputError,
    ModelRunError,
)
from camtool.hooks import eval_mode
from camtool.settings import DEVICE_CHOICES, parse_device, parse_dtype

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Map ``"auto"``/None to the best available device; check that a named device exists.

    A string is read by :func:`camtool.settings.parse_device` (cpu, cuda, cuda:N, mps, auto; any
    case); a :class:`torch.device` is taken as it is.

    Raises:
        InvalidArgumentError: a spec that names no device (``"gpu"``, ``""``, ``"meta"``).
        ModelLoadError: a device this machine does not have (CUDA without a GPU, say).
    """
    if not isinstance(device, torch.device):
        device = parse_device(device)
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "meta":
        parse_device("meta")  # raises, naming the choices
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(device, "CUDA is not available on this machine")
    if resolved.type == "cuda" and resolved.index is not None:
        count = torch.cuda.device_count()
        if resolved.index >= count:
            raise ModelLoadError(
                device, f"this machine has {count} CUDA device{'' if count == 1 else 's'}"
            )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(device, "MPS is not available on this machine")
    backend = getattr(torch, resolved.type, None)
    if resolved.type not in ("cpu", "cuda", "mps") and not (
        callable(getattr(backend, "is_available", None)) and backend.is_available()  # type: ignore[union-attr]
    ):
        raise ModelLoadError(
            device, f"device '{resolved.type}' is not available here: choose {DEVICE_CHOICES}"
        )
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """Map a dtype name or alias (``float32``/``fp32``, ``float16``/``fp16``/``half``,
    ``bfloat16``/``bf16``: :func:`camtool.settings.parse_dtype`), a torch dtype or None
    (float32) to a torch dtype.

    Raises:
        InvalidArgumentError: an unknown name.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    return DTYPES[parse_dtype(dtype)]


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
        kind = DeviceMemoryError if isinstance(exc, torch.OutOfMemoryError) else ModelRunError
        raise kind(
            name,
            f"the network fails on a batch of shape {list(batch.shape)} ({type(exc).__name__}: {first})",
        ) from None


def logits_of(output: Any, name: str) -> Tensor:
    """The ``Tensor[N,K]`` class scores in a network's output.

    Understood: a ``Tensor[N,K]``; a mapping or object with a ``logits`` entry or attribute (a
    Hugging Face ``ModelOutput``, a dict); a tuple or list whose first element is the scores
    (``return_dict=False`` outputs, auxiliary heads).

    Raises:
        ModelOutputError: nothing of that kind in the output (the message says what it holds).
    """
    scores = _scores_in(output)
    if isinstance(scores, Tensor) and scores.ndim == 2:
        return scores
    raise ModelOutputError(
        name,
        f"the network returns {describe_output(output)}; camtool reads [N, K] class scores from "
        "a tensor, a `logits` entry or attribute (Hugging Face ModelOutput, dict), or the first "
        "element of a tuple",
    )


def _scores_in(output: Any) -> Any:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        return output.get("logits")
    if isinstance(output, (tuple, list)):
        return output[0] if output and isinstance(output[0], Tensor) else None
    return getattr(output, "logits", None)


def describe_output(output: Any) -> str:
    """A short phrase for what a network returned: ``a tensor of shape [1, 3, 7, 7]``, ``a dict
    with keys 'out', 'aux'``, ``a tuple of (tensor [1, 10], dict)``."""
    if isinstance(output, Tensor):
        return f"a tensor of shape {list(output.shape)}"
    kind = type(output).__name__
    if isinstance(output, Mapping):
        keys = [repr(str(k)) for k in list(output)[:6]]
        more = ", ..." if len(output) > 6 else ""
        return f"a {kind} with keys {', '.join(keys)}{more}" if keys else f"an empty {kind}"
    if isinstance(output, (tuple, list)):
        parts = [
            f"tensor {list(v.shape)}" if isinstance(v, Tensor) else type(v).__name__
            for v in list(output)[:6]
        ]
        more = ", ..." if len(output) > 6 else ""
        return f"a {kind} of ({', '.join(parts)}{more})" if parts else f"an empty {kind}"
    return f"a {kind}"
