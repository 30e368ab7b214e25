"""Weights files: told by their first bytes (torch zip, legacy torch pickle, safetensors; text, an
empty file or a plain pickle are named, never unpickled), loaded with ``weights_only`` or
safetensors, checked against a card's sha256, and put into a network.
"""

from __future__ import annotations

import os
import pickle
import pickletools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, cast

import torch
from torch import Tensor, nn

from camtool.errors import ModelLoadError
from camtool.io.files import open_regular_file
from camtool.models.cards import ModelCard
from camtool.models.downloads import download_weights, file_sha256, weights_path, weights_status


def load_state_dict_file(
    path: str | os.PathLike[str], unsafe_load_pickle: bool = False
) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file, never running pickled code.

    Torch files are read with ``weights_only=True``; a checkpoint that wraps its state dict
    under ``state_dict`` or ``model`` is unwrapped. With ``unsafe_load_pickle`` a whole pickled
    model (``torch.save(model)``) is unpickled, which runs code the file names, and its state
    dict is returned.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(path, "no such weights file")
    if unsafe_load_pickle and path.suffix != ".safetensors" and pickled_model_classes(path):
        return {k: v for k, v in load_pickled_model(path).state_dict().items()}
    handle = open_regular_file(path, ModelLoadError, "weights file")  # never a FIFO or a device
    try:
        kind, problem = weights_file_kind(handle)
        if problem is None:
            loaded = _read_state(handle, path, kind == "safetensors")
    finally:
        handle.close()
    if problem is not None:
        raise ModelLoadError(path, problem)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ModelLoadError(path, "not a state dict (a mapping of names to tensors)")
    return {str(k).removeprefix("module."): v for k, v in loaded.items()}


def _read_state(handle: BinaryIO, path: Path, safetensors: bool) -> Any:
    """What a torch file (``weights_only=True``) or a safetensors file holds."""
    try:
        if safetensors:
            from safetensors.torch import load

            return load(handle.read())
        return torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelLoadError(path, _refusal(path)) from None
    except Exception as exc:  # torch and safetensors raise many types for damaged files
        raise ModelLoadError(
            path, f"not a readable weights file ({type(exc).__name__}: {exc})"
        ) from None


#: Opcodes that push a string (a module or a name for ``STACK_GLOBAL``).
_STRING_OPS = frozenset(
    {
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
        "UNICODE",
        "SHORT_BINSTRING",
        "BINSTRING",
        "STRING",
    }
)

#: How many opcodes :func:`pickle_globals` reads at most (a plain pickle of data can hold many).
_MAX_PICKLE_OPS = 1_000_000


class _BoundedReader:
    """A file's bytes for :mod:`pickletools`: reads never ask for more than the file holds (a
    length field of 2**62 must not allocate it) and lines stop at 1 MiB."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.size = os.fstat(handle.fileno()).st_size

    def read(self, n: int = -1) -> bytes:
        left = max(0, self.size - self.handle.tell())
        return self.handle.read(left if n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self.handle.readline(1 << 20)

    def tell(self) -> int:
        return self.handle.tell()


def pickle_globals(handle: BinaryIO) -> tuple[list[str], bool] | None:
    """The globals (``module.name``) one pickle names, read from its opcodes with
    :mod:`pickletools` (nothing is unpickled), and whether its end was reached; None when the
    bytes from the handle's position are not a pickle."""
    names: list[str] = []
    stack: list[object] = []  # what the opcodes pushed, as far as names go (None: anything else)
    memo: dict[int, object] = {}
    try:
        for count, (op, arg, _) in enumerate(
            pickletools.genops(cast(BinaryIO, _BoundedReader(handle)))
        ):
            if count >= _MAX_PICKLE_OPS:
                return names, False
            if op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                module, name = [None, None, *stack][-2:]
                del stack[-2:]
                names.append(f"{module}.{name}" if isinstance(module, str) else "(unknown)")
            elif op.name in _STRING_OPS:
                stack.append(arg)
            elif op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                memo[len(memo) if op.name == "MEMOIZE" else int(str(arg))] = (
                    stack[-1] if stack else None
                )
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(int(str(arg))))
            elif op.name == "STOP":
                return names, True
            elif op.name != "PROTO":
                stack.append(None)
    except (ValueError, EOFError):
        return None
    return None


