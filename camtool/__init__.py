"""camtool: see where an image classifier looks; exact Class Activation Maps where the maths allows.

    >>> import camtool
    >>> ex = camtool.explain("cat.jpg")      # predictions, maps, heatmaps, boxes
    >>> ex.save("cat_cam.png")                # the overlay of the top class

The top level holds the few names a notebook needs; lower-level ones live in namespaces:
:mod:`camtool.methods` (the method seam, CAM and its head discovery), :mod:`camtool.metrics`
(faithfulness and localization measures), :mod:`camtool.models`
(cards, checkpoints), :mod:`camtool.export` (its inputs, stages, manifest and runner),
:mod:`camtool.render`, :mod:`camtool.io`. Names are imported lazily, so ``import camtool`` (and
``camtool --help``) stays fast; torch is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from camtool._version import __version__

_EXPORTS = {
    "explain": "camtool.explaining",
    "Explainer": "camtool.held",
    "Explanation": "camtool.explanation",
    "ClassScore": "camtool.explanation",
    "comparison_sheet": "camtool.sheet",
    "Picture": "camtool.picture",
    "export": "camtool.export",
    "fit": "camtool.training",
    "FitReport": "camtool.training.fit",
    "explain_iter": "camtool.export.runner",
    "ExportOptions": "camtool.export.stages",
    "ExportReport": "camtool.export.runner",
    "ExportFailure": "camtool.inputs",
    "ExportInterrupted": "camtool.export.runner",
    "explain_video": "camtool.video",
    "VideoReport": "camtool.video",
    "write_gallery": "camtool.gallery",
    "evaluate": "camtool.metrics.evaluate",
    "EvalReport": "camtool.metrics.evaluate",
    "class_names": "camtool.binding",
    "ClassName": "camtool.labels",
    "resolve_class": "camtool.labels",
    "load_model": "camtool.models.loading",
    "LoadedModel": "camtool.models.loading",
    "Preprocessing": "camtool.image",
    "Region": "camtool.image",
    "load_image": "camtool.io.images",
    "save_image": "camtool.io.images",
    "normalize_cams": "camtool.render",
    "upsample_cams": "camtool.render",
    "colorize": "camtool.render",
    "overlay": "camtool.render",
    "cam_to_box": "camtool.boxes",
    "draw_box": "camtool.boxes",
    "labelled_grid": "camtool.render",
    "COLORMAPS": "camtool.render",
    "CamtoolError": "camtool.errors",
    "ImageReadError": "camtool.errors",
    "ImageTooLargeError": "camtool.errors",
    "OutputWriteError": "camtool.errors",
    "ModelLoadError": "camtool.errors",
    "UnknownModelError": "camtool.errors",
    "WeightsHashError": "camtool.errors",
    "UnsupportedModelError": "camtool.errors",
    "ClassSelectionError": "camtool.errors",
    "InvalidArgumentError": "camtool.errors",
}
_NAMESPACES = ("methods", "metrics")

__all__ = [
    "COLORMAPS",
    "CamtoolError",
    "ClassName",
    "ClassScore",
    "ClassSelectionError",
    "EvalReport",
    "Explainer",
    "Explanation",
    "ExportFailure",
    "ExportInterrupted",
    "ExportOptions",
    "ExportReport",
    "FitReport",
    "ImageReadError",
    "ImageTooLargeError",
    "InvalidArgumentError",
    "LoadedModel",
    "ModelLoadError",
    "OutputWriteError",
    "Picture",
    "Preprocessing",
    "Region",
    "UnknownModelError",
    "UnsupportedModelError",
    "VideoReport",
    "WeightsHashError",
    "__version__",
    "cam_to_box",
    "class_names",
    "colorize",
    "comparison_sheet",
    "draw_box",
    "evaluate",
    "explain",
    "explain_iter",
    "explain_video",
    "export",
    "fit",
    "labelled_grid",
    "load_image",
    "load_model",
    "methods",
    "metrics",
    "normalize_cams",
    "overlay",
    "resolve_class",
    "save_image",
    "upsample_cams",
    "write_gallery",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _NAMESPACES:
        value = importlib.import_module(f"camtool.{name}")
    else:
        raise AttributeError(f"module 'camtool' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from camtool import methods, metrics
    from camtool.binding import class_names
    from camtool.boxes import (
        cam_to_box,
        draw_box,
    )
    from camtool.errors import (
        CamtoolError,
        ClassSelectionError,
        ImageReadError,
        ImageTooLargeError,
        InvalidArgumentError,
        ModelLoadError,
        OutputWriteError,
        UnknownModelError,
        UnsupportedModelError,
        WeightsHashError,
    )
    from camtool.explaining import explain
    from camtool.explanation import ClassScore, Explanation
    from camtool.export import (
        ExportFailure,
        ExportInterrupted,
        ExportOptions,
        ExportReport,
        explain_iter,
        export,
    )
    from camtool.gallery import (
        write_gallery,
    )
    from camtool.held import Explainer
    from camtool.image import (
        Preprocessing,
        Region,
    )
    from camtool.io.images import load_image, save_image
    from camtool.labels import ClassName, resolve_class
    from camtool.metrics.evaluate import (
        EvalReport,
        evaluate,
    )
    from camtool.models.loading import LoadedModel, load_model
    from camtool.picture import (
        Picture,
    )
    from camtool.render import (
        COLORMAPS,
        colorize,
        labelled_grid,
        normalize_cams,
        overlay,
        upsample_cams,
    )
    from camtool.sheet import comparison_sheet
    from camtool.training import (
        FitReport,
        fit,
    )
    from camtool.video import (
        VideoReport,
        explain_video,
    )
