"""Faithfulness and localization measures of maps (``camtool.metrics``).

Every measure is one function, batched, method-agnostic, and returns a frozen dataclass with
per-image values as tensors and a JSON-ready ``protocol`` recording every setting it used::

    >>> from camtool import metrics
    >>> model = camtool.load_model()
    >>> forward = metrics.pixel_forward(model)              # pixels [N,3,H,W] in [0,1] -> logits
    >>> source = metrics.method_maps(model, "cam")          # pixels, classes -> maps [N,H,W]
    >>> facts = source(images, classes)
    >>> metrics.deletion(forward, images, facts.maps, classes).auc

See docs/metrics.md for each measure's definition and protocol.
"""

from __future__ import annotations

from camtool.metrics.annotations import AnnotationError
from camtool.metrics.box_files import read_annotations
from camtool.metrics.evaluate import EvalReport, evaluate
from camtool.metrics.localization import (
    LocalizationResult,
    MaxBoxAccResult,
    PointingResult,
    box_iou,
    localization_error,
    maps_to_boxes,
    max_box_accuracy,
    pointing_game,
)
from camtool.metrics.maps import (
    MapSource,
    MapsWithFacts,
    MethodMaps,
    PixelForward,
    method_maps,
    pixel_forward,
)
from camtool.metrics.perturbation import (
    AverageDropResult,
    CompletenessResult,
    CurveResult,
    average_drop,
    blur,
    completeness,
    deletion,
    insertion,
    rise_kernel,
)
from camtool.metrics.road import ROAD_PERCENTAGES, RoadResult, impute, road

__all__ = [  # noqa: RUF022  (evaluate's names first, kept apart to ease merging)
    "AnnotationError",
    "EvalReport",
    "evaluate",
    "read_annotations",
    "ROAD_PERCENTAGES",
    "AverageDropResult",
    "CompletenessResult",
    "CurveResult",
    "LocalizationResult",
    "MapSource",
    "MapsWithFacts",
    "MaxBoxAccResult",
    "MethodMaps",
    "PixelForward",
    "PointingResult",
    "RoadResult",
    "average_drop",
    "blur",
    "box_iou",
    "completeness",
    "deletion",
    "impute",
    "insertion",
    "localization_error",
    "maps_to_boxes",
    "max_box_accuracy",
    "method_maps",
    "pixel_forward",
    "pointing_game",
    "rise_kernel",
    "road",
]
