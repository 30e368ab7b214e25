"""Videos: frames in (``Tensor[3,H,W]`` uint8 RGB), frames out, written under a temporary name."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from camtool.errors import ImageReadError, OutputWriteError
from camtool.io.files import TEMP_PREFIX, TEMP_SUFFIX, not_regular, remove_quietly
from camtool.io.images import image_to_bgr_array
from camtool.io.opencv import cv2

#: File name suffixes read as videos.
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
)


@dataclass(frozen=True)
class VideoInfo:
    """A video's frame rate, frame size and (as the container reports it) frame count."""

    fps: float
    width: int
    height: int
    frames: int


def open_video(path: str | os.PathLike[str]) -> tuple[VideoInfo, Iterator[Tensor]]:
    """Open a video: its :class:`VideoInfo` and an iterator of ``Tensor[3,H,W]`` uint8 RGB frames.

    Raises:
        ImageReadError: missing, unreadable or without a single decodable frame.
    """
    path = Path(path)
    capture = _open_capture(path)
    ok, first = capture.read() if capture.isOpened() else (False, None)
    if not ok or first is None:
        capture.release()
        raise ImageReadError(path, "not a video OpenCV can read (or no frame could be decoded)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    info = VideoInfo(
        float(fps), first.shape[1], first.shape[0], int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    )

    def frames() -> Iterator[Tensor]:
        try:
            frame = first
            while frame is not None:
                yield (
                    torch.from_numpy(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                    .permute(2, 0, 1)
                    .contiguous()
                )
                ok, frame = capture.read()
                if not ok:
                    break
        finally:
            capture.release()

    return info, frames()


def _open_capture(path: Path) -> Any:
    """A ``cv2.VideoCapture`` of a regular file, checked as :func:`read_file` checks files: the
    file is opened without blocking and its descriptor checked, and (where ``/proc`` exists)
    OpenCV opens that same descriptor, so no FIFO or device can be swapped in meanwhile."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        problem = not_regular(os.fstat(fd).st_mode, "video file")
        if problem:
            raise ImageReadError(path, problem)
        same = f"/proc/self/fd/{fd}"
        return cv2.VideoCapture(same if os.path.exists(same) else str(path))
    finally:
        os.close(fd)


def video_info(path: str | os.PathLike[str]) -> VideoInfo:
    """A video's :class:`VideoInfo`, from its first frame (see :func:`open_video` for errors)."""
    info, frames = open_video(path)
    frames.close()  # type: ignore[attr-defined]
    return info


_VIDEO_PART = re.compile(re.escape(TEMP_PREFIX) + r"(\d+)" + re.escape(TEMP_SUFFIX) + r"\.\w+")


def remove_orphaned_videos(folder: Path) -> list[Path]:
    """Remove the unfinished videos (``.camtool-<pid>.part.<ext>``) in ``folder`` whose writing
    process no longer exists (a run killed with SIGKILL cannot remove its own); return them.
    A live process's file, and any other file, is left alone."""
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _VIDEO_PART.fullmatch(name)
        if match is None or _process_exists(int(match.group(1))):
            continue
        remove_quietly(str(folder / name))
        removed.append(folder / name)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or a pid we cannot ask about): keep its file
    return True


class VideoWriter:
    """Write ``Tensor[3,H,W]`` uint8 RGB frames to a video (MPEG-4 in .mp4/.mov/.m4v, which needs
    even frame sizes; Motion-JPEG in .avi, any size), under a temporary name renamed on
    :meth:`close`; :meth:`discard` removes it."""

    def __init__(self, path: str | os.PathLike[str], fps: float, width: int, height: int) -> None:
        self.path = Path(path)
        # A fixed short temporary name (a long final name must still fit) that a killed run's
        # clean-up recognises; the suffix tells OpenCV the container.
        self.partial = self.path.with_name(
            f"{TEMP_PREFIX}{os.getpid()}{TEMP_SUFFIX}{self.path.suffix}"
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_orphaned_videos(self.path.parent)
        size = (width, height)
        if self.path.suffix.lower() == ".avi":  # OpenCV's own MJPEG writer keeps odd frame sizes
            fourcc = cv2.VideoWriter.fourcc(*"MJPG")
            self.writer = cv2.VideoWriter(
                str(self.partial), cv2.CAP_OPENCV_MJPEG, fourcc, fps, size
            )
        else:
            self.writer = cv2.VideoWriter(
                str(self.partial), cv2.VideoWriter.fourcc(*"mp4v"), fps, size
            )
        if not self.writer.isOpened():
            raise OutputWriteError(self.path, f"OpenCV cannot write {self.path.suffix} video here")

    def write(self, frame: Tensor) -> None:
        """Append one frame."""
        self.writer.write(image_to_bgr_array(frame))

    def close(self) -> Path:
        """Finish the file and move it into place."""
        self.writer.release()
        os.replace(self.partial, self.path)
        return self.path

    def discard(self) -> None:
        """Stop and delete the unfinished file."""
        self.writer.release()
        remove_quietly(str(self.partial))
