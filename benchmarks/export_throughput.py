"""Batch export throughput: camtool versus a bare forward pass and the peers, side by side.

Set up once:  bash benchmarks/setup.sh          (adds pytorch-grad-cam and torchcam in .venv-bench)
Run:          .venv-bench/bin/python benchmarks/export_throughput.py [--images 1000 --scale 10000]

On the same JPEG photos (the bundled and foolbox photos, resized to a mix of sizes, mostly
640x480; with --photos uniform all 640x480, the common case), the same network
(EfficientNet-Lite0) and the same batch size, each in its own process:

  forward      bare forward passes over already-preprocessed tensors (the ceiling): the network
               as camtool runs it (on the CPU the built-in EfficientNet-Lite's fused inference
               path, camtool.efficientnet_fused)
  forward-unfused  the same through the network's modules (fuse_inference off)
  forward-passive  `forward` with OMP_WAIT_POLICY=PASSIVE: OpenMP threads that wait sleep at once
               instead of spinning first (GOMP_SPINCOUNT 0 instead of 300000)
  camtool      `camtool export DIR -o OUT -q --format jpg`: files in, overlay JPEGs out (whole image, no crop)
  camtool-     the same with glibc's default malloc thresholds (CAMTOOL_DEFAULT_MALLOC=1)
  camtool-crop the same with --crop: 224x224 network inputs, as the peers below use
  camtool-passive  `camtool` with OMP_WAIT_POLICY=PASSIVE
  camtool-device, camtool-local   `camtool export` with --runner device or local
  (the peers get the network as a user has it: weights in the default memory format, its
  modules run as they are, never the fused path)
  gradcam      pytorch-grad-cam as its users run it: GradCAM on 224x224 batches, the CAM resized
               to the photo, show_cam_on_image, cv2.imwrite
  torchcam     torchcam's CAM extractor on 224x224 batches, overlay_mask at the photo's size,
               PIL save

Every timing starts once the model is loaded (camtool's from its summary.json: `seconds` less
`load_seconds`). It prints a table (images/s, ratios, peak memory of the process and its
workers, and on a GPU the peak GPU memory in use) and, with --scale, camtool's throughput and
peak memory at more images.

On a GPU: `--device cuda --runner device` runs camtool's device runner (the default there) and
every worker on the GPU (bfloat16 autocast for the forward pass, as the device runner); `--model
resnet50 --weights FILE` swaps the network (a torchvision ResNet-50 state dict; random weights
measure speed as well as trained ones). benchmarks/gpu_export.sh runs the whole GPU table.

--engine ray instead compares camtool's two engines on this machine: the local runner and a local
Ray cluster (`camtool export ... --ray`, one actor per CPU unless --ray-actors), at --images and
each --scale count, on small JPEGs (--size, default 96x72: the engine's overhead, not the
network, is what is measured). It prints images/s (of the export, Ray's start-up included), wall
time and the peak memory (RSS) of the driver process alone and of its whole process tree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = [(640, 480)] * 5 + [(480, 640), (800, 600), (1024, 768), (640, 427), (427, 640), (500, 375)]


# --------------------------------------------------------------------------------------------
# Data


def source_photos() -> list[Path]:
    import importlib.util

    photos = sorted((ROOT / "examples").glob("*.png")) + sorted((ROOT / "examples").glob("*.jpg"))
    spec = importlib.util.find_spec("foolbox")
    if spec and spec.submodule_search_locations:
        photos += sorted(
            (Path(next(iter(spec.submodule_search_locations))) / "data").glob("imagenet_*.jpg")
        )
    return photos


def make_dataset(folder: Path, count: int, photos: str = "mixed") -> list[Path]:
    """``count`` JPEGs (quality 90), cycling through the source photos: ``photos="mixed"``
    resized to a mix of sizes (``SIZES``, mostly 640x480, under ``folder``); ``"uniform"`` all
    640x480, each source centre-cropped to 4:3 first so nothing is stretched (under
    ``folder``-640x480)."""
    import cv2

    if photos == "uniform":
        folder = folder.with_name(folder.name + "-640x480")
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i // 1000:03d}" / f"photo_{i:06d}.jpg" for i in range(count)]
    missing = [(i, p) for i, p in enumerate(paths) if not p.exists()]
    if missing:
        sources = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in source_photos()]
        if photos == "uniform":
            sources = [_crop_to(image, 4 / 3) for image in sources]
        for i, path in missing:
            path.parent.mkdir(exist_ok=True)
            width, height = (640, 480) if photos == "uniform" else SIZES[i % len(SIZES)]
            image = cv2.resize(
                sources[i % len(sources)], (width, height), interpolation=cv2.INTER_AREA
            )
            cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return paths


def _crop_to(image, aspect: float):  # type: ignore[no-untyped-def]
    """The centre of ``image`` (an HxWx3 array) with width / height = ``aspect``."""
    height, width = image.shape[:2]
    if width / height > aspect:
        keep = round(height * aspect)
        return image[:, (width - keep) // 2 : (width - keep) // 2 + keep]
    keep = round(width / aspect)
    return image[(height - keep) // 2 : (height - keep) // 2 + keep]


def photo_sizes(paths: list[Path]) -> str:
    """``"640x480"`` when all photos (of the first 200) have that size, else ``"mixed sizes"``."""
    from PIL import Image

    sizes = set()
    for path in paths[:200]:
        with Image.open(path) as image:
            sizes.add(image.size)
    return "x".join(map(str, sizes.pop())) if len(sizes) == 1 else "mixed sizes, mostly 640x480"


# --------------------------------------------------------------------------------------------
# Methods, each run in its own process (--worker METHOD)


#: The network every worker runs, and where (set from the command line, see main()).
MODEL = {"name": "efficientnet_lite0", "weights": None, "device": "cpu"}


def _load(**options):  # type: ignore[no-untyped-def]
    import camtool

    return camtool.load_model(
        MODEL["name"], device=MODEL["device"], weights=MODEL["weights"], **options
    )


def _synchronize() -> None:
    import torch

    if MODEL["device"] != "cpu":
        torch.cuda.synchronize()


def _peak_gpu_mb() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if MODEL["device"] != "cpu" else 0.0


def _target_layers(network):  # type: ignore[no-untyped-def]
    """(module for pytorch-grad-cam, layer name for torchcam, classifier name for torchcam)."""
    if hasattr(network, "layer4"):  # a torchvision ResNet
        return network.layer4[-1], "layer4", "fc"
    return network._bn1, "_bn1", "_fc"


def worker_forward(paths: list[Path], batch_size: int, out: Path, fused: bool = True) -> float:
    import torch

    import camtool
    from camtool.allocator import keep_freed_memory

    keep_freed_memory()  # the ceiling: the same allocator settings as camtool export uses
    cuda = MODEL["device"] != "cpu"
    model = _load(dtype="bfloat16" if cuda else None)
    if not fused:
        _modules_only(model.module)
    groups: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for path in paths[:256]:
        tensor, _ = model.preprocessing.prepare(camtool.load_image(path))
        groups.setdefault(tuple(tensor.shape), []).append(tensor)
    batches = [
        torch.stack(g[i : i + batch_size])
        for g in groups.values()
        for i in range(0, len(g), batch_size)
    ]
    batches = [model.placed(b) for b in batches]  # on the device: the forward pass alone
    with torch.inference_mode(), model.autocast():
        model.module(batches[0])  # warm-up
        _synchronize()
        done, start = 0, time.perf_counter()
        while done < len(paths):
            for batch in batches:
                model.module(batch)
                done += len(batch)
                if done >= len(paths):
                    break
        _synchronize()
    return time.perf_counter() - start


def worker_forward_unfused(paths: list[Path], batch_size: int, out: Path) -> float:
    return worker_forward(paths, batch_size, out, fused=False)


def _modules_only(network) -> None:  # type: ignore[no-untyped-def]
    """Run the built-in EfficientNet-Lite's modules, not its fused CPU inference path
    (camtool.efficientnet_fused), as a user who has the network from elsewhere would."""
    if hasattr(network, "fuse_inference"):
        network.fuse_inference = False


def _peer_batches(paths: list[Path], batch_size: int):  # type: ignore[no-untyped-def]
    import cv2
    import numpy as np
    import torch

    mean, std = 127.0, 128.0  # the preprocessing these weights were trained with
    for i in range(0, len(paths), batch_size):
        chunk = paths[i : i + batch_size]
        images = [cv2.imread(str(p), cv2.IMREAD_COLOR)[:, :, ::-1] for p in chunk]
        resized = np.stack(
            [cv2.resize(img, (224, 224), interpolation=cv2.INTER_CUBIC) for img in images]
        )
        batch = (torch.from_numpy(resized).permute(0, 3, 1, 2).float() - mean) / std
        yield chunk, images, batch.to(MODEL["device"])


def worker_gradcam(paths: list[Path], batch_size: int, out: Path) -> float:
    import cv2
    import numpy as np
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image

    network = _load(channels_last=False).module
    _modules_only(network)
    network.requires_grad_(True)  # as a user's model would be: GradCAM needs a backward pass
    start = time.perf_counter()
    with GradCAM(model=network, target_layers=[_target_layers(network)[0]]) as cam:
        for chunk, images, batch in _peer_batches(paths, batch_size):
            grayscale = cam(input_tensor=batch, targets=None)
            for path, image, mask in zip(chunk, images, grayscale, strict=True):
                mask = cv2.resize(mask, (image.shape[1], image.shape[0]))
                visual = show_cam_on_image(image.astype(np.float32) / 255, mask, use_rgb=True)
                cv2.imwrite(
                    str(out / f"{path.stem}_gradcam.jpg"),
                    visual[:, :, ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 90],
                )
    return time.perf_counter() - start


def worker_torchcam(paths: list[Path], batch_size: int, out: Path) -> float:
    import torch
    from PIL import Image
    from torchcam.methods import CAM
    from torchcam.utils import overlay_mask
    from torchvision.transforms.functional import to_pil_image

    network = _load(channels_last=False).module
    _modules_only(network)
    _, layer, classifier = _target_layers(network)
    start = time.perf_counter()
    with CAM(network, target_layer=layer, fc_layer=classifier) as extractor:
        for chunk, images, batch in _peer_batches(paths, batch_size):
            with torch.no_grad():
                scores = network(batch)
            maps = extractor(scores.argmax(1).tolist(), scores)[0]
            for path, image, mask in zip(chunk, images, maps, strict=True):
                result = overlay_mask(
                    Image.fromarray(image), to_pil_image(mask.float().cpu(), mode="F"), alpha=0.5
                )
                result.save(out / f"{path.stem}_torchcam.jpg", quality=90)
    return time.perf_counter() - start


WORKERS = {
    "forward": worker_forward,
    "forward-unfused": worker_forward_unfused,
    "gradcam": worker_gradcam,
    "torchcam": worker_torchcam,
}


# --------------------------------------------------------------------------------------------
# The harness


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(
                next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
            )
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total / 1024


def gpu_used_mb() -> float:
    """GPU memory in use on the machine (nvidia-smi), in MB; 0 without a GPU."""
    if MODEL["device"] == "cpu":
        return 0.0
    try:
        text = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10,
        ).stdout  # fmt: skip
        return float(sum(float(line) for line in text.split()))
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0.0


#: Peak GPU memory (MB, above what was in use before) of the last measured command.
LAST_GPU_PEAK = [0.0]


def measure(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run ``command``; return (wall seconds, peak tree RSS in MB, stdout)."""
    start = time.perf_counter()
    baseline = gpu_used_mb()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    peak, gpu_peak, polls = 0.0, 0.0, 0
    while process.poll() is None:
        peak = max(peak, tree_rss_mb(process.pid))
        if polls % 5 == 0:
            gpu_peak = max(gpu_peak, gpu_used_mb() - baseline)
        polls += 1
        time.sleep(0.1)
    LAST_GPU_PEAK[0] = gpu_peak
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"{command[:4]} failed ({process.returncode}): {stderr[-2000:]}")
    return wall, peak, stdout