def _is_text(head: bytes) -> bool:
    import codecs

    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\n\r\f\v" for c in text)


def weights_file_kind(handle: BinaryIO) -> tuple[str, str | None]:
    """What a weights file holds, told from its bytes (nothing is unpickled): ``("torch",
    None)`` (a zip or legacy torch file), ``("safetensors", None)``, or ``("other", problem)``
    with what the file is instead (empty, a plain Python pickle and the globals it names, text,
    other bytes). The handle is left at its start."""
    start = handle.tell()
    head = handle.read(1024)
    size = os.fstat(handle.fileno()).st_size
    try:
        if not head:
            return "other", "is empty, not a weights file"
        if head.startswith(b"PK\x03\x04"):
            return "torch", None
        header = int.from_bytes(head[:8], "little")
        if len(head) > 8 and head[8:9] == b"{" and 2 <= header <= size - 8:
            return "safetensors", None
        handle.seek(start)
        found = pickle_globals(handle)
        if found is not None and (found[1] or head[:1] == b"\x80"):
            names, _ = found
            handle.seek(start)
            if _starts_with_torch_magic(handle):
                return "torch", None  # torch's legacy format: pickles after a magic number
            if not names:
                return "other", (
                    "is a plain Python pickle holding no tensors, not a torch file or safetensors"
                )
            listed = ", ".join(sorted(set(names))[:5]) + (", ..." if len(set(names)) > 5 else "")
            return "other", (
                "is a plain Python pickle, not a torch file; camtool never unpickles it because "
                f"unpickling runs code (it names {listed})"
            )
        if _is_text(head):
            return "other", "is a text file, not a weights file (a torch file or safetensors)"
        return "other", (
            "is not a weights file: neither a torch file (zip or pickle) nor safetensors (it "
            f"starts with bytes {head[:8].hex(' ')})"
        )
    finally:
        handle.seek(start)


def _starts_with_torch_magic(handle: BinaryIO) -> bool:
    """True when the first pickle holds only torch's magic number (its legacy, non-zip format)."""
    ops = []
    try:
        for op, arg, _ in pickletools.genops(cast(BinaryIO, _BoundedReader(handle))):
            ops.append((op.name, arg))
            if op.name == "STOP" or len(ops) > 3:
                break
    except ValueError:
        return False
    values = [arg for name, arg in ops if name not in ("PROTO", "STOP")]
    return values == [torch.serialization.MAGIC_NUMBER]


#: Globals that hold data, not code, which training scripts often save beside the weights
#: (torchvision's reference scripts save their ``argparse.Namespace``; metrics as numpy scalars).
_DATA_GLOBALS = (
    "argparse.Namespace",
    "numpy.dtype",
    "numpy.dtypes.",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
)


def _unsafe_globals(path: Path) -> list[str]:
    """The globals a torch file names beyond plain tensors (torch's own disassembler reads them;
    nothing is unpickled); empty for a file that is not a torch pickle."""
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    try:
        return sorted(finder(path)) if finder is not None else []
    except Exception:  # not a torch zip file: torch's legacy format, or not a torch file at all
        return _legacy_unsafe_globals(path)


def _legacy_unsafe_globals(path: Path) -> list[str]:
    """The globals beyond torch's allowed ones that a legacy (non-zip) torch file names: its
    fourth pickle (after the magic number, the protocol and the system's details) holds the
    object; read with :mod:`pickletools`, nothing unpickled. Empty for other files."""
    from torch import _weights_only_unpickler as unpickler

    allowed: set[str] = set()
    for getter in ("_get_allowed_globals", "_get_user_allowed_globals"):
        allowed |= set(getattr(unpickler, getter, dict)())
    with open_regular_file(path, ModelLoadError, "weights file") as handle:
        if not _starts_with_torch_magic(handle):
            return []
        names: list[str] = []
        for _ in range(3):  # the protocol, the system's details, then the object
            found = pickle_globals(handle)
            if found is None or not found[1]:
                return []
            names = found[0]
    return sorted(set(names) - allowed)


