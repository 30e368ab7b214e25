"""Images/s of camtool's metrics against torchcam's and pytorch-grad-cam's implementation of the
same metric, in the same run, on the CPU, on the default model (EfficientNet-Lite0, pretrained).

Run: .venv/bin/python benchmarks/eval.py [--images 4] [--size 224] [--steps 16] [--skip-road]
     [--metric drop|curves|road ...] [--method cam|gradcam ...] [--repeats 3] [--peers-tuned]
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

Each library runs in its own fresh process (``--library``), as its users run it: camtool's
metrics tune glibc's malloc for batch work themselves (``camtool.allocator``; it would speed up
whatever ran after it in one process), the peers run with glibc's defaults. ``--peers-tuned``
adds a second run of each peer with the same malloc thresholds set from the environment
(``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``), so the table also shows what the peers
reach with that setting.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

import camtool
from camtool import metrics
from camtool.io.images import load_image

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
    parser.add_argument(
        "--peers-tuned",
        action="store_true",
        help="also run each peer with camtool's malloc setting",
    )
    parser.add_argument("--library", choices=LIBRARIES, help=argparse.SUPPRESS)  # one worker
    args = parser.parse_args()
    if args.library is None:
        drive(args)
        return
    library = args.library

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
    with torch.no_grad():  # not pixel_forward: in a peer's process camtool tunes nothing
        classes = pixel_model(images).argmax(1)
    forward = metrics.pixel_forward(model) if library == "camtool" else pixel_model
    pixels = args.size * args.size
    per_step = -(-pixels // args.steps)
    softmax = partial(torch.softmax, dim=-1)

    def record(method: str, metric: str, name: str, call: Callable[[], object]) -> None:
        if name != library:
            return
        speed = args.images / best_of(call, args.repeats)
        print(json.dumps({"method": method, "metric": metric, "speed": speed}), flush=True)

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
            record(method, "average drop/increase", "camtool", ours_drop)
            record(method, "average drop/increase", "torchcam", torchcam_drop)
            record(method, "average drop/increase", "pytorch-grad-cam", grad_cam_drop)

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
            record(method, "deletion + insertion", "camtool", ours_curves)
            record(method, "deletion + insertion", "torchcam", torchcam_curves)

        if "road" in chosen:

            def ours_road() -> None:
                metrics.road(forward, images, source(images, classes).maps, classes)

            def grad_cam_road() -> None:
                with torch.no_grad():
                    ROADCombined()(images, maps.numpy(), targets, pixel_model)

            record(method, "ROAD (MoRF + LeRF)", "camtool", ours_road)
            record(method, "ROAD (MoRF + LeRF)", "pytorch-grad-cam", grad_cam_road)

    chosen = set(args.metric or ("drop", "curves", "road")) - (
        {"road"} if args.skip_road else set()
    )
    for method in args.method or ("cam", "gradcam"):
        run_method(method)


LIBRARIES = ("camtool", "torchcam", "pytorch-grad-cam")
#: glibc's malloc thresholds as camtool.allocator sets them, from the environment.
TUNED = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str((1 << 31) - 1)}


def drive(args: argparse.Namespace) -> None:
    """Run each library in its own process (the peers with glibc's defaults, and with
    ``--peers-tuned`` once more with camtool's malloc thresholds); print one table."""
    forwarded = [a for a in sys.argv[1:] if a != "--peers-tuned"]
    runs: list[tuple[str, str, dict[str, str]]] = [(name, name, {}) for name in LIBRARIES]
    if args.peers_tuned:
        runs += [(f"{name} (tuned)", name, TUNED) for name in LIBRARIES[1:]]
    speeds: dict[tuple[str, str], dict[str, float]] = {}
    for label, name, extra in runs:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        env.pop("CAMTOOL_DEFAULT_MALLOC", None)
        env.update(extra)
        command = [sys.executable, __file__, *forwarded, "--library", name]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"{label} failed:\n{done.stderr}")
        for line in done.stdout.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                speeds.setdefault((row["method"], row["metric"]), {})[label] = row["speed"]
                print(f"{row['method']:8} {row['metric']:24} {label:26} {row['speed']:8.2f} "
                      "images/s", flush=True)  # fmt: skip
    labels = [label for label, _, _ in runs]
    print(f"\n{args.images} images at {args.size}x{args.size}, {args.steps} deletion/insertion "
          f"steps, best of {args.repeats}; images/s (more is faster), each library in its own "
          "process")  # fmt: skip
    print(f"{'method':8} {'metric':24} " + " ".join(f"{label:>18.18}" for label in labels))
    for (method, metric), row in speeds.items():
        cells = " ".join(
            f"{row[label]:18.2f}" if label in row else f"{'-':>18}" for label in labels
        )
        print(f"{method:8} {metric:24} {cells}")


if __name__ == "__main__":
    main()
