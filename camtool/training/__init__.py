"""Your own classes: ``camtool.fit(data, output)`` trains a head on a pretrained backbone's
features and writes a model folder that ``camtool explain -m FOLDER/card.toml`` loads.

Rooms: :mod:`~camtool.training.data` (class folders, CSVs, the validation split, bad data),
:mod:`~camtool.training.features` (backbone features and their safetensors cache),
:mod:`~camtool.training.train` (GAP and Flatten heads, fine-tuning, best checkpoint),
:mod:`~camtool.training.report` (the model folder, card, confusion matrix, CAM sheets),
:mod:`~camtool.training.fit` (:func:`fit` and :class:`FitReport`).
"""

from camtool.training.data import Dataset, DatasetError, FitWarning, Sample, read_dataset
from camtool.training.fit import FitReport, ValidationResult, fit
from camtool.training.train import HeadResult

__all__ = [
    "Dataset",
    "DatasetError",
    "FitReport",
    "FitWarning",
    "HeadResult",
    "Sample",
    "ValidationResult",
    "fit",
    "read_dataset",
]