def run_camtool(
    paths: list[Path],
    batch_size: int,
    work: Path,
    default_malloc: bool = False,
    crop: bool = False,
    runner: str = "local",
    passive: bool = False,
) -> dict[str, float]:
    listing = work / "list.txt"
    listing.write_text("\n".join(str(p) for p in paths) + "\n")
    out = work / (
        "camtool-default-malloc" if default_malloc else "camtool-crop" if crop else "camtool"
    )
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ)
    if default_malloc:
        env["CAMTOOL_DEFAULT_MALLOC"] = "1"
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    exe = str(Path(sys.executable).parent / "camtool")
    if not Path(exe).exists():
        exe = str(ROOT / ".venv" / "bin" / "camtool")
    command = [exe, "export", f"@{listing}", "-o", str(out), "-q", "--format", "jpg",
               "--runner", runner, "--device", MODEL["device"], "--model", MODEL["name"]]  # fmt: skip
    if MODEL["weights"]:
        command += ["--weights", MODEL["weights"]]
    if crop:
        command.append("--crop")
    if batch_size:
        command += ["--batch-size", str(batch_size)]
    wall, peak, _ = measure(command, env)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exported"] == len(paths), summary
    return {
        # the export without loading the model, as the workers' timings start after theirs
        "seconds": summary["seconds"] - summary.get("load_seconds", 0.0),
        "wall": wall,
        "peak_mb": peak,
        "gpu_mb": LAST_GPU_PEAK[0],
    }