def pickled_model_classes(path: str | os.PathLike[str]) -> list[str]:
    """The globals a torch file names (the model's own classes first, then torch's) when it is
    a whole pickled model (``torch.save(model)``, alone or inside a dict), else an empty list.

    Nothing is unpickled: the names are read from the file, and it is a model when one of them
    is a ``torch.nn`` module class or an already imported ``nn.Module`` subclass."""
    import sys

    names = _unsafe_globals(Path(path))

    def is_module_class(name: str) -> bool:
        if name.startswith("torch.nn.modules."):
            return True
        module_name, _, attribute = name.rpartition(".")
        value = getattr(sys.modules.get(module_name), attribute, None)
        return isinstance(value, type) and issubclass(value, nn.Module)

    if not any(is_module_class(n) for n in names):
        return []
    # the model's own classes (not torch's building blocks) name it best: list them first
    return sorted(names, key=lambda n: (n.startswith("torch."), n))


def load_pickled_model(path: str | os.PathLike[str]) -> nn.Module:
    """Unpickle a whole model saved with ``torch.save(model)`` (``weights_only=False``: this
    RUNS code the file names; only for files you trust). A dict holding the model under
    ``model``, ``module``, ``net`` or ``ema`` is unwrapped.

    Raises:
        ModelLoadError: the file cannot be unpickled here (its classes must be importable), or
            holds no ``nn.Module``.
    """
    path = Path(path)
    handle = open_regular_file(path, ModelLoadError, "model file")
    try:
        loaded: Any = torch.load(handle, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError, ImportError) as exc:
        raise ModelLoadError(
            path,
            f"cannot unpickle this model ({type(exc).__name__}: {exc}); the classes it was saved "
            "with must be importable: run camtool where their module is on PYTHONPATH",
        ) from None
    except Exception as exc:  # torch raises many types for damaged files
        raise ModelLoadError(
            path, f"not a readable pickled model ({type(exc).__name__}: {exc})"
        ) from None
    finally:
        handle.close()
    if isinstance(loaded, Mapping):
        loaded = next(
            (
                loaded[k]
                for k in ("model", "module", "net", "ema")
                if isinstance(loaded.get(k), nn.Module)
            ),
            loaded,
        )
    if not isinstance(loaded, nn.Module):
        raise ModelLoadError(path, f"holds a {type(loaded).__name__}, not a model (an nn.Module)")
    return loaded


def pickled_model_refusal(path: str | os.PathLike[str], classes: list[str]) -> str:
    """Why camtool does not load a whole pickled model by default, and how to convert it."""
    shown = ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")
    return (
        f"is a whole pickled model (torch.save(model); classes {shown}), not a state dict; "
        "camtool does not unpickle it by default because unpickling runs code the file names. "
        f"Convert it once, where its classes import: torch.save(torch.load({str(path)!r}, "
        "weights_only=False).state_dict(), 'weights.pth'), then use --model ARCHITECTURE "
        "--weights weights.pth; or, if you trust the file, load it as it is with "
        "--unsafe-load-pickle (this runs the file's code)"
    )


def _refusal(path: Path) -> str:
    """Why ``torch.load(weights_only=True)`` refused ``path``, naming the globals it holds (found by
    torch's own disassembler, not by reading its message) and what to do about them."""
    names = _unsafe_globals(path)
    if not names:
        return "not a readable weights file (damaged, or not a torch file)"
    classes = pickled_model_classes(path)
    if classes:
        return pickled_model_refusal(path, classes)
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
