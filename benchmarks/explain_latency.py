"""Where the time of one `camtool explain` goes: start-up (imports, model load) versus work.

Run: .venv/bin/python benchmarks/explain_latency.py [IMAGE] [--repeat N]

Prints a table: the whole `camtool explain` process (median of N runs), `camtool --help`, and,
in-process, the imports, the model load, the first and the warm explain+save, and a bare
forward pass of the same model on the same preprocessed input for comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wall(command: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", default=str(ROOT / "examples" / "chelsea.png"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    exe = str(Path(sys.executable).parent / "camtool")
    out = tempfile.mkdtemp()
    rows = [
        ("camtool --help (process)", wall([exe, "--help"], args.repeat)),
        (
            "camtool explain (process, whole)",
            wall([exe, "explain", args.image, "--out", out], args.repeat),
        ),
    ]
    start = time.perf_counter()
    import torch

    import camtool

    camtool.explain  # noqa: B018  (imports the library, torch, timm, OpenCV)
    rows.append(("in-process: imports", time.perf_counter() - start))
    start = time.perf_counter()
    model = camtool.load_model("efficientnet_lite0")
    rows.append(("in-process: model load (sha256 + build + weights)", time.perf_counter() - start))
    for label in ("in-process: explain + save, first call", "in-process: explain + save, warm"):
        start = time.perf_counter()
        camtool.explain(args.image, model).save(os.path.join(out, "x.png"))
        rows.append((label, time.perf_counter() - start))
    image = camtool.load_image(args.image)
    batch = model.preprocessing.prepare(image)[0][None]
    with torch.inference_mode():
        model.module(batch)
        start = time.perf_counter()
        for _ in range(args.repeat):
            model.module(batch)
    rows.append(
        ("in-process: bare forward pass (same input)", (time.perf_counter() - start) / args.repeat)
    )
    print(
        f"image: {args.image} ({image.shape[2]}x{image.shape[1]}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs"
    )
    print(f"{'step':55s} {'seconds':>8s}")
    for label, seconds in rows:
        print(f"{label:55s} {seconds:8.3f}")


if __name__ == "__main__":
    main()
