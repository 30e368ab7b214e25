"""Training for ``camtool fit``: a linear head on cached features (GAP or Flatten + Dense), or
the last stage(s) of the backbone together with the head (``finetune``).

Each epoch ends with an evaluation on the validation set; the best epoch (highest validation
accuracy, then lowest validation loss) is kept, and Ctrl-C ends training early with that
checkpoint instead of losing it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camtool.models.efficientnet_lite import EfficientNetLite
from camtool.progress import ProgressBar

HeadKind = Literal["gap", "flatten"]

#: Dropout on the head's input while training, as the EfficientNet-Lite head has it.
DROPOUT = 0.2


@dataclass(frozen=True)
class HeadResult:
    """How one head trained: its parameters, the best epoch's metrics, the time it took.

    Accuracies are fractions in [0, 1], losses mean cross-entropies (natural log); training
    metrics are measured on the training images without flips or dropout.
    """

    head: HeadKind
    parameters: int
    train_accuracy: float
    train_loss: float
    val_accuracy: float
    val_loss: float
    best_epoch: int
    epochs: int
    seconds: float
    interrupted: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser settings shared by every head: AdamW, mini-batches, a seed."""

    epochs: int = 30
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    seed: int = 0


def head_module(kind: HeadKind, channels: int, classes: int, grid: int) -> nn.Linear:
    """The classifier a head trains: ``Linear(C, K)`` for GAP, ``Linear(C*g*g, K)`` for Flatten."""
    inputs = channels if kind == "gap" else channels * grid * grid
    return nn.Linear(inputs, classes)


def evaluate(logits: Tensor, labels: Tensor) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``Tensor[N,K]`` logits against ``Tensor[N]`` labels."""
    if not len(labels):
        return float("nan"), float("nan")
    loss = float(F.cross_entropy(logits.float(), labels))
    return float((logits.argmax(1) == labels).float().mean()), loss


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch's CPU ops on one thread inside the block (restored after). A linear head's ops
    are too small to share: on 2 busy cores two threads made an epoch 15x slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _chunked(run: Callable[[Tensor], Tensor], inputs: Tensor, size: int = 1024) -> Tensor:
    with torch.no_grad():
        return torch.cat([run(inputs[i : i + size].float()) for i in range(0, len(inputs), size)])


@dataclass
class _EpochRun:
    """What :func:`_run_epochs` kept: the best epoch's weights and how the run went."""

    best_state: dict[str, Tensor]
    best_epoch: int
    done: int
    seconds: float
    interrupted: bool


def _run_epochs(
    module: nn.Module,
    epochs: int,
    one_epoch: Callable[[], None],
    validate: Callable[[], tuple[float, float]],
    bar_title: str | None,
) -> _EpochRun:
    """Run ``one_epoch`` up to ``epochs`` times, keeping ``module``'s weights of the epoch with the
    best validation (accuracy, then lower loss). Ctrl-C after the first epoch ends the run early
    (``interrupted``); before it, it propagates."""
    best: tuple[float, float] | None = None
    best_state: dict[str, Tensor] = {}
    best_epoch, done, interrupted = 0, 0, False
    started = time.perf_counter()
    bar = ProgressBar(bar_title, epochs, "epoch") if bar_title is not None else None
    try:
        for epoch in range(1, epochs + 1):
            one_epoch()
            accuracy, val_loss = validate()
            done = epoch
            if best is None or (accuracy, -val_loss) > best:
                best, best_epoch = (accuracy, -val_loss), epoch
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            if bar is not None:
                bar.advance()
    except KeyboardInterrupt:
        if best is None:
            raise
        interrupted = True
    finally:
        if bar is not None:
            bar.stop()
    return _EpochRun(best_state, best_epoch, done, time.perf_counter() - started, interrupted)


@one_thread()  # see one_thread
def train_head(
    kind: HeadKind,
    inputs: Tensor,
    labels: Tensor,
    val_inputs: Tensor,
    val_labels: Tensor,
    classes: int,
    settings: TrainSettings,
    augmented: Tensor | None = None,
    progress: bool = False,
) -> tuple[nn.Linear, HeadResult]:
    """Train a linear classifier on features.

    Args:
        kind: ``gap`` (inputs ``Tensor[N,C]``) or ``flatten`` (inputs ``Tensor[N,C*g*g]``).
        inputs, labels: training features (float32 or float16) and ``Tensor[N]`` int64 labels.
        val_inputs, val_labels: the validation set's.
        augmented: the features of the flipped training images (same labels), or None.

    Returns:
        The classifier at its best epoch, and its :class:`HeadResult`.
    """
    generator = torch.Generator().manual_seed(settings.seed)
    linear = nn.Linear(inputs.shape[1], classes)
    with torch.no_grad():
        linear.weight.normal_(0, 0.01, generator=generator)
        linear.bias.zero_()
    every = inputs if augmented is None else torch.cat([inputs, augmented])
    every_labels = labels if augmented is None else torch.cat([labels, labels])
    optimiser = torch.optim.AdamW(
        linear.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )

    def one_epoch() -> None:
        linear.train()
        order = torch.randperm(len(every), generator=generator)
        for start in range(0, len(order), settings.batch_size):
            rows = order[start : start + settings.batch_size]
            x = F.dropout(every[rows].float(), DROPOUT, training=True)
            loss = F.cross_entropy(linear(x), every_labels[rows])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        linear.eval()

    run = _run_epochs(
        linear, settings.epochs, one_epoch,
        lambda: evaluate(_chunked(linear, val_inputs), val_labels),
        f"{kind} head" if progress else None,
    )  # fmt: skip
    linear.load_state_dict(run.best_state)
    linear.eval()
    train_accuracy, train_loss = evaluate(_chunked(linear, inputs), labels)
    val_accuracy, val_loss = evaluate(_chunked(linear, val_inputs), val_labels)
    result = HeadResult(
        kind, sum(p.numel() for p in linear.parameters()), train_accuracy, train_loss,
        val_accuracy, val_loss, run.best_epoch, run.done, run.seconds, run.interrupted,
    )  # fmt: skip
    return linear, result


