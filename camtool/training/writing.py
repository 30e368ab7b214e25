"""Writing a trained model's folder: the weights (safetensors), the labels, the card that
``camtool explain -m FOLDER/card.toml`` loads, and the report (metrics, validation CSV, pictures).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from camtool.io.files import write_bytes_atomic
from camtool.io.images import save_image
from camtool.models.efficientnet_lite import EfficientNetLite
from camtool.models.loading import LoadedModel
from camtool.training.data import (
    Dataset,
)
from camtool.training.report import (
    card_text,
    class_sheets,
    confusion_matrix,
    confusion_picture,
    preprocessing_table,
    save_weights,
)
from camtool.training.train import (
    HeadKind,
    HeadResult,
)

#: What a fit says about the heads it trained.
EXACTNESS = (
    "Only the GAP head gives exact CAMs: mean(CAM) + bias = logit, with the same class weights "
    "at every position. A Flatten head has weights per position; camtool explains it with the "
    "integrated-head decomposition (exact up to a measured quadrature residual)."
)


@dataclass(frozen=True)
class ValidationResult:
    """One validation image: its class, the predicted class and the predicted probability."""

    path: str
    label: int
    predicted: int
    probability: float


def write_model(
    folder: Path,
    model: LoadedModel,
    head: HeadKind,
    grid: int,
    training: dict[str, Any],
    results: Sequence[HeadResult],
) -> None:
    from camtool.models.downloads import file_sha256

    save_weights(folder / "weights.safetensors", model.module)
    write_bytes_atomic(folder / "labels.txt", ("\n".join(model.labels) + "\n").encode())
    assert isinstance(model.module, EfficientNetLite)
    architecture = f"camtool:{model.module.variant}"
    saved = next(r for r in results if r.head == head)
    card = {
        "name": model.name,
        "description": f"{head.upper()} head on {training['backbone']}, {len(model.labels)} "
        f"classes, trained by camtool fit (val accuracy {saved.val_accuracy:.3f})",
        "architecture": architecture,
        "labels": "labels.txt",
        "architecture_options": {"head": "flatten", "grid": grid} if head == "flatten" else None,
        "preprocessing": prep_table(model),
        "weights": {
            "file": "weights.safetensors",
            "sha256": file_sha256(folder / "weights.safetensors"),
        },
        "training": {
            **training,
            "metrics": {
                f"{r.head}_{k}": v for r in results for k, v in r.as_dict().items() if k != "head"
            },
        },
    }
    write_bytes_atomic(
        folder / "card.toml", card_text({k: v for k, v in card.items() if v is not None}).encode()
    )


def prep_table(model: LoadedModel) -> dict[str, Any]:
    return preprocessing_table(model.preprocessing)


def write_report(
    folder: Path,
    model: LoadedModel,
    val_set: Dataset,
    probabilities: Tensor,
    results: Sequence[HeadResult],
    skipped: Sequence[tuple[str, str]],
    validation: Sequence[ValidationResult],
) -> None:
    labels = torch.tensor([s.label for s in val_set.samples], dtype=torch.int64)
    matrix = confusion_matrix(labels, probabilities.argmax(1), len(model.labels))
    save_image(folder / "confusion.png", confusion_picture(matrix, model.labels))
    class_sheets(
        folder, model, [s.path for s in val_set.samples], labels, probabilities, model.labels
    )
    metrics = {
        "heads": [r.as_dict() for r in results],
        "confusion_matrix": matrix.tolist(),
        "labels": list(model.labels),
        "skipped": [{"input": f, "error": e} for f, e in skipped],
        "exactness": EXACTNESS,
    }
    write_bytes_atomic(folder / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["file", "label", "predicted", "probability"])
    for v in validation:
        writer.writerow(
            [v.path, model.labels[v.label], model.labels[v.predicted], f"{v.probability:.6f}"]
        )
    write_bytes_atomic(folder / "validation.csv", table.getvalue().encode())
