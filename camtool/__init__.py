"""camtool: exact Class Activation Maps for networks with a global-average-pooling head.

    >>> import camtool
    >>> ex = camtool.explain("cat.jpg")      # predictions, CAMs, heatmaps, boxes
    >>> ex.save("cat_cam.png")                # the overlay of the top class

The public names below are imported lazily, so ``import camtool`` (and ``camtool --help``) stays
fast; torch is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "explain": "camtool.explanation",
    "write_gallery": "camtool.gallery",
    "explain_video": "camtool.video",
    "explain_frames": "camtool.video",
    "VideoReport": "camtool.video",
    "comparison_sheet": "camtool.explanation",
    "Picture": "camtool.explanation",
    "labelled_grid": "camtool.render",
    "Explanation": "camtool.explanation",
    "ClassScore": "camtool.explanation",
    "resolve_class": "camtool.explanation",
    "get_model": "camtool.explanation",
    "export": "camtool.batch",
    "explain_iter": "camtool.batch",
    "collect_inputs": "camtool.batch",
    "ExportOptions": "camtool.batch",
    "ExportReport": "camtool.batch",
    "ExportFailure": "camtool.batch",
    "ExportInterrupted": "camtool.batch",
    "compute": "camtool.cam",
    "compute_cams": "camtool.cam",
    "identity_residual": "camtool.heads",
    "CamBatch": "camtool.cam",
    "load_model": "camtool.models",
    "find_cam_head": "camtool.heads",
    "list_cards": "camtool.models",
    "weights_status": "camtool.models",
    "LoadedModel": "camtool.models",
    "ModelCard": "camtool.models",
    "CamHead": "camtool.heads",
    "Preprocessing": "camtool.models",
    "Region": "camtool.models",
    "load_image": "camtool.io",
    "save_image": "camtool.io",
    "normalize_cams": "camtool.render",
    "upsample_cams": "camtool.render",
    "colorize": "camtool.render",
    "overlay": "camtool.render",
    "cam_to_box": "camtool.render",
    "draw_box": "camtool.render",
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

__all__ = [
    "COLORMAPS",
    "CamBatch",
    "CamHead",
    "CamtoolError",
    "ClassScore",
    "ClassSelectionError",
    "Explanation",
    "ExportFailure",
    "ExportInterrupted",
    "ExportOptions",
    "ExportReport",
    "ImageReadError",
    "ImageTooLargeError",
    "InvalidArgumentError",
    "LoadedModel",
    "ModelCard",
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
    "collect_inputs",
    "colorize",
    "comparison_sheet",
    "compute",
    "compute_cams",
    "draw_box",
    "explain",
    "explain_frames",
    "explain_iter",
    "explain_video",
    "export",
    "find_cam_head",
    "get_model",
    "identity_residual",
    "labelled_grid",
    "list_cards",
    "load_image",
    "load_model",
    "normalize_cams",
    "overlay",
    "resolve_class",
    "save_image",
    "upsample_cams",
    "weights_status",
    "write_gallery",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'camtool' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from camtool.batch import (
        ExportFailure,
        ExportInterrupted,
        ExportOptions,
        ExportReport,
        collect_inputs,
        explain_iter,
        export,
    )
    from camtool.cam import CamBatch, compute, compute_cams
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
    from camtool.explanation import (
        ClassScore,
        Explanation,
        Picture,
        comparison_sheet,
        explain,
        get_model,
        resolve_class,
    )
    from camtool.gallery import write_gallery
    from camtool.heads import CamHead, find_cam_head, identity_residual
    from camtool.io import load_image, save_image
    from camtool.models import (
        LoadedModel,
        ModelCard,
        Preprocessing,
        Region,
        list_cards,
        load_model,
        weights_status,
    )
    from camtool.render import (
        COLORMAPS,
        cam_to_box,
        colorize,
        draw_box,
        labelled_grid,
        normalize_cams,
        overlay,
        upsample_cams,
    )
    from camtool.video import VideoReport, explain_frames, explain_video
