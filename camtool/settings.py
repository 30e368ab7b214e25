"""The values every entry point shares: defaults, and the rules that read device and dtype names.

``camtool explain``, ``camtool export`` and the Python functions behind them take the same
settings; their defaults live here once, and so do the rules that turn what a user types
(``--device cuda:1``, ``--dtype bf16``) into the canonical names the rest of camtool uses. No
torch here: the command line checks its options with these functions before any model loads.
"""

from __future__ import annotations

import numbers
import operator
import os
import re
from pathlib import Path
from typing import Final, Literal

from camtool.errors import InvalidArgumentError

#: Format of overlay pictures (``explain`` and ``export``): PNG, lossless.
DEFAULT_IMAGE_FORMAT: Final[Literal["png", "jpg"]] = "png"

#: The model every entry point uses when none is named (a built-in card).
DEFAULT_MODEL: Final = "efficientnet_lite0"

#: Folder that ``camtool explain`` and ``camtool export`` write into when ``--out`` is not given.
DEFAULT_OUT_DIR: Final = "camtool_out"

#: Heatmap opacity, and the colour map, of every overlay.
DEFAULT_ALPHA: Final = 0.5
DEFAULT_COLORMAP: Final = "jet"

#: The CAM box keeps pixels at or above this fraction of the map's maximum (the CAM paper's 20%).
DEFAULT_BOX_THRESHOLD: Final = 0.2

#: How maps at feature resolution are resized to the image (:func:`camtool.render.upsample_cams`):
#: ``"placed"`` puts each cell's value at the centre of its receptive field (measured while the
#: network runs: padding can shift a grid by up to half a cell); ``"stretch"`` stretches the grid
#: over the whole input, as ``cv2.resize`` (and pytorch-grad-cam, torchcam) do. The raw maps are
#: the same; only where their values land differs.
UPSAMPLES: Final = ("placed", "stretch")
DEFAULT_UPSAMPLE: Final = "placed"

#: The device specs camtool takes, as the error messages list them.
DEVICE_CHOICES: Final = "cpu, cuda, cuda:N (the N-th GPU), mps or auto"

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

#: dtype names by what a user may type.
DTYPE_ALIASES: Final[dict[str, str]] = {
    "float32": "float32", "fp32": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}  # fmt: skip

#: The dtype names, as the error messages list them.
DTYPE_CHOICES: Final = "float32 (fp32), float16 (fp16, half) or bfloat16 (bf16)"


def parse_device(spec: str | None) -> str:
    """Return the canonical device spec: ``"auto"``, ``"cpu"``, ``"mps"``, ``"cuda"`` or
    ``"cuda:N"`` (any case, surrounding blanks ignored; None means ``"auto"``).

    Only the spelling is checked; whether the device exists here is
    :func:`camtool.models.resolve_device`'s question.

    Raises:
        InvalidArgumentError: anything else (``""``, ``"gpu"``, ``"meta"``), naming the choices.
    """
    if spec is None:
        return "auto"
    wanted = spec.strip().lower()
    if _DEVICE.fullmatch(wanted):
        return wanted
    if wanted == "meta":
        raise InvalidArgumentError(
            spec, f"device 'meta' holds no data (shapes only): choose {DEVICE_CHOICES}"
        )
    shown = repr(spec) if not spec.strip() else spec
    raise InvalidArgumentError(shown, f"not a device: choose {DEVICE_CHOICES}")


def parse_dtype(name: str | None) -> str:
    """Return the canonical dtype name (``"float32"``, ``"float16"`` or ``"bfloat16"``) for a
    name or alias (``fp32``, ``fp16``/``half``, ``bf16``; any case). None means ``"float32"``.

    Raises:
        InvalidArgumentError: an unknown name, naming the choices.
    """
    if name is None:
        return "float32"
    canonical = DTYPE_ALIASES.get(name.strip().lower())
    if canonical is None:
        shown = repr(name) if not name.strip() else name
        raise InvalidArgumentError(shown, f"unknown dtype: choose {DTYPE_CHOICES}")
    return canonical


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` if it is a positive ``int`` (a batch size, a step count; not a bool).

    Raises:
        InvalidArgumentError: 0, a negative number, a float, a bool or anything else, naming the
            argument ``name``.
    """
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise InvalidArgumentError(name, f"expected a positive integer, got {value!r}")
    number = operator.index(value)
    if number < 1:
        raise InvalidArgumentError(name, f"expected a positive integer, got {value!r}")
    return number


def check_alpha(alpha: float) -> float:
    """Return ``alpha`` (a heatmap's opacity) as a float if it is a number in [0, 1].

    Raises:
        InvalidArgumentError: a value outside [0, 1], NaN, or no number (a string, a bool).
    """
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise InvalidArgumentError("alpha", f"expected a number in [0, 1], got {alpha!r}")
    if not 0.0 <= alpha <= 1.0:  # False for NaN too
        raise InvalidArgumentError(alpha, "alpha must be between 0 and 1")
    return float(alpha)


def check_box_threshold(threshold: float) -> float:
    """Return ``threshold`` if it lies strictly between 0 and 1 (a fraction of the map's maximum).

    Raises:
        InvalidArgumentError: 0, 1, a negative number, NaN, or above 1.
    """
    if not 0.0 < threshold < 1.0:  # False for NaN too
        raise InvalidArgumentError(
            threshold, "the box threshold is a fraction of the map's maximum: 0 < t < 1"
        )
    return float(threshold)


def check_upsample(upsample: str) -> str:
    """Return ``upsample`` as one of :data:`UPSAMPLES` (``"placed"`` or ``"stretch"``), in any
    case (``"STRETCH"`` is ``"stretch"``, as colour map names are taken).

    Raises:
        InvalidArgumentError: anything else, naming the choices.
    """
    name = upsample.lower() if isinstance(upsample, str) else upsample
    if name not in UPSAMPLES:
        raise InvalidArgumentError(
            upsample, f"unknown upsampling; choose one of {', '.join(UPSAMPLES)}"
        )
    return str(name)


def output_folder(out: str | os.PathLike[str] | None, pictures_wanted: bool = True) -> Path | None:
    """The folder that ``camtool explain`` writes into: ``out`` when given; else
    :data:`DEFAULT_OUT_DIR` when pictures are wanted, and None (write nothing) when they are not
    (``--json`` alone prints its document and leaves the current folder as it was)."""
    if out is not None:
        return Path(out)
    return Path(DEFAULT_OUT_DIR) if pictures_wanted else None
