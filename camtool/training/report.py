"""What ``camtool fit`` writes: the model folder (weights, labels, a card that ``-m`` accepts)
and its ``report/`` (confusion matrix, per-class CAM sheets, validation predictions, metrics).

The folder is built under a temporary name beside its final place and renamed when complete,
so a half-written model folder is never seen, whatever stops the run.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from camtool.errors import InvalidArgumentError, OutputWriteError
from camtool.image import Preprocessing, resize_image
from camtool.io.files import TEMP_PREFIX, TEMP_SUFFIX, write_bytes_atomic
from camtool.io.images import save_image
from camtool.io.opencv import cv2
from camtool.naming import slug
from camtool.render import labelled_grid

#: Tiles in the CAM sheets are at least this many pixels on their shorter side.
TILE = 112


def check_output_folder(target: Path, overwrite: bool) -> None:
    """Refuse, before any work, a model folder :func:`staged_folder` could not write: ``target``
    is a file, or a non-empty folder without ``overwrite``; the folder it is staged in (its
    parent, or the nearest existing folder above, when the parent does not exist yet) cannot
    take a file (read-only, forbidden, full: a probe file is written there, synced and removed);
    an existing ``target`` cannot be replaced (a mount point, a read-only folder).

    Raises:
        InvalidArgumentError: a file, or a non-empty folder without ``overwrite`` (usage).
        OutputWriteError: the file system refuses the write (with its ``errno``).
    """
    target = Path(os.path.abspath(target))
    _check_target(target, overwrite)
    place = target.parent
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise OutputWriteError(place, "cannot write here: not a folder", errno.ENOTDIR)
    try:
        fd, probe = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=place)
        try:
            os.write(fd, bytes(4096))
            os.fsync(fd)
        finally:
            with suppress(OSError):
                os.close(fd)
            with suppress(OSError):
                os.unlink(probe)
    except OSError as exc:
        raise OutputWriteError(
            place, f"cannot write here: {exc.strerror or exc}", exc.errno
        ) from None
    if target.is_dir():
        if os.path.ismount(target):
            raise OutputWriteError(
                target,
                "is a mount point, and the model folder is replaced whole; write into a folder "
                "inside it",
                errno.EBUSY,
            )
        if not os.access(target, os.W_OK):
            raise OutputWriteError(target, "cannot replace this folder: not writable", errno.EACCES)


def _check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not target.is_dir():
        raise InvalidArgumentError(target, "exists and is not a folder")
    if target.is_dir() and not overwrite and _holds_anything(target):
        raise InvalidArgumentError(
            target, "exists and is not empty; choose another folder or overwrite it"
        )


def _holds_anything(folder: Path) -> bool:
    try:
        with os.scandir(folder) as entries:
            return any(True for _ in entries)
    except OSError as exc:
        raise OutputWriteError(
            folder, f"cannot list folder: {exc.strerror or exc}", exc.errno
        ) from None


@contextmanager
def staged_folder(target: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary folder beside ``target``, renamed to ``target`` when the block succeeds and
    removed when it fails (Ctrl-C included). A relative ``target`` (``.`` too) is made absolute
    first, so the temporary folder lies beside it, never inside it; a replaced folder is put
    back when the rename fails, and no temporary folder is left on any path.

    Raises:
        InvalidArgumentError: ``target`` is a file, or a non-empty folder (without
            ``overwrite``). OutputWriteError: the parent folder cannot be written.
    """
    target = Path(os.path.abspath(target))
    _check_target(target, overwrite)  # again: the folder may have changed while the model trained
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=target.parent))
    except OSError as exc:
        raise OutputWriteError(
            target.parent, f"cannot write here: {exc.strerror or exc}", exc.errno
        ) from None
    old: Path | None = None
    try:
        yield staging
        staging.chmod(0o777 & ~_umask())
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=target.parent))
            os.replace(target, old / "old")
            try:
                os.replace(staging, target)
            except OSError:
                os.replace(old / "old", target)  # the earlier model folder, back in its place
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except OSError as exc:
        _remove_parts(staging, old)
        raise OutputWriteError(target, f"cannot write: {exc.strerror or exc}", exc.errno) from None
    except BaseException:
        _remove_parts(staging, old)
        raise


