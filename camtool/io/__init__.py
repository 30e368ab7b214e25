"""Files, images and videos: the only package where OpenCV's BGR, HWC arrays exist.

- :mod:`camtool.io.files`: safe reads (regular files, size limits) and atomic writes;
- :mod:`camtool.io.images`: image files, tensors, arrays and PIL images <-> ``Tensor[3,H,W]``
  uint8 RGB, and the image sources :func:`camtool.explain` takes;
- :mod:`camtool.io.videos`: frames in and out;
- :mod:`camtool.io.formats`: image formats told by their signatures, sizes read from headers;
- :mod:`camtool.io.opencv`: OpenCV, loaded with camtool's settings.

Every public name of those modules is importable from here (``from camtool.io import
load_image``), imported on first use.
"""

from __future__ import annotations

from camtool.lazy import lazy_exports

_EXPORTS = {
    "MAX_TEXT_BYTES": "camtool.io.files",
    "read_file": "camtool.io.files",
    "open_regular_file": "camtool.io.files",
    "not_regular": "camtool.io.files",
    "read_text_file": "camtool.io.files",
    "write_bytes_atomic": "camtool.io.files",
    "TEMP_PREFIX": "camtool.io.files",
    "TEMP_SUFFIX": "camtool.io.files",
    "open_atomic": "camtool.io.files",
    "write_part": "camtool.io.files",
    "remove_quietly": "camtool.io.files",
    "MAX_PIXELS": "camtool.io.images",
    "max_pixels_limit": "camtool.io.images",
    "IMAGE_BYTES_PER_PIXEL": "camtool.io.images",
    "IMAGE_METADATA_BYTES": "camtool.io.images",
    "image_byte_limit": "camtool.io.images",
    "readable_formats": "camtool.io.images",
    "image_suffixes": "camtool.io.images",
    "ImageSource": "camtool.io.images",
    "source_name": "camtool.io.images",
    "load_image": "camtool.io.images",
    "image_to_bgr_array": "camtool.io.images",
    "encode_image": "camtool.io.images",
    "save_image": "camtool.io.images",
    "Images": "camtool.io.images",
    "NamedImage": "camtool.io.images",
    "is_batch": "camtool.io.images",
    "gather_images": "camtool.io.images",
    "preprocessed_batch": "camtool.io.images",
    "VIDEO_SUFFIXES": "camtool.io.videos",
    "VideoInfo": "camtool.io.videos",
    "open_video": "camtool.io.videos",
    "video_info": "camtool.io.videos",
    "remove_orphaned_videos": "camtool.io.videos",
    "VideoWriter": "camtool.io.videos",
    "Size": "camtool.io.formats",
    "ImageFormat": "camtool.io.formats",
    "FORMATS": "camtool.io.formats",
    "identify": "camtool.io.formats",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
__all__ = sorted(_EXPORTS)
