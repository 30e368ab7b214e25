"""Heatmaps on video: frame count, size and rate kept; frames equal single images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import camtool
from camtool.cli import app
from camtool.io.videos import open_video
from camtool.video import explain_frames
from tests.conftest import CAT, COFFEE

runner = CliRunner()


def make_clip(
    path: Path, frames: int = 12, fps: float = 10.0, size: tuple[int, int] = (320, 240)
) -> Path:
    """A short clip encoded by the test from the bundled photos (cat, then coffee)."""
    if path.suffix == ".avi":  # OpenCV's own Motion-JPEG writer: any frame size
        writer = cv2.VideoWriter(
            str(path), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter.fourcc(*"MJPG"), fps, size
        )
    else:
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        photo = cv2.imread(str(CAT if i < frames // 2 else COFFEE))
        writer.write(cv2.resize(photo, size, interpolation=cv2.INTER_AREA))
    writer.release()
    return path


def test_video_round_trip_keeps_count_size_and_rate(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4")
    result = runner.invoke(
        app, ["explain", str(clip), "-o", str(tmp_path / "out"), "--smooth", "3"]
    )
    assert result.exit_code == 0, result.stderr
    written = tmp_path / "out" / "clip_cam.mp4"
    assert "wrote" in result.stdout and written.exists()
    info, frames = open_video(written)
    decoded = list(frames)
    assert (info.width, info.height, info.fps) == (320, 240, 10.0)
    assert len(decoded) == 12 and decoded[0].shape == (3, 240, 320)
    assert [p.name for p in (tmp_path / "out").iterdir()] == [
        "clip_cam.mp4"
    ]  # no temporary file left


def test_first_frame_heatmap_equals_the_single_image_heatmap(
    tmp_path: Path, lite0: camtool.LoadedModel
) -> None:
    clip = make_clip(tmp_path / "clip.mp4")
    _, frames = open_video(clip)
    first = next(iter(open_video(clip)[1]))
    video = list(explain_frames(frames, lite0, batch_size=5, smooth=4))
    single = camtool.explain(first, lite0)
    assert len(video) == 12
    assert video[0].explained[0].index == single.explained[0].index == 285
    torch.testing.assert_close(video[0].heatmaps, single.heatmaps, atol=1e-5, rtol=0)
    assert video[-1].explained[0].name == "espresso"
    # With smoothing, a later frame's map is the mean of the last 4 frames' own maps.
    own = [camtool.explain(f, lite0).heatmaps for f in list(open_video(clip)[1])[8:12]]
    torch.testing.assert_close(video[11].heatmaps, torch.stack(own).mean(0), atol=1e-5, rtol=0)


def test_broken_video_is_a_clean_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(np.random.default_rng(0).bytes(5000))
    result = runner.invoke(app, ["explain", str(broken), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert (
        result.stderr
        == f"Error: {broken}: not a video OpenCV can read (or no frame could be decoded)\n"
    )
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_odd_frame_sizes_are_kept_and_a_bad_video_among_images_is_one_failure(
    tmp_path: Path,
) -> None:
    clip = make_clip(tmp_path / "odd.avi", frames=3, size=(321, 241))
    broken = tmp_path / "broken.mp4"
    broken.write_text("no video here")
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["explain", str(clip), str(broken), str(CAT), "-o", str(out), "--json"]
    )
    assert result.exit_code == 3
    assert (
        result.stderr
        == f"Error: {broken}: not a video OpenCV can read (or no frame could be decoded)\n"
    )
    info, frames = open_video(out / "odd_cam.avi")  # MPEG-4 cannot keep odd sizes; Motion-JPEG can
    assert (info.width, info.height) == (321, 241) and len(list(frames)) == 3
    assert (out / "chelsea_cam_285_egyptian_cat.png").exists()


def test_a_video_left_unfinished_by_sigkill_is_removed_by_the_next_run(tmp_path: Path) -> None:
    """SIGKILL leaves the killed run's temporary video; the next video written into that folder
    removes it (its process is gone) and the folder holds only finished files."""
    import os
    import signal
    import subprocess
    import sys
    import time

    clip = make_clip(tmp_path / "long.mp4", frames=200, size=(160, 120))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen(
        [sys.executable, "-m", "camtool.cli", "explain", str(clip), "-o", str(out)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    partial = out / f".camtool-{process.pid}.part.mp4"
    deadline = time.monotonic() + 120
    while not partial.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert partial.exists() and not (out / "long_cam.mp4").exists()
    result = runner.invoke(
        app, ["explain", str(make_clip(tmp_path / "short.mp4", 2)), "-o", str(out)]
    )
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["short_cam.mp4"]


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_a_batch_size_that_is_no_positive_integer_is_refused_before_any_frame_is_read(
    tmp_path: Path, lite0: camtool.LoadedModel, size: object
) -> None:
    message = f"batch_size: expected a positive integer, got {size!r}"
    read: list[int] = []
    frames = (read.append(i) or torch.zeros(3, 8, 8, dtype=torch.uint8) for i in range(3))
    with pytest.raises(camtool.InvalidArgumentError) as caught:
        explain_frames(frames, lite0, batch_size=size)  # type: ignore[arg-type]
    assert str(caught.value) == message and read == []
    clip = make_clip(tmp_path / "clip.avi", frames=2)
    with pytest.raises(camtool.InvalidArgumentError) as caught:
        camtool.explain_video(clip, tmp_path / "out.avi", lite0, batch_size=size)  # type: ignore[arg-type]
    assert str(caught.value) == message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.avi"]
