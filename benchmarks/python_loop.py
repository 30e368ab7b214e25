"""Per-call time of explaining photos one at a time in a Python loop: ``camtool.explain`` with a
plain ``nn.Module``, a held ``camtool.Explainer``, and pytorch-grad-cam's and torchcam's held
Grad-CAM extractors, on the same model and photos.

Run: .venv/bin/python benchmarks/python_loop.py [--rounds 5] [--swin]
(needs pytorch-grad-cam and torchcam: `scripts/setup.sh test` or benchmarks/setup.sh).

The model is torchvision's resnet18 with random weights (seed 0; no download), Grad-CAM at
``layer4`` (the last block's output, every implementation's choice), on the bundled photos (decoded
once, before timing). Each call takes a decoded photo to a map: camtool's calls return an
``Explanation`` (preprocessing, forward, backward, map, heatmap upsampled to the photo, box); the
peers' calls get camtool's preprocessing of the photo and return their map (pytorch-grad-cam's at
the input's size, torchcam's at the layer's), so they do less work per call than camtool. After
two warm-up calls per implementation, ``--rounds`` rounds give every photo to every implementation
(interleaved, their order rotated each round, so that a busy machine slows them alike); the table shows the
median and the quartiles of the per-call times. "re-loaded every call" passes
``camtool.load_model(net)`` afresh each time: what the plain loop cost before the cache (one round);
"bare forward pass" is the floor: the same preprocessing and a forward pass without autograd.

``--swin`` adds timm's Swin-T (random weights) with ``method="auto"`` (no exact method applies:
the refusals are remembered after the first call) against ``method="gradcam"``.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision

import camtool

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ("chelsea.png", "coffee.png", "grace_hopper.jpg", "camera.png")


def peers(net: torch.nn.Module, prepare: Callable[[Any], torch.Tensor]) -> dict[str, Any]:
    """The peers' held Grad-CAM extractors on copies of ``net`` (they need gradients on)."""
    import pytorch_grad_cam
    from torchcam import methods as torchcam_methods

    grad_net = copy.deepcopy(net).eval().requires_grad_(True)
    grad_cam = pytorch_grad_cam.GradCAM(model=grad_net, target_layers=[grad_net.layer4])
    cam_net = copy.deepcopy(net).eval().requires_grad_(True)
    extractor = torchcam_methods.GradCAM(cam_net, target_layer="layer4")

    def pgc(image: Any) -> Any:
        return grad_cam(input_tensor=prepare(image)[None], targets=None)

    def torchcam(image: Any) -> Any:
        scores = cam_net(prepare(image)[None])
        return extractor(class_idx=int(scores.argmax()), scores=scores)

    return {"pytorch-grad-cam GradCAM (held)": pgc, "torchcam GradCAM (held)": torchcam}


def forward(net: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The floor: camtool's preprocessing and a forward pass without autograd."""
    with torch.inference_mode():
        return net(batch)


def measure(calls: dict[str, Callable[[Any], Any]], images: list[Any], rounds: int) -> dict:
    """Per-call seconds of each call on each image: ``rounds`` rounds, each image in turn given to
    every call, the calls' order rotated from round to round (no call always runs first)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for call in calls.values():
            call(images[0])
            call(images[1])
        for turn in range(rounds):
            for image in images:
                for name in names[turn % len(names) :] + names[: turn % len(names)]:
                    start = time.perf_counter()
                    calls[name](image)
                    times[name].append(time.perf_counter() - start)
    return times


def row(name: str, values: list[float], reference: float | None) -> str:
    q1, median, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    ratio = f"{median / reference:6.2f}x" if reference else "       "
    return (
        f"{name:44} {median * 1000:8.1f} {q1 * 1000:8.1f} {q3 * 1000:8.1f} {ratio} {len(values):>5}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--swin", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: its own)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = torchvision.models.resnet18().eval()
    images = [camtool.load_image(ROOT / "examples" / name) for name in PHOTOS]
    held = camtool.Explainer(net, method="gradcam", layer=net.layer4)
    prepare = held.model.preprocessing.prepare

    calls: dict[str, Callable[[Any], Any]] = {
        "camtool.Explainer(net, 'gradcam') (held)": held,
        "camtool.explain(image, net) (plain module)": lambda image: camtool.explain(
            image, net, method="gradcam", layer=net.layer4
        ),
        **peers(net, lambda image: prepare(image)[0]),
        "bare forward pass (preprocessed, no map)": lambda image: forward(
            net, prepare(image)[0][None]
        ),
    }
    times = measure(calls, images, args.rounds)
    reloaded = measure(
        {
            "camtool.explain(image, load_model(net))": lambda image: camtool.explain(
                image, camtool.load_model(net), method="gradcam", layer="layer4"
            )
        },
        images,
        1,
    )
    sizes = ", ".join(f"{img.shape[2]}x{img.shape[1]}" for img in images)
    print(
        f"resnet18 (random weights), Grad-CAM at layer4, photos {sizes}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs ({platform.machine()}), "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'per call, one photo':44} {'median':>8} {'q1':>8} {'q3':>8} {'/held':>7} {'calls':>5}")
    print(f"{'':44} {'ms':>8} {'ms':>8} {'ms':>8}")
    reference = statistics.median(times["camtool.Explainer(net, 'gradcam') (held)"])
    for name, values in {**times, **reloaded}.items():
        print(row(name, values, reference))
    if args.swin:
        swin_table(images, args.rounds)


def swin_table(images: list[Any], rounds: int) -> None:
    import timm

    torch.manual_seed(0)
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    first = {}
    for method in ("auto", "gradcam"):
        start = time.perf_counter()
        camtool.explain(images[0], swin, method=method)
        first[method] = time.perf_counter() - start
    times = measure(
        {
            f"camtool.explain(image, swin, method={m!r})": (
                lambda image, m=m: camtool.explain(image, swin, method=m)
            )
            for m in ("auto", "gradcam")
        },
        images,
        max(1, rounds // 2),
    )
    print(f"\ntimm swin_tiny_patch4_window7_224 (random weights), first call: auto "
          f"{first['auto']:.2f} s, then gradcam {first['gradcam']:.2f} s")  # fmt: skip
    print(f"{'per call, one photo':44} {'median':>8} {'q1':>8} {'q3':>8} {'/gc':>7} {'calls':>5}")
    reference = statistics.median(times["camtool.explain(image, swin, method='gradcam')"])
    for name, values in times.items():
        print(row(name, values, reference))


if __name__ == "__main__":
    main()
