"""Hook and model-state lifetimes, always as context managers that undo themselves.

Nothing here changes a caller's model for longer than a ``with`` block: hooks are removed and
``training`` flags restored in ``finally``, also when an exception passes through.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

#: One lock per network (held weakly: an entry goes when its network goes).
_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def network_lock(module: nn.Module) -> threading.RLock:
    """The lock that serializes camtool's work on ``module``: binding a method (its probe
    passes), explaining a batch, loading it into the per-module cache.

    Hooks are per-network state: two threads running hooked passes on one network at once see
    each other's calls (a layer "ran 3 times", a refusal caused by the race). Every thread that
    binds or explains through camtool holds this lock while it does, so concurrent calls on one
    network run one after the other. Re-entrant: a bind may bind another method inside.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.get(module)
        if lock is None:
            lock = _LOCKS[module] = threading.RLock()
        return lock


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
