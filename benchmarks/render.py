"""Per-step cost of rendering one overlay on ONE CPU core: old (before the small-map box and the
channels-last OpenCV blend) versus new, side by side, on a real map of the default model.

    .venv/bin/python benchmarks/render.py [--size 640x480] [--repeat 200]

Steps: upsample (feature map -> full-size heatmap), colour + blend, box (the CAM box), draw (the
box's outline) and to-BGR (the copy JPEG encoding takes); "render" is colour + blend + box.
Median milliseconds per image over ``--repeat`` runs of each step, with glibc's malloc thresholds
set as ``camtool export`` sets them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

import camtool
from camtool.allocator import keep_freed_memory
from camtool.boxes import cam_to_box, draw_box_in_place, small_map_box
from camtool.geometry import FeatureGeometry
from camtool.io.images import image_to_bgr_array, load_image
from camtool.render import _colormap_table, normalize_cams, overlay, upsample_cams

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "chelsea.png"


# --- the previous implementation, kept here to compare against -------------------------------
def old_upsample(cams: torch.Tensor, input_hw: tuple[int, int], out_hw: tuple[int, int],
                 geometry: FeatureGeometry) -> torch.Tensor:  # fmt: skip
    feature_hw = (int(cams.shape[-2]), int(cams.shape[-1]))
    grid, shifts = [], []
    for axis in (0, 1):
        scale = out_hw[axis] / input_hw[axis]
        stride, origin = geometry.stride[axis], geometry.origin[axis]
        grid.append(max(1, round(feature_hw[axis] * stride * scale)))
        shifts.append(round((origin - stride / 2) * scale))
    up = F.interpolate(cams.float()[None], size=(grid[0], grid[1]), mode="bilinear",
                       align_corners=False)  # fmt: skip
    top, left = max(0, shifts[0]), max(0, shifts[1])
    bottom = max(0, out_hw[0] - shifts[0] - grid[0])
    right = max(0, out_hw[1] - shifts[1] - grid[1])
    padded = F.pad(up, (left, right, top, bottom), mode="replicate")
    y0, x0 = top - shifts[0], left - shifts[1]
    return padded[0, :, y0 : y0 + out_hw[0], x0 : x0 + out_hw[1]]


def old_colour_blend(image: torch.Tensor, heatmap: torch.Tensor, alpha: float) -> torch.Tensor:
    levels = (heatmap.float().clamp(0, 1) * 255).round_().to(torch.uint8).numpy()
    colour = cv2.applyColorMap(levels, _colormap_table("jet"))
    pixels = np.ascontiguousarray(image.permute(1, 2, 0).numpy()[:, :, ::-1])
    blended = cv2.addWeighted(pixels, 1 - alpha, colour, alpha, 0.0)
    return torch.from_numpy(np.ascontiguousarray(blended[:, :, ::-1])).permute(2, 0, 1)


def old_draw(image: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    canvas = np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())
    x1, y1, x2, y2 = box
    cv2.rectangle(canvas, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), (0, 255, 0), 3)
    return torch.from_numpy(canvas).permute(2, 0, 1).contiguous()


def old_to_bgr(image: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(image.permute(1, 2, 0).flip(-1).cpu().numpy())


# ----------------------------------------------------------------------------------------------
def timed(step: Callable[[], object], repeat: int) -> float:
    step()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="640x480", help="photo size, WIDTHxHEIGHT")
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    keep_freed_memory()  # as `camtool export` runs
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    width, height = (int(v) for v in args.size.split("x"))
    photo = load_image(EXAMPLE).permute(1, 2, 0).numpy()
    photo = cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA)
    image = torch.from_numpy(photo).permute(2, 0, 1)  # channels-last storage, as decoded
    ex = camtool.explain(image, model="efficientnet_lite0")
    cams = normalize_cams(ex.cams[:1])
    hw, geo = ex.input_hw, ex.geometry
    heat = upsample_cams(cams, hw, (height, width), geo)[0]
    old_heat = old_upsample(cams, hw, (height, width), geo)[0]
    box = cam_to_box(old_heat)
    assert box is not None
    new_overlay = overlay(image, heat, 0.5)
    old_overlay = old_colour_blend(image, old_heat, 0.5)
    canvas = new_overlay.permute(1, 2, 0).numpy().copy()
    gap = int((new_overlay.int() - old_overlay.int()).abs().max())
    rows = {
        "upsample": (lambda: old_upsample(cams, hw, (height, width), geo),
                     lambda: upsample_cams(cams, hw, (height, width), geo)),
        "colour + blend": (lambda: old_colour_blend(image, old_heat, 0.5),
                           lambda: overlay(image, heat, 0.5)),
        "box": (lambda: cam_to_box(old_heat), lambda: small_map_box(cams[0], hw, (height, width), geo)),
        "draw box": (lambda: old_draw(old_overlay, box), lambda: draw_box_in_place(canvas, box)),
        "to BGR (encode)": (lambda: old_to_bgr(old_overlay), lambda: image_to_bgr_array(new_overlay)),
    }  # fmt: skip
    print(f"{width}x{height} photo, map {tuple(cams.shape[1:])}, 1 thread (torch and OpenCV), "
          f"median of {args.repeat}; torch {torch.__version__}, OpenCV {cv2.__version__}")  # fmt: skip
    print(f"{'step':<22}{'old ms':>9}{'new ms':>9}{'old/new':>9}")
    totals = {"render": [0.0, 0.0], "all steps": [0.0, 0.0]}
    for name, (old, new) in rows.items():
        before, after = timed(old, args.repeat), timed(new, args.repeat)
        print(f"{name:<22}{before:>9.3f}{after:>9.3f}{before / after:>9.1f}")
        for total, members in (("render", ("colour + blend", "box")), ("all steps", rows)):
            if name in members:
                totals[total][0] += before
                totals[total][1] += after
    for name, (before, after) in totals.items():
        print(f"{name:<22}{before:>9.3f}{after:>9.3f}{before / after:>9.1f}")
    print(f"same output: heatmaps within {float((heat - old_heat).abs().max()):.1e}, overlays "
          f"within {gap} level(s), boxes {small_map_box(cams[0], hw, (height, width), geo)} "
          f"(new) and {box} (old)")  # fmt: skip


if __name__ == "__main__":
    main()
