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
    with _capture(module, output=False) as captured:
        yield captured


@contextmanager
def capture_output(module: nn.Module) -> Iterator[Captured]:
    """Capture the output of ``module`` on every forward pass."""
    with _capture(module, output=True) as captured:
        yield captured


@contextmanager
def _capture(module: nn.Module, output: bool) -> Iterator[Captured]:
    captured = Captured()

    def record(tensor: Any) -> None:
        captured.tensor = tensor
        captured.calls += 1

    if output:
        handle = module.register_forward_hook(lambda _m, _args, result: record(result))
    else:
        handle = module.register_forward_pre_hook(lambda _m, args: record(args[0]))
    try:
        yield captured
    finally:
        handle.remove()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule of ``model`` in eval mode; restore each one's ``training`` flag after
    (a model already all in eval mode is left alone: setting the flags costs milliseconds)."""
    flags = [(m, m.training) for m in model.modules()]
    if not any(training for _, training in flags):
        yield model
        return
    try:
        model.eval()
        yield model
    finally:
        for module, training in flags:
            module.training = training
