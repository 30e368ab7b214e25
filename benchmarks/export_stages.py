"""Core-milliseconds per photo of each of export's stages: thread CPU time, one thread.

Run:  .venv/bin/python benchmarks/export_stages.py [--images 96 --batch 16 --format jpg]

On the same JPEG photos as benchmarks/export_throughput.py (the bundled and foolbox photos
resized to a mix of sizes, mostly 640x480, made once under --data) and the default network
(EfficientNet-Lite0, CAM, whole image, no crop), it runs export's stages one after the other on
one thread (one torch thread, one OpenCV thread, glibc malloc thresholds as `camtool export` sets
them) and times each with `time.thread_time()`:

  decode        camtool.io.load_image
  preprocess    Preprocessing.prepare (resize and normalise for the network)
  forward+maps  the bound method on batches of --batch photos of one network-input size
  render        camtool.explanation.build_explanation (scores, heatmaps, boxes) and
                Explanation.overlay for each explained class
  encode        camtool.io.encode_image of each overlay
  write         camtool.io.write_bytes_atomic of each file

render, encode and write are the steps of `camtool.export.stages.render_and_write` (as
`write_outputs` takes them for overlays alone); that whole call is also timed on the same rows
as a check ("render_and_write"). Thread CPU time, unlike wall time, barely moves when other
jobs load the machine, though contention still inflates it somewhat (shared caches).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path, PurePosixPath

import cv2
import torch
from export_throughput import make_dataset  # benchmarks/ is on sys.path when run as a script

import camtool
from camtool.allocator import keep_freed_memory
from camtool.binding import bind_method
from camtool.explanation import build_explanation
from camtool.export.stages import ExportOptions, MappedImage, output_path, render_and_write
from camtool.image import Region
from camtool.inputs import InputItem
from camtool.io.files import write_bytes_atomic
from camtool.io.images import encode_image, load_image
from camtool.naming import overlay_tail

STAGES = ("decode", "preprocess", "forward+maps", "render", "encode", "write")


def measure(paths: list[Path], batch: int, options: ExportOptions, out: Path) -> dict[str, float]:
    """Seconds of thread CPU time per stage over ``paths`` (and for ``render_and_write``)."""
    model = camtool.load_model("efficientnet_lite0", device="cpu")
    bound = bind_method(model, "cam", device="cpu")
    spent = dict.fromkeys([*STAGES, "render_and_write"], 0.0)

    def timed(stage: str, start: float) -> float:
        now = time.thread_time()
        spent[stage] += now - start
        return now

    groups: dict[tuple[int, ...], list[tuple[Path, torch.Tensor, torch.Tensor, Region]]] = {}
    for path in paths:
        start = time.thread_time()
        image = load_image(path)
        start = timed("decode", start)
        tensor, region = model.preprocessing.prepare(image)
        timed("preprocess", start)
        groups.setdefault(tuple(tensor.shape), []).append((path, image, tensor, region))
    first = next(iter(groups.values()))
    bound(first[0][2][None], 1)  # warm-up, not timed
    for group in groups.values():
        for i in range(0, len(group), batch):
            chunk = group[i : i + batch]
            start = time.thread_time()
            mapped = bound(torch.stack([tensor for _, _, tensor, _ in chunk]), 1)
            timed("forward+maps", start)
            for row, (path, image, _, region) in enumerate(chunk):
                stem = PurePosixPath(path.stem)
                start = time.thread_time()
                ex = build_explanation(
                    model, mapped, row, str(path), image, region, options.top_k,
                    options.box_threshold,
                )  # fmt: skip
                overlays = [
                    ex.overlay(k, alpha=options.alpha, colormap=options.colormap, box=options.box,
                               scale=options.scale, legend=options.legend).tensor
                    for k in range(len(ex.explained))
                ]  # fmt: skip
                start = timed("render", start)
                files = []
                for score, picture in zip(ex.explained, overlays, strict=True):
                    tail = overlay_tail(ex.method, score.index, score.name, options.image_format)
                    target = output_path(out / "split", stem, tail)
                    files.append((target, encode_image(picture, target.suffix, options.quality)))
                start = timed("encode", start)
                for target, data in files:
                    write_bytes_atomic(target, data)
                timed("write", start)
                start = time.thread_time()
                item = InputItem(path, stem)
                done = MappedImage(0, mapped, row, image, region)
                _, written, error = render_and_write(model, done, item, out / "whole", options)
                timed("render_and_write", start)
                assert error is None and written, (path, error)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=96, help="how many photos (default 96)")
    parser.add_argument("--batch", type=int, default=16, help="photos per forward pass")
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg", help="overlay format")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "camtool-bench",
                        help="where the photos are made (shared with export_throughput.py)")  # fmt: skip
    args = parser.parse_args()

    keep_freed_memory()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    paths = make_dataset(args.data / "images", args.images)
    options = ExportOptions(image_format=args.format)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        (out / "split").mkdir()
        (out / "whole").mkdir()
        spent = measure(paths, args.batch, options, out)

    count = len(paths)
    print(f"{count} photos, batch {args.batch}, {args.format} overlays, 1 thread (torch and "
          f"OpenCV); torch {torch.__version__}, OpenCV {cv2.__version__}")  # fmt: skip
    print(f"{'stage':<20}{'core-ms/photo':>14}")
    for stage in STAGES:
        print(f"{stage:<20}{spent[stage] / count * 1e3:>14.2f}")
    total = sum(spent[stage] for stage in STAGES)
    print(f"{'all stages':<20}{total / count * 1e3:>14.2f}")
    after = sum(spent[stage] for stage in ("render", "encode", "write"))
    print(f"{'render+encode+write':<20}{after / count * 1e3:>14.2f}")
    print(f"{'render_and_write':<20}{spent['render_and_write'] / count * 1e3:>14.2f}  (the whole "
          "call on the same rows, a check)")  # fmt: skip
    print(f"forward's share of all stages: {spent['forward+maps'] / total:.2f}")


if __name__ == "__main__":
    main()
