"""CAM localization of the default model on the bundled and foolbox photos at several network
input sizes and box thresholds (the numbers behind the defaults in docs/evaluation.md).

    PYTHONPATH=. python benchmarks/eval_localization.py [--sizes 224 320 448]

Each image is squeezed to size x size (as ``camtool eval`` does), explained with CAM for its
top-5 classes, and scored against tests/data/boxes/photos.csv: top-1/top-5 localization error at
each box threshold, the pointing game and MaxBoxAccV2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import torch

import camtool
from camtool.image import resize_image
from camtool.io.images import load_image
from camtool.metrics import (
    localization_error,
    max_box_accuracy,
    method_maps,
    pixel_forward,
    pointing_game,
)
from camtool.metrics.annotations import match_images, resolve_boxes
from camtool.metrics.box_files import read_annotations

ROOT = Path(__file__).resolve().parent.parent
THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)


def photos() -> list[Path]:
    spec = importlib.util.find_spec("foolbox")
    assert spec is not None and spec.submodule_search_locations
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    bundled = [
        ROOT / "examples" / n
        for n in ("chelsea.png", "coffee.png", "camera.png", "grace_hopper.jpg")
    ]
    return bundled + sorted(folder.glob("imagenet_*.jpg"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 320, 448])
    args = parser.parse_args()
    model = camtool.load_model("efficientnet_lite0")
    paths = photos()
    annotations = resolve_boxes(
        read_annotations(ROOT / "tests/data/boxes/photos.csv"), model.labels
    )
    matched, _ = match_images(annotations, paths)
    forward, source = pixel_forward(model), method_maps(model, "cam")
    rows = []
    for size in args.sizes:
        images, labels, boxes = [], [], []
        for path in paths:
            image = load_image(path)
            h, w = image.shape[1:]
            found = matched[str(path.resolve())]
            label = int(found[0].index)
            scale = torch.tensor([size / w, size / h, size / w, size / h])
            boxes.append(torch.tensor([b.box for b in found if b.index == label]) * scale)
            images.append(resize_image(image, (size, size), "bicubic"))
            labels.append(label)
        pixels = torch.stack(images).float() / 255
        label_t = torch.tensor(labels)
        with torch.inference_mode():
            top5 = forward(pixels).topk(5, dim=-1).indices
        n = len(paths)
        maps5 = source(pixels.repeat_interleave(5, 0), top5.flatten()).maps.view(n, 5, size, size)
        truth = source(pixels, label_t).maps
        pointing = pointing_game(truth, boxes).accuracy
        mba = max_box_accuracy(truth, boxes).value
        for threshold in THRESHOLDS:
            result = localization_error(maps5, top5, label_t, boxes, threshold=threshold)
            gt_known = localization_error(
                truth[:, None], label_t[:, None], label_t, boxes, threshold=threshold
            )
            rows.append({
                "size": size, "threshold": threshold,
                "top1_loc_error": 100 * result.top1_error, "top5_loc_error": 100 * result.top5_error,
                "gt_known_loc_error": 100 * gt_known.top1_error,
                "classification_top1_error": 100 * float((top5[:, 0] != label_t).float().mean()),
                "pointing_game": 100 * pointing, "max_box_acc_v2": 100 * mba,
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
