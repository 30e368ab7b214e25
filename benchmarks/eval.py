"""Images/s of camtool's metrics against torchcam's and pytorch-grad-cam's implementation of the
same metric, in the same run, on the CPU, on the default model (EfficientNet-Lite0, pretrained).

Run: .venv/bin/python benchmarks/eval.py [--images 4] [--size 224] [--steps 16] [--skip-road]
     [--metric drop|curves|road ...] [--method cam|gradcam ...]
(needs torchcam 0.5.0 and pytorch-grad-cam 1.5.7: `scripts/setup.sh test`).

Per method (cam, gradcam) and shared metric, each library scores the same ``--images`` photos
(the bundled ones, repeated) at ``--size`` px:

- Average Drop + Increase in Confidence: camtool ``average_drop`` | torchcam
  ``ClassificationMetric`` | pytorch-grad-cam ``DropInConfidence`` + ``IncreaseInConfidence``;
- deletion + insertion (``--steps`` steps each): camtool ``deletion`` + ``insertion`` | torchcam
  ``DeletionInsertionMetric``;
- ROAD (MoRF and LeRF at 10%..90%): camtool ``road`` | pytorch-grad-cam ``ROADCombined``.

camtool's time includes making its maps (``method_maps``); pytorch-grad-cam is given those maps
(it takes maps, so its time is the metric alone); torchcam makes its own maps (it has no
maps-in API). Every peer runs the network on pixels through a wrapper that normalises, as camtool
does. One warm-up call per library, then the best of ``--repeats`` timed calls.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

import camtool
from camtool import metrics
from camtool.io import load_image

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = (ROOT / "examples" / "chelsea.png", ROOT / "examples" / "coffee.png")


class PixelModel(nn.Module):
    """The network on pixels in [0, 1]: normalises with the model's mean and std."""

    def __init__(self, model: camtool.LoadedModel) -> None:
        super().__init__()
        self.net = model.module
        self.register_buffer("mean", torch.tensor(model.preprocessing.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(model.preprocessing.std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def best_of(call: Callable[[], object], repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=16, help="deletion/insertion steps")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-road", action="store_true")
    parser.add_argument(
        "--metric",
        action="append",
        choices=("drop", "curves", "road"),
        help="only these (repeatable)",
    )
    parser.add_argument("--method", action="append", choices=("cam", "gradcam"), help="only these")
    args = parser.parse_args()

    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
    from torchcam import methods as torchcam_methods
    from torchcam.metrics import ClassificationMetric, DeletionInsertionMetric

    model = camtool.load_model(device="cpu")
    pixel_model = PixelModel(model).eval()
    photos = [load_image(PHOTOS[i % len(PHOTOS)])[None].float() / 255 for i in range(args.images)]
    images = torch.cat(
        [
            nn.functional.interpolate(
                p, size=(args.size, args.size), mode="bilinear", antialias=True
            )
            for p in photos
        ]
    ).clamp(0, 1)
    forward = metrics.pixel_forward(model)
    classes = forward(images).argmax(1)
    pixels = args.size * args.size
    per_step = -(-pixels // args.steps)
    softmax = partial(torch.softmax, dim=-1)
    rows: list[tuple[str, str, str, float]] = []

    def record(method: str, metric: str, library: str, seconds: float) -> None:
        rows.append((method, metric, library, args.images / seconds))
        print(
            f"{method:8} {metric:24} {library:18} {args.images / seconds:8.2f} images/s", flush=True
        )

    def run_method(method: str) -> None:
        source = metrics.method_maps(model, method)
        maps = source(images, classes).maps
        extractor_kind = torchcam_methods.CAM if method == "cam" else torchcam_methods.GradCAM
        options = {"fc_layer": "net._fc"} if method == "cam" else {}
        targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
        # torchcam's Grad-CAM needs a graph from the scores to the layer; the loaded model's
        # weights are frozen, so the input carries requires_grad
        peer_input = images.clone().requires_grad_(method != "cam")

        def ours_drop() -> None:
            facts = source(images, classes)  # its logits are the unmasked scores
            metrics.average_drop(
                forward, images, facts.maps, classes, original_logits=facts.network_logits
            )

        def torchcam_drop() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                extractor = extractor_kind(
                    pixel_model, "net._bn1", input_shape=(3, args.size, args.size), **options
                )
                peer = ClassificationMetric(extractor, softmax)
                peer.update(peer_input, classes.tolist())
                extractor.remove_hooks()

        def grad_cam_drop() -> None:
            DropInConfidence()(images, maps.numpy(), targets, pixel_model)
            IncreaseInConfidence()(images, maps.numpy(), targets, pixel_model)

        if "drop" in chosen:
            record(method, "average drop/increase", "camtool", best_of(ours_drop, args.repeats))
            record(
                method, "average drop/increase", "torchcam", best_of(torchcam_drop, args.repeats)
            )
            drop_time = best_of(grad_cam_drop, args.repeats)
            record(method, "average drop/increase", "pytorch-grad-cam", drop_time)

        def ours_curves() -> None:
            facts = source(images, classes)
            known = facts.network_logits
            metrics.deletion(
                forward,
                images,
                facts.maps,
                classes,
                pixels_per_step=per_step,
                original_logits=known,
            )
            metrics.insertion(
                forward,
                images,
                facts.maps,
                classes,
                pixels_per_step=per_step,
                original_logits=known,
            )

        def torchcam_curves() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                extractor = extractor_kind(
                    pixel_model, "net._bn1", input_shape=(3, args.size, args.size), **options
                )
                peer = DeletionInsertionMetric(extractor, softmax, steps=args.steps)
                peer.update(peer_input, classes.tolist())
                extractor.remove_hooks()

        if "curves" in chosen:
            record(method, "deletion + insertion", "camtool", best_of(ours_curves, args.repeats))
            record(
                method, "deletion + insertion", "torchcam", best_of(torchcam_curves, args.repeats)
            )

        if "road" in chosen:

            def ours_road() -> None:
                metrics.road(forward, images, source(images, classes).maps, classes)

            def grad_cam_road() -> None:
                with torch.no_grad():
                    ROADCombined()(images, maps.numpy(), targets, pixel_model)

            record(method, "ROAD (MoRF + LeRF)", "camtool", best_of(ours_road, args.repeats))
            record(
                method,
                "ROAD (MoRF + LeRF)",
                "pytorch-grad-cam",
                best_of(grad_cam_road, args.repeats),
            )

    chosen = set(args.metric or ("drop", "curves", "road")) - (
        {"road"} if args.skip_road else set()
    )
    for method in args.method or ("cam", "gradcam"):
        run_method(method)

    print()
    print(f"{'method':8} {'metric':24} {'library':18} {'images/s':>8}")
    for method, metric, library, speed in rows:
        print(f"{method:8} {metric:24} {library:18} {speed:8.2f}")


if __name__ == "__main__":
    main()