def _remove_parts(staging: Path, old: Path | None) -> None:
    """Remove the staging folder, and the folder that was to hold the replaced one (when it is
    empty: it never removes a model folder that could not be put back)."""
    shutil.rmtree(staging, ignore_errors=True)
    if old is not None:
        with suppress(OSError):
            old.rmdir()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_weights(path: Path, network: nn.Module) -> None:
    """The network's state dict as safetensors (contiguous CPU tensors), written atomically."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    write_bytes_atomic(path, save(state))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if value == value else '"nan"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).encode("utf-8", "replace").decode("utf-8")  # no lone surrogates
    return json.dumps(text)  # JSON's escapes are TOML basic-string escapes


def card_text(tables: Mapping[str, Any]) -> str:
    """TOML for a model card: top-level keys first, then one ``[table]`` per mapping value
    (nested mappings become ``[table.sub]``)."""
    lines: list[str] = []
    nested: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in tables.items():
        if isinstance(value, Mapping):
            nested.append((key, value))
        elif value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in nested:
        lines += ["", f"[{name}]"]
        inner = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
        lines += [
            f"{k} = {_toml_value(v)}"
            for k, v in table.items()
            if not isinstance(v, Mapping) and v is not None
        ]
        for sub, values in inner:
            lines += ["", f"[{name}.{sub}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


def preprocessing_table(prep: Preprocessing) -> dict[str, Any]:
    """The ``[preprocessing]`` table of a card."""
    return {
        "input_size": prep.input_size, "interpolation": prep.interpolation,
        "crop_pct": prep.crop_pct, "mean": list(prep.mean), "std": list(prep.std),
    }  # fmt: skip


def confusion_matrix(labels: Tensor, predicted: Tensor, classes: int) -> Tensor:
    """``Tensor[K,K]`` int64: rows true classes, columns predicted ones."""
    matrix = torch.zeros(classes, classes, dtype=torch.int64)
    matrix.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    return matrix


def confusion_picture(matrix: Tensor, names: Sequence[str]) -> Tensor:
    """The confusion matrix as a picture: ``Tensor[3,H,W]`` uint8 RGB, cells shaded by the
    fraction of their row (true class), with the counts written in them."""
    k = int(matrix.shape[0])
    cell = 44
    shown = [
        f"{i} {n.encode('ascii', 'replace').decode('ascii')}"[:22] for i, n in enumerate(names)
    ]
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.45
    left = 12 + max(cv2.getTextSize(s, font, scale, 1)[0][0] for s in shown)
    top = 56
    canvas = np.full((top + k * cell + 30, left + k * cell + 12, 3), 255, np.uint8)
    rows = matrix.float() / matrix.sum(1, keepdim=True).clamp(min=1)
    for i in range(k):
        cv2.putText(
            canvas,
            shown[i],
            (6, top + i * cell + cell // 2 + 5),
            font,
            scale,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
        cv2.putText(
            canvas,
            str(i),
            (left + i * cell + cell // 2 - 6, top - 8),
            font,
            scale,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
        for j in range(k):
            shade = float(rows[i, j])
            colour = tuple(int(255 - shade * (255 - c)) for c in (31, 90, 170))
            x, y = left + j * cell, top + i * cell
            cv2.rectangle(canvas, (x, y), (x + cell - 2, y + cell - 2), colour, -1)
            text = str(int(matrix[i, j]))
            ink = (255, 255, 255) if shade > 0.5 else (0, 0, 0)
            width = cv2.getTextSize(text, font, scale, 1)[0][0]
            cv2.putText(
                canvas,
                text,
                (x + (cell - width) // 2, y + cell // 2 + 5),
                font,
                scale,
                ink,
                1,
                cv2.LINE_AA,
            )
    cv2.putText(
        canvas,
        "rows: true class, columns: predicted class",
        (6, 20),
        font,
        scale,
        (0, 0, 0),
        1,
        cv2.LINE_AA,
    )
    return torch.from_numpy(canvas).permute(2, 0, 1).contiguous()


def _tile(overlay: Tensor) -> Tensor:
    height, width = int(overlay.shape[1]), int(overlay.shape[2])
    scale = max(1.0, TILE / min(height, width))
    if scale == 1.0:
        return overlay
    return resize_image(overlay, (round(height * scale), round(width * scale)), "bilinear")


def class_sheets(
    folder: Path,
    model: Any,
    paths: Sequence[Path],
    labels: Tensor,
    probabilities: Tensor,
    names: Sequence[str],
    examples: int = 3,
) -> list[Path]:
    """Per class, a sheet of the validation images the model is most and least sure of (the
    probability of their true class): overlays of the true class's map, captioned.

    Args:
        model: the trained :class:`camtool.models.LoadedModel`.
        paths, labels: the validation images and their classes; ``probabilities``:
            ``Tensor[N,K]`` the model's class probabilities for them.

    Returns:
        The sheets written, ``folder/class_<index>_<slug>.png``.
    """
    from camtool.explaining import explain

    written = []
    for k, name in enumerate(names):
        members = [i for i in range(len(paths)) if int(labels[i]) == k]
        if not members:
            continue
        members.sort(key=lambda i: -float(probabilities[i, k]))
        best = members[:examples]
        worst = [i for i in members[::-1][:examples] if i not in best][::-1]
        chosen = best + worst
        explanations = explain([paths[i] for i in chosen], model, classes=[k])
        tiles, captions = [], []
        for i, ex in zip(chosen, explanations, strict=True):
            predicted = int(probabilities[i].argmax())
            kind = "best" if i in best else "worst"
            caption = f"{kind} p={float(probabilities[i, k]):.2f}"
            if predicted != k:
                caption += f" as {names[predicted]}"
            tiles.append(_tile(ex.overlay(which=0).tensor))
            captions.append(caption)
        sheet = labelled_grid(tiles, captions, columns=examples)
        path = folder / f"class_{k}_{slug(name)}.png"
        save_image(path, sheet)
        written.append(path)
    return written
