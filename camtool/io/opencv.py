"""OpenCV, loaded the way camtool needs it: with its own pixel limit far above camtool's (so that
camtool's limit, checked from each file's header before decoding, is the only one that decides)
and its log lines off (a truncated BMP or a bad TIFF would break the one-line error contract).
Every module that uses OpenCV imports ``cv2`` from here."""

from __future__ import annotations

import os

#: OpenCV's own pixel limit, set far above any ``max_pixels`` so that camtool's limit is the only
#: one that decides: camtool reads every format's size from its header before decoding (see
#: :mod:`camtool.io.formats`). OpenCV reads this variable once, when it is loaded.
OPENCV_PIXEL_CEILING = 1 << 40
os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(OPENCV_PIXEL_CEILING)

import cv2  # noqa: E402

cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

__all__ = ["OPENCV_PIXEL_CEILING", "cv2"]
