"""Each map-making method's cost against a bare forward pass and the peers' same method.

Run: .venv/bin/python benchmarks/methods.py [--batch 16] [--size 224] [--models lite0,resnet50]
(needs pytorch-grad-cam and torchcam: `scripts/setup.sh test` or benchmarks/setup.sh).

Per model (EfficientNet-Lite0 pretrained, torchvision resnet50 with random weights) and method,
one child process per measurement (so that its peak memory is its own) times ``--repeats`` calls
on one batch after a warm-up call and reports images/s, the ratio of its time to a bare forward pass (measured
the same way in the same run) and its peak memory above the loaded model's. Score-CAM runs one
forward pass per channel, so it is measured on ``--score-images`` images of ``--score-size`` px.
Prints a table, a row as each measurement ends (with --json: the rows as JSON at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from typing import Any

METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "scorecam", "eigencam")
GRAD_CAM = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
            "layercam": "LayerCAM", "hirescam": "HiResCAM", "scorecam": "ScoreCAM",
            "eigencam": "EigenCAM"}  # fmt: skip
TORCHCAM = {"gradcam": "GradCAM", "gradcam++": "GradCAMpp", "xgradcam": "XGradCAM",
            "layercam": "LayerCAM", "scorecam": "ScoreCAM"}  # fmt: skip
#: The layer the peers hook (a module output): Lite0's last map comes from a functional ReLU6,
#: so they read its BatchNorm (the map before it); camtool reads its default layer.
PEER_LAYER = {"lite0": "_bn1", "resnet50": "layer4"}


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(
    model_name: str, method: str, impl: str, batch_size: int, size: int, repeats: int
) -> dict[str, Any]:
    """One measurement, in this (child) process."""
    import torch

    import camtool
    from camtool.methods import bind

    torch.manual_seed(0)
    if model_name == "lite0":
        model = camtool.load_model("efficientnet_lite0", device="cpu")
    else:
        model = camtool.load_model("resnet50", device="cpu", random_weights=True)
    net = model.module
    batch = torch.randn(batch_size, 3, size, size).contiguous(memory_format=torch.channels_last)
    classes = [1] * batch_size

    if impl == "forward":

        def call(batch: torch.Tensor = batch) -> None:
            with torch.inference_mode():
                net(batch)
    elif impl == "camtool":
        explainer = bind(method, model)

        def call(batch: torch.Tensor = batch) -> None:
            explainer(batch, classes=[1])
    elif impl == "pytorch-grad-cam":
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        for p in net.parameters():
            p.requires_grad_(True)  # it backpropagates into the parameters
        layer = dict(net.named_modules())[PEER_LAYER[model_name]]
        cam = getattr(pytorch_grad_cam, GRAD_CAM[method])(model=net, target_layers=[layer])
        if method == "scorecam":
            cam.batch_size = 64

        def call(batch: torch.Tensor = batch) -> None:
            targets = [ClassifierOutputTarget(1)] * len(batch)
            cam(input_tensor=batch, targets=targets)
    else:
        from torchcam import methods as torchcam_methods

        for p in net.parameters():
            p.requires_grad_(True)
        extractor = getattr(torchcam_methods, TORCHCAM[method])(
            net, target_layer=PEER_LAYER[model_name], input_shape=(3, size, size)
        )

        def call(batch: torch.Tensor = batch) -> None:
            if method == "scorecam":
                with torch.no_grad():
                    net(batch)
                extractor(class_idx=classes[: len(batch)])
            else:
                extractor(class_idx=classes[: len(batch)], scores=net(batch))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        call(batch[:1])  # warm-up, on one image
        before = rss_mib()
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        seconds = (time.perf_counter() - start) / repeats
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": model_name, "method": method, "impl": impl, "batch": batch_size,
            "size": size, "seconds": seconds, "images_per_s": batch_size / seconds,
            "peak_mib": max(0.0, peak - before)}  # fmt: skip


def child(*args: str) -> dict[str, Any] | None:
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        print(
            f"  {' '.join(args[:3])}: failed: {done.stderr.strip().splitlines()[-1:]}",
            file=sys.stderr,
        )
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lite0,resnet50")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--score-images", type=int, default=1)
    parser.add_argument("--score-size", type=int, default=96)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=6, metavar=("MODEL", "METHOD", "IMPL", "N", "SIZE", "R"))
    args = parser.parse_args()
    if args.child:
        model, method, impl, n, size, repeats = args.child
        print(json.dumps(measure(model, method, impl, int(n), int(size), int(repeats))))
        return
    rows: list[dict[str, Any]] = []
    if not args.json:  # the table, a row as each measurement ends
        print(f"{'model':9} {'method':10} {'images':>6} {'px':>4} {'implementation':17} "
              f"{'img/s':>8} {'x forward':>9} {'peak MiB':>9}", flush=True)  # fmt: skip
    forward: dict[tuple[str, int, int], dict[str, Any] | None] = {}
    for model in args.models.split(","):
        for method in args.methods.split(","):
            score = method == "scorecam"
            n, size = (args.score_images, args.score_size) if score else (args.batch, args.size)
            repeats = 1 if score else args.repeats
            if (model, n, size) not in forward:  # the bare forward pass, once per shape
                forward[model, n, size] = child(
                    model, "forward", "forward", str(n), str(size), str(max(args.repeats, 3))
                )
            base = forward[model, n, size]
            impls = ["camtool", "pytorch-grad-cam"] + (["torchcam"] if method in TORCHCAM else [])
            for impl in impls:
                row = child(model, method, impl, str(n), str(size), str(repeats))
                if row is not None and base is not None:
                    row["vs_forward"] = row["seconds"] / base["seconds"]
                    row["forward_images_per_s"] = base["images_per_s"]
                    rows.append(row)
                    if not args.json:
                        r = row
                        print(f"{r['model']:9} {r['method']:10} {r['batch']:>6} {r['size']:>4} "
                              f"{r['impl']:17} {r['images_per_s']:>8.2f} {r['vs_forward']:>9.2f} "
                              f"{r['peak_mib']:>9.0f}", flush=True)  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