def network_with_head(
    backbone: EfficientNetLite, kind: HeadKind, grid: int, classifier: nn.Linear
) -> EfficientNetLite:
    """A copy of ``backbone`` whose head is ``kind`` with ``classifier``'s weights, in eval mode."""
    network = copy.deepcopy(backbone)
    network._avg_pooling = nn.AdaptiveAvgPool2d(1 if kind == "gap" else grid)
    network._fc = copy.deepcopy(classifier)
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


# --------------------------------------------------------------------------------------------
# Fine-tuning


def stage_starts(network: EfficientNetLite) -> list[int]:
    """Index of the first block of each stage (a stage: consecutive blocks of equal width)."""
    widths = [block._bn2.num_features for block in network._blocks]  # type: ignore[union-attr]
    return [i for i, w in enumerate(widths) if i == 0 or w != widths[i - 1]]


def finetune(
    backbone: EfficientNetLite,
    kind: HeadKind,
    grid: int,
    stages: int,
    batches: Sequence[Tensor],
    labels: Tensor,
    val_batches: Sequence[Tensor],
    val_labels: Tensor,
    classes: int,
    settings: TrainSettings,
    device: torch.device,
    flips: bool = True,
    progress: bool = False,
) -> tuple[EfficientNetLite, HeadResult, Tensor]:
    """Train the last ``stages`` stages of the backbone, its last 1x1 convolution and a new head.

    The frozen part runs once per image (and once per flipped image); only the unfrozen part
    runs per epoch. Batch-norm statistics stay as pretrained (small data would spoil them).

    Args:
        batches: preprocessed training images, ``Tensor[n,3,h,w]`` float32 per batch (each of
            one size); ``labels``: ``Tensor[N]`` in the same order. ``val_batches``, ``val_labels``:
            the validation set's.

    Returns:
        The trained network (eval mode), its :class:`HeadResult`, and the validation logits
        ``Tensor[N_val,K]`` of the best epoch.
    """
    network = network_with_head(backbone, kind, grid, head_module(kind, 1280, classes, grid))
    generator = torch.Generator().manual_seed(settings.seed)
    with torch.no_grad():
        network._fc.weight.normal_(0, 0.01, generator=generator)
        network._fc.bias.zero_()
    cut = stage_starts(network)[-max(1, stages)]
    network.to(device)

    def trunk(x: Tensor) -> Tensor:
        x = F.relu6(network._bn0(network._conv_stem(x)))
        for block in network._blocks[:cut]:
            x = block(x)
        return x

    def tail(x: Tensor) -> Tensor:
        for block in network._blocks[cut:]:
            x = block(x)
        features = F.relu6(network._bn1(network._conv_head(x)))
        return network.forward_head(features)

    with torch.inference_mode():
        train_in = [trunk(b.to(device)) for b in batches]
        train_in += [trunk(b.flip(-1).to(device)) for b in batches] if flips else []
        val_in = [trunk(b.to(device)) for b in val_batches]
    train_in = [t.clone() for t in train_in]
    val_in = [t.clone() for t in val_in]
    sizes = [len(b) for b in batches]
    split_labels = list(labels.split(sizes))
    train_labels = [t.to(device) for t in split_labels * (2 if flips else 1)]
    trainable = [*network._blocks[cut:].parameters(), *network._conv_head.parameters(),
                 *network._bn1.parameters(), *network._fc.parameters()]  # fmt: skip
    for parameter in trainable:
        parameter.requires_grad_(True)
    optimiser = torch.optim.AdamW(
        trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay
    )

    def logits_of(inputs: list[Tensor]) -> Tensor:
        network.eval()
        with torch.no_grad():
            return torch.cat([tail(x) for x in inputs]).float().cpu()

    def one_epoch() -> None:
        network.eval()
        network._dropout.train()  # dropout on, batch-norm statistics frozen
        for i in torch.randperm(len(train_in), generator=generator).tolist():
            loss = F.cross_entropy(tail(train_in[i]), train_labels[i])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()

    run = _run_epochs(
        network, settings.epochs, one_epoch,
        lambda: evaluate(logits_of(val_in), val_labels),
        "fine-tuning" if progress else None,
    )  # fmt: skip
    network.load_state_dict(run.best_state)
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    network.eval()
    train_accuracy, train_loss = evaluate(logits_of(train_in[: len(batches)]), labels)
    val_logits = logits_of(val_in)
    val_accuracy, val_loss = evaluate(val_logits, val_labels)
    result = HeadResult(
        kind, sum(p.numel() for p in trainable), train_accuracy, train_loss, val_accuracy,
        val_loss, run.best_epoch, run.done, run.seconds, run.interrupted,
    )  # fmt: skip
    return network, result, val_logits
