"""Hook and model-state lifetimes, always as context managers that undo themselves.

Nothing here changes a caller's model for longer than a ``with`` block: hooks are removed and
``training`` flags restored in ``finally``, also when an exception passes through.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn


@dataclass
class Captured:
    """What a capture hook saw during the last forward pass: ``tensor`` is ``Tensor[N,C,h,w]``."""

    tensor: Tensor | None = None
    calls: int = field(default=0)


@contextmanager
def capture_input(module: nn.Module) -> Iterator[Captured]:
    """Capture the first positional input of ``module`` on every forward pass.

    Used on a global-average-pooling module: its input is exactly the tensor that gets averaged.
    """
    captured = Captured()

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        captured.tensor = args[0]
        captured.calls += 1

    handle = module.register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@contextmanager
def capture_output(module: nn.Module) -> Iterator[Captured]:
    """Capture the output of ``module`` on every forward pass."""
    captured = Captured()

    def hook(_module: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
        captured.tensor = output
        captured.calls += 1

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule of ``model`` in eval mode; restore each one's ``training`` flag after."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for module, training in flags:
            module.training = training