def run_worker(method: str, paths: list[Path], batch_size: int, work: Path) -> dict[str, float]:
    env = dict(os.environ)
    if method.endswith("-passive"):
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        method = method.removesuffix("-passive")
    out = work / method
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    listing = work / "list.txt"
    listing.write_text("\n".join(str(p) for p in paths) + "\n")
    command = [sys.executable, __file__, "--worker", method, "--list", str(listing), "--out", str(out),
               "--batch-size", str(batch_size or 16), "--device", MODEL["device"],
               "--model", MODEL["name"], *(["--weights", MODEL["weights"]] if MODEL["weights"] else [])]  # fmt: skip
    wall, peak, stdout = measure(command, env)
    seconds, gpu_mb = (float(v) for v in stdout.strip().splitlines()[-1].split())
    return {
        "seconds": seconds,
        "wall": wall,
        "peak_mb": peak,
        "gpu_mb": max(gpu_mb, LAST_GPU_PEAK[0]),
    }


# --------------------------------------------------------------------------------------------
# --engine ray: the local runner versus a local Ray cluster


def make_small_dataset(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """``count`` small JPEGs of one size (``size``: width, height), cycling through the photos."""
    import cv2

    folder = folder / f"small-{size[0]}x{size[1]}"
    paths = [folder / f"{i // 1000:03d}" / f"photo_{i:06d}.jpg" for i in range(count)]
    missing = [(i, p) for i, p in enumerate(paths) if not p.exists()]
    if missing:
        sources = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in source_photos()]
        for i, path in missing:
            path.parent.mkdir(parents=True, exist_ok=True)
            image = cv2.resize(sources[i % len(sources)], size, interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return paths


def _rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(rss.split()[1]) / 1024
    except (OSError, StopIteration, ValueError):
        return 0.0


def measure_driver(command: list[str]) -> tuple[float, float, float]:
    """Run ``command``; return (wall seconds, peak RSS of the process alone, of its tree) in MB."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    driver = tree = 0.0
    while process.poll() is None:
        driver, tree = max(driver, _rss_mb(process.pid)), max(tree, tree_rss_mb(process.pid))
        time.sleep(0.1)
    _, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{command[:4]} failed ({process.returncode}): {stderr[-2000:]}")
    return time.perf_counter() - start, driver, tree


def compare_engines(args: argparse.Namespace) -> None:
    counts = [args.images, *args.scale]
    size = tuple(int(v) for v in args.size.split("x"))
    all_paths = make_small_dataset(args.data, max(counts), (size[0], size[1]))
    work = args.data / "runs-engines"
    work.mkdir(parents=True, exist_ok=True)
    exe = [sys.executable, "-m", "camtool.cli"]
    rows = []
    for count in counts:
        listing = work / f"list-{count}.txt"
        listing.write_text("\n".join(str(p) for p in all_paths[:count]) + "\n")
        for engine in args.engines.split(","):
            out = work / f"{engine}-{count}"
            shutil.rmtree(out, ignore_errors=True)
            command = [*exe, "export", f"@{listing}", "-o", str(out), "-q", "--format", "jpg",
                       "--batch-size", str(args.batch_size)]  # fmt: skip
            if engine == "ray":
                command += ["--ray"] + (
                    ["--ray-actors", str(args.ray_actors)] if args.ray_actors else []
                )
            wall, driver, tree = measure_driver(command)
            summary = json.loads((out / "summary.json").read_text())
            assert summary["exported"] == count, summary
            rows.append((engine, count, count / summary["seconds"], wall, driver, tree))
            print(
                f"  {engine} {count}: {rows[-1][2]:.1f} images/s, wall {wall:.0f} s, driver "
                f"{driver:.0f} MB, tree {tree:.0f} MB",
                file=sys.stderr,
            )
    print(
        f"\n{size[0]}x{size[1]} JPEGs, EfficientNet-Lite0, batch {args.batch_size}; "
        f"{os.cpu_count()} CPUs, {platform.machine()}"
    )
    print(
        f"{'engine':7s} {'images':>7s} {'images/s':>9s} {'wall s':>7s} {'driver MB':>10s} {'tree MB':>8s}"
    )
    for engine, count, rate, wall, driver, tree in rows:
        print(f"{engine:7s} {count:7d} {rate:9.1f} {wall:7.1f} {driver:10.0f} {tree:8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="images in the side-by-side run")
    parser.add_argument(
        "--scale", type=int, nargs="*", default=[], help="also run camtool on this many"
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, help="0: camtool's default (256 on a GPU)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (every method runs there)")
    parser.add_argument(
        "--runner", default="local", choices=["local", "device"], help="camtool's export runner"
    )
    parser.add_argument("--model", default="efficientnet_lite0", help="or resnet50 (+ --weights)")
    parser.add_argument("--weights", default=None, help="a state dict for --model")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--repeat", type=int, default=1, help="runs per method; the fastest counts")
    parser.add_argument(
        "--methods", default="forward,camtool,camtool-,camtool-crop,gradcam,torchcam"
    )
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "camtool-bench")
    parser.add_argument(
        "--photos", choices=["mixed", "uniform"], default="mixed",
        help="mixed: a mix of sizes, mostly 640x480; uniform: every photo 640x480",
    )  # fmt: skip
    parser.add_argument(
        "--engine", choices=["peers", "ray"], default="peers",
        help="peers: the side-by-side table; ray: the local runner versus a local Ray cluster",
    )  # fmt: skip
    parser.add_argument("--size", default="96x72", help="--engine ray: the images' WxH")
    parser.add_argument("--engines", default="local,ray", help="--engine ray: engines to run")
    parser.add_argument("--ray-actors", type=int, help="--engine ray: actors (default: CPUs)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--list", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    MODEL.update(name=args.model, weights=args.weights, device=args.device)
    if args.worker:
        paths = [Path(line) for line in args.list.read_text().splitlines() if line]
        seconds = WORKERS[args.worker](paths, args.batch_size, args.out)
        print(seconds, _peak_gpu_mb())
        return
    if args.engine == "ray":
        compare_engines(args)
        return

    import torch

    largest = max([args.images, *args.scale])
    all_paths = make_dataset(args.data / "images", largest, args.photos)
    paths = all_paths[: args.images]
    work = args.data / "runs"
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, float]] = {}
    for method in args.methods.split(","):
        for _ in range(args.repeat):
            if method.startswith("camtool"):
                crop, default_malloc = method == "camtool-crop", method == "camtool-"
                runner = {"camtool-device": "device", "camtool-local": "local"}.get(
                    method, args.runner
                )
                passive = method == "camtool-passive"
                run = run_camtool(
                    paths, args.batch_size, work, default_malloc, crop, runner, passive
                )
            else:
                run = run_worker(method, paths, args.batch_size, work)
            if method not in results or run["seconds"] < results[method]["seconds"]:
                results[method] = run
        print(
            f"  {method}: {len(paths) / results[method]['seconds']:.1f} images/s", file=sys.stderr
        )

    print(
        f"\n{len(paths)} JPEG photos ({photo_sizes(paths)}), {args.model}, batch "
        f"{args.batch_size or 'default'}, device {args.device}, camtool runner {args.runner}; "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {platform.machine()}"
    )
    print(
        f"{'method':14s} {'images/s':>9s} {'vs forward':>11s} {'camtool x':>10s} {'wall s':>8s} {'peak MB':>8s} {'GPU MB':>7s}"
    )
    camtool_rate = len(paths) / results["camtool"]["seconds"] if "camtool" in results else None
    forward_rate = len(paths) / results["forward"]["seconds"] if "forward" in results else None
    for method, r in results.items():
        rate = len(paths) / r["seconds"]
        versus = f"{rate / forward_rate:.2f}" if forward_rate else "-"
        faster = (
            f"{camtool_rate / rate:.2f}"
            if camtool_rate and method in ("gradcam", "torchcam")
            else "-"
        )
        print(
            f"{method:14s} {rate:9.1f} {versus:>11s} {faster:>10s} {r['wall']:8.1f} {r['peak_mb']:8.0f} {r.get('gpu_mb', 0):7.0f}"
        )
    scaled = {}
    for count in args.scale:
        r = run_camtool(all_paths[:count], args.batch_size, work, runner=args.runner)
        scaled[count] = r
        print(
            f"camtool on {count} images: {count / r['seconds']:.1f} images/s, wall {r['wall']:.0f} s, "
            f"peak {r['peak_mb']:.0f} MB, GPU {r.get('gpu_mb', 0):.0f} MB"
        )
    if args.json:
        args.json.write_text(json.dumps({"images": len(paths), "model": args.model,
                                         "device": args.device, "runner": args.runner,
                                         "results": results, "scale": scaled}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
